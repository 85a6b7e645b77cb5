r"""Group importance and selection: one score per channel of every group, and keep vectors.

A channel of a :class:`~jaxprune.structured.ChannelGroup` owns a slice of several leaves (its
producers' filters, their biases, norm parameters, its consumers' input rows). Every score here
starts from the same rows: for a slice :math:`s`, :func:`~jaxprune.structured.member_values`
gives :math:`R^{(s)} \in \mathbb{R}^{C \times m}`, row :math:`k` = every entry channel
:math:`k` owns. A criterion turns the rows of one slice into a member score
:math:`s^{(s)}_k`:

.. math::

   \text{l1:}\ \sum_i |R_{ki}| \quad \text{(Li et al. 2017)} \qquad
   \text{l2:}\ \Big(\sum_i R_{ki}^2\Big)^{1/2} \qquad
   \text{bn:}\ |\gamma_k| \quad \text{(Liu et al. 2017, Network Slimming)}

   \text{taylor:}\ \Big(\sum_i R_{ki}\, G_{ki}\Big)^2 \quad
   \text{(Molchanov et al. 2019; } G = \text{the gradient's rows)}

   \text{fpgm:}\ \sum_{j} \|R_{k\cdot} - R_{j\cdot}\|_2 \quad
   \text{(He et al. 2019: a filter near the geometric median is redundant, scores low)}

   \text{lamp:}\ \frac{u_k}{\sum_{j:\, u_j \ge u_k} u_j},\ u_k = \sum_i R_{ki}^2 \quad
   \text{(Lee et al. 2021; equal } u \text{: the lower index ranks first, a stable sort)}

``over`` chooses the slices: ``"producer"`` (the first producer kernel, the classic filter
score), ``"producers"`` (every producer kernel: all convolutions feeding a residual add) or
``"all"`` (every member and consumer slice in ``params``). The member scores are reduced to one
per channel (``reduction``: sum, mean or max over members) and then, optionally, normalised per
group (``normalize``): :math:`s/\bar s`, :math:`s/\max s`, :math:`s/\sum s` or
:math:`(s - \min s)/(\max s - \min s)` — the group-level importance of DepGraph / Torch-Pruning
(Fang et al. 2023), which makes scores of different layers comparable for a global ranking.

Everything is pure ``jax.numpy`` with static slices: it runs under ``jit`` and ``jit ∘ vmap`` over
stacked tickets (params and grads). :func:`select_channels` turns scores into keep vectors
(layerwise or global, optionally with widths rounded to a multiple of ``round_to``).

Example — residual-style group of two producers, scored over both and normalised:
  >>> import jax.numpy as jnp
  >>> from jaxprune import structured
  >>> a, b = structured.Slice(("a", "kernel"), 1), structured.Slice(("b", "kernel"), 1)
  >>> g = structured.ChannelGroup("a", 2, ("a", "kernel"), (a, b), (), None, producers=(a, b))
  >>> params = {"a": {"kernel": jnp.array([[1.0, -2.0]])}, "b": {"kernel": jnp.array([[3.0, 0.0]])}}
  >>> structured.channel_scores(params, (g,), "l1", over="producers", reduction="sum")
  {'a': Array([4., 2.], dtype=float32)}
  >>> structured.channel_scores(params, (g,), "l1", over="producers", normalize="max")
  {'a': Array([1. , 0.5], dtype=float32)}
  >>> scores = {"a": jnp.arange(16.0), "b": jnp.arange(8.0)}
  >>> keep = structured.select_channels(scores, 0.6, round_to=4)  # keeps 6 → 8, 3 → 4
  >>> [int(k.sum()) for k in keep.values()]
  [8, 4]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxprune import _checks, select
from jaxprune._types import Array, Key, Params, PyTree
from jaxprune.structured._groups import (
    ChannelGroup,
    KeepVectors,
    Path,
    Slice,
    _mismatch,
    get_leaf,
    leaf_dict,
    member_values,
)

if TYPE_CHECKING:  # optax only for annotations: the module must import without it
    import optax

__all__ = [
    "CRITERIA",
    "NORMALIZATIONS",
    "OVER",
    "REDUCTIONS",
    "channel_scores",
    "select_channels",
    "slimming_penalty",
]

CRITERIA = ("l1", "l2", "bn", "taylor", "fpgm", "lamp")
"""Channel score criteria (formulas in the module docstring)."""

OVER = ("producer", "producers", "all")
"""Which slices of a group are scored: the first producer, every producer, or every slice."""

REDUCTIONS = ("sum", "mean", "max")
"""How member scores combine into one score per channel."""

NORMALIZATIONS = ("mean", "max", "sum", "standard")
"""Per-group normalisations of the reduced scores (or ``None``)."""


def channel_scores(
    params: Params,
    groups: tuple[ChannelGroup, ...],
    criterion: str = "l1",
    *,
    grads: Params | None = None,
    over: str = "producer",
    reduction: str = "mean",
    normalize: str | None = None,
) -> dict[str, Array]:
    r"""One score per channel of every group, higher = keep.

    For each slice chosen by ``over``, the criterion scores the slice's rows
    (:func:`~jaxprune.structured.member_values`, row :math:`k` = what channel :math:`k` owns):
    ``"l1"`` :math:`\sum_i |R_{ki}|`, ``"l2"`` :math:`\|R_{k\cdot}\|_2` (Li et al. 2017),
    ``"taylor"`` :math:`(\sum_i R_{ki} G_{ki})^2` with :math:`G` the same rows of ``grads``
    (Molchanov et al. 2019), ``"fpgm"`` :math:`\sum_j \|R_{k\cdot} - R_{j\cdot}\|_2` (He et al.
    2019), ``"lamp"`` :math:`u_k / \sum_{j: u_j \ge u_k} u_j` with :math:`u_k = \|R_{k\cdot}\|_2^2`
    (Lee et al. 2021); ``"bn"`` is :math:`|\gamma_k|` of the group's batch norm (Liu et al. 2017;
    a group without one is a ``ValueError``). The member scores are combined by ``reduction``
    and the result normalised per group by ``normalize`` (Fang et al. 2023); a division by 0
    (an all-zero group) gives 0. Works under ``jit`` and ``jit ∘ vmap`` over tickets.

    Args:
      params: the model's params pytree.
      groups: from :func:`~jaxprune.structured.channel_groups` (or made by hand).
      criterion: one of :data:`CRITERIA`.
      grads: gradients of the loss with the structure of ``params``; needed by ``"taylor"``
        (ignored by the other criteria).
      over: ``"producer"`` (default: the first producer kernel's output slice, or ``kernel``
        along its last axis in a hand-made group), ``"producers"`` (every producer kernel, e.g.
        all convolutions feeding one residual add) or ``"all"`` (every member and consumer
        slice whose leaf is in ``params`` and has ``ndim >= 1``; batch-norm running statistics
        are model state, not params, so they are not scored). Irrelevant for ``"bn"``.
      reduction: ``"sum"``, ``"mean"`` (default) or ``"max"`` over the members.
      normalize: ``None`` (default), ``"mean"`` (:math:`s/\bar s`), ``"max"`` (:math:`s/\max s`),
        ``"sum"`` (:math:`s/\sum s`) or ``"standard"`` (:math:`(s-\min s)/(\max s-\min s)`).

    Returns:
      ``{group name: float32[size]}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import structured
      >>> g = structured.ChannelGroup("fc1", 2, ("fc1", "kernel"), (), (), None)
      >>> params = {"fc1": {"kernel": jnp.array([[1.0, -2.0], [3.0, 0.5]])}}
      >>> structured.channel_scores(params, (g,))
      {'fc1': Array([4. , 2.5], dtype=float32)}
      >>> grads = {"fc1": {"kernel": jnp.array([[1.0, 1.0], [1.0, -2.0]])}}
      >>> structured.channel_scores(params, (g,), "taylor", grads=grads)  # (1+3)², (-2-1)²
      {'fc1': Array([16.,  9.], dtype=float32)}
    """
    _checks.check_choice(criterion, CRITERIA, name="criterion")
    _checks.check_choice(over, OVER, name="over")
    _checks.check_choice(reduction, REDUCTIONS, name="reduction")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ValueError(
            f"unknown normalize {normalize!r}; expected None or one of: "
            f"{', '.join(sorted(NORMALIZATIONS))}."
        )
    leaves = leaf_dict(params)
    if criterion == "bn":
        missing = [g.name for g in groups if g.bn_scale is None]
        if missing:
            raise ValueError(
                f"criterion='bn' needs a batch norm after every group, but {missing} have none; "
                "use criterion='l1' or 'l2' for models without batch norm."
            )
        return {
            g.name: _normalized(
                jnp.abs(jnp.asarray(get_leaf(leaves, g.bn_scale, "params"), jnp.float32)),  # type: ignore[arg-type]
                normalize,
            )
            for g in groups
        }
    grad_leaves: dict[Path, Any] = {}
    if criterion == "taylor":
        _checks.require(
            grads, name="grads", why="by criterion='taylor' (loss gradients shaped like params)"
        )
        _checks.check_like(grads, params, name="grads")
        grad_leaves = leaf_dict(grads)
    out = {}
    for g in groups:
        members = []
        for s in _scored_slices(g, over, leaves):
            rows = member_values(get_leaf(leaves, s.path, "params"), s, g.size)
            grad_rows = (
                member_values(grad_leaves[s.path], s, g.size) if criterion == "taylor" else None
            )
            members.append(_member_score(criterion, rows.astype(jnp.float32), grad_rows))
        out[g.name] = _normalized(_reduced(members, reduction), normalize)
    return out


def _scored_slices(g: ChannelGroup, over: str, leaves: Mapping[Path, Any]) -> tuple[Slice, ...]:
    """The slices of ``g`` that ``over`` names (the first producer always among them)."""
    first = g.producers[0] if g.producers else Slice(g.kernel, -1)
    if over == "producer":
        return (first,)
    if over == "producers":
        return g.producers or (first,)
    get_leaf(leaves, first.path, "params")  # groups of another model: say so, don't skip all
    return tuple(
        s for s in (*g.members, *g.consumers) if s.path in leaves and jnp.ndim(leaves[s.path]) >= 1
    )


def _member_score(criterion: str, rows: Array, grad_rows: Array | None) -> Array:
    """One member's score per channel from its rows ``float[size, m]``."""
    if criterion == "l1":
        return jnp.abs(rows).sum(axis=1)
    if criterion == "l2":
        return jnp.sqrt((rows * rows).sum(axis=1))
    if criterion == "taylor":
        assert grad_rows is not None
        return jnp.square((rows * grad_rows.astype(jnp.float32)).sum(axis=1))
    if criterion == "fpgm":
        return _fpgm(rows)
    return _lamp((rows * rows).sum(axis=1))


