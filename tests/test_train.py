"""The training engine against hand-computed steps, per-ticket runs and unsharded runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import masks, train

N_IN, N_HID, N_OUT = 6, 8, 3


def init_mlp(seed: int) -> dict:
    k1, k2 = jax.random.split(jax.random.key(seed))
    g = jax.nn.initializers.glorot_normal()
    return {
        "fc": {"kernel": g(k1, (N_IN, N_HID)), "bias": jnp.zeros(N_HID)},
        "out": {"kernel": g(k2, (N_HID, N_OUT)), "bias": jnp.zeros(N_OUT)},
    }


def apply_mlp(p: dict, x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ p["fc"]["kernel"] + p["fc"]["bias"][None])
    return h @ p["out"]["kernel"] + p["out"]["bias"][None]


def toy_data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_IN)).astype(np.float32)
    w = rng.normal(size=(N_IN, N_OUT))
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


def random_mask(params: dict, seed: int, density: float = 0.5) -> dict:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: (
            jnp.asarray(rng.random(p.shape) < density) if p.ndim >= 2 else jnp.ones(p.shape, bool)
        ),
        params,
    )


def test_sgd_step_equals_numpy_gradient_of_a_masked_linear_model():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3)).astype(np.float32)
    m = rng.random((5, 3)) < 0.6
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=7).astype(np.int32)
    steps = train.make_steps(lambda p, xx: xx @ p["w"], optax.sgd(0.5))
    w0 = np.where(m, w, 0.0)
    state = steps.init({"w": jnp.asarray(w0)})
    state, metrics = steps.train_step(
        state, {"w": jnp.asarray(m)}, (jnp.asarray(x), jnp.asarray(y))
    )

    logits = x @ w0
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    onehot = np.eye(3)[y]
    grad = x.T @ (prob - onehot) / 7
    expected = np.where(m, w0 - 0.5 * grad, 0.0)
    np.testing.assert_allclose(state.params["w"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], -np.mean(np.log(prob[np.arange(7), y])), rtol=1e-5)
    assert int(state.step) == 1


@pytest.mark.parametrize(
    "optimizer",
    [
        optax.adamw(1e-2, weight_decay=0.1),
        optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.1, momentum=0.9)),
    ],
    ids=["adamw", "sgd_momentum_wd"],
)
def test_zero_mode_keeps_pruned_weights_exactly_zero(optimizer):
    params = init_mlp(0)
    mask = random_mask(params, 0)
    steps = train.make_steps(apply_mlp, optimizer)
    x, y = toy_data()
    state = steps.init(masks.apply(params, mask))
    state, _ = train.train_chunk(
        steps,
        state,
        mask,
        None,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        jnp.int32(0),
        length=50,
        batch_size=16,
    )
    for p, m, p0 in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(mask), jax.tree.leaves(params), strict=True
    ):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
        kept = np.asarray(m)
        if kept.any() and p.ndim >= 2:
            assert not np.allclose(np.asarray(p)[kept], np.asarray(p0)[kept])  # it did train


def test_forward_mode_uses_frozen_values_and_never_updates_them():
    params = init_mlp(1)
    mask = random_mask(params, 1)
    frozen = jax.tree.map(lambda p: p * 0.5 + 0.01, params)
    steps = train.make_steps(apply_mlp, optax.adam(1e-2), mode="forward")
    x, y = toy_data()
    state = steps.init(params)
    state, _ = train.train_chunk(
        steps,
        state,
        mask,
        frozen,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        jnp.int32(0),
        length=20,
        batch_size=16,
    )
    for p, m, p0 in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(mask), jax.tree.leaves(params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(p)[~np.asarray(m)], np.asarray(p0)[~np.asarray(m)])
    eff = train.effective_params(state.params, mask, frozen, "forward")
    np.testing.assert_array_equal(
        np.asarray(eff["fc"]["kernel"])[~np.asarray(mask["fc"]["kernel"])],
        np.asarray(frozen["fc"]["kernel"])[~np.asarray(mask["fc"]["kernel"])],
    )
    # The loss the step reports is the loss of m*w + (1-m)*frozen.
    xb, yb = jnp.asarray(x[:16]), jnp.asarray(y[:16])
    _, metrics = steps.train_step(state, mask, (xb, yb), frozen)
    expected = train.cross_entropy(apply_mlp(eff, xb), yb)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)


def test_chunks_resume_exactly_and_data_order_depends_only_on_key_and_step():
    params, (x, y) = init_mlp(2), toy_data()
    mask = masks.ones(params)
    steps = train.make_steps(apply_mlp, optax.sgd(0.05))
    args = (jnp.asarray(x), jnp.asarray(y), jax.random.key(3))
    whole, losses = train.train_chunk(
        steps, steps.init(params), mask, None, *args, jnp.int32(0), length=14, batch_size=16
    )
    half, l1 = train.train_chunk(
        steps, steps.init(params), mask, None, *args, jnp.int32(0), length=7, batch_size=16
    )
    half, l2 = train.train_chunk(
        steps, half, mask, None, *args, jnp.int32(7), length=7, batch_size=16
    )
    chex_close(whole.params, half.params)
    np.testing.assert_allclose(losses, np.concatenate([l1, l2]), rtol=1e-6)


def test_each_epoch_visits_every_training_example_once():
    # A model whose loss gradient reveals which examples were seen: a per-example bias table.
    n, b = 48, 8
    x = np.eye(n, dtype=np.float32)
    y = np.zeros(n, np.int32)
    steps = train.make_steps(lambda p, xx: xx @ p["w"], optax.sgd(1.0))
    state = steps.init({"w": jnp.zeros((n, 2))})
    state, _ = train.train_chunk(
        steps,
        state,
        {"w": jnp.ones((n, 2), bool)},
        None,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        jnp.int32(0),
        length=n // b,
        batch_size=b,
    )
    touched = np.asarray(state.params["w"][:, 0]) > 0
    assert touched.all()  # one epoch = every row exactly in one batch


def chex_close(a, b, tol: float = 1e-5) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=tol, atol=tol)


def _ticket_setup(n: int = 4):
    params = [init_mlp(i) for i in range(n)]
    mask_list = [random_mask(p, i, density=0.3 + 0.1 * i) for i, p in enumerate(params)]
    steps = train.make_steps(apply_mlp, optax.adam(1e-2))
    states = [steps.init(masks.apply(p, m)) for p, m in zip(params, mask_list, strict=True)]
    return steps, states, mask_list


def _fit(steps, state, mask, **kw):
    x, y = toy_data()
    xv, yv = toy_data(40, seed=5)
    return train.fit(
        steps,
        state,
        mask,
        (x, y),
        (xv, yv),
        (xv, yv),
        iterations=30,
        batch_size=16,
        eval_every=10,
        progress=False,
        **kw,
    )


def test_vmapped_tickets_equal_tickets_trained_alone():
    steps, states, mask_list = _ticket_setup()
    keys = jax.random.split(jax.random.key(7), 4)
    alone = [_fit(steps, s, m, data_key=k) for s, m, k in zip(states, mask_list, keys, strict=True)]
    together, hist = _fit(
        steps, train.stack(states), train.stack(mask_list), data_key=keys, tickets=True
    )
    for i, (st, h) in enumerate(alone):
        chex_close(st.params, train.unstack(together.params)[i], tol=1e-4)
        np.testing.assert_allclose(hist.test_acc[i], h.test_acc, atol=1e-6)
        assert hist.early_stop_iteration[i] == h.early_stop_iteration
    # lax.map in chunks of 2 tickets is the same program, run differently.
    chunked, _ = _fit(
        steps,
        train.stack(states),
        train.stack(mask_list),
        data_key=keys,
        tickets=True,
        ticket_batch_size=2,
    )
    chex_close(chunked.params, together.params, tol=1e-4)


def test_shared_data_order_is_shared():
    steps, states, mask_list = _ticket_setup(2)
    same = train.stack([states[0], states[0]])
    out, _ = _fit(
        steps, same, train.stack([mask_list[0]] * 2), data_key=jax.random.key(1), tickets=True
    )
    a, b = train.unstack(out.params)
    chex_close(a, b, tol=0)
    keys = jax.random.split(jax.random.key(1), 2)
    out, _ = _fit(steps, same, train.stack([mask_list[0]] * 2), data_key=keys, tickets=True)
    a, b = train.unstack(out.params)
    assert not np.allclose(a["fc"]["kernel"], b["fc"]["kernel"])


def test_sharded_tickets_equal_unsharded():
    assert jax.device_count() == 8, "conftest must force 8 host devices"
    steps, states, mask_list = _ticket_setup(8)
    stacked_s, stacked_m = train.stack(states), train.stack(mask_list)
    plain, h1 = _fit(steps, stacked_s, stacked_m, data_key=jax.random.key(0), tickets=True)
    mesh = train.ticket_mesh()
    sharded, h2 = _fit(
        steps, stacked_s, stacked_m, data_key=jax.random.key(0), tickets=True, mesh=mesh
    )
    assert len(sharded.params["fc"]["kernel"].sharding.device_set) == 8
    chex_close(plain.params, sharded.params, tol=1e-4)
    np.testing.assert_allclose(h1.test_acc, h2.test_acc, atol=1 / 40 + 1e-6)


def test_changing_masks_keys_and_data_does_not_recompile():
    steps, states, mask_list = _ticket_setup(2)
    stacked = train.stack(states)
    _fit(steps, stacked, train.stack(mask_list), data_key=jax.random.key(0), tickets=True)
    sizes = (train.train_chunk._cache_size(), train.evaluate._cache_size())
    other_masks = train.stack([random_mask(init_mlp(0), 50 + i) for i in range(2)])
    x, y = toy_data(seed=9)
    train.fit(
        steps,
        stacked,
        other_masks,
        (x, y),
        (x[:40], y[:40]),
        (x[:40], y[:40]),
        iterations=30,
        batch_size=16,
        eval_every=10,
        data_key=jax.random.key(5),
        tickets=True,
        progress=False,
    )
    assert (train.train_chunk._cache_size(), train.evaluate._cache_size()) == sizes


def test_evaluate_equals_numpy_accuracy_and_loss():
    params = init_mlp(3)
    mask = random_mask(params, 3)
    steps = train.make_steps(apply_mlp, optax.sgd(0.1))
    x, y = toy_data(53, seed=4)  # not a multiple of the eval batch: padding must not count
    loss, acc = train.evaluate(
        steps, params, mask, None, jnp.asarray(x), jnp.asarray(y), eval_batch=16
    )
    logits = np.asarray(apply_mlp(masks.apply(params, mask), jnp.asarray(x)), np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -np.mean(logp[np.arange(53), y]), rtol=1e-5)
    np.testing.assert_allclose(acc, np.mean(logits.argmax(1) == y), rtol=1e-6)


def test_history_early_stop_is_the_minimum_validation_loss():
    steps, states, mask_list = _ticket_setup(1)
    _, h = _fit(steps, states[0], mask_list[0], data_key=jax.random.key(0))
    best = int(np.argmin(h.val_loss))
    assert h.early_stop_iteration == h.iteration[best]
    assert h.early_stop_test_acc == h.test_acc[best]
    np.testing.assert_array_equal(h.iteration, [10, 20, 30])


def test_bad_inputs_are_rejected_with_the_argument_named():
    steps, states, mask_list = _ticket_setup(1)
    x, y = toy_data()

    def fit(mask, **settings):
        settings = {"iterations": 5, "batch_size": 8, "eval_every": 5, **settings}
        train.fit(steps, states[0], mask, (x, y), (x, y), (x, y),
                  data_key=jax.random.key(0), progress=False, **settings)  # fmt: skip

    with pytest.raises(ValueError, match="batch_size"):
        fit(mask_list[0], batch_size=1000)
    with pytest.raises(ValueError, match="iterations"):
        fit(mask_list[0], iterations=0)
    with pytest.raises(ValueError, match="mask"):
        fit({"fc": mask_list[0]["fc"]})
    with pytest.raises(ValueError, match="mode"):
        train.make_steps(apply_mlp, optax.sgd(0.1), mode="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 8"):
        train.shard_tickets(train.stack([mask_list[0]] * 3), train.ticket_mesh())
