"""Learned supermasks against numpy gradients, binomial statistics and per-ticket runs."""

from __future__ import annotations

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import TraceCounter, apply_mlp

from jaxprune import data, masks, models, supermask, train

N_IN, N_HID, N_OUT = 6, 8, 3


def init_mlp(seed: int) -> dict:
    return helpers.init_mlp(seed, (N_IN, N_HID, N_OUT), bias=0.1)


def toy_data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return helpers.toy_data(n, seed, N_IN, N_OUT)


def random_mask(params: dict, seed: int, density: float = 0.5) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: (
            jnp.asarray(rng.random(p.shape) < density) if p.ndim >= 2 else jnp.ones(p.shape, bool)
        ),
        params,
    )


def sigmoid(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-s.astype(np.float64)))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def close(a, b, tol: float = 1e-5) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "rescaled"])
def test_straight_through_step_equals_numpy_gradient_of_a_linear_model(rescale):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    bias = rng.normal(size=3).astype(np.float32)
    s = rng.normal(size=(5, 3)).astype(np.float32)
    outer = rng.random((5, 3)) < 0.7
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=7).astype(np.int32)
    weights = {"w": jnp.asarray(w), "b": jnp.asarray(bias)}
    logits = {"w": jnp.asarray(s), "b": jnp.zeros(3)}
    mask = {"w": jnp.asarray(outer), "b": jnp.ones(3, bool)}
    key = jax.random.key(3)
    steps = supermask.make_steps(
        lambda p, xx: xx @ p["w"] + p["b"][None], optax.sgd(1.0), rescale=rescale
    )
    assert isinstance(steps, supermask.SupermaskSteps) and not steps.stateful
    state = steps.init(logits, key=key)
    new, metrics = steps.train_step(state, mask, (jnp.asarray(x), jnp.asarray(y)), weights)

    # The fixed sample of step 0 (documented: fold_in(key, step)); it lies inside the outer mask.
    b = np.asarray(supermask.sample(logits, jax.random.fold_in(key, 0), mask=mask)["w"])
    assert not np.any(b & ~outer)
    c = w.size / max(int(b.sum()), 1) if rescale else 1.0
    w_eff = w.astype(np.float64) * b * c
    prob = softmax(x @ w_eff + bias)
    onehot = np.eye(3)[y]
    grad_w_eff = x.T @ (prob - onehot) / 7  # dL/dW_eff
    sig = sigmoid(s)
    grad_s = grad_w_eff * w * c * sig * (1 - sig) * outer  # chain rule through m = b + σ(s) − sg
    np.testing.assert_allclose(metrics["loss"], -np.mean(np.log(prob[np.arange(7), y])), rtol=1e-5)
    np.testing.assert_allclose(new.params["w"], s - grad_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new.params["b"], np.zeros(3))  # bias logits never move
    assert int(new.step) == 1
    assert new.opt_state.key is state.opt_state.key  # the key rides along unchanged


def test_weights_stay_frozen_and_only_kept_kernel_logits_move():
    weights = init_mlp(0)
    host = jax.tree.map(np.array, weights)  # copies, to compare with after training
    mask = random_mask(weights, 0, density=0.6)
    # Weight decay and Adam would move any logit they touch: only trainable ones may move.
    steps = supermask.make_steps(apply_mlp, optax.adamw(0.1, weight_decay=0.5))
    logits0 = supermask.logits_init(weights, 0.3)
    x, y = toy_data()
    state, _ = train.train_chunk(
        steps,
        steps.init(logits0, key=jax.random.key(1)),
        mask,
        weights,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        jnp.int32(0),
        length=30,
        batch_size=16,
    )
    close(weights, host, tol=0)  # the frozen tree is untouched
    for name in ("fc", "out"):
        np.testing.assert_array_equal(state.params[name]["bias"], logits0[name]["bias"])
        kept = np.asarray(mask[name]["kernel"])
        moved = np.asarray(state.params[name]["kernel"]) != 0.3
        assert not moved[~kept].any()  # outside the outer mask: frozen logits
        assert moved[kept].mean() > 0.9  # inside: trained
    assert int(state.step) == 30


