r"""Post-training pruning of transformers: magnitude, Wanda, SparseGPT, unstructured and N:M.

No retraining: a trained model and a few calibration inputs (e.g. 128 token windows) are enough
(RESEARCH.md §11). :mod:`jaxprune.posttrain.layer` prunes one linear layer from the statistics of
its inputs (pure ``jax.numpy``, ``jit`` / ``vmap``); :mod:`jaxprune.posttrain.model` prunes a whole
model block by block, each block calibrated on the outputs of the already pruned ones.

===============  =====================================================================  ==========
method           score (higher = keep)                                                  update
===============  =====================================================================  ==========
``magnitude``    :math:`|W_{ij}|` (per layer, or per output in :func:`prune`)             none
``wanda``        :math:`|W_{ij}|\,\|X_i\|_2`, per output                                   none
``sparsegpt``    :math:`W_{ij}^2 / [U]_{ii}^2`, :math:`U^\top U = (XX^\top + \lambda I)^{-1}`  OBS
===============  =====================================================================  ==========

Example:
  >>> import jax
  >>> from jaxprune import models, posttrain
  >>> lm = models.build("transformer", input_shape=(8,), num_classes=16, dim=16, depth=1,
  ...                   heads=2, seed=0)
  >>> calib = posttrain.calibration_windows(jax.random.randint(jax.random.key(0), (64,), 0, 16),
  ...                                       4, seed=0, context=8)
  >>> out = posttrain.prune(lm, calib, method="sparsegpt", sparsity=0.5)
  >>> apply_fn = models.functional(out.model)[0]
  >>> apply_fn(out.params, calib).shape, round(max(v["sparsity"] for v in out.layers.values()), 2)
  ((4, 8, 16), 0.5)
"""

from jaxprune.posttrain.layer import SCOPES as SCOPES
from jaxprune.posttrain.layer import Stats as Stats
from jaxprune.posttrain.layer import add_stats as add_stats
from jaxprune.posttrain.layer import input_stats as input_stats
from jaxprune.posttrain.layer import magnitude as magnitude
from jaxprune.posttrain.layer import reconstruction_error as reconstruction_error
from jaxprune.posttrain.layer import sparsegpt as sparsegpt
from jaxprune.posttrain.layer import wanda as wanda
from jaxprune.posttrain.model import METHODS as METHODS
from jaxprune.posttrain.model import Pruned as Pruned
from jaxprune.posttrain.model import calibration_windows as calibration_windows
from jaxprune.posttrain.model import prune as prune

__all__ = [
    "METHODS",
    "SCOPES",
    "Pruned",
    "Stats",
    "add_stats",
    "calibration_windows",
    "input_stats",
    "magnitude",
    "prune",
    "reconstruction_error",
    "sparsegpt",
    "wanda",
]
