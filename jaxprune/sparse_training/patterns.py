r"""Sparsity patterns: which sets of weights are kept together (unstructured, N:M, block).

A :class:`Pattern` is static (hashable, part of a ``jit`` static argument); counts, scores and masks
are arrays. :func:`select` keeps an exact number of weights of one leaf at the pattern's
granularity, built on :func:`jaxprune.select.keep_top_k` (exact counts, deterministic ties, no
sort), so it runs under ``jit`` and ``vmap`` over tickets with a traced count:

* ``unstructured`` — the unit is one weight; keep the ``count`` highest scores of the flat leaf.
* ``n:m`` (e.g. 2:4) — the unit is one weight; along the input axis (-2 of Flax dense ``(in,
  out)`` and conv ``(kh, kw, in, out)`` kernels) every run of ``m`` consecutive weights is a group,
  and each of the :math:`G = \text{size}/m` groups keeps :math:`\lfloor \text{count}/G \rfloor`
  (``n`` when ``count = size·n/m``).
* ``block:b`` — the unit is a :math:`b \times b` tile of the last two dims; a tile's score is the
  mean of its scores; :math:`\lfloor \text{count}/b^2 \rfloor` whole tiles are kept.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune.sparse_training import patterns
  >>> s = jnp.array([[4.0], [1.0], [3.0], [2.0], [0.0], [9.0], [8.0], [7.0]])
  >>> patterns.select(s, 4, patterns.pattern("2:4")).ravel()
  Array([ True, False,  True, False, False,  True,  True, False], dtype=bool)
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune import _checks, masks
from jaxprune import select as select_lib
from jaxprune._types import Array, Params, Prunable

__all__ = ["KINDS", "Pattern", "check_pattern", "drop_count", "pattern", "select"]

KINDS = ("unstructured", "nm", "block")
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK = re.compile(r"^\s*block\s*:\s*(\d+)\s*$")
_FORMS = "'unstructured', 'N:M' (e.g. '2:4') or 'block:B' (e.g. 'block:4')"


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A sparsity pattern (static, hashable): build one with :func:`pattern`.

    Attributes:
      kind: ``"unstructured"``, ``"nm"`` or ``"block"``.
      n, m: for ``"nm"``: keep ``n`` of every ``m`` consecutive weights along the input axis (-2).
      block: for ``"block"``: the side ``b`` of the ``b×b`` tiles over the last two dims.

    Example:
      >>> from jaxprune.sparse_training import patterns
      >>> patterns.Pattern("nm", n=2, m=4), str(patterns.Pattern("block", block=4))
      (Pattern(kind='nm', n=2, m=4, block=0), 'block:4')
    """

    kind: str
    n: int = 0
    m: int = 0
    block: int = 0

    def __post_init__(self) -> None:
        _checks.check_choice(self.kind, KINDS, name="pattern kind")
        for field in ("n", "m", "block"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"pattern.{field} must be an int, got {value!r}.")
        if self.kind == "nm":
            if not 1 <= self.n <= self.m:
                raise ValueError(
                    f"pattern N:M must have 1 <= N <= M (keep N of every M), got "
                    f"N={self.n}, M={self.m}."
                )
            if self.block:
                raise ValueError(f"pattern N:M takes no block size, got block={self.block}.")
        elif self.kind == "block":
            if self.block < 1:
                raise ValueError(f"pattern block:B needs a tile side B >= 1, got B={self.block}.")
            if self.n or self.m:
                raise ValueError(f"pattern block:B takes no N:M, got n={self.n}, m={self.m}.")
        elif self.n or self.m or self.block:
            raise ValueError(
                f"pattern 'unstructured' takes no n, m or block, got n={self.n}, m={self.m}, "
                f"block={self.block}."
            )

    def __str__(self) -> str:
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.block}"
        return "unstructured"

    @property
    def unit(self) -> int:
        """Weights per kept unit: ``b²`` for block, 1 otherwise."""
        return self.block * self.block if self.kind == "block" else 1


def pattern(spec: Pattern | str) -> Pattern:
    """Parse a pattern: ``"unstructured"``, ``"N:M"`` (``1 <= N <= M``) or ``"block:B"`` (``B >= 1``).

    A :class:`Pattern` is returned as it is.

    Raises:
      ValueError: naming ``pattern``, for any other string, ``N > M``, ``N < 1`` or ``B < 1``.

    Example:
      >>> from jaxprune.sparse_training import patterns
      >>> patterns.pattern("2:4"), patterns.pattern("block:4").unit
      (Pattern(kind='nm', n=2, m=4, block=0), 16)
      >>> patterns.pattern("5:4")
      Traceback (most recent call last):
      ...
      ValueError: pattern N:M must have 1 <= N <= M (keep N of every M), got N=5, M=4.
    """
    return _parse(spec)


