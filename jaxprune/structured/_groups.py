r"""Channel groups as data: which slices of which leaves belong to each prunable channel.

A :class:`ChannelGroup` of ``size`` channels lists :class:`Slice` s of param / model-state
leaves. A slice ``(path, axis, positions)`` says that channel ``k`` of the group owns the
positions ``positions[k]`` (a tuple of ``r`` ints, the same ``r`` for every ``k``) along ``axis``
of the leaf at ``path``; ``positions=None`` means positions ``i`` with ``i mod size = k`` (a producer's own axis
when the axis has ``size`` entries, an HWC flatten otherwise). Removing channel ``k`` removes
every position it owns, in every slice at once. Positions of an axis that no channel of the
group owns are untouched by it (another group's, or never pruned).

This module holds the structure and the pure functions every other part uses:
:func:`member_values` (the values of one slice, one row per channel, for scores),
:func:`element_mask` (keep vectors to an element mask), :func:`compacted_param_count` and
:func:`slice_tree` (keep vectors to smaller arrays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune._types import Array, Mask, Params, PyTree

__all__ = [
    "ChannelGroup",
    "KeepVectors",
    "Path",
    "Slice",
    "compacted_param_count",
    "element_mask",
    "leaf_dict",
    "leaf_path",
    "member_values",
    "owner",
    "slice_tree",
]

Path = tuple[str, ...]
KeepVectors = dict[str, Array]


class Slice(NamedTuple):
    """Positions of one leaf owned by the channels of a group.

    Attributes:
      path: keys of the leaf, e.g. ``("conv1", "kernel")`` (no trailing ``value``).
      axis: the axis cut (non-negative for traced groups; ``-1`` allowed in hand-made ones).
      positions: ``positions[k]`` = the positions along ``axis`` owned by channel ``k`` (``size`` tuples
        of the same length ``r``), or ``None``: position ``i`` belongs to channel ``i mod size``.
    """

    path: Path
    axis: int
    positions: tuple[tuple[int, ...], ...] | None = None


class ChannelGroup(NamedTuple):
    """Channels that must be removed together, and every slice they own.

    Attributes:
      name: the first producer's layer path joined by ``/`` (``"conv3"``,
        ``"stage2/block0/conv1"``, ``"attn/query"``).
      size: number of channels (prunable units: filters, neurons, heads, kv-groups).
      kernel: path of the first producing kernel (for a one-producer group, *the* kernel).
      members: slices indexed by the channel itself: every producer kernel's output slice, its
        bias, norm parameters and running statistics, elementwise parameters.
      consumers: slices of kernels that read the channels (their input rows / channels).
      bn_scale: path of a batch-norm scale γ on the channels, or ``None``.
      producers: the producer kernels' output slices (a subset of ``members``); empty in
        hand-made groups, where ``kernel`` along its last axis is the producer.
    """

    name: str
    size: int
    kernel: Path
    members: tuple[Slice, ...]
    consumers: tuple[Slice, ...]
    bn_scale: Path | None
    producers: tuple[Slice, ...] = ()


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_path(path: tuple[Any, ...]) -> Path:
    """Keys of a flattened leaf path, without NNX's trailing ``.value``."""
    keys = tuple(_key_name(e) for e in path)
    return keys[:-1] if keys and keys[-1] == "value" and len(keys) > 1 else keys


