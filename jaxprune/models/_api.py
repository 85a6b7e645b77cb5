"""Model factories by name, and the bridge from an NNX module to a pure ``apply_fn(params, x)``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _checks
from jaxprune._types import Array, Params
from jaxprune.models import _cifar, _conv, _init, _nets, _transformer

__all__ = [
    "REGISTRY",
    "VGG_PLANS",
    "StatefulApplyFn",
    "build",
    "conv2",
    "conv4",
    "conv6",
    "functional",
    "instantiate",
    "lenet300_100",
    "mlp",
    "names",
    "param_count",
    "resnet20",
    "resnet56",
    "stateful",
    "transformer",
    "vgg11",
    "vgg16",
    "vgg16_a",
    "vgg19",
    "vit",
]

ApplyFn = Callable[[Params, Array], Array]
M = TypeVar("M", bound=nnx.Module)


# jax's glorot_normal draws N(0, 1) truncated to [-2, 2] and divides by this, the std of that
# truncated law, so that the kernel's std is exactly sqrt(2 / (fan_in + fan_out)).
_TRUNCATED_STD = 0.87962566103423978


@functools.partial(jax.jit, static_argnums=1)
def _standard_draws(key: jax.Array, n: int) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)


def instantiate(make: Callable[[nnx.Rngs], M], seed: int = 0) -> M:
    """``make(rngs)`` with every weight drawn from the law of its layer, one RNG call per law kind.

    The module is traced abstractly (no compute); then every leaf gets its layer's law:

    * a ``kernel`` whose layer records no :class:`~jaxprune.models.Law` is
      Glorot normal: cut from one stream of standard normal draws truncated to ±2 and scaled by
      its layer's Glorot std — the law of ``nnx.initializers.glorot_normal()``, which the
      lottery-ticket modules use when constructed directly;
    * a leaf whose layer records a :class:`~jaxprune.models.Law` (``kernel_init``,
      ``bias_init``, ``scale_init``; see :func:`~jaxprune.models.with_laws`) follows that
      law, ``normal`` and ``uniform`` laws cut from their own stream of untruncated normal or
      uniform draws (keys ``fold_in(key(seed), 1)`` and ``2``);
    * other ``bias`` leaves are zeros; a ``BatchNorm``'s, ``LayerNorm``'s or ``RMSNorm``'s
      ``scale`` is ones (Flax's default), batch statistics ``mean`` / ``var`` start at 0 / 1;
      an ``nnx.Embed``'s ``embedding`` without a recorded law is N(0, 0.02²)
      (``EMBEDDING_LAW``, the normal stream); a bare ``nnx.Param`` attribute ``name`` needs a
      law recorded on its owner as ``{name}_init``.

    Values depend only on ``seed`` and the architecture. At most three RNG calls instead of one
    per layer, because XLA on a CPU compiles every RNG call anew (~0.3 s a layer); stream lengths
    are rounded up to a power of two so that models share the compiled draws. Any other leaf is a
    ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune.models import ConvNet, instantiate
      >>> net = instantiate(lambda rngs: ConvNet((8, 8, 1), (4, "pool"), (16,), 10, rngs=rngs), seed=1)
      >>> net(jnp.zeros((2, 8, 8, 1))).shape, float(jnp.abs(net.conv1.bias[...]).max())
      ((2, 10), 0.0)
    """
    module = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract = nnx.split(module)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    laws = [_law_of(module, path) for path, _ in flat]
    sizes = [math.prod(leaf.shape) for _, leaf in flat]
    totals = {
        kind: sum(n for n, law in zip(sizes, laws, strict=True) if _stream_of(law) == kind)
        for kind in ("glorot", "normal", "uniform")
    }
    key = jax.random.key(seed)
    streams = {}
    for i, (kind, total) in enumerate(totals.items()):
        if total:  # the Glorot stream (i = 0) keeps key(seed), as before the other laws existed
            streams[kind] = np.asarray(
                _draws(kind, jax.random.fold_in(key, i) if i else key, total)
            )
    offsets = dict.fromkeys(streams, 0)
    values = []
    for (_, leaf), law, n in zip(flat, laws, sizes, strict=True):
        shape, stream = tuple(leaf.shape), _stream_of(law)
        if stream is None:  # a constant
            constant = law.gain if isinstance(law, _init.Law) else float(law)
            values.append(jnp.full(shape, constant, leaf.dtype))
            continue
        if stream == "glorot":
            fan_in, fan_out = _init.fans(shape)
            scale = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD
        else:
            scale = law.scale(shape)  # type: ignore[union-attr]
        draws = streams[stream][offsets[stream] : offsets[stream] + n]
        offsets[stream] += n
        values.append(jnp.asarray((draws * scale).reshape(shape), leaf.dtype))
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, values))


def _stream_of(law: _init.Law | str | float) -> str | None:
    """Which stream a law draws from: ``"glorot"``, ``"normal"``, ``"uniform"``; None: a constant."""
    if law == "glorot":
        return "glorot"
    if isinstance(law, _init.Law) and law.kind != "constant":
        return law.kind
    return None


def _draws(kind: str, key: jax.Array, total: int) -> jax.Array:
    """At least ``total`` draws of a stream; lengths are powers of two so that models share programs."""
    n = 1 << max(12, (total - 1).bit_length())
    return _standard_draws(key, n) if kind == "glorot" else _free_draws(key, kind, n)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _free_draws(key: jax.Array, kind: str, n: int) -> jax.Array:
    if kind == "normal":
        return jax.random.normal(key, (n,), jnp.float32)
    return jax.random.uniform(key, (n,), jnp.float32, -1.0, 1.0)


def _law_of(module: nnx.Module, path: tuple[Any, ...]) -> _init.Law | str | float:
    """The law of one state leaf: a :class:`Law`, ``"glorot"`` or a constant."""
    owner: Any = module
    for entry in path[:-2]:  # the last two entries are the leaf's name and ``.value``
        key = getattr(entry, "key", getattr(entry, "name", entry))
        owner = owner[key] if isinstance(key, int) else getattr(owner, key)
    name = str(getattr(path[-2], "key", ""))
    law = getattr(owner, f"{name}_init", None)  # recorded by with_laws (or a bare param's owner)
    if isinstance(law, _init.Law):
        return law
    defaults: dict[str, _init.Law | str | float] = {"kernel": "glorot", "bias": 0.0}
    if isinstance(owner, nnx.BatchNorm):
        defaults |= {"scale": 1.0, "mean": 0.0, "var": 1.0}
    elif isinstance(owner, nnx.LayerNorm | nnx.RMSNorm):
        defaults |= {"scale": 1.0}
    elif isinstance(owner, nnx.Embed):
        defaults = {"embedding": _init.EMBEDDING_LAW}
    if name not in defaults:
        raise ValueError(
            f"make() built a module with param {jax.tree_util.keystr(path)}; instantiate "
            "initialises only params named 'kernel' (Glorot normal) or 'bias' (zeros), params "
            "whose layer records a jaxprune.models.Law (jaxprune.models.with_laws), "
            "BatchNorm's 'scale' (ones) and batch statistics 'mean' (zeros) and 'var' (ones), "
            "LayerNorm / RMSNorm 'scale' (ones) and nnx.Embed's 'embedding' (N(0, 0.02²))."
        )
    return defaults[name]


def _scaled(widths: Sequence[int], width: float) -> tuple[int, ...]:
    """Multiply every layer width by ``width`` (at least 1 unit)."""
    return tuple(max(1, round(w * width)) for w in widths)


def _scaled_plan(plan: Sequence[int | str], width: float) -> tuple[int | str, ...]:
    """:func:`_scaled` for a conv plan; pool markers pass through."""
    return tuple(p if isinstance(p, str) else _scaled((p,), width)[0] for p in plan)


def _check_build_args(input_shape: Sequence[int], num_classes: int, width: float) -> None:
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}.")
    if not isinstance(num_classes, int | np.integer) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if not (isinstance(width, int | float) and math.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number (1.0 = paper width), got {width!r}.")


def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (32,),
    seed: int = 0,
) -> _nets.MLP:
    """A small MLP for tests and quick runs: flatten → ``hidden`` (ReLU) → ``out``.

    Example:
      >>> net = mlp((8, 8, 1), 10, hidden=(16, 8))
      >>> [tuple(layer.kernel.shape) for layer in (net.fc1, net.fc2, net.out)]
      [(64, 16), (16, 8), (8, 10)]
    """
    _check_build_args(input_shape, num_classes, 1.0)
    if not all(isinstance(h, int | np.integer) and h > 0 for h in hidden):
        raise ValueError(f"hidden must be a sequence of positive ints, got {tuple(hidden)!r}.")
    hidden = tuple(int(h) for h in hidden)
    return instantiate(lambda rngs: _nets.MLP(input_shape, hidden, num_classes, rngs=rngs), seed)


def lenet300_100(
    input_shape: Sequence[int], num_classes: int, *, seed: int = 0, width: float = 1.0
) -> _nets.MLP:
    """LeNet-300-100: flatten → 300 → 100 → ``num_classes`` (ReLU; ``width`` scales 300 and 100).

    Example:
      >>> from flax import nnx
      >>> net = lenet300_100((28, 28, 1), 10)
      >>> param_count(nnx.state(net, nnx.Param))  # 784·300+300 + 300·100+100 + 100·10+10
      266610
    """
    _check_build_args(input_shape, num_classes, width)
    hidden = _scaled((300, 100), width)
    return instantiate(lambda rngs: _nets.MLP(input_shape, hidden, num_classes, rngs=rngs), seed)


def _conv_factory(plan: tuple[int | str, ...], label: str) -> Callable[..., _nets.ConvNet]:
    def factory(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        seed: int = 0,
        width: float = 1.0,
        conv_grad: str = "auto",
    ) -> _nets.ConvNet:
        _check_build_args(input_shape, num_classes, width)
        _conv.resolve_conv_grad(conv_grad)  # a bad name fails here, not inside a trace
        convs, dense = _scaled_plan(plan, width), _scaled((256, 256), width)
        return instantiate(
            lambda rngs: _nets.ConvNet(
                input_shape, convs, dense, num_classes, rngs=rngs, conv_grad=conv_grad
            ),
            seed,
        )

    convs = ", ".join(str(p) for p in plan)
    factory.__name__ = factory.__qualname__ = label
    factory.__doc__ = f"""{label.capitalize()}: 3×3 convs [{convs}] → 256 → 256 → ``num_classes``.

    ``width`` multiplies every conv and hidden dense width (at least 1): paper width is 1.0; narrow
    nets (e.g. 0.25) keep CPU runs short. Pools are 2×2, stride 2. ``conv_grad`` (``"auto"``,
    ``"xla"``, ``"im2col"``) picks how kernel gradients are computed; see :class:`ConvNet`.

    Example:
      >>> import jax.numpy as jnp
      >>> net = {label}((8, 8, 1), 10, width=0.125)
      >>> net(jnp.zeros((2, 8, 8, 1))).shape, net.conv1.kernel.shape
      ((2, 10), (3, 3, 1, 8))
    """
    return factory


conv2 = _conv_factory((64, 64, _nets.POOL), "conv2")
conv4 = _conv_factory((64, 64, _nets.POOL, 128, 128, _nets.POOL), "conv4")
conv6 = _conv_factory((64, 64, _nets.POOL, 128, 128, _nets.POOL, 256, 256, _nets.POOL), "conv6")

_P = _nets.POOL
VGG_PLANS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, _P, 128, _P, 256, 256, _P, 512, 512, _P, 512, 512),
    "vgg16": (64, 64, _P, 128, 128, _P, 256, 256, 256, _P, 512, 512, 512, _P, 512, 512, 512),
    "vgg19": (64, 64, _P, 128, 128, _P, 256, 256, 256, 256, _P, 512, 512, 512, 512, _P,
              512, 512, 512, 512),
    "vgg16_a": (32, 64, _P, 128, 128, _P, 256, 256, 256, _P, 256, 256, 256, _P, 256, 256, 256),
}  # fmt: skip
"""Conv plans of the CIFAR VGGs (``"pool"`` = VGG's ``'M'``): Network-Slimming's ``defaultcfg`` and
Li et al.'s pruned VGG-16 "A" (``vggprune.py`` of the Rethinking code)."""


def _vgg_factory(label: str, classifier: str, paper: str) -> Callable[..., _cifar.VGG]:
    plan = VGG_PLANS[label]

    def factory(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        seed: int = 0,
        width: float = 1.0,
        conv_grad: str = "auto",
    ) -> _cifar.VGG:
        _check_build_args(input_shape, num_classes, width)
        _conv.resolve_conv_grad(conv_grad)
        convs = _scaled_plan(plan, width)
        hidden = _scaled((512,), width)[0] if classifier == "mlp" else None
        return instantiate(
            lambda rngs: _cifar.VGG(
                input_shape, convs, num_classes, hidden=hidden, rngs=rngs, conv_grad=conv_grad
            ),
            seed,
        )

    convs = ", ".join("M" if p == _P else str(p) for p in plan)
    c1, c2 = [round(int(p) * 0.125) for p in plan if p != _P][:2]  # the example's conv2 fans
    head = (
        "``Linear(C, 512·width)`` → BN → ReLU → ``out``"
        if classifier == "mlp"
        else "``out`` (one linear layer)"
    )
    factory.__name__ = factory.__qualname__ = label
    factory.__doc__ = f"""{paper}: 3×3 conv → BN → ReLU [{convs}] → global avg pool → {head}.

    ``M`` is a 2×2 max-pool; the classifier is the one of {paper}'s reference code (see
    :mod:`jaxprune.models._cifar` for it, the init and small inputs). ``width`` multiplies every
    conv and hidden width (at least 1). ``conv_grad`` as for :func:`conv2`.

    Example:
      >>> net = {label}((8, 8, 1), 10, width=0.125)
      >>> net.conv2.kernel.shape[2:], float(net.bn1.scale[0]), net.out.kernel.shape[1]
      (({c1}, {c2}), 0.5, 10)
    """
    return factory


vgg11 = _vgg_factory("vgg11", "linear", "VGG-11 (Network Slimming)")
vgg16 = _vgg_factory("vgg16", "mlp", "VGG-16 (Li et al. 2017)")
vgg19 = _vgg_factory("vgg19", "linear", "VGG-19 (Network Slimming, Liu et al. 2017)")
vgg16_a = _vgg_factory("vgg16_a", "mlp", "VGG-16-A (Li et al. 2017's pruned VGG-16)")


def _resnet_factory(depth: int) -> Callable[..., _cifar.ResNet]:
    n = (depth - 2) // 6

    def factory(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        seed: int = 0,
        width: float = 1.0,
        conv_grad: str = "auto",
    ) -> _cifar.ResNet:
        _check_build_args(input_shape, num_classes, width)
        _conv.resolve_conv_grad(conv_grad)
        widths = _scaled((16, 32, 64), width)
        return instantiate(
            lambda rngs: _cifar.ResNet(
                input_shape, n, widths, num_classes, rngs=rngs, conv_grad=conv_grad
            ),
            seed,
        )

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"""ResNet-{depth} for CIFAR (He et al. 2016): stem, 3 stages of {n} basic blocks, option-A shortcuts.

    Stage widths 16, 32, 64 times ``width`` (at least 1); see :mod:`jaxprune.models._cifar` for
    the shortcut, the layer names and the init. ``conv_grad`` as for :func:`conv2`.

    Example:
      >>> net = resnet{depth}((8, 8, 1), 10, width=0.25)
      >>> net.stage3.block{n - 1}.conv2.kernel.shape, net.out.kernel.shape
      ((3, 3, 16, 16), (16, 10))
    """
    return factory


resnet20 = _resnet_factory(20)
resnet56 = _resnet_factory(56)


def transformer(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    dim: int = 128,
    depth: int = 4,
    heads: int = 4,
    kv_heads: int | None = None,
    mlp: str = "gelu",
    mlp_ratio: float = 4.0,
    norm: str = "layer",
    positions: str = "learned",
) -> _transformer.Transformer:
    """Decoder-only LM (:class:`~jaxprune.models.Transformer`): ``input_shape=(context,)``,
    ``num_classes`` = vocabulary size; logits ``(B, T, vocab)``.

    Drawn by :func:`instantiate`: Glorot-normal kernels, zero biases, norm scales 1, token and
    position embeddings N(0, 0.02²).

    Example:
      >>> import jax.numpy as jnp
      >>> lm = transformer((16,), 40, dim=32, depth=2, heads=4, kv_heads=2, positions="rope")
      >>> lm(jnp.zeros((2, 16), jnp.int32)).shape, lm.block1.attn.key.kernel.shape
      ((2, 16, 40), (32, 16))
    """
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise ValueError(
            f"input_shape must be (context,) for the transformer LM (token windows), got {shape!r}."
        )
    _check_build_args(shape, num_classes, 1.0)
    return instantiate(
        lambda rngs: _transformer.Transformer(
            num_classes, shape[0], dim=dim, depth=depth, heads=heads, kv_heads=kv_heads,
            mlp=mlp, mlp_ratio=mlp_ratio, norm=norm, positions=positions, rngs=rngs,
        ),
        seed,
    )  # fmt: skip


def vit(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int = 0,
    patch: int = 2,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    mlp: str = "gelu",
    mlp_ratio: float = 2.0,
    norm: str = "layer",
) -> _transformer.ViT:
    """Small vision transformer (:class:`~jaxprune.models.ViT`) on NHWC images.

    Drawn by :func:`instantiate` as :func:`transformer`; ``pos`` is N(0, 0.02²).

    Example:
      >>> import jax.numpy as jnp
      >>> net = vit((8, 8, 1), 10)
      >>> net(jnp.zeros((2, 8, 8, 1))).shape, net.pos.shape
      ((2, 10), (16, 64))
    """
    _check_build_args(input_shape, num_classes, 1.0)
    return instantiate(
        lambda rngs: _transformer.ViT(
            input_shape, num_classes, patch=patch, dim=dim, depth=depth, heads=heads,
            kv_heads=kv_heads, mlp=mlp, mlp_ratio=mlp_ratio, norm=norm, rngs=rngs,
        ),
        seed,
    )  # fmt: skip


REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    "lenet300_100": lenet300_100,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "mlp": mlp,
    "vgg11": vgg11,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "vgg16_a": vgg16_a,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "transformer": transformer,
    "vit": vit,
}
"""Model factories by name: ``factory(input_shape, num_classes, *, seed=0, **kwargs)``."""


def names() -> tuple[str, ...]:
    """The registered model names, sorted.

    Example:
      >>> names()  # doctest: +NORMALIZE_WHITESPACE
      ('conv2', 'conv4', 'conv6', 'lenet300_100', 'mlp', 'resnet20', 'resnet56', 'transformer',
       'vgg11', 'vgg16', 'vgg16_a', 'vgg19', 'vit')
    """
    return tuple(sorted(REGISTRY))


def build(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int = 0,
    **kwargs: Any,
) -> nnx.Module:
    """Build a registered model, initialised from ``seed``.

    Args:
      name: one of :func:`names`.
      input_shape: shape of one example, NHWC without the batch axis (e.g. ``(28, 28, 1)``).
      num_classes: number of logits.
      seed: initialisation seed (the same seed gives the same weights).
      **kwargs: model options: ``width`` for every model but ``mlp``, ``transformer`` and
        ``vit``, ``conv_grad`` for ``conv*``, ``vgg*`` and ``resnet*``, ``hidden`` for ``mlp``;
        ``dim``, ``depth``, ``heads``, ``kv_heads``, ``mlp``, ``mlp_ratio``, ``norm`` for
        ``transformer`` (``input_shape=(context,)``, ``num_classes`` = vocabulary size; also
        ``positions``) and ``vit`` (also ``patch``).

    Returns:
      The NNX module; see :func:`functional` (models without batch norm) and :func:`stateful`
      (any model; needed for ``vgg*`` and ``resnet*``) for the pure forms the training engine
      uses.

    Example:
      >>> import jax.numpy as jnp
      >>> net = build("conv2", input_shape=(8, 8, 1), num_classes=10, width=0.25)
      >>> net(jnp.zeros((4, 8, 8, 1))).shape
      (4, 10)
    """
    _checks.check_choice(name, REGISTRY, name="model name")
    factory = REGISTRY[name]
    try:
        return factory(tuple(input_shape), num_classes, seed=seed, **kwargs)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise ValueError(
            f"model {name!r} does not take option(s) {sorted(kwargs)}: {err}. "
            "lenet300_100 takes width=; conv2/4/6, vgg* and resnet* take width= and conv_grad=; "
            "mlp takes hidden=; transformer takes dim=, depth=, heads=, kv_heads=, mlp=, "
            "mlp_ratio=, norm=, positions=; vit takes patch=, dim=, depth=, heads=, kv_heads=, "
            "mlp=, mlp_ratio=, norm=."
        ) from None


def functional(model: nnx.Module) -> tuple[ApplyFn, Params, nnx.State]:
    """Split a model without batch norm into a pure ``apply_fn(params, x) -> logits``, params, rest.

    ``params`` is the ``nnx.State`` of the model's ``nnx.Param`` variables, an ordinary pytree
    (paths like ``"['fc1']['kernel'].value"``), so it can be masked, stacked on a ticket axis,
    ``vmap``-ed and ``jit``-ed over. ``apply_fn`` rebuilds the module with ``nnx.merge`` from the
    given params and the captured non-param state ``rest`` (empty for the lottery-ticket models:
    no batch norm, no dropout), at trace time only: under ``jax.jit`` it costs nothing per call.

    A model with batch norm (``vgg*``, ``resnet*``) is refused with a ``ValueError``: its output
    depends on running statistics that training changes and on train/eval mode, which this
    signature cannot carry. Use :func:`stateful` for it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn, params, rest = functional(build("mlp", input_shape=(4,), num_classes=3))
      >>> stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)  # two tickets
      >>> jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(stacked, jnp.ones((5, 4))).shape
      (2, 5, 3)
    """
    stats = _checks.leaves_with_paths(nnx.state(model, nnx.BatchStat))
    if stats:
        shown = ", ".join(path for path, _ in stats[:2])
        raise ValueError(
            f"model {type(model).__name__} has batch-norm statistics ({shown}, ...): "
            "functional(model) gives apply_fn(params, x), which cannot carry them. Use "
            "apply_fn, params, model_state = jaxprune.models.stateful(model) and "
            "train.make_steps(apply_fn, optimizer, stateful=True); for a fixed-statistics "
            "function of (params, x) take lambda p, x: apply_fn(p, model_state, x, train=False)[0]."
        )
    graphdef, *states = nnx.split(model, nnx.Param, ...)
    params, rest = states

    def apply_fn(params: Params, x: Array) -> Array:
        return nnx.merge(graphdef, params, rest)(x)

    return apply_fn, params, rest


class StatefulApplyFn(Protocol):
    """``apply_fn(params, model_state, x, *, train) -> (logits, new_model_state)``."""

    def __call__(
        self, params: Params, model_state: nnx.State, x: Array, *, train: bool
    ) -> tuple[Array, nnx.State]: ...


def stateful(model: nnx.Module) -> tuple[StatefulApplyFn, Params, nnx.State]:
    r"""Split any model into ``apply_fn(params, model_state, x, *, train)``, params and model state.

    ``model_state`` is every non-``nnx.Param`` variable of the model — for the models here the
    batch-norm running statistics ``['bn1']['mean'].value``, ``['bn1']['var'].value``, … (an
    empty ``nnx.State`` for models without batch norm). ``apply_fn`` is pure and returns
    ``(logits, new_model_state)``:

    * ``train=True``: batch norm normalises with the batch's own mean and (biased) variance and
      returns the running statistics updated by
      :math:`r \leftarrow m\,r + (1 - m)\,s_{batch}` (``m = 0.9`` for the ``vgg*`` and
      ``resnet*`` models);
    * ``train=False``: it normalises with the running statistics and returns ``model_state``
      unchanged.

    ``train`` must be a Python bool (it picks the program, as ``nnx.Module.train()`` / ``eval()``
    would); the model passed in is not changed. With :func:`jaxprune.train.make_steps`
    (``stateful=True``) the running statistics live in ``TrainState.model_state``, one copy per
    ticket, updated by ``train_step`` and used by ``eval_step``.

    Example (a one-conv VGG; ``build("resnet20", ...)`` and the others work the same way):
      >>> import jax.numpy as jnp
      >>> from jaxprune.models import VGG
      >>> net = instantiate(lambda rngs: VGG((4, 4, 1), (2,), 3, rngs=rngs))
      >>> apply_fn, params, model_state = stateful(net)
      >>> sorted(model_state["bn1"])  # running mean and variance of each batch norm
      ['mean', 'var']
      >>> x = jnp.linspace(0, 1, 2 * 16).reshape(2, 4, 4, 1)
      >>> logits, new_state = apply_fn(params, model_state, x, train=True)
      >>> logits.shape, bool((new_state["bn1"]["var"][...] != 1.0).all())
      ((2, 3), True)
      >>> _, same = apply_fn(params, new_state, x, train=False)
      >>> same is new_state
      True
    """
    graphdef, *states = nnx.split(model, nnx.Param, ...)
    params, model_state = states
    graphdefs = {}
    for mode in (True, False):
        # A twin sharing the arrays, switched to the mode; its graphdef fixes the mode statically.
        twin = nnx.merge(graphdef, params, model_state, copy=True)
        twin.set_attributes(use_running_average=not mode, raise_if_not_found=False)
        graphdefs[mode] = nnx.split(twin, nnx.Param, ...)[0]

    def apply_fn(
        params: Params, model_state: nnx.State, x: Array, *, train: bool
    ) -> tuple[Array, nnx.State]:
        if not isinstance(train, bool):
            raise ValueError(
                f"train must be a Python bool (it selects the program), got {type(train).__name__}."
            )
        # copy=True: fresh Variables at this trace level, so batch norm may update them in
        # place under jax.grad/vmap without touching the caller's model_state.
        module = nnx.merge(graphdefs[train], params, model_state, copy=True)
        logits = module(x)
        if not train:
            return logits, model_state
        _, *new_states = nnx.split(module, nnx.Param, ...)
        return logits, new_states[1]

    return apply_fn, params, model_state


def param_count(params: Params) -> int:
    """Total number of scalars in a params pytree (of one ticket: a stacked tree counts N times).

    Example:
      >>> import jax.numpy as jnp
      >>> param_count({"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
      8
    """
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
