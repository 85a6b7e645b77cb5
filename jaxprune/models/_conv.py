"""A 2-D convolution whose kernel gradient is an im2col matmul, for training inside ``lax.scan`` on CPU.

On XLA:CPU the kernel-gradient convolution that autodiff emits runs an order of magnitude slower
inside a ``lax.scan``/``while`` body than in a standalone program (jax-ml/jax#12868; measured
here: a Conv-2 SGD step at 1.8 steps/s in a scan against 28 called from Python). Computing that
one gradient as ``patches(x)ᵀ · dy`` — a plain matmul — restores the speed (≈ 24 steps/s in the
scan). The forward pass and the input gradient are XLA's own convolutions, unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxprune._types import Array

__all__ = ["CONV_GRADS", "conv_im2col_grad", "resolve_conv_grad"]

CONV_GRADS = ("auto", "xla", "im2col")
_DN = ("NHWC", "HWIO", "NHWC")
Padding = str | tuple[tuple[int, int], ...]


def _conv(x: Array, w: Array, strides: tuple[int, ...], padding: Padding) -> Array:
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_fast_grad(x: Array, w: Array, strides: tuple[int, ...], padding: Padding) -> Array:
    return _conv(x, w, strides, padding)


def _fwd(
    x: Array, w: Array, strides: tuple[int, ...], padding: Padding
) -> tuple[Array, tuple[Array, Array]]:
    return _conv(x, w, strides, padding), (x, w)


def _bwd(
    strides: tuple[int, ...], padding: Padding, res: tuple[Array, Array], g: Array
) -> tuple[Array, Array]:
    x, w = res
    kh, kw, c_in, c_out = w.shape
    _, input_vjp = jax.vjp(lambda lhs: _conv(lhs, w, strides, padding), x)
    # patches[n, i, j, (c, a, b)] = x_padded[n, i·s + a, j·s + b, c]: channel-major features.
    patches = lax.conv_general_dilated_patches(x, (kh, kw), strides, padding, dimension_numbers=_DN)
    dw = jnp.einsum("nhwp,nhwo->po", patches, g).reshape(c_in, kh, kw, c_out)
    return input_vjp(g)[0], jnp.transpose(dw, (1, 2, 0, 3))


_conv_fast_grad.defvjp(_fwd, _bwd)


def conv_im2col_grad(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    *,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    feature_group_count: int = 1,
    **unused: Any,
) -> Array:
    """Drop-in ``conv_general_dilated`` for ``nnx.Conv`` (NHWC input, HWIO kernel, 2-D).

    Same value as ``lax.conv_general_dilated``; the kernel gradient is an im2col matmul (see the
    module docstring). Dilations and feature groups are not supported. The remaining keyword
    arguments ``nnx.Conv`` passes (dimension numbers, precision…) are accepted and ignored: the
    layout is fixed to NHWC/HWIO, ``nnx.Conv``'s own.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 5))
      >>> y = conv_im2col_grad(x, w, (1, 1), "SAME")
      >>> y.shape, float(y[0, 1, 1, 0]), float(jax.grad(lambda w: conv_im2col_grad(x, w, (1, 1), "SAME").sum())(w)[1, 1, 0, 0])
      ((1, 4, 4, 5), 18.0, 16.0)
    """
    del unused
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if dilated or feature_group_count != 1 or lhs.ndim != 4 or rhs.ndim != 4:
        raise ValueError(
            "conv_im2col_grad supports plain 2-D NHWC convolutions only: got lhs of shape "
            f"{tuple(lhs.shape)}, rhs {tuple(rhs.shape)}, lhs_dilation={lhs_dilation}, "
            f"rhs_dilation={rhs_dilation}, feature_group_count={feature_group_count}."
        )
    pads: Padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)  # type: ignore[misc]
    return _conv_fast_grad(lhs, rhs, tuple(int(s) for s in window_strides), pads)


def resolve_conv_grad(conv_grad: str) -> str:
    """``"auto"`` → ``"im2col"`` on a CPU backend, ``"xla"`` elsewhere; others pass through."""
    if conv_grad not in CONV_GRADS:
        raise ValueError(f"conv_grad must be one of {', '.join(CONV_GRADS)}, got {conv_grad!r}.")
    if conv_grad == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return conv_grad
