"""Saliency scores against numbers computed another way: jax.hessian, a hand-written float64 numpy
forward/backward with finite differences, SynFlow's closed form on deep linear nets, and exact
counts through select, under jit and jit ∘ vmap."""

from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlp_reference import (
    f64,
    fd_hessian_diagonal,
    mlp_apply,
    mlp_batch,
    mlp_params,
    np_gauss_newton_diag,
    np_grad,
    np_loss,
    np_ravel,
)

from jaxprune import criteria, hessian, masks, models, saliency, schedules, select
from tests.helpers import TraceCounter, stack, unstack

# ----------------------------------------------------------------------------- a tiny tanh MLP


def axpy(a: float, x: Any, y: Any) -> Any:
    return jax.tree.map(lambda u, v: a * u + v, x, y)


def close(got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)


# One compiled program per shape: executing these eagerly, op by op, costs more compile time.
SNIP = jax.jit(saliency.snip, static_argnums=0)
GRASP = jax.jit(saliency.grasp, static_argnums=0, static_argnames="prunable")
OBD = jax.jit(saliency.obd, static_argnums=0, static_argnames=("method", "probes"))
TAYLOR = jax.jit(saliency.taylor, static_argnums=0, static_argnames="microbatches")
SYNFLOW = jax.jit(saliency.synflow, static_argnums=(0, 2), static_argnames="float64")
GLOBAL = jax.jit(select.global_)
LAYERWISE = jax.jit(select.layerwise)


def test_names_and_registry() -> None:
    assert saliency.names() == ("obd", "snip", "grasp", "taylor", "synflow", "magnitude", "random")
    assert set(saliency.METHODS) == set(saliency.names())
    with pytest.raises(TypeError):
        saliency.METHODS["mine"] = saliency.METHODS["snip"]  # type: ignore[index]