def test_rescaling_factor_is_layer_size_over_kept_count_with_an_empty_layer_guard():
    weights = init_mlp(2)
    rng = np.random.default_rng(2)
    m = {
        "fc": {"kernel": rng.random((N_IN, N_HID)) < 0.3, "bias": np.ones(N_HID, bool)},
        "out": {"kernel": np.zeros((N_HID, N_OUT), bool), "bias": np.ones(N_OUT, bool)},
    }
    eff = supermask.effective_weights(weights, m, rescale=True)
    k = m["fc"]["kernel"]
    want = np.asarray(weights["fc"]["kernel"]) * k * (k.size / k.sum())
    np.testing.assert_allclose(eff["fc"]["kernel"], want, rtol=1e-6)
    np.testing.assert_array_equal(eff["out"]["kernel"], np.zeros((N_HID, N_OUT)))  # no 0/0
    for name in ("fc", "out"):  # biases: neither masked nor rescaled
        np.testing.assert_array_equal(eff[name]["bias"], weights[name]["bias"])
    plain = supermask.effective_weights(weights, m, rescale=False)
    np.testing.assert_allclose(plain["fc"]["kernel"], np.asarray(weights["fc"]["kernel"]) * k)
    # A float (straight-through) mask counts its non-zero entries; the count is a constant.
    soft = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), m)
    close(supermask.effective_weights(weights, soft, rescale=True), eff, tol=1e-6)
    grad = jax.grad(
        lambda mm: jnp.sum(supermask.effective_weights(weights, mm, rescale=True)["out"]["kernel"])
    )(soft)
    np.testing.assert_allclose(grad["out"]["kernel"], weights["out"]["kernel"] * N_HID * N_OUT)
    assert np.isfinite(np.asarray(grad["fc"]["kernel"])).all()


def test_sampling_frequency_matches_sigmoid_of_the_logits():
    s = np.linspace(-3.0, 3.0, 13, dtype=np.float32).reshape(13, 1) * np.ones((1, 2), np.float32)
    logits = {"k": jnp.asarray(s), "b": jnp.zeros(4)}
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    draws = jax.jit(jax.vmap(lambda k: supermask.sample(logits, k)))(keys)
    freq = np.asarray(draws["k"]).mean(0)
    p = sigmoid(s)
    np.testing.assert_array_less(np.abs(freq - p), 4.5 * np.sqrt(p * (1 - p) / n) + 1e-9)
    assert np.asarray(draws["b"]).all()  # non-prunable: the (all-True) mask
    # The two columns share logits but are drawn independently.
    assert (np.asarray(draws["k"])[:, 6, 0] != np.asarray(draws["k"])[:, 6, 1]).mean() > 0.4
    # mask_of is the deterministic σ(s) > 0.5, ANDed with the outer mask.
    outer = {"k": jnp.asarray(np.arange(26).reshape(13, 2) % 3 > 0), "b": jnp.ones(4, bool)}
    got = supermask.mask_of(logits, outer)
    np.testing.assert_array_equal(got["k"], (sigmoid(s) > 0.5) & np.asarray(outer["k"]))
    np.testing.assert_array_equal(got["b"], np.ones(4, bool))


def test_eval_step_uses_the_deterministic_mask_and_counts_valid_rows():
    weights, x, y = init_mlp(5), *toy_data(20, seed=6)
    logits = jax.tree.map(
        lambda w: jnp.asarray(np.random.default_rng(w.size).normal(size=w.shape), jnp.float32),
        weights,
    )
    mask = random_mask(weights, 5, density=0.8)
    valid = np.arange(20) < 13
    steps = supermask.make_steps(apply_mlp, optax.sgd(1.0), rescale=True)
    out = steps.eval_step(logits, mask, (jnp.asarray(x), jnp.asarray(y)), weights, valid)
    m = jax.tree.map(lambda s, mm: (sigmoid(np.asarray(s)) > 0.5) & np.asarray(mm), logits, mask)
    w_np = jax.tree.map(np.asarray, weights)
    for name in ("fc", "out"):
        k = m[name]["kernel"]
        w_np[name]["kernel"] = w_np[name]["kernel"] * k * (k.size / k.sum())
    z = np.asarray(apply_mlp(w_np, jnp.asarray(x)), np.float64)
    nll = -np.log(softmax(z)[np.arange(20), y])
    np.testing.assert_allclose(out["loss"], nll[valid].sum(), rtol=1e-5)
    # σ(s) > 0.5 and argmax are decisions that rounding flips at a tie (the steps compute them
    # their way, this test its own): no kernel logit is near 0, and only rows whose top two
    # outputs are near-tied may count differently.
    assert min(np.abs(np.asarray(logits[n]["kernel"])).min() for n in ("fc", "out")) > 1e-3
    top = np.sort(z, axis=1)
    near_ties = np.sum((top[:, -1] - top[:, -2] < ARGMAX_MARGIN) & valid)
    assert abs(float(out["correct"]) - np.sum((z.argmax(1) == y) & valid)) <= near_ties


