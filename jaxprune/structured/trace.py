r"""Channel groups traced from the program: which channels of which layers must go together.

:func:`trace_groups` reads the jaxpr of a pure ``fn(params, x)`` (or ``fn(params, model_state,
x)``), :func:`channel_groups` that of any NNX module in eval mode. Every position along every axis
of every param / model-state leaf is a node; each operation of the program says which positions
must be removed together, and a union-find joins them (DepGraph, Fang et al. 2023; RESEARCH §10):

* **elementwise** ops (activations, bias and norm affine, BN statistics in eval mode, residual
  adds, multiplications) join the positions of their operands axis by axis;
* a **contraction** of an activation with a weight (``dot_general``, ``conv_general_dilated``)
  joins the activation's channel with the weight's input axis (a *consumer*); the weight's output
  axis is a *producer* and carries the channels on. A weight with several output axes (``(in,
  heads, head_dim)`` of a multi-head projection) is pruned along the first one only;
* ``transpose`` / ``broadcast`` / ``squeeze`` follow the axes; ``concatenate`` maps each operand
  to its offset range; ``reshape`` merging axes maps channel ``c`` of ``(H, W, C)`` to positions
  ``{s C + c}`` (a flatten), and splitting an axis ``D → (heads, d)`` joins the ``d`` positions of
  each head into one unit (attention heads; under grouped-query attention, whole kv-groups);
* **depthwise** convolutions join their input and output channels (``c ↔ c·m … c·m + m − 1``).

A set of joined positions is a *channel*. It is **frozen** (never pruned) when it reaches the
model output, meets the model input, is reduced over (a LayerNorm's mean, a softmax), contracted
between two activations (``q·kᵀ`` over the head dimension), sliced, padded into, gathered, or
touched by a grouped convolution: there the pruned model would not compute what the masked one
does. A channel with a producer that is not frozen is prunable; channels that own the same number
of positions in the same leaf axes form one :class:`~jaxprune.structured.ChannelGroup` (a layer's
filters, a residual stream, the heads of an attention). Each frozen producer is listed in
:attr:`ChannelGraph.frozen` with the reason. An operation the tracer does not know that touches a
prunable channel is a ``ValueError`` naming it and the param path (``unsupported="freeze"``
freezes what it touches instead) — never a silently wrong model.

Example — two layers joined by a residual add form one group, a LayerNorm'd width none:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import structured
  >>> def fn(p, x):
  ...     h = jax.nn.relu(x @ p["a"])
  ...     h = h + jax.nn.relu(h @ p["b"])  # residual: a's and b's outputs are coupled
  ...     return jax.nn.relu(h @ p["c"]) @ p["out"]
  >>> p = {"a": jnp.ones((3, 4)), "b": jnp.ones((4, 4)), "c": jnp.ones((4, 5)), "out": jnp.ones((5, 2))}
  >>> graph = structured.trace_groups(fn, p, jnp.ones((1, 3)))
  >>> [(g.name, g.size, [s.path[0] for s in g.producers]) for g in graph.groups]
  [('a', 4, ['a', 'b']), ('c', 5, ['c'])]
  >>> graph.frozen
  {'out': "reaches the model's output"}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal

from jaxprune import _checks
from jaxprune._types import Params, PyTree
from jaxprune.structured._groups import ChannelGroup, Path, Slice, leaf_path

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["UNSUPPORTED", "ChannelGraph", "channel_groups", "trace_groups"]

UNSUPPORTED = ("error", "freeze")
"""What an unknown operation on a prunable channel does: raise, or freeze the channels it touches."""


class ChannelGraph(NamedTuple):
    """Output of :func:`trace_groups`.

    Attributes:
      groups: the prunable channel groups, in forward order (first producer first).
      frozen: ``{producer layer: why its channels cannot be pruned}`` for every producer whose
        channels are all frozen (the classifier: ``"reaches the model's output"``).
    """

    groups: tuple[ChannelGroup, ...]
    frozen: dict[str, str]


# ---------------------------------------------------------------------------------------------
# Union-find over positions

_FROZEN = 0  # the node every frozen position joins
_FREE = 1  # positions of a broadcast axis: the same value everywhere, no channel identity


class _Nodes:
    """Union-find over integer nodes, vectorised over label arrays.

    Node 0 is frozen; node 1 is *free* (a broadcast axis) and never joins anything.
    """

    def __init__(self) -> None:
        self.parent = np.zeros(1024, np.int64)
        self.parent[_FREE] = _FREE
        self.size = 2
        self.frozen: dict[int, str] = {
            _FROZEN: "coupled with the model input (a residual stream from it) or a constant"
        }
        self.producer = np.zeros(1024, bool)
        self.consumer = np.zeros(1024, bool)

    def new(self, n: int) -> np.ndarray:
        while self.size + n > len(self.parent):
            grow = len(self.parent)
            self.parent = np.concatenate([self.parent, np.zeros(grow, np.int64)])
            self.producer = np.concatenate([self.producer, np.zeros(grow, bool)])
            self.consumer = np.concatenate([self.consumer, np.zeros(grow, bool)])
        ids = np.arange(self.size, self.size + n)
        self.parent[ids] = ids
        self.size += n
        return ids

    def find(self, a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.int64)
        r = self.parent[a]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                break
            r = up
        self.parent[a] = r
        return r

    def _root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = int(self.parent[i])
        return i

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join ``a[i]`` with ``b[i]`` for every i; a class joined to a frozen one is frozen (and
        keeps the frozen side's reason, the informative one)."""
        if a is b or len(a) == 0:
            return
        bound = (a != _FREE) & (b != _FREE)
        if not bound.all():
            a, b = a[bound], b[bound]
        ra, rb = self.find(a), self.find(b)
        diff = ra != rb
        if not diff.any():
            return
        for x, y in sorted(set(zip(ra[diff].tolist(), rb[diff].tolist(), strict=True))):
            x, y = self._root(x), self._root(y)
            if x == y:
                continue
            if y in self.frozen and x not in self.frozen:
                x, y = y, x  # the root is frozen if either side is; it keeps its reason
            self.parent[y] = x
            self.frozen.pop(y, None)

    def freeze(self, a: np.ndarray, reason: str) -> None:
        for r in np.unique(self.find(a[a != _FREE])).tolist():
            self.frozen.setdefault(r, reason)

    def is_frozen(self, a: np.ndarray) -> np.ndarray:
        roots = self.find(a)
        return np.array([r in self.frozen for r in roots.tolist()], bool)

    def is_live(self, a: np.ndarray) -> np.ndarray:
        """Positions that may still be pruned: neither frozen nor free."""
        return ~self.is_frozen(a) & (a != _FREE)

    def why(self, a: np.ndarray) -> str:
        for r in self.find(a).tolist():
            if r in self.frozen:
                return self.frozen[r]
        return ""


