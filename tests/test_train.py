"""The training engine against hand-computed steps, per-ticket runs and unsharded runs; models with
batch norm (running statistics in TrainState.model_state) against numpy and per-ticket runs."""

from __future__ import annotations

import dataclasses
import functools
import re

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import TraceCounter, apply_mlp

from jaxprune import data, masks, models, supermask, train
from jaxprune.train import loop

N_IN, N_HID, N_OUT = 6, 8, 3


def init_mlp(seed: int) -> dict:
    return helpers.init_mlp(seed, (N_IN, N_HID, N_OUT))


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


# Float32 rounding of one evaluation's outputs (|z| < 10 here: a few ulps are ~1e-6), with room.
EVAL_ROUNDING = 1e-4


def assert_accuracy_close(acc_a, acc_b, logits_a, logits_b) -> None:
    """Accuracies of one network run by two programs (``(..., n)`` examples of ``(..., n, classes)``
    logits each): equal, except that examples near an argmax tie may count differently.

    The programs compute the same function rounded differently, so a prediction can flip only
    where the top two outputs are closer than the outputs of the two runs differ (both ways) plus
    each evaluation's own rounding; at most that many examples may differ.
    """
    za, zb = np.asarray(logits_a, np.float64), np.asarray(logits_b, np.float64)
    slack = 2 * (np.abs(za - zb).max() + EVAL_ROUNDING)
    top = np.sort(za, axis=-1)
    near_ties = np.sum(top[..., -1] - top[..., -2] <= slack, axis=-1)
    flips = np.abs(np.asarray(acc_a) - np.asarray(acc_b)) * za.shape[-2]
    assert np.all(flips <= near_ties + 1e-3), (flips, near_ties)


def assert_early_stop_close(it_a, hist_b: train.History, rtol: float = 1e-5) -> None:
    """``it_a`` is the early-stop iteration of ``hist_b``, or one whose validation loss is within
    ``rtol`` of its minimum (an argmin near a tie may go either way between two programs)."""
    near_min = hist_b.val_loss <= hist_b.val_loss.min() * (1 + 2 * rtol)
    assert it_a in hist_b.iteration[near_min], (it_a, hist_b.iteration, hist_b.val_loss)


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
    xv = jnp.asarray(toy_data(40, seed=5)[0])  # _fit's validation and test set
    for i, (st, h) in enumerate(alone):
        ticket = train.unstack(together.params)[i]
        chex_close(st.params, ticket, tol=1e-4)
        # Losses at every evaluation (continuous); accuracies, through argmax, at the last one,
        # where both final params are at hand to tell near-ties.
        np.testing.assert_allclose(hist.val_loss[i], h.val_loss, rtol=1e-5)
        np.testing.assert_allclose(hist.test_loss[i], h.test_loss, rtol=1e-5)
        np.testing.assert_allclose(hist.train_loss[i], h.train_loss, rtol=1e-5)
        logits = [apply_mlp(p, xv) for p in (st.params, ticket)]
        assert_accuracy_close(hist.test_acc[i, -1], h.test_acc[-1], *logits)
        assert_early_stop_close(hist.early_stop_iteration[i], h)
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
    np.testing.assert_allclose(h1.test_loss, h2.test_loss, rtol=1e-5)
    xv = jnp.asarray(toy_data(40, seed=5)[0])
    logits = [jax.vmap(apply_mlp, (0, None))(s.params, xv) for s in (plain, sharded)]
    assert_accuracy_close(h1.test_acc[:, -1], h2.test_acc[:, -1], *logits)


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