ITERATIONS, EVAL_EVERY, BATCH = 30, 10, 16

# Vmapped (or sharded) and single runs are the same float32 operations in another order: the
# batched matmuls round differently. Their logits then drift apart by rounding only (measured
# here: at most 4e-6, four float32 ulps of the largest logits, |s| ≈ 8; the drift grows with the
# steps, so the final one is the largest) as long as every discrete decision agrees: the
# Bernoulli draws b = u < σ(s) of training and the eval masks σ(s) > 0.5, i.e. s > 0 (apply_mlp
# is smooth, the outer masks are fixed). So the comparisons assert, from a replay of each ticket
# trained alone one step per call (_replay, _assert_decisions_clear):
#   * every draw that counts (kept positions of prunable leaves) has |u − σ(s)| >= MARGIN. The
#     runs' σ(s) differ by at most max|Δs| / 4 (σ' <= 1/4) plus an ulp of σ (6e-8); the final
#     logits of replay and single fit, and of single and vmapped fit, are asserted within TOL,
#     so max|Δs| <= 2·TOL and σ differs by <= 5.1e-6, half of MARGIN = 1e-5. So no draw can
#     differ and, by induction over the steps, the runs stay rounding-close;
#   * every kept logit at an evaluation has |s| >= LOGIT_MARGIN = 1e-4 > 2·TOL: the eval masks
#     are equal.
# LR is 1: at the paper's large rates (this test once used 20) the logits reach |s| ≈ 50 and the
# runs drifted 1e-5 to 1e-3 apart (measured), more than any margin that 3,690 uniform draws
# clear (each falls within m of its threshold with probability 2m).
LR, TOL, MARGIN, LOGIT_MARGIN = 1.0, 1e-5, 1e-5, 1e-4
# Accuracy goes through argmax. With equal eval masks both runs evaluate the same network, their
# outputs rounded differently by ~1e-6 (float32, |z| < 10): a prediction can flip only where the
# top two outputs are closer than ARGMAX_MARGIN, and the accuracies may differ by at most the
# number of such examples / n.
ARGMAX_MARGIN = 1e-4


def _fit(steps, state, mask, frozen, **kw):
    x, y = toy_data()
    xv, yv = toy_data(40, seed=5)
    return train.fit(
        steps, state, mask, (x, y), (xv, yv), (xv, yv), iterations=ITERATIONS,
        batch_size=BATCH, eval_every=EVAL_EVERY, frozen=frozen, progress=False, **kw,
    )  # fmt: skip


def _tickets(n: int = 3, seed: int = 0):
    """``n`` tickets; tickets 0 and 1 differ only in their sampling key."""
    weights = [init_mlp(seed + max(i - 1, 0)) for i in range(n)]
    mask_list = [random_mask(w, seed + max(i - 1, 0), 0.6) for i, w in enumerate(weights)]
    keys = jax.random.split(jax.random.key(seed + 11), n)
    steps = supermask.make_steps(apply_mlp, optax.sgd(LR, momentum=0.9), rescale=True)
    states = [
        steps.init(supermask.logits_init(w, 0.5 * max(i - 1, 0)), key=k)
        for i, (w, k) in enumerate(zip(weights, keys, strict=True))
    ]
    return steps, states, mask_list, weights


def _replay(steps, state, mask, frozen, data_key) -> list:
    """The logits before every step (and after the last) of one ticket trained alone, one step
    per call: the same steps and batches as ``_fit`` (the data order depends on key and step)."""
    x, y = (jnp.asarray(a) for a in toy_data())
    logits = [state.params]
    for t in range(ITERATIONS):
        state, _ = train.train_chunk(
            steps, state, mask, frozen, x, y, data_key, jnp.int32(t), length=1, batch_size=BATCH
        )
        logits.append(state.params)
    return logits


def _kept_prunable(tree, mask) -> tuple[np.ndarray, np.ndarray]:
    """Prunable leaves of ``tree`` raveled and joined in leaf order (``supermask.sample``'s order
    of ``u``), with the outer mask's kept positions."""
    flags = jax.tree.leaves(masks.is_prunable(tree))
    leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(mask), flags, strict=True)
    pairs = [(s, m) for s, m, f in leaves if f]
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s, _ in pairs])
    return values, np.concatenate([np.asarray(m).ravel() for _, m in pairs])