class _Value(NamedTuple):
    """What the tracer knows of one value: a label array per axis, and what it depends on."""

    labels: tuple[np.ndarray, ...]
    act: bool  # depends on the model input
    weight: bool  # depends on params / model state (and not on the input)


def _frozen(shape: Sequence[int], act: bool = False, weight: bool = False) -> _Value:
    return _Value(tuple(np.zeros(int(n), np.int64) for n in shape), act, weight)


# ---------------------------------------------------------------------------------------------
# The walk

_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh bitcast_convert_type cbrt ceil
    clamp conj convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2
    expm1 floor ge gt igamma imag integer_pow is_finite le lgamma log log1p logistic lt max min mul
    ne neg nextafter not or polygamma population_count pow real reduce_precision rem round rsqrt
    select_n shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square sub
    tan tanh xor zeta stop_gradient""".split()
)
_REDUCE = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or reduce_xor argmax argmin".split()
)
_CUMULATIVE = frozenset("cumsum cumprod cummax cummin cumlogsumexp".split())
_WINDOW = frozenset("reduce_window_sum reduce_window_max reduce_window_min reduce_window".split())
_CONSTANT = frozenset("iota random_bits random_seed random_wrap random_unwrap threefry2x32".split())
_CALLS = frozenset(
    """pjit jit closed_call core_call remat checkpoint custom_jvp_call custom_vjp_call
    custom_vjp_call_jaxpr""".split()
)


class _Tracer:
    def __init__(self, nodes: _Nodes, names: dict[int, Path], unsupported: str) -> None:
        self.nodes = nodes
        self.names = names  # node of a leaf axis -> the leaf's path (for messages)
        self.unsupported = unsupported
        self.uses: dict[int, int] = {}  # node -> order of first use as a producer
        self.clock = 0

    # -- helpers ------------------------------------------------------------------------------
    def produce(self, a: np.ndarray) -> None:
        self.nodes.producer[a] = True
        self.clock += 1
        for n in a.tolist():
            self.uses.setdefault(n, self.clock)

    def walk(self, jaxpr: Jaxpr | ClosedJaxpr, ins: Sequence[_Value]) -> list[_Value]:
        closed = jaxpr if isinstance(jaxpr, ClosedJaxpr) else None
        open_ = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
        env: dict[Any, _Value] = {}
        consts = closed.consts if closed is not None else [None] * len(open_.constvars)
        for v, c in zip(open_.constvars, consts, strict=True):
            env[v] = _frozen(np.shape(c) if c is not None else v.aval.shape)
        for v, value in zip(open_.invars, ins, strict=True):
            env[v] = value

        def read(v: Any) -> _Value:
            if isinstance(v, Literal):
                return _frozen(np.shape(v.val))
            return env[v]

        for eqn in open_.eqns:
            outs = self.eqn(eqn, [read(v) for v in eqn.invars])
            for v, value in zip(eqn.outvars, outs, strict=True):
                env[v] = value
        return [read(v) for v in open_.outvars]

    def eqn(self, eqn: JaxprEqn, ins: list[_Value]) -> list[_Value]:
        name = eqn.primitive.name
        shapes = [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        act = any(v.act for v in ins)
        weight = not act and any(v.weight for v in ins)
        p = eqn.params
        sub = _sub_jaxpr(eqn, len(ins)) if name in _CALLS or name not in _KNOWN else None
        if sub is not None:  # a call (pjit, custom_jvp / custom_vjp): walk its body
            return self.walk(sub, ins)
        if name in _ELEMENTWISE:
            return [self.elementwise(name, ins, shapes[0], act, weight)]
        if name in _CONSTANT:
            return [_frozen(s, act, weight) for s in shapes]
        handler = getattr(self, "op_" + name, None)
        if handler is not None:
            out = handler(ins, p, shapes, act, weight)
            return out if isinstance(out, list) else [out]
        if name in _REDUCE:
            return [self.reduce(name, ins[0], p["axes"], act, weight)]
        if name in _CUMULATIVE:
            self.nodes.freeze(ins[0].labels[p["axis"]], f"accumulated over by {name}")
            return [_Value(ins[0].labels, act, weight)]
        if name in _WINDOW:
            return [self.window(name, ins, p, shapes[0], act, weight)]
        return self.unknown(name, ins, shapes, act, weight)

    def unknown(
        self, name: str, ins: list[_Value], shapes: list[tuple[int, ...]], act: bool, weight: bool
    ) -> list[_Value]:
        touched = [a for v in ins for a in v.labels if len(a) and self.nodes.is_live(a).any()]
        if touched and self.unsupported == "error":
            paths = sorted(
                {"/".join(self.names[int(n)]) for a in touched for n in a if int(n) in self.names}
            )
            where = f" (channels of {', '.join(paths)})" if paths else ""
            raise ValueError(
                f"channel tracing does not support the operation {name!r} on prunable "
                f"channels{where}: it cannot tell which channels it couples. Expected only the "
                "operations listed in jaxprune.structured.trace's docs; pass "
                "unsupported='freeze' to keep the channels it touches unpruned."
            )
        for a in touched:
            self.nodes.freeze(a, f"touched by the unsupported operation {name!r}")
        return [_frozen(s, act, weight) for s in shapes]

    # -- elementwise and shape ops ------------------------------------------------------------
    def elementwise(
        self, name: str, ins: list[_Value], shape: tuple[int, ...], act: bool, weight: bool
    ) -> _Value:
        labels: list[np.ndarray | None] = [None] * len(shape)
        for v in ins:
            if len(v.labels) != len(shape):
                continue  # a scalar operand
            for i, a in enumerate(v.labels):
                if len(a) != shape[i]:  # size 1 broadcast
                    self.nodes.freeze(a, f"broadcast by {name}")
                    continue
                cur = labels[i]
                if cur is None:
                    labels[i] = a
                else:
                    self.nodes.union(cur, a)
                    if (cur == _FREE).any():  # keep a real label where the first was free
                        labels[i] = np.where(cur == _FREE, a, cur)
        out = tuple(
            a if a is not None else np.full(n, _FREE, np.int64)
            for a, n in zip(labels, shape, strict=True)
        )
        return _Value(out, act, weight)

    def op_broadcast_in_dim(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        v, shape, dims = ins[0], shapes[0], p["broadcast_dimensions"]
        out = [np.full(n, _FREE, np.int64) for n in shape]
        for i, j in enumerate(dims):
            if len(v.labels[i]) == shape[j]:
                out[j] = v.labels[i]
            else:
                self.nodes.freeze(v.labels[i], "broadcast")
        return _Value(tuple(out), act, weight)

    def op_transpose(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        return _Value(tuple(ins[0].labels[i] for i in p["permutation"]), act, weight)

    def op_squeeze(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        drop = {d % len(ins[0].labels) for d in p["dimensions"]}
        return _Value(tuple(a for i, a in enumerate(ins[0].labels) if i not in drop), act, weight)

    def op_rev(self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool) -> _Value:
        labels = [a[::-1] if i in p["dimensions"] else a for i, a in enumerate(ins[0].labels)]
        return _Value(tuple(labels), act, weight)

    def op_reshape(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        v, shape = ins[0], shapes[0]
        if p.get("dimensions") is not None:
            return self.unknown("reshape(dimensions)", ins, shapes, act, weight)[0]
        src = tuple(len(a) for a in v.labels)
        out = [np.full(n, _FREE, np.int64) for n in shape]
        for i, a in enumerate(v.labels):
            if src[i] == 1:
                self.nodes.freeze(a, "reshaped as a size-1 axis")
        ia = [i for i, n in enumerate(src) if n != 1]
        oa = [j for j, n in enumerate(shape) if n != 1]
        pi = po = 0
        while pi < len(ia) and po < len(oa):
            bi, bo = [ia[pi]], [oa[po]]
            n_in, n_out = src[ia[pi]], shape[oa[po]]
            while n_in != n_out:
                if n_in < n_out:
                    pi += 1
                    bi.append(ia[pi])
                    n_in *= src[ia[pi]]
                else:
                    po += 1
                    bo.append(oa[po])
                    n_out *= shape[oa[po]]
            pi, po = pi + 1, po + 1
            labels = [v.labels[i] for i in bi]
            if len(bi) == 1 and len(bo) == 1:
                out[bo[0]] = labels[0]
            elif len(bo) == 1:
                out[bo[0]] = self.merge(labels)
            elif len(bi) == 1:
                outer = shape[bo[0]]
                rows = labels[0].reshape(outer, -1)
                for r in range(outer):
                    self.nodes.union(rows[r, :1].repeat(rows.shape[1]), rows[r])
                out[bo[0]] = rows[:, 0].copy()
            else:
                for a in labels:
                    self.nodes.freeze(a, "reshaped across several axes at once")
        return _Value(tuple(out), act, weight)

    def merge(self, labels: list[np.ndarray]) -> np.ndarray:
        """Merged axis: position p takes the prunable label among its source positions."""
        sizes = [len(a) for a in labels]
        grids = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
        cands = [a[g.reshape(-1)] for a, g in zip(labels, grids, strict=True)]
        out = np.full(math.prod(sizes), _FREE, np.int64)
        chosen = np.zeros(len(out), bool)
        for c in cands:
            ok = self.nodes.is_live(c)
            both = ok & chosen
            if both.any():  # two prunable axes merge: join them (coarse, safe)
                self.nodes.union(out[both], c[both])
            take = ok & ~chosen
            out[take] = c[take]
            chosen |= ok
        frozen = ~chosen & np.any([c != _FREE for c in cands], axis=0)
        out[frozen] = _FROZEN  # no prunable source: frozen unless every source was free
        return out

    def op_concatenate(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        d, shape = p["dimension"], shapes[0]
        out: list[np.ndarray] = []
        for i in range(len(shape)):
            if i == d:
                out.append(np.concatenate([v.labels[i] for v in ins]))
                continue
            first = ins[0].labels[i]
            for v in ins[1:]:
                self.nodes.union(first, v.labels[i])
            out.append(first)
        return _Value(tuple(out), act, weight)

    def op_pad(self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool) -> _Value:
        v, out = ins[0], []
        for a, (lo, hi, interior) in zip(v.labels, p["padding_config"], strict=True):
            if (lo, hi, interior) == (0, 0, 0):
                out.append(a)
            elif interior == 0 and lo >= 0 and hi >= 0:
                out.append(np.concatenate([np.zeros(lo, np.int64), a, np.zeros(hi, np.int64)]))
            else:
                self.nodes.freeze(a, "cropped or dilated by pad")
                out.append(np.zeros(len(a) * (interior + 1) + lo + hi - interior, np.int64))
        return _Value(tuple(out[: len(shapes[0])]), act, weight)

    def op_slice(self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool) -> _Value:
        v, out = ins[0], []
        strides = p["strides"] or (1,) * len(v.labels)
        for a, s, e, st in zip(
            v.labels, p["start_indices"], p["limit_indices"], strides, strict=True
        ):
            if (s, e, st) != (0, len(a), 1):
                self.nodes.freeze(a, "sliced")
            out.append(a[s:e:st])
        return _Value(tuple(out), act, weight)

    def op_split(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> list[_Value]:
        v, axis = ins[0], p["axis"]
        if len(p["sizes"]) > 1:
            self.nodes.freeze(v.labels[axis], "split into pieces")
        outs, start = [], 0
        for n in p["sizes"]:
            labels = list(v.labels)
            labels[axis] = v.labels[axis][start : start + n]
            start += n
            outs.append(_Value(tuple(labels), act, weight))
        return outs

    def op_dynamic_slice(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        v, out = ins[0], []
        for a, n in zip(v.labels, p["slice_sizes"], strict=True):
            if n == len(a):
                out.append(a)
            else:
                self.nodes.freeze(a, "sliced at a computed position")
                out.append(np.zeros(n, np.int64))
        return _Value(tuple(out), act, weight)

    def op_dynamic_update_slice(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        v, u = ins[0], ins[1]
        for a, b in zip(v.labels, u.labels, strict=True):
            if len(a) == len(b):
                self.nodes.union(a, b)
            else:
                self.nodes.freeze(a, "updated at a computed position")
                self.nodes.freeze(b, "written at a computed position")
        return _Value(v.labels, act, weight)

    def op_gather(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        v, idx, shape = ins[0], ins[1], shapes[0]
        dn = p["dimension_numbers"]
        if getattr(dn, "operand_batching_dims", ()):
            return self.unknown("gather(batching)", ins, shapes, act, weight)[0]
        for i, a in enumerate(v.labels):
            if (
                i in dn.start_index_map
                or i in dn.collapsed_slice_dims
                or p["slice_sizes"][i] != len(a)
            ):
                self.nodes.freeze(a, "indexed by a gather (an embedding lookup, x[..., idx])")
        kept = [
            i for i in range(len(v.labels)) if i not in dn.collapsed_slice_dims
        ]  # operand axes behind the offset dims, in order
        batch = list(idx.labels[:-1])
        out: list[np.ndarray] = []
        for j, n in enumerate(shape):
            if j in dn.offset_dims:
                i = kept[dn.offset_dims.index(j)]
                out.append(v.labels[i] if len(v.labels[i]) == n else np.zeros(n, np.int64))
            else:
                a = batch.pop(0) if batch else np.zeros(n, np.int64)
                out.append(a if len(a) == n else np.zeros(n, np.int64))
        return _Value(tuple(out), act, weight)

    # -- reductions ---------------------------------------------------------------------------
    def reduce(self, name: str, v: _Value, axes: Sequence[int], act: bool, weight: bool) -> _Value:
        for i in axes:
            self.nodes.freeze(
                v.labels[i], f"reduced over by {name} (a norm's mean, a softmax, a pool)"
            )
        return _Value(tuple(a for i, a in enumerate(v.labels) if i not in axes), act, weight)

    def window(
        self, name: str, ins: list[_Value], p: dict, shape: tuple[int, ...], act: bool, weight: bool
    ) -> _Value:
        v, out = ins[0], []
        pads = p.get("padding") or ((0, 0),) * len(shape)
        for i, a in enumerate(v.labels):
            plain = (
                p["window_dimensions"][i] == 1
                and p["window_strides"][i] == 1
                and tuple(pads[i]) == (0, 0)
                and p.get("base_dilation", (1,) * len(shape))[i] == 1
                and p.get("window_dilation", (1,) * len(shape))[i] == 1
            )
            if plain:
                out.append(a)
            else:
                self.nodes.freeze(a, f"pooled over by {name}")
                out.append(np.zeros(shape[i], np.int64))
        return _Value(tuple(out), act, weight)

    # -- contractions -------------------------------------------------------------------------
    def contract(
        self, x: np.ndarray, w: np.ndarray, x_act: bool, w_weight: bool, both: bool
    ) -> None:
        if both:
            self.nodes.union(x, w)
            self.nodes.freeze(
                x, "contracted between two activations (q·kᵀ over the head dimension)"
            )
            return
        self.nodes.union(x, w)
        if x_act and w_weight:
            self.nodes.consumer[w] = True

    def op_dot_general(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        both = lhs.act and rhs.act
        w_right = lhs.act and rhs.weight and not rhs.act
        w_left = rhs.act and lhs.weight and not lhs.act
        for a, b in zip(lc, rc, strict=True):
            if w_left:
                self.contract(rhs.labels[b], lhs.labels[a], True, True, False)
            else:
                self.contract(lhs.labels[a], rhs.labels[b], lhs.act, w_right, both)
        out = []
        for a, b in zip(lb, rb, strict=True):
            self.nodes.union(lhs.labels[a], rhs.labels[b])
            out.append(lhs.labels[a])
        lf = [lhs.labels[i] for i in range(len(lhs.labels)) if i not in lc and i not in lb]
        rf = [rhs.labels[i] for i in range(len(rhs.labels)) if i not in rc and i not in rb]
        for free, is_weight in ((lf, w_left), (rf, w_right)):
            if not is_weight:
                continue
            outer = [a for a in free if len(a) > 1]
            if outer:
                self.produce(outer[0])
            for a in outer[1:]:
                self.nodes.freeze(
                    a, "an inner output axis of a multi-axis kernel (pruned by its outer axis)"
                )
        return _Value(tuple(out + lf + rf), act, weight)

    def op_conv_general_dilated(
        self, ins: list[_Value], p: dict, shapes: list, act: bool, weight: bool
    ) -> _Value:
        lhs, rhs = ins
        dn = p["dimension_numbers"]
        lspec, rspec, ospec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
        shape = shapes[0]
        out = [np.zeros(n, np.int64) for n in shape]
        x_feat, w_in, w_out = lhs.labels[lspec[1]], rhs.labels[rspec[1]], rhs.labels[rspec[0]]
        groups, batch_groups = p["feature_group_count"], p["batch_group_count"]
        w_is_weight = lhs.act and rhs.weight and not rhs.act
        if batch_groups != 1:
            for a in (x_feat, w_in, w_out):
                self.nodes.freeze(a, "a convolution with batch groups")
            return _Value(tuple(out), act, weight)
        out[ospec[0]] = lhs.labels[lspec[0]]
        out[ospec[1]] = w_out
        if groups == 1:
            self.contract(x_feat, w_in, lhs.act, w_is_weight, lhs.act and rhs.act)
        elif len(w_in) == 1 and len(w_out) % len(x_feat) == 0:  # depthwise (channel multiplier m)
            m = len(w_out) // len(x_feat)
            self.nodes.union(x_feat.repeat(m), w_out)
        else:
            for a in (x_feat, w_out):
                self.nodes.freeze(a, f"a grouped convolution (feature_group_count={groups})")
        if w_is_weight:
            self.produce(w_out)
        return _Value(tuple(out), act, weight)


_KNOWN = (
    _ELEMENTWISE
    | _REDUCE
    | _CUMULATIVE
    | _WINDOW
    | _CONSTANT
    | {n[3:] for n in dir(_Tracer) if n.startswith("op_")}
)


def _sub_jaxpr(eqn: JaxprEqn, n_in: int) -> Jaxpr | ClosedJaxpr | None:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if isinstance(sub, Jaxpr | ClosedJaxpr):
            inner = sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub
            if len(inner.invars) == n_in:
                return sub
    return None


# ---------------------------------------------------------------------------------------------
# Public API


def trace_groups(
    fn: Callable[..., Any],
    params: Params,
    x: Any,
    *,
    model_state: PyTree | None = None,
    unsupported: str = "error",
) -> ChannelGraph:
    """The prunable channel groups of ``fn(params, x)`` (or ``fn(params, model_state, x)``).

    Traces ``fn`` once with abstract values (no compute) and joins the positions every
    operation couples (see the module docstring). Every leaf of ``params`` and ``model_state``
    can hold channels; ``x`` and everything computed from constants cannot.

    Args:
      fn: a pure function of ``(params, x)``, or of ``(params, model_state, x)`` when
        ``model_state`` is given (e.g. ``lambda p, s, x: apply_fn(p, s, x, train=False)[0]``).
      params: the params pytree (arrays or ``jax.ShapeDtypeStruct``; only shapes are read).
      x: an example input with its batch axis (an array or ``jax.ShapeDtypeStruct``).
      model_state: running statistics and other non-param state, or ``None``.
      unsupported: ``"error"`` (default) raises a ``ValueError`` naming an unknown operation
        that touches a prunable channel; ``"freeze"`` keeps those channels unpruned.

    Returns:
      :class:`ChannelGraph` ``(groups, frozen)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import structured
      >>> p = {"fc1": jnp.ones((6, 8)), "fc2": jnp.ones((8, 3))}
      >>> g = structured.trace_groups(lambda p, x: jnp.tanh(x @ p["fc1"]) @ p["fc2"], p, jnp.ones((2, 6)))
      >>> [(s.name, s.size, s.consumers[0].path) for s in g.groups]
      [('fc1', 8, ('fc2',))]
    """
    _checks.check_choice(unsupported, UNSUPPORTED, name="unsupported")
    trees: list[PyTree] = [params] if model_state is None else [params, model_state]
    nodes = _Nodes()
    names: dict[int, Path] = {}
    axes: list[tuple[Path, int, np.ndarray]] = []
    ins: list[_Value] = []
    for tree in trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            shape = np.shape(leaf)
            key = leaf_path(path)
            labels = []
            for a, n in enumerate(shape):
                ids = nodes.new(int(n))
                names.update({int(i): key for i in ids})
                axes.append((key, a, ids))
                labels.append(ids)
            ins.append(_Value(tuple(labels), False, True))
    x_leaves = jax.tree.leaves(x)
    ins += [_frozen(np.shape(leaf), act=True) for leaf in x_leaves]
    try:
        closed = jax.make_jaxpr(fn)(*trees, x)  # abstract: nothing is computed
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"fn could not be traced on params and x of shape(s) "
            f"{[np.shape(leaf) for leaf in x_leaves]}: {err}"
        ) from err
    tracer = _Tracer(nodes, names, unsupported)
    for out in tracer.walk(closed, ins):
        for axis_labels in out.labels:
            nodes.freeze(axis_labels, "reaches the model's output")
    return _collect(nodes, tracer, axes)


def _collect(
    nodes: _Nodes, tracer: _Tracer, axes: list[tuple[Path, int, np.ndarray]]
) -> ChannelGraph:
    classes: dict[int, list[tuple[Path, int, int]]] = {}
    live: set[int] = set()
    first_use: dict[int, int] = {}
    frozen: dict[str, str] = {}
    for path, a, ids in axes:
        r = nodes.find(ids)
        produced = nodes.producer[ids]
        for pos, (root, node) in enumerate(zip(r.tolist(), ids.tolist(), strict=True)):
            classes.setdefault(root, []).append((path, a, pos))
            if produced[pos] and root not in nodes.frozen:
                live.add(root)
                first_use[root] = min(first_use.get(root, 1 << 60), tracer.uses.get(node, 1 << 60))
        if produced.any() and all(root in nodes.frozen for root in r[produced].tolist()):
            name = "/".join(path[:-1] or path)
            frozen.setdefault(name, nodes.why(ids[produced]))
    by_signature: dict[tuple, list[int]] = {}
    for root in sorted(live, key=lambda r: (first_use[r], r)):
        counts: dict[tuple[Path, int], int] = {}
        for path, a, _ in classes[root]:
            counts[(path, a)] = counts.get((path, a), 0) + 1
        by_signature.setdefault(tuple(sorted(counts.items())), []).append(root)
    groups = []
    used: set[str] = set()
    for members in by_signature.values():
        groups.append(_group(members, classes, axes, nodes, tracer.uses, used))
    return ChannelGraph(tuple(groups), frozen)


def _group(
    roots: list[int],
    classes: dict[int, list[tuple[Path, int, int]]],
    axes: list[tuple[Path, int, np.ndarray]],
    nodes: _Nodes,
    uses: dict[int, int],
    used: set[str],
) -> ChannelGroup:
    ids_of = {(path, a): ids for path, a, ids in axes}
    order = {(path, a): i for i, (path, a, _) in enumerate(axes)}
    positions: dict[tuple[Path, int], list[tuple[int, ...]]] = {}
    for root in roots:
        per: dict[tuple[Path, int], list[int]] = {}
        for path, a, pos in classes[root]:
            per.setdefault((path, a), []).append(pos)
        for k, owned in per.items():
            positions.setdefault(k, []).append(tuple(sorted(owned)))
    producers: list[tuple[int, Slice]] = []
    consumers, others = [], []
    for k in sorted(positions, key=order.__getitem__):
        index = tuple(positions[k])
        flat = np.asarray([i for row in index for i in row])
        s = Slice(k[0], k[1], index)
        ids = ids_of[k][flat]
        if nodes.producer[ids].any():
            producers.append((min(uses.get(int(i), 1 << 60) for i in ids), s))
        elif nodes.consumer[ids].any():
            consumers.append(s)
        else:
            others.append(s)
    ordered = [s for _, s in sorted(producers, key=lambda t: t[0])]
    first = ordered[0].path
    name = "/".join(first[:-1]) if len(first) > 1 else first[0]
    base, n = name, 2
    while name in used:
        name, n = f"{base}#{n}", n + 1
    used.add(name)
    member_paths = {s.path for s in others}
    scales = [
        s.path for s in others if s.path[-1] == "scale" and (*s.path[:-1], "mean") in member_paths
    ]

    def shared(path: Path) -> int:  # the batch norm nearest the first producer
        return next(
            (i for i, (a, b) in enumerate(zip(path, first, strict=False)) if a != b), len(path)
        )

    bn = max(scales, key=shared, default=None)
    return ChannelGroup(
        name=name,
        size=len(roots),
        kernel=first,
        members=tuple(ordered + others),
        consumers=tuple(consumers),
        bn_scale=bn,
        producers=tuple(ordered),
    )


def channel_groups(
    model: nnx.Module, x: Any = None, *, unsupported: str = "error"
) -> tuple[ChannelGroup, ...]:
    """The prunable channel groups of any NNX module, traced in eval mode (see :func:`trace_groups`).

    Args:
      model: the module (its structure and shapes are read, its values are not).
      x: an example input with a batch axis (array or ``jax.ShapeDtypeStruct``); optional for a
        module with an ``input_shape`` attribute (every :mod:`jaxprune.models` network).
      unsupported: see :func:`trace_groups`.

    Returns:
      The groups, in forward order; paths address the model's params and model state
      (``nnx.split(model, nnx.Param, ...)``).

    Example:
      >>> from jaxprune import models, structured
      >>> g = structured.channel_groups(models.conv2((8, 8, 1), 10, width=0.125))
      >>> [(x.name, x.size, x.consumers[0].path) for x in g]  # doctest: +NORMALIZE_WHITESPACE
      [('conv1', 8, ('conv2', 'kernel')), ('conv2', 8, ('fc1', 'kernel')),
       ('fc1', 32, ('fc2', 'kernel')), ('fc2', 32, ('out', 'kernel'))]
    """
    return trace_model(model, x, unsupported=unsupported).groups


def example_input(model: Any, x: Any) -> Any:
    """``x``, or a batch of 2 of the model's ``input_shape``; a ``ValueError`` if neither."""
    if x is not None:
        return x
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"x (an example input with a batch axis) is required for {type(model).__name__}: "
            "it has no input_shape attribute to build one from; pass e.g. "
            "x=jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)."
        )
    return jax.ShapeDtypeStruct((2, *tuple(shape)), np.float32)


def eval_function(model: Any) -> tuple[Callable[..., Any], Params, PyTree]:
    """``fn(params, model_state, x)`` of the model in eval mode, its params and model state."""
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    twin = nnx.merge(graphdef, params, rest, copy=True)
    twin.set_attributes(use_running_average=True, deterministic=True, raise_if_not_found=False)
    graphdef = nnx.split(twin, nnx.Param, ...)[0]

    def fn(p: Params, s: PyTree, x: Any) -> Any:
        return nnx.merge(graphdef, p, s, copy=True)(x)

    return fn, params, rest


def trace_model(model: Any, x: Any = None, *, unsupported: str = "error") -> ChannelGraph:
    """:func:`trace_groups` of an NNX module in eval mode (groups and frozen producers)."""
    fn, params, rest = eval_function(model)
    return trace_groups(
        fn, params, example_input(model, x), model_state=rest, unsupported=unsupported
    )
