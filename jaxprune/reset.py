r"""Resets: what the kept weights start from, and what the pruned weights are set to.

The two independent choices of the Deconstructing-Lottery-Tickets ablation grid (Zhou et al. 2019),
each a static name, applied per prunable leaf :math:`\ell` (a layer's kernel). Notation: :math:`w_i`
is a weight at initialisation (or at the rewind point), :math:`w_f` the same weight after training,
:math:`M` the mask (True = kept), :math:`\pi` a random permutation drawn from the key,
:math:`\alpha_\ell = \mathrm{std}(w_{i,\ell})` the population standard deviation of the whole
leaf (for a degenerate leaf whose std is at float-rounding level, :math:`\le 10^{-6}\max|w_i|`, e.g.
one repeated value, :math:`\alpha_\ell = \mathrm{mean}|w_{i,\ell}|` instead, so that constant resets
keep a non-zero magnitude and the signed ones keep every sign), :math:`n_\ell` its size and :math:`k_\ell = |M_\ell|_1` its kept count.

**Kept weights** (:data:`KEPT`, used by :func:`reset_kept`) — value at a kept position:

* ``rewind``: :math:`w_i` (the original Lottery Ticket; sign kept);
* ``reinit``: :math:`\pi(w_i)`, a permutation of the whole leaf — a fresh draw from the
  layer's own init distribution, so the leaf's multiset of values is unchanged (sign dropped);
* ``signed_reinit``: :math:`|\pi(w_i)|\cdot\mathrm{sign}(w_i)` (sign kept);
* ``reshuffle``: the kept :math:`w_i` permuted among the kept positions only (sign dropped);
* ``signed_reshuffle``: :math:`|\text{reshuffled}|\cdot\mathrm{sign}(w_i)` (sign kept);
* ``constant``: :math:`\alpha_\ell\cdot\mathrm{sign}(\pi(w_i))` — random signs in the same
  proportion as :math:`w_i`'s (sign dropped);
* ``signed_constant``: :math:`\alpha_\ell\cdot\mathrm{sign}(w_i)` (sign kept);
* ``<any of these>_rescaled``: the base value :math:`\times\, n_\ell / \max(k_\ell, 1)`;
* ``fine_tune``: :math:`w_f`, the trained value (no rewinding: the prune-and-retrain loop of
  LeCun et al. 1990 and Han et al. 2015, which Renda et al. 2020 compare with rewinding); needs
  ``w_final``.

A weight initialised at exactly 0 has sign 0, so the signed resets and the constants keep it at 0.

**Pruned weights** (:data:`PRUNED`, used by :func:`pruned_values`) — value at a pruned position,
with :math:`z = |w_i| > |w_f|` ("moved toward zero"):

* ``zero``: 0 (the Lottery Ticket);
* ``freeze_init``: :math:`w_i`, frozen;
* ``freeze_init_zero_mask`` ("Variant 1"): 0 where :math:`z`, else :math:`w_i`;
* ``freeze_init_zero_all`` ("Variant 2"): as Variant 1, *and* the kept weights with :math:`z`
  start at 0 (that kept part is applied by :func:`reset`);
* ``freeze_init_zero_random`` (the control): 0 on a random subset of the pruned positions of
  exactly Variant 1's size in each leaf, :math:`w_i` on the others.

Randomness: leaf number ``j`` (in ``jax.tree.leaves`` order, counting every leaf) uses the key
``leaf_key = fold_in(key, j)``; :func:`reset` gives the kept part ``fold_in(key, 0)`` and the
pruned part ``fold_in(key, 1)``. Permutations are ``jax.random.permutation(leaf_key, size)``; the
random control ranks the pruned positions by ``jax.random.uniform(leaf_key, (size,))``. Keys and
masks are arrays and names are static, so every function here runs under ``jit`` and
``jit(vmap(...))`` over a leading ticket axis, and a new key or mask never recompiles.

Weights must be finite: a concrete ``w_init`` or ``w_final`` holding NaN or ±inf is refused with
a ``ValueError`` naming the leaf. Under ``jit`` the values are tracers and are not checked (that
would need a host sync): a non-finite weight then passes through, and a non-finite leaf can make
its whole reset non-finite (its std enters the constant resets).

Example — an untrained supermask with signed-constant weights:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import reset
  >>> w_init = {"w": jnp.array([[1.0, -7.0], [7.0, -1.0]]), "b": jnp.array([0.5, 0.5])}
  >>> mask = {"w": jnp.array([[True, True], [False, False]]), "b": jnp.array([True, True])}
  >>> params, frozen = reset.reset(w_init, mask, kept="signed_constant")
  >>> params["w"].tolist(), params["b"].tolist()
  ([[5.0, -5.0], [0.0, 0.0]], [0.5, 0.5])
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks, masks, select
from jaxprune._types import Array, Key, Mask, Params, Prunable, PyTree

__all__ = [
    "KEPT",
    "PRUNED",
    "Rule",
    "kept_names",
    "needs",
    "permutations",
    "pruned_names",
    "pruned_values",
    "reset",
    "reset_kept",
    "start_params",
]


class Rule(NamedTuple):
    """A registered reset: a per-leaf function on flattened leaves and the inputs it needs.

    Kept rules are ``fn(w_init, mask, perm, w_final) -> values``, ``perm`` the leaf's random
    permutation (:func:`permutations`) when ``needs`` holds ``"key"``, else ``None``, and
    ``w_final`` ``None`` unless ``needs`` holds it; pruned rules are
    ``fn(w_init, w_final, mask, key) -> frozen`` (0 at kept positions). ``needs`` is a subset of
    ``{"key", "w_final"}``.
    """

    fn: Callable[..., Array]
    needs: frozenset[str]


_KEY = frozenset({"key"})
_W_FINAL = frozenset({"w_final"})
_NOTHING: frozenset[str] = frozenset()


# --- kept weights: per leaf, on 1-D (flattened) arrays --------------------------------------
# ``perm`` is the leaf's permutation(leaf_key, size) when the rule draws one (else None); every
# random kept reset reads the same permutation, so a batch of resets can share one draw.


def _rewind(w: Array, m: Array, perm: Array | None, wf: Array | None) -> Array:
    del m, perm, wf
    return w


def _reinit(w: Array, m: Array, perm: Array, wf: Array | None) -> Array:
    del m, wf
    return w[perm]


def _signed_reinit(w: Array, m: Array, perm: Array, wf: Array | None) -> Array:
    return jnp.abs(_reinit(w, m, perm, wf)) * jnp.sign(w)


def _reshuffle(w: Array, m: Array, perm: Array, wf: Array | None) -> Array:
    # The kept values move among the kept positions only, so their multiset is preserved exactly,
    # for a traced mask: the j-th kept position in index order receives the value of the j-th
    # kept position in order of its perm value. Both lists are compactions by a running count
    # (no sort: a sort is the slow part of a pruning round on a CPU).
    del wf
    n = w.size
    index = jnp.arange(n)

    def compact(keep: Array, values: Array) -> Array:
        slot = jnp.where(keep, jnp.cumsum(keep) - 1, n)  # out of range: dropped
        return jnp.zeros(n, values.dtype).at[slot].set(values, mode="drop")

    by_perm = jnp.zeros(n, index.dtype).at[perm].set(index)  # positions by increasing perm value
    sources = compact(m[by_perm], by_perm)
    targets = compact(m, index)
    kept = index < jnp.sum(m)
    return w.at[jnp.where(kept, targets, n)].set(w[sources], mode="drop")


def _signed_reshuffle(w: Array, m: Array, perm: Array, wf: Array | None) -> Array:
    return jnp.abs(_reshuffle(w, m, perm, wf)) * jnp.sign(w)


def _alpha(w: Array) -> Array:
    std = jnp.std(w)
    # A one-valued leaf has std 0 (or float noise): its magnitude is then the value itself.
    return jnp.where(std > 1e-6 * jnp.max(jnp.abs(w)), std, jnp.mean(jnp.abs(w)))


def _constant(w: Array, m: Array, perm: Array, wf: Array | None) -> Array:
    return _alpha(w) * jnp.sign(_reinit(w, m, perm, wf))


def _signed_constant(w: Array, m: Array, perm: Array | None, wf: Array | None) -> Array:
    del m, perm, wf
    return _alpha(w) * jnp.sign(w)


def _fine_tune(w: Array, m: Array, perm: Array | None, wf: Array) -> Array:
    del w, m, perm
    return wf


def _rescaled(fn: Callable[..., Array]) -> Callable[..., Array]:
    def scaled(w: Array, m: Array, perm: Array | None, wf: Array | None) -> Array:
        # An empty leaf has no kept position to write, so any finite factor will do there.
        kept = jnp.maximum(jnp.sum(m, dtype=jnp.int32), 1)
        return fn(w, m, perm, wf) * (w.size / kept).astype(w.dtype)

    return scaled


_BASE_KEPT = {
    "rewind": Rule(_rewind, _NOTHING),
    "reinit": Rule(_reinit, _KEY),
    "signed_reinit": Rule(_signed_reinit, _KEY),
    "reshuffle": Rule(_reshuffle, _KEY),
    "signed_reshuffle": Rule(_signed_reshuffle, _KEY),
    "constant": Rule(_constant, _KEY),
    "signed_constant": Rule(_signed_constant, _NOTHING),
}

KEPT: Mapping[str, Rule] = types.MappingProxyType(
    {
        **_BASE_KEPT,
        **{f"{n}_rescaled": Rule(_rescaled(r.fn), r.needs) for n, r in _BASE_KEPT.items()},
        "fine_tune": Rule(_fine_tune, _W_FINAL),
    }
)
"""Kept-weight resets by name (see the module table)."""


# --- pruned weights: per leaf, on 1-D arrays; 0 at kept positions ----------------------------


def _toward_zero(w_init: Array, w_final: Array) -> Array:
    return jnp.abs(w_init) > jnp.abs(w_final)


def _zero(wi: Array, wf: Array | None, m: Array, key: Key | None) -> Array:
    del wf, m, key
    return jnp.zeros_like(wi)


def _freeze_init(wi: Array, wf: Array | None, m: Array, key: Key | None) -> Array:
    del wf, key
    return jnp.where(m, 0, wi)


def _freeze_init_zero_mask(wi: Array, wf: Array, m: Array, key: Key | None) -> Array:
    del key
    return jnp.where(m | _toward_zero(wi, wf), 0, wi)


def _freeze_init_zero_random(wi: Array, wf: Array, m: Array, key: Key) -> Array:
    # The control must zero exactly as many pruned weights as Variant 1 does in this leaf, so
    # the count comes from Variant 1 and keep_top_k picks that many pruned positions by uniform
    # random scores (ties, almost never, by index).
    count = jnp.sum(~m & _toward_zero(wi, wf), dtype=jnp.int32)
    scores = jax.random.uniform(key, (wi.size,))
    zeroed = select.keep_top_k(scores, ~m, count)
    return jnp.where(m | zeroed, 0, wi)


PRUNED: Mapping[str, Rule] = types.MappingProxyType(
    {
        "zero": Rule(_zero, _NOTHING),
        "freeze_init": Rule(_freeze_init, _NOTHING),
        "freeze_init_zero_mask": Rule(_freeze_init_zero_mask, _W_FINAL),
        "freeze_init_zero_all": Rule(_freeze_init_zero_mask, _W_FINAL),
        "freeze_init_zero_random": Rule(_freeze_init_zero_random, _KEY | _W_FINAL),
    }
)
"""Pruned-weight values by name (see the module table); Variant 2's frozen values are Variant 1's."""


# --- public API -------------------------------------------------------------------------------


def kept_names() -> tuple[str, ...]:
    """Names of the kept-weight resets: the base names, their ``_rescaled`` forms, ``fine_tune``."""
    return tuple(KEPT)


def pruned_names() -> tuple[str, ...]:
    """Names of the pruned-weight values."""
    return tuple(PRUNED)


def needs(kept: str, pruned: str) -> frozenset[str]:
    """Which optional inputs (``"key"``, ``"w_final"``) a kept/pruned pair needs.

    Lets an experiment validate its configs before training anything.

    Example:
      >>> from jaxprune import reset
      >>> sorted(reset.needs("rewind", "zero")), sorted(reset.needs("reinit", "freeze_init_zero_mask"))
      ([], ['key', 'w_final'])
    """
    _checks.check_choice(kept, KEPT, name="kept reset")
    _checks.check_choice(pruned, PRUNED, name="pruned value")
    return KEPT[kept].needs | PRUNED[pruned].needs


def _check_inputs(w_init: Params, mask: Mask, w_final: Params | None, key: Key | None) -> None:
    for path, leaf in _checks.leaves_with_paths(w_init):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"w_init{path} must be a float array, got {dtype or type(leaf).__name__}; resets "
                "permute and scale weights."
            )
    _checks.check_mask(mask, w_init)
    if w_final is not None:
        _checks.check_like(w_final, w_init, name="w_final", ref_name="w_init")
    _checks.check_key(key)
    # NaN or inf weights would pass through every reset (a NaN std makes a whole constant layer
    # NaN); concrete ones are refused here, traced ones pass unchecked (module docstring).
    _checks.check_finite(w_init, name="w_init")
    if w_final is not None:
        _checks.check_finite(w_final, name="w_final")


def _require(need: frozenset[str], key: Key | None, w_final: Params | None, *, by: str) -> None:
    if "key" in need:
        _checks.require(key, name="key", why=f"by {by} (it draws random numbers)")
    if "w_final" in need:
        _checks.require(
            w_final, name="w_final", why=f"by {by} (it compares |w_init| with |w_final|)"
        )


def _leaf_key(key: Key | None, index: int) -> Key | None:
    return None if key is None else jax.random.fold_in(key, index)


def permutations(w_init: Params, key: Key) -> PyTree:
    """The random permutation every random kept reset of :func:`reset_kept` draws, per leaf:
    leaf ``j``'s is ``jax.random.permutation(fold_in(key, j), size_j)`` (int32, flat).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import reset
      >>> w = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> m = {"w": jnp.ones((2, 2), bool)}
      >>> perms = reset.permutations(w, jax.random.key(0))
      >>> a = reset.reset_kept("reinit", w, m, permutations=perms)["w"]
      >>> bool((a == reset.reset_kept("reinit", w, m, key=jax.random.key(0))["w"]).all())
      True
    """
    _checks.check_key(key)
    _checks.require(key, name="key", why="by permutations")
    return jax.tree.unflatten(
        jax.tree.structure(w_init),
        [
            jax.random.permutation(jax.random.fold_in(key, j), int(np.size(w)))
            for j, w in enumerate(jax.tree.leaves(w_init))
        ],
    )


def reset_kept(
    name: str,
    w_init: Params,
    mask: Mask,
    *,
    key: Key | None = None,
    prunable: Prunable = None,
    w_final: Params | None = None,
    permutations: PyTree | None = None,
) -> Params:
    """The starting values of the kept weights, by reset name (formulas in the module table).

    Args:
      name: one of :func:`kept_names` (static).
      w_init: initial (or rewind-point) params, float leaves.
      mask: bool pytree mirroring ``w_init`` (True = kept).
      key: PRNG key (``jax.random.key``); required by the random resets (:func:`needs`).
      prunable: which leaves are reset (a :data:`~jaxprune._types.Prunable` spec); the other
        leaves are returned as ``w_init`` (rewound).
      w_final: trained params like ``w_init``; required by ``fine_tune``.
      permutations: the leaves' permutations, ``permutations(w_init, key)``, instead of ``key``:
        the random resets all read the same permutation, so resets of one ticket by several
        names can share a single draw.

    Returns:
      Params like ``w_init``: the reset values at kept positions of prunable leaves and ``w_init``
      everywhere else (pruned positions are not meaningful here; see :func:`reset`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import reset
      >>> w = {"w": jnp.array([[1.0, -7.0], [7.0, -1.0]])}  # std 5
      >>> m = {"w": jnp.array([[True, True], [False, False]])}
      >>> reset.reset_kept("signed_constant_rescaled", w, m)["w"].tolist()  # 5 * 4/2
      [[10.0, -10.0], [7.0, -1.0]]
    """
    _checks.check_choice(name, KEPT, name="kept reset")
    _check_inputs(w_init, mask, w_final, key)
    rule = KEPT[name]
    if permutations is not None:
        _checks.check_same_structure(permutations, w_init, name="permutations", ref_name="w_init")
    else:
        _require(rule.needs & _KEY, key, None, by=f"kept reset {name!r}")
    _require(rule.needs - _KEY, None, w_final, by=f"kept reset {name!r}")
    flags = jax.tree.leaves(masks.is_prunable(w_init, prunable))
    w_leaves, treedef = jax.tree.flatten(w_init)
    n = len(w_leaves)
    f_leaves = [None] * n if w_final is None else jax.tree.leaves(w_final)
    p_leaves = [None] * n if permutations is None else jax.tree.leaves(permutations)
    out = []
    for j, (w, wf, m, flag, perm) in enumerate(
        zip(w_leaves, f_leaves, jax.tree.leaves(mask), flags, p_leaves, strict=True)
    ):
        w, m = jnp.asarray(w), jnp.asarray(m)
        if not flag or w.size == 0:
            out.append(w)
            continue
        if "key" in rule.needs and perm is None:
            assert key is not None  # _require above
            perm = jax.random.permutation(jax.random.fold_in(key, j), w.size)
        wf = None if wf is None else jnp.ravel(jnp.asarray(wf, w.dtype))
        values = rule.fn(w.ravel(), m.ravel(), perm, wf).reshape(w.shape)
        out.append(jnp.where(m, values.astype(w.dtype), w))
    return jax.tree.unflatten(treedef, out)


def pruned_values(
    name: str,
    w_init: Params,
    mask: Mask,
    *,
    w_final: Params | None = None,
    key: Key | None = None,
) -> Params:
    r"""The frozen values of the pruned weights, by name: the ``w_frozen`` of ``"forward"`` mode.

    The training engine's forward pass then sees :math:`m\cdot w + (1-m)\cdot w_{frozen}`.
    Only the mask decides what is pruned (non-prunable leaves have all-True masks).

    Args:
      name: one of :func:`pruned_names` (static).
      w_init: initial (or rewind-point) params, float leaves.
      mask: bool pytree mirroring ``w_init`` (True = kept).
      w_final: trained params like ``w_init``; required by the ``freeze_init_zero_*`` variants.
      key: PRNG key; required by ``freeze_init_zero_random``.

    Returns:
      Params like ``w_init``: the frozen value at pruned positions, 0 at kept positions (all
      zeros for ``"zero"``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import reset
      >>> w_i, w_f = {"w": jnp.array([2.0, -2.0, 1.0, -1.0])}, {"w": jnp.array([3.0, -1.0, 0.5, -4.0])}
      >>> m = {"w": jnp.array([True, False, False, False])}
      >>> reset.pruned_values("freeze_init", w_i, m)["w"].tolist()
      [0.0, -2.0, 1.0, -1.0]
      >>> reset.pruned_values("freeze_init_zero_mask", w_i, m, w_final=w_f)["w"].tolist()
      [0.0, 0.0, 0.0, -1.0]
    """
    _checks.check_choice(name, PRUNED, name="pruned value")
    _check_inputs(w_init, mask, w_final, key)
    rule = PRUNED[name]
    _require(rule.needs, key, w_final, by=f"pruned value {name!r}")
    w_leaves, treedef = jax.tree.flatten(w_init)
    f_leaves = [None] * len(w_leaves) if w_final is None else jax.tree.leaves(w_final)
    out = []
    for j, (w, wf, m) in enumerate(zip(w_leaves, f_leaves, jax.tree.leaves(mask), strict=True)):
        w, m = jnp.asarray(w), jnp.asarray(m)
        if w.size == 0:
            out.append(w)
            continue
        wf = None if wf is None else jnp.ravel(jnp.asarray(wf))
        frozen = rule.fn(w.ravel(), wf, m.ravel(), _leaf_key(key, j)).reshape(w.shape)
        out.append(frozen.astype(w.dtype))
    return jax.tree.unflatten(treedef, out)


def reset(
    w_init: Params,
    mask: Mask,
    *,
    kept: str = "rewind",
    pruned: str = "zero",
    w_final: Params | None = None,
    key: Key | None = None,
    prunable: Prunable = None,
) -> tuple[Params, Params]:
    r"""Starting params and frozen pruned values for the next training run of a ticket.

    .. math::
        \theta_{start} = \mathrm{where}(M,\ \mathrm{kept}(w_i),\ w_{frozen}), \qquad
        w_{frozen} = \mathrm{pruned}(w_i, w_f)

    For ``pruned="freeze_init_zero_all"`` (Variant 2) the kept weights of prunable leaves that
    moved toward zero (:math:`|w_i| > |w_f|`) start at 0, whatever the kept reset gave them.
    The kept part draws from ``fold_in(key, 0)``, the pruned part from ``fold_in(key, 1)``.

    Args:
      w_init: initial (or rewind-point) params, float leaves.
      mask: bool pytree mirroring ``w_init`` (True = kept).
      kept: a name of :func:`kept_names` (static).
      pruned: a name of :func:`pruned_names` (static).
      w_final: trained params like ``w_init``, when :func:`needs` says so.
      key: PRNG key, when :func:`needs` says so.
      prunable: which leaves the kept reset applies to (others start at ``w_init``).

    Returns:
      ``(params, frozen)``: ``params`` to train from (equal to ``frozen`` at pruned positions, so
      0 there for ``pruned="zero"``), and ``frozen`` for the ``"forward"`` masking mode.

    Example — Variant 2: every weight that moved toward zero starts at 0:
      >>> import jax.numpy as jnp
      >>> from jaxprune import reset
      >>> w_i = {"w": jnp.array([[2.0, -2.0], [1.0, -1.0]])}
      >>> w_f = {"w": jnp.array([[1.0, -3.0], [0.5, -4.0]])}
      >>> m = {"w": jnp.array([[True, True], [False, False]])}
      >>> params, frozen = reset.reset(w_i, m, pruned="freeze_init_zero_all", w_final=w_f)
      >>> params["w"].tolist(), frozen["w"].tolist()
      ([[0.0, -2.0], [0.0, -1.0]], [[0.0, 0.0], [0.0, -1.0]])
    """
    need = needs(kept, pruned)
    _check_inputs(w_init, mask, w_final, key)
    _require(need, key, w_final, by=f"kept={kept!r}, pruned={pruned!r}")
    start = reset_kept(
        kept, w_init, mask, key=_leaf_key(key, 0), prunable=prunable, w_final=w_final
    )
    frozen = pruned_values(pruned, w_init, mask, w_final=w_final, key=_leaf_key(key, 1))
    return start_params(start, frozen, mask, pruned=pruned, w_init=w_init, w_final=w_final,
                        prunable=prunable), frozen  # fmt: skip


def start_params(
    start: Params,
    frozen: Params,
    mask: Mask,
    *,
    pruned: str,
    w_init: Params,
    w_final: Params | None = None,
    prunable: Prunable = None,
) -> Params:
    r"""The params to train from, given the kept values and the pruned values:
    :math:`\theta = \mathrm{where}(M, \mathrm{start}, w_{frozen})`.

    For ``pruned="freeze_init_zero_all"`` (Variant 2) the kept weights of prunable leaves that
    moved toward zero (:math:`|w_i| > |w_f|`) start at 0 instead. :func:`reset` is
    :func:`reset_kept` (key ``fold_in(key, 0)``), :func:`pruned_values` (``fold_in(key, 1)``) and
    this; calling the three apart lets a ticket batch compute each kept reset and each pruned
    value once for all the tickets that use it.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import reset
      >>> m = {"w": jnp.array([True, False])}
      >>> reset.start_params({"w": jnp.array([5.0, 5.0])}, {"w": jnp.array([0.0, 7.0])}, m,
      ...                    pruned="freeze_init", w_init={"w": jnp.array([1.0, 7.0])})["w"].tolist()
      [5.0, 7.0]
    """
    _checks.check_choice(pruned, PRUNED, name="pruned value")
    if pruned == "freeze_init_zero_all":
        _require(PRUNED[pruned].needs - _KEY, None, w_final, by=f"pruned value {pruned!r}")
        flags = masks.is_prunable(w_init, prunable)
        start = jax.tree.map(
            lambda s, wi, wf, flag: jnp.where(_toward_zero(wi, wf), 0, s) if flag else s,
            start,
            w_init,
            w_final,
            flags,
        )
    return jax.tree.map(lambda s, m, f: jnp.where(m, s, f), start, mask, frozen)
