"""Selection: from scores (higher = keep) and the current mask to a new, smaller mask.

Every selector here keeps an *exact* number of weights. A round prunes a fraction ``rate`` of the
weights that are still kept (``rate`` is a fraction of the *remaining* weights, as in iterative
magnitude pruning); weights already pruned are never re-selected, so masks only shrink.

How many are kept, for ``r`` remaining weights and rate ``p``:

.. math::  k = \\max\\big(r - \\lfloor p\\,r + \\tfrac12 \\rfloor,\\; \\min(\\text{min\\_keep}, r)\\big)

Order: higher score first; among equal scores the lower flat index first (row-major within a leaf,
leaves in pytree order), or a random order drawn from ``key`` when one is given. NaN scores rank
below everything (a concrete NaN is rejected at the boundary with a ``ValueError``).

Rates, keys and masks are arrays, so every selector runs under ``jit`` and ``vmap`` over tickets
without recompiling when they change; names, scopes, ``n:m`` and ``min_keep`` are static.

Example — the LeNet-300-100 paper rates, fc 20% and output 10% per round:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import masks, select
  >>> params = {"fc1": {"kernel": jnp.ones((8, 4))}, "out": {"kernel": jnp.ones((4, 2))}}
  >>> scores = jax.tree.map(lambda p: jax.random.uniform(jax.random.key(0), p.shape), params)
  >>> rates = select.rates_by_pattern(params, {"out": 0.1}, default=0.2)
  >>> new = select.layerwise(scores, masks.ones(params), rates)
  >>> int(new["fc1"]["kernel"].sum()), int(new["out"]["kernel"].sum())
  (26, 7)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune import _checks, masks
from jaxprune._types import Array, Key, Mask, Params, Prunable, PyTree, Scores

__all__ = [
    "SCOPES",
    "global_",
    "group_scores",
    "groups",
    "keep_count",
    "keep_top_k",
    "layerwise",
    "n_of_m",
    "prune",
    "rates_by_pattern",
]

SCOPES = ("layerwise", "global")
Scope = Literal["layerwise", "global"]


def keep_count(remaining: ArrayLike, rate: ArrayLike, min_keep: int = 0) -> Array:
    """How many of ``remaining`` weights a round at ``rate`` keeps (formula in the module docs).

    Example:
      >>> from jaxprune import select
      >>> int(select.keep_count(100, 0.2)), int(select.keep_count(5, 0.99, min_keep=2))
      (80, 2)
    """
    r = jnp.asarray(remaining, jnp.int32)
    pruned = jnp.floor(jnp.asarray(rate, jnp.float32) * r.astype(jnp.float32) + 0.5)
    k = r - pruned.astype(jnp.int32)
    return jnp.maximum(k, jnp.minimum(jnp.int32(min_keep), r))


def keep_top_k(
    scores: ArrayLike,
    eligible: ArrayLike,
    k: ArrayLike,
    *,
    key: Key | None = None,
    reserved: ArrayLike | None = None,
) -> Array:
    """Keep exactly ``min(k, #eligible)`` eligible entries of a 1-D score vector, the highest first.

    Order: ``reserved`` entries first, then higher score, then lower index (or, with ``key``, a
    random permutation of indices) — so the kept count is exact even with heavy ties.

    Args:
      scores: 1-D float scores; NaN ranks lowest.
      eligible: 1-D bool; only these can be kept (the current mask).
      k: number to keep (may be traced).
      key: optional PRNG key to break ties at random instead of by index.
      reserved: optional 1-D bool of entries to keep before any other (e.g. a per-layer minimum).

    Returns:
      A 1-D bool array with ``min(k, eligible.sum())`` True entries, all of them eligible.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.keep_top_k(jnp.array([1.0, 3.0, 3.0, 2.0]), jnp.ones(4, bool), 2)
      Array([False,  True,  True, False], dtype=bool)
    """
    s = jnp.asarray(scores)
    elig = jnp.asarray(eligible, bool)
    n = s.shape[0]
    nan = jnp.isnan(s)  # its own key: NaN must rank below -inf too (criteria use -inf = lowest)
    s = jnp.where(nan, -jnp.inf, s)
    tiebreak = jnp.arange(n) if key is None else jax.random.permutation(key, n)
    res = jnp.zeros(n, bool) if reserved is None else jnp.asarray(reserved, bool) & elig
    # lexsort sorts by the last key first: eligible, reserved, not NaN, score (desc), tiebreak.
    order = jnp.lexsort((tiebreak, -s, nan, ~res, ~elig))
    rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    return (rank < k) & elig


def rates_by_pattern(params: Params, patterns: Mapping[str, float], default: float = 0.0) -> PyTree:
    """Per-leaf rates from regexes over leaf paths; the first matching pattern wins.

    Returns a pytree with ``params``' structure of float32 scalars — an array argument, so it can
    be traced, stacked over tickets and changed without recompiling.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> p = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "out": {"kernel": jnp.ones((4, 2))}}
      >>> r = select.rates_by_pattern(p, {"conv": 0.1, "out": 0.1}, default=0.2)
      >>> float(r["conv"]["kernel"]), float(r["out"]["kernel"])
      (0.10000000149011612, 0.10000000149011612)
    """
    compiled = [(re.compile(pat), rate) for pat, rate in patterns.items()]
    _checks.check_in_range(dict(patterns), name="patterns")
    _checks.check_in_range(default, name="default")

    def pick(path: Any, leaf: Any) -> Array:
        del leaf
        text = jax.tree_util.keystr(path)
        rate = next((r for pat, r in compiled if pat.search(text)), default)
        return jnp.asarray(rate, jnp.float32)

    return jax.tree_util.tree_map_with_path(pick, params)


def _is_scalar_rate(rate: Any) -> bool:
    return not isinstance(rate, dict | list | tuple) and len(jax.tree.leaves(rate)) == 1


def _check_inputs(scores: Scores, mask: Mask, rate: Any, *, per_leaf_rate_ok: bool) -> None:
    _checks.check_like(scores, mask, name="scores", ref_name="mask")
    _checks.check_mask(mask, mask)
    _checks.check_no_nan(scores, name="scores")
    if _is_scalar_rate(rate):
        if np.ndim(rate) != 0:
            raise ValueError(
                f"rate must be a scalar per call (vmap over tickets for many), got shape "
                f"{list(np.shape(rate))}."
            )
    elif per_leaf_rate_ok:
        _checks.check_same_structure(rate, mask, name="rate", ref_name="mask")
    else:
        raise ValueError("rate must be a scalar for global selection, got a pytree of rates.")
    _checks.check_in_range(rate, name="rate")


def _leaf_keys(key: Key | None, n: int) -> list[Key | None]:
    return [None] * n if key is None else [jax.random.fold_in(key, i) for i in range(n)]


def layerwise(
    scores: Scores,
    mask: Mask,
    rate: ArrayLike | PyTree,
    *,
    prunable: Prunable = None,
    min_keep: int = 0,
    key: Key | None = None,
) -> Mask:
    """Prune a fraction ``rate`` of each prunable leaf's remaining weights, lowest scores first.

    Args:
      scores: pytree like ``mask`` of float scores (higher = keep), e.g. from
        :func:`jaxprune.criteria.score`.
      mask: the current mask (bool pytree); pruned entries stay pruned.
      rate: fraction in [0, 1) of the remaining weights to prune — a scalar for every leaf, or a
        pytree of scalars like ``mask`` (see :func:`rates_by_pattern`). A rate of 0 leaves a
        layer alone.
      prunable: which leaves may be pruned (a :data:`~jaxprune._types.Prunable` spec); the
        others keep their mask unchanged.
      min_keep: at least this many weights (or all remaining, if fewer) stay in each leaf.
      key: optional PRNG key to break score ties at random instead of by index.

    Returns:
      The new mask; each prunable leaf keeps exactly :func:`keep_count` of its remaining weights.
    """
    _check_inputs(scores, mask, rate, per_leaf_rate_ok=True)
    flags = jax.tree.leaves(masks.is_prunable(mask, prunable))
    m_leaves, treedef = jax.tree.flatten(mask)
    s_leaves = jax.tree.leaves(scores)
    if _is_scalar_rate(rate):
        r_leaves = [rate] * len(m_leaves)
    else:
        r_leaves = jax.tree.leaves(rate)
    out = []
    for m, s, r, k, flag in zip(
        m_leaves, s_leaves, r_leaves, _leaf_keys(key, len(m_leaves)), flags, strict=True
    ):
        if not flag:
            out.append(m)
            continue
        n_keep = keep_count(jnp.sum(m, dtype=jnp.int32), r, min_keep)
        kept = keep_top_k(jnp.ravel(s), jnp.ravel(m), n_keep, key=k)
        out.append(kept.reshape(m.shape))
    return jax.tree.unflatten(treedef, out)


def global_(
    scores: Scores,
    mask: Mask,
    rate: ArrayLike,
    *,
    prunable: Prunable = None,
    min_keep: int = 0,
    key: Key | None = None,
) -> Mask:
    """Prune a fraction ``rate`` of all remaining prunable weights against one global ranking.

    Scores of different leaves are compared directly (one threshold for the whole net, as
    open_lth and SynFlow do). ``min_keep`` reserves each leaf's best ``min_keep`` remaining weights
    before the global ranking — global thresholds can otherwise empty a whole layer (layer
    collapse) — so the total kept is ``max(keep_count(remaining, rate), reserved)``.

    Args and returns as :func:`layerwise`, except ``rate`` is one scalar.
    """
    _check_inputs(scores, mask, rate, per_leaf_rate_ok=False)
    flags = jax.tree.leaves(masks.is_prunable(mask, prunable))
    m_leaves, treedef = jax.tree.flatten(mask)
    s_leaves = jax.tree.leaves(scores)
    idx = [i for i, f in enumerate(flags) if f]
    if not idx:
        return mask
    m_flat = [jnp.ravel(m_leaves[i]) for i in idx]
    s_flat = [jnp.ravel(s_leaves[i]).astype(jnp.float32) for i in idx]
    if min_keep > 0:
        reserved = [
            keep_top_k(s, m, jnp.minimum(min_keep, jnp.sum(m, dtype=jnp.int32)))
            for s, m in zip(s_flat, m_flat, strict=True)
        ]
        res_all: Array | None = jnp.concatenate(reserved)
    else:
        res_all = None
    m_all = jnp.concatenate(m_flat)
    n_keep = keep_count(jnp.sum(m_all, dtype=jnp.int32), rate)
    if res_all is not None:
        n_keep = jnp.maximum(n_keep, jnp.sum(res_all, dtype=jnp.int32))
    kept = keep_top_k(jnp.concatenate(s_flat), m_all, n_keep, key=key, reserved=res_all)
    out = list(m_leaves)
    offsets = np.cumsum([0] + [m.size for m in m_flat])
    for j, i in enumerate(idx):
        out[i] = kept[offsets[j] : offsets[j + 1]].reshape(m_leaves[i].shape)
    return jax.tree.unflatten(treedef, out)


def prune(
    scores: Scores,
    mask: Mask,
    rate: ArrayLike | PyTree,
    *,
    scope: Scope = "layerwise",
    prunable: Prunable = None,
    min_keep: int = 0,
    key: Key | None = None,
) -> Mask:
    """:func:`layerwise` or :func:`global_` by name (``scope`` is static)."""
    _checks.check_choice(scope, SCOPES, name="scope")
    fn = layerwise if scope == "layerwise" else global_
    return fn(scores, mask, rate, prunable=prunable, min_keep=min_keep, key=key)


_NORMS = ("l1", "l2", "max")


def group_scores(scores: Scores, *, norm: str = "l1", axis: int = -1) -> PyTree:
    r"""Reduce element scores to one score per group along ``axis`` (default: output units).

    For a Flax dense kernel ``(in, out)`` or conv kernel ``(h, w, in, out)``, ``axis=-1`` groups
    by output neuron / filter. ``l1``: :math:`\sum |s|`, ``l2``: :math:`\sqrt{\sum s^2}`,
    ``max``: :math:`\max |s|` over the other axes. Pass the weights themselves as ``scores`` for
    the L1-norm filter criterion of Li et al. (2017). Scalar leaves reduce to a single group.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.group_scores({"k": jnp.array([[1.0, -2.0], [3.0, 0.5]])})["k"]
      Array([4. , 2.5], dtype=float32)
    """
    _checks.check_choice(norm, _NORMS, name="norm")

    def reduce(s: Array) -> Array:
        s = jnp.asarray(s)
        if s.ndim == 0:
            return jnp.abs(s)
        moved = jnp.moveaxis(s, axis, -1).reshape(-1, s.shape[axis])
        if norm == "l1":
            return jnp.sum(jnp.abs(moved), axis=0)
        if norm == "l2":
            return jnp.sqrt(jnp.sum(jnp.square(moved), axis=0))
        return jnp.max(jnp.abs(moved), axis=0)

    return jax.tree.map(reduce, scores)


def groups(
    scores: Scores,
    mask: Mask,
    rate: ArrayLike | PyTree,
    *,
    norm: str = "l1",
    axis: int = -1,
    scope: Scope = "layerwise",
    prunable: Prunable = None,
    min_keep: int = 1,
    key: Key | None = None,
) -> Mask:
    """Structured pruning: remove whole groups (output neurons / filters) along ``axis``.

    A group's score is :func:`group_scores` of its element scores; a group is *remaining* while
    any of its entries is kept. A fraction ``rate`` of the remaining groups is pruned, per leaf
    (``scope="layerwise"``) or against one global ranking (``"global"``, where ``rate`` is a
    scalar); ``min_keep`` groups (default 1) always stay in each leaf so no layer is emptied.

    Returns:
      The new element mask: ``mask`` with every pruned group's entries set to False.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks, select
      >>> w = {"k": jnp.array([[1.0, -2.0, 0.1, 3.0], [1.0, 0.5, 0.1, 0.0]])}
      >>> select.groups(w, masks.ones(w), 0.5)["k"]
      Array([[False,  True, False,  True],
             [False,  True, False,  True]], dtype=bool)
    """
    _check_inputs(scores, mask, rate, per_leaf_rate_ok=(scope == "layerwise"))
    flags = masks.is_prunable(mask, prunable)
    g_scores = group_scores(scores, norm=norm, axis=axis)

    def group_alive(m: Array) -> Array:
        m = jnp.asarray(m)
        if m.ndim == 0:
            return m[None]
        return jnp.any(jnp.moveaxis(m, axis, -1).reshape(-1, m.shape[axis]), axis=0)

    g_mask = jax.tree.map(group_alive, mask)
    g_kept = prune(g_scores, g_mask, rate, scope=scope, prunable=flags, min_keep=min_keep, key=key)

    def expand(m: Array, g: Array) -> Array:
        m = jnp.asarray(m)
        if m.ndim == 0:
            return m & g[0]
        shape = [1] * m.ndim
        shape[axis] = m.shape[axis]
        return m & g.reshape(shape)

    return jax.tree.map(expand, mask, g_kept)


def n_of_m(
    scores: Scores,
    mask: Mask,
    n: int,
    m: int,
    *,
    axis: int = -2,
    prunable: Prunable = None,
) -> Mask:
    """N:M sparsity: in every block of ``m`` consecutive entries along ``axis``, keep the ``n`` best.

    The default ``axis=-2`` is the input (reduction) axis of Flax dense ``(in, out)`` and conv
    ``(h, w, in, out)`` kernels — the layout sparse tensor cores expect for 2:4. Entries already
    pruned stay pruned (a block with fewer than ``n`` kept keeps those). Ties: lower index first.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks, select
      >>> s = {"k": jnp.array([[4.0], [1.0], [3.0], [2.0]])}
      >>> select.n_of_m(s, masks.ones(s), 2, 4)["k"].ravel()
      Array([ True, False,  True, False], dtype=bool)
    """
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
        raise ValueError(f"n and m must be ints with 0 < n <= m, got n={n!r}, m={m!r}.")
    _checks.check_like(scores, mask, name="scores", ref_name="mask")
    _checks.check_mask(mask, mask)
    _checks.check_no_nan(scores, name="scores")
    flags = jax.tree.leaves(masks.is_prunable(mask, prunable))
    paths = [p for p, _ in _checks.leaves_with_paths(mask)]
    m_leaves, treedef = jax.tree.flatten(mask)
    out = []
    for path, mk, s, flag in zip(paths, m_leaves, jax.tree.leaves(scores), flags, strict=True):
        if not flag:
            out.append(mk)
            continue
        if mk.ndim < 2 or mk.shape[axis] % m:
            raise ValueError(
                f"mask{path} has shape {list(mk.shape)}: n_of_m needs axis {axis} to exist and be "
                f"a multiple of m={m}; leave this leaf out with prunable=."
            )
        blocks_m = jnp.moveaxis(mk, axis, -1).reshape(-1, m)
        blocks_s = jnp.moveaxis(jnp.asarray(s), axis, -1).reshape(-1, m)
        nan = jnp.isnan(blocks_s)
        blocks_s = jnp.where(nan, -jnp.inf, blocks_s)
        idx = jnp.broadcast_to(jnp.arange(m), blocks_s.shape)
        order = jnp.lexsort((idx, -blocks_s, nan, ~blocks_m), axis=-1)
        rank = jnp.argsort(order, axis=-1)
        kept = (rank < n) & blocks_m
        moved_shape = jnp.moveaxis(mk, axis, -1).shape
        out.append(jnp.moveaxis(kept.reshape(moved_shape), -1, axis))
    return jax.tree.unflatten(treedef, out)
