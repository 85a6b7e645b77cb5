"""The engine runs the sparse-training methods: vmapped tickets = each ticket alone = the hand-written
loop of the drop-in API; no recompile for other sparsities / seeds; sharded = unsharded; batch
norm; the outer mask; bad input."""

from __future__ import annotations

import re

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import apply_mlp

from jaxprune import masks, models, train
from jaxprune.data import Dataset, Split
from jaxprune.sparse_training import allocation, core
from jaxprune.sparse_training import steps as sparse_steps

N_IN, N_HID, N_OUT = 6, 10, 3


def init_mlp(seed: int) -> dict:
    return helpers.init_mlp(seed, (N_IN, N_HID, N_OUT))


def toy_data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return helpers.toy_data(n, seed, N_IN, N_OUT)


ITERATIONS, EVAL_EVERY, BATCH = 12, 6, 16
END = 10


X, Y = toy_data()
XV, YV = toy_data(32, seed=5)

# Per-ticket settings: every numeric knob differs between tickets.
SPARSITY = (0.5, 0.7, 0.8)
DROP = (0.3, 0.5, 0.2)
DELTA_T = (2, 3, 2)
SEEDS = (0, 1, 2)

# The compared runs (engine vmapped, engine alone, hand-written loop) are one computation rounded
# differently: their params agree to PARAM_TOL (float32 rounding of a dozen Adam steps: measured
# ~3e-8). A top-k decision (by |w| or |g|) can flip between them only if its margin — the
# gap between the last score kept and the first left out — is within that difference; every
# decision of these runs is asserted to have a margin above MARGIN (10x the tolerance), so the
# masks must be identical. SET's and the random initial masks' scores are the same draws of the
# same keys in every run (no rounding), so they need no margin.
PARAM_TOL = 1e-6
MARGIN = 1e-5


def _stacked_tickets(steps, params, n=3, **fixed):
    states = [
        steps.init(
            params,
            key=jax.random.key(SEEDS[i]),
            sparsity=SPARSITY[i],
            drop_fraction=DROP[i],
            delta_t=DELTA_T[i],
            end=END,
            **fixed,
        )
        for i in range(n)
    ]
    return states, train.stack(states)


def _fit(steps, state, mask, *, tickets, **kw):
    return train.fit(
        steps, state, mask, (X, Y), (XV, YV), (XV, YV), iterations=ITERATIONS,
        batch_size=BATCH, eval_every=EVAL_EVERY, data_key=jax.random.key(3), tickets=tickets,
        progress=False, **kw,
    )  # fmt: skip


def _margin(method, old, new, params, grads):
    """The smallest margin of this update's top-k decisions (see MARGIN), over prunable leaves."""
    out = jnp.inf
    flags = jax.tree.leaves(masks.is_prunable(params, method.prunable))
    leaves = zip(flags, *(jax.tree.leaves(t) for t in (old, new, params, grads)), strict=True)
    for prunable, o, n, w, g in leaves:
        if not prunable:
            continue
        # Keep / drop by |w| among the candidates: the old mask (gradual, SET, RigL) or all (STE).
        cand = jnp.ones_like(o) if method.name in ("ste", "sr_ste") else o
        kept = n & cand
        w = jnp.abs(w)
        gap = jnp.min(jnp.where(kept, w, jnp.inf)) - jnp.max(jnp.where(cand & ~kept, w, -jnp.inf))
        out = jnp.minimum(out, gap)
        if method.name == "rigl":  # growth by |g| among the weights inactive before the update
            grown, g = n & ~o, jnp.abs(g)
            gap = jnp.min(jnp.where(grown, g, jnp.inf)) - jnp.max(
                jnp.where(~o & ~grown, g, -jnp.inf)
            )
            out = jnp.minimum(out, gap)
    return out