def _parse(spec: Pattern | str) -> Pattern:
    """:func:`pattern` (callable where an argument named ``pattern`` hides it)."""
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"pattern must be a Pattern or a string {_FORMS}, got {spec!r}.")
    if spec.strip() == "unstructured":
        return Pattern("unstructured")
    nm = _NM.match(spec)
    if nm:
        return Pattern("nm", n=int(nm.group(1)), m=int(nm.group(2)))
    block = _BLOCK.match(spec)
    if block:
        return Pattern("block", block=int(block.group(1)))
    raise ValueError(f"pattern must be {_FORMS}, got {spec!r}.")


def _misfit(p: Pattern, shape: tuple[int, ...]) -> str | None:
    """Why ``p`` cannot tile a leaf of ``shape`` (``None`` when it can)."""
    if p.kind == "unstructured":
        return None
    if len(shape) < 2:
        return f"needs a leaf with at least 2 dims (in, out), got shape {list(shape)}"
    if p.kind == "nm" and shape[-2] % p.m:
        return f"M={p.m} must divide axis -2 (the input axis, {shape[-2]}) of shape {list(shape)}"
    if p.kind == "block" and (shape[-2] % p.block or shape[-1] % p.block):
        return (
            f"B={p.block} must divide the last two dims ({shape[-2]}, {shape[-1]}) of shape "
            f"{list(shape)}"
        )
    return None


def check_pattern(
    params: Params, pattern: Pattern | str, prunable: Prunable = None, *, dense: Sequence[str] = ()
) -> None:
    """Raise unless ``pattern`` tiles every prunable leaf of ``params`` (a static check).

    N:M needs ``M | shape[-2]``; block:B needs ``B | shape[-2]`` and ``B | shape[-1]``; both need
    ``ndim >= 2``. Leaves whose path matches a regex of ``dense`` (kept whole) are not checked.

    Raises:
      ValueError: naming ``pattern`` and the first leaf path that does not fit.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune.sparse_training import patterns
      >>> params = {"fc": {"kernel": jnp.ones((8, 3)), "bias": jnp.ones(3)}}
      >>> patterns.check_pattern(params, "2:4")  # 4 divides 8: fine
      >>> patterns.check_pattern(params, "2:3")
      Traceback (most recent call last):
      ...
      ValueError: pattern 2:3 does not fit params['fc']['kernel']: M=3 must divide axis -2 ...
    """
    p = _parse(pattern)
    if p.kind == "unstructured":
        return
    dense_re = [re.compile(d) for d in dense]
    flags = jax.tree.leaves(masks.is_prunable(params, prunable))
    for (path, leaf), flag in zip(_checks.leaves_with_paths(params), flags, strict=True):
        if not flag or any(d.search(path) for d in dense_re):
            continue
        why = _misfit(p, tuple(np.shape(leaf)))
        if why is not None:
            raise ValueError(
                f"pattern {p} does not fit params{path}: {why}. Leave this leaf out with "
                "prunable= (or keep it whole with dense=), or choose another pattern."
            )


def _check_select_inputs(
    s: Array, count: ArrayLike, p: Pattern, eligible: Any, reserved: Any
) -> None:
    if np.ndim(count) != 0:
        raise ValueError(
            f"count must be a scalar (one leaf; vmap over tickets for many), got shape "
            f"{list(np.shape(count))}."
        )
    _checks.check_real(count, name="count")
    for name, arr in (("eligible", eligible), ("reserved", reserved)):
        if arr is not None and np.shape(arr) != s.shape:
            raise ValueError(
                f"{name} must have the scores' shape {list(s.shape)}, got {list(np.shape(arr))}."
            )
    why = _misfit(p, s.shape)
    if why is not None:
        raise ValueError(f"pattern {p} does not fit scores: {why}.")


def select(
    scores: ArrayLike,
    count: ArrayLike,
    pattern: Pattern | str,
    *,
    eligible: ArrayLike | None = None,
    reserved: ArrayLike | None = None,
) -> Array:
    r"""Keep exactly ``count`` weights of ONE leaf, the highest ``scores`` first, at ``pattern``'s units.

    With ``eligible`` only those weights can be kept; ``reserved`` ones are kept before any other
    (the semantics of :func:`jaxprune.select.keep_top_k`: ties by lower index). Per pattern:

    * unstructured: :math:`\min(\text{count}, \#\text{eligible})` weights of the flat leaf;
    * block:b: :math:`\lfloor \text{count}/b^2 \rfloor` tiles; a tile's score is the mean of its
      scores, it is eligible when all its weights are, reserved when any is;
    * n:m: :math:`\lfloor \text{count}/G \rfloor` weights in each of the :math:`G =
      \text{size}/m` groups of ``m`` consecutive weights along axis -2.

    Fewer are kept where too few (tiles, group members) are eligible. ``count`` may be traced.

    Raises:
      ValueError: when the pattern does not tile the leaf, or ``count`` is not a scalar, or
        ``eligible`` / ``reserved`` do not have the scores' shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune.sparse_training import patterns
      >>> s = jnp.array([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 0.0, 9.0]])
      >>> patterns.select(s, 3, "unstructured")
      Array([[False, False, False, False],
             [ True,  True, False,  True]], dtype=bool)
      >>> patterns.select(s, 4, "block:2")  # tile means 2.5 and 2.25: the left tile
      Array([[ True,  True, False, False],
             [ True,  True, False, False]], dtype=bool)
    """
    p = _parse(pattern)
    s = jnp.asarray(scores)
    _check_select_inputs(s, count, p, eligible, reserved)
    elig = jnp.ones(s.shape, bool) if eligible is None else jnp.asarray(eligible, bool)
    res = None if reserved is None else jnp.asarray(reserved, bool)
    return _select(s, jnp.asarray(count, jnp.int32), p, elig, res)


