"""Schedules inside the optimizer and mixed precision, against numbers computed another way.

Learning rates against a numpy step function, read from the optimizer state and recovered from
the weights of a model whose gradient is known; SGD with momentum and coupled weight decay
against a numpy loop (PyTorch's update rule); compile counts with ``train.count_compiles``;
bf16 steps against a manual bf16 computation and the float32 run.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import masks, train

D, C, N, B = 3, 2, 32, 8


def rate_by_hand(t: int, lr: float, milestones, factor: float, warmup: int) -> float:
    """The step-decay rate of step ``t`` (from 0), written out."""
    if t < warmup:
        return lr * t / warmup
    return lr * factor ** sum(t >= m for m in milestones)


SCHEDULES = [
    dict(lr=0.1, milestones=(4, 7), iterations=10),
    dict(lr=0.2, milestones=(5, 8), iterations=10, factor=0.5, warmup=3),
]


def linear_apply(p, x):
    return x @ p["w"]


def sum_loss(logits, labels):
    # d/dw of sum(x @ w) / B with every x = ones(D) is ones((D, C)), whatever the batch: under
    # plain SGD each step then moves every weight by exactly -lr_t.
    del labels
    return jnp.sum(logits) / logits.shape[0]


def ones_data():
    x = jnp.ones((N, D))
    y = jnp.asarray(np.arange(N) % C, jnp.int32)
    return x, y


@pytest.mark.parametrize("kw", SCHEDULES)
def test_rate_of_every_step_of_a_run_read_from_the_state_and_from_the_weights(kw) -> None:
    sched = train.step_decay(kw["lr"], kw["milestones"], iterations=kw["iterations"],
                             factor=kw.get("factor", 0.1), warmup=kw.get("warmup", 0))  # fmt: skip
    steps = train.make_steps(linear_apply, train.sgd(sched, momentum=0.0), loss_fn=sum_loss)
    params = {"w": jnp.ones((D, C))}
    mask = masks.ones(params)
    state = steps.init(params)
    x, y = ones_data()
    key = jax.random.key(0)
    from_state, from_weights = [], []
    for t in range(kw["iterations"]):
        before = np.asarray(state.params["w"])
        state, _ = train.train_chunk(
            steps, state, mask, None, x, y, key, jnp.int32(t), length=1, batch_size=B
        )
        from_state.append(float(optax.tree_utils.tree_get(state.opt_state, "learning_rate")))
        step = before - np.asarray(state.params["w"])
        from_weights.append(float(step.mean()))
        # every weight moved by the same amount (float32 spacing near 1 is 1.2e-7)
        np.testing.assert_allclose(step, step.mean(), atol=3e-7)
    want = [
        rate_by_hand(t, kw["lr"], kw["milestones"], kw.get("factor", 0.1), kw.get("warmup", 0))
        for t in range(kw["iterations"])
    ]
    np.testing.assert_allclose(from_state, want, rtol=1e-6)  # float32 rounding of lr·f^i
    # w ≈ 1: the difference of two float32 weights is exact to their spacing, 1.2e-7.
    np.testing.assert_allclose(from_weights, want, atol=3e-7)


def test_a_fit_of_several_chunks_follows_the_schedule_and_compiles_its_chunk_once() -> None:
    sched = train.step_decay(0.1, (5, 9), iterations=12, warmup=2)
    steps = train.make_steps(linear_apply, train.sgd(sched, momentum=0.0), loss_fn=sum_loss)
    params = {"w": jnp.ones((D, C))}
    x, y = ones_data()
    before = train.train_chunk._cache_size()
    state, hist = train.fit(
        steps, steps.init(params), masks.ones(params), (x, y), (x, y), (x, y), iterations=12,
        batch_size=B, eval_every=4, data_key=jax.random.key(1), progress=False,
    )  # fmt: skip
    # Three chunks of 4 steps through the schedule's boundaries (2, 5 and 9): one program.
    assert train.train_chunk._cache_size() - before == 1
    assert list(hist.iteration) == [4, 8, 12]
    total = sum(rate_by_hand(t, 0.1, (5, 9), 0.1, 2) for t in range(12))
    np.testing.assert_allclose(np.asarray(state.params["w"]), 1.0 - total, atol=1e-6)
    rate = float(optax.tree_utils.tree_get(state.opt_state, "learning_rate"))
    assert rate == pytest.approx(rate_by_hand(11, 0.1, (5, 9), 0.1, 2), rel=1e-6)


def test_runs_of_different_lengths_share_one_program_through_set_schedule() -> None:
    # One optimizer; each run sets its own schedule in the state, as experiments/_channels does
    # for the fine-tune / Scratch-E / Scratch-B arms.
    opt = train.sgd(train.step_decay(1.0, (1, 2), iterations=3), weight_decay=1e-3)
    steps = train.make_steps(linear_apply, opt, loss_fn=sum_loss)
    params = {"w": jnp.ones((D, C))}
    mask = masks.ones(params)
    x, y = ones_data()

    def run(s: train.Steps, sched: train.StepDecay) -> train.TrainState:
        state = s.init(params)
        state = state._replace(opt_state=train.set_schedule(state.opt_state, sched))
        state, _ = train.fit(
            s, state, mask, (x, y), (x, y), (x, y), iterations=sched.iterations, batch_size=B,
            eval_every=4, data_key=jax.random.key(2), progress=False,
        )  # fmt: skip
        return state

    run(steps, train.step_decay(0.1, (4, 6), iterations=8))  # compiles what a run needs
    with train.count_compiles() as again:
        state = run(steps, train.step_decay(0.05, (6, 9), iterations=12, warmup=2))
    assert again.programs == 0
    rate = float(optax.tree_utils.tree_get(state.opt_state, "learning_rate"))
    assert rate == pytest.approx(0.05 * 0.01, rel=1e-6)  # step 11, after both milestones
    # The measure sees programs: a new optimizer object for the same run compiles its own.
    form = train.step_decay(1.0, (1, 2), iterations=3)
    other = train.make_steps(linear_apply, train.sgd(form, weight_decay=1e-3), loss_fn=sum_loss)
    with train.count_compiles() as fresh:
        run(other, train.step_decay(0.05, (6, 9), iterations=12))
    assert fresh.programs >= 1


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_weight_decay_and_momentum_equal_pytorchs_rule_in_numpy(nesterov) -> None:
    lr, mu, wd = train.step_decay(0.1, (3,), iterations=5), 0.9, 0.05
    opt = train.sgd(lr, momentum=mu, weight_decay=wd, nesterov=nesterov)
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    grads = rng.normal(size=(5, 4, 3)).astype(np.float32)
    params, state = {"w": jnp.asarray(w)}, opt.init({"w": jnp.asarray(w)})
    ref, buf = w.astype(np.float64), np.zeros((4, 3))
    for t in range(5):
        updates, state = opt.update({"w": jnp.asarray(grads[t])}, state, params)
        params = optax.apply_updates(params, updates)
        # torch.optim.SGD: d = g + λw; b = μb + d; w -= η_t (d + μb if nesterov else b)
        d = grads[t] + wd * ref
        buf = mu * buf + d
        ref = ref - rate_by_hand(t, 0.1, (3,), 0.1, 0) * (d + mu * buf if nesterov else buf)
        np.testing.assert_allclose(np.asarray(params["w"]), ref, rtol=1e-5, atol=1e-6)


def test_set_schedule_keeps_momentum_and_resumes_the_count() -> None:
    opt = train.sgd(train.step_decay(0.1, (2,), iterations=4), momentum=0.9)
    params = {"w": jnp.ones(2)}
    state = opt.init(params)
    for _ in range(2):
        _, state = opt.update({"w": jnp.ones(2)}, state, params)
    moved = train.set_schedule(state, train.step_decay(1.0, (5,), iterations=10), step=7)
    trace_before = optax.tree_utils.tree_get(state, "trace")
    np.testing.assert_array_equal(optax.tree_utils.tree_get(moved, "trace"), trace_before)
    assert int(optax.tree_utils.tree_get(moved, "count")) == 7
    assert float(optax.tree_utils.tree_get(moved, "learning_rate")) == pytest.approx(0.1)
    # Stacked states (a ticket axis) get the numbers on every ticket.
    stacked = jax.vmap(opt.init)({"w": jnp.ones((3, 2))})
    moved = train.set_schedule(stacked, train.step_decay(1.0, (5,), iterations=10), step=6)
    np.testing.assert_allclose(optax.tree_utils.tree_get(moved, "learning_rate"), [0.1] * 3)
    assert optax.tree_utils.tree_get(moved, "milestones").shape == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(milestones=(4, 10), iterations=10), r"milestones .*past the run"),
        (dict(milestones=(4, 12), iterations=10), r"milestones .*past the run"),
        (dict(milestones=(0, 4), iterations=10), r"milestones must lie inside \(0, iterations\)"),
        (dict(milestones=(6, 4), iterations=10), "milestones must be strictly increasing"),
        (dict(milestones=(4, 4), iterations=10), "milestones must be strictly increasing"),
        (dict(milestones=(4.5,), iterations=10), "milestones must be step indices"),
        (dict(milestones=(4,), iterations=10, warmup=4), r"warmup must be in \[0, 4\)"),
        (dict(milestones=(), iterations=5, warmup=5), r"warmup must be in \[0, 5\)"),
        (dict(milestones=(4,), iterations=10, warmup=-1), "warmup must be a non-negative int"),
        (dict(milestones=(4,), iterations=10, lr=0.0), "lr must be a finite number > 0"),
        (dict(milestones=(4,), iterations=10, lr=float("nan")), "lr must be a finite"),
        (dict(milestones=(4,), iterations=10, factor=0.0), "factor must be a finite number > 0"),
        (dict(milestones=(4,), iterations=0), "iterations must be a positive int"),
    ],
)
def test_bad_schedules_name_the_argument(kwargs, match) -> None:
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        train.step_decay(kwargs.pop("lr"), kwargs.pop("milestones"), **kwargs)


def test_bad_sgd_settings_name_the_argument() -> None:
    with pytest.raises(ValueError, match="momentum must be a finite number >= 0"):
        train.sgd(0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        train.sgd(0.1, weight_decay=float("inf"))
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        train.sgd(-1.0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        train.sgd(0.1, momentum=0.0, nesterov=True)
    state = train.sgd(train.step_decay(0.1, (2,), iterations=4)).init(jnp.ones(2))
    with pytest.raises(
        ValueError, match=r"learning_rate has 2 milestone.* opt_state's schedule has 1"
    ):
        train.set_schedule(state, train.step_decay(0.1, (2, 3), iterations=4))
    with pytest.raises(ValueError, match=r"opt_state holds no rate of train\.sgd"):
        train.set_schedule(optax.sgd(0.1).init(jnp.ones(2)), 0.1)
    with pytest.raises(ValueError, match="schedule built into the program"):
        train.set_schedule(train.sgd(optax.cosine_decay_schedule(0.1, 10)).init(jnp.ones(2)), 0.1)


def test_any_optax_schedule_is_evaluated_from_the_count_in_the_state() -> None:
    sched = optax.cosine_decay_schedule(0.1, 6)
    opt = train.sgd(sched, momentum=0.0)
    state, got = opt.init(jnp.zeros(2)), []
    for _ in range(6):
        _, state = opt.update(jnp.ones(2), state, jnp.zeros(2))
        got.append(float(optax.tree_utils.tree_get(state, "learning_rate")))
    want = [0.05 * (1 + np.cos(np.pi * t / 6)) for t in range(6)]  # cosine decay by hand
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


# ---- mixed precision ---------------------------------------------------------------------------


def mlp_apply(p, x):
    return jnp.tanh(x @ p["fc"]) @ p["out"]


def mlp_setup():
    rng = np.random.default_rng(3)
    params = {
        "fc": jnp.asarray(rng.normal(size=(6, 16)) / np.sqrt(6), jnp.float32),
        "out": jnp.asarray(rng.normal(size=(16, 4)) / 4, jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(64, 6)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, size=64), jnp.int32)
    return params, x, y


def _dots(jaxpr) -> list:
    """Every dot_general equation, inner jaxprs (jit, scan, custom_vjp) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn)
    for sub in jax.extend.core.subjaxprs(jaxpr):
        out.extend(_dots(sub))
    return out


