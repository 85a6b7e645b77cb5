"""Schedules: how dense (or sparse) the network should be after a pruning round or training step.

Every schedule is a pure ``jax.numpy`` function of the round or step, so the round, the rates and
the levels may be traced arrays: a schedule runs under ``jit`` and ``vmap`` over tickets (or over
an array of rounds) without Python branching on values. Results are float32.

Vocabulary: *density* ``d`` is the fraction of weights kept, *sparsity* is ``1 - d``, and a
*rate* is the fraction of the **remaining** weights that one round prunes — what
:mod:`jaxprune.select` takes as ``rate``. :func:`rate_between` turns two consecutive densities of
any schedule into that rate:

.. math::  p_k = 1 - d_{k+1} / d_k

All schedules return a density except :func:`polynomial`, which returns a *sparsity*, as in Zhu &
Gupta (2017); take ``1 - polynomial(...)`` for its density.

Where a function takes a schedule as an argument (:func:`jaxprune.saliency.iterative_prune`), it
is a :data:`Schedule`: a callable of the round alone, like an optax schedule of the step count —
``lambda k: schedules.geometric(k, 0.2)``, or ``functools.partial(schedules.exponential,
n_rounds=10, final_density=0.05)``.

Arguments are validated only when they are concrete (see :mod:`jaxprune._checks`): densities in
(0, 1], rates and sparsities in [0, 1), final levels no denser than initial ones, ``end_step >
begin_step``, ``n_rounds > 0``.

Example — IMP at 20% per round, one mask update per round:
  >>> import jax.numpy as jnp
  >>> from jaxprune import masks, schedules, select
  >>> scores = {"w": jnp.arange(100.0).reshape(10, 10)}
  >>> mask = masks.ones(scores)
  >>> for k in range(3):
  ...     rate = schedules.rate_between(schedules.geometric(k, 0.2), schedules.geometric(k + 1, 0.2))
  ...     mask = select.layerwise(scores, mask, rate)
  >>> int(masks.count(mask)), round(float(schedules.geometric(3, 0.2)) * 100, 1)
  (51, 51.2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeAlias

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune import _checks
from jaxprune._types import Array

__all__ = [
    "Schedule",
    "exponential",
    "geometric",
    "geometric_rounds",
    "one_shot",
    "polynomial",
    "rate_between",
]

Schedule: TypeAlias = Callable[[Array], ArrayLike]
"""``schedule(round) -> density``: the fraction of weights kept after ``round`` rounds, for a
traced int32 ``round`` (pure ``jax.numpy``, no Python branching on it)."""


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, jnp.float32)


def _check_positive(value: Any, *, name: str) -> None:
    """Raise if a concrete ``value`` (or any entry of it) is not > 0; traced values pass."""
    for path, leaf in _checks.leaves_with_paths(value):
        if _checks.is_traced(leaf):
            continue
        arr = np.asarray(leaf, dtype=np.float64)
        bad = ~(arr > 0)  # NaN is bad too
        if bad.any():
            raise ValueError(f"{name}{path} must be > 0, got {arr[bad].ravel()[:3].tolist()}.")


def _check_density(value: Any, *, name: str) -> None:
    """Densities live in (0, 1]: 0 would leave nothing to train and no ratio to take."""
    _checks.check_in_range(value, name=name, high_inclusive=True)
    _check_positive(value, name=name)


def _check_not_above(low: Any, high: Any, *, low_name: str, high_name: str) -> None:
    """Raise if concrete ``low > high`` anywhere (e.g. a final density above the initial one)."""
    if _checks.is_traced(low) or _checks.is_traced(high):
        return
    lo, hi = np.broadcast_arrays(np.asarray(low, np.float64), np.asarray(high, np.float64))
    bad = lo > hi
    if bad.any():
        raise ValueError(
            f"{low_name} must be <= {high_name}, got {low_name}={lo[bad].ravel()[:3].tolist()} "
            f"and {high_name}={hi[bad].ravel()[:3].tolist()}; a pruning schedule only removes "
            "weights."
        )


def one_shot(t: ArrayLike, final_density: ArrayLike) -> Array:
    r"""One-shot pruning: dense before the first round, ``final_density`` from round 1 on.

    .. math::  d(t) = 1 \text{ if } t < 1 \text{ else } \rho

    Args:
      t: round (or step) index, int or float, any shape; may be traced.
      final_density: :math:`\rho \in (0, 1]`, the fraction of weights kept after pruning.

    Returns:
      The density, float32 of the broadcast shape of ``t`` and ``final_density``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import schedules
      >>> schedules.one_shot(jnp.arange(3), 0.25)
      Array([1.  , 0.25, 0.25], dtype=float32)
    """
    _check_density(final_density, name="final_density")
    return jnp.where(jnp.asarray(t) >= 1, _f32(final_density), jnp.float32(1.0))


def geometric(round: ArrayLike, rate: ArrayLike) -> Array:
    r"""Iterative magnitude pruning: the density after ``round`` rounds that each prune ``rate``.

    Each round removes a fraction :math:`p` of the weights that remain, so

    .. math::  d(k) = (1 - p)^k

    (before the rounding of counts to whole weights; :func:`jaxprune.select.keep_count` gives the
    exact count of one round).

    Args:
      round: number of rounds done, :math:`k \ge 0`, any shape; may be traced.
      rate: :math:`p \in [0, 1)`, the fraction of the remaining weights pruned per round.

    Returns:
      The density, float32.

    Example:
      >>> from jaxprune import schedules
      >>> round(float(schedules.geometric(2, 0.2)), 4), round(float(schedules.geometric(0, 0.2)), 4)
      (0.64, 1.0)
    """
    _checks.check_in_range(round, name="round", high=math.inf)
    _checks.check_in_range(rate, name="rate")
    return jnp.power(1.0 - _f32(rate), _f32(round))


def geometric_rounds(final_density: float, rate: float) -> int:
    r"""Host-side: the fewest rounds of :func:`geometric` at ``rate`` that reach ``final_density``.

    .. math::  n = \min\{k \ge 0 : (1 - p)^k \le \rho\} = \lceil \log\rho / \log(1 - p) \rceil

    up to a tolerance of ``1e-9`` of a round, so that ``final_density = (1 - rate) ** n`` gives
    ``n`` despite float rounding.

    Args:
      final_density: target density :math:`\rho \in (0, 1]` (a Python number, not traced).
      rate: :math:`p \in [0, 1)` per round; 0 only when ``final_density`` is 1.

    Returns:
      The number of rounds, a Python ``int``.

    Example — LeNet at 20% per round reaches 3.6% of its weights after 15 rounds:
      >>> from jaxprune import schedules
      >>> schedules.geometric_rounds(0.036, 0.2), schedules.geometric_rounds(0.64, 0.2)
      (15, 2)
    """
    _check_density(final_density, name="final_density")
    _checks.check_in_range(rate, name="rate")
    rho, p = float(final_density), float(rate)
    if rho * (1 + 1e-9) >= 1.0:
        return 0
    if p == 0.0:
        raise ValueError(f"rate=0.0 never reaches final_density={rho}; give a rate in (0, 1).")
    # Compare logs with a tolerance so that rho = (1-p)**n, computed in floats, gives exactly n.
    return max(0, math.ceil(math.log(rho) / math.log1p(-p) - 1e-9))


def polynomial(
    step: ArrayLike,
    *,
    initial_sparsity: ArrayLike,
    final_sparsity: ArrayLike,
    begin_step: ArrayLike,
    end_step: ArrayLike,
    power: ArrayLike = 3,
) -> Array:
    r"""Gradual pruning (Zhu & Gupta, 2017). Returns the **sparsity** (``1 - density``) at ``step``.

    .. math::

       s(t) = s_f + (s_i - s_f)\,(1 - \pi_t)^{\text{power}},\qquad
       \pi_t = \operatorname{clip}\!\Big(\frac{t - t_0}{t_1 - t_0},\, 0,\, 1\Big)

    so the sparsity is :math:`s_i` until ``begin_step`` :math:`t_0`, rises fast then slowly, and
    stays at :math:`s_f` from ``end_step`` :math:`t_1` on. Its density is ``1 - s(t)``.

    Args:
      step: training step :math:`t`, any shape; may be traced.
      initial_sparsity: :math:`s_i \in [0, 1)`.
      final_sparsity: :math:`s_f \in [s_i, 1)`.
      begin_step: :math:`t_0`, where pruning starts.
      end_step: :math:`t_1 > t_0`, where the final sparsity is reached.
      power: the exponent (3 in the paper), > 0.

    Returns:
      The sparsity, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import schedules
      >>> schedules.polynomial(jnp.array([0, 10, 15, 20, 30]), initial_sparsity=0.0,
      ...                      final_sparsity=0.8, begin_step=10, end_step=20)
      Array([0. , 0. , 0.7, 0.8, 0.8], dtype=float32)
    """
    _checks.check_in_range(initial_sparsity, name="initial_sparsity")
    _checks.check_in_range(final_sparsity, name="final_sparsity")
    _check_not_above(
        initial_sparsity, final_sparsity, low_name="initial_sparsity", high_name="final_sparsity"
    )
    _check_positive(power, name="power")
    if not (_checks.is_traced(begin_step) or _checks.is_traced(end_step)):
        if not np.all(np.asarray(end_step, np.float64) > np.asarray(begin_step, np.float64)):
            raise ValueError(
                f"end_step must be > begin_step, got begin_step={begin_step!r}, "
                f"end_step={end_step!r}."
            )
    t0, t1 = _f32(begin_step), _f32(end_step)
    progress = jnp.clip((_f32(step) - t0) / (t1 - t0), 0.0, 1.0)
    s_i, s_f = _f32(initial_sparsity), _f32(final_sparsity)
    return s_f + (s_i - s_f) * jnp.power(1.0 - progress, _f32(power))


def exponential(round: ArrayLike, n_rounds: ArrayLike, final_density: ArrayLike) -> Array:
    r"""SynFlow's schedule: after round ``k`` of ``n``, keep the fraction :math:`\rho^{k/n}`.

    .. math::  d(k) = \rho^{\operatorname{clip}(k/n,\, 0,\, 1)}

    where :math:`\rho` = ``final_density`` (``10 ** -compression`` in the SynFlow paper). Every
    round prunes the same fraction :math:`1 - \rho^{1/n}` of the remaining weights; the density
    stays at :math:`\rho` after round ``n``.

    Args:
      round: rounds done, :math:`k`, any shape; may be traced.
      n_rounds: :math:`n > 0` (100 in SynFlow).
      final_density: :math:`\rho \in (0, 1]`.

    Returns:
      The density, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import schedules
      >>> schedules.exponential(jnp.array([0, 1, 2, 3]), 2, 0.01)
      Array([1.  , 0.1 , 0.01, 0.01], dtype=float32)
    """
    _check_positive(n_rounds, name="n_rounds")
    _check_density(final_density, name="final_density")
    progress = jnp.clip(_f32(round) / _f32(n_rounds), 0.0, 1.0)
    return jnp.power(_f32(final_density), progress)


def rate_between(density_from: ArrayLike, density_to: ArrayLike) -> Array:
    r"""The fraction of the *remaining* weights to prune to go from one density to the next.

    .. math::  p = 1 - d_{\text{to}} / d_{\text{from}}

    This is the ``rate`` that :func:`jaxprune.select.layerwise` and friends take. A traced
    ``density_to > density_from`` gives 0 (masks never grow); concrete ones raise.

    Args:
      density_from: the current density, in (0, 1].
      density_to: the density after the round, in (0, ``density_from``].

    Returns:
      The rate, float32 in [0, 1).

    Example:
      >>> from jaxprune import schedules
      >>> round(float(schedules.rate_between(0.8, 0.64)), 6)
      0.2
    """
    _check_density(density_from, name="density_from")
    _check_density(density_to, name="density_to")
    _check_not_above(density_to, density_from, low_name="density_to", high_name="density_from")
    return jnp.maximum(1.0 - _f32(density_to) / _f32(density_from), 0.0)