def test_steps_built_alike_are_equal_and_share_compiled_programs():
    counter = TraceCounter(apply_mlp)
    optimizer = optax.adam(1e-2)
    first, again = (train.make_steps(counter.fn, optimizer) for _ in range(2))
    assert first == again and hash(first) == hash(again)
    assert first != train.make_steps(counter.fn, optax.adam(1e-2))  # another optimizer object
    assert first != train.make_steps(counter.fn, optimizer, mode="forward")
    assert first != train.make_steps(apply_mlp, optimizer)
    params, (x, y) = init_mlp(0), toy_data()
    mask = masks.ones(params)
    traces = []
    for steps in (first, again):
        train.train_chunk(
            steps, steps.init(params), mask, None, jnp.asarray(x), jnp.asarray(y),
            jax.random.key(0), jnp.int32(0), length=3, batch_size=16,
        )  # fmt: skip
        traces.append(counter.traces)
    assert traces[0] >= 1
    assert traces[1] == traces[0]  # the second, equal steps reused the compiled program


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
    assert_accuracy_close(acc, np.mean(logits.argmax(1) == y), logits, logits)  # ties: rounding


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
    with pytest.raises(ValueError, match=r"key must be None for the steps of train\.make_steps"):
        steps.init(states[0].params, key=jax.random.key(0))
    with pytest.raises(ValueError, match="multiple of 8"):
        train.shard_tickets(train.stack([mask_list[0]] * 3), train.ticket_mesh())


def _spy_on_programs(monkeypatch) -> list[str]:
    """Record every training chunk and evaluation that fit runs (they still run)."""
    calls: list[str] = []
    for name in ("train_chunk", "evaluate"):
        real = getattr(loop, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(loop, name, spy)
    return calls


def _bad_fit_cases():
    """``(id, fit arguments changed, exact message fragment)``: each refused before training."""
    x, y = toy_data()
    xv, yv = toy_data(40, seed=5)
    p = init_mlp(0)
    nan = jax.tree.map(np.array, p)
    nan["out"]["kernel"][1, 2] = np.nan
    steps = train.make_steps(apply_mlp, optax.adam(1e-2))
    stacked = train.stack([steps.init(init_mlp(i)) for i in range(2)])
    unstacked_step = steps.init(p)._replace(step=jnp.zeros(2, jnp.int32))  # params of one ticket
    return [
        ("train_lengths", {"train": (x, y[:50])},
         "train[1] (y) must have shape [96] (one label per example of x), got [50]"),
        ("val_lengths", {"val": (xv[:30], yv)},
         "val[1] (y) must have shape [30] (one label per example of x), got [40]"),
        ("test_lengths", {"test": (xv, yv[:-1])},
         "test[1] (y) must have shape [40] (one label per example of x), got [39]"),
        ("labels_beyond_logits", {"val": (xv, np.where(yv == 0, N_OUT, yv))},
         f"val[1] (y) must hold class labels in [0, {N_OUT}) (the width of the model's logits), "
         f"got labels from 1 to {N_OUT}"),
        ("negative_labels", {"test": (xv, yv - 1)},
         f"test[1] (y) must hold class labels in [0, {N_OUT}) (the width of the model's logits), "
         "got labels from -1 to"),
        ("empty_val", {"val": (xv[:0], yv[:0])},
         "val[0] (x) must have a non-empty leading batch axis, got shape [0, 6]"),
        ("nan_weights", {"state": steps.init(nan)},
         "the weights hold NaN or inf at the start (iteration 0): state.params['out']['kernel']."),
        ("nan_frozen", {"frozen": nan},
         "the weights hold NaN or inf at the start (iteration 0): frozen['out']['kernel']."),
        ("tickets_true_unstacked", {"tickets": True},
         "tickets=True needs a state stacked over tickets (train.stack or jax.vmap(steps.init)), "
         "whose state.step has shape [tickets], but it has shape []"),
        ("tickets_false_stacked",
         {"state": stacked, "mask": train.stack([masks.ones(init_mlp(i)) for i in range(2)])},
         "tickets=False, but the state is stacked over tickets: state.step has shape [2]"),
        ("tickets_true_leaf_unstacked", {"state": unstacked_step, "tickets": True},
         "tickets=True: every leaf needs the leading ticket axis of the 2 tickets of state.step, "
         "but state.params['fc']['bias'] has shape [8]"),
        ("raw_key", {"data_key": jax.random.PRNGKey(0)},
         "data_key must be a typed PRNG key from jax.random.key(seed), got uint32[2]; wrap raw "
         "uint32 key data with jax.random.wrap_key_data(data_key)."),
        ("keys_without_tickets", {"data_key": jax.random.split(jax.random.key(0), 2)},
         "data_key must have shape [], got [2]"),
        ("int_params", {"state": steps.init(jax.tree.map(lambda a: a.astype(jnp.int32), p))},
         "state.params['fc']['bias'] must be a float array, got int32[8]"),
        ("float_iterations", {"iterations": 10.0}, "iterations must be a positive int (static), got 10.0"),
        ("float_eval_every", {"eval_every": 5.0}, "eval_every must be a positive int (static), got 5.0"),
        ("float_batch_size", {"batch_size": 8.0}, "batch_size must be a positive int (static), got 8.0"),
        ("ticket_batch_size", {"ticket_batch_size": 0},
         "ticket_batch_size must be a positive int (static), got 0"),
    ]  # fmt: skip


@pytest.mark.parametrize(("changed", "message"), [c[1:] for c in _bad_fit_cases()],
                         ids=[c[0] for c in _bad_fit_cases()])  # fmt: skip
def test_fit_refuses_bad_input_before_computing_anything(monkeypatch, changed, message):
    x, y = toy_data()
    xv, yv = toy_data(40, seed=5)
    steps = train.make_steps(apply_mlp, optax.adam(1e-2))
    p = init_mlp(0)
    args = {
        "state": steps.init(p), "mask": masks.ones(p), "train": (x, y), "val": (xv, yv),
        "test": (xv, yv), "iterations": 10, "batch_size": 8, "eval_every": 5,
        "data_key": jax.random.key(0), "progress": False, **changed,
    }  # fmt: skip
    calls = _spy_on_programs(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(message)):
        train.fit(steps, **args)
    assert calls == []  # nothing trained, nothing evaluated


def test_fit_names_the_tickets_with_non_finite_weights_or_the_wrong_key_count(monkeypatch):
    steps = train.make_steps(apply_mlp, optax.adam(1e-2))
    params = [init_mlp(i) for i in range(4)]
    params[1]["out"]["kernel"] = params[1]["out"]["kernel"].at[0, 0].set(jnp.inf)
    params[3]["fc"]["bias"] = params[3]["fc"]["bias"].at[0].set(jnp.nan)
    state = train.stack([steps.init(q) for q in params])
    mask = train.stack([masks.ones(q) for q in params])
    calls = _spy_on_programs(monkeypatch)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the weights hold NaN or inf at the start (iteration 0) in ticket(s) [1, 3] of 4: "
            "state.params['fc']['bias'] and 1 more leaves."
        ),
    ):
        _fit(steps, state, mask, data_key=jax.random.key(0), tickets=True)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "data_key must have shape [] (one for every ticket) or [4] (one per ticket), got [3]"
        ),
    ):
        _fit(steps, state, mask, data_key=jax.random.split(jax.random.key(0), 3), tickets=True)
    assert calls == []
    # check_finite=False trains on regardless, and the History shows what that gives.
    _, hist = _fit(steps, state, mask, data_key=jax.random.key(0), tickets=True, check_finite=False)
    assert np.isnan(hist.train_loss[[1, 3]]).all() and np.isfinite(hist.train_loss[[0, 2]]).all()


