r"""CIFAR VGG and ResNet with batch norm (Flax NNX), following the reference codes of the pruning papers.

**VGG** (``vgg11``, ``vgg16``, ``vgg19``, ``vgg16_a``) is the CIFAR VGG of Liu et al.'s
Network-Slimming code (github.com/Eric-mingjie/network-slimming, ``models/vgg.py``) and its copy in
the Rethinking code (github.com/Eric-mingjie/rethinking-network-pruning, ``cifar/*/models/vgg.py``):
each conv is 3×3, padding 1, no bias, then batch norm, then ReLU; ``"pool"`` is a 2×2 max-pool
with stride 2; after the last conv a 2×2 average pool, flatten, and the classifier. The two codes
differ in the classifier, and each depth here takes the one of the paper that uses it:

* ``"linear"`` — one ``Linear(C, classes)``: Network Slimming (``network-slimming/models/vgg.py``),
  whose CIFAR experiments use VGG-19 (20.04M params on CIFAR-10, the figure in that code's
  README); ``vgg11`` is the same code's depth-11 config;
* ``"mlp"`` — ``Linear(C, 512) → BatchNorm1d → ReLU → Linear(512, classes)``: the L1-norm filter
  pruning of Li et al. (2017) as reimplemented in ``rethinking-network-pruning/cifar/
  l1-norm-pruning/models/vgg.py``, used for VGG-16 (15.0M, Li et al.'s "1.5×10⁷") and its pruned
  config ``vgg16_a`` (5.4M, Li et al.'s "5.4×10⁶").

``vgg16_a`` is the widths list of ``vggprune.py`` in that code: ``[32, 64, M, 128, 128, M, 256,
256, 256, M, 256, 256, 256, M, 256, 256, 256]`` — VGG-16's pool positions, with the 512-wide
layers 8–13 cut to 256 and conv1 to 32 (RESEARCH §4's "256×6").

The final 2×2 average pool of the reference is taken as a *global* average pool, which is the same
on 32×32 inputs (the map is 2×2 there) and defined for any input. Small inputs: a 2×2 max-pool on a
side of length 1 keeps that side (window 1 on it), so 8×8 digits go 8 → 4 → 2 → 1 → 1 through
VGG-16's four pools; pools on odd sides round down (VALID), as PyTorch's ``MaxPool2d``.

**ResNet** (``resnet20``, ``resnet56``) is He et al. (2016)'s CIFAR ResNet-(6n+2): a 3×3 conv +
BN + ReLU stem with 16 channels, three stages of ``n`` basic blocks with 16, 32, 64 channels (the
first block of stages 2 and 3 has stride 2), global average pool, linear. A basic block is
``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``. Shortcuts are **option A**: parameter-free
— the identity, or, where a block changes shape, ``x`` subsampled with stride 2 and zero channels
appended. Option A because it is what He et al. used on CIFAR (their 0.27M ResNet-20 and 0.85M
ResNet-56 are option A) and what the structured-pruning reference code uses for ResNet-56/110
(``l1-norm-pruning/models/resnet.py``); a 1×1 projection (option B) would add prunable convs that
neither paper has. The subsampling takes every second pixel, as He et al.'s Torch code
(fb.resnet.torch, ``shortcutType A``); it lines up with the centres of the stride-2 conv and is
defined for odd sizes (the Rethinking code averages 2×2 windows instead: same parameters).

Because option-A shortcuts add ``x`` to the block output channel by channel, the output channels
of the stem conv and of every ``conv2`` of a stage are tied together (one residual stream per
stage, the first ``C_prev`` channels of it continuing the previous stage's): only a block's
``conv1`` (and with it ``bn1`` and ``conv2``'s input channels) can be pruned on its own — which is
why Li et al. prune only the first conv of each block.

Parameter paths (``jax.tree_util.keystr``), params then model state:

* VGG: ``['conv1']['kernel'].value`` (3, 3, in, out), ``['bn1']['scale'].value``,
  ``['bn1']['bias'].value``, … ``['convK']``, ``['bnK']``; with the ``"mlp"`` classifier
  ``['fc1']['kernel'|'bias']``, ``['bn_fc1']['scale'|'bias']``; then ``['out']['kernel'|'bias']``.
  Batch statistics ``['bnK']['mean'].value``, ``['bnK']['var'].value``.
* ResNet: ``['stem']['conv']['kernel']``, ``['stem']['bn'][…]``, then for stage ``s`` in 1–3 and
  block ``b`` in ``0…n-1``: ``['stage{s}']['block{b}']['conv1']['kernel']`` (the prunable one),
  ``[…]['bn1'][…]``, ``[…]['conv2']['kernel']``, ``[…]['bn2'][…]``; ``['out']['kernel'|'bias']``.

Convs carry no bias (batch norm follows). Init, as the reference codes: conv kernels
:math:`\mathcal N(0, 2 / (9 \cdot C_{out}))` (He et al. 2015, fan-out mode, untruncated);
conv BN scale 0.5 in VGG (Network-Slimming code) and 1 in ResNet (fb.resnet.torch), BN bias 0;
VGG linear kernels :math:`\mathcal N(0, 0.01^2)`, the ``mlp`` classifier's BatchNorm1d scale 1
(PyTorch's default: the reference init touches only BatchNorm2d); the ResNet classifier kernel
:math:`U(\pm 1/\sqrt{fan_{in}})` (Torch's default ``Linear`` init); every bias 0.

Batch norm: momentum 0.9 on the running statistics (:math:`r \leftarrow 0.9\,r + 0.1\,s_{batch}`,
PyTorch's ``momentum=0.1``), ε = 1e-5, biased batch variance (PyTorch keeps the unbiased one in
its running variance: a factor ``B/(B-1)`` on it, nothing else). Modules start in training mode
(batch statistics); ``net.eval()`` switches to the running averages. The training engine uses
:func:`~jaxprune.models.stateful`, which picks the mode per call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxprune._types import Array
from jaxprune.models import _conv, _init, _nets

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "VGG", "BasicBlock", "ResNet"]

BN_MOMENTUM = 0.9
"""Running statistics decay: ``running ← 0.9·running + 0.1·batch`` (PyTorch's ``momentum=0.1``)."""
BN_EPSILON = 1e-5

_ZEROS = nnx.initializers.zeros_init()
_VGG_LINEAR = _init.Law("normal", gain=0.01)
_TORCH_LINEAR = _init.Law("uniform", gain=1.0, fan="in")
_PAD1 = ((1, 1), (1, 1))


def _conv_fn(conv_grad: str) -> Callable[..., Any]:
    if _conv.resolve_conv_grad(conv_grad) == "im2col":
        return _conv.conv_im2col_grad
    return lax.conv_general_dilated


def _conv3x3(c_in: int, c_out: int, stride: int, conv_fn: Any, rngs: nnx.Rngs) -> nnx.Conv:
    conv = nnx.Conv(
        c_in,
        c_out,
        (3, 3),
        strides=(stride, stride),
        padding=_PAD1,  # PyTorch's padding=1: for stride 2 the windows centre on even pixels
        use_bias=False,
        kernel_init=_init.HE_NORMAL_FAN_OUT,
        conv_general_dilated=conv_fn,
        rngs=rngs,
    )
    return _init.with_laws(conv, kernel=_init.HE_NORMAL_FAN_OUT)


def _batch_norm(n: int, scale: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    law = _init.Law("constant", gain=scale)
    bn = nnx.BatchNorm(
        n,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        use_fast_variance=False,  # two-pass variance, as PyTorch: no cancellation error
        scale_init=law,
        bias_init=_ZEROS,
        rngs=rngs,
    )
    return _init.with_laws(bn, scale=law)


def _linear(n_in: int, n_out: int, law: _init.Law, rngs: nnx.Rngs) -> nnx.Linear:
    layer = nnx.Linear(n_in, n_out, kernel_init=law, bias_init=_ZEROS, rngs=rngs)
    return _init.with_laws(layer, kernel=law)


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels) for a conv net, got {tuple(input_shape)}."
        )
    h, w, c = (int(d) for d in input_shape)
    return h, w, c


