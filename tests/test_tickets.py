"""The ticket table and next_level against a per-ticket loop over the public core functions.

The reference computes every ticket alone, eagerly, with ``criteria.score``, ``select.prune``,
``reset.reset_kept`` / ``pruned_values`` / ``start_params`` and the documented keys; next_level
runs every registered criterion, kept reset and pruned value under ``jit ∘ vmap`` over tickets.
Scores are elementwise functions or exact sorts of the same inputs, so the masks must be equal
bit for bit; reset values are compared with a float tolerance (``constant`` takes a standard
deviation, a reduction whose summation order may differ under vmap).
"""

from __future__ import annotations

import itertools

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import criteria, masks, reset, select, tickets, train

LEVEL = 3
RATES = {"fc1": {"kernel": 0.5, "bias": 0.0}, "out": {"kernel": 0.4, "bias": 0.0}}


def _inputs(table: tickets.Table, seeds: int = 2):
    theta0 = helpers.stack([helpers.random_params(s) for s in range(seeds)])
    w_init = tickets.gather(theta0, table.seed)
    rng = np.random.default_rng(7)
    w_final = jax.tree.map(lambda a: a * rng.uniform(-0.5, 2.0, a.shape).astype(np.float32), w_init)
    # A mask already pruned once, so "remaining" differs from "all".
    mask = jax.tree.map(
        lambda a: rng.random(a.shape) < 0.8 if a.ndim >= 3 else np.ones(a.shape, bool), w_init
    )
    grads = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), w_init)
    return w_init, w_final, mask, grads


def _row(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def _alone(table: tickets.Table, w_init, w_final, mask, grads, rates, scope="layerwise"):
    """Every ticket by itself: score, select, take the source's mask, reset (module docs)."""
    new_masks, keys = [], []
    for i, t in enumerate(table.tickets()):
        k = jax.random.fold_in(table.keys[i], LEVEL)
        keys.append(k)
        need = criteria.needs(t.criterion)
        s = criteria.score(
            t.criterion, _row(w_init, i), _row(w_final, i), mask=_row(mask, i),
            grads=_row(grads, i) if "grads" in need else None,
            key=jax.random.fold_in(k, 0) if "key" in need else None,
        )  # fmt: skip
        new_masks.append(
            select.prune(s, _row(mask, i), rates, scope=scope, key=jax.random.fold_in(k, 1))
        )
    out = []
    for i, t in enumerate(table.tickets()):
        m = new_masks[t.source]
        wi, wf, k = _row(w_init, i), _row(w_final, i), keys[i]
        start = reset.reset_kept(t.kept, wi, m, key=jax.random.fold_in(k, 2), w_final=wf)
        frozen = reset.pruned_values(t.pruned, wi, m, w_final=wf, key=jax.random.fold_in(k, 3))
        params = reset.start_params(start, frozen, m, pruned=t.pruned, w_init=wi, w_final=wf)
        out.append((m, params, frozen))
    return out


def _compare(got: tickets.Round, want) -> None:
    for i, (m, params, frozen) in enumerate(want):
        for a, b in zip(jax.tree.leaves(_row(got.mask, i)), jax.tree.leaves(m), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=f"mask of ticket {i}")
        for name, g, w in (("params", got.params, params), ("frozen", got.frozen, frozen)):
            for a, b in zip(jax.tree.leaves(_row(g, i)), jax.tree.leaves(w), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"{name} {i}")


def test_every_criterion_reset_and_pruned_value_equals_each_ticket_alone():
    table = tickets.grid(
        2, criteria.names(), reset.kept_names(), reset.pruned_names(), layout="slices",
        key=jax.random.key(11),
    )  # fmt: skip
    assert table.n == 2 * (15 + len(reset.kept_names()) - 1 + 5 - 1)
    w_init, w_final, mask, grads = _inputs(table)
    got = tickets.next_level(table, LEVEL, w_init, w_final, mask, RATES, grads=grads)
    _compare(got, _alone(table, w_init, w_final, mask, grads, RATES))


def test_sources_controls_and_global_selection():
    # Ticket 1 takes ticket 0's mask (Frankle & Carbin's reinit control); 2 and 3 are a pair.
    table = tickets.table(
        [
            tickets.Ticket(0, "large_final"),
            tickets.Ticket(0, "large_final", "reinit", source=0),
            tickets.Ticket(1, "random", "constant", "freeze_init_zero_random"),
            tickets.Ticket(1, "movement", "signed_constant_rescaled", source=2),
        ],
        key=jax.random.key(5),
    )
    w_init, w_final, mask, grads = _inputs(table)
    got = tickets.next_level(table, LEVEL, w_init, w_final, mask, 0.3, scope="global")
    want = _alone(table, w_init, w_final, mask, grads, 0.3, scope="global")
    _compare(got, want)
    for a, b in zip(
        jax.tree.leaves(_row(got.mask, 0)), jax.tree.leaves(_row(got.mask, 1)), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_per_ticket_rates_prune_each_ticket_to_its_own_count():
    table = tickets.grid(3, ("large_final",), key=jax.random.key(0))
    w_init, w_final, _, _ = _inputs(table, seeds=3)
    ones = jax.vmap(masks.ones)(w_init)
    rates = jnp.array([0.0, 0.5, 0.9])
    got = tickets.next_level(table, 1, w_init, w_final, ones, rates)
    for i, r in enumerate((0.0, 0.5, 0.9)):
        for leaf in ("fc1", "out"):
            size = np.asarray(w_init[leaf]["kernel"][i]).size
            kept = int(np.asarray(got.mask[leaf]["kernel"][i]).sum())
            assert kept == size - int(np.floor(r * size + 0.5)), (i, leaf)


def test_new_keys_levels_rates_sources_and_weights_never_recompile():
    def table_with(key: int, source: int) -> tickets.Table:
        return tickets.table(
            [tickets.Ticket(0, "random", "reinit"), tickets.Ticket(1, "snip", source=source)],
            key=jax.random.key(key),
        )

    first = table_with(0, 1)
    w_init, w_final, mask, grads = _inputs(first)
    tickets.next_level(first, 1, w_init, w_final, mask, RATES, grads=grads)
    host = jax.tree.map(np.asarray, w_final)
    cases = [
        (level, table_with(key, source), jax.tree.map(lambda r, s=s: r * s / 2, RATES),
         jax.tree.map(lambda a, s=s: a * np.float32(s), host))
        for level, key, source, s in ((2, 3, 0, 1.5), (9, 4, 1, 0.5))
    ]  # fmt: skip
    with train.count_compiles() as c:
        for level, table, rates, wf in cases:
            jax.block_until_ready(
                tickets.next_level(table, level, w_init, wf, mask, rates, grads=grads)
            )
    assert c.programs == 0


def test_grid_layouts_list_the_combinations_in_order():
    crit, kept, pruned = ("large_final", "random"), ("rewind", "reinit"), ("zero", "freeze_init")
    product = tickets.grid([4, 7], crit, kept, pruned, key=jax.random.key(0))
    combos = list(itertools.product(crit, kept, pruned))
    assert list(zip(product.criterion, product.kept, product.pruned, strict=True)) == combos * 2
    assert product.seed.tolist() == [4] * 8 + [7] * 8
    slices = tickets.grid(1, crit, kept, pruned, layout="slices", key=jax.random.key(0))
    assert list(zip(slices.criterion, slices.kept, slices.pruned, strict=True)) == [
        ("large_final", "rewind", "zero"), ("random", "rewind", "zero"),
        ("large_final", "reinit", "zero"), ("large_final", "rewind", "freeze_init"),
    ]  # fmt: skip
    # Ticket i's key is fold_in(key, i): new keys per ticket, the same for the same table.
    keys = jax.random.key_data(slices.keys)
    want = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(jax.random.key(0), i)))(
        jnp.arange(4)
    )
    np.testing.assert_array_equal(keys, want)