def test_numpy_reference_gradient_is_right() -> None:
    """The reference itself, against central finite differences of the float64 loss."""
    p, (x, y) = f64(mlp_params(0)), mlp_batch(0)
    g = np_grad(p, x, y)
    flat, unravel = np_ravel(p)
    eps = 1e-6
    fd = np.array(
        [
            (np_loss(unravel(flat + eps * e), x, y) - np_loss(unravel(flat - eps * e), x, y))
            / (2 * eps)
            for e in np.eye(flat.size)
        ]
    )
    np.testing.assert_allclose(np_ravel(g)[0], fd, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- OBD


def test_obd_is_half_the_hessian_diagonal_times_theta_squared() -> None:
    """OBD = ½·h_qq·θ², with h from jaxprune.hessian (tested against jax.hessian there)."""
    p, (x, y) = mlp_params(1), mlp_batch(1)
    _, np_unravel = np_ravel(p)
    fd = np_unravel(fd_hessian_diagonal(p, x, y))
    half_h_theta2 = jax.tree.map(lambda h, w: 0.5 * h * w**2, fd, f64(p))
    chex.assert_trees_all_close(OBD(mlp_apply, p, (x, y)), half_h_theta2, rtol=1e-3, atol=1e-6)
    # with the Gauss-Newton diagonal: ½·G_qq·θ²
    p, (x, y) = mlp_params(3), mlp_batch(3, n=7)
    gn = np_unravel(np_gauss_newton_diag(p, x))
    chex.assert_trees_all_close(
        saliency.obd(mlp_apply, p, (x, y), method="gauss_newton"),
        jax.tree.map(lambda g, w: 0.5 * g * w**2, gn, f64(p)),
        rtol=1e-4,
        atol=1e-8,
    )


def test_obd_hands_its_options_to_the_hessian() -> None:
    p, batch = mlp_params(0), mlp_batch(0)
    with pytest.raises(ValueError, match=r"43 > exact_limit=40.*method='hutchinson'"):
        saliency.obd(mlp_apply, p, batch, exact_limit=40)
    with pytest.raises(ValueError, match="key is required by method='hutchinson'"):
        saliency.obd(mlp_apply, p, batch, method="hutchinson")
    with pytest.raises(ValueError, match=r"unknown method 'diag'.*gauss_newton"):
        saliency.obd(mlp_apply, p, batch, method="diag")  # type: ignore[arg-type]
    assert saliency.OBD_METHODS == (*hessian.HESSIAN_METHODS, "gauss_newton")
    assert saliency.EXACT_LIMIT == hessian.EXACT_LIMIT
    # the estimators moved to jaxprune.hessian; their old names still work
    assert saliency.hessian_diagonal is hessian.hessian_diagonal
    assert saliency.gauss_newton_diagonal is hessian.gauss_newton_diagonal


# ----------------------------------------------------------------------------- SNIP, GraSP, Taylor


def test_snip_matches_numpy_gradient() -> None:
    for seed in range(2):
        p, (x, y) = mlp_params(seed), mlp_batch(seed)
        g = np_grad(p, x, y)
        got = SNIP(mlp_apply, p, (x, y))
        close(got, jax.tree.map(lambda gq, w: np.abs(gq * w), g, f64(p)))
        close(got, criteria.score("snip", p, grads=g), 1e-5, 1e-7)  # the criterion, same formula


def np_hvp(p64: Any, v: Any, x: np.ndarray, y: np.ndarray, temperature: float) -> Any:
    """H v by central finite differences of the hand-written gradient, step 1e-4 along v."""
    eps = 1e-4 / float(np.linalg.norm(np_ravel(v)[0]))
    up = np_grad(axpy(eps, v, p64), x, y, temperature)
    down = np_grad(axpy(-eps, v, p64), x, y, temperature)
    return jax.tree.map(lambda a, b: (a - b) / (2 * eps), up, down)


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_matches_finite_difference_hvp(temperature: float) -> None:
    p, (x, y) = mlp_params(3), mlp_batch(3)
    p64 = f64(p)
    g = np_grad(p64, x, y, temperature)
    kernels_only = {k: {"kernel": v["kernel"], "bias": 0.0 * v["bias"]} for k, v in g.items()}
    for prunable, direction in ((None, kernels_only), (lambda path, leaf: True, g)):
        hg = np_hvp(p64, direction, x, y, temperature)
        want = jax.tree.map(lambda h, w: h * w, hg, p64)
        got = GRASP(mlp_apply, p, (x, y), temperature=temperature, prunable=prunable)
        scale = float(np.abs(np_ravel(want)[0]).max())
        assert scale > 0
        close(got, want, rtol=1e-3, atol=1e-3 * scale)


def test_nan_weights_give_nan_scores_that_select_rejects() -> None:
    p, batch = mlp_params(0), mlp_batch(0)
    p["l1"]["kernel"][1, 2] = np.nan
    for scores in (SNIP(mlp_apply, p, batch), SYNFLOW(mlp_apply, p, (4,))):
        assert np.isnan(np.asarray(scores["l1"]["kernel"][1, 2]))
        with pytest.raises(ValueError, match="NaN"):
            select.layerwise(scores, masks.ones(p), 0.5)


def test_grasp_keeps_the_highest_theta_hg() -> None:
    """The sign convention: select keeps the top θ ⊙ Hg, i.e. removes the top −θ ⊙ Hg (the paper's S)."""
    p, batch = mlp_params(4), mlp_batch(4)
    s = GRASP(mlp_apply, p, batch)
    kept = GLOBAL(s, masks.ones(p), 0.5)
    ks = np.concatenate([np.ravel(s[k]["kernel"]) for k in ("l1", "l2")])
    km = np.concatenate([np.ravel(kept[k]["kernel"]) for k in ("l1", "l2")])
    paper_s = -ks
    assert km.sum() == int(select.keep_count(35, 0.5)) and paper_s[km].max() <= paper_s[~km].min()


@pytest.mark.parametrize("microbatches", [1, 2, 3])
def test_taylor_matches_numpy(microbatches: int) -> None:
    p, (x, y) = mlp_params(5), mlp_batch(5)
    size = len(y) // microbatches
    per_slice = [
        np_grad(p, x[i * size : (i + 1) * size], y[i * size : (i + 1) * size])
        for i in range(microbatches)
    ]
    want = jax.tree.map(
        lambda w, *gs: np.mean([(gq * w) ** 2 for gq in gs], axis=0), f64(p), *per_slice
    )
    got = TAYLOR(mlp_apply, p, (x, y), microbatches=microbatches)
    close(got, want, rtol=2e-4, atol=1e-9)
    if microbatches == 1:  # SNIP squared: the same ranking
        close(got, jax.tree.map(jnp.square, SNIP(mlp_apply, p, (x, y))), 1e-5, 1e-10)


# ----------------------------------------------------------------------------- SynFlow


WIDTHS = (3, 5, 4, 6, 2)


def chain_params(seed: int, widths: tuple[int, ...] = WIDTHS, scale: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        f"w{i}": (scale * rng.normal(size=(a, b))).astype(np.float32)
        for i, (a, b) in enumerate(itertools.pairwise(widths))
    }


def chain_apply(p: Any, x: Any) -> jax.Array:
    for i in range(len(p)):
        x = x @ p[f"w{i}"]
    return x


def synflow_closed_form(p: Any) -> tuple[dict[str, np.ndarray], float]:
    """score(W_l)[i, j] = (1ᵀ|W_1|…|W_{l-1}|)_i |W_l|_ij (|W_{l+1}|…|W_L| 1)_j, in float64."""
    ws = [np.abs(np.asarray(p[f"w{i}"], np.float64)) for i in range(len(p))]
    out = {}
    for l, w in enumerate(ws):
        left = np.ones(ws[0].shape[0])
        for a in ws[:l]:
            left = left @ a
        right = np.ones(ws[-1].shape[1])
        for a in reversed(ws[l + 1 :]):
            right = a @ right
        out[f"w{l}"] = left[:, None] * w * right[None, :]
    flow = np.ones(ws[0].shape[0])
    for a in ws:
        flow = flow @ a
    return out, float(flow.sum())


def test_synflow_equals_the_closed_form_and_conserves_flow() -> None:
    for seed in range(2):
        p = chain_params(seed)
        want, r = synflow_closed_form(p)
        got = SYNFLOW(chain_apply, p, (WIDTHS[0],))
        close(got, want, rtol=1e-5, atol=0)
        s = {k: np.asarray(v, np.float64) for k, v in got.items()}
        for l in range(len(p)):
            np.testing.assert_allclose(s[f"w{l}"].sum(), r, rtol=1e-5)  # every layer carries R
        for l in range(len(p) - 1):  # per neuron: flow in = flow out
            np.testing.assert_allclose(s[f"w{l}"].sum(0), s[f"w{l + 1}"].sum(1), rtol=1e-5)
        # float64 mode returns s / R: same ranking, each layer sums to 1
        got64 = SYNFLOW(chain_apply, p, (WIDTHS[0],), float64=True)
        close(got64, {k: v / r for k, v in want.items()}, rtol=1e-6, atol=0)


def test_synflow_reads_no_data() -> None:
    p = chain_params(0)
    ref = SYNFLOW(chain_apply, p, (WIDTHS[0],))
    rng = np.random.default_rng(0)
    for batch in (
        (rng.normal(size=(7, WIDTHS[0])).astype(np.float32), np.zeros(7, np.int32)),
        (np.zeros((2, WIDTHS[0]), np.float32), np.ones(2, np.int32)),
    ):
        by_name = saliency.score("synflow", chain_apply, p, batch)
        chex.assert_trees_all_equal(by_name, ref)


def test_synflow_float64_survives_where_float32_overflows() -> None:
    widths = (8,) * 26  # 25 layers, |w| ~ 16: each layer multiplies R by ~8 · 16, to ~1e52
    p = chain_params(7, widths, scale=20.0)
    want, r = synflow_closed_form(p)
    assert r > 1e45  # float32 ends at 3.4e38
    s32 = SYNFLOW(chain_apply, p, (8,))
    assert not np.isfinite(np.asarray(s32["w0"])).all()
    s64 = SYNFLOW(chain_apply, p, (8,), float64=True)
    close(s64, {k: v / r for k, v in want.items()}, rtol=1e-5, atol=0)
    assert not jax.enable_x64.value  # the float64 scoring left the global setting alone
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(s64))


