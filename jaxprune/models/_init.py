r"""Initialisation laws that :func:`~jaxprune.models.instantiate` can draw from its shared streams.

A :class:`Law` is an ordinary Flax initialiser ``law(key, shape, dtype)`` that also says what it
is, so that ``instantiate`` can draw the same law from one RNG stream for the whole model instead
of one RNG call per layer. Flax layers do not keep their initialisers, so :func:`with_laws`
records them on the layer (attributes ``kernel_init``, ``bias_init``, ``scale_init``,
``embedding_init``, or ``{name}_init`` for a bare ``nnx.Param`` attribute ``name``); layers
without a recorded :class:`Law` keep ``instantiate``'s rule (Glorot-normal kernels, zero biases,
norm scales 1, embeddings :data:`EMBEDDING_LAW`).

With ``fan`` the fan of the weight's shape (``"in"``: inputs × receptive field, ``"out"``:
outputs × receptive field, ``None``: 1) and ``g`` the law's ``gain``:

* ``normal``: :math:`w \sim \mathcal N(0, \sigma^2)`, :math:`\sigma = g / \sqrt{fan}`
  (untruncated, as PyTorch's ``normal_``);
* ``uniform``: :math:`w \sim U(-b, b)`, :math:`b = g / \sqrt{fan}`;
* ``constant``: :math:`w = g`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, TypeVar

import jax
import jax.numpy as jnp

__all__ = ["EMBEDDING_LAW", "HE_NORMAL_FAN_OUT", "Law", "fans", "with_laws"]

L = TypeVar("L")


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a dense ``(in, out)`` or conv ``(h, w, in, out)`` kernel."""
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@dataclasses.dataclass(frozen=True)
class Law:
    """An initialiser with a name: ``normal``, ``uniform`` or ``constant`` (see the module docstring).

    Example:
      >>> import jax, math
      >>> law = Law("normal", gain=2**0.5, fan="out")  # He et al. (2015), fan-out mode
      >>> math.isclose(law.scale((3, 3, 16, 32)), math.sqrt(2 / (9 * 32)))  # std = sqrt(2 / fan_out)
      True
      >>> law(jax.random.key(0), (3, 3, 16, 32)).shape
      (3, 3, 16, 32)
    """

    kind: Literal["normal", "uniform", "constant"]
    gain: float
    fan: Literal["in", "out"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("normal", "uniform", "constant"):
            raise ValueError(f"kind must be normal, uniform or constant, got {self.kind!r}.")
        if self.fan not in ("in", "out", None):
            raise ValueError(f"fan must be 'in', 'out' or None, got {self.fan!r}.")

    def scale(self, shape: tuple[int, ...]) -> float:
        """The std (normal), bound (uniform) or value (constant) for a weight of ``shape``."""
        if self.fan is None or self.kind == "constant":
            return float(self.gain)
        fan_in, fan_out = fans(shape) if len(shape) >= 2 else (shape[0], shape[0])
        return float(self.gain) / math.sqrt(fan_in if self.fan == "in" else fan_out)

    def __call__(self, key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        s = self.scale(shape)
        if self.kind == "constant":
            return jnp.full(shape, s, dtype)
        if self.kind == "normal":
            return (jax.random.normal(key, shape, jnp.float32) * s).astype(dtype)
        return jax.random.uniform(key, shape, jnp.float32, -s, s).astype(dtype)


HE_NORMAL_FAN_OUT = Law("normal", gain=math.sqrt(2.0), fan="out")
"""Conv kernels of the CIFAR VGG / ResNet reference codes: ``normal_(0, sqrt(2 / (k·k·out)))``."""


EMBEDDING_LAW = Law("normal", gain=0.02)
"""Token and position embeddings: ``normal_(0, 0.02)`` (GPT-2's init; fan-free)."""


def with_laws(layer: L, **laws: Law) -> L:
    """Record on ``layer`` the laws its params were built with (``kernel=``, ``bias=``, ``scale=``,
    ``embedding=``, or the name of a bare ``nnx.Param`` attribute of ``layer``).

    The law of param ``name`` is stored as the attribute ``{name}_init``.

    Example:
      >>> from flax import nnx
      >>> law = Law("constant", gain=0.5)
      >>> bn = with_laws(nnx.BatchNorm(3, scale_init=law, rngs=nnx.Rngs(0)), scale=law)
      >>> bn.scale_init == law, float(bn.scale[0])
      (True, 0.5)
    """
    for name, law in laws.items():
        known = name in _LEAVES or _is_param(getattr(layer, name, None))
        if not known or not isinstance(law, Law):
            raise ValueError(
                f"with_laws takes kernel=, bias=, scale=, embedding= (or the name of one of "
                f"the layer's nnx.Param attributes) Law objects, got {name}={law!r}."
            )
        setattr(layer, f"{name}_init", law)
    return layer


_LEAVES = ("kernel", "bias", "scale", "embedding")


def _is_param(value: Any) -> bool:
    from flax import nnx

    return isinstance(value, nnx.Param)