def test_bf16_forward_and_backward_compute_in_bf16() -> None:
    params, x, y = mlp_setup()
    opt = train.sgd(0.1, momentum=0.9, weight_decay=1e-4)
    bf16 = train.make_steps(mlp_apply, opt, compute_dtype=jnp.bfloat16)
    f32 = train.make_steps(mlp_apply, opt)
    mask = masks.ones(params)
    # The forward and backward matmuls take bf16 operands.
    jaxpr = jax.make_jaxpr(bf16.train_step)(bf16.init(params), mask, (x, y)).jaxpr
    dots = _dots(jaxpr)
    assert len(dots) >= 4  # 2 forward, at least 2 in the backward pass
    for eqn in dots:
        assert all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars), eqn
    plain = _dots(jax.make_jaxpr(f32.train_step)(f32.init(params), mask, (x, y)).jaxpr)
    assert all(v.aval.dtype == jnp.float32 for eqn in plain for v in eqn.invars)
    # Evaluation equals a manual bf16 computation (logits back to float32 for the loss), on a
    # one-layer model: one rounding of the matmul's output, which a compiled program keeps.
    lin = train.make_steps(linear_apply, opt, compute_dtype=jnp.bfloat16)
    w = {"w": params["fc"][:, :4]}

    @jax.jit
    def manual(w, x, y):
        logits = x.astype(jnp.bfloat16) @ w["w"].astype(jnp.bfloat16)
        return jnp.sum(
            optax.losses.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
        )

    got = jax.jit(lin.eval_step)(w, masks.ones(w), (x, y))["loss"]
    np.testing.assert_allclose(float(got), float(manual(w, x, y)), rtol=1e-6)
    exact = jnp.sum(optax.losses.softmax_cross_entropy_with_integer_labels(x @ w["w"], y))
    assert float(got) != float(exact)  # the bf16 rounding is there