def test_synflow_takes_abs_of_state() -> None:
    p = chain_params(1, (3, 4, 2))

    def apply_fn(q: Any, x: jax.Array, state: Any) -> jax.Array:
        return (x @ q["w0"] + state["shift"][None]) @ q["w1"]

    shift = np.array([-1.0, 2.0, -3.0, 0.5], np.float32)
    got = saliency.synflow(apply_fn, p, (3,), state={"shift": shift})
    w0, w1 = np.abs(p["w0"]).astype(np.float64), np.abs(p["w1"]).astype(np.float64)
    hidden = np.ones(3) @ w0 + np.abs(shift)  # the abs'd state adds flow
    close(got["w1"], hidden[:, None] * w1, rtol=1e-5)
    close(got["w0"], w0 * (w1 @ np.ones(2))[None, :], rtol=1e-5)


def test_synflow_prune_exact_density_and_one_round_is_one_shot() -> None:
    p = chain_params(3, (6, 8, 8, 4))
    ones = masks.ones(p)
    n = sum(v.size for v in p.values())
    prune = jax.jit(
        lambda q, d, r, scope: saliency.synflow_prune(
            chain_apply, q, ones, (6,), density=d, rounds=r, scope=scope
        ),
        static_argnums=3,
    )
    scores = SYNFLOW(chain_apply, p, (6,))
    for density in (0.3, 0.05):
        want = int(select.keep_count(n, 1.0 - density))
        for rounds in (1, 7, 100):
            m = prune(p, density, rounds, "global")
            assert int(masks.count(m)) == want, (density, rounds)
        one_shot = GLOBAL(scores, ones, jnp.float32(1.0) - jnp.float32(density))
        chex.assert_trees_all_equal(prune(p, density, 1, "global"), one_shot)
    # float64 scoring inside the compiled loop: the same masks where float32 does not overflow
    prune64 = jax.jit(
        lambda q: saliency.synflow_prune(chain_apply, q, ones, (6,), density=0.05, float64=True)
    )
    chex.assert_trees_all_equal(prune64(p), prune(p, 0.05, 100, "global"))
    # layerwise: the schedule per leaf, and one round is one-shot layerwise selection
    lw = prune(p, 0.25, 5, "layerwise")
    for k, v in p.items():
        assert int(lw[k].sum()) == int(select.keep_count(v.size, 0.75)), k
    lw1 = prune(p, 0.25, 1, "layerwise")
    chex.assert_trees_all_equal(lw1, LAYERWISE(scores, ones, jnp.float32(0.75)))


