"""The networks of the lottery-ticket papers as Flax NNX modules: an MLP family and a Conv-k family.

Layers are plain attributes with fixed names, so a parameter's path says what the layer is:
convolutions ``conv1, conv2, …``, hidden dense layers ``fc1, fc2, …``, the classifier ``out``.
Every layer has a ``kernel`` and a ``bias``; kernels are Glorot-normal, biases zero, and there is
no normalisation layer, as in the reference code of Frankle & Carbin (2019) and Zhou et al. (2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxprune._types import Array
from jaxprune.models import _conv

__all__ = ["MLP", "POOL", "ConvNet"]

POOL = "pool"
"""Marker in a :class:`ConvNet` plan for a 2×2 max-pool with stride 2."""

# Glorot (Xavier) normal: std = sqrt(2 / (fan_in + fan_out)), fans counting the receptive field
# for convolutions. JAX draws it from a normal truncated at ±2σ, rescaled so the std is exact.
_KERNEL_INIT = nnx.initializers.glorot_normal()
_BIAS_INIT = nnx.initializers.zeros_init()


def _dense(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, kernel_init=_KERNEL_INIT, bias_init=_BIAS_INIT, rngs=rngs)


class _Classifier(nnx.Module):
    """Shared tail of both families: ``fc1 … fcK`` (dense + ReLU), then the ``out`` logits."""

    out: nnx.Linear
    dense_names: tuple[str, ...]

    def _add_dense_layers(
        self, n_in: int, hidden: Sequence[int], num_classes: int, rngs: nnx.Rngs
    ) -> None:
        widths = [n_in, *(int(h) for h in hidden)]
        self.dense_names = tuple(f"fc{i + 1}" for i in range(len(widths) - 1))
        for name, a, b in zip(self.dense_names, widths[:-1], widths[1:], strict=True):
            setattr(self, name, _dense(a, b, rngs))
        self.out = _dense(widths[-1], int(num_classes), rngs)

    def _dense_forward(self, h: Array) -> Array:
        for name in self.dense_names:
            h = jax.nn.relu(getattr(self, name)(h))
        return self.out(h)


def _check_input(x: Array, input_shape: tuple[int, ...]) -> None:
    tail = tuple(x.shape[x.ndim - len(input_shape) :]) if x.ndim > len(input_shape) else None
    if tail != input_shape:
        raise ValueError(
            f"x must have shape (batch..., {', '.join(map(str, input_shape))}) for this model, "
            f"got {tuple(x.shape)}; the model was built for input_shape={input_shape} and needs "
            "at least one leading batch axis."
        )


class MLP(_Classifier):
    """Flatten → dense + ReLU for each hidden width → dense ``out`` (logits).

    Params: ``fc1 … fcK`` (hidden layers, ``kernel`` of shape ``(fan_in, width)``) and ``out``.

    Args:
      input_shape: shape of one example (any rank; it is flattened).
      hidden: widths of the hidden layers (may be empty: a linear classifier).
      num_classes: number of logits.
      rngs: the random streams for the initialisers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = MLP((8, 8, 1), (16,), 10, rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((2, 8, 8, 1))).shape
      (2, 10)
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        n_in = math.prod(self.input_shape)
        self._add_dense_layers(n_in, hidden, num_classes, rngs)

    def __call__(self, x: Array) -> Array:
        _check_input(x, self.input_shape)
        batch = x.shape[: x.ndim - len(self.input_shape)]
        return self._dense_forward(jnp.reshape(x, (*batch, -1)))


class ConvNet(_Classifier):
    """3×3 SAME convolutions + ReLU with 2×2 max-pools, then dense + ReLU layers, then ``out``.

    ``plan`` lists conv widths and :data:`POOL` markers in order, e.g. Conv-2 is
    ``(64, 64, "pool")`` with ``dense=(256, 256)``. Params: ``conv1 … convK`` (``kernel`` of shape
    ``(3, 3, in_channels, out_channels)``), ``fc1 … fcM`` and ``out``. Pools use VALID padding
    (odd sizes round down), like ``tf.layers.max_pooling2d`` in the reference code.

    ``conv_grad`` chooses how kernel gradients are computed: ``"xla"`` (autodiff of XLA's
    convolution), ``"im2col"`` (:func:`~jaxprune.models.conv_im2col_grad`: the same values, an
    order of magnitude faster inside ``lax.scan`` on CPU) or ``"auto"`` (``"im2col"`` on a CPU
    backend, else ``"xla"``). The forward pass is the same convolution either way.

    Args:
      input_shape: ``(height, width, channels)`` of one NHWC example.
      plan: conv widths and ``"pool"`` markers.
      dense: widths of the hidden dense layers after flattening.
      num_classes: number of logits.
      rngs: the random streams for the initialisers.
      conv_grad: ``"auto"``, ``"xla"`` or ``"im2col"`` (see above).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = ConvNet((8, 8, 1), (4, "pool"), (16,), 10, rngs=nnx.Rngs(0))
      >>> net(jnp.zeros((2, 8, 8, 1))).shape, net.conv1.kernel.shape, net.fc1.kernel.shape
      ((2, 10), (3, 3, 1, 4), (64, 16))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        plan: Sequence[int | str],
        dense: Sequence[int],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        conv_grad: str = "auto",
    ):
        conv_fn = (
            _conv.conv_im2col_grad
            if _conv.resolve_conv_grad(conv_grad) == "im2col"
            else lax.conv_general_dilated
        )
        if len(input_shape) != 3:
            raise ValueError(
                f"input_shape must be (height, width, channels) for a conv net, got {tuple(input_shape)}."
            )
        self.input_shape = tuple(int(d) for d in input_shape)
        height, width, channels = self.input_shape
        steps: list[str] = []
        for item in plan:
            if item == POOL:
                height, width = height // 2, width // 2
                if height == 0 or width == 0:
                    pools = sum(1 for p in plan if p == POOL)
                    raise ValueError(
                        f"input_shape {self.input_shape} is too small for {pools} 2×2 max-pools: "
                        f"expected height and width of at least {2**pools}."
                    )
                steps.append(POOL)
                continue
            name = f"conv{sum(1 for s in steps if s != POOL) + 1}"
            setattr(
                self,
                name,
                nnx.Conv(
                    channels,
                    int(item),
                    (3, 3),
                    padding="SAME",
                    kernel_init=_KERNEL_INIT,
                    bias_init=_BIAS_INIT,
                    conv_general_dilated=conv_fn,
                    rngs=rngs,
                ),
            )
            channels = int(item)
            steps.append(name)
        self.steps = tuple(steps)
        self._add_dense_layers(height * width * channels, dense, num_classes, rngs)

    def __call__(self, x: Array) -> Array:
        _check_input(x, self.input_shape)
        h = x
        for step in self.steps:
            if step == POOL:
                h = nnx.max_pool(h, window_shape=(2, 2), strides=(2, 2), padding="VALID")
            else:
                h = jax.nn.relu(getattr(self, step)(h))
        batch = h.shape[: h.ndim - 3]
        return self._dense_forward(jnp.reshape(h, (*batch, -1)))
