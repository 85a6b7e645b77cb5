r"""Sparse-training methods, their state, and the optax pieces that keep pruned weights at zero.

A method is a static, hashable :class:`Method` (its name in :data:`METHODS`, the layer allocation,
the sparsity pattern, which layers are prunable); everything numeric per ticket lives in a
:class:`SparseState` of arrays (masks, step, key, sparsity, drop fraction, :math:`\Delta T`,
begin, end), so :func:`update` runs under ``jit`` and ``vmap`` over tickets without recompiling.

Six methods, each a registered implementation:

* ``"static"`` — a fixed mask from step 0 (random or by magnitude), never updated;
* ``"gradual"`` — Zhu & Gupta (2017): dense at ``begin``, then every :math:`\Delta T` steps the
  mask keeps the largest :math:`|w|` of each layer at the sparsity
  :math:`s_t = s_f\,(1 - (1 - \pi_t)^3)`, :math:`\pi_t = \mathrm{clip}((t - t_0)/(t_1 - t_0), 0, 1)`,
  until ``end``; masks only shrink;
* ``"set"`` — Mocanu et al. (2018): every :math:`\Delta T` steps until ``end``, each layer drops
  :math:`d = \mathrm{round}(\zeta\,c)` of its :math:`c` active weights with the smallest
  :math:`|w|` and grows :math:`d` at random among the inactive ones;
* ``"rigl"`` — Evci et al. (2020): the same with
  :math:`d = \mathrm{round}(f(t)\,c)`, :math:`f(t) = \tfrac{\alpha}{2}(1 + \cos(\pi t / T_{end}))`,
  growing the inactive weights with the largest dense-gradient magnitude :math:`|g|`;
* ``"ste"`` — dense weights are trained; the forward pass uses the top-:math:`k` mask of the
  current :math:`|w|` and the gradient passes straight through to every weight;
* ``"sr_ste"`` — Zhou et al. (2021): STE plus :math:`\lambda_w (1 - m) \odot w` on the gradient.

A grown weight starts at 0, and a weight dropped in an update is never regrown by the same
update; after SET and RigL updates the optimizer moments of the dropped and grown weights are
reset by :func:`reset_moments`. Every per-layer count is exact (``allocation.layer_counts``:
uniform, Erdős–Rényi or ERK; ``patterns.select``: unstructured, N:M or block).

A training step in any loop (``loss_fn(params, batch)``; STE uses the optimizer itself, not
:func:`keep_zero`):

.. code-block:: python

   tx = st.keep_zero(optax.adam(1e-3)); opt_state = tx.init(params)
   sp = st.init(m, params, key, sparsity=0.9, end=750); params = st.apply(params, sp)

   @jax.jit
   def step(params, opt_state, sp, batch):
       loss, grads = jax.value_and_grad(loss_fn)(st.forward_params(m, sp, params), batch)
       grads = st.gradients(m, sp, params, grads)
       updates, opt_state = tx.update(grads, opt_state, params, mask=sp.masks)
       params = optax.apply_updates(params, updates)
       sp, params, opt_state = st.update(m, sp, params, grads, opt_state)
       return params, opt_state, sp, loss

Example — RigL at 80% on a two-layer dict of params; the active count never changes:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import sparse_training as st
  >>> params = {"a": jax.random.normal(jax.random.key(1), (8, 6)), "b": jnp.ones((6, 4))}
  >>> m = st.method("rigl", allocation="uniform")
  >>> sp = st.init(m, params, jax.random.key(0), sparsity=0.8, delta_t=1, end=10)
  >>> params = st.apply(params, sp)
  >>> grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=float).reshape(p.shape), params)
  >>> before = sp.masks
  >>> sp, params, _ = st.update(m, sp, params, grads)  # step 0: no update
  >>> sp, params, _ = st.update(m, sp, params, grads)  # step 1: drop f(1) = 29% and regrow
  >>> [int(k.sum()) for k in jax.tree.leaves(sp.masks)], int(sp.step)
  ([9, 5], 2)
  >>> [int((k & ~b).sum()) for k, b in zip(jax.tree.leaves(sp.masks), jax.tree.leaves(before))]
  [3, 1]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.typing import ArrayLike

from jaxprune import _checks, masks, schedules
from jaxprune._types import Array, Key, Mask, Params, Prunable, PyTree
from jaxprune.sparse_training import allocation, patterns
from jaxprune.sparse_training.patterns import Pattern

__all__ = [
    "INIT_MASKS",
    "METHODS",
    "Method",
    "SparseState",
    "apply",
    "drop_fraction_at",
    "forward_params",
    "gradients",
    "init",
    "is_update_step",
    "keep_zero",
    "method",
    "metrics",
    "reset_moments",
    "target_sparsity",
    "update",
]

_UNSTRUCTURED = Pattern("unstructured")

INIT_MASKS = ("random", "magnitude")
"""How static, SET and RigL draw their step-0 mask: uniform random scores, or :math:`|w|`."""


class SparseState(NamedTuple):
    """The per-ticket state of a sparse-training run: arrays only, so it stacks and vmaps.

    Attributes:
      masks: the current mask (params' structure, bool leaves; non-prunable leaves all True).
      step: int32, training steps done (:func:`update` increments it).
      key: typed PRNG key, split at each update that draws (static init, SET growth).
      sparsity: float32, the final target sparsity of the prunable weights.
      drop_fraction: float32, SET's :math:`\\zeta` (constant) or RigL's :math:`\\alpha` (decayed).
      delta_t: int32, :math:`\\Delta T` steps between mask updates (gradual, SET, RigL).
      begin: int32, the first update step (gradual: :math:`t_0`).
      end: int32, gradual: the step where the final sparsity is reached; SET / RigL: no update at
        or after it.
    """

    masks: Mask
    step: Array
    key: Key
    sparsity: Array
    drop_fraction: Array
    delta_t: Array
    begin: Array
    end: Array


@dataclasses.dataclass(frozen=True)
class Method:
    """A sparse-training method: static and hashable, so it can be a ``jit`` static argument.

    Attributes:
      name: one of :data:`METHODS`.
      allocation: ``"uniform"``, ``"er"`` or ``"erk"``: how the kept weights are shared among
        layers (``allocation.layer_counts``). N:M patterns need ``"uniform"``.
      pattern: a :class:`~jaxprune.sparse_training.patterns.Pattern` or its string
        (``"unstructured"``, ``"2:4"``, ``"block:4"``), parsed on construction.
      prunable: which leaves may be pruned, a hashable rule (``masks.rule(...)``), a regex or a
        tuple of regexes, or ``None`` (leaves with ``ndim >= 2``).
      dense: regexes of prunable layers kept dense (searched in the leaf's path).
      custom: ``(regex, density)`` pairs: per-layer densities, the first matching regex wins.
      init_mask: ``"random"`` or ``"magnitude"``: the step-0 mask of static, SET and RigL.
      sr_lambda: SR-STE's :math:`\\lambda_w`.

    Example:
      >>> from jaxprune import sparse_training as st
      >>> m = st.Method("set", allocation="er", pattern="block:2")
      >>> m.pattern.kind, m.pattern.block, hash(m) == hash(st.Method("set", "er", "block:2"))
      ('block', 2, True)
    """

    name: str
    allocation: str = "erk"
    pattern: Pattern = _UNSTRUCTURED
    prunable: Prunable = None
    dense: tuple[str, ...] = ()
    custom: tuple[tuple[str, float], ...] = ()
    init_mask: str = "random"
    sr_lambda: float = 2e-4

    def __post_init__(self) -> None:
        _checks.check_choice(self.name, METHODS, name="method")
        _checks.check_choice(self.allocation, allocation.ALLOCATIONS, name="allocation")
        _checks.check_choice(self.init_mask, INIT_MASKS, name="init_mask")
        object.__setattr__(self, "pattern", patterns.pattern(self.pattern))
        # Lists are not hashable: hold sequences as tuples so the method stays a static argument.
        if isinstance(self.prunable, list):
            object.__setattr__(self, "prunable", tuple(self.prunable))
        dense = (self.dense,) if isinstance(self.dense, str) else tuple(self.dense)
        object.__setattr__(self, "dense", dense)
        object.__setattr__(self, "custom", tuple((str(r), float(d)) for r, d in self.custom))
        if self.pattern.kind == "nm" and self.allocation != "uniform":
            raise ValueError(
                f"allocation must be 'uniform' with an N:M pattern ({self.pattern.n}:"
                f"{self.pattern.m} keeps the same fraction of every layer), got "
                f"{self.allocation!r}."
            )
        _checks.check_in_range(self.sr_lambda, name="sr_lambda", high=math.inf)


def method(name: str, **options: Any) -> Method:
    """The method ``name`` with ``options`` (the fields of :class:`Method`).

    With an N:M ``pattern`` the allocation defaults to ``"uniform"`` (the only one N:M allows).

    Example:
      >>> from jaxprune import sparse_training as st
      >>> st.method("sr_ste", pattern="2:4").allocation
      'uniform'
      >>> st.method("lottery")
      Traceback (most recent call last):
      ...
      ValueError: unknown method 'lottery'; expected one of: gradual, rigl, set, sr_ste, static, ste.
    """
    _checks.check_choice(name, METHODS, name="method")
    fields = {f.name for f in dataclasses.fields(Method)} - {"name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} of method {name!r}; expected some of: "
            f"{', '.join(sorted(fields))}."
        )
    if (
        "allocation" not in options
        and patterns.pattern(options.get("pattern", "unstructured")).kind == "nm"
    ):
        options["allocation"] = "uniform"
    return Method(name, **options)


# --- the registry -----------------------------------------------------------------------------


class _Impl(NamedTuple):
    """How one method behaves; registering one in :data:`METHODS` adds a method.

    ``schedule``: ``"never"`` (no update), ``"always"`` (every step, no ``lax.cond``) or
    ``"periodic"`` (``is_update(method, state)`` says when). ``init_masks(method, params, counts,
    key) -> (masks, key)``; ``new_masks(method, state, params, grads) -> (masks, key)`` at an
    update step. ``dense_weights``: the weights stay dense (STE); otherwise pruned weights are 0.
    ``regrows``: dropped and grown weights are zeroed and their optimizer moments reset.
    """

    schedule: str
    is_update: Callable[[Method, SparseState], Array]
    init_masks: Callable[[Method, Params, PyTree, Key], tuple[Mask, Key]]
    new_masks: Callable[[Method, SparseState, Params, PyTree], tuple[Mask, Key]]
    drop_fraction: Callable[[Method, SparseState], Array]
    dense_weights: bool = False
    regrows: bool = False


def _flags(method: Method, params: Params) -> list[bool]:
    """Per leaf: whether its mask is selected (prunable, and not kept whole by ``dense``)."""
    dense = [re.compile(d) for d in method.dense]
    flags = jax.tree.leaves(masks.is_prunable(params, method.prunable))
    return [
        flag and not any(d.search(path) for d in dense)
        for (path, _), flag in zip(_checks.leaves_with_paths(params), flags, strict=True)
    ]


def _counts(method: Method, params: Params, sparsity: ArrayLike) -> PyTree:
    return allocation.layer_counts(
        params,
        sparsity,
        allocation=method.allocation,
        prunable=method.prunable,
        dense=method.dense,
        custom=method.custom,
        pattern=method.pattern,
    )


def _per_leaf(method: Method, params: Params, fn: Callable[..., Array], *trees: PyTree) -> Mask:
    """``fn(leaf, *other_leaves)`` on the prunable leaves; the non-prunable get all-True masks."""
    flat, treedef = jax.tree.flatten(params)
    others = [jax.tree.leaves(t) for t in trees]  # same structure as params
    out = [
        fn(p, *(o[i] for o in others)) if keep else jnp.ones(jnp.shape(p), bool)
        for i, (p, keep) in enumerate(zip(flat, _flags(method, params), strict=True))
    ]
    return jax.tree.unflatten(treedef, out)


def _random_scores(key: Key, params: Params) -> tuple[Key, PyTree]:
    """Uniform scores for every leaf from one draw (one generator call compiles faster than one
    per leaf), and the key to carry on."""
    key, sub = jax.random.split(key)
    flat, treedef = jax.tree.flatten(params)
    sizes = [int(np.size(p)) for p in flat]
    draw = jax.random.uniform(sub, (sum(sizes),))
    starts = np.cumsum([0, *sizes])
    scores = [
        draw[a:b].reshape(jnp.shape(p))
        for a, b, p in zip(starts[:-1], starts[1:], flat, strict=True)
    ]
    return key, jax.tree.unflatten(treedef, scores)


def _magnitude(params: Params) -> PyTree:
    return jax.tree.map(lambda p: jnp.abs(p).astype(jnp.float32), params)


def _top(
    method: Method, params: Params, scores: PyTree, counts: PyTree, eligible: Mask | None
) -> Mask:
    def one(p: Array, s: Array, c: Array, *e: Array) -> Array:
        return patterns.select(s, c, method.pattern, eligible=e[0] if e else None)

    trees = (scores, counts) if eligible is None else (scores, counts, eligible)
    return _per_leaf(method, params, one, *trees)


def _init_sampled(method: Method, params: Params, counts: PyTree, key: Key) -> tuple[Mask, Key]:
    if method.init_mask == "random":
        key, scores = _random_scores(key, params)
    else:
        scores = _magnitude(params)
    return _top(method, params, scores, counts, None), key


def _init_magnitude(method: Method, params: Params, counts: PyTree, key: Key) -> tuple[Mask, Key]:
    return _top(method, params, _magnitude(params), counts, None), key


def _init_dense(method: Method, params: Params, counts: PyTree, key: Key) -> tuple[Mask, Key]:
    del method, counts
    return masks.ones(params), key


def _no_update(method: Method, state: SparseState) -> Array:
    del method, state
    return jnp.zeros((), bool)


def _every_step(method: Method, state: SparseState) -> Array:
    del method, state
    return jnp.ones((), bool)


def _gradual_is_update(method: Method, state: SparseState) -> Array:
    del method
    t = state.step
    on_grid = (t - state.begin) % state.delta_t == 0
    # The end step is an update step too, so the final sparsity is reached even when end − begin
    # is not a multiple of ΔT.
    return (t >= state.begin) & (t <= state.end) & (on_grid | (t == state.end))


def _regrow_is_update(method: Method, state: SparseState) -> Array:
    del method
    t = state.step
    return (t > 0) & (t >= state.begin) & (t < state.end) & (t % state.delta_t == 0)


def _gradual_masks(method: Method, state: SparseState, params: Params, grads: PyTree):
    del grads
    counts = _counts(method, params, target_sparsity(method, state))
    return _top(method, params, _magnitude(params), counts, state.masks), state.key


def _ste_masks(method: Method, state: SparseState, params: Params, grads: PyTree):
    del grads
    counts = _counts(method, params, state.sparsity)
    return _top(method, params, _magnitude(params), counts, None), state.key


def _drop_and_grow(method: Method, state: SparseState, params: Params, grow_scores: PyTree) -> Mask:
    """Per layer: keep the ``c − d`` largest active :math:`|w|`, then grow ``d`` by
    ``grow_scores`` among the weights inactive before this update (never one just dropped)."""
    counts = _counts(method, params, state.sparsity)
    fraction = drop_fraction_at(method, state)

    def one(p: Array, mask: Array, count: Array, score: Array) -> Array:
        count = jnp.minimum(count, jnp.sum(mask, dtype=jnp.int32))
        # Never drop more than can be regrown: the inactive weights bound the drop count.
        d = patterns.drop_count(count, fraction, method.pattern, p.size)
        d = jnp.minimum(d, p.size - count)
        kept = patterns.select(jnp.abs(p), count - d, method.pattern, eligible=mask)
        return patterns.select(score, count, method.pattern, eligible=kept | ~mask, reserved=kept)

    return _per_leaf(method, params, one, state.masks, counts, grow_scores)


def _set_masks(method: Method, state: SparseState, params: Params, grads: PyTree):
    del grads
    key, scores = _random_scores(state.key, params)
    return _drop_and_grow(method, state, params, scores), key


def _rigl_masks(method: Method, state: SparseState, params: Params, grads: PyTree):
    _checks.check_like(grads, params, name="grads")
    scores = jax.tree.map(lambda g: jnp.abs(g).astype(jnp.float32), grads)
    return _drop_and_grow(method, state, params, scores), state.key


def _no_fraction(method: Method, state: SparseState) -> Array:
    del method
    return jnp.zeros_like(state.drop_fraction)


def _constant_fraction(method: Method, state: SparseState) -> Array:
    del method
    return state.drop_fraction


def _cosine_fraction(method: Method, state: SparseState) -> Array:
    del method
    return _cosine(state.drop_fraction, state.step, state.end)


def _cosine(alpha: Array, t: Array, end: Array) -> Array:
    progress = jnp.clip(t.astype(jnp.float32) / end.astype(jnp.float32), 0.0, 1.0)
    return 0.5 * alpha * (1.0 + jnp.cos(jnp.float32(math.pi) * progress))


def _never_masks(method: Method, state: SparseState, params: Params, grads: PyTree):
    del method, params, grads
    return state.masks, state.key


METHODS: dict[str, _Impl] = {
    "static": _Impl("never", _no_update, _init_sampled, _never_masks, _no_fraction),
    "gradual": _Impl("periodic", _gradual_is_update, _init_dense, _gradual_masks, _no_fraction),
    "set": _Impl(
        "periodic", _regrow_is_update, _init_sampled, _set_masks, _constant_fraction, regrows=True
    ),
    "rigl": _Impl(
        "periodic", _regrow_is_update, _init_sampled, _rigl_masks, _cosine_fraction, regrows=True
    ),
    "ste": _Impl(
        "always", _every_step, _init_magnitude, _ste_masks, _no_fraction, dense_weights=True
    ),
    "sr_ste": _Impl(
        "always", _every_step, _init_magnitude, _ste_masks, _no_fraction, dense_weights=True
    ),
}
"""The registry: method name → implementation. Adding a method is registering an ``_Impl``."""


# --- state --------------------------------------------------------------------------------------


def _check_method(method: Any) -> _Impl:
    if not isinstance(method, Method):
        raise ValueError(
            f"method must be a Method (st.method(name, ...)), got {type(method).__name__} "
            f"{method!r}."
        )
    return METHODS[method.name]


def _check_positive_steps(value: Any, *, name: str) -> None:
    _checks.check_real(value, name=name)
    if not _checks.is_traced(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"{name} must be a positive number of steps, got {value!r}.")


def init(
    method: Method,
    params: Params,
    key: Key,
    *,
    sparsity: ArrayLike,
    drop_fraction: ArrayLike = 0.3,
    delta_t: ArrayLike = 100,
    begin: ArrayLike = 0,
    end: ArrayLike | None = None,
) -> SparseState:
    r"""The initial :class:`SparseState` of ``method`` for ``params``.

    Counts per layer are ``allocation.layer_counts`` at the final ``sparsity``. The step-0 mask:
    static / SET / RigL by ``method.init_mask`` (random or :math:`|w|`) at those counts; gradual
    all True; STE / SR-STE the top :math:`|w|`. Call ``params = apply(params, state)`` once after
    (except for STE, whose weights stay dense). Numeric arguments may be arrays (one per ticket
    under ``vmap``); concrete ones are checked.

    Args:
      method: a :class:`Method`.
      params: the params pytree.
      key: a typed PRNG key (``jax.random.key``).
      sparsity: final sparsity of the prunable weights, in [0, 1).
      drop_fraction: SET's :math:`\zeta` / RigL's :math:`\alpha`, in [0, 1).
      delta_t: steps between mask updates, > 0.
      begin: first update step.
      end: gradual: the step the final sparsity is reached; SET / RigL: no update at or after it;
        > ``begin``. Required by gradual, SET and RigL; static and STE ignore it.

    Returns:
      The state; ``state.masks`` mirrors ``params``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> params = {"w": jnp.arange(12.0).reshape(4, 3), "b": jnp.zeros(3)}
      >>> sp = st.init(st.method("static", init_mask="magnitude"), params, jax.random.key(0),
      ...              sparsity=0.75)
      >>> sp.masks["w"].astype(int).tolist(), sp.masks["b"].tolist()
      ([[0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]], [True, True, True])
    """
    impl = _check_method(method)
    _checks.check_params(params)
    _checks.check_key(key)
    _checks.check_in_range(sparsity, name="sparsity")
    _checks.check_in_range(drop_fraction, name="drop_fraction")
    _check_positive_steps(delta_t, name="delta_t")
    _checks.check_real(begin, name="begin")
    if end is None:
        if impl.schedule == "periodic":
            raise ValueError(
                f"end is required by method {method.name!r} (the step where its mask updates "
                "stop), got None."
            )
        end = jnp.asarray(begin, jnp.int32) + 1
    _checks.check_real(end, name="end")
    if not (_checks.is_traced(begin) or _checks.is_traced(end)):
        if not np.all(np.asarray(end) > np.asarray(begin)):
            raise ValueError(f"end must be > begin, got begin={begin!r} and end={end!r}.")
    patterns.check_pattern(params, method.pattern, method.prunable, dense=method.dense)
    counts = _counts(method, params, sparsity)
    mask, key = impl.init_masks(method, params, counts, key)
    return SparseState(
        masks=mask,
        step=jnp.zeros((), jnp.int32),
        key=key,
        sparsity=jnp.asarray(sparsity, jnp.float32),
        drop_fraction=jnp.asarray(drop_fraction, jnp.float32),
        delta_t=jnp.asarray(delta_t, jnp.int32),
        begin=jnp.asarray(begin, jnp.int32),
        end=jnp.asarray(end, jnp.int32),
    )


def apply(params: Params, state: SparseState) -> Params:
    r"""``params`` zeroed outside ``state.masks``: :math:`w \odot m`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> p = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
      >>> sp = st.init(st.method("ste", allocation="uniform"), p, jax.random.key(0), sparsity=0.5)
      >>> st.apply(p, sp)["w"].tolist()
      [[0.0, -2.0], [3.0, 0.0]]
    """
    return masks.apply(params, state.masks)


def is_update_step(method: Method, state: SparseState) -> Array:
    r"""Whether :func:`update` changes the mask at ``t = state.step`` (a bool array).

    gradual: :math:`t_0 \le t \le t_1` and (:math:`(t - t_0) \bmod \Delta T = 0` or
    :math:`t = t_1`); SET / RigL: :math:`0 < t < t_1`, :math:`t \ge t_0`, :math:`t \bmod \Delta T
    = 0`; STE / SR-STE: every step; static: never.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> m = st.method("set")
      >>> sp = st.init(m, {"w": jnp.ones((4, 4))}, jax.random.key(0), sparsity=0.5, delta_t=2,
      ...              end=5)
      >>> [bool(st.is_update_step(m, sp._replace(step=jnp.int32(t)))) for t in range(6)]
      [False, False, True, False, True, False]
    """
    return _check_method(method).is_update(method, state)


def target_sparsity(method: Method, state: SparseState) -> Array:
    r"""The scheduled sparsity at ``state.step``: gradual's Zhu–Gupta schedule
    (``schedules.polynomial`` with :math:`s_i = 0`, power 3), the final sparsity otherwise.

    .. math::  s_t = s_f\,\big(1 - (1 - \pi_t)^3\big),\qquad
               \pi_t = \operatorname{clip}\big((t - t_0)/(t_1 - t_0), 0, 1\big)

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> m = st.method("gradual")
      >>> sp = st.init(m, {"w": jnp.ones((4, 4))}, jax.random.key(0), sparsity=0.8, end=10)
      >>> [round(float(st.target_sparsity(m, sp._replace(step=jnp.int32(t)))), 3) for t in (0, 5, 10)]
      [0.0, 0.7, 0.8]
    """
    _check_method(method)
    if method.name != "gradual":
        return state.sparsity
    return schedules.polynomial(
        state.step,
        initial_sparsity=0.0,
        final_sparsity=state.sparsity,
        begin_step=state.begin,
        end_step=state.end,
        power=3,
    )


def drop_fraction_at(method: Method, state: SparseState) -> Array:
    r"""The fraction of each layer's active weights an update at ``state.step`` drops.

    RigL: :math:`f(t) = \tfrac{\alpha}{2}\big(1 + \cos(\pi \min(t/T_{end}, 1))\big)`; SET:
    :math:`\zeta`; other methods 0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> m = st.method("rigl")
      >>> sp = st.init(m, {"w": jnp.ones((4, 4))}, jax.random.key(0), sparsity=0.5, end=100)
      >>> [round(float(st.drop_fraction_at(m, sp._replace(step=jnp.int32(t)))), 3) for t in (0, 50, 100)]
      [0.3, 0.15, 0.0]
    """
    return _check_method(method).drop_fraction(method, state)


# --- the step -----------------------------------------------------------------------------------


def forward_params(method: Method, state: SparseState, params: Params) -> Params:
    r"""The params the loss sees.

    STE / SR-STE: :math:`w + \mathrm{sg}(w \odot m - w)` — the value is :math:`w \odot m` and the
    gradient reaches every dense weight (straight through). The other methods: ``params``
    themselves, which are already exactly 0 outside the mask (:func:`apply` after :func:`init`,
    :func:`keep_zero` and :func:`update` keep them so), so no work is added to the step and the
    gradient is the dense one (RigL grows by it; :func:`keep_zero` drops it for pruned weights).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> p = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
      >>> m = st.method("ste", allocation="uniform")
      >>> sp = st.init(m, p, jax.random.key(0), sparsity=0.5)
      >>> st.forward_params(m, sp, p)["w"].tolist()
      [[0.0, -2.0], [3.0, 0.0]]
      >>> jax.grad(lambda q: st.forward_params(m, sp, q)["w"].sum())(p)["w"].tolist()
      [[1.0, 1.0], [1.0, 1.0]]
    """
    if not _check_method(method).dense_weights:
        return params
    return jax.tree.map(
        lambda w, m: w + lax.stop_gradient(jnp.where(m, w, jnp.zeros_like(w)) - w),
        params,
        state.masks,
    )


def gradients(method: Method, state: SparseState, params: Params, grads: PyTree) -> PyTree:
    r"""The gradient the optimizer sees: SR-STE adds :math:`\lambda_w (1 - m) \odot w`; the other
    methods return ``grads``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> p = {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]])}
      >>> m = st.method("sr_ste", allocation="uniform", sr_lambda=0.1)
      >>> sp = st.init(m, p, jax.random.key(0), sparsity=0.5)
      >>> st.gradients(m, sp, p, jax.tree.map(jnp.zeros_like, p))["w"].tolist()
      [[0.10000000149011612, 0.0], [0.0, 0.05000000074505806]]
    """
    _check_method(method)
    if method.name != "sr_ste":
        return grads
    lam = method.sr_lambda
    return jax.tree.map(
        lambda g, w, m: g + jnp.where(m, jnp.zeros_like(w), lam * w).astype(g.dtype),
        grads,
        params,
        state.masks,
    )


def update(
    method: Method,
    state: SparseState,
    params: Params,
    grads: PyTree,
    opt_state: PyTree = None,
    *,
    axis_name: Any = None,
) -> tuple[SparseState, Params, PyTree]:
    r"""One step of the schedule, after the optimizer: a mask update at update steps, step + 1.

    At ``t = state.step`` (see :func:`is_update_step`): gradual keeps the largest :math:`|w|` of
    the current mask at the counts of :func:`target_sparsity`; SET / RigL drop
    :math:`d` (``patterns.drop_count`` of :func:`drop_fraction_at`, at most the inactive count) of
    the active weights with the smallest :math:`|w|` and grow :math:`d` of the weights inactive
    before the update, at random (SET) or by the largest :math:`|g|` of the dense gradient
    ``grads`` (RigL); STE / SR-STE take the top :math:`|w|` of the dense weights. Zero-mode methods
    zero the weights outside the new mask (grown weights start at 0); SET / RigL reset the
    optimizer moments of the dropped and grown weights (:func:`reset_moments`).

    The update runs under ``lax.cond``, so other steps do no update work. With ``axis_name`` (the
    name of a ``jax.vmap`` axis over tickets) the predicate is
    :math:`\sum_{\text{tickets}} [\text{update}] > 0`, unbatched, and each ticket keeps its old
    values where its own flag is False; without it, a ``vmap`` turns the cond into a select that
    does the update work every step.

    Args:
      method: the :class:`Method` (static).
      state: the :class:`SparseState`.
      params: params after the optimizer step.
      grads: the gradient of the step (RigL grows by it; others ignore it).
      opt_state: the optimizer state, or ``None``.
      axis_name: the ticket ``vmap`` axis name, or ``None``.

    Returns:
      ``(state, params, opt_state)``.

    Example — gradual pruning reaches 75% at its end step:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> m = st.method("gradual", allocation="uniform")
      >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
      >>> sp = st.init(m, params, jax.random.key(0), sparsity=0.75, delta_t=2, end=4)
      >>> for _ in range(5):
      ...     sp, params, _ = st.update(m, sp, params, params)
      >>> int(sp.masks["w"].sum()), float(params["w"][0, 0]), float(params["w"][3, 3])
      (4, 0.0, 16.0)
    """
    impl = _check_method(method)
    _checks.check_like(params, state.masks, name="params", ref_name="state.masks")
    flag = impl.is_update(method, state)
    operands = (state, params, opt_state)

    def run(ops: tuple[SparseState, Params, PyTree]) -> tuple[SparseState, Params, PyTree]:
        st, p, o = ops
        new_masks, key = impl.new_masks(method, st, p, grads)
        if not impl.dense_weights:
            p = jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), p, new_masks)
        if impl.regrows and o is not None:
            changed = jax.tree.map(lambda a, b: a != b, st.masks, new_masks)
            o = reset_moments(o, p, changed)
        out = (st._replace(masks=new_masks, key=key), p, o)
        if axis_name is not None and impl.schedule == "periodic":
            # The cond ran for every ticket: a ticket keeps its old values unless it updates.
            out = jax.tree.map(lambda n, old: _where(flag, n, old), out, ops)
        return out

    if impl.schedule == "always":
        state, params, opt_state = run(operands)
    elif impl.schedule == "periodic":
        pred = flag if axis_name is None else lax.psum(flag.astype(jnp.int32), axis_name) > 0
        state, params, opt_state = lax.cond(pred, run, lambda ops: ops, operands)
    return state._replace(step=state.step + 1), params, opt_state


def _where(flag: Array, new: Any, old: Any) -> Any:
    if jax.dtypes.issubdtype(jnp.result_type(new), jax.dtypes.prng_key):
        return lax.select(jnp.broadcast_to(flag, jnp.shape(new)), new, old)
    return jnp.where(flag, new, old)


def metrics(method: Method, state: SparseState) -> dict[str, Array]:
    r"""Numbers to log: the density of the prunable weights, the scheduled sparsity, the drop
    fraction at this step, and the drop (= growth) count of the last SET / RigL update.

    The last update's count is :math:`\sum_\ell \min(d_\ell, n_\ell - c_\ell)` at the last update
    step before ``state.step`` (0 before the first and for the other methods).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import sparse_training as st
      >>> m = st.method("set", allocation="uniform")
      >>> sp = st.init(m, {"w": jnp.ones((10, 10))}, jax.random.key(0), sparsity=0.8, delta_t=5,
      ...              end=100)
      >>> out = st.metrics(m, sp._replace(step=jnp.int32(7)))
      >>> round(float(out["density"]), 3), int(out["drop_count"])
      (0.2, 6)
    """
    impl = _check_method(method)
    prunable = masks.prunable_leaves(state.masks, method.prunable)
    density = masks.density(prunable) if prunable else jnp.ones((), jnp.float32)
    drop = jnp.zeros((), jnp.int32)
    if impl.regrows:
        # The last update step before state.step: the largest multiple of ΔT below it.
        last = ((state.step - 1) // state.delta_t) * state.delta_t
        at_last = state._replace(step=last)
        fraction = impl.drop_fraction(method, at_last)
        selected = _flags(method, state.masks)  # dense layers never drop
        for m, flag in zip(jax.tree.leaves(state.masks), selected, strict=True):
            if not flag:
                continue
            count = jnp.sum(m, dtype=jnp.int32)
            d = patterns.drop_count(count, fraction, method.pattern, m.size)
            drop = drop + jnp.minimum(d, m.size - count)
        drop = jnp.where(impl.is_update(method, at_last), drop, 0)
    return {
        "density": density,
        "target_sparsity": target_sparsity(method, state),
        "drop_fraction": drop_fraction_at(method, state),
        "drop_count": drop,
    }


# --- optax --------------------------------------------------------------------------------------


def keep_zero(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    r"""Wrap an optimizer so pruned weights stay exactly 0: ``update(..., params, *, mask)``.

    The inner optimizer sees :math:`g \odot m`; the returned update is
    :math:`u = m\,?\,u_{inner} : -w`, so :math:`w + u = 0` for every pruned weight whatever the
    inner optimizer adds (weight decay, momentum, Adam).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import sparse_training as st
      >>> tx = st.keep_zero(optax.adamw(0.1, weight_decay=0.1))
      >>> p, m = {"w": jnp.array([0.0, 1.0])}, {"w": jnp.array([False, True])}
      >>> u, _ = tx.update({"w": jnp.array([5.0, 5.0])}, tx.init(p), p, mask=m)
      >>> [round(float(w), 4) for w in optax.apply_updates(p, u)["w"]]  # 1 − 0.1·(1 + 0.1·1)
      [0.0, 0.89]
    """
    inner = optax.with_extra_args_support(inner)

    def update_fn(
        updates: PyTree, state: PyTree, params: Params | None = None, *, mask: Mask = None, **extra
    ) -> tuple[PyTree, PyTree]:
        _checks.require(mask, name="mask", why="by keep_zero's update (pass mask=state.masks)")
        _checks.require(params, name="params", why="by keep_zero's update")
        _checks.check_mask(mask, params)
        masked = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, mask)
        inner_updates, state = inner.update(masked, state, params, **extra)
        out = jax.tree.map(
            lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), inner_updates, params, mask
        )
        return out, state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def reset_moments(opt_state: PyTree, params: Params, where: Mask) -> PyTree:
    r"""``opt_state`` with 0 at ``where`` in every subtree shaped like ``params``.

    The state is walked as a pytree: each subtree with the params' tree structure and leaf
    shapes (momentum, Adam's :math:`\mu` and :math:`\nu`, MultiSteps' accumulated gradients, ...)
    gets :math:`x \leftarrow (1 - \text{where}) \odot x`; counts, hyper-parameters and other
    leaves are untouched. No optimizer class is special-cased, so any optax state works
    (chains, ``inject_hyperparams``, ``MultiSteps``, custom transformations).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import sparse_training as st
      >>> p = {"w": jnp.ones(3)}
      >>> tx = optax.adam(0.1)
      >>> _, s = tx.update({"w": jnp.ones(3)}, tx.init(p), p)
      >>> s = st.reset_moments(s, p, {"w": jnp.array([True, False, False])})
      >>> s[0].mu["w"].tolist(), int(s[0].count)
      ([0.0, 0.10000000149011612, 0.10000000149011612], 1)
    """
    _checks.check_mask(where, params, name="where")
    treedef = jax.tree.structure(params)
    shapes = [jnp.shape(p) for p in jax.tree.leaves(params)]

    def like_params(x: Any) -> bool:
        if jax.tree.structure(x) != treedef:  # type: ignore[operator]
            return False
        return [jnp.shape(v) for v in jax.tree.leaves(x)] == shapes

    def reset(x: Any) -> Any:
        if not like_params(x):
            return x
        return jax.tree.map(lambda v, w: jnp.where(w, jnp.zeros_like(v), v), x, where)

    return jax.tree.map(reset, opt_state, is_leaf=like_params)
