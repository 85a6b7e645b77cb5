r"""Weight-agnostic neural networks (Gaier & Ha 2019): search architectures, not weights.

A *parent* feed-forward network has a fixed node order: ``n_in`` inputs, then one bias node (value
1, counted as an input, index ``n_in``), then ``H`` hidden slots, then ``n_out`` outputs, so
``N = n_in + 1 + H + n_out`` nodes. A :class:`Genome` is a mask over the parent's edges plus one
activation per hidden slot:

* ``conn[i, j]`` (bool, ``(N, N)``) is the edge :math:`i \to j`, allowed only forward: ``i < j``,
  ``i`` not an output, ``j`` not an input (:func:`allowed_edges`). Hidden slots are therefore
  connected only from lower to higher slots, and the network can never hold a cycle.
* ``act[h]`` (int32, ``(H,)``) indexes :data:`ACTIVATIONS` (the *global* tuple, whatever subset a
  search draws from). Outputs are linear. A hidden slot is *used* iff it has an edge in or out.

With edge weights :math:`W` (``W = w \cdot conn`` for one shared weight :math:`w`, or any per-edge
weights), the node values are, in node order,

.. math:: a_i = x_i \;(i < n_{in}), \quad a_{n_{in}} = 1, \quad
   a_j = f_j\Big(\sum_{i<j} W_{ij}\, a_i\Big) \text{ (hidden)}, \quad
   z_o = \sum_{i<o} W_{io}\, a_i \text{ (outputs, the logits)}.

A population is a ``Genome`` whose arrays carry a leading member axis. :func:`evaluate` scores every
member with every shared weight in one jitted, vmapped program; :func:`search` evolves a population
with the three WANN mutations (:func:`add_connection`, :func:`insert_node`,
:func:`change_activation`), ranked by :func:`pareto_rank` over (mean accuracy, max accuracy,
connections), with elitism and tournament selection. Evolution is host-side numpy driven by one
``np.random.default_rng(seed)`` stream, so a search is deterministic for a seed and resumable from
its :class:`SearchState`. :func:`final_columns` gives the paper's four numbers for one genome.

Example:
  >>> import numpy as np
  >>> from jaxprune import wann
  >>> rng = np.random.default_rng(0)
  >>> g = wann.minimal(4, 3, 5, links=2, rng=rng)
  >>> g.conn.shape, g.act.shape, int(g.conn.sum())
  ((13, 13), (5,), 2)
  >>> g2 = wann.insert_node(g, rng, n_in=4)
  >>> int(g2.conn.sum()), int(wann.used_hidden(g2, n_in=4, n_out=3).sum())
  (3, 1)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import _checks
from jaxprune._types import Array, ArrayLike

__all__ = [
    "ACTIVATIONS",
    "MUTATIONS",
    "SHARED_WEIGHTS",
    "Genome",
    "SearchResult",
    "SearchState",
    "activation_fn",
    "add_connection",
    "allowed_edges",
    "change_activation",
    "evaluate",
    "final_columns",
    "forward",
    "insert_node",
    "minimal",
    "mutate",
    "pareto_fronts",
    "pareto_rank",
    "search",
    "used_hidden",
]

ACTIVATIONS = (
    "linear",
    "step",
    "sin",
    "gaussian",
    "tanh",
    "sigmoid",
    "inverse",
    "abs",
    "relu",
    "cos",
)
"""Hidden-node activations, as in the WANN code: linear :math:`x`, step :math:`[x > 0]`, sin
:math:`\\sin(\\pi x)`, gaussian :math:`e^{-x^2/2}`, tanh, sigmoid :math:`1/(1+e^{-x})`, inverse
:math:`-x`, abs :math:`|x|`, relu :math:`\\max(0, x)`, cos :math:`\\cos(\\pi x)`."""
SHARED_WEIGHTS = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
"""The shared weight values every member is evaluated with."""
MUTATIONS = ("add_connection", "insert_node", "change_activation")
"""The order of :func:`mutate`'s ``probs``."""

_FUNCTIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda z: z,
    "step": lambda z: (z > 0).astype(z.dtype),
    "sin": lambda z: jnp.sin(jnp.pi * z),
    "gaussian": lambda z: jnp.exp(-0.5 * z * z),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "inverse": lambda z: -z,
    "abs": jnp.abs,
    "relu": jax.nn.relu,
    "cos": lambda z: jnp.cos(jnp.pi * z),
}


