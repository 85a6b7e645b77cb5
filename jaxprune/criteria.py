r"""Mask criteria of Deconstructing Lottery Tickets (Zhou et al. 2019), by the paper's names.

A criterion scores every weight from the weights at initialisation (or at the rewind point)
:math:`w_i`, the trained weights :math:`w_f`, the gradient at initialisation :math:`g` and a PRNG
key. **Higher score = keep**; :mod:`jaxprune.select` then keeps an exact number of the best.

================================  ==========================================================  =======
name                              score (per weight)                                          needs
================================  ==========================================================  =======
``large_final``                   :math:`|w_f|`                                               w_final
``small_final``                   :math:`-|w_f|`                                              w_final
``large_init``                    :math:`|w_i|`                                               —
``small_init``                    :math:`-|w_i|`                                              —
``large_init_large_final``        :math:`\min(\mathrm{rank}|w_i|, \mathrm{rank}|w_f|)`        w_final
``small_init_small_final``        :math:`\min(\mathrm{rank}(-|w_i|), \mathrm{rank}(-|w_f|))`  w_final
``magnitude_increase``            :math:`|w_f| - |w_i|`                                       w_final
``movement``                      :math:`|w_f - w_i|`                                         w_final
``random``                        :math:`U[0, 1)` drawn from ``key``                          key
``large_final_same_sign``         :math:`|w_f|` if sign(w_i) = sign(w_f), else −∞             w_final
``large_final_diff_sign``         :math:`|w_f|` if sign(w_i) ≠ sign(w_f), else −∞             w_final
``magnitude_increase_same_sign``  :math:`|w_f| - |w_i|` if signs agree, else −∞               w_final
``magnitude_increase_diff_sign``  :math:`|w_f| - |w_i|` if signs differ, else −∞              w_final
``snip``                          :math:`|g \cdot w_i|`                                       grads
``grad``                          :math:`|g|`                                                 grads
================================  ==========================================================  =======

Signs are ``jnp.sign``, so a weight that is exactly 0 agrees only with another 0. −∞ ranks below
every real score, so the sign criteria fall back to the other weights only when too few weights
pass the sign test (the counts stay exact either way).

**Both-large and both-small criteria.** The paper keeps a weight iff :math:`|w_i|` and
:math:`|w_f|` are both above the same percentile :math:`q` of their layer, with :math:`q` found by
bisection so the kept count hits the target. Here the score is an exact, bisection-free form of
that rule. Let :math:`\mathrm{rank}(v)` be the integer position of :math:`v` in ascending order
within its leaf, ties in value by flat index (lower first), and score
:math:`\min(\mathrm{rank}|w_i|, \mathrm{rank}|w_f|)`. Both leaves hold the same number of values,
so a value is above the :math:`q`-th percentile iff its rank is at least one threshold
:math:`t(q)`, the same for :math:`|w_i|` and :math:`|w_f|` and growing with :math:`q`. Hence

.. math::  |w_i| > P_q(|w_i|) \;\wedge\; |w_f| > P_q(|w_f|)
           \iff \min(\mathrm{rank}|w_i|, \mathrm{rank}|w_f|) \ge t(q),

so the sets a percentile can select are exactly the nested sets :math:`\{\min \ge t\}`, and
bisection on :math:`q` hunts for the one with :math:`k` members: that set *is* the top-:math:`k`
of the score. A rank is held by at most one :math:`|w_i|` and one :math:`|w_f|`, so at most two
weights share a score; where the count steps from :math:`k+1` to :math:`k-1` (no :math:`q` hits
:math:`k`), :mod:`jaxprune.select`'s deterministic tie-break drops one of the two, and the kept
count is exact either way. ``small_init_small_final`` is the same with both below: the ranks of
:math:`-|w_i|` and :math:`-|w_f|`.

Ranks are taken among the weights still kept by ``mask``: pruned weights get the lowest ranks
(below every kept one, whatever their value), so that the percentiles are those of the surviving
weights — in ``zero`` mode a pruned weight's :math:`w_f = 0` would otherwise count as the smallest
weight of the layer. Ranks are float32, exact for leaves of up to :math:`2^{24}` entries.

Every criterion that reads a weight (or gradient) returns NaN where it reads a NaN, so that
:mod:`jaxprune.select` rejects a diverged run instead of ranking it silently. Scores are float32
arrays with the params' tree structure and shapes; inputs are cast to float32 first.

Names are static strings; weights, masks and keys are arrays, so :func:`score` runs under ``jit``
and ``jit ∘ vmap`` over a leading ticket axis without recompiling when they change.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import criteria
  >>> w_i = {"w": jnp.array([0.5, -1.0, 2.0])}
  >>> w_f = {"w": jnp.array([-1.5, -0.5, 3.0])}
  >>> criteria.score("magnitude_increase", w_i, w_f)["w"]
  Array([ 1. , -0.5,  1. ], dtype=float32)
  >>> criteria.score("large_final_same_sign", w_i, w_f)["w"]
  Array([-inf,  0.5,  3. ], dtype=float32)
  >>> sorted(criteria.needs("snip")), sorted(criteria.needs("large_init"))
  (['grads'], [])
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp

from jaxprune import _checks
from jaxprune._types import Array, ArrayLike, Key, Mask, Params, PyTree, Scores

__all__ = ["CRITERIA", "INPUTS", "LeafCriterion", "names", "needs", "score"]

LeafCriterion: TypeAlias = Callable[..., Array]
"""``fn(*, w_init, w_final, grad, mask, key) -> Array``: one leaf's scores.

