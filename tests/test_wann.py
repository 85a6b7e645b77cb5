"""Weight-agnostic networks: forward against numpy, mutations by array diffs, ranking by brute
force, search determinism and resume."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import train, wann

NUMPY_ACTS = {
    "linear": lambda z: z,
    "step": lambda z: (z > 0).astype(z.dtype),
    "sin": lambda z: np.sin(np.pi * z),
    "gaussian": lambda z: np.exp(-(z**2) / 2),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "inverse": lambda z: -z,
    "abs": np.abs,
    "relu": lambda z: np.maximum(z, 0),
    "cos": lambda z: np.cos(np.pi * z),
}
# One compiled forward for every test (conn weights and act are traced: no recompiles).
FWD = jax.jit(wann.forward, static_argnames=("n_in", "n_out", "activations"))


def _forward_weights(stacked, act, x, n_in, n_out):
    return jax.vmap(lambda w: wann.forward(w, act, x, n_in=n_in, n_out=n_out))(stacked)


FWD_WEIGHTS = jax.jit(_forward_weights, static_argnames=("n_in", "n_out"))
# Activations computed exactly in float32 on dyadic numbers (no rounding anywhere).
EXACT = ("linear", "step", "inverse", "abs", "relu")


def numpy_forward(weights, act, x, n_in, n_out):
    """Node by node, in float64: a_j = f_j(sum_i W_ij a_i); outputs linear."""
    weights = np.asarray(weights, np.float64)
    n = weights.shape[0]
    hidden = n - n_in - 1 - n_out
    a = np.zeros((x.shape[0], n))
    a[:, :n_in] = x.reshape(x.shape[0], -1)
    a[:, n_in] = 1.0
    for j in range(n_in + 1, n):
        z = a[:, :j] @ weights[:j, j]
        h = j - n_in - 1
        a[:, j] = NUMPY_ACTS[wann.ACTIVATIONS[act[h]]](z) if h < hidden else z
    return a[:, n - n_out :]


def check_feed_forward(g, n_in, n_out):
    hidden = g.act.shape[-1]
    allowed = wann.allowed_edges(n_in, n_out, hidden)
    assert g.conn.dtype == bool and g.act.dtype == np.int32
    assert not (g.conn & ~allowed).any(), "an edge outside the parent (backward, into an input...)"
    assert not np.tril(g.conn).any()  # strictly upper-triangular in node order: no cycle


def random_genome(seed, n_in=3, n_out=2, hidden=6, steps=12, activations=wann.ACTIVATIONS):
    rng = np.random.default_rng(seed)
    g = wann.minimal(n_in, n_out, hidden, links=2, activations=activations, rng=rng)
    for _ in range(steps):
        g = wann.mutate(g, rng, n_in=n_in, probs=(0.4, 0.4, 0.2), activations=activations)
    return g


# --- activations and forward ------------------------------------------------------------------


@pytest.mark.parametrize("name", wann.ACTIVATIONS)
def test_activation_matches_numpy_formula(name):
    z = np.linspace(-3, 3, 25, dtype=np.float32)
    got = jax.jit(wann.activation_fn(name))(jnp.asarray(z))
    np.testing.assert_allclose(got, NUMPY_ACTS[name](z.astype(np.float64)), rtol=1e-5, atol=1e-6)


def hand_built():
    """n_in=2 (+bias), 3 hidden, 2 outputs: x0→h0, bias→h0, x1→h1, h0→h1, h0→h2, h1→o0,
    h2→o1, x0→o1, bias→o0."""
    n_in, n_out, hidden = 2, 2, 3
    conn = np.zeros((8, 8), bool)
    for i, j in [(0, 3), (2, 3), (1, 4), (3, 4), (3, 5), (4, 6), (5, 7), (0, 7), (2, 6)]:
        conn[i, j] = True
    return conn, n_in, n_out, hidden


@pytest.mark.parametrize("first", range(len(wann.ACTIVATIONS)))
def test_forward_of_hand_built_network_matches_numpy(first):
    conn, n_in, n_out, _ = hand_built()
    act = np.array([first, (first + 3) % 10, (first + 7) % 10], np.int32)  # every name, 3 slots
    x = np.random.default_rng(first).uniform(-1.5, 1.5, (16, n_in)).astype(np.float32)
    for w in wann.SHARED_WEIGHTS:
        got = FWD(w * jnp.asarray(conn, jnp.float32), act, x, n_in=n_in, n_out=n_out)
        np.testing.assert_allclose(got, numpy_forward(w * conn, act, x, n_in, n_out), atol=1e-5)
    per_edge = conn * np.random.default_rng(10 + first).uniform(-2, 2, conn.shape)
    got = FWD(jnp.asarray(per_edge, jnp.float32), act, x, n_in=n_in, n_out=n_out)
    np.testing.assert_allclose(got, numpy_forward(per_edge, act, x, n_in, n_out), atol=1e-5)
    # jit ∘ vmap over the shared weights
    stacked = jnp.asarray(wann.SHARED_WEIGHTS, jnp.float32)[:, None, None] * conn[None]
    many = FWD_WEIGHTS(stacked, act, x, n_in=n_in, n_out=n_out)
    for w, got in zip(wann.SHARED_WEIGHTS, many, strict=True):
        np.testing.assert_allclose(got, numpy_forward(w * conn, act, x, n_in, n_out), atol=1e-5)


def test_forward_of_a_network_without_hidden_slots_is_linear():
    rng = np.random.default_rng(0)
    g = wann.minimal(3, 2, 0, links=5, rng=rng)
    x = rng.random((4, 3), dtype=np.float32)
    got = wann.forward(jnp.asarray(g.conn, jnp.float32), g.act, x, n_in=3, n_out=2)
    want = np.c_[x, np.ones(4)] @ g.conn[:4, 4:].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_evaluate_equals_a_loop_of_forward_exactly_on_dyadic_inputs():
    # Inputs on a grid of 1/4 in [-2, 2], shared weights ±1/2, ±1, ±2 and piecewise-linear
    # activations: every product and sum is exact in float32, so both programs give the very same
    # logits and argmax ties (which do occur, e.g. unconnected outputs) resolve identically.
    n_in, n_out = 3, 3
    pop = train.stack([random_genome(s, n_in, n_out, activations=EXACT) for s in range(6)])
    rng = np.random.default_rng(0)
    x = (rng.integers(-8, 9, (40, n_in)) / 4).astype(np.float32)
    y = rng.integers(0, n_out, 40)
    got = wann.evaluate(pop, x, y, activations=EXACT)
    want = np.zeros((6, len(wann.SHARED_WEIGHTS)))
    for p in range(6):
        for k, w in enumerate(wann.SHARED_WEIGHTS):
            logits = FWD(
                w * jnp.asarray(pop.conn[p], jnp.float32),
                pop.act[p],
                x,
                n_in=n_in,
                n_out=n_out,
                activations=EXACT,
            )
            want[p, k] = np.sum(np.argmax(np.asarray(logits), -1) == y)
    np.testing.assert_array_equal(np.round(got * len(y)), want)  # correct counts


def test_population_logits_match_numpy_for_every_activation():
    # Logits (no argmax), so the float rounding of the two programs is compared with a tolerance.
    n_in, n_out = 3, 2
    # hidden=6: the compacted population (padded to 8, capped at 6) has the same shapes, so
    # both evaluations below share one compiled program.
    genomes = [random_genome(s, n_in, n_out, hidden=6, steps=20) for s in range(5)]
    pop = train.stack(genomes)
    x = np.random.default_rng(1).uniform(-1, 1, (12, n_in)).astype(np.float32)
    weights = jnp.asarray(wann.SHARED_WEIGHTS, jnp.float32)
    compact = wann._compact(pop, n_in, n_out)
    for batch in (pop, compact):  # the compacted population computes the same networks
        logits = wann._population_logits(
            jnp.asarray(batch.conn),
            jnp.asarray(batch.act),
            jnp.asarray(x),
            weights,
            n_out=n_out,
            names=wann.ACTIVATIONS,
        )
        for p, g in enumerate(genomes):
            for k, w in enumerate(wann.SHARED_WEIGHTS):
                want = numpy_forward(w * g.conn, g.act, x, n_in, n_out)
                np.testing.assert_allclose(logits[p, k], want, atol=2e-5)


# --- mutations -------------------------------------------------------------------------------


def edges(conn):
    return {tuple(e) for e in np.argwhere(conn).tolist()}


@pytest.mark.parametrize("seed", range(8))
def test_add_connection_adds_one_allowed_edge_between_live_nodes(seed):
    n_in, n_out = 3, 2
    g = random_genome(seed, n_in, n_out)
    used = wann.used_hidden(g, n_in=n_in, n_out=n_out)
    child = wann.add_connection(g, np.random.default_rng(seed), n_in=n_in)
    assert child is not None
    check_feed_forward(child, n_in, n_out)
    added = edges(child.conn) - edges(g.conn)
    assert edges(g.conn) <= edges(child.conn) and len(added) == 1
    (i, j), first = added.pop(), n_in + 1
    assert i < first or used[i - first]  # source: an input, the bias or a used hidden node
    assert j >= first + 6 or used[j - first]  # destination: an output or a used hidden node
    np.testing.assert_array_equal(child.act, g.act)


@pytest.mark.parametrize("seed", range(8))
def test_insert_node_splits_one_edge_through_an_unused_slot(seed):
    n_in, n_out, first = 3, 2, 4
    g = random_genome(seed, n_in, n_out, activations=("tanh", "relu"))
    used = wann.used_hidden(g, n_in=n_in, n_out=n_out)
    child = wann.insert_node(g, np.random.default_rng(seed), n_in=n_in, activations=("sin",))
    possible = any(
        not used[k - first] for i, j in edges(g.conn) for k in range(max(i + 1, first), min(j, 10))
    )
    assert (child is not None) == possible
    if child is None:
        return
    check_feed_forward(child, n_in, n_out)
    removed, added = edges(g.conn) - edges(child.conn), edges(child.conn) - edges(g.conn)
    assert len(removed) == 1 and len(added) == 2
    (i, j) = removed.pop()
    k = ({a for a, _ in added} | {b for _, b in added}) - {i, j}
    assert len(k) == 1
    k = k.pop()
    assert added == {(i, k), (k, j)} and i < k < j and not used[k - first]
    changed = np.flatnonzero(child.act != g.act)
    assert changed.tolist() == [k - first] and child.act[k - first] == wann.ACTIVATIONS.index("sin")


@pytest.mark.parametrize("seed", range(8))
def test_change_activation_changes_one_used_node_only(seed):
    n_in, n_out = 3, 2
    g = random_genome(seed, n_in, n_out)
    used = wann.used_hidden(g, n_in=n_in, n_out=n_out)
    allowed = ("abs", "cos", "step")
    child = wann.change_activation(g, np.random.default_rng(seed), n_in=n_in, activations=allowed)
    assert child is not None
    np.testing.assert_array_equal(child.conn, g.conn)
    (h,) = np.flatnonzero(child.act != g.act)
    assert used[h] and wann.ACTIVATIONS[child.act[h]] in allowed


def test_impossible_mutations_return_none_and_mutate_falls_back():
    rng = np.random.default_rng(0)
    g = wann.minimal(2, 1, 0, links=3, rng=rng)  # no hidden slot, every input→output edge present
    assert wann.insert_node(g, rng, n_in=2) is None
    assert wann.add_connection(g, rng, n_in=2) is None
    assert wann.change_activation(g, rng, n_in=2) is None  # no used hidden node
    same = wann.mutate(g, rng, n_in=2)
    np.testing.assert_array_equal(same.conn, g.conn)
    one = wann.insert_node(
        wann.minimal(2, 1, 1, links=1, rng=rng), rng, n_in=2, activations=("tanh",)
    )
    assert wann.change_activation(one, rng, n_in=2, activations=("tanh",)) is None  # no other
    # add_connection impossible → mutate falls back to insert_node (the next in MUTATIONS order)
    g = wann.minimal(1, 1, 2, links=2, rng=rng)
    child = wann.mutate(g, np.random.default_rng(3), n_in=1, probs=(1, 0, 0))
    assert (
        len(edges(child.conn) - edges(g.conn)) == 2 and len(edges(g.conn) - edges(child.conn)) == 1
    )


def test_mutate_applies_the_chosen_operator_with_the_same_stream():
    g = random_genome(5)
    for index, op in enumerate((wann.add_connection, wann.insert_node, wann.change_activation)):
        probs = np.eye(3)[index]
        got = wann.mutate(g, np.random.default_rng(9), n_in=3, probs=probs)
        rng = np.random.default_rng(9)
        rng.choice(3, p=probs)  # the draw mutate makes first
        want = op(g, rng, n_in=3)
        np.testing.assert_array_equal(got.conn, want.conn)
        np.testing.assert_array_equal(got.act, want.act)


@pytest.mark.parametrize("seed", range(4))
def test_long_mutation_chains_stay_feed_forward(seed):
    rng = np.random.default_rng(seed)
    g = wann.minimal(4, 3, 10, links=3, rng=rng)
    for _ in range(60):
        g = wann.mutate(g, rng, n_out=3)
        check_feed_forward(g, 4, 3)


# --- ranking -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_pareto_fronts_and_rank_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 30
    mean, best, conns = rng.integers(0, 5, n) / 4, rng.integers(0, 5, n) / 4, rng.integers(1, 6, n)

    def dominates(a, b):
        no_worse = mean[a] >= mean[b] and best[a] >= best[b] and conns[a] <= conns[b]
        better = mean[a] > mean[b] or best[a] > best[b] or conns[a] < conns[b]
        return no_worse and better

    want = np.full(n, -1)
    left, level = set(range(n)), 0
    while left:
        front = {b for b in left if not any(dominates(a, b) for a in left)}
        for b in front:
            want[b] = level
        left -= front
        level += 1
    np.testing.assert_array_equal(wann.pareto_fronts(mean, best, conns), want)
    order = sorted(range(n), key=lambda i: (want[i], -mean[i], i))
    ranks = wann.pareto_rank(mean, best, conns)
    np.testing.assert_array_equal(np.argsort(ranks), order)


# --- search --------------------------------------------------------------------------------


def small_task():
    rng = np.random.default_rng(0)
    x = rng.random((120, 5), dtype=np.float32)
    y = (x[:, 0] + x[:, 1] > 1).astype(np.int32) + (x[:, 2] > 0.5)
    return x, y


SETTINGS = dict(population=10, hidden=6, elite=2, tournament=3, links=3, batch_size=64)


def test_search_is_deterministic_for_a_seed_and_resumes_bit_identically():
    x, y = small_task()
    saved = []
    full = wann.search(
        x,
        y,
        generations=6,
        seed=3,
        progress=False,
        on_generation=lambda s: saved.append(json.dumps(s.to_json())),
        **SETTINGS,
    )
    again = wann.search(x, y, generations=6, seed=3, progress=False, **SETTINGS)
    state = wann.SearchState.from_json(json.loads(saved[2]))  # killed after generation 3
    assert state.generation == 3
    resumed = wann.search(x, y, generations=6, seed=3, progress=False, resume=state, **SETTINGS)
    for other in (again, resumed):
        np.testing.assert_array_equal(other.population.conn, full.population.conn)
        np.testing.assert_array_equal(other.population.act, full.population.act)
        np.testing.assert_array_equal(other.best.conn, full.best.conn)
        assert other.state.rng_state == full.state.rng_state
        for key in full.history:
            np.testing.assert_array_equal(other.history[key], full.history[key])
    assert len(full.history["mean_acc"]) == 6
    # the history is what evaluating the best member on a generation's batch gives
    check_feed_forward(full.best, 5, 3)
    other_seed = wann.search(x, y, generations=6, seed=4, progress=False, **SETTINGS)
    assert not np.array_equal(other_seed.population.conn, full.population.conn)


def test_search_records_the_best_ranked_member():
    x, y = small_task()
    x = np.round(x * 8) / 8  # dyadic inputs and exact activations: the population's program and
    # a one-member program give bit-identical logits, so the argmax (ties included) agree.
    settings = {**SETTINGS, "batch_size": None}
    r = wann.search(x, y, generations=3, seed=0, progress=False, activations=EXACT, **settings)
    # Without a batch every generation sees all of x: re-evaluate the reported best member.
    acc = wann.evaluate(train.stack([r.best]), x, y, activations=EXACT)[0]
    assert acc.mean() == pytest.approx(r.history["mean_acc"][-1], abs=1e-6)
    assert acc.max() == pytest.approx(r.history["max_acc"][-1], abs=1e-6)
    assert r.best.conn.sum() == r.history["connections"][-1]
    # the best is the first elite, copied unchanged into the next population
    np.testing.assert_array_equal(r.population.conn[0], r.best.conn)
    np.testing.assert_array_equal(r.population.act[0], r.best.act)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"activations": ()}, "activations"),
        ({"activations": ("tanh", "swish")}, "activation"),
        ({"population": 1}, "population"),
        ({"hidden": -1}, "hidden"),
        ({"links": 0}, "links"),
        ({"elite": 10}, "elite"),
        ({"probs": (0, 0, 0)}, "probs"),
    ],
)
def test_bad_settings_stop_before_running(kwargs, name):
    x, y = small_task()
    with pytest.raises(ValueError, match=name):
        wann.search(x, y, **{**SETTINGS, "generations": 2, **kwargs}, progress=False)


def test_evaluate_refuses_activations_the_population_does_not_use():
    g = wann.insert_node(
        wann.minimal(2, 1, 2, links=1, rng=np.random.default_rng(0)),
        np.random.default_rng(1),
        n_in=2,
        activations=("sin",),
    )
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"population\.act"):
        wann.evaluate(train.stack([g]), x, y, activations=("tanh",))


def test_bad_minimal_settings():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="activations"):
        wann.minimal(2, 2, 1, links=1, activations=(), rng=rng)
    with pytest.raises(ValueError, match="hidden"):
        wann.minimal(2, 2, -1, links=1, rng=rng)
    with pytest.raises(ValueError, match="links"):
        wann.minimal(2, 2, 1, links=7, rng=rng)


@pytest.mark.slow  # compiles a training run (train.fit)
def test_final_columns_agree_with_evaluate_and_forward():
    x, y = small_task()
    splits = {"train": (x[:80], y[:80]), "val": (x[80:100], y[80:100]), "test": (x[100:], y[100:])}
    g = random_genome(2, 5, 3)
    cols = wann.final_columns(g, splits, iterations=10, batch_size=16, random_draws=3)
    val = wann.evaluate(train.stack([g]), x[80:100], y[80:100])[0]
    test = wann.evaluate(train.stack([g]), x[100:], y[100:])[0]
    assert cols["shared_weight"] == wann.SHARED_WEIGHTS[int(np.argmax(val))]
    assert cols["shared"] == pytest.approx(test[int(np.argmax(val))])
    probs = np.zeros((20, 3))
    for w in wann.SHARED_WEIGHTS:
        z = numpy_forward(w * g.conn, g.act, x[100:], 5, 3)
        e = np.exp(z - z.max(1, keepdims=True))
        probs += e / e.sum(1, keepdims=True)
    # float32 vs float64: an example whose two top summed probabilities are within 1e-4 may go
    # either way, so the accuracies may differ by at most those examples.
    top2 = np.sort(probs, 1)[:, -2:]
    near = int((top2[:, 1] - top2[:, 0] < 1e-4).sum())
    correct = np.sum(probs.argmax(1) == y[100:])
    assert abs(round(cols["ensemble"] * 20) - correct) <= near
    assert cols["connections"] == g.conn.sum()
    assert 0 <= cols["random"] <= 1 and 0 <= cols["trained"] <= 1