def _fpgm(rows: Array) -> Array:
    r""":math:`\sum_j \|r_k - r_j\|_2` from one Gram matrix (no ``size² · m`` difference tensor).

    The rows are centred first (distances do not change) so that :math:`\|a\|^2 + \|b\|^2 -
    2 a \cdot b` cancels less; the matmul runs at full float32 precision (accelerators default to
    bfloat16 passes), and the diagonal is exactly 0.
    """
    c = rows - rows.mean(axis=0, keepdims=True)
    sq = (c * c).sum(axis=1)
    gram = jnp.matmul(c, c.T, precision=lax.Precision.HIGHEST)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    off_diagonal = ~np.eye(rows.shape[0], dtype=bool)
    return jnp.where(off_diagonal, jnp.sqrt(d2), 0.0).sum(axis=1)


def _lamp(u: Array) -> Array:
    r""":math:`u_k / \sum_{j: u_j \ge u_k} u_j`: one stable ascending sort, tail sums, scatter back."""
    ranked, order = lax.sort((u, lax.iota(jnp.int32, u.shape[0])), num_keys=1, is_stable=True)
    tail = lax.cumsum(ranked, reverse=True)
    return jnp.zeros_like(u).at[order].set(_safe_divide(ranked, tail))


def _reduced(members: list[Array], reduction: str) -> Array:
    if len(members) == 1:
        return members[0]
    stacked = jnp.stack(members)
    if reduction == "sum":
        return stacked.sum(axis=0)
    if reduction == "mean":
        return stacked.mean(axis=0)
    return stacked.max(axis=0)