All arguments are keyword-only float32 arrays of the leaf's shape (``mask`` bool, ``key`` this
leaf's key). :func:`score` passes ``None`` for the optional inputs a criterion does not need
(see :func:`needs`) and was not given.
"""

INPUTS = ("w_final", "grads", "key")
"""The optional inputs of :func:`score` that a criterion may need (``w_init`` is always needed)."""


def _same_sign(w_init: Array, w_final: Array) -> Array:
    return jnp.sign(w_init) == jnp.sign(w_final)


def _gate(value: Array, keep: Array, w_init: Array, w_final: Array) -> Array:
    # jnp.sign(NaN) compares unequal to everything, which would turn a NaN weight into a quiet
    # -inf (or a finite score); keep it NaN so select sees the divergence.
    bad = jnp.isnan(w_init) | jnp.isnan(w_final)
    return jnp.where(bad, jnp.nan, jnp.where(keep, value, -jnp.inf))


def _rank_among_kept(values: Array, mask: Array) -> Array:
    """Position of each entry in ascending order: pruned entries first, then kept ones by value.

    Ties in value go by flat index (lower first), so every entry gets a distinct integer rank.
    """
    v = jnp.ravel(values)
    n = v.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    # lexsort sorts by the last key first: kept (False = pruned first), then value, then index.
    order = jnp.lexsort((idx, v, jnp.ravel(mask)))
    rank = jnp.zeros(n, jnp.int32).at[order].set(idx)
    return rank.reshape(jnp.shape(values))


def _min_rank(a: Array, b: Array, mask: Array) -> Array:
    # a, b are the two rank keys (|w| or -|w|); NaN in either weight makes the score NaN.
    lower = jnp.minimum(_rank_among_kept(a, mask), _rank_among_kept(b, mask))
    return jnp.where(jnp.isnan(a) | jnp.isnan(b), jnp.nan, lower.astype(jnp.float32))


def _large_final(*, w_final: Array, **_: Any) -> Array:
    return jnp.abs(w_final)


def _small_final(*, w_final: Array, **_: Any) -> Array:
    return -jnp.abs(w_final)


def _large_init(*, w_init: Array, **_: Any) -> Array:
    return jnp.abs(w_init)


def _small_init(*, w_init: Array, **_: Any) -> Array:
    return -jnp.abs(w_init)


def _large_init_large_final(*, w_init: Array, w_final: Array, mask: Array, **_: Any) -> Array:
    """min of the ascending ranks of |w_i| and |w_f| among kept weights (module docs: why)."""
    return _min_rank(jnp.abs(w_init), jnp.abs(w_final), mask)


def _small_init_small_final(*, w_init: Array, w_final: Array, mask: Array, **_: Any) -> Array:
    """min of the ascending ranks of -|w_i| and -|w_f| among kept weights: both small."""
    return _min_rank(-jnp.abs(w_init), -jnp.abs(w_final), mask)


def _magnitude_increase(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    return jnp.abs(w_final) - jnp.abs(w_init)


def _movement(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    return jnp.abs(w_final - w_init)


def _random(*, w_init: Array, key: Key, **_: Any) -> Array:
    return jax.random.uniform(key, jnp.shape(w_init), jnp.float32)


def _large_final_same_sign(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    return _gate(jnp.abs(w_final), _same_sign(w_init, w_final), w_init, w_final)


def _large_final_diff_sign(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    return _gate(jnp.abs(w_final), ~_same_sign(w_init, w_final), w_init, w_final)


def _magnitude_increase_same_sign(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    increase = jnp.abs(w_final) - jnp.abs(w_init)
    return _gate(increase, _same_sign(w_init, w_final), w_init, w_final)


def _magnitude_increase_diff_sign(*, w_init: Array, w_final: Array, **_: Any) -> Array:
    increase = jnp.abs(w_final) - jnp.abs(w_init)
    return _gate(increase, ~_same_sign(w_init, w_final), w_init, w_final)


def _snip(*, w_init: Array, grad: Array, **_: Any) -> Array:
    return jnp.abs(grad * w_init)


def _grad(*, grad: Array, **_: Any) -> Array:
    return jnp.abs(grad)


# (name, per-leaf function, optional inputs it needs) in the paper's order.
_TABLE: tuple[tuple[str, LeafCriterion, frozenset[str]], ...] = (
    ("large_final", _large_final, frozenset({"w_final"})),
    ("small_final", _small_final, frozenset({"w_final"})),
    ("large_init", _large_init, frozenset()),
    ("small_init", _small_init, frozenset()),
    ("large_init_large_final", _large_init_large_final, frozenset({"w_final"})),
    ("small_init_small_final", _small_init_small_final, frozenset({"w_final"})),
    ("magnitude_increase", _magnitude_increase, frozenset({"w_final"})),
    ("movement", _movement, frozenset({"w_final"})),
    ("random", _random, frozenset({"key"})),
    ("large_final_same_sign", _large_final_same_sign, frozenset({"w_final"})),
    ("large_final_diff_sign", _large_final_diff_sign, frozenset({"w_final"})),
    ("magnitude_increase_same_sign", _magnitude_increase_same_sign, frozenset({"w_final"})),
    ("magnitude_increase_diff_sign", _magnitude_increase_diff_sign, frozenset({"w_final"})),
    ("snip", _snip, frozenset({"grads"})),
    ("grad", _grad, frozenset({"grads"})),
)

CRITERIA: Mapping[str, LeafCriterion] = types.MappingProxyType({name: fn for name, fn, _ in _TABLE})
"""Read-only registry: criterion name → per-leaf function (see :data:`LeafCriterion`)."""

_NEEDS: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {name: need for name, _, need in _TABLE}
)


def names() -> tuple[str, ...]:
    """All criterion names, in the order of the paper's table.

    Example:
      >>> from jaxprune import criteria
      >>> criteria.names()[:3]
      ('large_final', 'small_final', 'large_init')
    """
    return tuple(CRITERIA)


def needs(name: str) -> frozenset[str]:
    """Which optional inputs of :func:`score` criterion ``name`` needs: a subset of :data:`INPUTS`.

    Lets experiment code validate a config before training (e.g. ``snip`` needs gradients at
    init, ``random`` a key).

    Example:
      >>> from jaxprune import criteria
      >>> sorted(criteria.needs("random")), sorted(criteria.needs("movement"))
      (['key'], ['w_final'])
    """
    _checks.check_choice(name, CRITERIA, name="criterion")
    return _NEEDS[name]


def _check_inputs(
    name: str,
    w_init: Params,
    w_final: Params | None,
    grads: PyTree | None,
    mask: Mask | None,
    key: Key | None,
) -> None:
    _checks.check_choice(name, CRITERIA, name="criterion")
    given = {"w_final": w_final, "grads": grads, "key": key}
    for need in sorted(_NEEDS[name]):
        _checks.require(given[need], name=need, why=f"by criterion {name!r}")
    # Inputs are validated even when the criterion ignores them: a config that always passes
    # everything should still fail fast on a wrong tree.
    if w_final is not None:
        _checks.check_like(w_final, w_init, name="w_final", ref_name="w_init")
    if grads is not None:
        _checks.check_like(grads, w_init, name="grads", ref_name="w_init")
    if mask is not None:
        _checks.check_like(mask, w_init, name="mask", ref_name="w_init")
        _checks.check_mask(mask, w_init)
    if key is not None:
        _checks.check_key(key)


def score(
    name: str,
    w_init: Params,
    w_final: Params | None = None,
    *,
    grads: PyTree | None = None,
    mask: Mask | None = None,
    key: Key | None = None,
) -> Scores:
    """Score every weight by criterion ``name`` (table in the module docs); higher = keep.

    Args:
      name: a criterion name, one of :func:`names` (static).
      w_init: weights at initialisation or at the rewind point (a params pytree).
      w_final: trained weights, like ``w_init``; needed by the criteria that read them.
      grads: gradients at initialisation, like ``w_init``; needed by ``snip`` and ``grad``.
      mask: the current mask (bool pytree like ``w_init``); only the rank criteria
        (``large_init_large_final``, ``small_init_small_final``) read it, to rank among the
        surviving weights. ``None`` means every weight is kept.
      key: a PRNG key (``jax.random.key``); needed by ``random``. Leaf ``i`` (in ``w_init``'s
        flattening order) draws from ``jax.random.fold_in(key, i)``.

    Returns:
      A pytree with ``w_init``'s structure of float32 scores with the leaves' shapes.

    Raises:
      ValueError: unknown ``name``; a needed input missing; an input whose structure or leaf
        shapes differ from ``w_init``'s (the first differing path is named); a non-bool mask;
        a key that is not one typed key.

    Example — the both-large criterion keeps an exact count:
      >>> import jax.numpy as jnp
      >>> from jaxprune import criteria, masks, select
      >>> w_i = {"w": jnp.array([0.9, 0.1, 0.8, 0.7, 0.2])}
      >>> w_f = {"w": jnp.array([0.3, 0.9, 0.8, 0.6, 0.1])}
      >>> s = criteria.score("large_init_large_final", w_i, w_f)
      >>> s["w"]
      Array([1., 0., 3., 2., 0.], dtype=float32)
      >>> select.layerwise(s, masks.ones(w_i), 0.6, prunable="w")["w"]  # 1-D: say it is prunable
      Array([False, False,  True,  True, False], dtype=bool)
    """
    _check_inputs(name, w_init, w_final, grads, mask, key)
    fn = CRITERIA[name]
    use_key = "key" in _NEEDS[name]
    wi_leaves, treedef = jax.tree.flatten(w_init)
    n = len(wi_leaves)

    def leaves(tree: PyTree | None) -> list[Any]:
        return [None] * n if tree is None else jax.tree.leaves(tree)

    wf_leaves, g_leaves = leaves(w_final), leaves(grads)
    m_leaves = [None] * n if mask is None else jax.tree.leaves(mask)
    out = []
    for i, (wi, wf, g, m) in enumerate(zip(wi_leaves, wf_leaves, g_leaves, m_leaves, strict=True)):
        leaf_key = jax.random.fold_in(key, i) if use_key and key is not None else None
        s = fn(
            w_init=_f32(wi),
            w_final=_f32(wf),
            grad=_f32(g),
            mask=jnp.ones(jnp.shape(wi), bool) if m is None else jnp.asarray(m, bool),
            key=leaf_key,
        )
        out.append(jnp.asarray(s, jnp.float32))
    return jax.tree.unflatten(treedef, out)


def _f32(x: ArrayLike | None) -> Array | None:
    return None if x is None else jnp.asarray(x, jnp.float32)
