r"""Learning-rate schedules that live in the optimizer state, and SGD as PyTorch and open_lth run it.

:func:`step_decay` is the step schedule of the CIFAR recipes (Liu et al. 2019, You et al. 2020,
open_lth): the rate divided by 10 at fixed steps, after an optional linear warm-up.
:func:`sgd` is SGD with momentum and *coupled* weight decay whose learning rate — a float, a
:func:`step_decay` or any optax schedule — is evaluated inside the update from a step count held
in the optimizer state. One compiled training program therefore serves a whole run: there are no
host-side phases, and a run split into several fits continues its schedule where it stopped.

The numbers of a :func:`step_decay` (and of a constant rate) are *data* in that state, not
constants of the program, so :func:`set_schedule` can give a state the schedule of a run of
another length without compiling anything new: one training program per architecture serves
runs of every length that share the number of milestones.

The current rate is readable from the state:
``optax.tree_utils.tree_get(opt_state, "learning_rate")`` is the rate the last update used
(before the first update: the rate of step 0).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _checks
from jaxprune._types import Array, PyTree

__all__ = [
    "ScaleByRateState",
    "StepDecay",
    "StepDecayState",
    "set_schedule",
    "sgd",
    "step_decay",
]


class StepDecayState(NamedTuple):
    """The numbers of a :class:`StepDecay` as arrays: data of the optimizer state."""

    lr: Array  # float32 []
    milestones: Array  # int32 [k]
    factor: Array  # float32 []
    warmup: Array  # int32 []


def _rate(count: Array, s: StepDecayState) -> Array:
    """The step-decay rate at step ``count`` from the numbers ``s`` (concrete or traced)."""

    # optax.linear_schedule decides in Python whether its transition length is positive, so it
    # cannot take a warm-up length that is data; the ramp lr·t/w is written out here instead
    # (the values of optax.linear_schedule(0, lr, w)). With w = 0 it is never reached.
    def ramp(t: Array) -> Array:
        return s.lr * t / jnp.maximum(s.warmup, 1)

    k = int(np.shape(s.milestones)[-1])
    pieces = [ramp] + [optax.constant_schedule(s.lr * s.factor**i) for i in range(k + 1)]
    boundaries = [s.warmup, *(s.milestones[i] for i in range(k))]
    return jnp.asarray(optax.join_schedules(pieces, boundaries)(count), jnp.float32)


@dataclasses.dataclass(frozen=True)
class StepDecay:
    """A step-decay learning-rate schedule (see :func:`step_decay`); an ``optax.Schedule``.

    Frozen and hashable: equal when built from equal numbers.
    """

    lr: float
    milestones: tuple[int, ...]
    iterations: int
    factor: float = 0.1
    warmup: int = 0

    def numbers(self) -> StepDecayState:
        """The schedule's numbers as arrays (what :func:`sgd` keeps in its state)."""
        return StepDecayState(
            jnp.asarray(np.float32(self.lr)),
            jnp.asarray(np.array(self.milestones, np.int32).reshape(len(self.milestones))),
            jnp.asarray(np.float32(self.factor)),
            jnp.asarray(np.int32(self.warmup)),
        )

    def __call__(self, count: jax.typing.ArrayLike) -> Array:
        return _rate(jnp.asarray(count), self.numbers())


