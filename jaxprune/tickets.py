r"""Tickets as a library layer: the ticket table and one pruning round over every ticket at once.

A *ticket* is one network going through iterative pruning: a seed (which rewind point it starts
from), a mask criterion, a kept-weight reset and a pruned-weight value (the three choices of the
Deconstructing-Lottery-Tickets grid, Zhou et al. 2019), and a *source*: the ticket whose mask it
takes (itself, or — for Frankle & Carbin's re-initialisation control — another ticket).

A :class:`Table` holds N tickets. Its per-ticket numbers are arrays (``keys``, ``seed``,
``source``); its names are static (``criterion``, ``kept``, ``pruned``), so a table is a pytree
whose names are part of the compiled program's shape and whose numbers are not: changing a key, a
seed or a source never recompiles.

:func:`next_level` is one round for all tickets, in one jitted program. With
:math:`k_i = \mathrm{fold\_in}(\mathrm{keys}_i, \ell)` at level :math:`\ell` and
:math:`k_i^{(j)} = \mathrm{fold\_in}(k_i, j)`, ticket :math:`i`

1. scores its weights, :math:`s_i = \mathrm{criterion}_i(w_{init,i}, w_{final,i};\ g_i, M_i,
   k_i^{(0)})` (:func:`jaxprune.criteria.score`, or a scorer of the caller's);
2. selects, :math:`M'_i = \mathrm{select}(s_i, M_i, r_i)` — :func:`jaxprune.select.prune`,
   ``layerwise`` or ``global``, score ties broken at random by :math:`k_i^{(1)}` (by index, a
   sign criterion would keep a block of the first rows);
3. takes its source's mask, :math:`M_i \leftarrow M'_{\mathrm{source}_i}`;
4. resets: kept values :math:`\mathrm{kept}_i(w_{init,i}, M_i; k_i^{(2)})`, pruned values
   :math:`f_i = \mathrm{pruned}_i(w_{init,i}, w_{final,i}, M_i; k_i^{(3)})` and the params to train
   from, :math:`\theta_i = \mathrm{where}(M_i, \mathrm{kept}, f_i)`
   (:func:`jaxprune.reset.reset_kept`, :func:`~jaxprune.reset.pruned_values`,
   :func:`~jaxprune.reset.start_params`).

Tickets that share a criterion (or a kept reset, or a pruned value) are gathered, vmapped and
scattered back *inside* the trace, and the selection runs once over all tickets: one program for
the whole grid, however many names it holds, and each name's work compiled once.

The level-by-level driver around it — train, evaluate, checkpoint, commit rows, resume — is
:func:`jaxprune.sweep.run_levels`.

Example — three criteria × two resets × two seeds, one round:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import masks, tickets
  >>> table = tickets.grid(seeds=2, criteria=("large_final", "random", "movement"),
  ...                      kept=("rewind", "reinit"), key=jax.random.key(0))
  >>> table.n
  12
  >>> w0 = {"w": jax.random.normal(jax.random.key(1), (2, 8, 4))}  # one rewind point per seed
  >>> w_init = jax.tree.map(lambda a: a[table.seed], w0)          # one per ticket
  >>> w_final = jax.tree.map(lambda a: 2 * a, w_init)
  >>> new = tickets.next_level(table, 1, w_init, w_final, jax.vmap(masks.ones)(w_init), 0.5)
  >>> new.mask["w"].sum(axis=(1, 2)).tolist()  # every ticket keeps exactly half
  [16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16]
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks, criteria, masks, reset, select
from jaxprune._types import Array, ArrayLike, Key, Mask, Params, Prunable, PyTree, Scores

__all__ = [
    "LAYOUTS",
    "Round",
    "Scorer",
    "Table",
    "Ticket",
    "gather",
    "grid",
    "needs",
    "next_level",
    "table",
]

LAYOUTS = ("product", "slices")


class Ticket(NamedTuple):
    """One ticket, as written by hand (host values); :func:`table` stacks many.

    ``source=None`` means the ticket takes its own mask.
    """

    seed: int = 0
    criterion: str = "large_final"
    kept: str = "rewind"
    pruned: str = "zero"
    source: int | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """N tickets: per-ticket arrays and static names (a pytree; build it with :func:`table`).

    Attributes:
      keys: ``(N,)`` typed PRNG keys, one per ticket (each level folds in its number).
      seed: ``(N,)`` int32: the row of the per-seed rewind points each ticket starts from.
      source: ``(N,)`` int32: the ticket whose new mask each ticket takes.
      criterion, kept, pruned: N names each (static).
    """

    keys: Key
    seed: Array
    source: Array
    criterion: tuple[str, ...]
    kept: tuple[str, ...]
    pruned: tuple[str, ...]

    @property
    def n(self) -> int:
        """The number of tickets."""
        return len(self.criterion)

    def tickets(self) -> list[Ticket]:
        """The table as host :class:`Ticket` values (for row labels and reports)."""
        seeds, sources = np.asarray(self.seed).tolist(), np.asarray(self.source).tolist()
        return [
            Ticket(int(s), c, k, p, int(src))
            for s, c, k, p, src in zip(
                seeds, self.criterion, self.kept, self.pruned, sources, strict=True
            )
        ]


jax.tree_util.register_dataclass(
    Table, data_fields=["keys", "seed", "source"], meta_fields=["criterion", "kept", "pruned"]
)


def table(tickets: Sequence[Ticket], *, key: Key) -> Table:
    """Stack tickets into a :class:`Table`; ticket ``i`` gets the key ``fold_in(key, i)``.

    Raises:
      ValueError: no tickets; a negative seed; a source outside ``[0, N)``; a kept or pruned name
        that :mod:`jaxprune.reset` does not know. (Criterion names are checked by
        :func:`next_level`, which may be given scorers of the caller's own.)

    Example — Frankle & Carbin's control: ticket 1 takes ticket 0's mask, with fresh weights:
      >>> import jax
      >>> from jaxprune import tickets
      >>> t = tickets.table([tickets.Ticket(0), tickets.Ticket(0, kept="reinit", source=0)],
      ...                   key=jax.random.key(0))
      >>> t.source.tolist(), t.kept
      ([0, 0], ('rewind', 'reinit'))
    """
    _checks.check_key(key)
    if not tickets:
        raise ValueError("tickets must hold at least one Ticket, got an empty sequence.")
    n = len(tickets)
    for i, t in enumerate(tickets):
        if not isinstance(t, Ticket):
            raise ValueError(f"tickets[{i}] must be a tickets.Ticket, got {t!r}.")
        if not isinstance(t.seed, int | np.integer) or t.seed < 0:
            raise ValueError(f"tickets[{i}].seed must be an integer ≥ 0, got {t.seed!r}.")
        if t.source is not None and not 0 <= t.source < n:
            raise ValueError(
                f"tickets[{i}].source must be a ticket index in [0, {n}) or None, got {t.source!r}."
            )
        _checks.check_choice(t.kept, reset.KEPT, name=f"tickets[{i}].kept")
        _checks.check_choice(t.pruned, reset.PRUNED, name=f"tickets[{i}].pruned")
    return Table(
        keys=_fold_in_range(key, n=n),
        seed=jnp.asarray([t.seed for t in tickets], jnp.int32),
        source=jnp.asarray(
            [i if t.source is None else t.source for i, t in enumerate(tickets)], jnp.int32
        ),
        criterion=tuple(t.criterion for t in tickets),
        kept=tuple(t.kept for t in tickets),
        pruned=tuple(t.pruned for t in tickets),
    )


@functools.partial(jax.jit, static_argnames="n")
def _fold_in_range(key: Key, *, n: int) -> Key:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def grid(
    seeds: int | Iterable[int],
    criteria: Sequence[str] = ("large_final",),
    kept: Sequence[str] = ("rewind",),
    pruned: Sequence[str] = ("zero",),
    *,
    layout: str = "product",
    key: Key,
) -> Table:
    """The tickets of an ablation grid, seed-major: every combination for seed 0, then seed 1, …

    ``layout="product"`` takes every (criterion, kept, pruned) combination; ``"slices"`` varies
    one choice at a time around the first of each list (Zhou et al.'s ablations: every criterion
    with ``kept[0]``/``pruned[0]``, every kept reset with ``criteria[0]``/``pruned[0]``, every
    pruned value with ``criteria[0]``/``kept[0]``), each combination once.

    Example:
      >>> import jax
      >>> from jaxprune import tickets
      >>> t = tickets.grid(2, ("large_final", "random"), ("rewind", "reinit"), layout="slices",
      ...                  key=jax.random.key(0))
      >>> list(zip(t.criterion, t.kept))[:3], t.seed.tolist()
      ([('large_final', 'rewind'), ('random', 'rewind'), ('large_final', 'reinit')], [0, 0, 0, 1, 1, 1])
    """
    _checks.check_choice(layout, LAYOUTS, name="layout")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    for name, values in (("criteria", criteria), ("kept", kept), ("pruned", pruned)):
        if isinstance(values, str) or not values:
            raise ValueError(f"{name} must be a non-empty sequence of names, got {values!r}.")
    if layout == "product":
        combos = list(itertools.product(criteria, kept, pruned))
    else:
        c0, k0, p0 = criteria[0], kept[0], pruned[0]
        combos = (
            [(c, k0, p0) for c in criteria]
            + [(c0, k, p0) for k in kept]
            + [(c0, k0, p) for p in pruned]
        )
    combos = list(dict.fromkeys(combos))
    return table([Ticket(s, c, k, p) for s in seed_list for c, k, p in combos], key=key)


class Scorer(Protocol):
    """A criterion of the caller's: ``scorer(w_init, w_final, *, grads, mask, key) -> scores``.

    Called per ticket (under ``vmap``) with the same arguments :func:`jaxprune.criteria.score`
    gets; it must be hashable (a module-level function or one closure kept for the whole run),
    because it is part of the compiled program.
    """

    def __call__(
        self, w_init: Params, w_final: Params, *, grads: PyTree, mask: Mask, key: Key
    ) -> Scores: ...


def needs(table: Table, scorers: Mapping[str, Scorer] | None = None) -> frozenset[str]:
    """The optional inputs the table's criteria and resets need (a subset of ``{"grads",
    "w_final", "key"}``); a caller's scorer is taken to need ``w_final``.

    Example:
      >>> import jax
      >>> from jaxprune import tickets
      >>> sorted(tickets.needs(tickets.grid(1, ("snip",), key=jax.random.key(0))))
      ['grads']
    """
    out: set[str] = set()
    for name in dict.fromkeys(table.criterion):
        out |= {"w_final"} if scorers and name in scorers else criteria.needs(name)
    for k, p in dict.fromkeys(zip(table.kept, table.pruned, strict=True)):
        out |= reset.needs(k, p)
    return frozenset(out)


class Round(NamedTuple):
    """What a round gives every ticket (stacked): the mask, the params to train from, and the
    pruned weights' frozen values (``"forward"`` masking mode; zeros for ``pruned="zero"``)."""

    mask: Mask
    params: Params
    frozen: Params


