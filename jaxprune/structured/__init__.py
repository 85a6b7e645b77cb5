r"""Structured pruning of any model: traced channel groups, group importance, real compaction.

A **channel group** is everything that belongs to one prunable unit and goes away with it: a
filter or neuron of every layer that *produces* it (several, when a residual add couples them),
its bias, batch-norm / layer-norm parameters and running statistics, and the input rows of every
layer that *consumes* it; an attention head (its q, k, v output columns and the output
projection's input rows; a whole kv-group under grouped-query attention); a depthwise conv's
channel together with the channel it filters. :func:`channel_groups` finds them for any NNX
module, and :func:`trace_groups` for any pure ``fn(params, x)``, by reading the traced program
(:mod:`jaxprune.structured.trace`; DepGraph, Fang et al. 2023, RESEARCH §10). Channels the
pruned model could not drop — those that reach the output, are normalised over (LayerNorm),
sliced, padded into or meet the input — are frozen, each frozen producer listed with its reason.

**Importance** (:func:`channel_scores`, :mod:`jaxprune.structured.importance`): L1 / L2 filter
norms (Li et al. 2017), batch-norm :math:`|\gamma|` (Network Slimming, Liu et al. 2017, trained
under :func:`slimming_penalty`), first-order Taylor, FPGM and LAMP, over the first producer,
every producer or every member, reduced (sum / mean / max) and normalised per group. All pure
``jax.numpy``: ``jit`` and ``jit ∘ vmap`` over tickets.

**Selection** (:func:`select_channels`): layerwise or one global ranking, ``min_keep`` per group,
widths rounded to a multiple of ``round_to``. The result is a *keep vector* per group,
``{group name: bool[size]}``; :func:`element_mask` turns it into an element mask over params
for masked training with :mod:`jaxprune.train`.

**Masked vs compacted.** A masked net computes with dense shapes: it is only *theoretically*
cheaper (RESEARCH §5). :func:`compact` slices the kept channels out of every leaf and rebuilds
the model through its own graph (``nnx.split`` / ``nnx.merge``), with standard flax layers'
width attributes updated, and checks that it computes what the masked model does;
:func:`scratch` is the same smaller architecture freshly initialised (Scratch-E / B).

Example — prune half the filters of every prunable layer of your own model, then compact:
  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from jaxprune import structured
  >>> class Net(nnx.Module):
  ...     def __init__(self, rngs):
  ...         self.a, self.b = nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.Conv(3, 8, (1, 1), rngs=rngs)
  ...         self.c = nnx.Conv(16, 8, (3, 3), rngs=rngs)
  ...         self.out = nnx.Linear(8 * 4 * 4, 10, rngs=rngs)
  ...     def __call__(self, x):
  ...         h = jnp.concatenate([nnx.relu(self.a(x)), nnx.relu(self.b(x))], -1)
  ...         h = nnx.relu(self.c(h))
  ...         return self.out(h.reshape(h.shape[0], -1))
  >>> net, x = Net(nnx.Rngs(0)), jnp.ones((1, 4, 4, 3))
  >>> groups = structured.channel_groups(net, x)
  >>> [(g.name, g.size) for g in groups]
  [('a', 8), ('b', 8), ('c', 8)]
  >>> params = nnx.state(net, nnx.Param)
  >>> keep = structured.select_channels(structured.channel_scores(params, groups, "l1"), 0.5)
  >>> small = structured.compact(net, keep, x=x)
  >>> small.model.c.kernel.shape, small.model.out.kernel.shape
  ((3, 3, 8, 4), (64, 10))
"""

from jaxprune.structured._groups import (
    ChannelGroup,
    KeepVectors,
    Slice,
    compacted_param_count,
    element_mask,
    member_values,
    slice_tree,
)
from jaxprune.structured.compact import Compacted, compact, scratch
from jaxprune.structured.importance import (
    CRITERIA,
    NORMALIZATIONS,
    OVER,
    REDUCTIONS,
    channel_scores,
    select_channels,
    slimming_penalty,
)
from jaxprune.structured.trace import (
    UNSUPPORTED,
    ChannelGraph,
    channel_groups,
    trace_groups,
    trace_model,
)

__all__ = [
    "CRITERIA",
    "NORMALIZATIONS",
    "OVER",
    "REDUCTIONS",
    "UNSUPPORTED",
    "ChannelGraph",
    "ChannelGroup",
    "Compacted",
    "KeepVectors",
    "Slice",
    "channel_groups",
    "channel_scores",
    "compact",
    "compacted_param_count",
    "element_mask",
    "member_values",
    "scratch",
    "select_channels",
    "slice_tree",
    "slimming_penalty",
    "trace_groups",
    "trace_model",
]
