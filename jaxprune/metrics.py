r"""Parameter and FLOP counts per layer, compression ratio and theoretical speedup (Blalock et al.).

Blalock et al. (2020) ask for two numbers at every operating point, because they differ:

* **compression ratio** :math:`= \sum_\ell n_\ell / \sum_\ell |M_\ell|_1`, all params over kept
  params (:func:`compression_ratio`);
* **theoretical speedup** :math:`= F_{dense} / F_{remaining}`, dense FLOPs over the FLOPs that
  remain after pruning (:func:`theoretical_speedup`).

For language models, :func:`perplexity` gives the exponential of the mean next-token
cross-entropy on a split of token windows.

**What is counted.** FLOPs are counted on the program itself: ``jax.make_jaxpr(apply_fn)`` on
``params`` and one example ``x`` of shape ``(1, *input_shape)``, walking into every sub-program
(``jit``, ``custom_jvp``/``custom_vjp``, ``checkpoint``, ``scan``…). Only the multiply-accumulates
(MACs) of ``dot_general`` (dense layers, ``einsum``, ``@``) and ``conv_general_dilated`` are
counted:

* ``dot_general``: :math:`\text{MACs} = |\text{out}| \cdot \prod \text{contracted dims}`;
* ``conv_general_dilated``: :math:`\text{MACs} = |\text{out}| \cdot k_h k_w \cdot C_{in} / G`
  (the kernel's size over its output features; ``G`` the feature groups), i.e.
  :math:`H_{out} W_{out} C_{out} k_h k_w C_{in} / G` per example. Products with padding zeros
  count, as in every published count.

**Convention: FLOPs = 2 × MACs** (a multiply and an add). Both are given (``macs`` / ``flops``);
CNN papers often print MACs under the name "FLOPs" — compare like with like. Bias adds,
activations, batch norm, pooling and other elementwise work are *not* counted: they are a few
percent of the total for these models, and pruning a kernel does not remove them.

**Per-layer attribution.** Each counted op is charged to the parameter leaf its weight operand is
computed from — through reshapes, dtype casts, transposes, broadcasts, masking (``w * m``,
``where(m, w, 0)``) or any other op that does not involve the input. Keys are the leaf paths of
``jax.tree_util.keystr``, as in :func:`jaxprune.masks.layer_density` (e.g.
``"['fc1']['kernel'].value"`` for an NNX model). An op with no param behind it (an
activation × activation product, or a constant kernel) is charged to :data:`NO_PARAM`. A weight
computed from several leaves (weight norm :math:`g \cdot v/\|v\|`, a merged low-rank update) is
charged to the largest of them.

**Masked counts.** Under an unstructured mask a layer keeps its dense count times the density of
its kernel mask, :math:`F_\ell \cdot |M_\ell|_1 / n_\ell` — the usual theoretical count, and exact
for structured masks (whole neurons or filters zero) too. It is a *theoretical* count: masked
("mock") sparsity runs as fast as the dense net; only physical compaction (a smaller dense model,
which is just another ``apply_fn`` and params to count) or sparse kernels give a real speedup.

**Scope.** Counts are for one network and one example. Params are read for their shapes and dtypes
only (they may be abstract, ``jax.ShapeDtypeStruct``, or tracers); masks must be concrete. Params
stacked on a leading ticket axis are refused: pass one ticket, ``jax.tree.map(lambda a: a[i],
params)``. A ``while_loop`` (unknown trip count) is refused; a ``scan`` or a ``fori_loop`` with
static bounds counts its body ``length`` times; a ``cond`` counts its most expensive branch.

Example:
  >>> import jax.numpy as jnp
  >>> from jaxprune import metrics
  >>> params = {"fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  >>> apply_fn = lambda p, x: x @ p["fc"]["kernel"] + p["fc"]["bias"][None]
  >>> metrics.layer_macs(apply_fn, params, (4,))  # 4·3
  {"['fc']['kernel']": 12}
  >>> mask = {"fc": {"kernel": jnp.arange(12).reshape(4, 3) < 6, "bias": jnp.ones(3, bool)}}
  >>> metrics.layer_macs(apply_fn, params, (4,), mask=mask)  # 12 · 6/12
  {"['fc']['kernel']": 6.0}
  >>> metrics.compression_ratio(params, mask)  # (12 + 3) / (6 + 3)
  1.6666666666666667
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal
from jax.typing import DTypeLike

from jaxprune import _checks
from jaxprune._types import Array, Mask, Params

__all__ = [
    "NO_PARAM",
    "Report",
    "compression_ratio",
    "layer_flops",
    "layer_macs",
    "layer_params",
    "markdown",
    "perplexity",
    "report",
    "theoretical_speedup",
]

ApplyFn = Callable[[Params, Array], Any]
"""A pure ``apply_fn(params, x)``, ``x`` with a leading batch axis."""

NO_PARAM = "<no param>"
"""Key of the MACs of ops whose weight operand comes from no param (activation × activation, or a
constant kernel)."""

_MAC_PRIMITIVES = ("dot_general", "conv_general_dilated")

# What a value of the traced program is computed from: the indices of the param leaves it
# derives from, and whether it depends on the input x. A value that does not depend on x is
# "weight-like" (a param, a masked or reshaped param, a constant); one that does is an activation.
_Source = tuple[frozenset[int], bool]
_CONSTANT: _Source = (frozenset(), False)
_Charge = frozenset[int] | None  # the param leaves an op is charged to; None: NO_PARAM
_Counts = Counter[_Charge]


def _join(sources: Sequence[_Source]) -> _Source:
    params = frozenset().union(*(s[0] for s in sources))
    return params, any(s[1] for s in sources)


def _subjaxprs(eqn: JaxprEqn) -> list[Jaxpr | ClosedJaxpr]:
    found: list[Jaxpr | ClosedJaxpr] = []
    for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        found.extend(v for v in items if isinstance(v, Jaxpr | ClosedJaxpr))
    return found


def _open(jaxpr: Jaxpr | ClosedJaxpr) -> Jaxpr:
    return jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr


def _has_macs(jaxpr: Jaxpr | ClosedJaxpr) -> bool:
    return any(
        eqn.primitive.name in _MAC_PRIMITIVES or any(_has_macs(s) for s in _subjaxprs(eqn))
        for eqn in _open(jaxpr).eqns
    )


def _eqn_macs(eqn: JaxprEqn) -> int:
    out = math.prod(_shape(eqn.outvars[0].aval))
    if eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs_shape = _shape(eqn.invars[0].aval)
        return out * math.prod(lhs_shape[d] for d in lhs_contract)
    # conv: each output entry sums over the kernel's spatial window and (grouped) input features,
    # i.e. over every kernel axis but the output-feature one.
    rhs_shape = _shape(eqn.invars[1].aval)
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    return out * math.prod(rhs_shape) // rhs_shape[out_feature_dim]


def _charge(lhs: _Source, rhs: _Source) -> _Charge:
    weights = [s for s in (lhs, rhs) if not s[1]]
    if len(weights) == 1:  # activation × weight: a layer
        return weights[0][0] or None
    if len(weights) == 2:  # weight × weight: computing a weight (e.g. a low-rank product)
        return (lhs[0] | rhs[0]) or None
    return None  # activation × activation


def _walk(
    jaxpr: Jaxpr | ClosedJaxpr, inputs: Sequence[_Source], counts: _Counts, times: int
) -> list[_Source]:
    """Add the MACs of ``jaxpr`` (run ``times`` times) to ``counts``; the sources of its outputs."""
    program = _open(jaxpr)
    env: dict[Any, _Source] = dict.fromkeys(program.constvars, _CONSTANT)
    env.update(zip(program.invars, inputs, strict=True))

    def read(v: Any) -> _Source:
        return _CONSTANT if isinstance(v, Literal) else env[v]

    for eqn in program.eqns:
        outs = _eqn(eqn, [read(v) for v in eqn.invars], counts, times)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in program.outvars]


def _eqn(eqn: JaxprEqn, ins: list[_Source], counts: _Counts, times: int) -> list[_Source]:
    name = eqn.primitive.name
    n_out = len(eqn.outvars)
    if name in _MAC_PRIMITIVES:
        counts[_charge(ins[0], ins[1])] += times * _eqn_macs(eqn)
        return [_join(ins)] * n_out
    if name == "scan":
        return _scan(eqn, ins, counts, times)
    if name == "cond":
        return _cond(eqn, ins, counts, times)
    subs = _subjaxprs(eqn)
    if not subs or not any(_has_macs(s) for s in subs):
        return [_join(ins)] * n_out
    if name == "while":
        raise ValueError(
            "apply_fn runs a matmul or conv inside a while_loop, whose trip count is not known "
            "when tracing; FLOPs cannot be counted. Use lax.scan or lax.fori_loop with Python-int "
            "bounds (a scan), whose length is static."
        )
    sub = _open(subs[0])
    if len(subs) == 1 and len(sub.invars) == len(ins) and len(sub.outvars) == n_out:
        return _walk(subs[0], ins, counts, times)  # a call: jit, custom_jvp/vjp, checkpoint, …
    raise ValueError(
        f"apply_fn calls the primitive {name!r}, whose sub-program holds a matmul or conv that "
        "metrics does not know how to count (it handles calls such as jit, custom_jvp, "
        "custom_vjp, checkpoint, and scan and cond)."
    )


def _scan(eqn: JaxprEqn, ins: list[_Source], counts: _Counts, times: int) -> list[_Source]:
    n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    body = eqn.params["jaxpr"]
    consts, carry, xs = (
        ins[:n_consts],
        ins[n_consts : n_consts + n_carry],
        ins[n_consts + n_carry :],
    )
    while True:  # the carry's sources: a fixed point (sources only grow; finitely many)
        outs = _walk(body, [*consts, *carry, *xs], Counter(), 1)
        grown = [_join([c, o]) for c, o in zip(carry, outs[:n_carry], strict=True)]
        if grown == carry:
            break
        carry = grown
    outs = _walk(body, [*consts, *carry, *xs], counts, times * int(eqn.params["length"]))
    return [*carry, *outs[n_carry:]]


def _cond(eqn: JaxprEqn, ins: list[_Source], counts: _Counts, times: int) -> list[_Source]:
    index, operands = ins[0], ins[1:]
    runs = []
    for branch in eqn.params["branches"]:
        branch_counts: _Counts = Counter()
        runs.append((branch_counts, _walk(branch, operands, branch_counts, times)))
    counts.update(max(runs, key=lambda run: sum(run[0].values()))[0])  # an upper bound
    return [_join([index, *column]) for column in zip(*(outs for _, outs in runs), strict=True)]


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(np.shape(leaf))  # reads .shape first: arrays, tracers, ShapeDtypeStructs


def _abstract(leaf: Any) -> jax.ShapeDtypeStruct:
    dtype = getattr(leaf, "dtype", None)
    return jax.ShapeDtypeStruct(_shape(leaf), jnp.result_type(leaf) if dtype is None else dtype)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
    if not shape or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
        raise ValueError(
            "input_shape must be the shape of one example, a non-empty tuple of positive ints "
            f"without the batch axis (e.g. (28, 28, 1)), got {input_shape!r}."
        )
    return tuple(int(d) for d in shape)


def _check_one_example(out: Any, x_shape: tuple[int, ...]) -> None:
    for path, leaf in _checks.leaves_with_paths(out):
        shape = _shape(leaf)
        if shape and shape[0] != 1:
            raise ValueError(
                f"apply_fn(params, x) with x of shape {x_shape} returned output{path} of shape "
                f"{shape}; expected a leading batch axis of 1. metrics counts one network on one "
                "example: if params are stacked on a ticket axis (or apply_fn is vmapped over "
                "tickets), pass one ticket, jax.tree.map(lambda a: a[i], params)."
            )


def _trace_macs(
    apply_fn: ApplyFn, params: Params, input_shape: Sequence[int], dtype: DTypeLike
) -> dict[str, int]:
    x_shape = (1, *_check_input_shape(input_shape))
    flat = _checks.leaves_with_paths(params)
    # Only shapes and dtypes are read, so params may be tracers or ShapeDtypeStructs.
    abstract = jax.tree.map(_abstract, params)
    x = jax.ShapeDtypeStruct(x_shape, dtype)
    try:
        closed, out = jax.make_jaxpr(apply_fn, return_shape=True)(abstract, x)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"apply_fn(params, x) failed on x of shape {x_shape} (one example of input_shape "
            f"{x_shape[1:]}): {err}. If params are stacked on a leading ticket axis, pass one "
            "ticket, jax.tree.map(lambda a: a[i], params): metrics counts one network."
        ) from err
    _check_one_example(out, x_shape)
    sources = [(frozenset([i]), False) for i in range(len(flat))]
    sources += [(frozenset(), True)] * len(jax.tree.leaves(x))
    counts: _Counts = Counter()
    _walk(closed, sources, counts, 1)
    sizes = [math.prod(_shape(leaf)) for _, leaf in flat]
    by_path: Counter[str] = Counter()
    for charge, macs in counts.items():
        if charge is None:
            by_path[NO_PARAM] += macs
        else:  # a weight computed from several leaves: the largest one (first on ties)
            by_path[flat[min(charge, key=lambda i: (-sizes[i], i))][0]] += macs
    order = {path: i for i, (path, _) in enumerate(flat)}
    return {k: by_path[k] for k in sorted(by_path, key=lambda k: order.get(k, len(order)))}


def _check_concrete_mask(mask: Mask, params: Params) -> None:
    mask_shapes = [_shape(m) for m in jax.tree.leaves(mask)]
    param_shapes = [_shape(p) for p in jax.tree.leaves(params)]
    if (
        mask_shapes
        and len(mask_shapes) == len(param_shapes)
        and all(
            len(m) == len(p) + 1 and m[1:] == p
            for m, p in zip(mask_shapes, param_shapes, strict=True)
        )
    ):
        raise ValueError(
            f"mask has a leading axis of {mask_shapes[0][0]} that params lack (first leaf "
            f"{list(mask_shapes[0])} vs {list(param_shapes[0])}): a stack of ticket masks? "
            "metrics counts one network: pass one ticket's mask, jax.tree.map(lambda m: m[i], mask)."
        )
    _checks.check_mask(mask, params)
    for path, leaf in _checks.leaves_with_paths(mask):
        if _checks.is_traced(leaf):
            raise ValueError(
                f"mask{path} is a tracer; counts need the mask's values: call metrics outside "
                "jit / vmap (params may be traced, only their shapes are read)."
            )


def _kept(mask: Mask) -> dict[str, int]:
    return {
        path: int(np.count_nonzero(np.asarray(m))) for path, m in _checks.leaves_with_paths(mask)
    }


def layer_params(params: Params, mask: Mask | None = None) -> dict[str, int]:
    r"""Kept params per leaf: :math:`|M_\ell|_1`, or the leaf's size :math:`n_\ell` without a mask.

    Every leaf is a row, biases and batch-norm scales included. A leaf counts as kept where its
    mask is True; non-prunable leaves have all-True masks (invariant 1), so they count in full.

    Args:
      params: the params pytree of one network (no ticket axis).
      mask: a bool mask with ``params``' structure, or ``None`` (dense: every entry counts).

    Returns:
      ``{path: count}`` in flattening order, paths as ``jax.tree_util.keystr``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics
      >>> params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
      >>> metrics.layer_params(params)
      {"['b']": 3, "['w']": 6}
      >>> metrics.layer_params(params, {"w": jnp.eye(2, 3, dtype=bool), "b": jnp.ones(3, bool)})
      {"['b']": 3, "['w']": 2}
    """
    if mask is None:
        return {path: math.prod(_shape(leaf)) for path, leaf in _checks.leaves_with_paths(params)}
    _check_concrete_mask(mask, params)
    return _kept(mask)


def compression_ratio(params: Params, mask: Mask) -> float:
    r"""Blalock et al.'s compression ratio: all params over kept params.

    .. math:: \text{ratio} = \frac{\sum_\ell n_\ell}{\sum_\ell |M_\ell|_1}

    Biases and other non-prunable leaves are in both sums (their masks are all True), so a net
    whose every kernel is pruned still has a finite ratio. For a compacted model, the ratio is
    the dense model's param count over the compacted one's.

    Args:
      params: the params pytree of one network.
      mask: its bool mask (True = kept).

    Returns:
      The ratio, ``>= 1``; ``inf`` when nothing is kept.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics
      >>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}
      >>> mask = {"w": jnp.eye(4, dtype=bool), "b": jnp.ones(4, bool)}
      >>> metrics.compression_ratio(params, mask)  # (16 + 4) / (4 + 4)
      2.5
    """
    kept = sum(layer_params(params, mask).values())
    total = sum(layer_params(params).values())
    return total / kept if kept else math.inf


def _total(flops: float | Mapping[str, float], name: str) -> float:
    value = sum(flops.values()) if isinstance(flops, Mapping) else flops
    if not isinstance(value, int | float | np.integer | np.floating) or not math.isfinite(value):
        raise ValueError(
            f"{name} must be a finite number or a mapping of per-layer counts, got {flops!r}."
        )
    return float(value)


def theoretical_speedup(
    dense_flops: float | Mapping[str, float], remaining_flops: float | Mapping[str, float]
) -> float:
    r"""Blalock et al.'s theoretical speedup: dense FLOPs over remaining FLOPs.

    .. math:: \text{speedup} = \frac{F_{dense}}{F_{remaining}}

    Pass totals or the per-layer dicts of :func:`layer_flops` / :func:`layer_macs` (they are
    summed); MACs or FLOPs alike, as long as both arguments use the same one. ``remaining`` is a
    masked count (theoretical: masked nets run at dense speed) or the count of a compacted model.

    Args:
      dense_flops: the dense model's count, ``> 0``.
      remaining_flops: the pruned or compacted model's count, ``>= 0``.

    Returns:
      The ratio; ``inf`` when nothing remains.

    Example:
      >>> from jaxprune import metrics
      >>> metrics.theoretical_speedup({"a": 600, "b": 200}, {"a": 150, "b": 50})  # 800 / 200
      4.0
    """
    dense = _total(dense_flops, "dense_flops")
    remaining = _total(remaining_flops, "remaining_flops")
    if dense <= 0:
        raise ValueError(f"dense_flops must be > 0, got {dense}.")
    if remaining < 0:
        raise ValueError(f"remaining_flops must be >= 0, got {remaining}.")
    if remaining > dense:
        raise ValueError(
            f"remaining_flops ({remaining}) exceeds dense_flops ({dense}); were the arguments "
            "swapped, or is one MACs and the other FLOPs?"
        )
    return dense / remaining if remaining else math.inf


def layer_macs(
    apply_fn: ApplyFn,
    params: Params,
    input_shape: Sequence[int],
    *,
    mask: Mask | None = None,
    dtype: DTypeLike = jnp.float32,
) -> dict[str, float]:
    r"""Multiply-accumulates per example of each layer, dense or under a mask.

    Dense: the MACs of every ``dot_general`` and ``conv_general_dilated`` in the trace of
    ``apply_fn(params, x)`` on one example (see the module docstring for the formulas and the
    attribution). Masked: each layer's count times the density of its mask leaf,
    :math:`\text{MACs}_\ell \cdot |M_\ell|_1 / n_\ell`; :data:`NO_PARAM` stays dense.

    Args:
      apply_fn: a pure ``apply_fn(params, x)``, ``x`` with a leading batch axis, e.g. from
        :func:`jaxprune.models.functional`; for batch-norm models wrap
        :func:`jaxprune.models.stateful`: ``lambda p, x: fn(p, model_state, x, train=False)[0]``.
      params: the params of one network (no ticket axis); only shapes and dtypes are read.
      input_shape: the shape of one example, without the batch axis, e.g. ``(28, 28, 1)``.
      mask: an optional bool mask with ``params``' structure (concrete values).
      dtype: dtype of the example ``x``.

    Returns:
      ``{path: MACs}`` for the leaves that feed a matmul or conv (in flattening order), then
      :data:`NO_PARAM` if any op had no param. Ints when dense, floats under a mask.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics, models
      >>> apply_fn, params, _ = models.functional(models.mlp((8, 8, 1), 10, hidden=(16,)))
      >>> metrics.layer_macs(apply_fn, params, (8, 8, 1))  # 64·16, 16·10
      {"['fc1']['kernel'].value": 1024, "['out']['kernel'].value": 160}
    """
    dense = _trace_macs(apply_fn, params, input_shape, dtype)
    return dict(dense) if mask is None else _masked(dense, params, mask)


def _masked(dense: Mapping[str, float], params: Params, mask: Mask) -> dict[str, float]:
    kept, sizes = layer_params(params, mask), layer_params(params)
    return {
        path: float(macs) if path == NO_PARAM else macs * kept[path] / sizes[path]
        for path, macs in dense.items()
    }


def layer_flops(
    apply_fn: ApplyFn,
    params: Params,
    input_shape: Sequence[int],
    *,
    mask: Mask | None = None,
    dtype: DTypeLike = jnp.float32,
) -> dict[str, float]:
    """FLOPs per example of each layer: ``2 ×`` :func:`layer_macs` (a multiply and an add).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics
      >>> metrics.layer_flops(lambda p, x: x @ p["w"], {"w": jnp.ones((5, 2))}, (5,))  # 2·5·2
      {"['w']": 20}
    """
    macs = layer_macs(apply_fn, params, input_shape, mask=mask, dtype=dtype)
    return {path: 2 * m for path, m in macs.items()}


class Report(NamedTuple):
    """Per-layer rows and totals of :func:`report`.

    ``rows``: one dict per param leaf, then a :data:`NO_PARAM` row if any op had no param, with
    ``layer`` (path), ``shape``, ``params`` (size), ``kept``, ``density``, ``macs``,
    ``remaining_macs``, ``flops`` and ``remaining_flops`` (per example; FLOPs = 2 × MACs).
    ``totals``: the sums of those columns, ``density`` (kept / params), ``compression_ratio`` and
    ``theoretical_speedup``.
    """

    rows: list[dict[str, Any]]
    totals: dict[str, Any]


def report(
    apply_fn: ApplyFn,
    params: Params,
    input_shape: Sequence[int],
    mask: Mask | None = None,
    *,
    dtype: DTypeLike = jnp.float32,
) -> Report:
    """Params, MACs and FLOPs per layer, with compression ratio and theoretical speedup.

    Without a mask everything is kept (ratio and speedup 1). Render with :func:`markdown`.

    Args:
      apply_fn, params, input_shape, mask, dtype: as for :func:`layer_macs`.

    Returns:
      A :class:`Report` ``(rows, totals)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import masks, metrics
      >>> params = {"fc1": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
      ...           "out": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
      >>> def apply_fn(p, x):
      ...     h = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"][None])
      ...     return h @ p["out"]["kernel"] + p["out"]["bias"][None]
      >>> mask = masks.ones(params)
      >>> mask["fc1"]["kernel"] = mask["fc1"]["kernel"].at[:2].set(False)  # 2 of 4 inputs
      >>> rows, totals = metrics.report(apply_fn, params, (4,), mask)
      >>> [(r["layer"], r["kept"], r["remaining_macs"]) for r in rows if r["macs"]]
      [("['fc1']['kernel']", 6, 6.0), ("['out']['kernel']", 6, 6.0)]
      >>> totals["macs"], totals["remaining_macs"], totals["theoretical_speedup"]  # 12+6, 6+6
      (18, 12.0, 1.5)
      >>> totals["params"], totals["kept"], totals["compression_ratio"]  # 12+3+6+2, 23-6
      (23, 17, 1.3529411764705883)
    """
    sizes = layer_params(params)
    kept = sizes if mask is None else layer_params(params, mask)
    macs: dict[str, float] = dict(_trace_macs(apply_fn, params, input_shape, dtype))
    remaining = macs if mask is None else _masked(macs, params, mask)
    shapes = {path: _shape(leaf) for path, leaf in _checks.leaves_with_paths(params)}
    rows = []
    for path in [*sizes, *([NO_PARAM] if NO_PARAM in macs else [])]:
        n, k = sizes.get(path, 0), kept.get(path, 0)
        m, r = macs.get(path, 0), remaining.get(path, 0)
        rows.append({
            "layer": path, "shape": shapes.get(path), "params": n, "kept": k,
            "density": k / n if n else None, "macs": m, "remaining_macs": r,
            "flops": 2 * m, "remaining_flops": 2 * r,
        })  # fmt: skip
    total_params, total_kept = sum(sizes.values()), sum(kept.values())
    total_macs, total_remaining = sum(macs.values()), sum(remaining.values())
    totals = {
        "params": total_params,
        "kept": total_kept,
        "density": total_kept / total_params if total_params else None,
        "compression_ratio": total_params / total_kept if total_kept else math.inf,
        "macs": total_macs,
        "remaining_macs": total_remaining,
        "flops": 2 * total_macs,
        "remaining_flops": 2 * total_remaining,
        "theoretical_speedup": (
            theoretical_speedup(total_macs, total_remaining) if total_macs else None
        ),
    }
    return Report(rows, totals)


def _count(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def markdown(result: Report, *, skip_empty: bool = True) -> str:
    """A GitHub-markdown table of a :class:`Report`, with a totals row and the two ratios.

    Args:
      result: what :func:`report` returned.
      skip_empty: leave out the rows of leaves that feed no matmul or conv (biases, norms);
        their params still count in the totals row.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> print(metrics.markdown(metrics.report(lambda p, x: x @ p["w"] + p["b"][None], params, (3,))))
      | layer | shape | params | kept | MACs | remaining MACs |
      |---|---|---:|---:|---:|---:|
      | ['w'] | 3×2 | 6 | 6 | 6 | 6 |
      | total |  | 8 | 8 | 6 | 6 |
      <BLANKLINE>
      Compression ratio 1.00×, theoretical speedup 1.00×; FLOPs (2 × MACs) per example: 12 dense, 12 remaining.
    """
    lines = [
        "| layer | shape | params | kept | MACs | remaining MACs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in result.rows:
        if skip_empty and not row["macs"]:
            continue
        shape = "×".join(map(str, row["shape"])) if row["shape"] is not None else ""
        cells = [
            row["layer"],
            shape,
            *(_count(row[c]) for c in ("params", "kept", "macs", "remaining_macs")),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    t = result.totals
    cells = ["total", "", *(_count(t[c]) for c in ("params", "kept", "macs", "remaining_macs"))]
    lines.append("| " + " | ".join(cells) + " |")
    speedup = t["theoretical_speedup"]
    lines += [
        "",
        f"Compression ratio {t['compression_ratio']:.2f}×, theoretical speedup "
        + (f"{speedup:.2f}×" if speedup is not None else "—")
        + f"; FLOPs (2 × MACs) per example: {_count(t['flops'])} dense, "
        + f"{_count(t['remaining_flops'])} remaining.",
    ]
    return "\n".join(lines)


@functools.partial(jax.jit, static_argnames="apply_fn")
def _summed_nll(apply_fn: ApplyFn, params: Params, x: Array, y: Array, valid: Array) -> Array:
    """Σ −log softmax(apply_fn(params, x))[y] over the tokens of the rows where ``valid``."""
    logits = jnp.asarray(apply_fn(params, x), jnp.float32)
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y)
    rows = jnp.expand_dims(valid, tuple(range(1, nll.ndim)))
    return jnp.sum(jnp.where(rows, nll, 0.0))  # where, not ×: padded rows may hold anything


def perplexity(
    apply_fn: ApplyFn, params: Params, split: tuple[Any, Any], *, batch_size: int = 64
) -> float:
    r"""Perplexity of a language model on next-token windows: exp of the mean token NLL.

    .. math:: \mathrm{PPL} = \exp\Big(-\frac{1}{N}\sum_{i,t}
       \log \mathrm{softmax}\big(f(x_i)_t\big)_{y_{it}}\Big)

    over all :math:`N` target tokens of ``split = (x, y)`` (e.g. ``ds.test`` of
    :func:`jaxprune.data.load_text`; ``y`` of shape ``(n, T)``, logits ``(n, T, V)``; plain
    classification ``y`` of shape ``(n,)`` works too). Uniform logits give :math:`V`, a perfect
    model 1. The windows are run in batches of ``batch_size`` (the last one padded, so one
    program serves every batch), the logits in float32, the sum accumulated in float64.

    Args:
      apply_fn: pure ``apply_fn(params, x) -> logits`` (e.g. ``jaxprune.models.functional``'s),
        hashable (it is a static jit argument).
      params: its params (for a pruned network: the masked params).
      split: ``(x, y)``, ``y`` integer targets in ``[0, V)``.
      batch_size: windows per forward pass.

    Raises:
      ValueError: a bad ``split`` (not a pair, empty, non-integer targets, rows that differ),
        logits whose shape is not ``y``'s plus a vocabulary axis, targets outside ``[0, V)``,
        or a ``batch_size`` that is not a positive int.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import metrics
      >>> apply_fn = lambda p, x: jnp.broadcast_to(p["b"], (*x.shape, 5))  # uniform
      >>> x = jnp.zeros((3, 4), jnp.int32)
      >>> round(metrics.perplexity(apply_fn, {"b": jnp.zeros(5)}, (x, x + 2)), 4)
      5.0
    """
    _checks.check_apply_fn(apply_fn)
    _checks.check_params(params)
    _checks.check_positive_int(batch_size, name="batch_size")
    x, y = _check_targets(split)
    size = min(batch_size, len(y))
    one = jax.ShapeDtypeStruct((size, *x.shape[1:]), x.dtype)
    shape = tuple(jax.eval_shape(apply_fn, params, one).shape)
    if len(shape) != y.ndim + 1 or shape[:-1] != (size, *y.shape[1:]):
        raise ValueError(
            f"apply_fn(params, x) must return logits of shape {[size, *y.shape[1:]]} + [vocab] "
            f"for a batch x of shape {list(one.shape)} (the targets y have shape "
            f"{list(y.shape)}), got {list(shape)}."
        )
    if y.min() < 0 or y.max() >= shape[-1]:
        raise ValueError(
            f"split[1] (y) must hold targets in [0, {shape[-1]}) (the width of the logits), got "
            f"targets from {int(y.min())} to {int(y.max())}."
        )
    sums = []
    for start in range(0, len(y), size):
        xb, yb = x[start : start + size], y[start : start + size]
        pad = size - len(yb)
        valid = np.arange(size) < len(yb)
        xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
        yb = np.concatenate([yb, np.zeros((pad, *yb.shape[1:]), yb.dtype)])
        sums.append(_summed_nll(apply_fn, params, xb, yb, valid))
    total = np.sum(np.asarray(jax.device_get(sums), np.float64))
    return math.exp(total / y.size)


def _check_targets(split: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as host arrays: a pair, non-empty, integer ``y`` with one row per row of x."""
    if not isinstance(split, tuple | list) or len(split) != 2:
        raise ValueError(
            f"split must be a pair (x, y) of inputs and integer targets (e.g. ds.test), got "
            f"{type(split).__name__}."
        )
    x, y = np.asarray(split[0]), np.asarray(split[1])
    if x.ndim < 1 or not len(x) or y.ndim < 1 or y.shape[0] != x.shape[0] or not y.size:
        raise ValueError(
            f"split must be non-empty (x, y) with one row of targets per example of x, got x of "
            f"shape {list(x.shape)} and y of shape {list(y.shape)}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"split[1] (y) must hold integer targets, got {y.dtype.name}.")
    return x, y