class Genome(NamedTuple):
    """One network inside the parent (or, with a leading axis on both arrays, a population).

    Attributes:
      conn: bool ``(N, N)``; ``conn[i, j]`` is the edge ``i → j`` (see the module docstring).
      act: int32 ``(H,)``; index into :data:`ACTIVATIONS` per hidden slot.
    """

    conn: np.ndarray
    act: np.ndarray


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The elementwise function of an activation name (formulas in :data:`ACTIVATIONS`).

    Example:
      >>> import jax.numpy as jnp
      >>> activation_fn("cos")(jnp.array([0.0, 1.0]))
      Array([ 1., -1.], dtype=float32)
    """
    _checks.check_choice(name, ACTIVATIONS, name="activation")
    return _FUNCTIONS[name]


def _check_activations(activations: Sequence[str]) -> tuple[str, ...]:
    if isinstance(activations, str) or not isinstance(activations, Sequence):
        raise ValueError(
            f"activations must be a sequence of activation names, got {activations!r}."
        )
    names = tuple(activations)
    if not names:
        raise ValueError(
            f"activations must name at least one activation of {ACTIVATIONS}, got an empty set."
        )
    for name in names:
        _checks.check_choice(name, ACTIVATIONS, name="activation")
    if len(set(names)) != len(names):
        raise ValueError(f"activations must not repeat a name, got {names}.")
    return names


def _check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(w) for w in weights)
    if not values or not all(np.isfinite(values)):
        raise ValueError(
            f"weights must be a non-empty sequence of finite numbers, got {weights!r}."
        )
    return values


def _sizes(n: int, n_in: int, n_out: int) -> int:
    """The number of hidden slots of a parent with ``n`` nodes."""
    hidden = n - n_in - 1 - n_out
    if hidden < 0:
        raise ValueError(
            f"conn must be (N, N) with N = n_in + 1 + hidden + n_out >= {n_in + 1 + n_out} for "
            f"n_in={n_in}, n_out={n_out}, got N={n}."
        )
    return hidden


def allowed_edges(n_in: int, n_out: int, hidden: int) -> np.ndarray:
    """The parent's edges, bool ``(N, N)``: ``[i, j]`` iff ``i < j``, ``i`` no output, ``j`` no
    input.

    Example:
      >>> allowed_edges(1, 1, 1).astype(int)  # nodes: input, bias, hidden, output
      array([[0, 0, 1, 1],
             [0, 0, 1, 1],
             [0, 0, 0, 1],
             [0, 0, 0, 0]])
    """
    n = n_in + 1 + hidden + n_out
    idx = np.arange(n)
    allowed = idx[:, None] < idx[None, :]
    allowed[n - n_out :, :] = False
    allowed[:, : n_in + 1] = False
    return allowed


def used_hidden(genome: Genome, *, n_in: int, n_out: int) -> np.ndarray:
    """Bool ``(H,)`` (or ``(P, H)``): hidden slots with at least one edge in or out.

    Example:
      >>> import numpy as np
      >>> conn = np.zeros((5, 5), bool); conn[0, 3] = conn[3, 4] = True  # in → hidden 1 → out
      >>> used_hidden(Genome(conn, np.zeros(2, np.int32)), n_in=1, n_out=1)
      array([False,  True])
    """
    conn = np.asarray(genome.conn)
    hidden = _sizes(conn.shape[-1], n_in, n_out)
    sl = slice(n_in + 1, n_in + 1 + hidden)
    return np.asarray(conn[..., :, sl].any(-2) | conn[..., sl, :].any(-1))


def minimal(
    n_in: int,
    n_out: int,
    hidden: int,
    *,
    links: int,
    activations: Sequence[str] = ACTIVATIONS,
    rng: np.random.Generator,
) -> Genome:
    """A minimal network: ``links`` distinct random input → output edges (the bias among the
    inputs), every hidden slot unused, its activation drawn uniformly from ``activations``.

    Example:
      >>> import numpy as np
      >>> g = minimal(2, 2, 3, links=6, activations=("tanh",), rng=np.random.default_rng(0))
      >>> g.conn[:3, -2:].all(), int(g.conn.sum()), g.act.tolist()
      (np.True_, 6, [4, 4, 4])
    """
    _checks.check_positive_int(n_in, name="n_in")
    _checks.check_positive_int(n_out, name="n_out")
    _checks.check_nonnegative_int(hidden, name="hidden")
    _checks.check_positive_int(links, name="links")
    names = _check_activations(activations)
    if links > (n_in + 1) * n_out:
        raise ValueError(
            f"links must be at most the (n_in + 1) * n_out = {(n_in + 1) * n_out} input → output "
            f"edges, got {links}."
        )
    n = n_in + 1 + hidden + n_out
    pick = rng.choice((n_in + 1) * n_out, size=links, replace=False)
    conn = np.zeros((n, n), bool)
    conn[pick // n_out, n - n_out + pick % n_out] = True
    codes = np.array([ACTIVATIONS.index(a) for a in names], np.int32)
    return Genome(conn, codes[rng.integers(len(codes), size=hidden)])


# --- the forward pass -----------------------------------------------------------------------


def _apply_act(code: Array, z: Array, names: tuple[str, ...]) -> Array:
    """``f_code(z)`` for a traced global activation index (one not in ``names``: ``names[0]``)."""
    table = np.zeros(len(ACTIVATIONS), np.int32)
    for pos, name in enumerate(names):
        table[ACTIVATIONS.index(name)] = pos
    branches = [_FUNCTIONS[name] for name in names]
    if len(branches) == 1:
        return branches[0](z)
    return jax.lax.switch(jnp.asarray(table)[code], branches, z)


def _propagate(pre: Array, hidden_rows: Array, act: Array, *, names: tuple[str, ...]) -> Array:
    """Run the hidden slots in order. ``pre`` (B, H + n_out) holds the inputs' contributions to
    the hidden and output pre-activations, ``hidden_rows`` (H, H + n_out) the weights out of the
    hidden slots; slot ``k`` adds ``f_k(pre[:, k]) · hidden_rows[k]`` (zero on slots ``<= k``,
    the weights being strictly upper-triangular)."""

    def body(k: Array, pre: Array) -> Array:
        a = _apply_act(act[k], jax.lax.dynamic_index_in_dim(pre, k, 1, keepdims=False), names)
        row = jax.lax.dynamic_index_in_dim(hidden_rows, k, 0, keepdims=False)
        return pre + a[:, None] * row[None, :]

    if act.shape[0] == 0:  # no hidden slot (the loop's body would index an empty array)
        return pre
    return jax.lax.fori_loop(0, act.shape[0], body, pre)


def forward(
    conn_weights: Array,
    act: Array,
    x: ArrayLike,
    *,
    n_in: int,
    n_out: int,
    activations: Sequence[str] = ACTIVATIONS,
) -> Array:
    r"""Logits ``(B, n_out)`` of the network with edge weights ``conn_weights`` (pure jnp).

    .. math:: z = \Big(\text{inputs → all}\Big):\; P = [x, 1]\, W_{:n_{in}+1}, \text{ then for
       each hidden slot } k \text{ in order: } P \mathrel{+}= f_k(P_{:,k})\, W_{k,:};\;
       z = P_{:, -n_{out}:}

    which equals the node-by-node definition of the module docstring because ``W`` is strictly
    upper-triangular (an edge never enters an input or leaves an output). ``x`` is ``(B, ...)``,
    flattened to ``(B, n_in)``. ``act`` indexes :data:`ACTIVATIONS`; only the names in
    ``activations`` are compiled (an index outside them computes ``activations[0]``).
    Jittable and vmappable; ``n_in``, ``n_out`` and ``activations`` are static.

    Example (input → hidden (relu) → output, bias → output, shared weight −2):
      >>> import numpy as np, jax.numpy as jnp
      >>> conn = np.zeros((4, 4), bool); conn[0, 2] = conn[2, 3] = conn[1, 3] = True
      >>> act = np.array([ACTIVATIONS.index("relu")], np.int32)
      >>> forward(-2.0 * jnp.asarray(conn, jnp.float32), act, jnp.array([[1.0], [-1.0]]),
      ...         n_in=1, n_out=1)
      Array([[-2.],
             [-6.]], dtype=float32)
    """
    names = _check_activations(activations)
    weights = jnp.asarray(conn_weights)
    hidden = _sizes(weights.shape[-1], n_in, n_out)
    if weights.shape != (weights.shape[-1],) * 2 or jnp.shape(act) != (hidden,):
        raise ValueError(
            f"conn_weights must be (N, N) and act (H,) with N = n_in + 1 + H + n_out; got "
            f"{list(weights.shape)} and {list(jnp.shape(act))} for n_in={n_in}, n_out={n_out}."
        )
    x = jnp.reshape(x, (jnp.shape(x)[0], -1)).astype(weights.dtype)
    if x.shape[1] != n_in:
        raise ValueError(f"x must hold n_in={n_in} features per example, got {x.shape[1]}.")
    inputs = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
    first = n_in + 1  # the first hidden node
    pre = inputs @ weights[:first, first:]
    pre = _propagate(pre, weights[first : first + hidden, first:], jnp.asarray(act), names=names)
    return pre[:, hidden:]


@functools.partial(jax.jit, static_argnames=("n_out", "names"))
def _population_logits(
    conn: Array, act: Array, x: Array, weights: Array, *, n_out: int, names: tuple[str, ...]
) -> Array:
    """Logits ``(P, len(weights), B, n_out)`` for every member × shared weight."""
    n_in = x.shape[1]
    inputs = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)

    first, hidden = n_in + 1, act.shape[-1]

    def member(c: Array, a: Array) -> Array:
        c = c.astype(x.dtype)
        base = inputs @ c[:first, first:]  # linear in w: computed once, scaled per shared weight
        rows = c[first : first + hidden, first:]

        def one_weight(w: Array) -> Array:
            return _propagate(w * base, w * rows, a, names=names)[:, hidden:]

        return jax.vmap(one_weight)(weights)

    return jax.vmap(member)(conn, act)


def _check_population(population: Genome, x: ArrayLike) -> tuple[Genome, int, int]:
    conn, act = np.asarray(population.conn), np.asarray(population.act)
    if conn.ndim != 3 or act.ndim != 2 or conn.shape[0] != act.shape[0]:
        raise ValueError(
            "population must be a Genome with a leading member axis: conn (P, N, N) and act "
            f"(P, H), got {list(conn.shape)} and {list(act.shape)}."
        )
    n_in = int(np.prod(np.shape(x)[1:]))
    n_out = conn.shape[-1] - n_in - 1 - act.shape[1]
    if n_out < 1:
        raise ValueError(
            f"population has N={conn.shape[-1]} nodes and H={act.shape[1]} hidden slots, which "
            f"leaves no output for x with {n_in} features."
        )
    return Genome(conn, act), n_in, n_out


def _compact(population: Genome, n_in: int, n_out: int, multiple: int = 8) -> Genome:
    """The same networks with the unused hidden slots dropped, up to a multiple of ``multiple``
    (so that few shapes compile): each member's used slots move to the front in their order,
    which keeps the weights strictly upper-triangular, and the slots dropped have no edges, so
    the logits are unchanged. Early in a search most slots are unused, and the hidden loop gets
    much shorter."""
    conn, act = population
    used = used_hidden(population, n_in=n_in, n_out=n_out)
    hidden = act.shape[1]
    length = min(hidden, -(-int(used.sum(1).max(initial=0)) // multiple) * multiple)
    order = np.argsort(~used, axis=1, kind="stable")[:, :length]
    first, size = n_in + 1, conn.shape[0]
    keep = np.concatenate(
        [
            np.broadcast_to(np.arange(first), (size, first)),
            first + order,
            np.broadcast_to(np.arange(first + hidden, conn.shape[-1]), (size, n_out)),
        ],
        axis=1,
    )
    conn = np.take_along_axis(np.take_along_axis(conn, keep[:, :, None], 1), keep[:, None, :], 2)
    return Genome(conn, np.take_along_axis(act, order, 1))


def evaluate(
    population: Genome,
    x: ArrayLike,
    y: ArrayLike,
    *,
    weights: Sequence[float] = SHARED_WEIGHTS,
    activations: Sequence[str] = ACTIVATIONS,
) -> np.ndarray:
    r"""Accuracy ``(P, len(weights))`` of every member with every shared weight, in one program.

    .. math:: \mathrm{acc}_{p,w} = \frac{1}{B}\sum_b [\arg\max_o z_o(x_b; w\cdot conn_p, act_p)
       = y_b]

    (``argmax`` takes the first of equal logits). One jitted ``vmap`` over members of a ``vmap``
    over weights: the inputs' matmul is done once per member and scaled by each ``w``, and the
    hidden loop runs over the used slots only (padded to a multiple of 8 across the
    population: one compiled program per such length). The output count is
    ``N − n_in − 1 − H`` with ``n_in`` the features of ``x``.

    Example:
      >>> import numpy as np
      >>> from jaxprune import train
      >>> rng = np.random.default_rng(0)
      >>> pop = train.stack([minimal(3, 2, 4, links=3, rng=rng) for _ in range(5)])
      >>> x, y = rng.random((16, 3), dtype=np.float32), rng.integers(2, size=16)
      >>> evaluate(pop, x, y).shape
      (5, 6)
    """
    names = _check_activations(activations)
    values = _check_weights(weights)
    population, n_in, n_out = _check_population(population, x)
    population = _compact(population, n_in, n_out)
    used = used_hidden(population, n_in=n_in, n_out=n_out)
    outside = used & ~np.isin(population.act, _codes(names))
    if outside.any():
        code = int(population.act[outside][0])
        raise ValueError(
            f"population.act holds {int(outside.sum())} used hidden node(s) whose activation is "
            f"not in activations={names}, e.g. {ACTIVATIONS[code]!r} (code {code}); pass the "
            "activations the population was built with."
        )
    x = jnp.reshape(jnp.asarray(x, jnp.float32), (np.shape(x)[0], -1))
    logits = _population_logits(
        jnp.asarray(population.conn),
        jnp.asarray(population.act),
        x,
        jnp.asarray(values, jnp.float32),
        n_out=n_out,
        names=names,
    )
    correct = jnp.argmax(logits, -1) == jnp.asarray(y)[None, None, :]
    return np.asarray(jnp.mean(correct, -1))


# --- mutations (host-side numpy) -----------------------------------------------------------


def _layout(genome: Genome, n_in: int | None, n_out: int | None) -> tuple[int, int, int]:
    """``(n_in, n_out, hidden)``: a genome's shapes give ``N`` and ``H``, so one of ``n_in``,
    ``n_out`` fixes the layout."""
    n, hidden = genome.conn.shape[-1], genome.act.shape[-1]
    if n_in is None and n_out is None:
        raise ValueError(
            "n_in or n_out must be given: a genome's shapes fix N and H but not where the "
            "inputs end."
        )
    if n_in is None:
        n_in = n - 1 - hidden - int(n_out)  # type: ignore[arg-type]
    if n_out is None:
        n_out = n - 1 - hidden - n_in
    if n_in < 1 or n_out < 1 or n_in + 1 + hidden + n_out != n:
        raise ValueError(
            f"genome with N={n} nodes and H={hidden} hidden slots does not fit n_in={n_in}, "
            f"n_out={n_out}."
        )
    return n_in, n_out, hidden


def _codes(activations: Sequence[str]) -> np.ndarray:
    return np.array([ACTIVATIONS.index(a) for a in _check_activations(activations)], np.int32)


def add_connection(
    genome: Genome, rng: np.random.Generator, *, n_in: int | None = None, n_out: int | None = None
) -> Genome | None:
    """A copy with one new allowed edge ``i → j`` drawn uniformly among the candidates, or
    ``None`` if there is none.

    Candidates: edges of :func:`allowed_edges` not yet present whose source is an input (or the
    bias) or a used hidden node, and whose destination is an output or a used hidden node: hidden
    slots come to life only through :func:`insert_node` (as NEAT's nodes do), so no edge dangles
    into an unused slot. Give ``n_in`` or ``n_out`` (the other follows from the shapes).

    Example:
      >>> import numpy as np
      >>> g = minimal(2, 1, 2, links=1, rng=np.random.default_rng(0))
      >>> int(add_connection(g, np.random.default_rng(1), n_in=2).conn.sum())
      2
    """
    n_in, n_out, hidden = _layout(genome, n_in, n_out)
    conn = np.asarray(genome.conn)
    alive = np.ones(conn.shape[0], bool)
    alive[n_in + 1 : n_in + 1 + hidden] = used_hidden(genome, n_in=n_in, n_out=n_out)
    ok = allowed_edges(n_in, n_out, hidden) & ~conn & alive[:, None] & alive[None, :]
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        return None
    new = conn.copy()
    new.flat[candidates[rng.integers(candidates.size)]] = True
    return Genome(new, np.asarray(genome.act).copy())


def insert_node(
    genome: Genome,
    rng: np.random.Generator,
    *,
    n_in: int | None = None,
    n_out: int | None = None,
    activations: Sequence[str] = ACTIVATIONS,
) -> Genome | None:
    """A copy where an edge ``i → j`` is split by an unused hidden slot ``k`` (``i < k < j``):
    ``i → j`` removed, ``i → k`` and ``k → j`` added, ``act[k]`` drawn from ``activations``.

    The edge is drawn uniformly among the edges that have at least one unused slot between their
    ends, then ``k`` uniformly among those slots. ``None`` if no edge has one (every slot used,
    or none between the ends of any edge).

    Example:
      >>> import numpy as np
      >>> g = minimal(2, 1, 3, links=1, rng=np.random.default_rng(0))
      >>> g2 = insert_node(g, np.random.default_rng(1), n_in=2)
      >>> int(g.conn.sum()), int(g2.conn.sum()), int(used_hidden(g2, n_in=2, n_out=1).sum())
      (1, 2, 1)
    """
    n_in, n_out, hidden = _layout(genome, n_in, n_out)
    codes = _codes(activations)
    conn = np.asarray(genome.conn)
    free = np.zeros(conn.shape[0], bool)
    free[n_in + 1 : n_in + 1 + hidden] = ~used_hidden(genome, n_in=n_in, n_out=n_out)
    before = np.concatenate([[0], np.cumsum(free)])  # before[m] = free slots among nodes < m
    src, dst = np.nonzero(conn)
    between = before[dst] - before[src + 1]  # free slots strictly between the ends
    splittable = np.flatnonzero(between > 0)
    if splittable.size == 0:
        return None
    e = splittable[rng.integers(splittable.size)]
    i, j = int(src[e]), int(dst[e])
    slots = np.flatnonzero(free[i + 1 : j]) + i + 1
    k = int(slots[rng.integers(slots.size)])
    new = conn.copy()
    new[i, j], new[i, k], new[k, j] = False, True, True
    act = np.asarray(genome.act).copy()
    act[k - n_in - 1] = codes[rng.integers(codes.size)]
    return Genome(new, act)


def change_activation(
    genome: Genome,
    rng: np.random.Generator,
    *,
    n_in: int | None = None,
    n_out: int | None = None,
    activations: Sequence[str] = ACTIVATIONS,
) -> Genome | None:
    """A copy where one used hidden node (uniformly drawn) gets a different activation, drawn
    uniformly from the other names of ``activations``; ``None`` if no node is used or no other
    activation is allowed.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> g = insert_node(minimal(2, 1, 3, links=1, rng=rng), rng, n_in=2)
      >>> g2 = change_activation(g, rng, n_in=2)
      >>> int((g2.act != g.act).sum()), bool((g2.conn == g.conn).all())
      (1, True)
    """
    n_in, n_out, _ = _layout(genome, n_in, n_out)
    codes = _codes(activations)
    used = np.flatnonzero(used_hidden(genome, n_in=n_in, n_out=n_out))
    act = np.asarray(genome.act).copy()
    if used.size == 0:
        return None
    h = int(used[rng.integers(used.size)])
    others = codes[codes != act[h]]
    if others.size == 0:
        return None
    act[h] = others[rng.integers(others.size)]
    return Genome(np.asarray(genome.conn).copy(), act)


def _check_probs(probs: Sequence[float]) -> np.ndarray:
    p = np.asarray(probs, np.float64)
    if p.shape != (len(MUTATIONS),) or not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(
            f"probs must be {len(MUTATIONS)} non-negative numbers with a positive sum, for "
            f"{MUTATIONS}, got {probs!r}."
        )
    return p / p.sum()


def mutate(
    genome: Genome,
    rng: np.random.Generator,
    *,
    n_in: int | None = None,
    n_out: int | None = None,
    probs: Sequence[float] = (0.2, 0.25, 0.5),
    activations: Sequence[str] = ACTIVATIONS,
) -> Genome:
    """One mutation, chosen with ``probs`` over :data:`MUTATIONS` (default the WANN code's
    relative rates 0.2 : 0.25 : 0.5). If the chosen one is impossible (it returns ``None``), the
    others are tried in :data:`MUTATIONS` order; if none is possible the genome comes back as
    an unchanged copy.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> g = minimal(2, 1, 3, links=1, rng=rng)
      >>> g2 = mutate(g, rng, n_in=2, probs=(0, 1, 0))  # always insert_node
      >>> int(g2.conn.sum())
      2
    """
    p = _check_probs(probs)
    first = int(rng.choice(len(MUTATIONS), p=p))
    ops = (
        functools.partial(add_connection, n_in=n_in, n_out=n_out),
        functools.partial(insert_node, n_in=n_in, n_out=n_out, activations=activations),
        functools.partial(change_activation, n_in=n_in, n_out=n_out, activations=activations),
    )
    for index in [first] + [i for i in range(len(ops)) if i != first]:
        child = ops[index](genome, rng)
        if child is not None:
            return child
    return Genome(np.asarray(genome.conn).copy(), np.asarray(genome.act).copy())


# --- ranking -------------------------------------------------------------------------------


def pareto_fronts(mean_acc: np.ndarray, max_acc: np.ndarray, connections: np.ndarray) -> np.ndarray:
    r"""Non-dominated sorting: the front index (0 = not dominated) of each member.

    Member :math:`a` dominates :math:`b` iff :math:`\bar s_a \ge \bar s_b`,
    :math:`\hat s_a \ge \hat s_b`, :math:`c_a \le c_b` and at least one is strict (maximise mean
    accuracy :math:`\bar s` and max accuracy :math:`\hat s`, minimise connections :math:`c`).
    Front :math:`k` holds the members dominated only by members of fronts :math:`< k`.

    Example:
      >>> pareto_fronts(np.array([0.5, 0.4, 0.5]), np.array([0.6, 0.6, 0.6]), np.array([3, 2, 4]))
      array([0, 0, 1])
    """
    objectives = np.stack(
        [
            np.asarray(mean_acc, np.float64),
            np.asarray(max_acc, np.float64),
            -np.asarray(connections, np.float64),
        ],
        axis=1,
    )
    if objectives.ndim != 2 or objectives.shape[0] == 0:
        raise ValueError("mean_acc, max_acc and connections must be equal-length 1-D arrays.")
    ge = (objectives[:, None, :] >= objectives[None, :, :]).all(-1)
    gt = (objectives[:, None, :] > objectives[None, :, :]).any(-1)
    dominates = ge & gt  # [a, b]: a dominates b
    fronts = np.full(objectives.shape[0], -1, np.int64)
    level = 0
    while (fronts < 0).any():
        open_ = fronts < 0
        beaten = (dominates & open_[:, None]).any(0)
        fronts[open_ & ~beaten] = level
        level += 1
    return fronts


def pareto_rank(mean_acc: np.ndarray, max_acc: np.ndarray, connections: np.ndarray) -> np.ndarray:
    """A strict ranking (0 = best, a permutation of ``0..P-1``): by :func:`pareto_fronts`, then
    by higher mean accuracy within a front, then by lower index.

    Example:
      >>> pareto_rank(np.array([0.5, 0.4, 0.5]), np.array([0.6, 0.6, 0.6]), np.array([3, 2, 4]))
      array([0, 1, 2])
    """
    fronts = pareto_fronts(mean_acc, max_acc, connections)
    order = np.lexsort((np.arange(fronts.size), -np.asarray(mean_acc, np.float64), fronts))
    ranks = np.empty(fronts.size, np.int64)
    ranks[order] = np.arange(fronts.size)
    return ranks


# --- search --------------------------------------------------------------------------------


class SearchState(NamedTuple):
    """Everything a search needs to continue after ``generation`` generations.

    Attributes:
      conn, act: the population to evaluate next, ``(P, N, N)`` bool and ``(P, H)`` int32.
      rng_state: ``np.random.Generator.bit_generator.state`` of the search's stream.
      generation: the number of generations done.
      history: per generation done, lists ``"mean_acc"``, ``"max_acc"``, ``"connections"`` (of
        the best-ranked member) and ``"pop_max_acc"``, ``"pop_mean_connections"``.
      best_conn, best_act: the best-ranked member of the last evaluated generation (the
        initial minimal network before any).
    """

    conn: np.ndarray
    act: np.ndarray
    rng_state: dict[str, Any]
    generation: int
    history: dict[str, list[float]]
    best_conn: np.ndarray
    best_act: np.ndarray

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (edges as ``[i, j]`` lists per member, the generator state as a JSON
        string, so 128-bit integers survive any JSON reader); :meth:`from_json` inverts it.

        Example:
          >>> import json, numpy as np
          >>> x, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 2
          >>> r = search(x, y, population=4, generations=1, hidden=2, elite=1,
          ...            progress=False)
          >>> s = SearchState.from_json(json.loads(json.dumps(r.state.to_json())))
          >>> s.generation, bool((s.conn == r.state.conn).all())
          (1, True)
        """
        return {
            "n": int(self.conn.shape[-1]),
            "edges": [np.argwhere(c).tolist() for c in self.conn],
            "act": np.asarray(self.act).tolist(),
            "rng_state": json.dumps(self.rng_state),
            "generation": int(self.generation),
            "history": {k: [float(v) for v in vs] for k, vs in self.history.items()},
            "best_edges": np.argwhere(self.best_conn).tolist(),
            "best_act": np.asarray(self.best_act).tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchState:
        """The state :meth:`to_json` wrote."""
        n = int(data["n"])

        def dense(edges: list[list[int]]) -> np.ndarray:
            conn = np.zeros((n, n), bool)
            if edges:
                e = np.asarray(edges, np.int64)
                conn[e[:, 0], e[:, 1]] = True
            return conn

        return cls(
            np.stack([dense(e) for e in data["edges"]]),
            np.asarray(data["act"], np.int32).reshape(len(data["edges"]), -1),
            json.loads(data["rng_state"]),
            int(data["generation"]),
            {k: [float(v) for v in vs] for k, vs in data["history"].items()},
            dense(data["best_edges"]),
            np.asarray(data["best_act"], np.int32),
        )


class SearchResult(NamedTuple):
    """What :func:`search` returns.

    Attributes:
      history: per generation, numpy arrays (see :class:`SearchState`), plus ``"generation"``.
      population: the final population (the one a further generation would evaluate).
      best: the best-ranked member of the last evaluated generation.
      state: the final :class:`SearchState` (pass it as ``resume=`` to continue).
    """

    history: dict[str, np.ndarray]
    population: Genome
    best: Genome
    state: SearchState


HISTORY_KEYS = ("mean_acc", "max_acc", "connections", "pop_max_acc", "pop_mean_connections")


def _check_search(
    x: Any,
    y: Any,
    population: int,
    generations: int,
    hidden: int,
    links: int,
    elite: int,
    tournament: int,
    batch_size: int | None,
    classes: int | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    if (
        isinstance(population, bool)
        or not isinstance(population, int | np.integer)
        or population < 2
    ):
        raise ValueError(f"population must be an int >= 2, got {population!r}.")
    _checks.check_nonnegative_int(generations, name="generations")
    _checks.check_nonnegative_int(hidden, name="hidden")
    _checks.check_positive_int(links, name="links")
    _checks.check_nonnegative_int(elite, name="elite")
    _checks.check_positive_int(tournament, name="tournament")
    if elite >= population:
        raise ValueError(f"elite must be below population={population}, got {elite}.")
    if batch_size is not None:
        _checks.check_positive_int(batch_size, name="batch_size")
    xj, yj = _checks.check_batch((x, y), name="(x, y)")
    xs = np.asarray(xj, np.float32).reshape(xj.shape[0], -1)
    ys = np.asarray(yj, np.int32)
    if classes is None:
        classes = int(ys.max()) + 1
    _checks.check_positive_int(classes, name="classes")
    if ys.min() < 0 or ys.max() >= classes:
        raise ValueError(
            f"y must hold labels in [0, classes={classes}), got [{ys.min()}, {ys.max()}]."
        )
    return xs, ys, int(classes)


def search(
    x: Any,
    y: Any,
    *,
    population: int = 64,
    generations: int = 32,
    hidden: int = 32,
    activations: Sequence[str] = ACTIVATIONS,
    weights: Sequence[float] = SHARED_WEIGHTS,
    seed: int = 0,
    elite: int = 8,
    tournament: int = 4,
    links: int = 8,
    probs: Sequence[float] = (0.2, 0.25, 0.5),
    batch_size: int | None = None,
    classes: int | None = None,
    conn_prob: float = 0.8,
    progress: bool = True,
    on_generation: Callable[[SearchState], None] | None = None,
    resume: SearchState | None = None,
) -> SearchResult:
    """Evolve weight-agnostic networks on ``(x, y)`` for ``generations`` generations.

    Generation ``g``: draw the evaluation batch (``batch_size`` distinct training examples, or
    all of them if ``None``); :func:`evaluate` every member with every shared weight; score
    member :math:`p` by its mean and max accuracy over the weights and its connection count;
    rank with :func:`pareto_rank` on two objectives, as the WANN code does: with probability
    ``conn_prob`` mean accuracy and connection count, otherwise mean and max accuracy (the three
    at once put every tiny network on the first front, and the search stalls on them); record
    the best-ranked member (the highest mean accuracy) in the history; build the next
    population: the ``elite`` best-ranked members unchanged, then each other child is a
    :func:`mutate` of a tournament winner (``tournament`` members drawn uniformly with
    replacement, the best-ranked wins). The initial population is ``population`` independent
    :func:`minimal` networks with ``links`` input → output edges.

    All randomness comes from ``np.random.default_rng(seed)`` in a fixed order, and JAX evaluation
    is deterministic, so a search is reproducible for a seed. ``on_generation(state)`` is called
    with the :class:`SearchState` after each generation; ``search(..., resume=state)`` with the
    same other arguments continues from it and ends bit-identical to the uninterrupted search.
    ``generations`` is the total count (a resumed search runs ``generations − state.generation``
    more).

    Raises:
      ValueError: before anything runs, for an empty or unknown activation set, ``population`` <
        2, ``hidden`` < 0, ``links`` < 1, ``elite`` ≥ ``population``, or a ``resume`` state that
        does not fit the settings.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = rng.random((64, 4), dtype=np.float32); y = (x[:, 0] > 0.5).astype(np.int32)
      >>> r = search(x, y, population=8, generations=3, hidden=4, elite=2, links=2,
      ...            progress=False, seed=1)
      >>> r.history["mean_acc"].shape, r.best.conn.shape
      ((3,), (11, 11))
    """
    xs, ys, n_out = _check_search(
        x, y, population, generations, hidden, links, elite, tournament, batch_size, classes
    )
    names = _check_activations(activations)
    values = _check_weights(weights)
    _check_probs(probs)
    if not (isinstance(conn_prob, int | float) and 0.0 <= conn_prob <= 1.0):
        raise ValueError(f"conn_prob must be a probability in [0, 1], got {conn_prob!r}.")
    n_in = xs.shape[1]
    if links > (n_in + 1) * n_out:
        raise ValueError(
            f"links must be at most (n_in + 1) * n_out = {(n_in + 1) * n_out}, got {links}."
        )
    if batch_size is not None and batch_size > xs.shape[0]:
        raise ValueError(
            f"batch_size must be at most the {xs.shape[0]} examples, got {batch_size}."
        )
    n = n_in + 1 + hidden + n_out
    rng = np.random.default_rng(seed)
    if resume is None:
        pop = [
            minimal(n_in, n_out, hidden, links=links, activations=names, rng=rng)
            for _ in range(population)
        ]
        state = SearchState(
            np.stack([g.conn for g in pop]),
            np.stack([g.act for g in pop]),
            dict(rng.bit_generator.state),
            0,
            {k: [] for k in HISTORY_KEYS},
            pop[0].conn,
            pop[0].act,
        )
    else:
        state = resume
        if np.shape(state.conn) != (population, n, n) or np.shape(state.act) != (
            population,
            hidden,
        ):
            raise ValueError(
                f"resume holds a population of conn {list(np.shape(state.conn))} and act "
                f"{list(np.shape(state.act))}; these settings need [{population}, {n}, {n}] and "
                f"[{population}, {hidden}]."
            )
        rng.bit_generator.state = state.rng_state
    from tqdm.auto import tqdm  # the progress bar only: importing jaxprune stays light

    mutation = functools.partial(mutate, n_in=n_in, n_out=n_out, probs=probs, activations=names)
    bar = tqdm(
        total=generations,
        initial=min(state.generation, generations),
        desc="wann",
        unit="gen",
        disable=not progress,
        leave=False,
    )
    with bar:
        while state.generation < generations:
            state = _generation(
                state,
                xs,
                ys,
                rng,
                names,
                values,
                elite,
                tournament,
                batch_size,
                mutation,
                float(conn_prob),
            )
            bar.update(1)
            if on_generation is not None:
                on_generation(state)
    done = len(state.history["mean_acc"])
    history = {"generation": np.arange(1, done + 1)}
    history.update({k: np.asarray(v) for k, v in state.history.items()})
    return SearchResult(
        history, Genome(state.conn, state.act), Genome(state.best_conn, state.best_act), state
    )


def _generation(
    state: SearchState,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    names: tuple[str, ...],
    values: tuple[float, ...],
    elite: int,
    tournament: int,
    batch_size: int | None,
    mutation: Callable[[Genome, np.random.Generator], Genome],
    conn_prob: float,
) -> SearchState:
    if batch_size is not None:
        rows = np.sort(rng.choice(x.shape[0], size=batch_size, replace=False))
        x, y = x[rows], y[rows]
    acc = evaluate(Genome(state.conn, state.act), x, y, weights=values, activations=names)
    mean_acc, max_acc = acc.mean(1), acc.max(1)
    connections = state.conn.sum((1, 2))
    # Two objectives a generation: repeating mean accuracy stands for a dropped one (it changes
    # no dominance), so pareto_rank's three-objective fronts become two-objective fronts.
    if rng.random() < conn_prob:
        ranks = pareto_rank(mean_acc, mean_acc, connections)
    else:
        ranks = pareto_rank(mean_acc, max_acc, np.zeros_like(connections))
    order = np.argsort(ranks)
    best = int(order[0])
    history = {k: list(v) for k, v in state.history.items()}
    for key, value in (
        ("mean_acc", mean_acc[best]),
        ("max_acc", max_acc[best]),
        ("connections", connections[best]),
        ("pop_max_acc", max_acc.max()),
        ("pop_mean_connections", connections.mean()),
    ):
        history[key].append(float(value))
    size = state.conn.shape[0]
    children = [Genome(state.conn[i].copy(), state.act[i].copy()) for i in order[:elite]]
    for _ in range(size - elite):
        entrants = rng.integers(size, size=tournament)
        parent = int(entrants[np.argmin(ranks[entrants])])
        children.append(mutation(Genome(state.conn[parent], state.act[parent]), rng))
    return SearchState(
        np.stack([c.conn for c in children]),
        np.stack([c.act for c in children]),
        dict(rng.bit_generator.state),
        state.generation + 1,
        history,
        state.conn[best].copy(),
        state.act[best].copy(),
    )


# --- the paper's four columns ------------------------------------------------------------


def _split(splits: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    pair = splits[name] if isinstance(splits, Mapping) else getattr(splits, name)
    x, y = _checks.check_batch(tuple(pair), name=f"splits[{name!r}]")
    return np.asarray(x, np.float32).reshape(x.shape[0], -1), np.asarray(y, np.int32)


def final_columns(
    genome: Genome,
    splits: Any,
    *,
    activations: Sequence[str] = ACTIVATIONS,
    weights: Sequence[float] = SHARED_WEIGHTS,
    seed: int = 0,
    random_draws: int = 10,
    iterations: int = 500,
    batch_size: int = 128,
    learning_rate: float = 0.01,
    eval_every: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    r"""The WANN paper's four test accuracies for one network.

    * ``random``: each edge weight drawn :math:`U(-2, 2)` independently, the mean (and
      ``random_std``) over ``random_draws`` draws (keys ``fold_in(key(seed), d)``).
    * ``random_shared``: ONE shared weight drawn :math:`U(-2, 2)` for every edge (what the
      paper's "random weight" column most likely is: these networks rely on their edges sharing
      a sign, so independent draws score about chance), the mean (and ``random_shared_std``)
      over ``random_draws`` draws from ``np.random.default_rng(seed)``.
    * ``shared``: the shared weight with the best validation accuracy (first on ties;
      ``shared_weight`` says which), its test accuracy.
    * ``ensemble``: the six-weight ensemble by **summed softmax probabilities**,
      :math:`\hat y = \arg\max_o \sum_w \mathrm{softmax}(z(x; w))_o`.
    * ``trained``: per-edge weights (params ``{"w": W}``, started at ``shared_weight · conn``)
      trained with ``optax.adam(learning_rate)`` for ``iterations`` steps by
      :func:`jaxprune.train.fit` with the steps of :func:`jaxprune.train.make_steps` and
      ``mask = {"w": conn}``, so only the genome's edges move; its final test accuracy
      (``trained_early_stop``: the test accuracy at the evaluation of least validation loss).

    ``splits`` is a :class:`jaxprune.data.Dataset` or a mapping with ``"train"``, ``"val"``,
    ``"test"`` ``(x, y)`` pairs; the output count is ``N − n_in − 1 − H``. Also returns
    ``connections``.

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> x = rng.random((96, 3), dtype=np.float32); y = (x[:, 0] > 0.5).astype(np.int32)
      >>> splits = {"train": (x[:64], y[:64]), "val": (x[64:80], y[64:80]),
      ...           "test": (x[80:], y[80:])}
      >>> g = minimal(3, 2, 2, links=3, rng=rng)
      >>> cols = final_columns(g, splits, iterations=20, batch_size=16)
      >>> sorted(cols)  # doctest: +NORMALIZE_WHITESPACE
      ['connections', 'ensemble', 'random', 'random_shared', 'random_shared_std', 'random_std',
       'shared', 'shared_weight', 'trained', 'trained_early_stop']
    """
    from jaxprune import train  # the training engine is needed only here

    names = _check_activations(activations)
    values = _check_weights(weights)
    _checks.check_positive_int(random_draws, name="random_draws")
    (xt, yt), (xv, yv), (xs, ys) = (_split(splits, k) for k in ("train", "val", "test"))
    pop, n_in, n_out = _check_population(
        Genome(np.asarray(genome.conn)[None], np.asarray(genome.act)[None]), xs
    )
    connections = float(pop.conn[0].sum())
    pop = _compact(pop, n_in, n_out, multiple=1)  # the same network without its unused slots
    conn, act = jnp.asarray(pop.conn[0], jnp.float32), jnp.asarray(pop.act[0])
    model = functools.partial(_edge_logits, act=act, n_in=n_in, n_out=n_out, names=names)

    def accuracy(logits: Array, labels: np.ndarray) -> float:
        return float(jnp.mean(jnp.argmax(logits, -1) == labels))

    key = jax.random.key(seed)
    draws = [
        accuracy(
            model(
                {
                    "w": conn
                    * jax.random.uniform(
                        jax.random.fold_in(key, d), conn.shape, minval=-2.0, maxval=2.0
                    )
                },
                xs,
            ),
            ys,
        )
        for d in range(random_draws)
    ]
    drawn = np.random.default_rng(seed).uniform(-2.0, 2.0, random_draws)
    shared_draws = evaluate(pop, xs, ys, weights=tuple(drawn), activations=names)[0]
    val_acc = evaluate(pop, xv, yv, weights=values, activations=names)[0]
    best = int(np.argmax(val_acc))
    best_w = values[best]
    test_logits = _population_logits(
        pop.conn,
        pop.act,
        jnp.asarray(xs),
        jnp.asarray(values, jnp.float32),
        n_out=n_out,
        names=names,
    )[0]
    ensemble = accuracy(jax.nn.softmax(test_logits, -1).sum(0), ys)
    shared = float(evaluate(pop, xs, ys, weights=values, activations=names)[0, best])
    steps = train.make_steps(model, optax.adam(learning_rate))
    mask = {"w": jnp.asarray(pop.conn[0])}
    state = steps.init({"w": best_w * conn})
    _, hist = train.fit(
        steps,
        state,
        mask,
        (xt, yt),
        (xv, yv),
        (xs, ys),
        iterations=iterations,
        batch_size=min(batch_size, xt.shape[0]),
        eval_every=eval_every or iterations,
        data_key=jax.random.fold_in(key, random_draws),
        progress=progress,
        desc="wann weights",
    )
    return {
        "connections": connections,
        "random": float(np.mean(draws)),
        "random_std": float(np.std(draws)),
        "random_shared": float(np.mean(shared_draws)),
        "random_shared_std": float(np.std(shared_draws)),
        "shared": shared,
        "shared_weight": float(best_w),
        "ensemble": ensemble,
        "trained": float(hist.test_acc[-1]),
        "trained_early_stop": float(hist.early_stop_test_acc),
    }


def _edge_logits(
    params: dict[str, Array],
    x: ArrayLike,
    *,
    act: Array,
    n_in: int,
    n_out: int,
    names: tuple[str, ...],
) -> Array:
    return forward(params["w"], act, x, n_in=n_in, n_out=n_out, activations=names)