def test_iterative_synflow_avoids_layer_collapse_where_one_shot_collapses() -> None:
    # the wide middle layer carries R spread over 2,500 weights, the thin ones over 100 each
    p = chain_params(0, (2, 50, 50, 2))
    ones = masks.ones(p)
    scores = SYNFLOW(chain_apply, p, (2,))
    one_shot = GLOBAL(scores, ones, 0.995)
    assert int(one_shot["w1"].sum()) == 0  # the middle layer is gone: no path from input to output
    it = jax.jit(
        lambda q: saliency.synflow_prune(chain_apply, q, ones, (2,), density=0.005, rounds=100)
    )(p)
    assert int(masks.count(it)) == int(masks.count(one_shot))
    assert all(int(it[k].sum()) > 0 for k in p)
    flow = chain_apply(jax.tree.map(lambda w, m: np.abs(w) * np.asarray(m), p, it), np.ones((1, 2)))
    assert float(flow.sum()) > 0  # a path from input to output survives


def test_iterative_prune_with_any_score_and_densities_per_ticket() -> None:
    batch = mlp_batch(0)
    tickets = stack([mlp_params(s) for s in range(3)])
    densities = jnp.array([0.5, 0.2, 0.1])

    def one(q: Any, d: jax.Array) -> Any:
        return saliency.iterative_prune(
            lambda r: saliency.snip(mlp_apply, r, batch), q, masks.ones(q), density=d, rounds=4
        )

    out = jax.jit(jax.vmap(one))(tickets, densities)
    for t, d in enumerate([0.5, 0.2, 0.1]):
        m = unstack(out, t)
        assert int(masks.count(masks.prunable_leaves(m))) == int(select.keep_count(35, 1.0 - d))
        assert bool(m["l1"]["bias"].all() and m["l2"]["bias"].all())  # biases are not prunable


