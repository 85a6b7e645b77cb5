r"""Selection: from scores (higher = keep) and the current mask to a new, smaller mask.

Every selector here keeps an *exact* number of weights. A round prunes a fraction ``rate`` of the
weights that are still kept (``rate`` is a fraction of the *remaining* weights, as in iterative
magnitude pruning); weights already pruned are never re-selected, so masks only shrink.

How many are kept, for ``r`` remaining weights and rate ``p``:

.. math::  k = \max\big(r - \lfloor p\,r + \tfrac12 \rfloor,\; \min(\text{min\_keep}, r)\big)

computed exactly, in int32 integer arithmetic, for every :math:`r < 2^{31}` and rate in [0, 1].
Rates are float32 (traced under ``jit``, where float64 is not available), and float32 has no 0.65:
``float32(0.65) · 90 = 58.4999…``. So :math:`p` is the rate as written: a rate whose float32 value
is the float32 nearest to a decimal with at most six decimal places (0.2, 0.65, 0.123456, and 0
and 1) is exactly that decimal — ``keep_count(90, 0.65)`` keeps
:math:`90 - \lfloor 58.5 + \tfrac12 \rfloor = 31` — and any other rate (e.g. one computed by
:func:`jaxprune.schedules.rate_between`) is its exact float32 value. No rounded float product
enters the count, so it does not depend on the backend either.

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
from jax import lax
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

    Exact for every ``remaining < 2^31``, with a decimal rate read as the decimal it was written
    as. A concrete ``rate`` outside [0, 1] (or NaN, or not a number) and a ``min_keep`` that is
    not a non-negative int raise a ``ValueError``; a traced ``rate`` cannot be checked under
    ``jit`` and is clipped into [0, 1] instead (NaN counts as 0).

    Example:
      >>> from jaxprune import select
      >>> int(select.keep_count(100, 0.2)), int(select.keep_count(5, 0.99, min_keep=2))
      (80, 2)
      >>> int(select.keep_count(90, 0.65))  # 0.65 · 90 = 58.5 rounds up to 59 pruned
      31
      >>> select.keep_count(10, -0.1)
      Traceback (most recent call last):
      ...
      ValueError: rate must be in [0.0, 1.0], got [-0.1].
    """
    _checks.check_in_range(rate, name="rate", high_inclusive=True)
    _checks.check_nonnegative_int(min_keep, name="min_keep")
    return _keep_count(remaining, rate, min_keep)


def _keep_count(remaining: ArrayLike, rate: ArrayLike, min_keep: int = 0) -> Array:
    """:func:`keep_count` without the boundary checks (for callers that made them)."""
    r = jnp.asarray(remaining, jnp.int32)
    p = jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    significand, shift = _float32_parts(p)
    is_decimal, millionths = _as_millionths(p, significand, shift)
    pruned = jnp.where(
        is_decimal,
        _round_millionths_times(millionths, r),
        _round_dyadic_times(significand, shift, r),
    )
    return jnp.maximum(r - pruned, jnp.minimum(jnp.int32(min_keep), r))


# keep_count in exact integer arithmetic. Rates are traced float32 (no float64 on device), and a
# float32 product p·r rounds — differently on backends that fuse the multiply-add and those that
# do not — so floor(p·r + 1/2) is computed from the integers behind p instead: n / 10^6 for a
# decimal rate, M / 2^s otherwise, in int32 limbs that never overflow for r < 2^31.

_MILLION = 10**6


def _float32_parts(p: Array) -> tuple[Array, Array]:
    """``(M, s)`` with ``p = M · 2^-s`` exactly, ``M < 2^24`` (for ``p`` in [0, 1])."""
    bits = lax.bitcast_convert_type(p, jnp.int32)
    exponent, fraction = (bits >> 23) & 0xFF, bits & 0x7FFFFF
    normal = exponent > 0
    significand = jnp.where(normal, fraction | 0x800000, fraction)
    return significand, jnp.where(normal, 150 - exponent, 149)