def _assert_decisions_clear(logits: list, key, mask, frozen) -> np.ndarray:
    """Assert the premise above for one replayed ticket; return, per evaluation, the number of
    test examples whose prediction is within ARGMAX_MARGIN of a tie."""
    for t, s_t in enumerate(logits[:-1]):
        step_key = jax.random.fold_in(key, t)  # documented: step t samples with fold_in(key, t)
        s, kept = _kept_prunable(s_t, mask)
        u = np.asarray(jax.random.uniform(step_key, s.shape), np.float64)
        gap = np.abs(u - sigmoid(s))[kept].min()
        assert gap >= MARGIN, f"step {t}: a Bernoulli draw is {gap:.1e} from its threshold"
        # The reconstruction of u is the one the steps use.
        drawn, _ = _kept_prunable(supermask.sample(s_t, step_key, mask=mask), mask)
        np.testing.assert_array_equal(drawn[kept], (u < sigmoid(s))[kept])
    xv, _ = toy_data(40, seed=5)  # _fit's validation and test set
    near_ties = []
    for t in range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY):
        s, kept = _kept_prunable(logits[t], mask)
        assert np.abs(s[kept]).min() >= LOGIT_MARGIN, f"evaluation at {t}: a kept logit is near 0"
        m = supermask.mask_of(logits[t], mask)
        z = np.sort(apply_mlp(supermask.effective_weights(frozen, m, rescale=True), xv), axis=1)
        near_ties.append(np.sum(z[:, -1] - z[:, -2] < ARGMAX_MARGIN))
    return np.array(near_ties)


def test_vmapped_tickets_equal_tickets_trained_alone():
    steps, states, mask_list, weights = _tickets(3)
    data_key = jax.random.key(2)
    alone = [
        _fit(steps, s, m, w, data_key=data_key)
        for s, m, w in zip(states, mask_list, weights, strict=True)
    ]
    together, hist = _fit(
        steps,
        train.stack(states),
        train.stack(mask_list),
        train.stack(weights),
        data_key=data_key,
        tickets=True,
    )
    for i, (st, h) in enumerate(alone):
        logits = _replay(steps, states[i], mask_list[i], weights[i], data_key)
        key = states[i].opt_state.key
        near_ties = _assert_decisions_clear(logits, key, mask_list[i], weights[i])
        close(logits[-1], st.params, tol=TOL)  # the replay is the same run
        for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(together.params), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=0, atol=TOL)  # max|Δs| <= TOL, as assumed
        np.testing.assert_allclose(hist.train_loss[i], h.train_loss, rtol=1e-5)
        np.testing.assert_allclose(hist.val_loss[i], h.val_loss, rtol=1e-5)
        np.testing.assert_allclose(hist.test_loss[i], h.test_loss, rtol=1e-5)
        flips = np.abs(hist.test_acc[i] - h.test_acc) * 40  # per evaluation, 40 test examples
        assert np.all(flips <= near_ties + 1e-3), (flips, near_ties)
    # Tickets 0 and 1 share weights, mask, logits and data; only their sampling keys differ.
    a, b = train.unstack(together.params)[:2]
    assert not np.allclose(a["fc"]["kernel"], b["fc"]["kernel"])


# ~12 s; sharding over host devices is also checked in test_train.py.
@pytest.mark.slow
def test_sharded_tickets_equal_unsharded():
    steps, states, mask_list, weights = _tickets(8)
    for s, m, w in zip(states, mask_list, weights, strict=True):  # the premise above
        logits = _replay(steps, s, m, w, jax.random.key(0))
        _assert_decisions_clear(logits, s.opt_state.key, m, w)
    args = (train.stack(states), train.stack(mask_list), train.stack(weights))
    plain, _ = _fit(steps, *args, data_key=jax.random.key(0), tickets=True)
    mesh = train.ticket_mesh()
    sharded, _ = _fit(steps, *args, data_key=jax.random.key(0), tickets=True, mesh=mesh)
    assert len(sharded.params["fc"]["kernel"].sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)