def leaf_dict(tree: PyTree) -> dict[Path, Any]:
    """``{leaf path: leaf}`` of a pytree (an ``nnx.State`` or nested dicts)."""
    return {leaf_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def get_leaf(leaves: Mapping[Path, Any], path: Path, what: str) -> Any:
    """``leaves[path]``, or a ``ValueError`` showing which leaves there are."""
    if path not in leaves:
        shown = ", ".join("/".join(p) for p in list(leaves)[:6])
        raise ValueError(
            f"{what} has no leaf {'/'.join(path)}; expected the params of the model the groups "
            f"were made from, got leaves {shown}, ..."
        )
    return leaves[path]


def owner(s: Slice, size: int, length: int) -> np.ndarray:
    """``int[length]``: the channel owning each position of the slice's axis, ``-1`` for none.

    Example:
      >>> owner(Slice(("w",), 0, ((2,), (0,))), 2, 4).tolist()
      [1, -1, 0, -1]
      >>> owner(Slice(("w",), 0), 2, 4).tolist()  # i mod size
      [0, 1, 0, 1]
    """
    if s.positions is None:
        return np.arange(length) % size
    out = np.full(length, -1, np.int64)
    for k, owned in enumerate(s.positions):
        out[list(owned)] = k
    return out


def member_values(leaf: ArrayLike, s: Slice, size: int) -> Array:
    r"""The values of one slice, one row per channel: ``float[size, m]`` (works under ``jit``).

    Row ``k`` holds every entry of the leaf whose position along ``s.axis`` channel ``k`` owns
    (all other axes flattened in): for a producer kernel ``(h, w, in, out)`` sliced on axis 3,
    row ``k`` is filter ``k`` (``m = h·w·in``); for a consumer after an HWC flatten it is every
    row ``i`` with ``i mod size = k``. Scores of a slice are reductions of these rows.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.arange(6.0).reshape(2, 3)
      >>> member_values(w, Slice(("w",), 1), 3).tolist()  # column k
      [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
      >>> member_values(w, Slice(("w",), 1, ((0, 2),)), 1).tolist()  # one channel owns 2 columns
      [[0.0, 3.0, 2.0, 5.0]]
    """
    a = jnp.moveaxis(jnp.asarray(leaf), s.axis, 0)
    n = a.shape[0]
    if s.positions is None:
        rows = np.arange(n).reshape(n // size, size).T  # (size, n / size)
    else:
        rows = np.asarray(s.positions, np.int64).reshape(size, -1)
    return a[rows].reshape(size, -1)


def _entries(groups: tuple[ChannelGroup, ...]) -> dict[Path, list[tuple[ChannelGroup, Slice]]]:
    """For every leaf path, the (group, slice) pairs that cut it."""
    out: dict[Path, list[tuple[ChannelGroup, Slice]]] = {}
    for g in groups:
        for s in (*g.members, *g.consumers):
            out.setdefault(s.path, []).append((g, s))
    return out


def _mismatch(got: Mapping[str, Any], ref: Mapping[str, Any], name: str = "keep") -> Any:
    raise ValueError(
        f"{name} must have one entry per group: expected {sorted(ref)}, got {sorted(got)}."
    )


def check_keep(keep: Mapping[str, Any], groups: tuple[ChannelGroup, ...]) -> None:
    """Keep vectors name every group once, with one flag per channel."""
    names = {g.name for g in groups}
    if set(keep) != names:
        _mismatch(keep, dict.fromkeys(names))
    for g in groups:
        shape = tuple(np.shape(keep[g.name]))
        if shape != (g.size,):
            raise ValueError(
                f"keep[{g.name!r}] must have shape ({g.size},) (one flag per channel), got {shape}."
            )


def element_mask(
    params: Params, groups: tuple[ChannelGroup, ...], keep: Mapping[str, ArrayLike]
) -> Mask:
    """The element mask over ``params`` implied by keep vectors (works under ``jit`` and ``vmap``).

    Every position a pruned channel owns is False, in its producers (kernel and bias), its norm
    parameters (a batch norm's scale **and** bias, so the channel outputs exactly 0 in train and
    eval mode) and its consumers' input slices; all other entries are True. Running statistics
    are model state, not params: they are not masked (the zero γ and β make them irrelevant).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.mlp((3,), 2, hidden=(4,))
      >>> params = models.functional(net)[1]
      >>> groups = structured.channel_groups(net)
      >>> m = structured.element_mask(params, groups, {"fc1": jnp.array([1, 0, 1, 1], bool)})
      >>> m["fc1"]["kernel"][...][0], m["out"]["kernel"][...][:, 0]
      (Array([ True, False,  True,  True], dtype=bool), Array([ True, False,  True,  True], dtype=bool))
    """
    check_keep(keep, groups)
    entries = _entries(groups)

    def leaf_mask(path: Any, leaf: Any) -> Array:
        m = jnp.ones(jnp.shape(leaf), bool)
        for g, s in entries.get(leaf_path(path), []):
            axis = s.axis % m.ndim
            own = owner(s, g.size, m.shape[axis])
            flags = jnp.where(own >= 0, jnp.asarray(keep[g.name], bool)[np.maximum(own, 0)], True)
            shape = [1] * m.ndim
            shape[axis] = m.shape[axis]
            m = m & flags.reshape(shape)
        return m

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def kept_counts(keep: Mapping[str, ArrayLike], groups: tuple[ChannelGroup, ...]) -> dict[str, int]:
    """Concrete kept count per group; a group emptied is a ``ValueError``."""
    check_keep(keep, groups)
    counts = {g.name: int(np.sum(np.asarray(keep[g.name]))) for g in groups}
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise ValueError(
            f"keep empties layer(s) {empty}: every group must keep at least one channel (expected "
            ">= 1 kept, got 0); select with min_keep >= 1."
        )
    return counts


def _kept_positions(
    shape: tuple[int, ...], cuts: list[tuple[ChannelGroup, Slice]], keep: Mapping[str, np.ndarray]
) -> dict[int, np.ndarray]:
    """For every cut axis, the positions kept (ascending: the compacted order)."""
    flags: dict[int, np.ndarray] = {}
    for g, s in cuts:
        axis = s.axis % len(shape)
        own = owner(s, g.size, shape[axis])
        kept = np.where(own >= 0, np.asarray(keep[g.name], bool)[np.maximum(own, 0)], True)
        flags[axis] = flags.get(axis, np.ones(shape[axis], bool)) & kept
    return {axis: np.flatnonzero(f) for axis, f in flags.items()}


def compacted_param_count(
    params: Params, groups: tuple[ChannelGroup, ...], keep: Mapping[str, ArrayLike]
) -> int:
    r"""Predicted parameter count of the compacted model, from shapes and kept counts only.

    Each leaf's size with every cut axis shortened by the positions its pruned channels own
    (:math:`r\,(C_g - k_g)` for a group of ``C_g`` channels keeping ``k_g``, each owning ``r``
    positions). A keep vector that empties a group is a ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.mlp((3,), 2, hidden=(4,))
      >>> params = models.functional(net)[1]
      >>> keep = {"fc1": jnp.array([1, 0, 1, 0], bool)}
      >>> structured.compacted_param_count(params, structured.channel_groups(net), keep)  # 3·2+2 + 2·2+2
      14
    """
    kept_counts(keep, groups)
    keep_np = {n: np.asarray(v, bool) for n, v in keep.items()}
    entries = _entries(groups)
    total = 0
    for path, leaf in leaf_dict(params).items():
        shape = list(np.shape(leaf))
        for axis, kept in _kept_positions(tuple(shape), entries.get(path, []), keep_np).items():
            shape[axis] = len(kept)
        total += math.prod(shape)
    return total


def slice_tree(
    tree: PyTree, groups: tuple[ChannelGroup, ...], keep: Mapping[str, ArrayLike]
) -> dict[Path, Array]:
    """``{leaf path: the leaf with only the kept positions}`` (concrete ``keep``, kept order)."""
    entries = _entries(groups)
    keep_np = {n: np.asarray(v, bool) for n, v in keep.items()}
    out = {}
    for path, leaf in leaf_dict(tree).items():
        a = jnp.asarray(leaf)
        for axis, kept in _kept_positions(a.shape, entries.get(path, []), keep_np).items():
            a = jnp.take(a, kept, axis=axis)
        out[path] = a
    return out