def step_decay(
    lr: float,
    milestones: Sequence[int],
    *,
    iterations: int,
    factor: float = 0.1,
    warmup: int = 0,
) -> StepDecay:
    r"""The step schedule: ``lr`` times ``factor`` after each milestone, after a linear warm-up.

    .. math::
        \eta_t = \begin{cases}
          \eta \, t / w & t < w \quad\text{(warm-up)} \\
          \eta \, f^{\,i(t)} & \text{otherwise}, \quad i(t) = |\{j : m_j \le t\}|
        \end{cases}

    with :math:`t` the step index from 0 (the rate of the step that makes update :math:`t+1`),
    :math:`m_j` the milestones, :math:`f` the factor and :math:`w` the warm-up steps. Built from
    optax's ``join_schedules`` of ``constant_schedule`` pieces (the warm-up ramp has the values of
    ``optax.linear_schedule(0, lr, w)``).

    Args:
      lr: the base rate :math:`\eta > 0`.
      milestones: step indices, strictly increasing, inside ``(0, iterations)``: at step
        :math:`m_j` the rate is multiplied by ``factor`` (so ``(iterations // 2, 3 * iterations
        // 4)`` is "÷10 at 50% and 75% of the run").
      iterations: the run's length, against which the milestones are checked (a milestone past
        the run is refused: it would never apply).
      factor: the multiplier per milestone, :math:`> 0` (0.1 divides by 10).
      warmup: linear warm-up steps from 0, in ``[0, milestones[0])`` (or ``[0, iterations)``
        without milestones).

    Returns:
      A :class:`StepDecay`: an ``optax.Schedule`` (``schedule(t)`` is :math:`\eta_t`) whose
      numbers :func:`sgd` keeps as data in its state.

    Raises:
      ValueError: naming the argument, for any setting outside the ranges above.

    Example:
      >>> from jaxprune import train
      >>> s = train.step_decay(0.1, (4, 6), iterations=8)
      >>> [round(float(s(t)), 6) for t in range(8)]
      [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
      >>> w = train.step_decay(0.1, (4,), iterations=6, warmup=2)
      >>> [round(float(w(t)), 6) for t in range(6)]
      [0.0, 0.05, 0.1, 0.1, 0.01, 0.01]
    """
    _checks.check_positive_int(iterations, name="iterations")
    _checks.check_real(lr, name="lr")
    if not (math.isfinite(float(lr)) and float(lr) > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}.")
    _checks.check_real(factor, name="factor")
    if not (math.isfinite(float(factor)) and float(factor) > 0):
        raise ValueError(f"factor must be a finite number > 0 (0.1 divides by 10), got {factor!r}.")
    ms = tuple(milestones)
    for m in ms:
        if isinstance(m, bool) or not isinstance(m, int | np.integer):
            raise ValueError(f"milestones must be step indices (ints), got {ms!r}.")
    ms = tuple(int(m) for m in ms)
    if any(b <= a for a, b in itertools.pairwise(ms)):
        raise ValueError(f"milestones must be strictly increasing, got {list(ms)}.")
    outside = [m for m in ms if not 0 < m < iterations]
    if outside:
        raise ValueError(
            f"milestones must lie inside (0, iterations) = (0, {iterations}), got {list(ms)}: "
            f"a schedule boundary at {outside[0]} is past the run (or at its start) and would "
            "never apply; give milestones for this run's length."
        )
    _checks.check_nonnegative_int(warmup, name="warmup")
    end = ms[0] if ms else iterations
    if warmup >= end:
        where = f"the first milestone {ms[0]}" if ms else f"iterations = {iterations}"
        raise ValueError(f"warmup must be in [0, {end}) (before {where}), got {warmup}.")
    return StepDecay(float(lr), ms, int(iterations), float(factor), int(warmup))


class ScaleByRateState(NamedTuple):
    """State of the rate in :func:`sgd`.

    ``count``: updates done; ``learning_rate``: the rate the last update used (before any, the
    rate of step 0); ``schedule``: the numbers of a :class:`StepDecay` (a constant rate is one
    without milestones), or ``()`` for another schedule (then a constant of the program).
    """

    count: Array  # type: ignore[assignment]  # optax's name for it (shadows tuple.count)
    learning_rate: Array
    schedule: StepDecayState | tuple[()]


def _as_numbers(learning_rate: float | StepDecay) -> StepDecayState:
    if isinstance(learning_rate, StepDecay):
        return learning_rate.numbers()
    return StepDecay(float(learning_rate), (), 1).numbers()