# ----------------------------------------------------------------------------- any schedule

# Nonzero integer weights and an integer score: float32 is exact, so a numpy loop reproduces every
# ranking, and the many ties exercise the index order.
ITER_SHAPES = {"a": (6, 8), "b": (8, 5), "bias": (5,)}


def iter_params(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: (rng.integers(1, 6, s) * rng.choice([-1, 1], s)).astype(np.float32)
        for k, s in ITER_SHAPES.items()
    }


def column_score(p: Any) -> Any:
    """|w| · (1 + weights alive in w's column): re-scoring the masked net changes the ranking."""
    return jax.tree.map(lambda w: jnp.abs(w) * (1 + jnp.sum(w != 0, axis=0, keepdims=True)), p)


def np_iterative_prune(p: dict[str, np.ndarray], kept_after: Any, rounds: int, scope: str) -> Any:
    """Brute force: each round, score the masked weights and keep the ``kept_after(k, size)`` best
    alive ones (higher score, then lower index; kernels in pytree order for global, each kernel
    alone for layerwise). Biases are not prunable."""
    kernels = [n for n in sorted(p) if p[n].ndim >= 2]
    m = {n: np.ones(w.shape, bool) for n, w in p.items()}
    for k in range(1, rounds + 1):
        w = {n: np.where(m[n], p[n], 0) for n in p}
        s = {n: np.abs(w[n]) * (1 + (w[n] != 0).sum(0, keepdims=True)) for n in p}
        for group in [kernels] if scope == "global" else [[n] for n in kernels]:
            alive = np.concatenate([m[n].ravel() for n in group])
            score = np.concatenate([s[n].ravel() for n in group])
            keep = min(kept_after(k, alive.size), int(alive.sum()))  # masks only shrink
            order = np.lexsort((np.arange(score.size), -score, ~alive))
            new = np.zeros(score.size, bool)
            new[order[:keep]] = True
            cuts = np.cumsum([p[n].size for n in group])[:-1]
            for n, part in zip(group, np.split(new, cuts), strict=True):
                m[n] = part.reshape(p[n].shape)
    return m


def round_half_up(x: float) -> int:
    """⌊x + ½⌋ of a float64, asserting x is not within 10⁻³ of a half (float32 could differ)."""
    assert abs(x - math.floor(x) - 0.5) > 1e-3, x
    return math.floor(x + 0.5)


def schedule_kept(density: np.float32, size: int) -> int:
    """One-shot's count at a density: size − ⌊(1 − d) · size + ½⌋, with 1 − d in float32."""
    rate = Fraction(float(np.float32(1) - np.float32(density)))
    # select reads a rate near a six-place decimal as that decimal; make sure it does not matter
    decimal = Fraction(round(rate * 10**6), 10**6)
    pruned = {math.floor(x * size + Fraction(1, 2)) for x in (rate, decimal)}
    assert len(pruned) == 1, (rate, size)
    return size - pruned.pop()