def test_custom_scorer_is_used_for_its_name():
    def by_final(w_init, w_final, *, grads, mask, key):
        del w_init, grads, mask, key
        return jax.tree.map(jnp.abs, w_final)

    mine = tickets.grid(2, ("mine",), key=jax.random.key(3))
    theirs = tickets.grid(2, ("large_final",), key=jax.random.key(3))
    w_init, w_final, mask, _ = _inputs(mine)
    a = tickets.next_level(mine, 1, w_init, w_final, mask, RATES, scorers={"mine": by_final})
    b = tickets.next_level(theirs, 1, w_init, w_final, mask, RATES)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_input_names_the_argument():
    table = tickets.grid(2, ("snip",), key=jax.random.key(0))
    w_init, w_final, mask, grads = _inputs(table)
    with pytest.raises(ValueError, match=r"grads is required by criteria \['snip'\]"):
        tickets.next_level(table, 1, w_init, w_final, mask, RATES)
    bad = tickets.grid(1, ("largest",), key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"table.criterion\[0\].*'largest'"):
        tickets.next_level(bad, 1, *(_row(t, slice(0, 1)) for t in (w_init, w_final, mask)), 0.5)
    one = jax.tree.map(lambda a: a[:1], w_init)
    with pytest.raises(
        ValueError, match=r"w_init\['fc1'\]\['bias'\] must carry a leading ticket axis of 2"
    ):
        tickets.next_level(table, 1, one, w_final, mask, RATES, grads=grads)
    with pytest.raises(
        ValueError, match=r"rates\['fc1'\]\['kernel'\] must be a scalar or hold one rate per ticket"
    ):
        rates = {**RATES, "fc1": {"kernel": jnp.ones(5) * 0.5, "bias": 0.0}}
        tickets.next_level(table, 1, w_init, w_final, mask, rates, grads=grads)
    with pytest.raises(ValueError, match="must be one rate for global selection"):
        tickets.next_level(table, 1, w_init, w_final, mask, RATES, grads=grads, scope="global")
    with pytest.raises(ValueError, match=r"tickets\[1\].source must be a ticket index in \[0, 2\)"):
        tickets.table([tickets.Ticket(0), tickets.Ticket(0, source=2)], key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"tickets\[0\].kept"):
        tickets.table([tickets.Ticket(0, kept="rewinding")], key=jax.random.key(0))
    with pytest.raises(ValueError, match="layout"):
        tickets.grid(1, layout="diagonal", key=jax.random.key(0))