def _scale_by_rate(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """Multiply updates by ``-learning_rate(count)``, the count and rate kept in the state."""
    numbers = not callable(learning_rate) or isinstance(learning_rate, StepDecay)

    def rate(count: Array, schedule: StepDecayState | tuple[()]) -> Array:
        if isinstance(schedule, StepDecayState):
            return _rate(count, schedule)
        return jnp.asarray(learning_rate(count), jnp.float32)  # type: ignore[operator]

    def init(params: PyTree) -> ScaleByRateState:
        del params
        count = jnp.zeros([], jnp.int32)
        sched = _as_numbers(learning_rate) if numbers else ()
        return ScaleByRateState(count, rate(count, sched), sched)

    def update(
        updates: PyTree, state: ScaleByRateState, params: PyTree | None = None
    ) -> tuple[PyTree, ScaleByRateState]:
        del params
        lr = rate(state.count, state.schedule)
        updates = optax.scale_by_learning_rate(lr).update(updates, optax.EmptyState())[0]
        return updates, ScaleByRateState(optax.safe_increment(state.count), lr, state.schedule)

    return optax.GradientTransformation(init, update)


def sgd(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""SGD with momentum and coupled weight decay, as PyTorch's ``torch.optim.SGD`` and open_lth.

    .. math::
        d_t = g_t + \lambda w_t, \qquad b_t = \mu b_{t-1} + d_t, \qquad
        w_{t+1} = w_t - \eta_t \, (d_t + \mu b_t \text{ if Nesterov else } b_t)

    with :math:`b_0 = 0`: the decay :math:`\lambda w` is added to the gradient *before* momentum
    (L2 regularisation, not AdamW's decoupled decay). ``optax.chain(add_decayed_weights,
    trace, ...)``; the rate :math:`\eta_t` comes from a step count in the state.

    Args:
      learning_rate: a float :math:`\ge 0`, a :func:`step_decay` or any optax schedule. A float
        or a :func:`step_decay` is held as data in the state (:func:`set_schedule` changes it
        without compiling); another schedule is a constant of the program.
      momentum: :math:`\mu \ge 0` (0: plain SGD, no momentum buffer).
      weight_decay: :math:`\lambda \ge 0`.
      nesterov: Nesterov momentum (needs ``momentum > 0``).

    Returns:
      An optax transformation; ``optax.tree_utils.tree_get(state, "learning_rate")`` is the rate
      of the last update (before any: of step 0).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import train
      >>> opt = train.sgd(train.step_decay(0.1, (2,), iterations=4), momentum=0.0)
      >>> w, state = jnp.array([1.0]), opt.init(jnp.array([1.0]))
      >>> for _ in range(3):
      ...     u, state = opt.update(jnp.array([1.0]), state, w)
      ...     w = optax.apply_updates(w, u)
      >>> round(float(w[0]), 6), round(float(optax.tree_utils.tree_get(state, "learning_rate")), 6)
      (0.79, 0.01)
    """
    if not callable(learning_rate):
        _checks.check_real(learning_rate, name="learning_rate")
        if not (math.isfinite(float(learning_rate)) and float(learning_rate) >= 0):
            raise ValueError(
                f"learning_rate must be a finite number >= 0 or a schedule, got {learning_rate!r}."
            )
    for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
        _checks.check_real(value, name=name)
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if nesterov and not momentum > 0:
        raise ValueError(f"nesterov=True needs momentum > 0, got momentum={momentum!r}.")
    parts = []
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    if momentum > 0:
        parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(_scale_by_rate(learning_rate))
    return optax.chain(*parts)


@jax.jit
def _replaced(node: ScaleByRateState, new: StepDecayState, count: Array) -> ScaleByRateState:
    # One program per state shape (eagerly, each broadcast would compile its own).
    sched = jax.tree.map(
        lambda old, v: jnp.broadcast_to(v.astype(old.dtype), old.shape), node.schedule, new
    )
    return ScaleByRateState(count, _rate(count, new).astype(node.learning_rate.dtype), sched)


def set_schedule(
    opt_state: optax.OptState, learning_rate: float | StepDecay, *, step: int | None = None
) -> optax.OptState:
    """The state with the rate of :func:`sgd` replaced by ``learning_rate``'s numbers.

    What lets one compiled program serve runs of different lengths: the numbers are data, so
    an optimizer built once (per number of milestones) trains every run after its state is given
    that run's schedule. Stacked states (a leading ticket axis) get the numbers on every ticket.

    Args:
      opt_state: a state of :func:`sgd` (alone or inside a chain), built from a float or a
        :func:`step_decay` with as many milestones as ``learning_rate``.
      learning_rate: the new rate: a float or a :func:`step_decay`.
      step: if given, the schedule's count is set to it (a run resumed at ``step``); otherwise
        the count is kept.

    Returns:
      The new state (momentum and every other part unchanged), its ``learning_rate`` the new
      schedule's rate at the count.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import train
      >>> opt = train.sgd(train.step_decay(0.1, (4,), iterations=8))
      >>> state = opt.init(jnp.zeros(2))
      >>> state = train.set_schedule(state, train.step_decay(0.5, (2,), iterations=4), step=3)
      >>> optax.tree_utils.tree_get(state, "learning_rate")
      Array(0.05, dtype=float32)
    """
    if callable(learning_rate) and not isinstance(learning_rate, StepDecay):
        raise ValueError(
            "learning_rate must be a float or a train.step_decay (whose numbers are data), got "
            f"{learning_rate!r}; another schedule is part of the program: build a new optimizer."
        )
    new = _as_numbers(learning_rate)
    found = []

    def swap(node: PyTree) -> PyTree:
        if not isinstance(node, ScaleByRateState):
            return node
        found.append(node)
        if not isinstance(node.schedule, StepDecayState):
            raise ValueError(
                "opt_state's rate is a schedule built into the program (not a float or a "
                "train.step_decay), so it cannot be replaced; build a new optimizer."
            )
        k_old, k_new = node.schedule.milestones.shape[-1], new.milestones.shape[0]
        if k_old != k_new:
            raise ValueError(
                f"learning_rate has {k_new} milestone(s) but opt_state's schedule has {k_old}: "
                "the number of milestones is part of the compiled program; build the optimizer "
                f"from a schedule with {k_new}."
            )
        count: Any = node.count
        if step is not None:
            _checks.check_nonnegative_int(step, name="step")
            count = np.full(np.shape(count), step, count.dtype)
        return _replaced(node, new, count)

    out = jax.tree.map(swap, opt_state, is_leaf=lambda x: isinstance(x, ScaleByRateState))
    if not found:
        raise ValueError(
            "opt_state holds no rate of train.sgd (no ScaleByRateState): set_schedule changes "
            "the state of an optimizer built by train.sgd."
        )
    return out
