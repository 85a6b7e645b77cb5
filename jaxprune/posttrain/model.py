r"""Post-training pruning of a whole transformer, block by block (SparseGPT / Wanda protocol).

A model is pruned through three methods it provides (the protocol of
:class:`jaxprune.models.Transformer` and :class:`jaxprune.models.ViT`): ``embed_inputs(x) -> h``,
``blocks`` (a sequence of modules ``h -> h``) and ``readout(h) -> logits``. :func:`prune` runs
the calibration inputs through the embedding, then for each block in order:

1. one forward of the block on ``h`` (in batches of ``batch_size``) records the input of every
   ``nnx.Linear`` in it and sums its :class:`~jaxprune.posttrain.layer.Stats`;
2. every such kernel is pruned by the method (``magnitude`` per output, ``wanda``,
   ``sparsegpt``) and written into a copy of the model;
3. ``h = pruned_block(h)``: later blocks are calibrated on the outputs of the pruned ones.

Embeddings, positions, norms and the readout are not pruned; the input model is not modified.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxprune import _checks, masks
from jaxprune._types import Array, Mask, Params
from jaxprune.posttrain import layer

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["METHODS", "Pruned", "calibration_windows", "prune"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_PROTOCOL = ("embed_inputs", "blocks", "readout")


class Pruned(NamedTuple):
    """What :func:`prune` returns.

    Attributes:
      model: the pruned copy of the model.
      params: ``models.functional(model)[1]`` of the pruned copy.
      mask: bool pytree like ``params``; False exactly at the pruned kernel entries.
      layers: per pruned kernel (its ``keystr`` path in ``params``):
        ``{"sparsity": fraction of entries pruned, "error": ‖XW − XŴ‖²_F on its calibration
        inputs}``.
      seconds: wall-clock time of the pruning.
    """

    model: nnx.Module
    params: Params
    mask: Mask
    layers: dict[str, dict[str, float]]
    seconds: float


def calibration_windows(
    tokens: ArrayLike, n: int, *, seed: int, context: int | None = None
) -> Array:
    """``n`` token windows drawn without replacement (seeded) from a split's ``x``.

    ``tokens`` is a split's windows ``(m, T)`` — or a 1-D token stream, then cut into
    non-overlapping windows of ``context`` tokens first (a partial last window is dropped).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import posttrain
      >>> x = jnp.arange(40).reshape(10, 4)
      >>> w = posttrain.calibration_windows(x, 3, seed=0)
      >>> w.shape, bool((w[:, 1:] - w[:, :-1] == 1).all())
      ((3, 4), True)
      >>> posttrain.calibration_windows(jnp.arange(10), 2, seed=0, context=4).shape
      (2, 4)
    """
    _checks.check_positive_int(n, name="n")
    arr = jnp.asarray(tokens)
    if arr.ndim == 1:
        if context is None:
            raise ValueError(
                f"tokens is a 1-D stream of {arr.shape[0]} tokens; give context= (the window "
                "length) to cut it into windows, or pass a split's x of shape (m, T)."
            )
        _checks.check_positive_int(context, name="context")
        if arr.shape[0] < context:
            raise ValueError(
                f"tokens holds {arr.shape[0]} tokens, shorter than one window of context={context}."
            )
        whole = arr.shape[0] // context
        arr = arr[: whole * context].reshape(whole, context)
    elif arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(
            f"tokens must be a split's windows (m, T) or a 1-D token stream, got shape "
            f"{list(arr.shape)}."
        )
    if n > arr.shape[0]:
        raise ValueError(f"n={n} windows asked for, but tokens has only {arr.shape[0]}.")
    picks = np.random.default_rng(seed).choice(arr.shape[0], n, replace=False)
    return arr[np.sort(picks)]


def _check_protocol(model: Any) -> None:
    from flax import nnx

    missing = [name for name in _PROTOCOL if not hasattr(model, name)]
    if not isinstance(model, nnx.Module) or missing:
        raise ValueError(
            f"model must be an NNX module with embed_inputs(x) -> h, blocks and readout(h) -> "
            f"logits (like models.build('transformer', ...)); {type(model).__name__} lacks "
            f"{', '.join(missing) or 'nnx.Module'}."
        )


def _check_calibration(calibration: Any) -> Array:
    x = jnp.asarray(calibration)
    if x.ndim < 2 or x.shape[0] == 0 or x.size == 0:
        raise ValueError(
            f"calibration must be a batch of model inputs (n, *input_shape) with n >= 1 and at "
            f"least one full window (token models: (n, T); cut a stream with "
            f"calibration_windows(tokens, n, seed=, context=T)), got shape {list(x.shape)}."
        )
    return x


def _linears(block: Any) -> list[tuple[tuple[Any, ...], Any]]:
    """The ``nnx.Linear`` layers of a block, by path inside it (graph order)."""
    from flax import nnx

    return [(path, node) for path, node in nnx.iter_graph(block) if isinstance(node, nnx.Linear)]


def _child(node: Any, key: Any) -> Any:
    return node[key] if isinstance(key, int) else getattr(node, key)


def _replace(root: Any, path: tuple[Any, ...], new: Any) -> None:
    parent = root
    for key in path[:-1]:
        parent = _child(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


class _Recorder:
    """Stands in for a Linear while a *merged copy* of the block is traced: records the Stats of
    its input's rows, the padding examples (``valid`` False) left out."""

    def __init__(self, inner: Any, sink: dict, path: tuple[Any, ...], valid: Array) -> None:
        self.inner, self.sink, self.path, self.valid = inner, sink, path, valid

    def __call__(self, x: Array) -> Array:
        if x.ndim < 2 or x.shape[0] != self.valid.shape[0]:
            raise ValueError(
                f"the input of {'.'.join(map(str, self.path))} has shape {list(x.shape)}; prune "
                f"needs every Linear in a block to see the batch ({self.valid.shape[0]}) first."
            )
        keep = self.valid.reshape((-1,) + (1,) * (x.ndim - 1))
        stats = layer._input_stats(jnp.where(keep, x, 0))
        rows_per_example = stats.count // x.shape[0]
        count = jnp.sum(self.valid, dtype=jnp.int32) * rows_per_example
        stats = stats._replace(count=count)
        if self.path in self.sink:  # a layer called more than once: all its inputs count
            stats = layer._add_stats(self.sink[self.path], stats)
        self.sink[self.path] = stats
        return self.inner(x)