def test_labels_are_checked_against_the_logits_of_stateful_and_supermask_steps():
    x, y = toy_data()
    bad = (x, np.where(y == 0, 7, y))
    apply_fn, params, model_state = bn_net(0)
    bn_steps = train.make_steps(apply_fn, optax.sgd(0.1), stateful=True)
    sm_steps = supermask.make_steps(apply_mlp, optax.sgd(0.1))
    sm_state = sm_steps.init(supermask.logits_init(init_mlp(0)), key=jax.random.key(1))
    message = (
        f"train[1] (y) must hold class labels in [0, {N_OUT}) (the width of the model's logits)"
    )
    for steps, state, frozen in [
        (bn_steps, bn_steps.init(params, model_state), None),
        (bn_steps, train.stack([bn_steps.init(params, model_state)] * 2), None),  # tickets
        (sm_steps, sm_state, init_mlp(0)),
    ]:
        tickets = np.ndim(state.step) == 1
        mask = jax.vmap(masks.ones)(state.params) if tickets else masks.ones(state.params)
        with pytest.raises(ValueError, match=re.escape(message)):
            train.fit(
                steps, state, mask, bad, (x, y), (x, y), iterations=4, batch_size=8,
                eval_every=4, data_key=jax.random.key(0), frozen=frozen, tickets=tickets,
                progress=False,
            )  # fmt: skip


