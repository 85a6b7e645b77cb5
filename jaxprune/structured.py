r"""Structured pruning that really shrinks the model: channel groups, scores, selection, compaction.

A **channel group** is everything that belongs to one prunable unit (a hidden neuron or a conv
filter / channel ``k`` of layer ℓ) and goes away with it:

* the **producer**: the output slice ``k`` of layer ℓ's kernel (axis -1 of a dense ``(in, out)``
  or conv ``(h, w, in, out)`` kernel) and of its bias, if any;
* its **batch norm**: entry ``k`` of the BN scale γ and bias β (params) and of the running mean
  and variance (model state);
* every **consumer**: the input slice of the next kernel — input channel ``k`` of the next conv,
  row ``k`` of a dense layer after a global average pool, or, after a flatten of an
  ``(H, W, C)`` map, the rows ``i`` with ``i mod C = k`` (HWC flatten order: ``i = (h W + w) C + c``).

The classifier's output (``out``) is never pruned. For the CIFAR ResNets only each basic block's
``conv1`` is a group (``conv1`` output, ``bn1``, ``conv2`` input): option-A shortcuts add the
block input to ``bn2(conv2(·))`` channel by channel, which ties the stem's and every ``conv2``'s
outputs into one residual stream per stage (see :mod:`jaxprune.models._cifar`); Li et al. (2017)
prune only the first conv of each block for the same reason.

**Scores** (one per channel, higher = keep): the kernel norm of the filter (Li et al. 2017), via
:func:`jaxprune.select.group_scores`,

.. math:: s_k^{L1} = \sum_{i} |W_{\dots, i, k}|, \qquad s_k^{L2} = \sqrt{\textstyle\sum_i W_{\dots,i,k}^2},

or the batch-norm scale :math:`s_k = |\gamma_k|` (Network Slimming, Liu et al. 2017), trained
under the L1 penalty :math:`\lambda \sum |\gamma|` whose subgradient :func:`slimming_penalty`
adds, :math:`g_\gamma \leftarrow g_\gamma + \lambda\,\mathrm{sign}(\gamma)`.

**Selection** (:func:`select_channels`) keeps channels layerwise (a rate per group) or against one
global ranking (a global percentile: ``rate=0.7`` prunes the 70% lowest scores of the whole net),
always keeping ``min_keep`` per group, via :func:`jaxprune.select.prune`. The result is a *keep
vector* per group, ``{group name: bool[size]}``; :func:`element_mask` turns it into the ordinary
element mask over params (producer slice, BN γ **and** β — so a masked channel outputs exactly 0
— and consumer slices), for masked training with :mod:`jaxprune.train`.

**Masked vs compacted.** A masked net computes with the same dense shapes: its FLOPs are only
*theoretically* lower, it runs as fast as the dense net (RESEARCH §5: mock sparsity gives no
speedup). :func:`compact` slices the kept channels out and builds the physically smaller model of
the same class (MLP, ConvNet, VGG, ResNet), whose outputs equal the masked model's.

This module imports jax and numpy only; :func:`channel_groups` and :func:`compact` import flax and
:mod:`jaxprune.models`, :func:`slimming_penalty` optax, when they are called.

Example — L1-norm filter pruning of half the hidden neurons of an MLP, then compaction:
  >>> import jax.numpy as jnp
  >>> from jaxprune import masks, models, structured
  >>> net = models.mlp((4,), 3, hidden=(8, 6))
  >>> apply_fn, params, _ = models.functional(net)
  >>> groups = structured.channel_groups(net)
  >>> [g.name for g in groups]
  ['fc1', 'fc2']
  >>> keep = structured.select_channels(structured.channel_scores(params, groups), 0.5)
  >>> [int(k.sum()) for k in keep.values()]
  [4, 3]
  >>> small = structured.compact(net, keep)
  >>> small.model.fc1.kernel.shape, small.model.fc2.kernel.shape
  ((4, 4), (4, 3))
  >>> x = jnp.linspace(-1, 1, 8).reshape(2, 4)
  >>> masked = apply_fn(masks.apply(params, structured.element_mask(params, groups, keep)), x)
  >>> bool(jnp.allclose(small.model(x), masked, atol=1e-6))
  True
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune import _checks, select
from jaxprune._types import Array, Key, Mask, Params, PyTree

if TYPE_CHECKING:  # flax and optax only for annotations: the module must import without them
    import optax
    from flax import nnx

__all__ = [
    "CRITERIA",
    "ChannelGroup",
    "Compacted",
    "Slice",
    "channel_groups",
    "channel_scores",
    "compact",
    "compacted_param_count",
    "element_mask",
    "scratch",
    "select_channels",
    "slimming_penalty",
]

CRITERIA = ("l1", "l2", "bn")
"""Channel score criteria: kernel L1 / L2 norm of the filter (Li et al.), BN scale |γ| (Liu et al.)."""

Path = tuple[str, ...]
KeepVectors = dict[str, Array]


class Slice(NamedTuple):
    """One leaf sliced by a group: ``path`` (keys, e.g. ``("conv1", "kernel")``) along ``axis``.

    Entry ``i`` along ``axis`` belongs to channel ``i mod size`` of the group (``size`` = the
    group's size): for producers and BN leaves ``i`` is the channel itself; after a flatten of
    an ``(H, W, C)`` map it is the HWC order.
    """

    path: Path
    axis: int


class ChannelGroup(NamedTuple):
    """A prunable unit group (see the module docstring).

    Attributes:
      name: the producing layer's path joined by ``/`` (``"conv3"``, ``"stage2/block0/conv1"``).
      size: number of channels (the producer's output width).
      kernel: path of the producing kernel; its output axis is -1.
      members: leaves indexed by the channel directly: producer kernel (axis -1) and bias, BN
        scale, bias, running mean and variance (the last two live in the model state).
      consumers: leaves whose ``axis`` holds the channel as ``i mod size`` (next layer's input).
      bn_scale: path of the BN scale γ, or ``None`` (no batch norm).
    """

    name: str
    size: int
    kernel: Path
    members: tuple[Slice, ...]
    consumers: tuple[Slice, ...]
    bn_scale: Path | None


class Compacted(NamedTuple):
    """Output of :func:`compact`: the smaller model, its params and its (BN) model state."""

    model: Any
    params: Params
    model_state: PyTree


# ---------------------------------------------------------------------------------------------
# Paths and groups


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_path(path: tuple[Any, ...]) -> Path:
    """Keys of a flattened leaf path, without NNX's trailing ``.value``."""
    keys = tuple(_key_name(e) for e in path)
    return keys[:-1] if keys and keys[-1] == "value" and len(keys) > 1 else keys


def _dense_group(name: str, consumer: Path, bn: str | None = None) -> ChannelGroup:
    return _group(name, (name,), (bn,) if bn else None, consumer, axis_in=0, has_bias=True)


def _group(
    name: str,
    layer: Path,
    bn: Path | None,
    consumer: Path,
    *,
    axis_in: int,
    has_bias: bool,
    size: int = 0,
) -> ChannelGroup:
    members = [Slice((*layer, "kernel"), -1)]
    if has_bias:
        members.append(Slice((*layer, "bias"), 0))
    if bn:
        members += [Slice((*bn, leaf), 0) for leaf in ("scale", "bias", "mean", "var")]
    return ChannelGroup(
        name=name,
        size=size,
        kernel=(*layer, "kernel"),
        members=tuple(members),
        consumers=(Slice(consumer, axis_in),),
        bn_scale=(*bn, "scale") if bn else None,
    )


def channel_groups(model: nnx.Module) -> tuple[ChannelGroup, ...]:
    """The channel groups of a :mod:`jaxprune.models` network, in forward order.

    Supported: :class:`~jaxprune.models.MLP` (``fc*``), :class:`~jaxprune.models.ConvNet`
    (``conv*`` then ``fc*``; the last conv's consumer is ``fc1`` after an HWC flatten),
    :class:`~jaxprune.models.VGG` (``conv*`` with ``bn*``, and ``fc1`` with ``bn_fc1``; the last
    conv's consumer follows the global average pool) and :class:`~jaxprune.models.ResNet`
    (``stage*/block*/conv1`` with ``bn1``, consumed by ``conv2``). ``out`` is never a group.

    Args:
      model: a built model (only its structure and shapes are read).

    Returns:
      A tuple of :class:`ChannelGroup`; paths address the model's params and model state.

    Example:
      >>> from jaxprune import models, structured
      >>> g = structured.channel_groups(models.conv2((8, 8, 1), 10, width=0.125))
      >>> [(x.name, x.size, x.consumers[0].path) for x in g]  # doctest: +NORMALIZE_WHITESPACE
      [('conv1', 8, ('conv2', 'kernel')), ('conv2', 8, ('fc1', 'kernel')),
       ('fc1', 32, ('fc2', 'kernel')), ('fc2', 32, ('out', 'kernel'))]
    """
    from jaxprune import models

    groups: list[ChannelGroup] = []
    if isinstance(model, models.MLP | models.ConvNet):
        convs = [s for s in getattr(model, "steps", ()) if s != models.POOL]
        dense = list(model.dense_names)
        first_dense = dense[0] if dense else "out"
        for a, b in zip(convs, [*convs[1:], first_dense][: len(convs)], strict=True):
            axis = 2 if b.startswith("conv") else 0
            groups.append(_group(a, (a,), None, (b, "kernel"), axis_in=axis, has_bias=True))
        for a, b in zip(dense, [*dense[1:], "out"], strict=True):
            groups.append(_dense_group(a, (b, "kernel")))
    elif isinstance(model, models.VGG):
        convs = [s for s in model.steps if isinstance(s, str)]
        head = "fc1" if model.hidden is not None else "out"
        for a, b in zip(convs, [*convs[1:], head], strict=True):
            axis = 2 if b.startswith("conv") else 0
            bn = (f"bn{a[4:]}",)
            groups.append(_group(a, (a,), bn, (b, "kernel"), axis_in=axis, has_bias=False))
        if model.hidden is not None:
            groups.append(_dense_group("fc1", ("out", "kernel"), bn="bn_fc1"))
    elif isinstance(model, models.ResNet):
        for s in (1, 2, 3):
            stage = getattr(model, f"stage{s}")
            for b in range(stage.n_blocks):
                blk = (f"stage{s}", f"block{b}")
                groups.append(
                    _group(
                        f"stage{s}/block{b}/conv1",
                        (*blk, "conv1"),
                        (*blk, "bn1"),
                        (*blk, "conv2", "kernel"),
                        axis_in=2,
                        has_bias=False,
                    )
                )
    else:
        raise ValueError(
            f"model must be a jaxprune.models MLP, ConvNet, VGG or ResNet, got "
            f"{type(model).__name__}; describe its groups with ChannelGroup yourself."
        )
    shapes = {
        _leaf_path(p): np.shape(leaf)
        for p, leaf in jax.tree_util.tree_flatten_with_path(_params_of(model))[0]
    }
    return tuple(g._replace(size=int(shapes[g.kernel][-1])) for g in groups)


def _params_of(model: Any) -> Params:
    from flax import nnx

    return nnx.state(model, nnx.Param)


def _leaf_dict(tree: PyTree) -> dict[Path, Any]:
    return {_leaf_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _get(tree_leaves: Mapping[Path, Any], path: Path, what: str) -> Any:
    if path not in tree_leaves:
        shown = ", ".join("/".join(p) for p in list(tree_leaves)[:6])
        raise ValueError(
            f"{what} has no leaf {'/'.join(path)}; expected the params of the model the groups "
            f"were made from, got leaves {shown}, ..."
        )
    return tree_leaves[path]


# ---------------------------------------------------------------------------------------------
# Scores, penalty, selection


def channel_scores(
    params: Params, groups: tuple[ChannelGroup, ...], criterion: str = "l1"
) -> dict[str, Array]:
    r"""One score per channel of every group, higher = keep.

    ``"l1"`` / ``"l2"``: the norm of each output filter of the producing kernel over all its
    other axes, :math:`\sum |W_{\cdot,k}|` or :math:`\|W_{\cdot,k}\|_2` (Li et al. 2017;
    :func:`jaxprune.select.group_scores`). ``"bn"``: :math:`|\gamma_k|` of the group's batch norm
    (Network Slimming); a group without BN is a ``ValueError``. Works under ``jit``.

    Args:
      params: the model's params pytree.
      groups: from :func:`channel_groups`.
      criterion: one of :data:`CRITERIA`.

    Returns:
      ``{group name: float32[size]}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import structured
      >>> g = structured.ChannelGroup("fc1", 2, ("fc1", "kernel"), (), (), None)
      >>> structured.channel_scores({"fc1": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]])}}, (g,))
      {'fc1': Array([4. , 2.5], dtype=float32)}
    """
    _checks.check_choice(criterion, CRITERIA, name="criterion")
    leaves = _leaf_dict(params)
    if criterion == "bn":
        missing = [g.name for g in groups if g.bn_scale is None]
        if missing:
            raise ValueError(
                f"criterion='bn' needs a batch norm after every group, but {missing} have none; "
                "use criterion='l1' or 'l2' for models without batch norm."
            )
        return {
            g.name: jnp.abs(jnp.asarray(_get(leaves, g.bn_scale, "params")))  # type: ignore[arg-type]
            for g in groups
        }
    kernels = {g.name: jnp.asarray(_get(leaves, g.kernel, "params")) for g in groups}
    return dict(select.group_scores(kernels, norm=criterion, axis=-1))


class SlimmingState(NamedTuple):
    """State of :func:`slimming_penalty`: none."""


def slimming_penalty(
    strength: float = 1e-4, *, pattern: str = r"\['scale'\]"
) -> optax.GradientTransformation:
    r"""Network Slimming's sparsity subgradient on BN scales, to chain before the optimizer.

    .. math:: g_\gamma \leftarrow g_\gamma + s\,\mathrm{sign}(\gamma)

    the subgradient of :math:`s \sum |\gamma|` (``s = 1e-4`` for VGG-19 in Liu et al. 2017,
    ``1e-5`` for ResNet). Applied to every leaf whose ``jax.tree_util.keystr`` path matches
    ``pattern`` (default: every batch-norm ``scale``); other gradients pass unchanged.
    ``update`` needs ``params`` (the sign is the weight's, not the gradient's).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import structured
      >>> opt = optax.chain(structured.slimming_penalty(0.1), optax.sgd(1.0))
      >>> params = {"bn": {"scale": jnp.array([2.0, -3.0, 0.0])}, "w": jnp.array([1.0])}
      >>> grads = {"bn": {"scale": jnp.zeros(3)}, "w": jnp.array([0.5])}
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates["bn"]["scale"], updates["w"]
      (Array([-0.1,  0.1, -0. ], dtype=float32), Array([-0.5], dtype=float32))
    """
    import optax

    if not (isinstance(strength, int | float) and math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}.")
    regex = re.compile(pattern)

    def init(params: Params) -> SlimmingState:
        del params
        return SlimmingState()

    def update(
        updates: PyTree, state: SlimmingState, params: Params | None = None
    ) -> tuple[PyTree, SlimmingState]:
        if params is None:
            raise ValueError(
                "slimming_penalty needs params (sign of γ): call update(grads, state, params)."
            )

        def add(path: Any, g: Array, p: Array) -> Array:
            if regex.search(jax.tree_util.keystr(path)):
                return g + jnp.asarray(strength, g.dtype) * jnp.sign(p).astype(g.dtype)
            return g

        return jax.tree_util.tree_map_with_path(add, updates, params), state

    return optax.GradientTransformation(init, update)


def select_channels(
    scores: Mapping[str, ArrayLike],
    rate: ArrayLike | Mapping[str, ArrayLike],
    *,
    scope: select.Scope = "layerwise",
    min_keep: int = 1,
    keep: Mapping[str, ArrayLike] | None = None,
    key: Key | None = None,
) -> KeepVectors:
    r"""Keep vectors: prune a fraction ``rate`` of the remaining channels, lowest scores first.

    ``scope="layerwise"``: per group, keep :math:`\max(r - \lfloor p r + \frac12\rfloor,
    \text{min\_keep})` of its ``r`` remaining channels (``rate`` a scalar or ``{name: rate}``;
    a rate of 0 leaves a group alone). ``"global"``: one ranking over all groups (``rate`` a
    scalar: 0.7 = Network Slimming's 70% percentile), each group's best ``min_keep`` reserved
    first so that no layer is emptied. Exact counts, ties by lower index (or ``key``); built on
    :func:`jaxprune.select.prune`, so it runs under ``jit`` with ``rate`` traced.

    Args:
      scores: ``{group name: float[size]}``, e.g. :func:`channel_scores`.
      rate: fraction in [0, 1) of the remaining channels to prune.
      scope: ``"layerwise"`` or ``"global"``.
      min_keep: channels always kept per group (default 1; must be >= 1).
      keep: current keep vectors (default: all kept); pruned channels stay pruned.
      key: optional PRNG key to break ties at random.

    Returns:
      ``{group name: bool[size]}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import structured
      >>> s = {"a": jnp.array([5.0, 6.0, 7.0]), "b": jnp.array([0.1, 0.2])}
      >>> k = structured.select_channels(s, 0.4, scope="global")  # 2 of 5 go; b keeps its best
      >>> k["a"], k["b"]
      (Array([False,  True,  True], dtype=bool), Array([False,  True], dtype=bool))
    """
    if not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(
            f"min_keep must be an int >= 1 (a layer is never emptied), got {min_keep!r}."
        )
    arrays: dict[str, Array] = {n: jnp.asarray(s) for n, s in scores.items()}
    for n, s in arrays.items():
        if s.ndim != 1:
            raise ValueError(
                f"scores[{n!r}] must be 1-D (one score per channel), got shape {s.shape}."
            )
    current = (
        {n: jnp.ones(s.shape, bool) for n, s in arrays.items()}
        if keep is None
        else {n: jnp.asarray(keep[n], bool) for n in arrays}
        if set(keep) == set(arrays)
        else _mismatch(keep, arrays)
    )
    rates = dict(rate) if isinstance(rate, Mapping) else rate
    if isinstance(rates, dict) and set(rates) != set(arrays):
        _mismatch(rates, arrays, name="rate")
    flags = dict.fromkeys(arrays, True)
    out = select.prune(
        arrays, current, rates, scope=scope, prunable=flags, min_keep=min_keep, key=key
    )
    return dict(out)


def _mismatch(got: Mapping[str, Any], ref: Mapping[str, Any], name: str = "keep") -> Any:
    raise ValueError(
        f"{name} must have one entry per group: expected {sorted(ref)}, got {sorted(got)}."
    )


# ---------------------------------------------------------------------------------------------
# Masks, counts, compaction


def _entries(groups: tuple[ChannelGroup, ...]) -> dict[Path, list[tuple[ChannelGroup, Slice]]]:
    """For every leaf path, the (group, slice) pairs that cut it."""
    out: dict[Path, list[tuple[ChannelGroup, Slice]]] = {}
    for g in groups:
        for s in (*g.members, *g.consumers):
            out.setdefault(s.path, []).append((g, s))
    return out


def _check_keep(keep: Mapping[str, Any], groups: tuple[ChannelGroup, ...]) -> None:
    names = {g.name for g in groups}
    if set(keep) != names:
        _mismatch(keep, {n: None for n in names})
    for g in groups:
        shape = tuple(np.shape(keep[g.name]))
        if shape != (g.size,):
            raise ValueError(
                f"keep[{g.name!r}] must have shape ({g.size},) (one flag per channel), got {shape}."
            )


def element_mask(
    params: Params, groups: tuple[ChannelGroup, ...], keep: Mapping[str, ArrayLike]
) -> Mask:
    """The element mask over ``params`` implied by keep vectors (works under ``jit``).

    For every pruned channel: the producer's output slice (kernel and bias), the BN scale **and**
    bias (so the channel outputs exactly 0 in train and eval mode) and every consumer's input
    slice are False; all other entries are True. Running statistics are model state, not
    params: they are not masked (the zero γ and β make them irrelevant).

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
    _check_keep(keep, groups)
    entries = _entries(groups)

    def leaf_mask(path: Any, leaf: Any) -> Array:
        m = jnp.ones(jnp.shape(leaf), bool)
        for g, s in entries.get(_leaf_path(path), []):
            n = m.shape[s.axis]
            flags = jnp.asarray(keep[g.name], bool)[jnp.arange(n) % g.size]
            shape = [1] * m.ndim
            shape[s.axis] = n
            m = m & flags.reshape(shape)
        return m

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def _kept_counts(keep: Mapping[str, ArrayLike], groups: tuple[ChannelGroup, ...]) -> dict[str, int]:
    _check_keep(keep, groups)
    counts = {g.name: int(np.sum(np.asarray(keep[g.name]))) for g in groups}
    empty = [n for n, c in counts.items() if c == 0]
    if empty:
        raise ValueError(
            f"keep empties layer(s) {empty}: every group must keep at least one channel (expected "
            ">= 1 kept, got 0); select with min_keep >= 1."
        )
    return counts


def _new_shape(
    shape: tuple[int, ...], cuts: list[tuple[ChannelGroup, Slice]], counts: Mapping[str, int]
) -> tuple[int, ...]:
    new = list(shape)
    for g, s in cuts:
        new[s.axis] = shape[s.axis] // g.size * counts[g.name]
    return tuple(new)


def compacted_param_count(
    params: Params, groups: tuple[ChannelGroup, ...], keep: Mapping[str, ArrayLike]
) -> int:
    r"""Predicted parameter count of the compacted model, from shapes and kept counts only.

    Each leaf's size with every cut axis of length ``n`` replaced by :math:`n / C_g \cdot k_g`
    (``C_g`` the group's size, ``k_g`` its kept count). A keep vector that empties a group is a
    ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.mlp((3,), 2, hidden=(4,))
      >>> params = models.functional(net)[1]
      >>> keep = {"fc1": jnp.array([1, 0, 1, 0], bool)}
      >>> structured.compacted_param_count(params, structured.channel_groups(net), keep)  # 3·2+2 + 2·2+2
      14
    """
    counts = _kept_counts(keep, groups)
    entries = _entries(groups)
    total = 0
    for path, leaf in _leaf_dict(params).items():
        total += math.prod(_new_shape(tuple(np.shape(leaf)), entries.get(path, []), counts))
    return total


def _slice_tree(
    tree: PyTree, groups: tuple[ChannelGroup, ...], keep: Mapping[str, Any]
) -> dict[Path, Array]:
    entries = _entries(groups)
    out = {}
    for path, leaf in _leaf_dict(tree).items():
        a = jnp.asarray(leaf)
        for g, s in entries.get(path, []):
            flags = np.asarray(keep[g.name], bool)
            n = a.shape[s.axis]
            a = jnp.take(a, np.flatnonzero(flags[np.arange(n) % g.size]), axis=s.axis)
        out[path] = a
    return out


def compact(
    model: nnx.Module,
    keep: Mapping[str, ArrayLike],
    *,
    params: Params | None = None,
    model_state: PyTree | None = None,
) -> Compacted:
    """Build the physically smaller model of the same class that keeps only the kept channels.

    Every leaf of ``params`` and ``model_state`` is sliced along the axes its groups cut (see
    :func:`channel_groups`); the smaller module is built with the kept widths (``MLP`` hidden,
    ``ConvNet`` / ``VGG`` plan and hidden, ``ResNet`` per-block ``conv1`` widths) and filled with
    the slices. Its outputs equal the outputs of ``model`` under :func:`element_mask` (eval mode
    with the running statistics, and train mode too: a masked channel is exactly 0).

    Args:
      model: the dense model (its structure, and its values where ``params`` /
        ``model_state`` are not given).
      keep: concrete keep vectors ``{group name: bool[size]}``; one that empties a group is a
        ``ValueError`` naming it.
      params: the params to slice (default: the model's), e.g. trained ones.
      model_state: the BN running statistics to slice (default: the model's).

    Returns:
      :class:`Compacted` ``(model, params, model_state)``; ``model`` carries the sliced values,
      ``params`` / ``model_state`` are its ``nnx.split`` (for :func:`jaxprune.models.stateful`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.vgg11((8, 8, 3), 10, width=0.0625)
      >>> keep = {g.name: jnp.arange(g.size) % 2 == 0 for g in structured.channel_groups(net)}
      >>> small = structured.compact(net, keep)
      >>> [small.model.conv1.kernel.shape, small.model.out.kernel.shape]
      [(3, 3, 3, 2), (16, 10)]
    """
    from flax import nnx

    groups = channel_groups(model)
    counts = _kept_counts(keep, groups)
    keep_np = {n: np.asarray(v, bool) for n, v in keep.items()}
    _, full_params, full_rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    params = full_params if params is None else params
    model_state = full_rest if model_state is None else model_state
    sliced = _slice_tree(params, groups, keep_np) | _slice_tree(model_state, groups, keep_np)
    abstract = nnx.eval_shape(lambda: _smaller(model, counts))
    graphdef, abs_params, abs_rest = nnx.split(abstract, nnx.Param, ...)  # type: ignore[misc]

    def fill(path: Any, leaf: Any) -> Array:
        p = _leaf_path(path)
        value = _get(sliced, p, "params/model_state")
        if tuple(value.shape) != tuple(leaf.shape):  # pragma: no cover - a bug in the groups
            raise ValueError(
                f"compacted {'/'.join(p)}: expected shape {leaf.shape}, got {value.shape}."
            )
        return value.astype(leaf.dtype)

    new_params = jax.tree_util.tree_map_with_path(fill, abs_params)
    new_rest = jax.tree_util.tree_map_with_path(fill, abs_rest)
    small = nnx.merge(graphdef, new_params, new_rest)
    _, out_params, out_rest = nnx.split(small, nnx.Param, ...)  # type: ignore[misc]
    return Compacted(small, out_params, out_rest)


def scratch(model: nnx.Module, keep: Mapping[str, ArrayLike], *, seed: int = 0) -> nnx.Module:
    """The compacted architecture of :func:`compact`, freshly initialised from ``seed``.

    The baseline of Liu et al. (2019), "Rethinking the Value of Network Pruning": Scratch-E and
    Scratch-B train the pruned architecture from a new random initialisation instead of the
    inherited weights. Every weight is drawn from its layer's own law at the *smaller* shapes
    (:func:`jaxprune.models.instantiate`), so fan-in scaled initialisations see the pruned
    widths, exactly as building that architecture by hand would; BN scales start at their
    model's constant and running statistics at 0 / 1.

    Args:
      model: the dense model (only its structure is used).
      keep: concrete keep vectors ``{group name: bool[size]}`` (see :func:`select_channels`).
      seed: initialisation seed.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.vgg11((8, 8, 3), 10, width=0.0625)
      >>> keep = {g.name: jnp.arange(g.size) % 2 == 0 for g in structured.channel_groups(net)}
      >>> fresh = structured.scratch(net, keep, seed=1)
      >>> fresh.conv1.kernel.shape == structured.compact(net, keep).model.conv1.kernel.shape
      True
    """
    from jaxprune import models

    counts = _kept_counts(keep, channel_groups(model))
    return models.instantiate(lambda rngs: _smaller(model, counts, rngs), seed=seed)


def _conv_grad(conv: Any) -> str:
    from jaxprune.models import _conv

    return "im2col" if conv.conv_general_dilated is _conv.conv_im2col_grad else "xla"


def _smaller(model: Any, counts: Mapping[str, int], rngs: Any = None) -> Any:
    """The model's class rebuilt with the kept widths (under ``nnx.eval_shape`` or ``instantiate``)."""
    from flax import nnx

    from jaxprune import models
    from jaxprune.models import _cifar

    rngs = nnx.Rngs(0) if rngs is None else rngs
    classes = int(model.out.kernel.shape[-1])
    if isinstance(model, models.MLP):
        hidden = [counts[n] for n in model.dense_names]
        return models.MLP(model.input_shape, hidden, classes, rngs=rngs)
    if isinstance(model, models.ConvNet):
        plan = [s if s == models.POOL else counts[s] for s in model.steps]
        dense = [counts[n] for n in model.dense_names]
        grad = _conv_grad(getattr(model, model.steps[0])) if model.steps else "auto"
        return models.ConvNet(model.input_shape, plan, dense, classes, rngs=rngs, conv_grad=grad)
    if isinstance(model, models.VGG):
        vgg_plan = [models.POOL if isinstance(s, tuple) else counts[s] for s in model.steps]
        width = None if model.hidden is None else counts["fc1"]
        grad = _conv_grad(getattr(model, "conv1"))  # noqa: B009 - set by setattr: mypy can't see it
        return models.VGG(
            model.input_shape, vgg_plan, classes, hidden=width, rngs=rngs, conv_grad=grad
        )
    # ResNet: the stage widths stay (tied residual stream); each block's conv1 / bn1 / conv2 is
    # swapped for a narrower one — the same class, the same forward code.
    grad = _conv_grad(model.stem.conv)
    widths = [int(getattr(model, f"stage{s}").block0.conv2.kernel.shape[-1]) for s in (1, 2, 3)]
    n = model.stage1.n_blocks
    small = models.ResNet(model.input_shape, n, widths, classes, rngs=rngs, conv_grad=grad)
    conv_fn = _cifar._conv_fn(grad)
    for s in (1, 2, 3):
        for b in range(n):
            blk = getattr(getattr(small, f"stage{s}"), f"block{b}")
            k = counts[f"stage{s}/block{b}/conv1"]
            c_in, c_out = int(blk.conv1.kernel.shape[2]), int(blk.conv2.kernel.shape[-1])
            blk.conv1 = _cifar._conv3x3(c_in, k, blk.stride, conv_fn, rngs)
            blk.bn1 = _cifar._batch_norm(k, 1.0, rngs)
            blk.conv2 = _cifar._conv3x3(k, c_out, 1, conv_fn, rngs)
    return small