def _merge(graphdef: Any, state: Any) -> Any:
    from flax import nnx

    return nnx.merge(graphdef, state)


@functools.partial(jax.jit, static_argnums=0)
def _recorded(graphdef: Any, state: Any, h: Array, valid: Array) -> tuple[Array, dict]:
    """``block(h)`` and ``{path: Stats}`` of every Linear's input, the block rebuilt from
    ``(graphdef, state)``: a fresh copy inside the trace, so the block itself stays as it is.
    ``graphdef`` is static, so blocks of one architecture share the compiled program (also
    used for the pruned block's forward, one program less to compile)."""
    copy = _merge(graphdef, state)
    sink: dict[tuple[Any, ...], layer.Stats] = {}
    for path, node in _linears(copy):
        _replace(copy, path, _Recorder(node, sink, path, valid))
    return copy(h), sink


@functools.partial(jax.jit, static_argnums=0)
def _embed_inputs(graphdef: Any, state: Any, x: Array) -> Array:
    return _merge(graphdef, state).embed_inputs(x)


def _batches(x: Array, batch_size: int) -> tuple[Array, Array]:
    """``x`` as ``(batches, size, ...)`` with ``valid`` ``(batches, size)``: equal batches (one
    compiled program), the last padded with copies of the first examples."""
    n = x.shape[0]
    size = min(batch_size, n)
    pad = -n % size
    padded = jnp.concatenate([x, x[jnp.arange(pad) % n]]) if pad else x
    valid = jnp.arange(n + pad) < n
    return padded.reshape(-1, size, *x.shape[1:]), valid.reshape(-1, size)