def _reference(method, optimizer, stacked_sparse, params, n_steps, data_keys):
    """The hand-written loop of the drop-in API (core functions in a plain jit step, the step of
    the spec), vmapped over tickets without an axis name; the engine's data order for each
    ticket's data key. Returns the final params, sparse state and each ticket's smallest decision
    margin."""
    dense = core.METHODS[method.name].dense_weights
    tx = optimizer if dense else core.keep_zero(optimizer)

    def loss_fn(p, batch):
        return train.cross_entropy(apply_mlp(p, batch[0]), batch[1])

    def one(params, opt_state, sp, batch):
        _, grads = jax.value_and_grad(loss_fn)(core.forward_params(method, sp, params), batch)
        grads = core.gradients(method, sp, params, grads)
        if dense:
            updates, opt_state = tx.update(grads, opt_state, params)
        else:
            updates, opt_state = tx.update(grads, opt_state, params, mask=sp.masks)
        params = optax.apply_updates(params, updates)
        new_sp, new_params, opt_state = core.update(method, sp, params, grads, opt_state)
        margin = _margin(method, sp.masks, new_sp.masks, params, grads)
        margin = jnp.where(core.is_update_step(method, sp), margin, jnp.inf)
        return new_params, opt_state, new_sp, margin

    step = jax.jit(jax.vmap(one))
    params = jax.vmap(lambda sp: params if dense else core.apply(params, sp))(stacked_sparse)
    opt_state = jax.vmap(tx.init)(params)
    sp, margins = stacked_sparse, []
    per_epoch = len(X) // BATCH
    for t in range(n_steps):
        e, j = divmod(t, per_epoch)
        perms = [
            np.asarray(jax.random.permutation(jax.random.fold_in(k, e), len(X))) for k in data_keys
        ]
        idx = np.stack([p[j * BATCH : (j + 1) * BATCH] for p in perms])
        params, opt_state, sp, margin = step(params, opt_state, sp, (X[idx], Y[idx]))
        margins.append(margin)
    return params, sp, np.min(np.stack(margins), axis=0)


def assert_close(a, b, tol=PARAM_TOL):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def assert_same(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.mark.slow  # three compiled programs with a mask update per method: ~15 s each
@pytest.mark.parametrize("name", sorted(core.METHODS))
def test_vmapped_tickets_equal_each_ticket_alone_and_the_hand_written_loop(name):
    method = core.method(name, init_mask="magnitude" if name == "static" else "random")
    opt = optax.adam(1e-2)
    steps = sparse_steps.make_steps(apply_mlp, opt, method)
    params = init_mlp(0)
    states, stacked = _stacked_tickets(steps, params)
    outer = masks.ones(params)
    together, hist = _fit(steps, stacked, train.stack([outer] * 3), tickets=True)
    ref_params, ref_sparse, margins = _reference(
        method, opt, stacked.sparse, params, ITERATIONS, [jax.random.key(3)] * 3
    )
    assert np.all(margins > MARGIN), margins  # the premise of comparing masks exactly
    if name in ("gradual", "rigl"):  # chunks of 2 tickets and a remainder of 1: the same run
        chunked, _ = _fit(
            steps, stacked, train.stack([outer] * 3), tickets=True, ticket_batch_size=2
        )
        assert_same(chunked.sparse.masks, together.sparse.masks)
        assert_close(chunked.params, together.params)
    for i, state in enumerate(states):
        alone, h = _fit(steps, state, outer, tickets=False)
        ticket = train.unstack(together)[i]
        assert_same(alone.sparse.masks, ticket.sparse.masks)
        assert_same(alone.sparse.masks, train.unstack(ref_sparse.masks)[i])
        assert_close(alone.params, ticket.params)
        assert_close(alone.params, train.unstack(ref_params)[i])
        assert int(ticket.sparse.step) == ITERATIONS == int(ticket.step)
        np.testing.assert_allclose(hist.val_loss[i], h.val_loss, rtol=1e-5)
    # The final masks hold exactly the allocated counts (gradual: the final sparsity, reached at
    # END < ITERATIONS); pruned weights are 0 in zero mode, dense for STE.
    for i, ticket in enumerate(train.unstack(together)):
        counts = allocation.layer_counts(params, SPARSITY[i], allocation=method.allocation)
        for m, c in zip(jax.tree.leaves(ticket.sparse.masks), jax.tree.leaves(counts), strict=True):
            assert int(np.sum(m)) == int(c)
        pruned = np.concatenate(
            [np.asarray(p)[~np.asarray(m)] for p, m in zip(
                jax.tree.leaves(ticket.params), jax.tree.leaves(ticket.sparse.masks), strict=True
            )]
        )  # fmt: skip
        assert np.all(pruned != 0) if steps.dense_weights else np.all(pruned == 0)
    # The masks changed during training exactly for the methods that update them.
    changed = any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(stacked.sparse.masks), jax.tree.leaves(together.sparse.masks), strict=True)
    )  # fmt: skip
    assert changed == (name != "static")


def _dataset(n_train: int = 96) -> Dataset:
    x, y = toy_data(n_train)
    return Dataset("toy", Split(x, y), Split(XV, YV), Split(XV, YV), N_OUT, (N_IN,))


OPT = optax.adam(1e-2)  # one object: equal steps share compiled programs across calls


