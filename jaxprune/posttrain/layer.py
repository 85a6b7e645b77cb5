r"""Post-training pruning of one linear layer from calibration inputs (pure ``jax.numpy``).

A kernel is Flax's ``(in, out)``; calibration inputs ``x`` are ``(n, in)`` (leading axes are
flattened). Everything a method needs from ``x`` is in its :class:`Stats`, summed over batches:

.. math::  \text{sq\_norms}_j = \textstyle\sum_t x_{tj}^2, \qquad H = \textstyle\sum_t x_t x_t^\top.

Methods (RESEARCH.md §11), each returning a bool mask of the kernel's shape (True = kept):

* :func:`magnitude` — keep the largest :math:`|W_{ij}|`, per layer or per output column;
* :func:`wanda` (Sun et al. 2024) — keep the largest :math:`S_{ij} = |W_{ij}|\,\|X_i\|_2` per
  output column (:math:`i` the input, :math:`\|X_i\|_2 = \sqrt{\text{sq\_norms}_i}`);
* :func:`sparsegpt` (Frantar & Alistarh 2023, Alg. 1) — choose the mask column block by column
  block from :math:`w^2 / [U]_{qq}^2`, :math:`U` the upper Cholesky factor of :math:`(H+\lambda
  I)^{-1}`, and update the kept weights to compensate (optimal brain surgeon, one input at a time).

The target is exactly one of ``sparsity`` (a fraction in [0, 1) of the entries set to 0; counts
as :func:`jaxprune.select.keep_count`, so they are exact) or ``nm`` (``(n, m)`` or ``"n:m"``:
``n`` kept in every ``m`` consecutive inputs of each output, as
:func:`jaxprune.select.n_of_m` with ``axis=-2``). Every function is jit-compiled per shape
(``sparsity`` is traced, so changing it does not recompile) and runs under ``jit`` and ``vmap``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import posttrain
  >>> x = jax.random.normal(jax.random.key(0), (64, 8))
  >>> w = jax.random.normal(jax.random.key(1), (8, 4))
  >>> stats = posttrain.input_stats(x)
  >>> int(posttrain.wanda(w, stats, sparsity=0.5).sum()), int(posttrain.wanda(w, stats, nm="2:4").sum())
  (16, 16)
  >>> new, mask = posttrain.sparsegpt(w, stats, sparsity=0.5)
  >>> bool((new[~mask] == 0).all())
  True
  >>> by_magnitude = w * posttrain.magnitude(w, sparsity=0.5)
  >>> err = lambda w_hat: float(posttrain.reconstruction_error(w, w_hat, x))
  >>> err(new) < err(by_magnitude)
  True
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxprune import _checks, select
from jaxprune._types import Array

__all__ = [
    "SCOPES",
    "Stats",
    "add_stats",
    "input_stats",
    "magnitude",
    "reconstruction_error",
    "sparsegpt",
    "wanda",
]

SCOPES = ("layer", "output")
_HIGHEST = lax.Precision.HIGHEST


class Stats(NamedTuple):
    """Calibration statistics of one layer's inputs, summed over every input row seen.

    Attributes:
      sq_norms: ``(in,)`` float32, :math:`\\sum_t x_{tj}^2` (the squared input-feature norms).
      hessian: ``(in, in)`` float32, :math:`\\sum_t x_t x_t^\\top`.
      count: ``()`` int32, the number of input rows.
    """

    sq_norms: Array
    hessian: Array
    count: Array  # type: ignore[assignment]  # the spec's name; shadows tuple.count


def input_stats(x: ArrayLike) -> Stats:
    r"""The :class:`Stats` of calibration inputs ``x`` of shape ``(n, in)`` (or ``(..., in)``).

    :math:`\text{sq\_norms}_j = \sum_t x_{tj}^2`, :math:`H = \sum_t x_t x_t^\top` over the
    rows ``t`` (all leading axes flattened), accumulated in float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> s = posttrain.input_stats(jnp.array([[1.0, 2.0], [3.0, 0.0]]))
      >>> s.sq_norms, s.hessian, int(s.count)
      (Array([10.,  4.], dtype=float32), Array([[10.,  2.],
             [ 2.,  4.]], dtype=float32), 2)
    """
    arr = jnp.asarray(x)
    if arr.ndim < 1 or arr.shape[-1] == 0:
        raise ValueError(
            f"x must have shape (n, in) with in >= 1 (leading axes are flattened), got "
            f"{list(arr.shape)}."
        )
    return _input_stats(arr)


@jax.jit
def _input_stats(x: Array) -> Stats:
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return Stats(
        sq_norms=jnp.sum(jnp.square(rows), axis=0),
        hessian=jnp.matmul(rows.T, rows, precision=_HIGHEST),
        count=jnp.asarray(rows.shape[0], jnp.int32),
    )


def add_stats(a: Stats, b: Stats) -> Stats:
    """The :class:`Stats` of two batches together (elementwise sums).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> x = jnp.arange(6.0).reshape(3, 2)
      >>> both = posttrain.add_stats(posttrain.input_stats(x[:1]), posttrain.input_stats(x[1:]))
      >>> bool((both.hessian == posttrain.input_stats(x).hessian).all()), int(both.count)
      (True, 3)
    """
    _checks.check_like(tuple(b), tuple(a), name="b", ref_name="a")
    return _add_stats(a, b)


@jax.jit
def _add_stats(a: Stats, b: Stats) -> Stats:
    return Stats(*(jnp.add(u, v) for u, v in zip(a, b, strict=True)))


# --- targets


def _parse_nm(nm: Any) -> tuple[int, int]:
    pair: Any = nm
    if isinstance(nm, str):
        parts = nm.split(":")
        pair = tuple(int(p) for p in parts) if all(p.strip().isdigit() for p in parts) else ()
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        or not 0 < pair[0] <= pair[1]
    ):
        raise ValueError(
            f'nm must be a pair (n, m) of ints with 0 < n <= m, or a string such as "2:4", got '
            f"{nm!r}."
        )
    return int(pair[0]), int(pair[1])


def check_target(
    sparsity: Any, nm: Any, n_inputs: int | None = None, *, layer: str = "kernel"
) -> tuple[Any, tuple[int, int] | None]:
    """Validate a pruning target: ``(sparsity, None)`` or ``(None, (n, m))``.

    Raises ``ValueError`` unless exactly one of ``sparsity`` / ``nm`` is given, ``sparsity`` is
    in [0, 1) (a traced one is not checked) and ``m`` divides ``n_inputs`` (the ``in`` of
    ``layer``).
    """
    if (sparsity is None) == (nm is None):
        raise ValueError(
            'give exactly one of sparsity= (a fraction in [0, 1)) or nm= ((n, m) or "n:m"), got '
            f"sparsity={sparsity!r} and nm={nm!r}."
        )
    if nm is None:
        _checks.check_in_range(sparsity, name="sparsity")
        return sparsity, None
    pair = _parse_nm(nm)
    if n_inputs is not None and n_inputs % pair[1]:
        raise ValueError(
            f"nm={nm!r} needs m={pair[1]} to divide the input dimension of {layer}, which is "
            f"{n_inputs}; N:M groups are m consecutive inputs of each output."
        )
    return None, pair


def _check_kernel(kernel: ArrayLike, name: str = "kernel") -> Array:
    w = jnp.asarray(kernel)
    if w.ndim != 2 or not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a float (in, out) dense kernel, got {w.dtype.name}{list(w.shape)}."
        )
    return w


def _check_stats(stats: Any, n_inputs: int) -> Stats:
    if not isinstance(stats, Stats):
        raise ValueError(
            f"stats must be a posttrain.Stats (from input_stats(x)), got {type(stats).__name__}."
        )
    if stats.sq_norms.shape != (n_inputs,) or stats.hessian.shape != (n_inputs, n_inputs):
        raise ValueError(
            f"stats must describe the kernel's {n_inputs} inputs: sq_norms [{n_inputs}] and "
            f"hessian [{n_inputs}, {n_inputs}], got {list(stats.sq_norms.shape)} and "
            f"{list(stats.hessian.shape)}."
        )
    return stats


# --- masks from scores


def _keep_per_output(scores: Array, sparsity: Array) -> Array:
    """Each output column keeps its ``keep_count(in, sparsity)`` highest scores."""
    k = select.keep_count(scores.shape[0], sparsity)
    eligible = jnp.ones(scores.shape[0], bool)
    keep = jax.vmap(lambda col: select.keep_top_k(col, eligible, k), in_axes=1, out_axes=1)
    return keep(scores)


def _keep_nm(scores: Array, nm: tuple[int, int]) -> Array:
    return select.n_of_m(scores, jnp.ones(scores.shape, bool), *nm, axis=-2)


@functools.partial(jax.jit, static_argnames=("nm", "scope"))
def _magnitude(kernel: Array, sparsity: Array, *, nm: tuple[int, int] | None, scope: str) -> Array:
    scores = jnp.abs(kernel)
    if nm is not None:
        return _keep_nm(scores, nm)
    if scope == "output":
        return _keep_per_output(scores, sparsity)
    k = select.keep_count(kernel.size, sparsity)
    return select.keep_top_k(scores.ravel(), jnp.ones(kernel.size, bool), k).reshape(kernel.shape)


def magnitude(
    kernel: ArrayLike,
    *,
    sparsity: ArrayLike | None = None,
    nm: tuple[int, int] | str | None = None,
    scope: Literal["layer", "output"] = "layer",
) -> Array:
    r"""Magnitude pruning: keep the largest :math:`|W_{ij}|`.

    ``scope="layer"`` keeps ``keep_count(in·out, sparsity)`` over the whole kernel;
    ``"output"`` keeps ``keep_count(in, sparsity)`` in every output column. With ``nm`` the
    scope does not matter: ``n`` of every ``m`` consecutive inputs of each output. Ties: lower
    index first.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> w = jnp.array([[4.0, -1.0], [1.0, 3.0], [-3.0, 0.5], [2.0, 2.0]])
      >>> posttrain.magnitude(w, sparsity=0.5).astype(int).T  # 4, 3, 3, then a tie of 2s: index
      Array([[1, 0, 1, 1],
             [0, 1, 0, 0]], dtype=int32)
      >>> posttrain.magnitude(w, sparsity=0.5, scope="output").astype(int).T
      Array([[1, 0, 1, 0],
             [0, 1, 0, 1]], dtype=int32)
      >>> posttrain.magnitude(w, nm="1:2").astype(int).T
      Array([[1, 0, 1, 0],
             [0, 1, 0, 1]], dtype=int32)
    """
    w = _check_kernel(kernel)
    _checks.check_choice(scope, SCOPES, name="scope")
    sparsity, pair = check_target(sparsity, nm, w.shape[0])
    return _magnitude(w, _as_rate(sparsity), nm=pair, scope=scope)


def _as_rate(sparsity: Any) -> Array:
    return jnp.asarray(0.0 if sparsity is None else sparsity, jnp.float32)


@functools.partial(jax.jit, static_argnames=("nm",))
def _wanda(kernel: Array, sq_norms: Array, sparsity: Array, *, nm: tuple[int, int] | None) -> Array:
    scores = jnp.abs(kernel) * jnp.sqrt(sq_norms)[:, None]
    return _keep_nm(scores, nm) if nm is not None else _keep_per_output(scores, sparsity)


def wanda(
    kernel: ArrayLike,
    stats: Stats,
    *,
    sparsity: ArrayLike | None = None,
    nm: tuple[int, int] | str | None = None,
) -> Array:
    r"""Wanda (Sun et al. 2024): keep the largest :math:`S_{ij} = |W_{ij}|\,\sqrt{\text{sq\_norms}_i}`.

    Weights compete only within their output column ``j``: each keeps
    ``keep_count(in, sparsity)`` (or ``n`` of every ``m`` consecutive inputs). No weight update.

    Example — input 1 is small, so its large weights go first:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> x = jnp.array([[1.0, 0.1], [1.0, -0.1]])
      >>> w = jnp.array([[1.0], [5.0]])
      >>> posttrain.wanda(w, posttrain.input_stats(x), sparsity=0.5).ravel()
      Array([ True, False], dtype=bool)
    """
    w = _check_kernel(kernel)
    stats = _check_stats(stats, w.shape[0])
    sparsity, pair = check_target(sparsity, nm, w.shape[0])
    return _wanda(w, stats.sq_norms, _as_rate(sparsity), nm=pair)


# --- SparseGPT


def _upper_cholesky_of_inverse(h: Array) -> Array:
    """``U`` upper triangular with ``Uᵀ U = H⁻¹``, via ``H = L Lᵀ`` and a triangular solve."""
    lower = jnp.linalg.cholesky(h)
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    h_inv = jax.scipy.linalg.cho_solve((lower, True), eye)
    return jnp.triu(jnp.linalg.cholesky(h_inv, upper=True))


def _compensate(w1: Array, u1: Array, keep1: Array, start: int | Array, stop: int | Array) -> tuple:
    """Columns ``start..stop-1`` of a block, one at a time: zero the pruned entries of column
    ``q`` and spread the error :math:`e = (w_q - \\hat w_q) / U_{qq}` over the later columns,
    :math:`W_{:, q:} \\mathrel{-}= e\\, U_{q, q:}` (``U`` is upper triangular, so a full-row update
    leaves earlier columns alone). Returns the updated ``w1`` and the errors ``e`` per column."""

    def column(q: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        w, errs = carry
        col = w[:, q]
        err = jnp.where(keep1[:, q], 0.0, col) / u1[q, q]
        w = w - err[:, None] * u1[q][None, :]
        return w, errs.at[:, q].set(err)

    return lax.fori_loop(start, stop, column, (w1, jnp.zeros_like(w1)))


def _block_nm(w1: Array, u1: Array, nm: tuple[int, int]) -> tuple[Array, Array, Array]:
    n, m = nm
    d2 = jnp.square(jnp.diagonal(u1))

    def group(g: Array, carry: tuple[Array, Array, Array]) -> tuple[Array, Array, Array]:
        w, errs, keep = carry
        start = g * m
        scores = jnp.square(lax.dynamic_slice_in_dim(w, start, m, axis=1))
        scores = scores / lax.dynamic_slice_in_dim(d2, start, m)[None, :]
        kept = select.n_of_m(scores, jnp.ones(scores.shape, bool), n, m, axis=-1)
        keep = lax.dynamic_update_slice_in_dim(keep, kept, start, axis=1)
        w, e = _compensate(w, u1, keep, start, start + m)
        return w, errs + e, keep

    init = (w1, jnp.zeros_like(w1), jnp.zeros(w1.shape, bool))
    w1, errs, keep1 = lax.fori_loop(0, w1.shape[1] // m, group, init)
    return w1, errs, keep1


def _pruned_through(total: Array, stop: Array | int, n_inputs: int) -> Array:
    """``floor(total · stop / in)`` in int32 without overflow: the pruned count of columns
    ``[0, stop)`` when ``total`` is spread over the inputs in proportion."""
    q, r = total // n_inputs, total % n_inputs
    return q * stop + (r * stop) // n_inputs


def _prune_block(
    w: Array,
    keep: Array,
    u: Array,
    start: Array | int,
    size: int,
    total: Array,
    nm: tuple[int, int] | None,
) -> tuple[Array, Array]:
    r"""Columns ``[start, start + size)``: choose their mask, compensate column by column, then
    the lazy update of every later column, :math:`W_{:, i_2:} \mathrel{-}= E\, U_{i_1:i_2, i_2:}`."""
    n_in = w.shape[1]
    stop = start + size
    w1 = lax.dynamic_slice_in_dim(w, start, size, axis=1)
    u_rows = lax.dynamic_slice_in_dim(u, start, size, axis=0)
    u1 = lax.dynamic_slice_in_dim(u_rows, start, size, axis=1)
    if nm is None:
        # This block prunes its share of the layer's exact total, the lowest w² / U_qq².
        pruned = _pruned_through(total, stop, n_in) - _pruned_through(total, start, n_in)
        scores = jnp.square(w1) / jnp.square(jnp.diagonal(u1))[None, :]
        keep1 = select.keep_top_k(scores.ravel(), jnp.ones(w1.size, bool), w1.size - pruned)
        keep1 = keep1.reshape(w1.shape)
        w1, errs = _compensate(w1, u1, keep1, 0, size)
    else:
        w1, errs, keep1 = _block_nm(w1, u1, nm)
    w = lax.dynamic_update_slice_in_dim(w, jnp.where(keep1, w1, 0.0), start, axis=1)
    later = jnp.where(jnp.arange(n_in)[None, :] >= stop, u_rows, 0.0)
    w = w - jnp.matmul(errs, later, precision=_HIGHEST)
    return w, lax.dynamic_update_slice_in_dim(keep, keep1, start, axis=1)


@functools.partial(jax.jit, static_argnames=("nm", "blocksize"))
def _sparsegpt(
    kernel: Array,
    hessian: Array,
    sparsity: Array,
    percdamp: Array,
    *,
    nm: tuple[int, int] | None,
    blocksize: int,
) -> tuple[Array, Array]:
    n_in, _ = kernel.shape
    w = kernel.T.astype(jnp.float32)  # (out, in): a row per output, as in the paper
    h = hessian.astype(jnp.float32)
    dead = jnp.diagonal(h) == 0
    h = h + jnp.diag(dead.astype(h.dtype))  # a dead input: H_ii = 1 (its weights are zeroed)
    w = jnp.where(dead[None, :], 0.0, w)
    h = h + percdamp * jnp.mean(jnp.diagonal(h)) * jnp.eye(n_in, dtype=h.dtype)
    u = _upper_cholesky_of_inverse(h)
    total = kernel.size - select.keep_count(kernel.size, sparsity)
    # Whole blocks in a loop (one compiled body, whatever the width), then the rest, if any.
    full, tail = divmod(n_in, blocksize)

    def block(b: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        return _prune_block(*carry, u, b * blocksize, blocksize, total, nm)

    w, keep = lax.fori_loop(0, full, block, (w, jnp.zeros(w.shape, bool)))
    if tail:
        w, keep = _prune_block(w, keep, u, full * blocksize, tail, total, nm)
    return jnp.where(keep.T, w.T, 0.0).astype(kernel.dtype), keep.T


def sparsegpt(
    kernel: ArrayLike,
    stats: Stats,
    *,
    sparsity: ArrayLike | None = None,
    nm: tuple[int, int] | str | None = None,
    blocksize: int = 128,
    percdamp: ArrayLike = 0.01,
) -> tuple[Array, Array]:
    r"""SparseGPT (Frantar & Alistarh 2023, Alg. 1): prune and reconstruct, ``(new_kernel, mask)``.

    With :math:`W = \text{kernel}^\top` (a row per output, a column per input):

    1. :math:`H = \text{hessian}`; a dead input (:math:`H_{ii} = 0`) gets :math:`H_{ii} = 1` and
       its weights zeroed; then :math:`H \mathrel{+}= \lambda I`,
       :math:`\lambda = \text{percdamp}\cdot\operatorname{mean}\operatorname{diag} H`.
    2. :math:`U` = the upper Cholesky factor of :math:`H^{-1}` (:math:`U^\top U = H^{-1}`).
    3. For each block of ``blocksize`` columns, in order: choose the mask — unstructured: the
       block's share :math:`\lfloor P\,i_2/\text{in}\rfloor - \lfloor P\,i_1/\text{in}\rfloor` of
       the layer's exact pruned count :math:`P` goes to the smallest :math:`w_{rq}^2/U_{qq}^2` over
       the block; N:M: at the first column of every group of ``m``, the ``m - n`` smallest of each
       row in the group (after the updates so far) — then, column by column, zero the pruned
       entries, :math:`e = (w_q - \hat w_q)/U_{qq}`, :math:`W_{:,q:} \mathrel{-}= e\,U_{q,q:}`
       inside the block, and at its end :math:`W_{:,i_2:} \mathrel{-}= E\,U_{i_1:i_2,\,i_2:}`.

    ``blocksize`` must be a multiple of ``m`` (or at least ``in``) so N:M groups stay whole.
    Unstructured sparsity is spread evenly over the blocks (as in the authors' code, where each
    block prunes its own quantile), so a ``blocksize`` much smaller than ``in`` holds every block
    to the same sparsity even when the important inputs are not evenly spread.

    Example — a 2:4 layer that keeps most of its output on the calibration inputs:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> x = jax.random.normal(jax.random.key(0), (256, 16))
      >>> w = jax.random.normal(jax.random.key(1), (16, 8))
      >>> new, mask = posttrain.sparsegpt(w, posttrain.input_stats(x), nm=(2, 4), blocksize=8)
      >>> int(mask.sum()), bool((mask.reshape(4, 4, 8).sum(1) == 2).all())
      (64, True)
      >>> err_gpt = posttrain.reconstruction_error(w, new, x)
      >>> err_mag = posttrain.reconstruction_error(w, w * posttrain.magnitude(w, nm=(2, 4)), x)
      >>> bool(err_gpt < err_mag)
      True
    """
    w = _check_kernel(kernel)
    stats = _check_stats(stats, w.shape[0])
    sparsity, pair = check_target(sparsity, nm, w.shape[0])
    _checks.check_positive_int(blocksize, name="blocksize")
    _checks.check_in_range(percdamp, name="percdamp", high=float("inf"))
    if pair is not None and blocksize < w.shape[0] and blocksize % pair[1]:
        raise ValueError(
            f"blocksize must be a multiple of m={pair[1]} (or at least the {w.shape[0]} inputs) "
            f"so that N:M groups do not straddle blocks, got {blocksize}."
        )
    return _sparsegpt(
        w,
        stats.hessian,
        _as_rate(sparsity),
        jnp.asarray(percdamp, jnp.float32),
        nm=pair,
        blocksize=min(blocksize, w.shape[0]),
    )


def reconstruction_error(kernel: ArrayLike, new_kernel: ArrayLike, x: ArrayLike | Stats) -> Array:
    r""":math:`\|X W - X \hat W\|_F^2` on calibration inputs ``x`` ``(n, in)``, or from their
    :class:`Stats`: :math:`\operatorname{tr}(D^\top H D)`, :math:`D = W - \hat W`.

    Returns a float32 scalar array (works under ``jit``; ``float()`` it on the host).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> x, w = jnp.array([[1.0, 2.0]]), jnp.array([[1.0], [1.0]])
      >>> new = jnp.array([[0.0], [1.0]])
      >>> float(posttrain.reconstruction_error(w, new, x))
      1.0
      >>> float(posttrain.reconstruction_error(w, new, posttrain.input_stats(x)))
      1.0
    """
    w = _check_kernel(kernel)
    new = _check_kernel(new_kernel, "new_kernel")
    _checks.check_like(new, w, name="new_kernel", ref_name="kernel")
    if isinstance(x, Stats):
        return _error_from_hessian(w, new, _check_stats(x, w.shape[0]).hessian)
    xs = jnp.asarray(x)
    if xs.ndim < 1 or xs.shape[-1] != w.shape[0]:
        raise ValueError(
            f"x must have shape (n, {w.shape[0]}) (the kernel's inputs last), got {list(xs.shape)}."
        )
    return _error_from_inputs(w, new, xs)


@jax.jit
def _error_from_inputs(w: Array, new: Array, x: Array) -> Array:
    rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    diff = (w - new).astype(jnp.float32)
    return jnp.sum(jnp.square(jnp.matmul(rows, diff, precision=_HIGHEST)))


@jax.jit
def _error_from_hessian(w: Array, new: Array, h: Array) -> Array:
    diff = (w - new).astype(jnp.float32)
    return jnp.sum(diff * jnp.matmul(h, diff, precision=_HIGHEST))