def _as_millionths(p: Array, significand: Array, shift: Array) -> tuple[Array, Array]:
    """``(is_decimal, n)``: whether ``p`` is the float32 nearest to ``n / 10^6``.

    ``n = round(p · 10^6)`` is the only candidate (``p`` would be within half an ulp, < 2^-25, of
    ``n / 10^6``, and the float32 product adds < 2^-5). ``p = M · 2^-s`` is the float32 nearest
    to ``n / 10^6`` iff that lies within half an ulp ``2^-s`` of ``p`` (a quarter ulp below a
    power of two, where the ulp below halves), i.e. iff ``D = (n · 2^s - M · 10^6) / 64 =
    n · 2^(s-6) - M · 15625`` is in ``[-7812, 7812]`` (``[-3906, 7812]``); no decimal is a float32
    midpoint, so the ends never tie. ``D`` can exceed 2^32, so it is computed modulo 2^32 in
    uint32 and trusted only where ``(n - p · 10^6) · 2^(s-6)`` in float32, within 2^14 of ``D``,
    puts ``|D|`` below 2^31. Rates below 2^-21 round to ``n = 0`` and are decimal only when 0.
    """
    x = p * jnp.float32(_MILLION)
    n = jnp.round(x).astype(jnp.int32)
    t = jnp.clip(shift - 6, 18, 38)  # in [18, 38] for p in [2^-21, 1)
    two_to_20_minus_t = lax.bitcast_convert_type((147 - t) << 23, jnp.float32)
    near = jnp.abs(n.astype(jnp.float32) - x) <= two_to_20_minus_t  # |D| < 2^20 + 2^14
    n_shifted = jnp.where(t < 32, n.astype(jnp.uint32) << jnp.minimum(t, 31).astype(jnp.uint32), 0)
    d = lax.bitcast_convert_type(
        n_shifted - significand.astype(jnp.uint32) * jnp.uint32(15625), jnp.int32
    )
    low = jnp.where(significand == 0x800000, -3906, -7812)
    inside = (p >= 2.0**-21) & (p < 1.0)
    is_decimal = (inside & near & (d >= low) & (d <= 7812)) | (p == 0.0) | (p == 1.0)
    return is_decimal, n


def _round_millionths_times(n: Array, r: Array) -> Array:
    """``floor(n · r / 10^6 + 1/2)``, exact for ``0 <= n <= 10^6`` and ``0 <= r < 2^31``.

    ``n · r`` needs up to 51 bits: ``r = q · 10^6 + rem``, then base-1000 limbs of ``n`` and
    ``rem``.
    """
    q, rem = r // _MILLION, r % _MILLION
    n1, n0 = n // 1000, n % 1000
    rem1, rem0 = rem // 1000, rem % 1000
    middle = n1 * rem0 + n0 * rem1  # < 2 · 10^6, in units of 1000
    low = (middle % 1000) * 1000 + n0 * rem0 + _MILLION // 2  # < 2.5 · 10^6
    return n * q + n1 * rem1 + middle // 1000 + low // _MILLION


def _round_dyadic_times(significand: Array, shift: Array, r: Array) -> Array:
    """``floor(M · r / 2^s + 1/2)``, exact for ``M < 2^24``, ``M · 2^-s <= 1``, ``0 <= r < 2^31``.

    ``M · r < 2^55`` is held as ``hi · 2^28 + lo`` from 12- and 16-bit limbs. For ``s > 56`` the
    result is 0, as it is for ``s = 56``, so ``s`` is clipped there.
    """
    m_hi, m_lo = significand >> 12, significand & 0xFFF
    r_hi, r_lo = r >> 16, r & 0xFFFF
    b, c = m_hi * r_lo, m_lo * r_hi  # at 2^12 and 2^16, each < 2^28
    lo = ((b & 0xFFFF) << 12) + ((c & 0xFFF) << 16) + m_lo * r_lo
    hi = m_hi * r_hi + (b >> 16) + (c >> 12) + (lo >> 28)
    lo = lo & 0xFFFFFFF
    s = jnp.clip(shift, 23, 56)
    lo = lo + jnp.where(s <= 28, 1 << jnp.clip(s - 1, 0, 27), 0)  # + 2^(s-1), the half
    hi = hi + jnp.where(s > 28, 1 << jnp.clip(s - 29, 0, 27), 0) + (lo >> 28)
    lo = lo & 0xFFFFFFF
    low_bits = lo >> jnp.minimum(s, 28)
    return jnp.where(
        s <= 28, (hi << jnp.clip(28 - s, 0, 5)) + low_bits, hi >> jnp.maximum(s - 28, 0)
    )