def _unbatch(parts: list[Array], n: int) -> Array:
    return jnp.concatenate(parts)[:n]


@functools.partial(jax.jit, static_argnames=("method", "nm", "blocksize"))
def _prune_layer(
    kernel: Array,
    stats: layer.Stats,
    sparsity: Array,
    percdamp: Array,
    *,
    method: str,
    nm: tuple[int, int] | None,
    blocksize: int,
) -> tuple[Array, ...]:
    """One kernel pruned by ``method`` (one compiled program per shape), with what prune reports:
    ``(new, mask, all finite, fraction pruned, tr(DᵀHD))``."""
    target: dict[str, Any] = {"sparsity": sparsity} if nm is None else {"nm": nm}
    if method == "magnitude":
        mask = layer.magnitude(kernel, scope="output", **target)
        new = jnp.where(mask, kernel, 0)
    elif method == "wanda":
        mask = layer.wanda(kernel, stats, **target)
        new = jnp.where(mask, kernel, 0)
    else:
        new, mask = layer.sparsegpt(kernel, stats, **target, blocksize=blocksize, percdamp=percdamp)
    error = layer._error_from_hessian(kernel, new, stats.hessian)
    pruned = 1.0 - jnp.mean(mask.astype(jnp.float32))
    return new, mask, jnp.isfinite(new).all(), pruned, error


def _graph_path(keypath: Sequence[Any]) -> tuple[Any, ...]:
    """A params leaf's module path, e.g. ``('block0', 'attn', 'query', 'kernel')``."""
    out = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            out.append(k.key)
        elif isinstance(k, jax.tree_util.SequenceKey):
            out.append(k.idx)
    return tuple(out)