def _safe_divide(a: Array, d: Array) -> Array:
    """``a / d``, and 0 where ``d`` is 0 (scores are >= 0, so ``d`` is never negative)."""
    ok = d > 0
    return jnp.where(ok, a / jnp.where(ok, d, 1.0), 0.0)


def _normalized(s: Array, normalize: str | None) -> Array:
    if normalize is None:
        return s
    if normalize == "standard":
        return _safe_divide(s - s.min(), s.max() - s.min())
    if normalize == "mean":
        return _safe_divide(s, s.mean())
    if normalize == "max":
        return _safe_divide(s, s.max())
    return _safe_divide(s, s.sum())


class SlimmingState(NamedTuple):
    """State of :func:`slimming_penalty`: none."""


def slimming_penalty(
    strength: float = 1e-4, *, pattern: str = r"\['scale'\]"
) -> optax.GradientTransformation:
    r"""Network Slimming's sparsity subgradient on BN scales, to chain before the optimizer.

    .. math:: g_\gamma \leftarrow g_\gamma + s\,\mathrm{sign}(\gamma)

    the subgradient of :math:`s \sum |\gamma|` (``s = 1e-4`` for VGG-19 in Liu et al. 2017,
    ``1e-5`` for ResNet). Applied to every leaf whose ``jax.tree_util.keystr`` path matches
    ``pattern`` (default: every batch-norm ``scale``); other gradients pass unchanged.
    ``update`` needs ``params`` (the sign is the weight's, not the gradient's).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jaxprune import structured
      >>> opt = optax.chain(structured.slimming_penalty(0.1), optax.sgd(1.0))
      >>> params = {"bn": {"scale": jnp.array([2.0, -3.0, 0.0])}, "w": jnp.array([1.0])}
      >>> grads = {"bn": {"scale": jnp.zeros(3)}, "w": jnp.array([0.5])}
      >>> updates, _ = opt.update(grads, opt.init(params), params)
      >>> updates["bn"]["scale"], updates["w"]
      (Array([-0.1,  0.1, -0. ], dtype=float32), Array([-0.5], dtype=float32))
    """
    import optax

    if not (isinstance(strength, int | float) and math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}.")
    regex = re.compile(pattern)

    def init(params: Params) -> SlimmingState:
        del params
        return SlimmingState()

    def update(
        updates: PyTree, state: SlimmingState, params: Params | None = None
    ) -> tuple[PyTree, SlimmingState]:
        if params is None:
            raise ValueError(
                "slimming_penalty needs params (sign of γ): call update(grads, state, params)."
            )

        def add(path: Any, g: Array, p: Array) -> Array:
            if regex.search(jax.tree_util.keystr(path)):
                return g + jnp.asarray(strength, g.dtype) * jnp.sign(p).astype(g.dtype)
            return g

        return jax.tree_util.tree_map_with_path(add, updates, params), state

    return optax.GradientTransformation(init, update)