def test_a_mean_loss_that_overflows_counts_as_diverged():
    # Finite losses too large to sum: the chunk's mean (what the check reads) is inf, so the
    # chunk is refused, from its last step (no single loss is non-finite).
    losses = jnp.full(10, 3e38, jnp.float32)
    with pytest.raises(ValueError, match=re.escape("NaN or inf, first at iteration 30:")):
        loop._check_finite_losses(jnp.mean(losses), losses, 20, None)
    loop._check_finite_losses(jnp.mean(losses / 10), losses / 10, 20, None)  # 3e37: finite


@dataclasses.dataclass(frozen=True)
class _NoApplyFn:
    """Steps that follow the protocol without exposing an ``apply_fn`` (a wrapper)."""

    inner: train.MaskedSteps
    stateful: bool = False

    def init(self, params, model_state=None, *, key=None):
        return self.inner.init(params, model_state, key=key)

    def train_step(self, state, mask, batch, frozen=None):
        return self.inner.train_step(state, mask, batch, frozen)

    def eval_step(self, params, mask, batch, frozen=None, valid=None, *, model_state=None):
        return self.inner.eval_step(params, mask, batch, frozen, valid, model_state=model_state)


def test_steps_without_apply_fn_get_labels_checked_for_sign_only():
    # The documented fallback: without an apply_fn the number of classes is unknown.
    steps = _NoApplyFn(train.make_steps(apply_mlp, optax.sgd(0.1)))
    x, y = toy_data()
    p = init_mlp(0)
    fit = functools.partial(
        train.fit, steps, steps.init(p), masks.ones(p), iterations=4, batch_size=8,
        eval_every=4, data_key=jax.random.key(0), progress=False,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=re.escape("val[1] (y) must hold class labels >= 0, got labels from -1 to")
    ):
        fit((x, y), (x, y - 1), (x, y))
    _, hist = fit((x, y), (x, y + N_OUT), (x, y))  # beyond the logits: not caught
    assert hist.val_acc[-1] == 0.0


def _diverging_setup():
    """A linear model on a squared loss with too large a step: it blows up within ~25 steps;
    a ticket whose mask keeps nothing has logits 0 and loss 0 forever."""
    steps = train.make_steps(
        lambda p, xx: xx @ p["w"], optax.sgd(10.0), loss_fn=lambda z, _: jnp.mean(z**2)
    )
    params = {"w": jnp.full((N_IN, N_OUT), 0.1)}
    return steps, params


def test_a_diverging_run_stops_at_the_chunk_where_the_loss_goes_non_finite(monkeypatch):
    steps, params = _diverging_setup()
    x, y = toy_data()
    # The first non-finite loss, from the same run as one chunk (losses per step, 0-based).
    _, losses = train.train_chunk(
        steps, steps.init(params), masks.ones(params), None, jnp.asarray(x), jnp.asarray(y),
        jax.random.key(0), jnp.int32(0), length=60, batch_size=16,
    )  # fmt: skip
    first = int(np.flatnonzero(~np.isfinite(np.asarray(losses)))[0])
    assert 10 < first < 50  # the setup does diverge, within the run
    calls = _spy_on_programs(monkeypatch)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the training loss is NaN or inf, first at iteration {first + 1}: training diverged"
        ),
    ):
        train.fit(
            steps, steps.init(params), masks.ones(params), (x, y), (x, y), (x, y), iterations=60,
            batch_size=16, eval_every=10, data_key=jax.random.key(0), progress=False,
        )  # fmt: skip
    assert calls.count("train_chunk") == first // 10 + 1  # stopped after the chunk with it

    # Three tickets, the middle one keeping nothing: the message names the two that diverge.
    empty = jax.tree.map(jnp.zeros_like, masks.ones(params))
    mask = train.stack([masks.ones(params), empty, masks.ones(params)])
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the training loss is NaN or inf in ticket(s) [0, 2] of 3, first at iteration {first + 1}:"
        ),
    ):
        train.fit(
            steps, train.stack([steps.init(params)] * 3), mask, (x, y), (x, y), (x, y),
            iterations=60, batch_size=16, eval_every=10, data_key=jax.random.key(0),
            tickets=True, progress=False,
        )  # fmt: skip
    # check_finite=False trains on: the History records the NaN it gives.
    _, hist = train.fit(
        steps, steps.init(params), masks.ones(params), (x, y), (x, y), (x, y), iterations=60,
        batch_size=16, eval_every=10, data_key=jax.random.key(0), progress=False,
        check_finite=False,
    )  # fmt: skip
    assert not np.isfinite(hist.train_loss[-1])