SCHEDULES = {
    "geometric": lambda k: schedules.geometric(k, 0.3),
    "table": lambda k: jnp.array([1.0, 0.75, 0.5, 0.5, 0.3, 0.1])[k],  # a flat round, decimals
    "rising": lambda k: jnp.where(k == 2, 0.9, 0.4),  # rises in round 2: nothing grows back
    "polynomial": lambda k: (
        1.0
        - schedules.polynomial(
            k, initial_sparsity=0.0, final_sparsity=0.9, begin_step=0, end_step=5
        )
    ),
}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_iterative_prune_follows_any_schedule_exactly(name: str, scope: str) -> None:
    schedule, rounds = SCHEDULES[name], 5
    p = iter_params(0)
    counter = TraceCounter(
        lambda q, r: saliency.iterative_prune(
            column_score, q, masks.ones(q), density=schedule, rounds=r, scope=scope
        )
    )
    prune = jax.jit(counter.fn)
    densities = [np.float32(schedule(k)) for k in range(rounds + 1)]  # the schedule's float32s

    def kept_after(k: int, size: int) -> int:
        return min(schedule_kept(densities[j], size) for j in range(1, k + 1))

    for r in (1, 3, rounds):
        got = prune(p, r)
        chex.assert_trees_all_equal(got, np_iterative_prune(p, kept_after, r, scope))
    counts = [int(masks.count(masks.prunable_leaves(prune(p, r)))) for r in range(1, rounds + 1)]
    assert counts == sorted(counts, reverse=True)  # masks only shrink
    assert counter.traces == 1  # rounds traced: one program


def test_iterative_prune_default_is_synflows_exponential_schedule() -> None:
    """The default, against c_k = round(c_0 (c_n / c_0)^(k/n)) computed here in float64."""
    p = iter_params(1)
    for scope in ("global", "layerwise"):
        counter = TraceCounter(
            lambda q, d, r, scope=scope: saliency.iterative_prune(
                column_score, q, masks.ones(q), density=d, rounds=r, scope=scope
            )
        )
        prune = jax.jit(counter.fn)
        for density, rounds in [(0.3, 1), (0.3, 4), (0.05, 7)]:

            def kept_after(
                k: int, size: int, density: float = density, rounds: int = rounds
            ) -> int:
                final = schedule_kept(np.float32(density), size)
                if k == rounds:
                    return final
                return min(max(round_half_up(size * (final / size) ** (k / rounds)), final), size)

            got = prune(p, density, rounds)
            chex.assert_trees_all_equal(got, np_iterative_prune(p, kept_after, rounds, scope))
        assert counter.traces == 1  # density and rounds traced: one program per scope
    # from a dense start it is the exponential schedule of jaxprune.schedules, as a callable
    rho, n = np.float32(0.25), 4  # 88 weights: c_n = 22 = 0.25 · 88, so c_n / c_0 = ρ exactly
    as_callable = saliency.iterative_prune(
        column_score,
        p,
        masks.ones(p),
        density=functools.partial(schedules.exponential, n_rounds=n, final_density=rho),
        rounds=n,
    )
    chex.assert_trees_all_equal(
        as_callable, saliency.iterative_prune(column_score, p, masks.ones(p), density=rho, rounds=n)
    )


def test_iterative_prune_schedules_per_ticket_under_jit_vmap() -> None:
    rates = [0.2, 0.3, 0.5]
    tickets = [iter_params(s) for s in range(3)]

    def one(q: Any, rate: jax.Array) -> Any:
        return saliency.iterative_prune(
            column_score, q, masks.ones(q), density=lambda k: schedules.geometric(k, rate), rounds=4
        )

    out = jax.jit(jax.vmap(one))(stack(tickets), jnp.array(rates, jnp.float32))
    for t, rate in enumerate(rates):
        densities = [np.float32(schedules.geometric(k, np.float32(rate))) for k in range(5)]

        def kept_after(k: int, size: int, densities: list[np.float32] = densities) -> int:
            return schedule_kept(densities[k], size)

        chex.assert_trees_all_equal(
            unstack(out, t), np_iterative_prune(tickets[t], kept_after, 4, "global")
        )
    with pytest.raises(ValueError, match=r"one density per round, got shape \[2\]"):
        saliency.iterative_prune(
            column_score, tickets[0], masks.ones(tickets[0]), density=lambda k: jnp.ones(2)
        )


# ----------------------------------------------------------------------------- jit and vmap