def test_bf16_training_keeps_float32_masters_and_follows_the_float32_run() -> None:
    params, x, y = mlp_setup()
    opt = train.sgd(0.1, momentum=0.9, weight_decay=1e-4)
    bf16 = train.make_steps(mlp_apply, opt, compute_dtype=jnp.bfloat16)
    f32 = train.make_steps(mlp_apply, opt)
    mask = masks.ones(params)
    # Params, optimizer state and gradients (the momentum buffer sums them) stay float32.
    s16, s32 = jax.jit(bf16.init)(params), jax.jit(f32.init)(params)
    step16, step32 = jax.jit(bf16.train_step), jax.jit(f32.train_step)
    losses16, losses32 = [], []
    for _ in range(5):
        s16, m16 = step16(s16, mask, (x, y))
        s32, m32 = step32(s32, mask, (x, y))
        losses16.append(float(m16["loss"]))
        losses32.append(float(m32["loss"]))
    for leaf in jax.tree.leaves((s16.params, s16.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    # bf16 keeps 8 mantissa bits: inputs, weights and each matmul output are rounded by at most
    # 2^-9 relative, so logits of size ~1 move by ~1% at most and the cross-entropy by less;
    # 3% leaves room for five steps of compounding on this smooth (tanh) model. The float32 loss
    # itself falls by more than 10% over the five steps, so the bound does say the runs agree.
    np.testing.assert_allclose(losses16, losses32, rtol=3e-2)
    assert losses32[-1] < 0.9 * losses32[0]


def test_bf16_keeps_the_model_state_dtype_and_steps_compare_by_value() -> None:
    def apply_fn(p, s, x, *, train):
        mean = jnp.mean(x, 0) if train else s["mean"]
        new = {"mean": 0.9 * s["mean"] + 0.1 * jnp.mean(x, 0)} if train else s
        return (x - mean[None]) @ p["w"], new

    opt = optax.sgd(0.1)
    steps = train.make_steps(apply_fn, opt, stateful=True, compute_dtype=jnp.bfloat16)
    state = steps.init({"w": jnp.ones((3, 2))}, {"mean": jnp.zeros(3)})
    batch = (jnp.arange(12.0).reshape(4, 3), jnp.array([0, 1, 0, 1]))
    state, _ = jax.jit(steps.train_step)(state, {"w": jnp.ones((3, 2), bool)}, batch)
    assert state.model_state["mean"].dtype == jnp.float32
    # 0.1 · the bf16 batch mean (4.5, 5.5, 6.5), rounded to bf16: 8 mantissa bits, 2^-8 relative
    np.testing.assert_allclose(state.model_state["mean"], [0.45, 0.55, 0.65], rtol=2**-8)
    assert steps == train.make_steps(apply_fn, opt, stateful=True, compute_dtype="bfloat16")
    assert steps != train.make_steps(apply_fn, opt, stateful=True)
    with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
        train.make_steps(apply_fn, opt, compute_dtype=jnp.int32)