def _run(method, sparsities, seeds, **kw):
    kw = {"iterations": 8, "batch_size": BATCH, "eval_every": 4, "end": 6, **kw}
    return sparse_steps.train_tickets(
        apply_mlp, init_mlp(0), method, sparsities=sparsities, seeds=seeds, data=_dataset(),
        optimizer=OPT, progress=False, **kw,
    )  # fmt: skip


def _prunable_density(masks_tree) -> np.ndarray:
    kernels = [np.asarray(m) for m in jax.tree.leaves(masks_tree) if np.ndim(m) == 3]
    return sum(k.reshape(len(k), -1).sum(1) for k in kernels) / sum(k[0].size for k in kernels)


@pytest.mark.slow  # compiles the vmapped RigL chunk once (~10 s), then nothing
def test_other_sparsities_seeds_drop_fractions_and_delta_t_compile_nothing():
    method = core.method("rigl")
    first = _run(method, [0.5, 0.9], [0, 1], drop_fraction=0.3, delta_t=2)
    with train.count_compiles() as compiles:
        second = _run(method, [0.6, 0.8], [5, 7], drop_fraction=[0.1, 0.2, 0.3, 0.4],
                      delta_t=np.array([1, 2, 3, 2]))  # fmt: skip
    assert compiles.programs == 0
    # The second run did train other tickets: its settings reached the state.
    np.testing.assert_allclose(second.state.sparse.drop_fraction, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(second.state.sparse.delta_t, [1, 2, 3, 2])
    for run in (first, second):
        # Sparsity-major order; the density is measured from the final masks (numpy here), and
        # RigL keeps the allocated count exactly.
        assert run.sparsity.tolist() == [s for s in run.sparsity[::2] for _ in range(2)]
        np.testing.assert_allclose(run.density, _prunable_density(run.state.sparse.masks))
        for s, d in zip(run.sparsity, run.density, strict=True):
            counts = allocation.layer_counts(init_mlp(0), s)
            kept = int(counts["fc"]["kernel"]) + int(counts["out"]["kernel"])
            assert d == kept / (N_IN * N_HID + N_HID * N_OUT)
    assert first.seed.tolist() == [0, 1, 0, 1] and second.seed.tolist() == [5, 7, 5, 7]


@pytest.mark.slow  # two vmapped RigL programs (plain, sharded) and a reference loop: ~25 s
def test_sharded_tickets_equal_unsharded():
    assert jax.device_count() == 8, "conftest must force 8 host devices"
    method = core.method("rigl")
    plain = _run(method, [0.5, 0.8], [0, 1, 2, 3], delta_t=2)
    sharded = _run(method, [0.5, 0.8], [0, 1, 2, 3], delta_t=2, mesh=train.ticket_mesh())
    assert len(sharded.state.params["fc"]["kernel"].sharding.device_set) == 8
    # The premise of comparing masks exactly (see MARGIN): every decision of these tickets has a
    # margin, measured on the hand-written loop from train_tickets' initial states and data keys
    # (fold_in(key(seed), 0) and fold_in(key(seed), 1)), which the run must equal as well.
    steps = sparse_steps.make_steps(apply_mlp, OPT, method)
    grid = [(s, r) for s in (0.5, 0.8) for r in range(4)]
    init = train.stack([
        steps.init(init_mlp(0), key=jax.random.fold_in(jax.random.key(r), 0), sparsity=s,
                   delta_t=2, end=6)
        for s, r in grid
    ])  # fmt: skip
    keys = [jax.random.fold_in(jax.random.key(r), 1) for _, r in grid]
    ref_params, ref_sparse, margins = _reference(method, OPT, init.sparse, init_mlp(0), 8, keys)
    assert np.all(margins > MARGIN), margins
    for run in (plain, sharded):
        assert_same(run.state.sparse.masks, ref_sparse.masks)
        assert_close(run.state.params, ref_params)
    np.testing.assert_allclose(plain.history.val_loss, sharded.history.val_loss, rtol=1e-5)
    np.testing.assert_array_equal(plain.density, sharded.density)


class BNNet(nnx.Module):
    """Linear (no bias: BN removes it) → batch norm → tanh → linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(N_IN, N_HID, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(N_HID, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(N_HID, N_OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.bn(self.fc(x))))


@pytest.mark.slow  # one vmapped RigL program with batch norm: ~10 s
def test_a_batch_norm_model_trains_with_a_sparse_method():
    net = models.instantiate(BNNet, 0)
    _, params, stats = models.stateful(net)
    run = sparse_steps.train_tickets(
        net, None, "rigl", sparsities=[0.5, 0.8], seeds=[0, 1], data=_dataset(), optimizer=OPT,
        iterations=12, batch_size=BATCH, eval_every=6, delta_t=2, end=10, progress=False,
    )  # fmt: skip
    state, hist = run.state, run.history
    # The running statistics were updated, per ticket (each seed has its own data order).
    means = np.asarray(state.model_state["bn"]["mean"][...])
    assert not np.allclose(means, np.asarray(stats["bn"]["mean"][...])[None])
    assert not np.allclose(means[0], means[1])
    # Exact counts on the kernels, whole batch-norm scale and bias; pruned weights exactly 0.
    for i, s in enumerate(run.sparsity):
        counts = allocation.layer_counts(params, s)
        ticket = train.unstack(state)[i]
        for c, m, w in zip(*(jax.tree.leaves(t) for t in (counts, ticket.sparse.masks, ticket.params)), strict=True):  # fmt: skip
            assert int(np.sum(m)) == int(c)
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
        assert bool(np.all(ticket.sparse.masks["bn"]["scale"][...]))
    assert np.all(np.isfinite(hist.val_loss))
    assert np.all(hist.train_loss[:, -1] < hist.train_loss[:, 0])  # it trains


@pytest.mark.slow  # one program per method: ~8 s each
@pytest.mark.parametrize("name", ["rigl", "ste"])
def test_weights_outside_the_outer_mask_stay_inactive_and_fit_evaluates_eval_params(name):
    steps = sparse_steps.make_steps(apply_mlp, OPT, core.method(name))
    params = init_mlp(1)
    outer = masks.ones(params)
    outer["fc"]["kernel"] = outer["fc"]["kernel"].at[:2].set(False)  # two inputs cut off
    state = steps.init(params, key=jax.random.key(0), sparsity=0.5, delta_t=2, end=6)
    out, hist = _fit(steps, state, outer, tickets=False)
    assert np.all(np.asarray(out.params["fc"]["kernel"])[:2] == 0)
    # fit evaluated the network the state stands for: the weights under the current mask (for
    # STE not the dense weights), under the outer mask.
    evaluate = lambda p: train.evaluate(steps, p, outer, None, XV, YV)  # noqa: E731
    loss, _ = evaluate(core.apply(out.params, out.sparse))
    np.testing.assert_allclose(hist.val_loss[-1], loss, rtol=1e-6)
    if name == "ste":
        assert not np.allclose(evaluate(out.params)[0], loss)  # the dense weights differ
    # With an all-True outer mask nothing is forced off (the mask's own count is exact).
    assert int(masks.count(masks.prunable_leaves(out.sparse.masks))) == int(
        masks.count(masks.prunable_leaves(state.sparse.masks))
    )


def test_the_engine_passes_the_ticket_axis_only_where_it_is_bound():
    """Over tickets (vmapped, or in chunks of ticket_batch_size) the update's cond is decided by
    a psum over the tickets (one branch for all: no update work at steps where no ticket
    updates). Traced only (nothing compiled)."""
    steps = sparse_steps.make_steps(apply_mlp, OPT, core.method("set"))
    states = [steps.init(init_mlp(0), key=jax.random.key(i), sparsity=0.5, end=6) for i in range(3)]
    ones = masks.ones(init_mlp(0))

    def jaxpr(state, mask, **kw):
        traced = train.train_chunk.trace(
            steps, state, mask, None, X, Y, jax.random.key(0), jnp.int32(0), length=3,
            batch_size=BATCH, **kw,
        )  # fmt: skip
        return str(traced.jaxpr)

    stacked, stacked_ones = train.stack(states), train.stack([ones] * 3)
    for kw in ({}, {"ticket_batch_size": 2}):
        text = jaxpr(stacked, stacked_ones, tickets=True, **kw)
        assert "psum" in text and "cond" in text
    # One ticket alone: no axis bound, each step its own cond (the alone fits of the slow test).
    assert sparse_steps._bound_ticket_axis() is None


def test_protocol_eval_params_and_equal_steps():
    params = init_mlp(0)
    masked = train.make_steps(apply_mlp, OPT)
    state = masked.init(params)
    assert state.sparse == () and masked.eval_params(state) is state.params
    from jaxprune import supermask

    sm = supermask.make_steps(apply_mlp, OPT)
    logits = supermask.logits_init(params)
    sm_state = sm.init(logits, key=jax.random.key(0))
    assert sm.eval_params(sm_state) is sm_state.params
    method = core.method("rigl")
    a, b = (sparse_steps.make_steps(apply_mlp, OPT, method) for _ in range(2))
    assert a == b and hash(a) == hash(b)
    assert a != sparse_steps.make_steps(apply_mlp, OPT, core.method("set"))
    assert a != sparse_steps.make_steps(apply_mlp, optax.adam(1e-2), method)
    # eval_params zeroes the weights outside the current mask (STE: its weights are dense).
    ste = sparse_steps.make_steps(apply_mlp, OPT, core.method("ste", allocation="uniform"))
    st_state = ste.init(params, key=jax.random.key(0), sparsity=0.75)
    for w, m, e in zip(*(jax.tree.leaves(t) for t in (st_state.params, st_state.sparse.masks, ste.eval_params(st_state))), strict=True):  # fmt: skip
        np.testing.assert_array_equal(e, np.where(m, w, 0))
    assert int(np.sum(st_state.sparse.masks["fc"]["kernel"])) == N_IN * N_HID // 4


def test_bad_input_is_refused_naming_the_argument():
    params, ones = init_mlp(0), masks.ones(init_mlp(0))
    batch = (X[:BATCH], Y[:BATCH])
    steps = sparse_steps.make_steps(apply_mlp, OPT, core.method("set"))
    plain = train.make_steps(apply_mlp, OPT).init(params)
    with pytest.raises(ValueError, match="frozen must be None for sparse-training steps"):
        steps.train_step(plain, ones, batch, frozen=params)
    with pytest.raises(ValueError, match="frozen must be None"):
        steps.eval_step(params, ones, batch, frozen=params)
    for call in (lambda: steps.train_step(plain, ones, batch), lambda: steps.eval_params(plain)):
        with pytest.raises(ValueError, match=re.escape("state.sparse must be the SparseState")):
            call()
    with pytest.raises(
        ValueError, match=re.escape("method must be a jaxprune.sparse_training.core.Method")
    ):
        sparse_steps.make_steps(apply_mlp, OPT, "rigl")
    init = lambda **kw: steps.init(params, **{"key": jax.random.key(0), "end": 10, **kw})  # noqa: E731
    for kw, message in (
        ({"key": None, "sparsity": 0.5}, "key is required"),
        ({"sparsity": 1.0}, re.escape("sparsity must be in [0.0, 1.0)")),
        ({"sparsity": 0.5, "delta_t": 0}, "delta_t must be a positive number of steps"),
        ({"sparsity": 0.5, "begin": 10}, "end must be > begin"),
        ({"sparsity": 0.5, "drop_fraction": 1.0}, re.escape("drop_fraction must be in [0.0, 1.0)")),
    ):
        with pytest.raises(ValueError, match=message):
            init(**kw)
    with pytest.raises(ValueError, match="model_state must be None or empty"):
        steps.init(params, {"bn": jnp.ones(3)}, key=jax.random.key(0), sparsity=0.5, end=10)

    def tickets(**kw):
        args = {"sparsities": [0.5], "seeds": [0, 1], "data": _dataset(), "optimizer": OPT,
                "iterations": 4, "batch_size": BATCH, "eval_every": 2, "progress": False, **kw}  # fmt: skip
        model = args.pop("model", apply_mlp)
        return sparse_steps.train_tickets(
            model, args.pop("params", params), args.pop("method", "set"), **args
        )

    net = models.build("mlp", input_shape=(N_IN,), num_classes=N_OUT)
    for kw, message in (
        ({"sparsities": []}, "sparsities must hold at least one value"),
        ({"sparsities": [0.5, 1.0]}, re.escape("sparsities must be in [0.0, 1.0)")),
        ({"seeds": [-1]}, "seeds' entries must be a non-negative int"),
        (
            {"drop_fraction": [0.1, 0.2, 0.3]},
            re.escape("drop_fraction must be one value or one per ticket (2"),
        ),
        ({"delta_t": 0}, "delta_t must be a positive number of steps"),
        ({"delta_t": 2.5}, "delta_t must be an int step count"),
        ({"method": "lottery"}, "unknown method 'lottery'"),
        (
            {"model": net},
            "params and model_state must be None when model_or_apply is a Flax NNX model",
        ),
        ({"params": None}, "params is required with an apply function"),
        ({"data": (X, Y)}, "data must be a jaxprune.data.Dataset"),
        ({"end": 0}, "end must be > begin"),
    ):
        with pytest.raises(ValueError, match=message):
            tickets(**kw)
    # A stacked state whose sparse state is one ticket's: refused before anything is computed.
    states = [steps.init(params, key=jax.random.key(i), sparsity=0.5, end=10) for i in range(2)]
    bad = train.stack(states)._replace(sparse=states[0].sparse)
    with pytest.raises(
        ValueError, match=re.escape("but state.sparse.masks['fc']['bias'] has shape [10]")
    ):
        _fit(steps, bad, train.stack([ones] * 2), tickets=True)