CASES = [
    ("obd", {}),
    ("obd", {"method": "hutchinson", "probes": 8}),
    ("obd", {"method": "gauss_newton", "chunk_size": 4}),
    ("snip", {}),
    ("grasp", {}),
    ("taylor", {"microbatches": 2}),
    ("synflow", {}),
    ("synflow", {"float64": True}),
    ("magnitude", {}),
    ("random", {}),
]


@pytest.mark.parametrize(("name", "options"), CASES, ids=lambda c: str(c))
def test_jit_vmap_over_tickets_matches_each_ticket(name: str, options: dict[str, Any]) -> None:
    def fn(q: Any, x: jax.Array, y: jax.Array, k: jax.Array) -> Any:
        return saliency.score(name, mlp_apply, q, (x, y), key=k, **options)

    counter = TraceCounter(fn)
    batched = jax.jit(jax.vmap(counter.fn, in_axes=(0, None, None, 0)))
    single = jax.jit(fn)
    for offset in (0, 3):  # new params, batch and keys: no new trace
        params = [mlp_params(offset + t) for t in range(3)]
        x, y = mlp_batch(offset)
        keys = jax.random.split(jax.random.key(offset), 3)
        out = batched(stack(params), x, y, keys)
        for t in range(3):
            close(unstack(out, t), single(params[t], x, y, keys[t]), rtol=1e-5, atol=1e-7)
            for leaf, w in zip(
                jax.tree.leaves(unstack(out, t)), jax.tree.leaves(params[t]), strict=True
            ):
                assert leaf.dtype == jnp.float32 and leaf.shape == w.shape
    assert counter.traces == 1
    # the scores plug into select: exact counts, layerwise and global, ticket by ticket
    lw, gl = kept_counts(out)
    np.testing.assert_array_equal(np.asarray(lw), [[8, 6, 5, 3]] * 3)  # biases stay
    np.testing.assert_array_equal(np.asarray(gl), [14] * 3)


@jax.jit
@jax.vmap
def kept_counts(s: Any) -> tuple[jax.Array, jax.Array]:
    """Per ticket: kept counts of each leaf after layerwise 60%, prunable kept after global 60%."""
    lw = select.layerwise(s, masks.ones(s), 0.6)
    gl = select.global_(s, masks.ones(s), 0.6)
    counts = [lw[k][w].sum() for k in ("l1", "l2") for w in ("kernel", "bias")]
    return jnp.stack(counts[0::2] + counts[1::2]), masks.count(masks.prunable_leaves(gl))


