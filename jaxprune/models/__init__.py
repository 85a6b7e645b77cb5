"""Models of the pruning papers (Flax NNX), by name, and their pure functional forms.

The lottery-ticket models (ReLU everywhere, Glorot-normal kernels, zero biases, no BN):

======================  ==========================================================================
name                    architecture
======================  ==========================================================================
``lenet300_100``        flatten → 300 → 100 → classes
``conv2``               conv 64, 64, pool → 256, 256 → classes
``conv4``               conv 64, 64, pool, 128, 128, pool → 256, 256 → classes
``conv6``               conv 64, 64, pool, 128, 128, pool, 256, 256, pool → 256, 256 → classes
``mlp``                 flatten → ``hidden`` (default 32) → classes: small, for tests
======================  ==========================================================================

The structured-pruning models, with batch norm (conv → BN → ReLU, He-normal convs without bias;
see :mod:`jaxprune.models._cifar` for the reference codes, init, shortcuts and layer names):

======================  ==========================================================================
``vgg11``               convs 64, M, 128, M, 256×2, M, 512×2, M, 512×2 → avg pool → classes
``vgg16``               convs 64×2, M, 128×2, M, 256×3, M, 512×3, M, 512×3 → avg pool → 512 →
                        BN → classes (Li et al. 2017), 15.0M params on CIFAR-10
``vgg19``               convs 64×2, M, 128×2, M, 256×4, M, 512×4, M, 512×4 → avg pool → classes
                        (Network Slimming), 20.0M params
``vgg16_a``             Li et al.'s pruned VGG-16 "A": convs 32, 64, M, 128×2, M, 256×3, M,
                        256×3, M, 256×3, classifier as ``vgg16``; 5.4M params
``resnet20``            He et al.'s CIFAR ResNet, 3 stages × 3 basic blocks of 16/32/64 channels,
                        option-A (zero-padding) shortcuts; 0.27M params
``resnet56``            the same with 9 blocks a stage; 0.85M params
======================  ==========================================================================

The transformers (pre-norm blocks of ``nnx.Linear`` query / key / value / proj and an MLP
fc1 [gate] fc2; see :mod:`jaxprune.models._transformer`), with the protocol ``embed_inputs`` /
``blocks`` / ``readout`` of :mod:`jaxprune.posttrain`:

======================  ==========================================================================
``transformer``         decoder-only LM on token windows, ``input_shape=(context,)``,
                        ``num_classes`` = vocabulary: embeddings (+ learned positions or rope) →
                        ``depth`` causal blocks (default dim 128, depth 4, 4 heads, GELU MLP ×4)
                        → norm → logits ``(B, T, vocab)``
``vit``                 images NHWC → p×p patches (default 2) → + positions → ``depth`` blocks
                        (default dim 64, depth 2, 4 heads, MLP ×2) → norm → mean → classes
======================  ==========================================================================

Both take ``kv_heads`` (grouped-query attention), ``mlp="gelu"|"swiglu"``, ``norm="layer"|"rms"``.
Their token / position embeddings are 2-D leaves, so :mod:`jaxprune.masks`' default rule prunes
them too; pass ``prunable="kernel"`` (a regex over param paths) to prune only the weight
matrices.

Convolutions are 3×3 with SAME padding, pools 2×2 with stride 2; inputs are NHWC batches of any
``input_shape`` the model was built for (8×8×1 digits, 28×28×1 MNIST, 32×32×3 CIFAR; the MLPs take
any shape and flatten it). ``width`` multiplies every hidden width of every model but ``mlp``
(paper width 1.0; a narrow conv net, e.g. ``width=0.25``, is what a CPU can train).
On a CPU backend the conv nets compute kernel gradients as im2col matmuls by default
(``conv_grad="auto"``), because XLA:CPU's own kernel-gradient convolution is an order of magnitude
slower inside ``lax.scan`` (see :func:`conv_im2col_grad`); values are the same.

Parameter paths (``jax.tree_util.keystr`` over the params from :func:`functional`), the layers
named so that per-layer rates are regexes ``"conv"``, ``"fc"``, ``"out"``:

* ``lenet300_100`` / ``mlp``: ``['fc1']['kernel'].value``, ``['fc1']['bias'].value``,
  ``['fc2'][…]``, …, ``['out']['kernel'].value``, ``['out']['bias'].value``;
* ``convK``: ``['conv1']['kernel'].value`` (shape ``(3, 3, in, out)``), ``['conv1']['bias'].value``,
  … up to ``['convK']``, then ``['fc1']``, ``['fc2']``, ``['out']`` as above;
* ``vgg*``: ``['conv1']['kernel'].value`` (no conv bias), ``['bn1']['scale'].value``,
  ``['bn1']['bias'].value``, …, then ``['out']`` (``vgg16*``: ``['fc1']``, ``['bn_fc1']``,
  ``['out']``);
* ``resnet*``: ``['stem']['conv']``, ``['stem']['bn']``, ``['stage1']['block0']['conv1']``,
  ``[…]['bn1']``, ``[…]['conv2']``, ``[…]['bn2']``, … ``['stage3']['block{n-1}']``, ``['out']``.

Kernels are the only leaves with two or more dimensions, so :mod:`jaxprune.masks`' default rule
(``ndim >= 2``) prunes exactly the kernels and never a bias or a batch-norm scale or bias.

Two pure forms. :func:`functional` gives ``apply_fn(params, x) -> logits`` for models without batch
norm. :func:`stateful` works for every model and gives ``apply_fn(params, model_state, x, *,
train) -> (logits, new_model_state)``, ``model_state`` being the batch-norm running statistics
(``['bn1']['mean'].value``, ``['bn1']['var'].value``, …): batch statistics and updated running
averages with ``train=True``, the running averages with ``train=False``. Pass it to
:func:`jaxprune.train.make_steps` with ``stateful=True``.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import models
  >>> net = models.build("lenet300_100", input_shape=(8, 8, 1), num_classes=10, seed=0)
  >>> apply_fn, params, _ = models.functional(net)
  >>> [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]][:2]
  ["['fc1']['bias'].value", "['fc1']['kernel'].value"]
  >>> models.param_count(params), apply_fn(params, jnp.zeros((5, 8, 8, 1))).shape
  (50610, (5, 10))
"""