def keep_top_k(
    scores: ArrayLike,
    eligible: ArrayLike,
    k: ArrayLike,
    *,
    key: Key | None = None,
    reserved: ArrayLike | None = None,
) -> Array:
    """Keep exactly ``min(k, #eligible)`` eligible entries of a 1-D score vector, the highest first.

    Order: ``reserved`` entries first, then higher score (NaN lowest, ``-0.0 == 0.0``), then lower
    index — or, with ``key``, random 32-bit draws from ``key`` and then lower index (a random order
    of the tied entries) — so the kept count is exact even with heavy ties.

    No sort: the k-th highest score is found by bisection on the bits of the scores' order-
    preserving integer codes (32 passes of compare-and-count), ties at it by the same bisection on
    the random draws, then by index (a running count). On a CPU, XLA's sort is the slow part of a
    pruning round; this is several times faster and exact.

    Args:
      scores: 1-D float scores; NaN ranks lowest.
      eligible: 1-D bool; only these can be kept (the current mask).
      k: number to keep (may be traced).
      key: optional PRNG key to break ties at random instead of by index.
      reserved: optional 1-D bool of entries to keep before any other (e.g. a per-layer minimum).

    Returns:
      A 1-D bool array with ``min(k, eligible.sum())`` True entries, all of them eligible.

    Raises:
      ValueError: if ``key`` is neither ``None`` nor one typed key (``jax.random.key``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import select
      >>> select.keep_top_k(jnp.array([1.0, 3.0, 3.0, 2.0]), jnp.ones(4, bool), 2)
      Array([False,  True,  True, False], dtype=bool)
      >>> select.keep_top_k(jnp.array([1.0, 3.0, 3.0, 2.0]), jnp.ones(4, bool), 1)  # a tie: index
      Array([False,  True, False, False], dtype=bool)
    """
    _checks.check_key(key)
    s = jnp.asarray(scores)
    cand = jnp.asarray(eligible, bool)
    need = jnp.asarray(k, jnp.int32)
    chosen = jnp.zeros(cand.shape, bool)
    if reserved is not None:
        # Reserved entries first: all of them if k allows, else the best k of them.
        res = jnp.asarray(reserved, bool) & cand
        n_res = jnp.sum(res, dtype=jnp.int32)
        all_in = need >= n_res
        chosen = jnp.where(all_in, res, chosen)
        cand = jnp.where(all_in, cand & ~res, res)
        need = jnp.where(all_in, need - n_res, need)
    codes = [_order_code(s)]
    if key is not None:
        codes.append(jax.random.bits(key, cand.shape, codes[0].dtype))
    for code in codes:
        # The need-th highest code among the candidates: all above it are kept, ties go on.
        t = _kth_highest(code, cand, need)
        above = cand & (code > t)
        chosen = chosen | above
        need = need - jnp.sum(above, dtype=jnp.int32)
        cand = cand & (code == t)
    # What is still tied: lower index first.
    return chosen | (cand & (jnp.cumsum(cand, dtype=jnp.int32) <= need))


def _order_code(s: Array) -> Array:
    """Unsigned integer codes in the order of the scores: NaN lowest (0), then -inf … +inf, with
    -0.0 and 0.0 equal (float64 scores, under x64, get 64-bit codes; other floats float32's)."""
    wide = s.dtype == jnp.float64
    f, u = (jnp.float64, jnp.uint64) if wide else (jnp.float32, jnp.uint32)
    v = jnp.where(s == 0, jnp.zeros((), f), s.astype(f))  # -0.0 → 0.0
    bits = lax.bitcast_convert_type(v, u)
    top = jnp.asarray(1, u) << (8 * jnp.dtype(u).itemsize - 1)
    code = jnp.where(bits & top, ~bits, bits | top)  # negatives reversed below the positives
    return jnp.where(jnp.isnan(v), jnp.zeros((), u), code)


def _kth_highest(code: Array, cand: Array, k: Array) -> Array:
    """The largest ``t`` with ``#{cand & code >= t} >= k``: the k-th highest code among the
    candidates (all ones when ``k <= 0``, 0 when ``k`` exceeds the candidates), bit by bit."""
    u = code.dtype
    width = 8 * jnp.dtype(u).itemsize

    def bit(i: Array, t: Array) -> Array:
        trial = t | (jnp.asarray(1, u) << (width - 1 - i).astype(u))
        return jnp.where(jnp.sum(cand & (code >= trial), dtype=jnp.int32) >= k, trial, t)

    return lax.fori_loop(0, width, bit, jnp.zeros((), u))


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


def _check_inputs(
    scores: Scores, mask: Mask, rate: Any, *, per_leaf_rate_ok: bool, min_keep: Any, key: Any
) -> None:
    _checks.check_key(key)
    _checks.check_nonnegative_int(min_keep, name="min_keep")
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
    _check_inputs(scores, mask, rate, per_leaf_rate_ok=True, min_keep=min_keep, key=key)
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
        n_keep = _keep_count(jnp.sum(m, dtype=jnp.int32), r, min_keep)
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
    _check_inputs(scores, mask, rate, per_leaf_rate_ok=False, min_keep=min_keep, key=key)
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
    n_keep = _keep_count(jnp.sum(m_all, dtype=jnp.int32), rate)
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
    _check_inputs(
        scores, mask, rate, per_leaf_rate_ok=(scope == "layerwise"), min_keep=min_keep, key=key
    )
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