def prune(
    model: nnx.Module,
    calibration: ArrayLike,
    *,
    method: str,
    sparsity: float | None = None,
    nm: tuple[int, int] | str | None = None,
    batch_size: int = 32,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool = False,
) -> Pruned:
    r"""Prune every ``nnx.Linear`` inside a model's blocks from calibration inputs (module docs).

    Args:
      model: an NNX module with ``embed_inputs``, ``blocks`` and ``readout``; not modified.
      calibration: model inputs ``(n, *input_shape)``, e.g. :func:`calibration_windows`.
      method: ``"magnitude"`` (per output, :math:`|W|`), ``"wanda"``
        (:math:`|W_{ij}|\,\|X_i\|_2` per output) or ``"sparsegpt"`` (mask and OBS update).
      sparsity: fraction in [0, 1) of each kernel's entries to prune, or
      nm: ``(n, m)`` / ``"n:m"``: keep ``n`` of every ``m`` consecutive inputs of each output.
      batch_size: calibration examples per forward pass.
      blocksize, percdamp: SparseGPT's column block and dampening (see
        :func:`~jaxprune.posttrain.layer.sparsegpt`).
      progress: show a tqdm bar over the blocks.

    Returns:
      A :class:`Pruned`: the pruned copy, its params, the mask, per-layer sparsity and
      reconstruction error :math:`\|XW - X\hat W\|_F^2` (on the inputs the layer saw), seconds.

    Example:
      >>> import jax
      >>> from jaxprune import models, posttrain
      >>> lm = models.build("transformer", input_shape=(8,), num_classes=16, dim=16, depth=2,
      ...                   heads=2, seed=0)
      >>> tokens = jax.random.randint(jax.random.key(0), (4, 8), 0, 16)
      >>> out = posttrain.prune(lm, tokens, method="wanda", nm="2:4")
      >>> sorted({round(v["sparsity"], 2) for v in out.layers.values()}), len(out.layers)
      ([0.5], 12)
    """
    start = time.perf_counter()
    from flax import nnx

    from jaxprune import models

    _check_protocol(model)
    _checks.check_choice(method, METHODS, name="method")
    sparsity, pair = layer.check_target(sparsity, nm)
    _checks.check_positive_int(batch_size, name="batch_size")
    _checks.check_positive_int(blocksize, name="blocksize")
    _checks.check_in_range(percdamp, name="percdamp", high=float("inf"))
    x = _check_calibration(calibration)

    copy = nnx.clone(model)
    blocks = tuple(getattr(copy, "blocks"))  # noqa: B009 - a protocol attribute
    where = {id(node): path for path, node in nnx.iter_graph(copy)}
    plan = []
    for i, block in enumerate(blocks):
        if id(block) not in where:
            raise ValueError(
                f"model.blocks[{i}] ({type(block).__name__}) is not a submodule of the model; "
                "blocks must return the model's own block modules."
            )
        found = _linears(block)
        if not found:
            raise ValueError(
                f"model.blocks[{i}] ({type(block).__name__}) holds no nnx.Linear: nothing to prune."
            )
        for path, lin in found:
            name = ".".join(map(str, where[id(block)] + path))
            layer.check_target(sparsity, nm, lin.in_features, layer=name)
            if (
                method == "sparsegpt"
                and pair
                and blocksize < lin.in_features
                and blocksize % pair[1]
            ):
                raise ValueError(
                    f"blocksize must be a multiple of m={pair[1]} (or at least the "
                    f"{lin.in_features} inputs of {name}), got {blocksize}."
                )
        plan.append(found)

    results: dict[tuple[Any, ...], tuple[Array, float, float]] = {}
    n = x.shape[0]
    graphdef, state = nnx.split(copy)
    xs, valid = _batches(x, batch_size)
    h = _unbatch([_embed_inputs(graphdef, state, xb) for xb in xs], n)
    steps: Any = zip(blocks, plan, strict=True)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(blocks), desc=f"{method} blocks")
    for block, found in steps:
        graphdef, state = nnx.split(block)
        hs, _ = _batches(h, batch_size)
        stats: dict[tuple[Any, ...], layer.Stats] = {}
        for hb, vb in zip(hs, valid, strict=True):
            _, batch = _recorded(graphdef, state, hb, vb)
            stats = {p: layer.add_stats(stats[p], s) if p in stats else s for p, s in batch.items()}
        prefix = where[id(block)]
        for path, lin in found:
            kernel = lin.kernel[...]
            new, mask, finite, sparse, error = _prune_layer(
                kernel,
                stats[path],
                jnp.float32(0.0 if sparsity is None else sparsity),
                jnp.float32(percdamp),
                method=method,
                nm=pair,
                blocksize=min(blocksize, kernel.shape[0]),
            )
            if not bool(finite):
                raise ValueError(
                    f"{method} gave non-finite weights for {'.'.join(map(str, prefix + path))}: "
                    f"its calibration Hessian is too ill-conditioned; raise percdamp (got "
                    f"{percdamp})."
                )
            lin.kernel[...] = new
            results[(*prefix, *path, "kernel")] = (mask, float(sparse), float(error))
        graphdef, state = nnx.split(block)
        h = _unbatch(
            [_recorded(graphdef, state, hb, vb)[0] for hb, vb in zip(hs, valid, strict=True)], n
        )

    _, params, _ = models.functional(copy)
    mask_tree, layers = _mask_and_report(params, results)
    jax.block_until_ready(params)
    return Pruned(copy, params, mask_tree, layers, time.perf_counter() - start)


def _mask_and_report(
    params: Params, results: dict[tuple[Any, ...], tuple[Array, float, float]]
) -> tuple[Mask, dict[str, dict[str, float]]]:
    layers: dict[str, dict[str, float]] = {}

    def leaf_mask(keypath: Any, ones: Array) -> Array:
        found = results.get(_graph_path(keypath))
        if found is None:
            return ones
        layers[jax.tree_util.keystr(keypath)] = {"sparsity": found[1], "error": found[2]}
        return found[0]

    mask = jax.tree_util.tree_map_with_path(leaf_mask, masks.ones(params))
    missing = set(results) - {
        _graph_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if missing:  # pragma: no cover - a params layout this module does not know
        raise ValueError(f"pruned kernels not found in params: {sorted(map(str, missing))}.")
    return mask, layers
