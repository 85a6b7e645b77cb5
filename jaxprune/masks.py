"""Masks: bool pytrees that mirror the params (True = kept), and what to measure on them.

A mask has exactly the params' tree structure; every leaf is a bool array of its leaf's shape.
Leaves that may not be pruned (biases, norm scales by default) get all-True masks, never ``None``,
so masks stack, vmap and compare like any other pytree.

Which leaves are *prunable* is a static choice, given as a :data:`~jaxprune._types.Prunable` spec:

* ``None`` — the default rule: a leaf is prunable iff ``leaf.ndim >= 2`` (dense and conv kernels;
  biases, BatchNorm/LayerNorm scales and offsets are 1-D and are left alone);
* a regex, or a list of regexes, searched in the leaf's path string (``jax.tree_util.keystr``,
  e.g. ``"['Dense_0']['kernel']"`` or, for Flax NNX state, ``"['fc1']['kernel'].value"``);
* a callable ``rule(path, leaf) -> bool``, e.g. :func:`rule` with include / exclude patterns;
* a pytree of Python bools with the params' structure.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import masks
  >>> params = {"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
  >>> m = masks.ones(params)
  >>> m = {"fc": {"kernel": m["fc"]["kernel"].at[0].set(False), "bias": m["fc"]["bias"]}}
  >>> float(masks.density(m)), float(masks.density(masks.prunable_leaves(m)))
  (0.75, 0.6666666865348816)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks
from jaxprune._types import Array, Mask, Params, Prunable, PrunableRule, PyTree

__all__ = [
    "apply",
    "count",
    "density",
    "hamming",
    "is_prunable",
    "jaccard",
    "layer_density",
    "ones",
    "overlap",
    "pack",
    "prunable_leaves",
    "rule",
    "sparsity",
    "summary",
    "unpack",
    "validate",
]


def _default_rule(path: str, leaf: Any) -> bool:
    del path
    return np.ndim(leaf) >= 2


def rule(
    include: str | Sequence[str] | None = None, exclude: str | Sequence[str] | None = None
) -> PrunableRule:
    """A prunability rule from regexes over leaf paths.

    A leaf is prunable iff it matches ``include`` (default: ``ndim >= 2``) and matches no pattern
    of ``exclude``. Patterns are searched (``re.search``) in ``jax.tree_util.keystr(path)``.

    Example — the papers' "never prune the output layer":
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks
      >>> p = {"fc1": {"kernel": jnp.ones((4, 3))}, "out": {"kernel": jnp.ones((3, 2))}}
      >>> masks.is_prunable(p, masks.rule(exclude="out"))
      {'fc1': {'kernel': True}, 'out': {'kernel': False}}
    """
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
    inc_re = [re.compile(p) for p in inc]
    exc_re = [re.compile(p) for p in exc]

    def prunable(path: str, leaf: Any) -> bool:
        chosen = any(r.search(path) for r in inc_re) if inc_re else _default_rule(path, leaf)
        return chosen and not any(r.search(path) for r in exc_re)

    return prunable


def _as_rule(prunable: Prunable) -> PrunableRule | None:
    if prunable is None:
        return _default_rule
    if isinstance(prunable, str):
        return rule(include=prunable)
    if (
        isinstance(prunable, Sequence)
        and len(prunable) > 0
        and all(isinstance(p, str) for p in prunable)
    ):
        return rule(include=list(prunable))
    if callable(prunable) and not isinstance(prunable, (dict, list, tuple)):
        return prunable
    return None


def is_prunable(params: Params, prunable: Prunable = None) -> PyTree:
    """The static pytree of Python bools saying which leaves of ``params`` may be pruned.

    Args:
      params: the params pytree (or a mask / scores tree of the same structure).
      prunable: a :data:`~jaxprune._types.Prunable` spec (see the module docstring).

    Returns:
      A pytree with ``params``' structure and Python ``bool`` leaves.
    """
    as_rule = _as_rule(prunable)
    if as_rule is None:  # a pytree of bools
        _checks.check_same_structure(prunable, params, name="prunable")
        for path, leaf in _checks.leaves_with_paths(prunable):
            if not isinstance(leaf, (bool, np.bool_)):
                raise ValueError(
                    f"prunable{path} must be a Python bool in a pytree of bools, got {leaf!r}."
                )
        return jax.tree.map(bool, prunable)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(as_rule(jax.tree_util.keystr(path), leaf)), params
    )


def prunable_leaves(tree: PyTree, prunable: Prunable = None) -> dict[str, Any]:
    """``{path: leaf}`` for the prunable leaves only — feed it to :func:`density` and friends.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks
      >>> m = masks.ones({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
      >>> list(masks.prunable_leaves(m))
      ["['w']"]
    """
    flags = is_prunable(tree, prunable)
    flat_flags = jax.tree.leaves(flags)
    return {
        path: leaf
        for (path, leaf), keep in zip(_checks.leaves_with_paths(tree), flat_flags, strict=True)
        if keep
    }


def ones(params: Params) -> Mask:
    """The dense mask: all True, with ``params``' structure and shapes (works on traced params)."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), dtype=bool), params)


def validate(mask: Mask, params: Params) -> None:
    """Raise ``ValueError`` unless ``mask`` mirrors ``params`` with bool leaves (names the path)."""
    _checks.check_mask(mask, params)


def apply(params: Params, mask: Mask) -> Params:
    r"""Zero the pruned weights: :math:`\theta \odot M`, computed as ``where(M, θ, 0)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks
      >>> masks.apply({"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([True, False])})["w"]
      Array([1., 0.], dtype=float32)
    """
    _checks.check_mask(mask, params)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def count(mask: PyTree) -> Array:
    """Number of kept (True) entries over all leaves of ``mask``, as an int32 array."""
    leaves = jax.tree.leaves(mask)
    if not leaves:
        return jnp.zeros((), jnp.int32)
    return sum((jnp.sum(m, dtype=jnp.int32) for m in leaves), start=jnp.zeros((), jnp.int32))


def _size(tree: PyTree) -> int:
    return int(sum(np.size(m) for m in jax.tree.leaves(tree)))


def density(mask: PyTree) -> Array:
    r"""Fraction of kept entries over all leaves: :math:`\sum_\ell |M_\ell|_1 / \sum_\ell n_\ell`.

    Pass :func:`prunable_leaves` of the mask for the density of the prunable weights only.
    """
    n = _size(mask)
    if n == 0:
        raise ValueError("mask has no entries; density is undefined for an empty tree.")
    return count(mask).astype(jnp.float32) / n


def sparsity(mask: PyTree) -> Array:
    """``1 - density(mask)``: the fraction of pruned entries."""
    return 1.0 - density(mask)


def layer_density(mask: PyTree) -> dict[str, Array]:
    """``{path: density of that leaf}`` for every leaf of ``mask`` (per-layer density)."""
    return {path: jnp.mean(m.astype(jnp.float32)) for path, m in _checks.leaves_with_paths(mask)}


def summary(mask: Mask, prunable: Prunable = None) -> dict[str, Any]:
    """Host-side report: total and prunable density, kept counts and per-layer density (floats).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks
      >>> s = masks.summary({"w": jnp.array([[True, False]]), "b": jnp.array([True])})
      >>> s["density"], s["prunable_density"], s["kept"], s["layers"]["['w']"]
      (0.6666666865348816, 0.5, 2, 0.5)
    """
    chosen = prunable_leaves(mask, prunable)
    return {
        "density": float(density(mask)),
        "prunable_density": float(density(chosen)) if chosen else 1.0,
        "kept": int(count(mask)),
        "size": _size(mask),
        "prunable_kept": int(count(chosen)),
        "prunable_size": _size(chosen),
        "layers": {k: float(v) for k, v in layer_density(mask).items()},
    }


def pack(mask: Mask) -> PyTree:
    """Pack each leaf to 1 bit per entry (``uint8`` arrays of ``ceil(n / 8)`` bytes, row-major).

    Keep the mask (or params) around as the ``like`` template of :func:`unpack`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import masks
      >>> m = {"w": jnp.arange(10).reshape(2, 5) % 3 == 0}
      >>> bool((masks.unpack(masks.pack(m), m)["w"] == m["w"]).all())
      True
    """
    for path, leaf in _checks.leaves_with_paths(mask):
        if np.dtype(getattr(leaf, "dtype", np.float32)) != np.bool_:
            raise ValueError(
                f"mask{path} must be bool to pack, got {getattr(leaf, 'dtype', leaf)}."
            )
    return jax.tree.map(lambda m: jnp.packbits(jnp.ravel(m)), mask)


def unpack(packed: PyTree, like: PyTree) -> Mask:
    """Inverse of :func:`pack`: bool arrays of the shapes of ``like``'s leaves."""
    _checks.check_same_structure(packed, like, name="packed", ref_name="like")

    def one(bits: Array, ref: Any) -> Array:
        shape = np.shape(ref)
        n = int(np.prod(shape))
        if np.shape(bits) != ((n + 7) // 8,):
            raise ValueError(
                f"packed leaf has shape {list(np.shape(bits))}, expected [{(n + 7) // 8}] for a "
                f"leaf of shape {list(shape)}."
            )
        return jnp.unpackbits(bits, count=n).astype(bool).reshape(shape)

    return jax.tree.map(one, packed, like)


def _pair_counts(a: PyTree, b: PyTree) -> tuple[Array, Array, Array, int]:
    _checks.check_like(b, a, name="b", ref_name="a")
    both = count(jax.tree.map(jnp.logical_and, a, b))
    either = count(jax.tree.map(jnp.logical_or, a, b))
    differ = count(jax.tree.map(jnp.logical_xor, a, b))
    return both, either, differ, _size(a)


def _ratio(num: Array, den: Array, empty: float) -> Array:
    den_f = den.astype(jnp.float32)
    safe = jnp.where(den_f > 0, den_f, 1.0)
    return jnp.where(den_f > 0, num.astype(jnp.float32) / safe, empty)


def overlap(a: Mask, b: Mask) -> Array:
    r"""Overlap coefficient :math:`|a \wedge b| / \min(|a|, |b|)` (1 when both are empty).

    1 means the smaller mask's kept weights are all kept by the other. Restrict to prunable
    leaves with :func:`prunable_leaves` to leave out the always-kept biases.
    """
    both, _, _, _ = _pair_counts(a, b)
    return _ratio(both, jnp.minimum(count(a), count(b)), 1.0)


def jaccard(a: Mask, b: Mask) -> Array:
    r"""Jaccard index :math:`|a \wedge b| / |a \vee b|` (1 when both are empty)."""
    both, either, _, _ = _pair_counts(a, b)
    return _ratio(both, either, 1.0)


def hamming(a: Mask, b: Mask) -> Array:
    r"""Normalised Hamming distance :math:`|a \oplus b| / n` (the Early-Bird mask distance)."""
    _, _, differ, n = _pair_counts(a, b)
    return differ.astype(jnp.float32) / max(n, 1)