def _groups(labels: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    out: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        out.setdefault(label, []).append(i)
    return {k: np.asarray(v, np.int32) for k, v in out.items()}


def _take(tree: PyTree, idx: np.ndarray, n: int) -> PyTree:
    if len(idx) == n:  # the group is every ticket, in order: no gather
        return tree
    return jax.tree.map(lambda a: a[idx], tree)


def _put(tree: PyTree, idx: np.ndarray, part: PyTree, n: int) -> PyTree:
    if len(idx) == n:
        return part
    return jax.tree.map(lambda a, b: a.at[idx].set(b.astype(a.dtype)), tree, part)


def _per_ticket_rates(rates: PyTree, mask: Mask, n: int, scope: str) -> PyTree:
    """Rates with a leading ticket axis: one scalar per ticket (and per leaf for layerwise)."""
    structure: Any = jax.tree.structure(rates)
    per_leaf = bool(structure == jax.tree.structure(mask))
    if not per_leaf and len(jax.tree.leaves(rates)) != 1:
        raise ValueError(
            "rates must be one rate (a scalar, or one per ticket) or, for layerwise selection, a "
            f"pytree of rates like the params (select.rates_by_pattern); got {len(jax.tree.leaves(rates))} "
            f"leaves for {len(jax.tree.leaves(mask))} params leaves."
        )
    if per_leaf and scope == "global":
        raise ValueError("rates must be one rate for global selection, got a pytree of rates.")

    def spread(path: str, r: Any) -> Array:
        if np.shape(r) not in ((), (n,)):
            raise ValueError(
                f"rates{path} must be a scalar or hold one rate per ticket (shape [{n}]), got "
                f"shape {list(np.shape(r))}."
            )
        return jnp.broadcast_to(jnp.asarray(r, jnp.float32), (n,))

    if not per_leaf:
        return spread("", jax.tree.leaves(rates)[0])
    flat, treedef = jax.tree.flatten(rates)
    paths = [p for p, _ in _checks.leaves_with_paths(rates)]
    return jax.tree.unflatten(treedef, [spread(p, r) for p, r in zip(paths, flat, strict=True)])


def _score(
    name: str, scorers: Mapping[str, Scorer], wi: Params, wf: Params, g: PyTree, m: Mask, k: Key
) -> Scores:
    if name in scorers:
        return scorers[name](wi, wf, grads=g, mask=m, key=k)
    need = criteria.needs(name)
    return criteria.score(
        name,
        wi,
        wf,
        grads=g if "grads" in need else None,
        mask=m,
        key=k if "key" in need else None,
    )


@functools.partial(jax.jit, static_argnames=("scope", "min_keep", "scorers", "prunable"))
def _round(
    table: Table,
    level: Array,
    w_init: Params,
    w_final: Params,
    mask: Mask,
    rates: PyTree,
    grads: PyTree | None,
    *,
    scope: str,
    min_keep: int,
    scorers: tuple[tuple[str, Scorer], ...],
    prunable: tuple[bool, ...] | None,
) -> Round:
    n = table.n
    custom = dict(scorers)
    keys = jax.vmap(lambda k: jax.random.fold_in(k, level))(table.keys)
    rates = _per_ticket_rates(rates, mask, n, scope)

    # Scores per criterion (only the tickets that use it), then one selection for every ticket:
    # XLA compiles one sort per leaf for the whole table, not one per criterion.
    scores = jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), mask)
    for name, idx in _groups(table.criterion).items():

        def score(wi: Params, wf: Params, m: Mask, g: PyTree, k: Key, name: Any = name) -> Scores:
            return _score(str(name), custom, wi, wf, g, m, jax.random.fold_in(k, 0))

        part = jax.vmap(score)(*(_take(a, idx, n) for a in (w_init, w_final, mask, grads, keys)))
        scores = _put(scores, idx, part, n)

    # The flags of one ticket's leaves, back in the tree shape select reads (None: its default).
    flags = None if prunable is None else jax.tree.unflatten(jax.tree.structure(mask), prunable)

    def choose(s: Scores, m: Mask, r: PyTree, k: Key) -> Mask:
        tie_key = jax.random.fold_in(k, 1)
        opts: dict[str, Any] = {"scope": scope, "prunable": flags, "min_keep": min_keep}
        return select.prune(s, m, r, key=tie_key, **opts)

    new = jax.vmap(choose)(scores, mask, rates, keys)
    # Every ticket takes its source's new mask (itself, unless it is a control).
    mask = jax.tree.map(lambda a: a[table.source], new)

    # reset.reset, split so that each kept reset and each pruned value is computed once for the
    # tickets that use it. The random kept resets all read one permutation per leaf: drawn once
    # per ticket that uses one (a permutation is a sort, the slow part of a round on a CPU).
    random_kept = [i for i, k in enumerate(table.kept) if "key" in reset.KEPT[k].needs]
    perms = None
    if random_kept:
        idx = np.asarray(random_kept, np.int32)
        drawn = jax.vmap(lambda w, k: reset.permutations(w, jax.random.fold_in(k, 2)))(
            _take(w_init, idx, n), _take(keys, idx, n)
        )
        perms = _put(
            jax.tree.map(lambda p: jnp.zeros((n, *p.shape[1:]), p.dtype), drawn), idx, drawn, n
        )
    start = w_init
    for kept, idx in _groups(table.kept).items():
        need = reset.KEPT[str(kept)].needs

        def keep(
            wi: Params, m: Mask, wf: Params, pm: PyTree, kept: Any = kept, need: Any = need
        ) -> Params:
            return reset.reset_kept(
                str(kept), wi, m, permutations=pm if "key" in need else None,
                w_final=wf if "w_final" in need else None,
            )  # fmt: skip

        part = jax.vmap(keep)(*(_take(a, idx, n) for a in (w_init, mask, w_final, perms)))
        start = _put(start, idx, part, n)
    params, frozen = start, start
    for pruned, idx in _groups(table.pruned).items():
        need = reset.PRUNED[str(pruned)].needs

        def freeze(
            wi: Params,
            m: Mask,
            wf: Params,
            k: Key,
            st: Params,
            pruned: Any = pruned,
            need: Any = need,
        ) -> tuple[Params, Params]:
            wf = wf if "w_final" in need else None
            f = reset.pruned_values(
                str(pruned),
                wi,
                m,
                w_final=wf,
                key=jax.random.fold_in(k, 3) if "key" in need else None,
            )
            return reset.start_params(st, f, m, pruned=str(pruned), w_init=wi, w_final=wf), f

        args = (w_init, mask, w_final, keys, start)
        p, f = jax.vmap(freeze)(*(_take(a, idx, n) for a in args))
        params, frozen = _put(params, idx, p, n), _put(frozen, idx, f, n)
    return Round(mask, params, frozen)