from jaxprune.models._api import REGISTRY as REGISTRY
from jaxprune.models._api import VGG_PLANS as VGG_PLANS
from jaxprune.models._api import StatefulApplyFn as StatefulApplyFn
from jaxprune.models._api import build as build
from jaxprune.models._api import conv2 as conv2
from jaxprune.models._api import conv4 as conv4
from jaxprune.models._api import conv6 as conv6
from jaxprune.models._api import functional as functional
from jaxprune.models._api import instantiate as instantiate
from jaxprune.models._api import lenet300_100 as lenet300_100
from jaxprune.models._api import mlp as mlp
from jaxprune.models._api import names as names
from jaxprune.models._api import param_count as param_count
from jaxprune.models._api import resnet20 as resnet20
from jaxprune.models._api import resnet56 as resnet56
from jaxprune.models._api import stateful as stateful
from jaxprune.models._api import transformer as transformer
from jaxprune.models._api import vgg11 as vgg11
from jaxprune.models._api import vgg16 as vgg16
from jaxprune.models._api import vgg16_a as vgg16_a
from jaxprune.models._api import vgg19 as vgg19
from jaxprune.models._api import vit as vit
from jaxprune.models._cifar import VGG as VGG
from jaxprune.models._cifar import BasicBlock as BasicBlock
from jaxprune.models._cifar import ResNet as ResNet
from jaxprune.models._conv import conv_im2col_grad as conv_im2col_grad
from jaxprune.models._init import Law as Law
from jaxprune.models._init import with_laws as with_laws
from jaxprune.models._nets import MLP as MLP
from jaxprune.models._nets import POOL as POOL
from jaxprune.models._nets import ConvNet as ConvNet
from jaxprune.models._transformer import Block as Block
from jaxprune.models._transformer import Transformer as Transformer
from jaxprune.models._transformer import ViT as ViT

__all__ = [
    "MLP",
    "POOL",
    "REGISTRY",
    "VGG",
    "VGG_PLANS",
    "BasicBlock",
    "Block",
    "ConvNet",
    "Law",
    "ResNet",
    "StatefulApplyFn",
    "Transformer",
    "ViT",
    "build",
    "conv2",
    "conv4",
    "conv6",
    "conv_im2col_grad",
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
    "with_laws",
]