def test_flax_model_from_functional() -> None:
    net = models.build("mlp", input_shape=(4,), num_classes=3, hidden=(6,))
    apply_fn, params, _ = models.functional(net)
    x, y = mlp_batch(0)
    s = jax.jit(lambda q: saliency.snip(apply_fn, q, (x, y)))(params)
    assert str(jax.tree.structure(s)) == str(jax.tree.structure(params))
    sf = SYNFLOW(apply_fn, params, (4,), float64=True)
    # biases are 0 at init, so all of R flows through the kernels: each kernel layer sums to 1
    for leaf in jax.tree.leaves(masks.prunable_leaves(sf)):
        np.testing.assert_allclose(float(leaf.sum()), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- balanced batches


def test_balanced_batch() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=60).astype(np.int32)
    x = np.arange(60, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    # traced labels (num_classes given) and concrete ones (checked, num_classes inferred) agree
    traced = jax.jit(lambda xx, yy, k: saliency.balanced_batch(xx, yy, 5, key=k, num_classes=4))
    concrete = jax.jit(lambda k: saliency.balanced_batch(x, y, 5, key=k))
    xb, yb = traced(x, y, jax.random.key(0))
    idx = np.asarray(xb[:, 0]).astype(int)
    np.testing.assert_array_equal(np.asarray(yb), np.repeat(np.arange(4), 5))
    np.testing.assert_array_equal(y[idx], np.asarray(yb))  # each example has its own label
    assert len(set(idx.tolist())) == 20  # without replacement
    other = np.asarray(traced(x, y, jax.random.key(1))[0][:, 0])
    assert not np.array_equal(idx, other)
    np.testing.assert_array_equal(np.asarray(concrete(jax.random.key(0))[0]), np.asarray(xb))
    with pytest.raises(ValueError, match=r"per_class=30 but class.*too few examples"):
        saliency.balanced_batch(x, y, 30, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key is required by balanced_batch"):
        saliency.balanced_batch(x, y, 5, key=None)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- errors


def test_registry_errors_name_the_argument() -> None:
    p, batch = mlp_params(0), mlp_batch(0)
    with pytest.raises(ValueError, match=r"unknown saliency method 'snp'; expected one of: .*snip"):
        saliency.score("snp", mlp_apply, p, batch)
    with pytest.raises(ValueError, match=r"method 'snip' takes no option\(s\) \['temperature'\]"):
        saliency.score("snip", mlp_apply, p, batch, temperature=2.0)
    with pytest.raises(ValueError, match="batch is required by saliency method 'grasp'"):
        saliency.score("grasp", mlp_apply, p)
    with pytest.raises(ValueError, match="key is required by saliency method 'random'"):
        saliency.score("random", mlp_apply, p, batch)
    with pytest.raises(ValueError, match=r"typed PRNG key"):
        saliency.score("snip", mlp_apply, p, batch, key=jax.random.key_data(jax.random.key(0)))
    with pytest.raises(ValueError, match="needs input_shape"):
        saliency.score("synflow", mlp_apply, p)


def test_bad_inputs_name_the_argument() -> None:
    p, (x, y) = mlp_params(0), mlp_batch(0)
    with pytest.raises(ValueError, match=r"batch must be a pair \(x, y\)"):
        saliency.snip(mlp_apply, p, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"batch\[1\] \(y\) must have shape \[6\].*got \[5\]"):
        saliency.snip(mlp_apply, p, (x, y[:5]))
    with pytest.raises(ValueError, match=r"batch\[1\] \(y\) must hold integer class labels"):
        saliency.snip(mlp_apply, p, (x, y.astype(np.float32)))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*got labels in \[0, 7\]"):
        saliency.snip(mlp_apply, p, (x, np.r_[7, y[1:]].astype(np.int32)))
    with pytest.raises(
        ValueError, match=r"logits of shape \[batch, classes\] = \[6, C\].*got \[6\]"
    ):
        saliency.snip(lambda q, xx: mlp_apply(q, xx)[:, 0], p, (x, y))
    with pytest.raises(ValueError, match=r"apply_fn must be a callable"):
        saliency.snip(None, p, (x, y))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"params\['l1'\]\['bias'\] must be a float array"):
        saliency.snip(mlp_apply, {**p, "l1": {**p["l1"], "bias": np.zeros(5, np.int32)}}, (x, y))
    with pytest.raises(ValueError, match="batch size 6 must be a multiple of microbatches=4"):
        saliency.taylor(mlp_apply, p, (x, y), microbatches=4)
    with pytest.raises(ValueError, match="temperature must be a positive scalar"):
        saliency.grasp(mlp_apply, p, (x, y), temperature=0.0)
    with pytest.raises(ValueError, match=r"input_shape must be a non-empty tuple of positive ints"):
        saliency.synflow(chain_apply, chain_params(0), (0, 3))
    q = chain_params(0)
    with pytest.raises(ValueError, match=r"density.* must be in \[0.0, 1.0\]"):
        saliency.synflow_prune(chain_apply, q, masks.ones(q), (3,), density=1.5)
    with pytest.raises(ValueError, match="density must be a positive scalar"):
        saliency.synflow_prune(chain_apply, q, masks.ones(q), (3,), density=0.0)
    with pytest.raises(ValueError, match="unknown scope 'local'"):
        saliency.synflow_prune(chain_apply, q, masks.ones(q), (3,), density=0.5, scope="local")  # type: ignore[arg-type]
    bad = {**masks.ones(q), "w0": np.ones((5, 3), bool)}
    with pytest.raises(
        ValueError, match=r"mask\['w0'\] has shape \[5, 3\] but params\['w0'\] has shape \[3, 5\]"
    ):
        saliency.synflow_prune(chain_apply, q, bad, (3,), density=0.5)