def select_channels(
    scores: Mapping[str, ArrayLike],
    rate: ArrayLike | Mapping[str, ArrayLike],
    *,
    scope: select.Scope = "layerwise",
    min_keep: int = 1,
    keep: Mapping[str, ArrayLike] | None = None,
    key: Key | None = None,
    round_to: int = 1,
) -> KeepVectors:
    r"""Keep vectors: prune a fraction ``rate`` of the remaining channels, lowest scores first.

    ``scope="layerwise"``: per group, keep :math:`\max(r - \lfloor p r + \frac12\rfloor,
    \text{min\_keep})` of its ``r`` remaining channels (``rate`` a scalar or ``{name: rate}``;
    a rate of 0 leaves a group alone). ``"global"``: one ranking over all groups (``rate`` a
    scalar: 0.7 = Network Slimming's 70% percentile), each group's best ``min_keep`` reserved
    first so that no layer is emptied. Exact counts, ties by lower index (or ``key``); built on
    :func:`jaxprune.select.prune`, so it runs under ``jit`` with ``rate`` traced.

    ``round_to=q`` (hardware-friendly widths): each group's count :math:`k` from the rule above
    becomes :math:`k' = \min(C, \max(q \lceil \text{min\_keep}/q \rceil,
    q \lfloor k/q + \frac12 \rfloor))` for a group of :math:`C` channels (a multiple of
    :math:`q` unless fewer channels remain), and the group keeps its :math:`k'` best remaining
    channels (:func:`jaxprune.select.keep_top_k` with a traced count); a group that the rule
    leaves whole (:math:`k` = its remaining channels) stays whole. Under ``"global"`` the total
    then differs from the rate's by the rounding.

    Args:
      scores: ``{group name: float[size]}``, e.g. :func:`channel_scores`.
      rate: fraction in [0, 1) of the remaining channels to prune.
      scope: ``"layerwise"`` or ``"global"``.
      min_keep: channels always kept per group (default 1; must be >= 1).
      keep: current keep vectors (default: all kept); pruned channels stay pruned.
      key: optional PRNG key to break ties at random.
      round_to: round each group's kept count to a multiple of this (default 1: exact counts).

    Returns:
      ``{group name: bool[size]}``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import structured
      >>> s = {"a": jnp.array([5.0, 6.0, 7.0]), "b": jnp.array([0.1, 0.2])}
      >>> k = structured.select_channels(s, 0.4, scope="global")  # 2 of 5 go; b keeps its best
      >>> k["a"], k["b"]
      (Array([False,  True,  True], dtype=bool), Array([False,  True], dtype=bool))
      >>> k = structured.select_channels(s, 0.4, round_to=2)  # a: 2 kept → 2; b: 1 → 2
      >>> k["a"], k["b"]
      (Array([False,  True,  True], dtype=bool), Array([ True,  True], dtype=bool))
    """
    _checks.check_positive_int(round_to, name="round_to")
    if not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(
            f"min_keep must be an int >= 1 (a layer is never emptied), got {min_keep!r}."
        )
    arrays: dict[str, Array] = {n: jnp.asarray(s) for n, s in scores.items()}
    for n, s in arrays.items():
        if s.ndim != 1:
            raise ValueError(
                f"scores[{n!r}] must be 1-D (one score per channel), got shape {s.shape}."
            )
    current = (
        {n: jnp.ones(s.shape, bool) for n, s in arrays.items()}
        if keep is None
        else {n: jnp.asarray(keep[n], bool) for n in arrays}
        if set(keep) == set(arrays)
        else _mismatch(keep, arrays)
    )
    rates = dict(rate) if isinstance(rate, Mapping) else rate
    if isinstance(rates, dict) and set(rates) != set(arrays):
        _mismatch(rates, arrays, name="rate")
    flags = dict.fromkeys(arrays, True)
    out = select.prune(
        arrays, current, rates, scope=scope, prunable=flags, min_keep=min_keep, key=key
    )
    if round_to == 1:
        return dict(out)
    return _rounded(arrays, current, out, round_to, min_keep, key)


def _rounded(
    scores: Mapping[str, Array],
    current: Mapping[str, Array],
    chosen: Mapping[str, Array],
    q: int,
    min_keep: int,
    key: Key | None,
) -> KeepVectors:
    """Every group's kept count rounded to a multiple of ``q``, then its best channels kept."""
    floor = q * -(-min_keep // q)  # the smallest multiple of q >= min_keep
    out = {}
    for i, (name, s) in enumerate(sorted(scores.items())):
        k = jnp.sum(chosen[name], dtype=jnp.int32)
        nearest = q * ((2 * k + q) // (2 * q))  # q·floor(k/q + 1/2), in integers
        count = jnp.minimum(s.shape[0], jnp.maximum(floor, nearest))
        # A group the rule leaves whole (rate 0, or a global threshold below all its channels)
        # stays whole: rounding down would prune where nothing was asked.
        count = jnp.where(k == jnp.sum(current[name], dtype=jnp.int32), k, count)
        group_key = None if key is None else jax.random.fold_in(key, i)
        out[name] = select.keep_top_k(s, current[name], count, key=group_key)
    return {name: out[name] for name in scores}