# ---- models with batch norm: running statistics in TrainState.model_state --------------------------


class BNNet(nnx.Module):
    """fc → batch norm → tanh → out: the smallest model with running statistics (tanh, not ReLU,
    for the reason given at ``apply_mlp``).

    ``fc`` has no bias, as every layer before a batch norm here: BN subtracts the batch mean, so
    such a bias gets a zero gradient up to rounding, and Adam would blow that noise up to
    ±lr-sized steps whose signs depend on the summation order (vmapped or not).
    """

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(N_IN, N_HID, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(N_HID, momentum=0.9, use_fast_variance=False, rngs=rngs)
        self.out = nnx.Linear(N_HID, N_OUT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.bn(self.fc(x))))


def bn_net(seed: int):
    """``(apply_fn, params, model_state)`` with non-trivial BN scale, bias and running statistics."""
    net = models.instantiate(BNNet, seed)
    rng = np.random.default_rng(seed)
    net.bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, N_HID), jnp.float32)
    net.bn.bias[...] = jnp.asarray(rng.normal(size=N_HID), jnp.float32)
    net.bn.mean[...] = jnp.asarray(rng.normal(size=N_HID), jnp.float32)
    net.bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, N_HID), jnp.float32)
    return models.stateful(net)


def bn_mask(params, seed: int, density: float) -> dict:
    """A random mask that keeps at least two weights feeding every BN channel.

    A BN channel fed by one kept weight ``w`` is invariant to ``w``'s scale, so ``w``'s gradient is
    0 up to rounding, and Adam would turn that noise into ±lr steps that differ between compiled
    programs (vmapped, sharded): keeping two makes the comparisons well conditioned.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, m: (
            m.at[:2].set(True) if "['fc']['kernel']" in jax.tree_util.keystr(path) else m
        ),
        random_mask(params, seed, density),
    )


def _np(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v, np.float64) for p, v in flat}


def np_bn_logits(params, model_state, x, train: bool):
    """numpy forward of BNNet: batch statistics (biased variance) or the running ones."""
    p, s = _np(params), _np(model_state)
    h = x @ p["['fc']['kernel'].value"]
    if train:
        mean, var = h.mean(0), h.var(0)
    else:
        mean, var = s["['bn']['mean'].value"], s["['bn']['var'].value"]
    h = (h - mean) / np.sqrt(var + 1e-5) * p["['bn']['scale'].value"] + p["['bn']['bias'].value"]
    logits = np.tanh(h) @ p["['out']['kernel'].value"] + p["['out']['bias'].value"]
    return logits, mean, var


def np_cross_entropy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y]


def test_bn_train_step_updates_running_stats_by_the_momentum_rule():
    apply_fn, params, model_state = bn_net(0)
    steps = train.make_steps(apply_fn, optax.sgd(0.1), stateful=True)
    x, y = toy_data(16)
    state = steps.init(params, model_state)
    new, metrics = jax.jit(steps.train_step)(
        state, masks.ones(params), (jnp.asarray(x), jnp.asarray(y))
    )
    logits, batch_mean, batch_var = np_bn_logits(params, model_state, x.astype(np.float64), True)
    old, got = _np(model_state), _np(new.model_state)
    for stat, batch in (("mean", batch_mean), ("var", batch_var)):  # r ← 0.9·r + 0.1·batch
        want = 0.9 * old[f"['bn']['{stat}'].value"] + 0.1 * batch
        np.testing.assert_allclose(got[f"['bn']['{stat}'].value"], want, rtol=1e-5, atol=1e-6)
    # The loss is that of the batch-statistics forward pass; the running ones are not used.
    np.testing.assert_allclose(metrics["loss"], np_cross_entropy(logits, y).mean(), rtol=1e-5)
    assert int(new.step) == 1
    scale = "['bn']['scale'].value"
    assert not np.allclose(_np(new.params)[scale], _np(params)[scale])  # BN scale is trained


def test_bn_evaluate_uses_the_running_statistics():
    apply_fn, params, model_state = bn_net(1)  # running statistics far from any batch's
    steps = train.make_steps(apply_fn, optax.adam(1e-2), stateful=True)
    mask = random_mask(params, 1)
    xe, ye = toy_data(53, seed=4)  # not a multiple of the eval batch: padding must not count
    loss, acc = train.evaluate(
        steps, params, mask, None, jnp.asarray(xe), jnp.asarray(ye),
        eval_batch=16, model_state=model_state,
    )  # fmt: skip
    masked = masks.apply(params, mask)
    logits, _, _ = np_bn_logits(masked, model_state, xe.astype(np.float64), False)
    np.testing.assert_allclose(loss, np_cross_entropy(logits, ye).mean(), rtol=1e-5)
    assert_accuracy_close(acc, np.mean(logits.argmax(1) == ye), logits, logits)  # float32 vs 64
    batch_logits, _, _ = np_bn_logits(masked, model_state, xe.astype(np.float64), True)
    assert not np.allclose(batch_logits, logits, atol=1e-2)  # batch statistics would differ


def test_bn_tickets_vmapped_alone_sharded_pruned_and_never_recompiled():
    """8 BN tickets with AdamW: vmapped = alone = sharded; pruned weights stay 0; one compile."""
    assert jax.device_count() == 8, "conftest must force 8 host devices"
    forms = [bn_net(i) for i in range(8)]
    steps = train.make_steps(forms[0][0], optax.adamw(1e-2, weight_decay=0.1), stateful=True)
    mask_list = [bn_mask(f[1], i, density=0.2 + 0.08 * i) for i, f in enumerate(forms)]
    states = [steps.init(masks.apply(f[1], m), f[2]) for f, m in zip(forms, mask_list, strict=True)]
    stacked_s, stacked_m = train.stack(states), train.stack(mask_list)
    keys = jax.random.split(jax.random.key(7), 8)
    together, hist = _fit(steps, stacked_s, stacked_m, data_key=keys, tickets=True)

    x, y = toy_data()
    xv, yv = toy_data(40, seed=5)
    for i, (st, m) in enumerate(zip(states, mask_list, strict=True)):
        alone, _ = train.train_chunk(
            steps, st, m, None, jnp.asarray(x), jnp.asarray(y), keys[i], jnp.int32(0),
            length=30, batch_size=16,
        )  # fmt: skip
        ticket = train.unstack(together)[i]
        chex_close(alone.params, ticket.params, tol=1e-4)
        chex_close(alone.model_state, ticket.model_state, tol=1e-4)
        # The last evaluation used ticket i's own running statistics.
        logits, _, _ = np_bn_logits(ticket.params, ticket.model_state, xv.astype(np.float64), False)
        want = np_cross_entropy(logits, yv).mean()
        np.testing.assert_allclose(hist.val_loss[i, -1], want, rtol=1e-4)
        # Zero mode under AdamW + weight decay: pruned weights exactly 0; kept ones trained.
        for path, w in _np(ticket.params).items():
            kept = _np(m)[path] > 0
            assert np.all(w[~kept] == 0.0), path
            assert not np.allclose(w[kept], _np(st.params)[path][kept]), path
        assert _np(m)["['bn']['scale'].value"].all()  # BN scale/bias: all-True masks by default
    means = _np(together.model_state)["['bn']['mean'].value"]
    assert not np.allclose(means[0], means[1])  # one set of running statistics per ticket
    # lax.map over chunks of 4 tickets evaluates each with its own statistics too.
    loss, _ = train.evaluate(
        steps, together.params, stacked_m, None, jnp.asarray(xv), jnp.asarray(yv),
        tickets=True, ticket_batch_size=4, model_state=together.model_state,
    )  # fmt: skip
    np.testing.assert_allclose(loss, hist.val_loss[:, -1], rtol=1e-5)

    sharded, h2 = _fit(
        steps, stacked_s, stacked_m, data_key=keys, tickets=True, mesh=train.ticket_mesh()
    )
    assert len(jax.tree.leaves(sharded.model_state)[0].sharding.device_set) == 8
    chex_close(together.params, sharded.params, tol=1e-4)
    chex_close(together.model_state, sharded.model_state, tol=1e-4)
    np.testing.assert_allclose(hist.test_loss, h2.test_loss, rtol=1e-5)
    logits = [
        [np_bn_logits(t.params, t.model_state, xv.astype(np.float64), False)[0]
         for t in train.unstack(run)]
        for run in (together, sharded)
    ]  # fmt: skip
    assert_accuracy_close(hist.test_acc[:, -1], h2.test_acc[:, -1], *logits)

    sizes = (train.train_chunk._cache_size(), train.evaluate._cache_size())
    other_masks = train.stack([bn_mask(states[0].params, 50 + i, 0.5) for i in range(8)])
    x2, y2 = toy_data(seed=9)
    train.fit(
        steps, stacked_s, other_masks, (x2, y2), (x2[:40], y2[:40]), (x2[:40], y2[:40]),
        iterations=30, batch_size=16, eval_every=10,
        data_key=jax.random.split(jax.random.key(5), 8), tickets=True, progress=False,
    )  # fmt: skip
    assert (train.train_chunk._cache_size(), train.evaluate._cache_size()) == sizes


def test_bn_steps_reject_missing_or_unexpected_model_state():
    apply_fn, params, model_state = bn_net(0)
    stateful = train.make_steps(apply_fn, optax.sgd(0.1), stateful=True)
    with pytest.raises(ValueError, match="model_state is required for steps built with stateful"):
        stateful.init(params)
    state = stateful.init(params, model_state)
    x, y = toy_data(20)
    with pytest.raises(
        ValueError, match="model_state is required for steps built with stateful=True"
    ):
        train.evaluate(stateful, state.params, masks.ones(params), None, x, y)
    plain = train.make_steps(apply_mlp, optax.sgd(0.1))
    with pytest.raises(ValueError, match="model_state must be None or empty"):
        plain.init(init_mlp(0), model_state)
    legacy = train.TrainState(init_mlp(0), (), jnp.int32(0))  # positional, as before
    assert legacy.model_state == ()
    with pytest.raises(ValueError, match=r"state\.model_state must be None or empty"):
        train.fit(
            plain, legacy._replace(model_state=model_state), masks.ones(init_mlp(0)), (x, y), (x, y),
            (x, y), iterations=5, batch_size=8, eval_every=5, data_key=jax.random.key(0), progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "name",
    # Compiling a model's training scan is most of the time (~10 s each on 2 CPU cores); vgg11's
    # fit runs in docs/training.md and BN training in test_bn_tickets_* and the rethinking and
    # early-bird tests, so these are slow checks (make test-slow).
    [pytest.param(n, marks=pytest.mark.slow) for n in ("resnet20", "vgg11")],
)
def test_fit_trains_the_cifar_models_on_digits(name: str):
    ds = data.load("digits")
    net = models.build(name, input_shape=ds.input_shape, num_classes=10, width=0.25, seed=0)
    apply_fn, params, model_state = models.stateful(net)
    steps = train.make_steps(apply_fn, optax.adam(3e-3), stateful=True)
    _, hist = train.fit(
        steps, steps.init(params, model_state), masks.ones(params), ds.train, ds.val, ds.val,
        iterations=80, batch_size=32, eval_every=40, data_key=jax.random.key(0), progress=False,
    )  # fmt: skip
    assert hist.train_loss[1] < hist.train_loss[0] < np.log(10) + 0.5
    assert hist.val_acc[-1] > 0.5  # evaluated with running statistics after 80 steps
