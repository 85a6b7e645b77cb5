"""Model factories by name, and the bridge from an NNX module to a pure ``apply_fn(params, x)``."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _checks
from jaxprune._types import Array, Params
from jaxprune.models import _conv, _nets

__all__ = [
    "REGISTRY",
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
]

ApplyFn = Callable[[Params, Array], Array]
M = TypeVar("M", bound=nnx.Module)


# jax's glorot_normal draws N(0, 1) truncated to [-2, 2] and divides by this, the std of that
# truncated law, so that the kernel's std is exactly sqrt(2 / (fan_in + fan_out)).
_TRUNCATED_STD = 0.87962566103423978


@functools.partial(jax.jit, static_argnums=1)
def _standard_draws(key: jax.Array, n: int) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0, 2.0, (n,), jnp.float32)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a dense ``(in, out)`` or conv ``(h, w, in, out)`` kernel."""
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def instantiate(make: Callable[[nnx.Rngs], M], seed: int = 0) -> M:
    """``make(rngs)`` with Glorot-normal kernels and zero biases, drawn from one RNG call.

    The module is traced abstractly (no compute); then every ``kernel`` is cut from one stream of
    standard normal draws truncated to ±2 and scaled by its layer's Glorot std: the law of
    ``nnx.initializers.glorot_normal()``, which the modules use when constructed directly, with
    values that depend only on ``seed`` and the architecture. One RNG call instead of one per
    layer, because XLA on a CPU compiles every RNG call anew (~0.3 s a layer); the stream length
    is rounded up to a power of two so that models share the compiled draw. Every param must be
    named ``kernel`` or ``bias`` (true of every model here).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune.models import ConvNet, instantiate
      >>> net = instantiate(lambda rngs: ConvNet((8, 8, 1), (4, "pool"), (16,), 10, rngs=rngs), seed=1)
      >>> net(jnp.zeros((2, 8, 8, 1))).shape, float(jnp.abs(net.conv1.bias[...]).max())
      ((2, 10), 0.0)
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    roles = [str(getattr(path[-2], "key", "")) for path, _ in flat]
    total = sum(
        math.prod(leaf.shape)
        for (_, leaf), role in zip(flat, roles, strict=True)
        if role == "kernel"
    )
    draws = np.asarray(
        _standard_draws(jax.random.key(seed), 1 << max(12, (total - 1).bit_length()))
    )
    values, offset = [], 0
    for (path, leaf), role in zip(flat, roles, strict=True):
        shape = tuple(leaf.shape)
        if role == "kernel":
            fan_in, fan_out = _fans(shape)
            std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD
            n = math.prod(shape)
            values.append(
                jnp.asarray((draws[offset : offset + n] * std).reshape(shape), leaf.dtype)
            )
            offset += n
        elif role == "bias":
            values.append(jnp.zeros(shape, leaf.dtype))
        else:
            raise ValueError(
                f"make() built a module with param {jax.tree_util.keystr(path)}; instantiate "
                "initialises only params named 'kernel' (Glorot normal) or 'bias' (zeros)."
            )
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, values))


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

REGISTRY: dict[str, Callable[..., nnx.Module]] = {
    "lenet300_100": lenet300_100,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "mlp": mlp,
}
"""Model factories by name: ``factory(input_shape, num_classes, *, seed=0, **kwargs)``."""


def names() -> tuple[str, ...]:
    """The registered model names, sorted.

    Example:
      >>> names()
      ('conv2', 'conv4', 'conv6', 'lenet300_100', 'mlp')
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
      **kwargs: model options: ``width`` for ``lenet300_100`` and ``conv*``, ``conv_grad`` for
        ``conv*``, ``hidden`` for ``mlp``.

    Returns:
      The NNX module; see :func:`functional` for the pure form used by the training engine.

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
            "lenet300_100 takes width=; conv2/4/6 take width= and conv_grad=; mlp takes hidden=."
        ) from None


def functional(model: nnx.Module) -> tuple[ApplyFn, Params, nnx.State]:
    """Split a model into a pure ``apply_fn(params, x) -> logits``, its params and the rest.

    ``params`` is the ``nnx.State`` of the model's ``nnx.Param`` variables, an ordinary pytree
    (paths like ``"['fc1']['kernel'].value"``), so it can be masked, stacked on a ticket axis,
    ``vmap``-ed and ``jit``-ed over. ``apply_fn`` rebuilds the module with ``nnx.merge`` from the
    given params and the captured non-param state ``rest`` (empty for the models here: no batch
    norm, no dropout), at trace time only: under ``jax.jit`` it costs nothing per call.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> apply_fn, params, rest = functional(build("mlp", input_shape=(4,), num_classes=3))
      >>> stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)  # two tickets
      >>> jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(stacked, jnp.ones((5, 4))).shape
      (2, 5, 3)
    """
    graphdef, *states = nnx.split(model, nnx.Param, ...)
    params, rest = states

    def apply_fn(params: Params, x: Array) -> Array:
        return nnx.merge(graphdef, params, rest)(x)

    return apply_fn, params, rest


def param_count(params: Params) -> int:
    """Total number of scalars in a params pytree (of one ticket: a stacked tree counts N times).

    Example:
      >>> import jax.numpy as jnp
      >>> param_count({"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
      8
    """
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