def test_changing_keys_masks_and_logits_does_not_retrace():
    counter = TraceCounter(apply_mlp)
    optimizer = optax.sgd(20.0, momentum=0.9)
    x, y = (jnp.asarray(a) for a in toy_data())
    traces = []
    for seed in (0, 7):  # new weights, masks, logits, sampling and data keys
        # Built anew each time from the same objects (a list spec, too): equal steps.
        steps = supermask.make_steps(counter.fn, optimizer, prunable=["kernel"])
        _, states, mask_list, weights = _tickets(2, seed=seed)
        states = [steps.init(s.params, key=s.opt_state.key) for s in states]
        train.train_chunk(
            steps, train.stack(states), train.stack(mask_list), train.stack(weights), x, y,
            jax.random.key(seed), jnp.int32(seed), length=5, batch_size=16, tickets=True,
        )  # fmt: skip
        traces.append(counter.traces)
    assert traces[0] >= 1
    assert traces[1] == traces[0]
    again = supermask.make_steps(counter.fn, optimizer, prunable=["kernel"])
    assert steps == again and hash(steps) == hash(again)
    assert steps != supermask.make_steps(counter.fn, optimizer, prunable=["kernel"], rescale=True)
    assert steps != supermask.make_steps(counter.fn, optax.sgd(20.0, momentum=0.9))


def test_learned_supermask_on_random_lenet_beats_chance_by_far():
    ds = data.load("digits")
    net = models.build("lenet300_100", input_shape=ds.input_shape, num_classes=10, seed=0)
    apply_fn, weights, _ = models.functional(net)
    steps = supermask.make_steps(apply_fn, optax.sgd(100.0, momentum=0.9), rescale=True)
    state = steps.init(supermask.logits_init(weights), key=jax.random.key(0))
    state, hist = train.fit(
        steps, state, masks.ones(weights), ds.train, ds.val, ds.test, iterations=200,
        batch_size=250, eval_every=200, data_key=jax.random.key(1), frozen=weights,
        progress=False,
    )  # fmt: skip
    assert hist.test_acc[-1] > 0.8  # chance is 0.1; the weights never trained
    density = float(masks.density(masks.prunable_leaves(supermask.mask_of(state.params))))
    assert 0.2 < density < 0.8


def test_bad_inputs_are_rejected_with_the_argument_named():
    weights = init_mlp(0)
    steps = supermask.make_steps(apply_mlp, optax.sgd(1.0))
    logits = supermask.logits_init(weights)
    state = steps.init(logits, key=jax.random.key(0))
    mask = masks.ones(weights)
    batch = tuple(jnp.asarray(a) for a in toy_data(8))
    with pytest.raises(ValueError, match="frozen is required"):
        steps.train_step(state, mask, batch)
    with pytest.raises(ValueError, match="frozen"):
        steps.train_step(state, mask, batch, {"fc": weights["fc"]})
    with pytest.raises(ValueError, match=r"frozen\['out'\]\['kernel'\] has shape"):
        steps.eval_step(logits, mask, batch, {**weights, "out": {**weights["out"],
                        "kernel": jnp.ones((2, 2))}})  # fmt: skip
    with pytest.raises(ValueError, match="mask"):
        steps.train_step(state, {"fc": mask["fc"]}, batch, weights)
    with pytest.raises(ValueError, match="frozen"):
        x, y = toy_data()
        train.fit(steps, state, mask, (x, y), (x, y), (x, y), iterations=2, batch_size=8,
                  eval_every=2, data_key=jax.random.key(0), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="key"):
        steps.init(logits, key=jax.random.PRNGKey(0))  # a raw uint32 key
    with pytest.raises(ValueError, match=r"key must be one typed PRNG key.*sample a mask"):
        steps.init(logits)  # the Steps protocol's key=None: required here
    with pytest.raises(ValueError, match="model_state must be None or empty"):
        steps.init(logits, {"mean": jnp.zeros(3)}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="model_state must be None or empty"):
        steps.eval_step(logits, mask, batch, weights, model_state={"mean": jnp.zeros(3)})
    with pytest.raises(ValueError, match="prunable's leaf 0 must be hashable"):
        supermask.make_steps(
            apply_mlp, optax.sgd(1.0), prunable=jax.tree.map(jnp.ones_like, weights)
        )
    with pytest.raises(ValueError, match="logits"):
        steps.init(jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.int32), weights),
                   key=jax.random.key(0))  # fmt: skip
    with pytest.raises(ValueError, match="m must have"):
        supermask.effective_weights(weights, {"fc": mask["fc"]})