class VGG(nnx.Module):
    """3×3 conv → BN → ReLU layers with 2×2 max-pools, global average pool, then the classifier.

    ``plan`` lists conv widths and :data:`~jaxprune.models.POOL` markers (VGG's ``'M'``). Params
    ``conv1 … convK`` (no bias) and ``bn1 … bnK``; with ``hidden`` the classifier is ``fc1 →
    bn_fc1 → ReLU → out`` (Li et al.'s), else just ``out`` (Network Slimming's). See the module
    docstring for the init and the pooling of small inputs.

    Args:
      input_shape: ``(height, width, channels)`` of one NHWC example.
      plan: conv widths and ``"pool"`` markers.
      num_classes: number of logits.
      hidden: width of the classifier's hidden layer, or ``None`` for a linear classifier.
      bn_scale: initial scale γ of the conv batch norms (0.5 in the Network-Slimming code).
      rngs: the random streams for the initialisers.
      conv_grad: ``"auto"``, ``"xla"`` or ``"im2col"`` (see :class:`~jaxprune.models.ConvNet`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> net = nnx.eval_shape(  # shapes only; build with jaxprune.models.build or instantiate
      ...     lambda: VGG((8, 8, 1), (4, "pool", 8, "pool", "pool", "pool"), 10, rngs=nnx.Rngs(0)))
      >>> net.steps  # the 4th pool would shrink a 1×1 map: dropped
      ('conv1', (2, 2), 'conv2', (2, 2), (2, 2))
      >>> x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
      >>> nnx.eval_shape(lambda m, x: m(x), net, x).shape, net.bn2.scale.shape
      ((2, 10), (8,))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        plan: Sequence[int | str],
        num_classes: int,
        *,
        hidden: int | None = None,
        bn_scale: float = 0.5,
        rngs: nnx.Rngs,
        conv_grad: str = "auto",
    ):
        conv_fn = _conv_fn(conv_grad)
        self.input_shape = _image_shape(input_shape)
        height, width, channels = self.input_shape
        steps: list[str | tuple[int, int]] = []
        n_conv = 0
        for item in plan:
            if item == _nets.POOL:
                window = (2 if height >= 2 else 1, 2 if width >= 2 else 1)
                if window != (1, 1):
                    steps.append(window)
                    height, width = height // window[0], width // window[1]
                continue
            n_conv += 1
            setattr(self, f"conv{n_conv}", _conv3x3(channels, int(item), 1, conv_fn, rngs))
            setattr(self, f"bn{n_conv}", _batch_norm(int(item), bn_scale, rngs))
            channels = int(item)
            steps.append(f"conv{n_conv}")
        self.steps = tuple(steps)
        self.hidden = hidden
        if hidden is not None:
            self.fc1 = _linear(channels, hidden, _VGG_LINEAR, rngs)
            self.bn_fc1 = _batch_norm(hidden, 1.0, rngs)
            channels = hidden
        self.out = _linear(channels, int(num_classes), _VGG_LINEAR, rngs)

    def __call__(self, x: Array) -> Array:
        _nets._check_input(x, self.input_shape)
        h = x
        for step in self.steps:
            if isinstance(step, tuple):
                h = nnx.max_pool(h, window_shape=step, strides=step, padding="VALID")
            else:
                h = jax.nn.relu(getattr(self, f"bn{step[4:]}")(getattr(self, step)(h)))
        h = jnp.mean(h, axis=(-3, -2))  # global average pool
        if self.hidden is not None:
            h = jax.nn.relu(self.bn_fc1(self.fc1(h)))
        return self.out(h)


class BasicBlock(nnx.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with an option-A shortcut.

    The shortcut is ``x`` itself, or ``x[..., ::stride, ::stride, :]`` with ``c_out − c_in`` zero
    channels appended when the block changes shape: no parameters.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> block = nnx.eval_shape(lambda: BasicBlock(4, 8, 2, rngs=nnx.Rngs(0)))  # shapes only
      >>> x = jax.ShapeDtypeStruct((2, 7, 7, 4), jnp.float32)
      >>> nnx.eval_shape(lambda b, x: b(x), block, x).shape  # odd sides: ceil(7 / 2) = 4 for both
      (2, 4, 4, 8)
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs, conv_grad: str = "auto"
    ):
        if c_out < c_in:
            raise ValueError(
                f"an option-A shortcut can only add channels: c_out must be >= c_in, got "
                f"c_in={c_in}, c_out={c_out}."
            )
        conv_fn = _conv_fn(conv_grad)
        self.conv1 = _conv3x3(c_in, c_out, stride, conv_fn, rngs)
        self.bn1 = _batch_norm(c_out, 1.0, rngs)
        self.conv2 = _conv3x3(c_out, c_out, 1, conv_fn, rngs)
        self.bn2 = _batch_norm(c_out, 1.0, rngs)
        self.stride = int(stride)
        self.extra_channels = int(c_out - c_in)

    def shortcut(self, x: Array) -> Array:
        """Option A: subsample by ``stride``, append zero channels."""
        if self.stride > 1:
            x = x[..., :: self.stride, :: self.stride, :]
        if self.extra_channels:
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, self.extra_channels)])
        return x

    def __call__(self, x: Array) -> Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class _Stem(nnx.Module):
    def __init__(self, c_in: int, c_out: int, conv_fn: Any, rngs: nnx.Rngs):
        self.conv = _conv3x3(c_in, c_out, 1, conv_fn, rngs)
        self.bn = _batch_norm(c_out, 1.0, rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class _Stage(nnx.Module):
    def __init__(self, c_in: int, c_out: int, n: int, stride: int, rngs: nnx.Rngs, conv_grad: str):
        for b in range(n):
            block = BasicBlock(
                c_in if b == 0 else c_out,
                c_out,
                stride if b == 0 else 1,
                rngs=rngs,
                conv_grad=conv_grad,
            )
            setattr(self, f"block{b}", block)
        self.n_blocks = n

    def __call__(self, x: Array) -> Array:
        for b in range(self.n_blocks):
            x = getattr(self, f"block{b}")(x)
        return x


class ResNet(nnx.Module):
    """He et al.'s CIFAR ResNet: stem, three stages of basic blocks, global average pool, ``out``.

    Args:
      input_shape: ``(height, width, channels)`` of one NHWC example.
      blocks_per_stage: ``n`` (depth ``6n + 2``: 3 for ResNet-20, 9 for ResNet-56).
      widths: channels of the three stages (16, 32, 64 at paper width); the stem has ``widths[0]``.
      num_classes: number of logits.
      rngs: the random streams for the initialisers.
      conv_grad: ``"auto"``, ``"xla"`` or ``"im2col"`` (see :class:`~jaxprune.models.ConvNet`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> net = nnx.eval_shape(lambda: ResNet((8, 8, 1), 1, (2, 4, 8), 10, rngs=nnx.Rngs(0)))
      >>> x = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
      >>> nnx.eval_shape(lambda m, x: m(x), net, x).shape, net.stage2.block0.conv1.kernel.shape
      ((3, 10), (3, 3, 2, 4))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        blocks_per_stage: int,
        widths: Sequence[int],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        conv_grad: str = "auto",
    ):
        if len(widths) != 3 or any(b < a for a, b in itertools.pairwise(widths)):
            raise ValueError(
                f"widths must be 3 non-decreasing stage widths (e.g. (16, 32, 64)), got {tuple(widths)}."
            )
        self.input_shape = _image_shape(input_shape)
        self.stem = _Stem(self.input_shape[2], int(widths[0]), _conv_fn(conv_grad), rngs)
        w1, w2, w3 = (int(w) for w in widths)
        n = int(blocks_per_stage)
        self.stage1 = _Stage(w1, w1, n, 1, rngs, conv_grad)
        self.stage2 = _Stage(w1, w2, n, 2, rngs, conv_grad)
        self.stage3 = _Stage(w2, w3, n, 2, rngs, conv_grad)
        self.out = _linear(w3, int(num_classes), _TORCH_LINEAR, rngs)

    def __call__(self, x: Array) -> Array:
        _nets._check_input(x, self.input_shape)
        h = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.out(jnp.mean(h, axis=(-3, -2)))
