"""Models of the lottery-ticket papers (Flax NNX), by name, and their pure functional form.

======================  ==========================================================================
name                    architecture (ReLU everywhere, Glorot-normal kernels, zero biases, no BN)
======================  ==========================================================================
``lenet300_100``        flatten → 300 → 100 → classes
``conv2``               conv 64, 64, pool → 256, 256 → classes
``conv4``               conv 64, 64, pool, 128, 128, pool → 256, 256 → classes
``conv6``               conv 64, 64, pool, 128, 128, pool, 256, 256, pool → 256, 256 → classes
``mlp``                 flatten → ``hidden`` (default 32) → classes: small, for tests
======================  ==========================================================================

Convolutions are 3×3 with SAME padding, pools 2×2 with stride 2; inputs are NHWC batches of any
``input_shape`` the model was built for (8×8×1 digits, 28×28×1 MNIST, 32×32×3 CIFAR; the MLPs take
any shape and flatten it). ``width`` multiplies every hidden width of ``lenet300_100`` and
``conv*`` (paper width 1.0; a narrow conv net, e.g. ``width=0.25``, is what a CPU can train).
On a CPU backend the conv nets compute kernel gradients as im2col matmuls by default
(``conv_grad="auto"``), because XLA:CPU's own kernel-gradient convolution is an order of magnitude
slower inside ``lax.scan`` (see :func:`conv_im2col_grad`); values are the same.

Parameter paths (``jax.tree_util.keystr`` over the params from :func:`functional`), the layers
named so that per-layer rates are regexes ``"conv"``, ``"fc"``, ``"out"``:

* ``lenet300_100`` / ``mlp``: ``['fc1']['kernel'].value``, ``['fc1']['bias'].value``,
  ``['fc2'][…]``, …, ``['out']['kernel'].value``, ``['out']['bias'].value``;
* ``convK``: ``['conv1']['kernel'].value`` (shape ``(3, 3, in, out)``), ``['conv1']['bias'].value``,
  … up to ``['convK']``, then ``['fc1']``, ``['fc2']``, ``['out']`` as above.

Kernels are the only leaves with two or more dimensions, so :mod:`jaxprune.masks`' default rule
(``ndim >= 2``) prunes exactly the kernels and never a bias.

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
from jaxprune.models._conv import conv_im2col_grad as conv_im2col_grad
from jaxprune.models._nets import MLP as MLP
from jaxprune.models._nets import POOL as POOL
from jaxprune.models._nets import ConvNet as ConvNet

__all__ = [
    "MLP",
    "POOL",
    "REGISTRY",
    "ConvNet",
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
]
