"""Sparse training in any training loop: gradual pruning, SET, RigL, STE / SR-STE; uniform, ER and ERK
allocation; unstructured, N:M and block patterns — pure, vmappable over tickets, drop-in.

* :mod:`~jaxprune.sparse_training.allocation` — per-layer counts at a global sparsity;
* :mod:`~jaxprune.sparse_training.patterns` — unstructured / N:M / block patterns and selection;
* :mod:`~jaxprune.sparse_training.core` — the methods, :class:`SparseState`, ``init`` / ``update``
  and the optax pieces (:func:`keep_zero`, :func:`reset_moments`);
* :mod:`~jaxprune.sparse_training.steps` — the engine runs them: :func:`make_steps` (steps for
  :func:`jaxprune.train.fit`) and :func:`train_tickets` (sparsities × seeds as one vmapped fit);
* :mod:`~jaxprune.sparse_training.flops` — training FLOPs per method, the RigL paper's accounting
  (:func:`training_flops`).
"""

from jaxprune.sparse_training.allocation import ALLOCATIONS as ALLOCATIONS
from jaxprune.sparse_training.allocation import layer_counts as layer_counts
from jaxprune.sparse_training.allocation import layer_densities as layer_densities
from jaxprune.sparse_training.core import INIT_MASKS as INIT_MASKS
from jaxprune.sparse_training.core import METHODS as METHODS
from jaxprune.sparse_training.core import Method as Method
from jaxprune.sparse_training.core import SparseState as SparseState
from jaxprune.sparse_training.core import apply as apply
from jaxprune.sparse_training.core import drop_fraction_at as drop_fraction_at
from jaxprune.sparse_training.core import forward_params as forward_params
from jaxprune.sparse_training.core import gradients as gradients
from jaxprune.sparse_training.core import init as init
from jaxprune.sparse_training.core import is_update_step as is_update_step
from jaxprune.sparse_training.core import keep_zero as keep_zero
from jaxprune.sparse_training.core import method as method
from jaxprune.sparse_training.core import metrics as metrics
from jaxprune.sparse_training.core import reset_moments as reset_moments
from jaxprune.sparse_training.core import target_sparsity as target_sparsity
from jaxprune.sparse_training.core import update as update
from jaxprune.sparse_training.flops import sparse_flops as sparse_flops
from jaxprune.sparse_training.flops import training_flops as training_flops
from jaxprune.sparse_training.patterns import Pattern as Pattern
from jaxprune.sparse_training.patterns import check_pattern as check_pattern
from jaxprune.sparse_training.patterns import drop_count as drop_count
from jaxprune.sparse_training.patterns import pattern as pattern
from jaxprune.sparse_training.steps import SparseRun as SparseRun
from jaxprune.sparse_training.steps import SparseSteps as SparseSteps
from jaxprune.sparse_training.steps import make_steps as make_steps
from jaxprune.sparse_training.steps import train_tickets as train_tickets

__all__ = [
    "ALLOCATIONS",
    "INIT_MASKS",
    "METHODS",
    "Method",
    "Pattern",
    "SparseRun",
    "SparseState",
    "SparseSteps",
    "apply",
    "check_pattern",
    "drop_count",
    "drop_fraction_at",
    "forward_params",
    "gradients",
    "init",
    "is_update_step",
    "keep_zero",
    "layer_counts",
    "layer_densities",
    "make_steps",
    "method",
    "metrics",
    "pattern",
    "reset_moments",
    "sparse_flops",
    "target_sparsity",
    "train_tickets",
    "training_flops",
    "update",
]