@functools.partial(jax.jit, static_argnums=2)
def _select(s: Array, k: Array, p: Pattern, elig: Array, res: Array | None) -> Array:
    """:func:`select` after its checks (jitted: an eager call compiles once per shape and
    pattern; inside a ``jit`` it is inlined)."""
    if p.kind == "unstructured":
        flat_res = None if res is None else res.ravel()
        kept = select_lib.keep_top_k(s.ravel(), elig.ravel(), k, reserved=flat_res)
        return kept.reshape(s.shape)
    if p.kind == "block":
        return _select_blocks(s, k, p.block, elig, res)
    return _select_n_of_m(s, k, p.m, elig, res)


def _select_blocks(s: Array, k: Array, b: int, elig: Array, res: Array | None) -> Array:
    *lead, rows, cols = s.shape
    tiled = (*lead, rows // b, b, cols // b, b)

    def tiles(x: Array, reduce: Any) -> Array:
        return reduce(x.reshape(tiled), axis=(-3, -1)).ravel()

    tile_res = None if res is None else tiles(res, jnp.any)
    kept = select_lib.keep_top_k(
        tiles(s, jnp.mean), tiles(elig, jnp.all), k // (b * b), reserved=tile_res
    )
    kept = kept.reshape((*lead, rows // b, 1, cols // b, 1))
    return jnp.broadcast_to(kept, tiled).reshape(s.shape)


def _select_n_of_m(s: Array, k: Array, m: int, elig: Array, res: Array | None) -> Array:
    *lead, rows, cols = s.shape
    n_groups = s.size // m

    def groups(x: Array) -> Array:  # (..., rows/m, m, cols) -> (G, m): m consecutive along -2
        return jnp.moveaxis(x.reshape((*lead, rows // m, m, cols)), -2, -1).reshape(-1, m)

    per_group = k // n_groups
    if res is None:
        kept = jax.vmap(lambda sc, el: select_lib.keep_top_k(sc, el, per_group))(
            groups(s), groups(elig)
        )
    else:
        kept = jax.vmap(lambda sc, el, rs: select_lib.keep_top_k(sc, el, per_group, reserved=rs))(
            groups(s), groups(elig), groups(res)
        )
    back = jnp.moveaxis(kept.reshape((*lead, rows // m, cols, m)), -1, -2)
    return back.reshape(s.shape)


def drop_count(count: ArrayLike, fraction: ArrayLike, pattern: Pattern | str, size: int) -> Array:
    r"""How many of ``count`` active weights a drop ``fraction`` removes, at the pattern's units.

    With :math:`[x] = \lfloor x + \tfrac12 \rfloor` (exact, as in :func:`jaxprune.select.keep_count`):

    * unstructured: :math:`[f \cdot c]`;
    * block:b: :math:`[f \cdot \lfloor c/b^2 \rfloor] \cdot b^2` (whole tiles);
    * n:m: :math:`G \cdot [f \cdot \lfloor c/G \rfloor]` with :math:`G = \text{size}/m` groups (the
      same number in every group).

    ``count`` and ``fraction`` may be traced; ``size`` (the leaf's number of weights) is static.

    Raises:
      ValueError: a concrete ``fraction`` outside [0, 1], a ``size`` that is not a positive int
        (for n:m, a multiple of m).

    Example:
      >>> from jaxprune.sparse_training import patterns
      >>> [int(patterns.drop_count(40, 0.3, p, 64)) for p in ("unstructured", "block:2", "2:4")]
      [12, 12, 16]
    """
    p = _parse(pattern)
    _checks.check_in_range(fraction, name="fraction", high_inclusive=True)
    _checks.check_real(count, name="count")
    _checks.check_positive_int(size, name="size")
    if p.kind == "nm" and size % p.m:
        raise ValueError(f"size must be a multiple of M={p.m} for pattern {p}, got {size}.")
    unit = p.unit if p.kind == "block" else (size // p.m if p.kind == "nm" else 1)
    return _drop_count(jnp.asarray(count, jnp.int32), jnp.asarray(fraction, jnp.float32), unit)


@functools.partial(jax.jit, static_argnums=2)
def _drop_count(count: Array, fraction: Array, unit: int) -> Array:
    units = count // unit
    # keep_count(r, f) = r − [f·r], exactly, so [f·r] = r − keep_count(r, f).
    return (units - select_lib._keep_count(units, fraction)) * unit