def _check_stacked(tree: PyTree, n: int, *, name: str) -> None:
    for path, leaf in _checks.leaves_with_paths(tree):
        shape = np.shape(leaf)
        if not shape or shape[0] != n:
            raise ValueError(
                f"{name}{path} must carry a leading ticket axis of {n} (the table's tickets), "
                f"got shape {list(shape)}."
            )


def next_level(
    table: Table,
    level: ArrayLike,
    w_init: Params,
    w_final: Params,
    mask: Mask,
    rates: ArrayLike | PyTree,
    *,
    grads: PyTree | None = None,
    scope: str = "layerwise",
    min_keep: int = 0,
    scorers: Mapping[str, Scorer] | None = None,
    prunable: Prunable = None,
) -> Round:
    """One pruning round for every ticket of ``table``, in one compiled program (module docs).

    Args:
      table: the tickets (:func:`table`, :func:`grid`).
      level: the round's number ℓ (an int or int array; folded into every ticket's key).
      w_init: rewind points, stacked over tickets (leading axis N).
      w_final: trained weights, stacked likewise.
      mask: current masks, stacked likewise; pruned weights stay pruned.
      rates: fraction of each ticket's *remaining* weights to prune: a scalar, a per-leaf pytree
        of scalars (:func:`jaxprune.select.rates_by_pattern`; layerwise only), or either with a
        leading ticket axis for per-ticket rates. Arrays: new values never recompile.
      grads: gradients at ``w_init`` stacked likewise, when a criterion needs them (:func:`needs`).
      scope: ``"layerwise"`` or ``"global"`` selection (static).
      min_keep: weights always kept per layer (static; see :func:`jaxprune.select.prune`).
      scorers: criteria of the caller's by name (see :class:`Scorer`), used where a ticket's
        criterion is one of them.
      prunable: which leaves the selection may prune (a :data:`~jaxprune._types.Prunable` spec,
        read on one ticket's mask; default: ``ndim >= 2``), e.g. ``masks.rule(exclude="out")``
        for open_lth's ``pruning_layers_to_ignore``; the others keep their masks. Resets still
        apply to every kernel (:func:`jaxprune.reset.reset_kept`'s default).

    Returns:
      A :class:`Round` of stacked masks, start params and frozen pruned values.

    Raises:
      ValueError: an unknown criterion; a needed input missing; trees without the leading
        ticket axis or of different structures.
    """
    _checks.check_choice(scope, select.SCOPES, name="scope")
    scorers = dict(scorers or {})
    for i, name in enumerate(table.criterion):
        if name not in scorers:
            _checks.check_choice(name, criteria.CRITERIA, name=f"table.criterion[{i}]")
    if "grads" in needs(table, scorers) and grads is None:
        wanting = sorted(
            {c for c in table.criterion if c not in scorers and "grads" in criteria.needs(c)}
        )
        raise ValueError(
            f"grads is required by criteria {wanting} (gradients at w_init), got None."
        )
    n = table.n
    for name, tree in (("w_init", w_init), ("w_final", w_final), ("mask", mask)):
        _check_stacked(tree, n, name=name)
    _checks.check_like(w_final, w_init, name="w_final", ref_name="w_init")
    _checks.check_mask(mask, w_init)
    if grads is not None:
        _check_stacked(grads, n, name="grads")
        _checks.check_like(grads, w_init, name="grads", ref_name="w_init")
    # One device, committed: arrays fresh from a sharded fit and arrays made here must not look
    # like different programs to jit.
    w_init, w_final, mask, rates, grads = jax.device_put(
        (w_init, w_final, mask, rates, grads), jax.devices()[0]
    )
    return _round(
        table,
        jnp.asarray(level, jnp.int32),
        w_init,
        w_final,
        mask,
        rates,
        grads,
        scope=scope,
        min_keep=min_keep,
        scorers=tuple(sorted(scorers.items())),
        prunable=None if prunable is None else _flags(mask, prunable),
    )


def _flags(mask: Mask, prunable: Prunable) -> tuple[bool, ...]:
    """One Python bool per leaf of one ticket's mask: hashable, so any spec (a rule, a regex, a
    tree of bools) becomes one static argument, and equal specs share the program."""
    one = jax.tree.map(lambda m: m[0], mask)
    return tuple(bool(f) for f in jax.tree.leaves(masks.is_prunable(one, prunable)))


def gather(tree: PyTree, index: ArrayLike) -> PyTree:
    """Rows ``index`` of every leaf's leading axis, on the device (e.g. per-seed rewind points to
    per-ticket ones: ``gather(theta0, table.seed)``). One compiled program per tree shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import tickets
      >>> tickets.gather({"w": jnp.array([[1.0], [2.0]])}, jnp.array([1, 1, 0]))["w"].tolist()
      [[2.0], [2.0], [1.0]]
    """
    return _gather(tree, jnp.asarray(index, jnp.int32))


@jax.jit
def _gather(tree: PyTree, index: Array) -> PyTree:
    return jax.tree.map(lambda a: a[index], tree)
