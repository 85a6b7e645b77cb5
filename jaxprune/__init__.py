"""jaxprune: neural-network pruning research in JAX — pure mask pytrees, many tickets at once.

The pruning core imports jax and numpy only:

* :mod:`jaxprune.masks` — bool mask pytrees, density, packing, mask comparisons;
* :mod:`jaxprune.criteria` — the Deconstructing-Lottery-Tickets mask criteria, by name;
* :mod:`jaxprune.select` — exact layerwise / global / structured / N:M selection;
* :mod:`jaxprune.saliency` — model-aware scores (OBD, SNIP, GraSP, Taylor, SynFlow) from a pure
  ``apply_fn(params, x)``;
* :mod:`jaxprune.hessian` — Hessian diagonals of a loss (exact, Hutchinson, Gauss-Newton), for OBD;
* :mod:`jaxprune.reset` — kept-weight resets and pruned-weight values;
* :mod:`jaxprune.metrics` — params and FLOPs per layer, compression ratio, theoretical speedup;
* :mod:`jaxprune.posttrain` — post-training pruning of transformers from calibration inputs
  (magnitude, Wanda, SparseGPT; unstructured and N:M), layer by layer and block by block;
* :mod:`jaxprune.schedules` — sparsity as a function of round or step;
* :mod:`jaxprune.sparse_training` — gradual, static, SET, RigL and STE sparse training in any
  training loop (an optax wrapper, a pure state and update);
* :mod:`jaxprune.structured` — channel groups, filter / BN-scale scores and compaction into a
  smaller model (flax is imported only when a model is read or built);
* :mod:`jaxprune.transfer` — ticket transfer between tasks: transplant a ticket onto a target
  network (fresh output layer), random masks at the same per-layer counts;
* :mod:`jaxprune.wann` — weight-agnostic network search (Gaier & Ha 2019): shared-weight
  evaluation of a population in one program, mutations, Pareto ranking, a resumable search.
"""

from jaxprune import criteria as criteria
from jaxprune import hessian as hessian
from jaxprune import masks as masks
from jaxprune import metrics as metrics
from jaxprune import posttrain as posttrain
from jaxprune import reset as reset
from jaxprune import saliency as saliency
from jaxprune import schedules as schedules
from jaxprune import select as select
from jaxprune import sparse_training as sparse_training
from jaxprune import structured as structured
from jaxprune import transfer as transfer
from jaxprune import wann as wann

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "criteria",
    "hessian",
    "masks",
    "metrics",
    "posttrain",
    "reset",
    "saliency",
    "schedules",
    "select",
    "sparse_training",
    "structured",
    "transfer",
    "wann",
]
