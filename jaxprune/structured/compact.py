"""Compaction of any NNX model: slice every leaf to the kept channels and rebuild the module.

:func:`compact` cuts each param and model-state leaf along the axes its channel groups own
(:func:`jaxprune.structured._groups.slice_tree`), merges the smaller arrays into the model's own
graph (``nnx.split`` / ``nnx.merge``: the same classes, the same forward code), then updates the
width attributes that standard Flax layers keep beside their arrays — ``nnx.Linear`` /
``LinearGeneral`` ``in_features`` / ``out_features``, ``nnx.Conv`` ``in_features`` /
``out_features`` / ``kernel_shape`` and, for a depthwise conv, ``feature_group_count``, norm
layers' ``num_features``, ``nnx.MultiHeadAttention``'s ``num_heads`` / ``num_kv_heads`` /
``qkv_features`` / ``in_features`` / ``out_features``, ``nnx.Embed``'s sizes. The rebuilt model is
then traced once on the example input; a module of your own that keeps a width in an attribute
of its own and reshapes by it fails there with a ``ValueError`` naming it, never silently.

:func:`scratch` is the same architecture drawn afresh (Scratch-E / Scratch-B, Liu et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune._types import Array, Params, PyTree
from jaxprune.structured._groups import (
    ChannelGroup,
    element_mask,
    get_leaf,
    kept_counts,
    leaf_path,
    slice_tree,
)
from jaxprune.structured.trace import channel_groups, eval_function, example_input

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["Compacted", "compact", "scratch"]


class Compacted(NamedTuple):
    """Output of :func:`compact`: the smaller model, its params and its (BN) model state."""

    model: Any
    params: Params
    model_state: PyTree


def _fix_widths(model: Any) -> None:
    """Set the width attributes of standard Flax layers from their (sliced) arrays."""
    from flax import nnx

    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.MultiHeadAttention):
            q, k = np.shape(m.query.kernel), np.shape(m.key.kernel)
            m.in_features, m.num_heads, m.head_dim = int(q[0]), int(q[1]), int(q[2])
            m.qkv_features = int(q[1] * q[2])
            if hasattr(m, "num_kv_heads"):
                m.num_kv_heads = int(k[1])
            m.out_features = int(np.shape(m.out.kernel)[-1])
        elif isinstance(m, nnx.LinearGeneral):
            shape = tuple(int(n) for n in np.shape(m.kernel))
            n_in = len(m.in_features)
            m.in_features, m.out_features = shape[:n_in], shape[n_in:]
        elif isinstance(m, nnx.Linear):
            m.in_features, m.out_features = (int(n) for n in np.shape(m.kernel))
        elif isinstance(m, nnx.Conv):
            shape = tuple(int(n) for n in np.shape(m.kernel))
            groups = int(m.feature_group_count)
            if groups > 1 and groups == m.in_features and shape[-2] == 1:  # depthwise
                multiplier = int(m.out_features) // int(m.in_features)
                m.feature_group_count = shape[-1] // multiplier
                m.in_features = shape[-1] // multiplier
            else:
                m.in_features = shape[-2] * groups
            m.out_features = shape[-1]
            if hasattr(m, "kernel_shape"):
                m.kernel_shape = shape
        elif isinstance(m, nnx.Embed):
            m.num_embeddings, m.features = (int(n) for n in np.shape(m.embedding))
        elif hasattr(m, "num_features") and isinstance(m, nnx.Module):
            for leaf in ("scale", "bias", "mean", "var"):
                value = getattr(m, leaf, None)
                if value is not None and np.ndim(value) == 1:
                    setattr(m, "num_features", int(np.shape(value)[0]))  # noqa: B010
                    break


def compact(
    model: nnx.Module,
    keep: Mapping[str, ArrayLike],
    *,
    params: Params | None = None,
    model_state: PyTree | None = None,
    groups: tuple[ChannelGroup, ...] | None = None,
    x: Any = None,
    check: bool = True,
) -> Compacted:
    """The physically smaller model that keeps only the kept channels (any NNX module).

    Every leaf of ``params`` and ``model_state`` keeps the positions along each axis that no
    pruned channel owns, in their order; the model's own graph is rebuilt with them (see the
    module docstring). Its outputs equal the outputs of ``model`` under
    :func:`~jaxprune.structured.element_mask` (eval mode with the running statistics, and train
    mode too: a masked channel is exactly 0 after its batch norm).

    Args:
      model: the dense model (its structure, and its values where ``params`` / ``model_state``
        are not given).
      keep: concrete keep vectors ``{group name: bool[size]}``; one that empties a group is a
        ``ValueError`` naming it.
      params: the params to slice (default: the model's), e.g. trained ones.
      model_state: the running statistics to slice (default: the model's).
      groups: the groups ``keep`` refers to (default: :func:`channel_groups` of the model).
      x: an example input (see :func:`channel_groups`); needed for models without
        ``input_shape``.
      check: run the compacted and the masked model once on a random input of ``x``'s shape
        (two compilations) and raise a ``ValueError`` unless they agree to 1e-4 of the output
        scale. This catches a module of your own that keeps a width in an attribute; turn it
        off only for models already checked.

    Returns:
      :class:`Compacted` ``(model, params, model_state)``; ``model`` carries the sliced values,
      ``params`` / ``model_state`` are its ``nnx.split``.

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

    x = example_input(model, x)
    groups = channel_groups(model, x) if groups is None else groups
    kept_counts(keep, groups)
    graphdef, full_params, full_rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    params = full_params if params is None else params
    model_state = full_rest if model_state is None else model_state
    sliced = slice_tree(params, groups, keep) | slice_tree(model_state, groups, keep)

    def fill(path: Any, leaf: Any) -> Array:
        return get_leaf(sliced, leaf_path(path), "params/model_state")

    new_params = jax.tree_util.tree_map_with_path(fill, full_params)
    new_rest = jax.tree_util.tree_map_with_path(fill, full_rest)
    small = nnx.merge(graphdef, new_params, new_rest)
    _fix_widths(small)
    if check:
        _check_rebuilt(model, small, x, (params, model_state, groups, keep))
    _, out_params, out_rest = nnx.split(small, nnx.Param, ...)  # type: ignore[misc]
    return Compacted(small, out_params, out_rest)


def _check_rebuilt(model: Any, small: Any, x: Any, pruned: tuple[Any, Any, Any, Any]) -> None:
    """The rebuilt model computes what the masked dense model does, on a random input.

    Catches a module that keeps a width of its own (an attribute it reshapes by): its forward
    either fails or computes something else, and compaction stops with a ``ValueError``.
    """
    from jaxprune import masks

    params, model_state, groups, keep = pruned
    fn, _, _ = eval_function(model)
    small_fn, sp, ss = eval_function(small)
    xr = jax.tree.map(_random_like, x)
    try:
        got = jax.jit(small_fn)(sp, ss, xr)
    except Exception as err:
        raise ValueError(
            f"the compacted {type(model).__name__} does not run ({type(err).__name__}: {err}). "
            "Its standard flax layers got the kept widths, but a module of its own keeps a "
            "width in an attribute (expected only standard flax layers to hold widths); build "
            "the smaller model yourself and fill it with structured.slice_tree's arrays."
        ) from err
    want = jax.jit(fn)(masks.apply(params, element_mask(params, groups, keep)), model_state, xr)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        # float32 sums over fewer (zero-free) terms reassociate: 1e-4 of the output's scale
        tol = 1e-4 * (1.0 + float(np.abs(w).max(initial=0.0)))
        if g.shape != w.shape or float(np.abs(g - w).max(initial=0.0)) > tol:
            err_text = (
                "shape " + str(g.shape)
                if g.shape != w.shape
                else (f"max |difference| {float(np.abs(g - w).max()):.3g}")
            )
            raise ValueError(
                f"the compacted {type(model).__name__} does not compute what the masked model "
                f"does (expected outputs of shape {w.shape} within {tol:.2g}, got {err_text}): "
                "a module of its own keeps a width in an attribute (e.g. reshapes by a number "
                "of heads); build the smaller model yourself and fill it with "
                "structured.slice_tree's arrays."
            )


def _random_like(leaf: Any) -> Array:
    shape, dtype = np.shape(leaf), np.dtype(leaf.dtype)
    if np.issubdtype(dtype, np.floating):
        return jax.random.normal(jax.random.key(0), shape, dtype)
    return jnp.zeros(shape, dtype)


def scratch(
    model: nnx.Module,
    keep: Mapping[str, ArrayLike],
    *,
    seed: int = 0,
    groups: tuple[ChannelGroup, ...] | None = None,
    x: Any = None,
    init: Callable[[tuple[str, ...], jax.Array, tuple[int, ...], Any], Any] | None = None,
) -> nnx.Module:
    """The compacted architecture of :func:`compact`, freshly initialised from ``seed``.

    The baseline of Liu et al. (2019), "Rethinking the Value of Network Pruning": Scratch-E and
    Scratch-B train the pruned architecture from a new random initialisation instead of the
    inherited weights. Every weight is drawn at the *smaller* shapes, so fan-in scaled laws see
    the pruned widths exactly as building that architecture by hand would:

    * a :mod:`jaxprune.models` network through :func:`jaxprune.models.instantiate` (its laws, its
      streams: the same values as the model built by hand at the pruned widths);
    * any other module leaf by leaf, one key per leaf from ``seed``: ``init(path, key, shape,
      dtype)`` when given and not ``None``; else the default of the flax layer that holds it
      (flax layers do not record the initialiser they were built with): LeCun normal kernels
      for ``nnx.Linear`` / ``Conv`` / ``LinearGeneral`` (attention projections) at the pruned
      fan-in, the ``nnx.Embed`` default, zero biases, unit norm scales; a param of your own
      module is drawn from :math:`N(0, \\sigma^2)` with the standard deviation σ of its current
      values. Batch statistics restart at mean 0, variance 1.

    Args:
      model: the dense model (only its structure is used).
      keep: concrete keep vectors ``{group name: bool[size]}``.
      seed: initialisation seed.
      groups, x: as in :func:`compact`.
      init: ``init(path, key, shape, dtype) -> array or None`` for the params of a module that
        is not a :mod:`jaxprune.models` network (``None`` falls back to the defaults above).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import models, structured
      >>> net = models.vgg11((8, 8, 3), 10, width=0.0625)
      >>> keep = {g.name: jnp.arange(g.size) % 2 == 0 for g in structured.channel_groups(net)}
      >>> fresh = structured.scratch(net, keep, seed=1)
      >>> fresh.conv1.kernel.shape == structured.compact(net, keep).model.conv1.kernel.shape
      True
    """
    from flax import nnx

    from jaxprune import models

    small = compact(model, keep, groups=groups, x=x).model
    if isinstance(model, models.MLP | models.ConvNet | models.VGG | models.ResNet):
        graphdef, state = nnx.split(small)
        return models.instantiate(lambda rngs: nnx.merge(graphdef, state, copy=True), seed=seed)
    return _redraw(small, seed, init)


def _flax_default(owner: Any, name: str, key: jax.Array, shape: tuple[int, ...], dtype: Any) -> Any:
    """The draw flax's own layers make by default (they do not record their initialisers)."""
    from flax import nnx

    init = nnx.initializers
    if name == "bias":
        return jnp.zeros(shape, dtype)
    if name == "scale" and len(shape) == 1:
        return jnp.ones(shape, dtype)
    if name == "embedding" and isinstance(owner, nnx.Embed):
        return init.variance_scaling(1.0, "fan_in", "normal", out_axis=0)(key, shape, dtype)
    if name == "kernel" and isinstance(owner, nnx.LinearGeneral):
        n_in = len(owner.in_features)
        flat = (math.prod(shape[:n_in]), math.prod(shape[n_in:]))
        return init.lecun_normal()(key, flat, dtype).reshape(shape)
    if name == "kernel" and isinstance(owner, nnx.Linear | nnx.Conv):
        return init.lecun_normal()(key, shape, dtype)
    return None


def _redraw(model: Any, seed: int, init: Any) -> Any:
    from flax import nnx

    graphdef, state = nnx.split(model)
    key = jax.random.key(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    values = []
    for i, (path, leaf) in enumerate(flat):
        keys = leaf_path(path)
        owner: Any = model
        for k in keys[:-1]:
            owner = owner[int(k)] if k.isdigit() and not hasattr(owner, k) else getattr(owner, k)
        name, variable = keys[-1], getattr(owner, keys[-1], None)
        shape, dtype = tuple(np.shape(leaf)), jnp.asarray(leaf).dtype
        leaf_key = jax.random.fold_in(key, i)
        if isinstance(variable, nnx.BatchStat):
            values.append(jnp.full(shape, 1.0 if name == "var" else 0.0, dtype))
            continue
        if not isinstance(variable, nnx.Param):
            values.append(leaf)
            continue
        drawn = init(keys, leaf_key, shape, dtype) if init is not None else None
        if drawn is None:
            drawn = _flax_default(owner, name, leaf_key, shape, dtype)
        if drawn is None:  # a param of the user's own: its current spread, redrawn
            std = float(jnp.std(jnp.asarray(leaf)))
            drawn = std * jax.random.normal(leaf_key, shape, dtype)
        values.append(jnp.asarray(drawn, dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, values))
