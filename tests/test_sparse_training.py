"""jaxprune.sparse_training.core: the methods against numpy references, the optax pieces, a user's
loop with a Flax NNX model, and jit ∘ vmap over tickets against each ticket run alone."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune import masks, schedules
from jaxprune import sparse_training as st

ALL_METHODS = tuple(st.METHODS)
# One compiled update per (method, shapes): the tests below share them through jit's cache.
_update = jax.jit(st.update, static_argnums=0, static_argnames="axis_name")


def _params(seed: int = 0) -> dict:
    """Three dense layers with biases; normal weights, so no two |w| are equal (tie-free)."""
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "fc1": {"kernel": jax.random.normal(k[0], (12, 8)), "bias": jnp.zeros(8)},
        "fc2": {"kernel": jax.random.normal(k[1], (8, 8)), "bias": jnp.zeros(8)},
        "out": {"kernel": jax.random.normal(k[2], (8, 4))},
    }


KERNELS = (("fc1", "kernel"), ("fc2", "kernel"), ("out", "kernel"))


def _leaf(tree: dict, path: tuple[str, str]) -> np.ndarray:
    return np.asarray(tree[path[0]][path[1]])


def _counts(tree: dict) -> list[int]:
    return [int(_leaf(tree, p).sum()) for p in KERNELS]


def _round_half_up(x: float) -> int:
    # The premise of every exact comparison below: no product lands near a rounding boundary.
    assert abs(x - math.floor(x) - 0.5) > 0.01, x
    return math.floor(x + 0.5)


# --- SET and RigL against a numpy reference ---------------------------------------------------


def _regrow_setup(name: str, inner: optax.GradientTransformation, seed: int = 0):
    """A state at its first update step (t = ΔT = 5) after 3 optimizer steps with random grads,
    so the optimizer moments are non-zero everywhere they may be."""
    m = st.method(name, allocation="uniform")
    params = _params(seed)
    sp = st.init(
        m, params, jax.random.key(seed + 1), sparsity=0.5, drop_fraction=0.3, delta_t=5, end=40
    )
    params = st.apply(params, sp)
    tx = st.keep_zero(inner)

    @jax.jit
    def train(params):
        opt_state = tx.init(params)
        for i in range(3):
            g = jax.tree.map(
                lambda p, i=i: jax.random.normal(jax.random.key(50 + i), p.shape), params
            )
            updates, opt_state = tx.update(g, opt_state, params, mask=sp.masks)
            params = optax.apply_updates(params, updates)
        return params, opt_state

    params, opt_state = train(params)
    return m, sp._replace(step=jnp.int32(5)), params, opt_state


def _adversarial_grads(sp: st.SparseState, seed: int = 7) -> dict:
    """Random |g| with the *active* weights' gradients the largest of all: an update that could
    regrow a weight it just dropped would pick one of those."""

    def one(m, k):
        g = jax.random.normal(k, m.shape)
        return jnp.where(m, 100.0 + jnp.abs(g), g)

    leaves, treedef = jax.tree.flatten(sp.masks)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [one(m, k) for m, k in zip(leaves, keys, strict=True)])


def _reference_drop(w: np.ndarray, mask: np.ndarray, fraction: float):
    """numpy: (count, drop count, the kept weights: the c − d largest |w| among the active)."""
    c = int(mask.sum())
    d = min(_round_half_up(fraction * c), mask.size - c)
    active = np.flatnonzero(mask.ravel())
    order = active[np.argsort(-np.abs(w.ravel()[active]), kind="stable")]
    kept = np.zeros(mask.size, bool)
    kept[order[: c - d]] = True
    return c, d, kept.reshape(mask.shape)


MOMENT_OPTIMIZERS = {
    "sgd_momentum": (optax.sgd(0.1, momentum=0.9), lambda s: [s[0].trace]),
    "adam": (optax.adam(0.1), lambda s: [s[0].mu, s[0].nu]),
}


@pytest.mark.parametrize(
    ("name", "opt"),
    [
        ("rigl", "adam"),
        ("set", "sgd_momentum"),
        pytest.param("rigl", "sgd_momentum", marks=pytest.mark.slow),
        pytest.param("set", "adam", marks=pytest.mark.slow),
    ],
)
def test_set_and_rigl_update_equals_numpy_reference(name, opt):
    inner, moments_of = MOMENT_OPTIMIZERS[opt]
    m, sp, params, opt_state = _regrow_setup(name, inner)
    grads = _adversarial_grads(sp)
    new_sp, new_params, new_opt = _update(m, sp, params, grads, opt_state)
    assert int(new_sp.step) == 6

    t, end, alpha = 5, 40, 0.3
    fraction = alpha / 2 * (1 + math.cos(math.pi * t / end)) if name == "rigl" else alpha
    for path in KERNELS:
        w, g = _leaf(params, path), _leaf(grads, path)
        old, new = _leaf(sp.masks, path), _leaf(new_sp.masks, path)
        c, d, kept = _reference_drop(w, old, fraction)
        assert d > 0
        dropped, grown = old & ~kept, new & ~old
        # The drop: exactly the c − d largest |w| among the active survive.
        np.testing.assert_array_equal(new & old, kept)
        assert new.sum() == c and grown.sum() == d  # drop count = growth count, constant count
        assert not (grown & dropped).any()  # never regrow what this update dropped
        if name == "rigl":
            # Growth: the d largest |g| among the inactive weights (not the dropped ones, whose
            # |g| is larger than any inactive weight's).
            inactive = np.flatnonzero(~old.ravel())
            best = inactive[np.argsort(-np.abs(g.ravel()[inactive]), kind="stable")[:d]]
            expect = np.zeros(old.size, bool)
            expect[best] = True
            np.testing.assert_array_equal(grown, expect.reshape(old.shape))
        # Weights: dropped and grown are 0, the rest unchanged.
        np.testing.assert_array_equal(_leaf(new_params, path), np.where(dropped | grown, 0.0, w))
        # Moments: 0 at the dropped and grown weights, unchanged elsewhere.
        for before, after in zip(moments_of(opt_state), moments_of(new_opt), strict=True):
            assert np.abs(_leaf(before, path)[grown]).min() >= 0  # (were 0: never active)
            assert np.abs(_leaf(before, path)[kept]).min() > 0  # non-trivial before
            np.testing.assert_array_equal(
                _leaf(after, path), np.where(dropped | grown, 0.0, _leaf(before, path))
            )
    # Non-prunable leaves: all True, untouched.
    assert np.asarray(new_sp.masks["fc1"]["bias"]).all()
    np.testing.assert_array_equal(new_params["fc1"]["bias"], params["fc1"]["bias"])


def test_set_grows_at_random():
    """SET's growth: a uniformly random choice among the inactive weights — different keys give
    different sets, the same key the same one, and over many keys every inactive weight grows."""
    m, sp, params, _ = _regrow_setup("set", optax.sgd(0.1))
    keys = jax.random.split(jax.random.key(1), 40)
    keys = jnp.concatenate([keys, keys[:1]])  # the last one repeats the first
    grow = jax.jit(jax.vmap(lambda k: st.update(m, sp._replace(key=k), params, params)[0].masks))
    new = np.asarray(grow(keys)["fc1"]["kernel"])
    old = np.asarray(sp.masks["fc1"]["kernel"])
    inactive = ~old
    c, d, kept = _reference_drop(np.asarray(params["fc1"]["kernel"]), old, 0.3)
    grown = new & inactive
    for one in new:
        np.testing.assert_array_equal(one & old, kept)  # the drop is not random
    assert (grown.sum(axis=(1, 2)) == d).all() and (new.sum(axis=(1, 2)) == c).all()
    np.testing.assert_array_equal(new[0], new[-1])
    # d = 14 of 48 inactive weights: a repeated set among 40 draws would be astronomically rare.
    assert d == 14 and len({g.tobytes() for g in grown[:-1]}) == 40
    hits = grown.sum(axis=0)
    assert (hits[inactive] > 0).all() and (hits[~inactive] == 0).all()


def test_no_update_between_update_steps_and_after_end():
    m, sp, params, opt_state = _regrow_setup("rigl", optax.adam(0.1))
    grads = _adversarial_grads(sp)
    for t in (4, 6, 40, 45):  # ΔT = 5, end = 40
        new_sp, new_params, new_opt = _update(
            m, sp._replace(step=jnp.int32(t)), params, grads, opt_state
        )
        jax.tree.map(
            np.testing.assert_array_equal,
            (new_sp.masks, new_params, new_opt),
            (sp.masks, params, opt_state),
        )
        assert int(new_sp.step) == t + 1


@pytest.mark.parametrize("pattern", ["2:4", pytest.param("block:2", marks=pytest.mark.slow)])
def test_rigl_update_keeps_the_pattern(pattern):
    m = st.method("rigl", allocation="uniform", pattern=pattern)
    params = _params(3)
    sp = st.init(m, params, jax.random.key(0), sparsity=0.5, delta_t=1, end=10)
    params = st.apply(params, sp)
    grads = _adversarial_grads(sp)
    new_sp, new_params, _ = _update(m, sp._replace(step=jnp.int32(1)), params, grads)
    for path in KERNELS:
        old, new = _leaf(sp.masks, path), _leaf(new_sp.masks, path)
        assert new.sum() == old.sum() == old.size // 2
        grown = new & ~old
        assert grown.any() and not (grown & old).any()
        assert (_leaf(new_params, path)[grown] == 0).all()
        if pattern == "2:4":  # 2 of every 4 consecutive weights along the input axis
            groups = new.reshape(new.shape[0] // 4, 4, new.shape[1]).sum(axis=1)
            assert (groups == 2).all()
        else:  # whole 2×2 tiles
            tiles = new.reshape(new.shape[0] // 2, 2, new.shape[1] // 2, 2).sum(axis=(1, 3))
            assert set(np.unique(tiles)) <= {0, 4}
        # The active weights have the largest gradients: a regrowth of a dropped one would show
        # as more than count − drop active weights surviving.
        d = int(st.drop_count(old.sum(), 0.15 * (1 + math.cos(math.pi / 10)), pattern, old.size))
        assert d > 0 and (new & old).sum() == old.sum() - d


# --- gradual pruning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allocation", "delta_t"), [pytest.param("uniform", 3, marks=pytest.mark.slow), ("erk", 4)]
)
def test_gradual_reaches_the_scheduled_sparsity_at_every_update_step(allocation, delta_t):
    m = st.method("gradual", allocation=allocation)
    params = _params(1)
    # ΔT = 4 does not divide end − begin: the end step is an update step too.
    begin, end, final = 2, 20, 0.95
    sp = st.init(
        m, params, jax.random.key(0), sparsity=final, delta_t=delta_t, begin=begin, end=end
    )
    n = sum(_leaf(params, p).size for p in KERNELS)

    @jax.jit
    def step(params, sp, key):
        # "Training": a random move of the kept weights.
        noise = jax.tree.map(lambda p: 0.05 * jax.random.normal(key, p.shape), params)
        params = masks.apply(jax.tree.map(jnp.add, params, noise), sp.masks)
        sp, params, _ = st.update(m, sp, params, params)
        return params, sp

    updates = [t for t in range(begin, end + 1) if (t - begin) % delta_t == 0] + [end]
    for t in range(end + 3):
        old = sp.masks
        params, sp = step(params, sp, jax.random.key(100 + t))
        new = sp.masks
        for path in KERNELS:
            assert not (_leaf(new, path) & ~_leaf(old, path)).any()  # masks only shrink
            assert not _leaf(params, path)[~_leaf(new, path)].any()  # pruned weights are 0
        if t not in updates:
            jax.tree.map(np.testing.assert_array_equal, new, old)
            continue
        # The count: layer_counts at Zhu–Gupta's s_t, and the total from numpy in float64.
        s_t = final * (1 - (1 - min(max((t - begin) / (end - begin), 0), 1)) ** 3)
        expect = st.layer_counts(
            params,
            schedules.polynomial(
                t, initial_sparsity=0.0, final_sparsity=final, begin_step=begin, end_step=end
            ),
            allocation=allocation,
        )
        assert _counts(new) == _counts(expect)
        assert sum(_counts(new)) == n - _round_half_up(s_t * n)
    assert sum(_counts(sp.masks)) == n - _round_half_up(final * n)


# --- keep_zero and reset_moments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "inner",
    [optax.adamw(0.05, weight_decay=0.1), optax.sgd(0.05, momentum=0.9)],
    ids=["adamw", "sgd_momentum"],
)
def test_keep_zero_keeps_pruned_weights_exactly_zero(inner):
    params = _params(2)
    mask = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(3), 0.5, p.shape), params)
    mask = {**mask, "fc1": {**mask["fc1"], "bias": jnp.ones(8, bool)}}
    params = masks.apply(params, mask)
    tx = st.keep_zero(inner)
    state, ref_state, ref = tx.init(params), inner.init(params), params

    @jax.jit
    def step(params, state, ref, ref_state, key):
        grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
        u, state = tx.update(grads, state, params, mask=mask)
        # Reference: the plain optimizer on gradients zeroed outside the mask (the pruned weights
        # then get only weight decay of 0 and stay 0 there too).
        masked = masks.apply(grads, mask)
        ru, ref_state = inner.update(masked, ref_state, ref)
        return optax.apply_updates(params, u), state, optax.apply_updates(ref, ru), ref_state

    for i in range(60):
        params, state, ref, ref_state = step(params, state, ref, ref_state, jax.random.key(i))
    for p, r, m in zip(
        jax.tree.leaves(params), jax.tree.leaves(ref), jax.tree.leaves(mask), strict=True
    ):
        p, r, m = np.asarray(p), np.asarray(r), np.asarray(m)
        assert (p[~m] == 0).all()
        np.testing.assert_allclose(p[m], r[m], rtol=1e-5, atol=1e-6)
        assert (p[m] != 0).all()


def test_keep_zero_needs_a_mask():
    params = _params()
    tx = st.keep_zero(optax.sgd(0.1))
    with pytest.raises(ValueError, match="mask"):
        tx.update(params, tx.init(params), params)


# optimizer → the key paths (keystr prefixes) of its params-shaped moments, read off optax's state
# classes by hand: reset_moments must find them by walking, without knowing these classes.
RESET_CASES = {
    "sgd": (optax.sgd(0.1), []),
    "sgd_momentum": (optax.sgd(0.1, momentum=0.9), ["[0].trace"]),
    "adam": (optax.adam(0.1), ["[0].mu", "[0].nu"]),
    "adamw": (optax.adamw(0.1, weight_decay=0.1), ["[0].mu", "[0].nu"]),
    "chain_clip_adam": (
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1)),
        ["[1][0].mu", "[1][0].nu"],
    ),
    "inject_hyperparams": (
        optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
        [".inner_state[0].mu", ".inner_state[0].nu"],
    ),
    "multi_steps": (
        optax.MultiSteps(optax.adam(0.1), every_k_schedule=2),
        [".inner_opt_state[0].mu", ".inner_opt_state[0].nu", ".acc_grads"],
    ),
}


@pytest.mark.parametrize("name", sorted(RESET_CASES))
def test_reset_moments_on_any_optax_state(name):
    tx, prefixes = RESET_CASES[name]
    params = _params(4)
    state = tx.init(params)
    for i in range(3):
        g = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i), p.shape), params)
        _, state = tx.update(g, state, params)
    where = jax.tree.map(lambda p: jax.random.bernoulli(jax.random.key(9), 0.3, p.shape), params)
    after = st.reset_moments(state, params, where)
    flat_where = {path[path.index("[") :]: w for path, w in _paths(where).items()}
    before_leaves, after_leaves = _paths(state), _paths(after)
    assert before_leaves.keys() == after_leaves.keys()
    reset = 0
    for path, b in before_leaves.items():
        a = after_leaves[path]
        prefix = next((p for p in prefixes if path.startswith(p)), None)
        if prefix is None:
            np.testing.assert_array_equal(a, b)
            continue
        w = flat_where[path[len(prefix) :]]
        np.testing.assert_array_equal(a, np.where(w, 0, b))
        reset += int((np.asarray(b)[np.asarray(w)] != 0).sum())
    assert (reset > 0) == bool(prefixes)


def _paths(tree) -> dict:
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


# --- a user's loop with a Flax NNX model --------------------------------------------------------


class _MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(16, 24, rngs=rngs)
        self.fc2 = nnx.Linear(24, 16, rngs=rngs)
        self.out = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def _nnx_data():
    x = jax.random.normal(jax.random.key(5), (32, 16))
    return x, (x[:, :4].sum(-1) > 0).astype(jnp.int32) + 2 * (x[:, 4] > 0)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=() if n in ("rigl", "gradual", "sr_ste") else pytest.mark.slow)
        for n in ALL_METHODS
    ],
)
def test_user_loop_with_an_nnx_model(name):
    graphdef, params, rest = nnx.split(_MLP(nnx.Rngs(0)), nnx.Param, ...)

    def loss_fn(params, batch):
        x, y = batch
        logits = nnx.merge(graphdef, params, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    m = st.method(name)
    key = jax.random.key(0)
    # The ≤ 10 added lines of the docs (STE trains the dense weights with the plain optimizer).
    tx = optax.adam(1e-2) if name in ("ste", "sr_ste") else st.keep_zero(optax.adam(1e-2))
    tx = optax.with_extra_args_support(tx)
    opt_state = tx.init(params)
    sp = st.init(m, params, key, sparsity=0.8, delta_t=3, end=9)
    params = params if name in ("ste", "sr_ste") else st.apply(params, sp)

    @jax.jit
    def step(params, opt_state, sp, batch):
        loss, grads = jax.value_and_grad(loss_fn)(st.forward_params(m, sp, params), batch)
        grads = st.gradients(m, sp, params, grads)
        updates, opt_state = tx.update(grads, opt_state, params, mask=sp.masks)
        params = optax.apply_updates(params, updates)
        sp, params, opt_state = st.update(m, sp, params, grads, opt_state)
        return params, opt_state, sp, loss

    batch, losses = _nnx_data(), []
    for _ in range(12):
        params, opt_state, sp, loss = step(params, opt_state, sp, batch)
        losses.append(float(loss))
    want = jax.tree.leaves(st.layer_counts(params, 0.8))
    got = [int(k.sum()) for k in jax.tree.leaves(sp.masks)]
    assert got == [int(c) for c in want]
    assert losses[-1] < losses[0]
    if name not in ("ste", "sr_ste"):
        for p, k in zip(jax.tree.leaves(params), jax.tree.leaves(sp.masks), strict=True):
            assert not np.asarray(p)[~np.asarray(k)].any()


# --- jit ∘ vmap over tickets equals each ticket alone -------------------------------------------

TICKETS = {  # per ticket: sparsity, drop fraction, ΔT, seed — all different
    "sparsity": [0.5, 0.75, 0.6],
    "drop_fraction": [0.3, 0.2, 0.4],
    "delta_t": [2, 3, 2],
    "seed": [0, 1, 2],
}
TARGETS = _params(11)


def _loss(params, batch):
    # Elementwise in the weights: the gradient of each weight depends on that weight only, so the
    # vmapped and single programs compute every weight with the same float operations (no matmul
    # or reduction whose order a batch could change), bitwise alike, and no |w| or |g| ranking
    # can flip between them (asserted: the test compares them bitwise).
    del batch
    return sum(
        jnp.sum((p - t) ** 2 * (1.0 + t**2))
        for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(TARGETS), strict=True)
    )


def _ticket_run(name, axis_name=None):
    m = st.method(name, allocation="erk")
    tx = optax.with_extra_args_support(
        optax.sgd(0.05, momentum=0.9)
        if name in ("ste", "sr_ste")
        else st.keep_zero(optax.sgd(0.05, momentum=0.9))
    )

    def start(sparsity, drop_fraction, delta_t, seed):
        params = _params(seed)
        sp = st.init(
            m,
            params,
            jax.random.key(seed),
            sparsity=sparsity,
            drop_fraction=drop_fraction,
            delta_t=delta_t,
            end=7,
        )
        if name not in ("ste", "sr_ste"):
            params = st.apply(params, sp)
        return params, tx.init(params), sp

    def run(args):
        params, opt_state, sp = start(*args)

        def body(carry, _):
            params, opt_state, sp = carry
            grads = jax.grad(_loss)(st.forward_params(m, sp, params), None)
            grads = st.gradients(m, sp, params, grads)
            updates, opt_state = tx.update(grads, opt_state, params, mask=sp.masks)
            params = optax.apply_updates(params, updates)
            ranked = (params, grads)  # what update ranks: |w| and (RigL) |g|
            sp, params, opt_state = st.update(m, sp, params, grads, opt_state, axis_name=axis_name)
            return (params, opt_state, sp), ranked

        return jax.lax.scan(body, (params, opt_state, sp), length=9)

    return run


def _key_data(tree):
    """Typed keys as their uint32 data, so numpy can compare them."""
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        tree,
    )


@pytest.mark.slow  # three compiled 9-step programs per method: 13-24 s each (see the fast one below)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_jit_vmap_over_tickets_equals_each_ticket_alone(name):
    args = (
        jnp.array(TICKETS["sparsity"], jnp.float32),
        jnp.array(TICKETS["drop_fraction"], jnp.float32),
        jnp.array(TICKETS["delta_t"], jnp.int32),
        jnp.array(TICKETS["seed"], jnp.int32),
    )
    single = jax.jit(_ticket_run(name))
    batched = jax.jit(jax.vmap(_ticket_run(name)))
    named = jax.jit(jax.vmap(_ticket_run(name, axis_name="ticket"), axis_name="ticket"))
    out_b, out_n = batched(args), named(args)
    for i in range(3):
        alone = single(tuple(a[i] for a in args))
        for out in (out_b, out_n):
            ticket = jax.tree.map(lambda x, i=i: x[i], out)
            # Exact equality everywhere, the premise of the exact mask comparison included: the
            # weights and gradients every update ranks are bitwise the same in both programs
            # (the loss is elementwise, see _loss), so no ranking can differ between them.
            jax.tree.map(np.testing.assert_array_equal, ticket[1], alone[1])
            jax.tree.map(np.testing.assert_array_equal, *_key_data((ticket[0], alone[0])))
            assert int(ticket[0][2].step) == 9
    # The tickets differ (else the comparison proves little) and keep their own counts.
    counts = [sum(_counts(jax.tree.map(lambda x, i=i: x[i], out_n[0][2].masks))) for i in range(3)]
    assert len(set(counts)) == 3


def test_vmapped_update_equals_each_ticket_alone():
    """One RigL update over three stacked tickets (different sparsity, drop fraction, ΔT, key) at
    t = 6, an update step of the first two only: each equals its ticket's update alone, the third
    unchanged. Exact: the update ranks the given |w| and |g| (tie-free normal draws, the same
    inputs in both programs) and does no arithmetic before ranking but abs."""
    tickets = []
    for i, (sparsity, fraction, delta_t) in enumerate(
        [(0.5, 0.3, 2), (0.75, 0.2, 3), (0.6, 0.4, 4)]
    ):
        m = st.method("rigl", allocation="uniform")
        params = _params(i)
        sp = st.init(
            m,
            params,
            jax.random.key(i),
            sparsity=sparsity,
            drop_fraction=fraction,
            delta_t=delta_t,
            end=40,
        )
        params = st.apply(params, sp)
        tx = st.keep_zero(optax.adam(0.1))
        grads = _adversarial_grads(sp, seed=i)
        _, opt_state = tx.update(grads, tx.init(params), params, mask=sp.masks)
        tickets.append((sp._replace(step=jnp.int32(6)), params, grads, opt_state))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *tickets)
    vmapped = jax.jit(
        jax.vmap(
            lambda s, p, g, o: st.update(m, s, p, g, o, axis_name="ticket"), axis_name="ticket"
        )
    )
    out = vmapped(*stacked)
    for i, (sp, params, grads, opt_state) in enumerate(tickets):
        alone = _update(m, sp, params, grads, opt_state)
        ticket = jax.tree.map(lambda x, i=i: x[i], out)
        jax.tree.map(np.testing.assert_array_equal, *_key_data((ticket, alone)))
        changed = any(
            bool((a != b).any())
            for a, b in zip(jax.tree.leaves(alone[0].masks), jax.tree.leaves(sp.masks), strict=True)
        )
        assert changed == (i < 2)


def test_axis_name_makes_the_update_a_real_cond():
    """With axis_name, the vmapped update is a cond on an unbatched predicate (no update work at
    steps where no ticket updates); without it, vmap turns the cond into a select."""
    m = st.method("rigl")
    params = _params()
    sp = st.init(m, params, jax.random.key(0), sparsity=0.5, end=10)
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), (sp, params))

    def jaxpr(axis_name):
        fn = jax.vmap(
            lambda s, p: st.update(m, s, p, p, axis_name=axis_name)[0], axis_name=axis_name
        )
        return str(jax.make_jaxpr(fn)(*stacked))

    assert "cond[" in jaxpr("ticket")
    assert "cond[" not in jaxpr(None)


# --- methods, allocations, patterns: exact counts everywhere --------------------------------------


GRID_OPTIONS = {
    "uniform": {"allocation": "uniform"},
    "er_block": {"allocation": "er", "pattern": "block:2"},
    "erk_custom_dense": {"allocation": "erk", "custom": (("out", 0.5),), "dense": ("fc2",)},
    "nm": {"pattern": "2:4"},
}
# SET and RigL compile the most (3-4 s each here): three of them in make test, the rest slow.
FAST_GRID = {("set", "nm"), ("rigl", "er_block"), ("gradual", "erk_custom_dense")} | {
    (n, o) for n in ("static", "ste", "sr_ste") for o in GRID_OPTIONS
}


@pytest.mark.parametrize(
    ("name", "options"),
    [
        pytest.param(n, o, marks=() if (n, o) in FAST_GRID else pytest.mark.slow)
        for n in ALL_METHODS
        for o in GRID_OPTIONS
    ],
)
def test_every_method_keeps_exact_counts(name, options):
    m = st.method(name, **GRID_OPTIONS[options])
    params = _params(5)
    sparsity = 0.5
    sp = st.init(m, params, jax.random.key(0), sparsity=sparsity, delta_t=1, end=3)
    want = [
        int(c)
        for c in jax.tree.leaves(
            st.layer_counts(
                params,
                sparsity,
                allocation=m.allocation,
                dense=m.dense,
                custom=m.custom,
                pattern=m.pattern,
            )
        )
    ]
    if name != "gradual":
        assert [int(k.sum()) for k in jax.tree.leaves(sp.masks)] == want
    grads = _adversarial_grads(sp)
    params = params if m.name in ("ste", "sr_ste") else st.apply(params, sp)

    @jax.jit
    def run(sp, params):
        for _ in range(4):
            sp, params, _ = st.update(m, sp, params, grads)
        return sp

    sp = run(sp, params)
    assert [int(k.sum()) for k in jax.tree.leaves(sp.masks)] == want
    if options == "erk_custom_dense":
        assert np.asarray(sp.masks["fc2"]["kernel"]).all()
        assert int(sp.masks["out"]["kernel"].sum()) == 16  # custom: half of 32


# --- small pieces ---------------------------------------------------------------------------------


def test_method_is_static_and_hashable():
    a = st.method("rigl", pattern="block:2", prunable=["fc"], dense=("out",))
    b = st.Method("rigl", pattern=st.pattern("block:2"), prunable=("fc",), dense=("out",))
    assert a == b and hash(a) == hash(b) and a.pattern == st.Pattern("block", block=2)
    assert set(st.METHODS) == {"static", "gradual", "set", "rigl", "ste", "sr_ste"}


def test_drop_fraction_and_target_schedules():
    params = _params()
    for name, expect in [
        ("rigl", lambda t: 0.15 * (1 + math.cos(math.pi * min(t, 80) / 80))),
        ("set", lambda t: 0.3),
        ("gradual", lambda t: 0.0),
    ]:
        m = st.method(name)
        sp = st.init(m, params, jax.random.key(0), sparsity=0.8, begin=10, end=80)
        for t in (0, 10, 40, 79, 80, 100):
            s = sp._replace(step=jnp.int32(t))
            assert float(st.drop_fraction_at(m, s)) == pytest.approx(expect(t), abs=1e-6)
            target = 0.8 * (1 - (1 - min(max((t - 10) / 70, 0), 1)) ** 3)
            want = target if name == "gradual" else 0.8
            assert float(st.target_sparsity(m, s)) == pytest.approx(want, abs=1e-6)


def test_sr_ste_gradient_and_ste_forward():
    params = _params()
    m = st.method("sr_ste", sr_lambda=0.01)
    sp = st.init(m, params, jax.random.key(0), sparsity=0.7)
    g = jax.tree.map(jnp.ones_like, params)
    out = st.gradients(m, sp, params, g)
    for p, k, o in zip(
        jax.tree.leaves(params), jax.tree.leaves(sp.masks), jax.tree.leaves(out), strict=True
    ):
        np.testing.assert_allclose(o, 1.0 + 0.01 * np.where(k, 0.0, p), rtol=1e-6)
    grad = jax.grad(
        lambda q: sum(jnp.sum(x**2) for x in jax.tree.leaves(st.forward_params(m, sp, q)))
    )(params)
    for p, k, gr in zip(
        jax.tree.leaves(params), jax.tree.leaves(sp.masks), jax.tree.leaves(grad), strict=True
    ):
        # Straight through: d/dw of (w·m)² reaches every w as 2·(w·m).
        np.testing.assert_allclose(gr, 2 * np.where(k, p, 0.0), rtol=1e-6)
    assert st.gradients(st.method("ste"), sp, params, g) is g


def test_metrics():
    m = st.method("set", allocation="uniform")
    params = _params()
    sp = st.init(m, params, jax.random.key(0), sparsity=0.75, drop_fraction=0.25, delta_t=4, end=20)
    counts = _counts(sp.masks)
    n = sum(_leaf(params, p).size for p in KERNELS)
    out = st.metrics(m, sp._replace(step=jnp.int32(9)))  # last update at t = 8
    assert float(out["density"]) == pytest.approx(sum(counts) / n)
    assert int(out["drop_count"]) == sum(_round_half_up(0.25 * c) for c in counts)
    assert int(st.metrics(m, sp._replace(step=jnp.int32(3)))["drop_count"]) == 0


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda p: st.method("lottery"), "method"),
        (lambda p: st.method("rigl", allocation="random"), "allocation"),
        (lambda p: st.method("rigl", init_mask="zeros"), "init_mask"),
        (lambda p: st.method("rigl", warmup=3), "warmup"),
        (
            lambda p: st.init(st.method("rigl"), p, jax.random.key(0), sparsity=1.0, end=5),
            "sparsity",
        ),
        (
            lambda p: st.init(
                st.method("rigl"), p, jax.random.key(0), sparsity=0.5, delta_t=0, end=5
            ),
            "delta_t",
        ),
        (
            lambda p: st.init(
                st.method("gradual"), p, jax.random.key(0), sparsity=0.5, begin=5, end=5
            ),
            "end",
        ),
        (
            lambda p: st.init(
                st.method("set"), p, jax.random.key(0), sparsity=0.5, drop_fraction=1.0, end=5
            ),
            "drop_fraction",
        ),
        (lambda p: st.init(st.method("set"), p, jax.random.key(0), sparsity=0.5), "end"),
        (lambda p: st.method("rigl", pattern="5:4"), "pattern"),
        (lambda p: st.method("rigl", pattern="2:4", allocation="erk"), "allocation"),
        (
            lambda p: st.init(
                st.method("ste", pattern="2:3"), p, jax.random.key(0), sparsity=1 / 3
            ),
            "pattern",
        ),
        (lambda p: st.update("rigl", None, p, p), "method"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, argument):
    with pytest.raises(ValueError, match=argument):
        call(_params())
