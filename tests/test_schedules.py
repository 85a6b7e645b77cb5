"""Schedules against closed forms in numpy, their monotonicity, and what select makes of them."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, stack, unstack
from hypothesis import given
from hypothesis import strategies as st

from jaxprune import masks, schedules, select

rates = st.floats(0.0, 0.95)
densities = st.floats(1e-4, 1.0)


# --- closed forms -------------------------------------------------------------------------------


def test_one_shot_is_dense_at_zero_then_final():
    out = schedules.one_shot(jnp.array([0, 1, 2, 7]), 0.25)
    np.testing.assert_array_equal(out, np.array([1.0, 0.25, 0.25, 0.25], np.float32))
    assert out.dtype == jnp.float32
    assert float(schedules.one_shot(0, 0.1)) == 1.0
    assert float(schedules.one_shot(1, 0.1)) == pytest.approx(0.1)


def test_geometric_matches_numpy_power():
    k = np.arange(25)
    for p in (0.2, 0.1, 0.15, 0.5):
        np.testing.assert_allclose(schedules.geometric(k, p), (1.0 - p) ** k, rtol=2e-6)
    # By hand: 0.8 ** 3 = 0.512.
    assert float(schedules.geometric(3, 0.2)) == pytest.approx(0.512, rel=1e-6)
    assert float(schedules.geometric(0, 0.7)) == 1.0


def test_geometric_rounds_by_hand():
    assert schedules.geometric_rounds(0.64, 0.2) == 2  # 0.8**2 exactly, despite float rounding
    assert schedules.geometric_rounds(0.8**7, 0.2) == 7
    assert schedules.geometric_rounds(0.036, 0.2) == 15  # 0.8**14 = 0.044, 0.8**15 = 0.035
    assert schedules.geometric_rounds(0.5, 0.5) == 1
    assert schedules.geometric_rounds(0.49, 0.5) == 2
    assert schedules.geometric_rounds(1.0, 0.2) == 0
    assert schedules.geometric_rounds(1.0, 0.0) == 0
    assert isinstance(schedules.geometric_rounds(0.1, 0.2), int)


@given(final=densities, rate=st.floats(0.01, 0.95))
def test_geometric_rounds_is_the_fewest_rounds_reaching_the_target(final, rate):
    n = schedules.geometric_rounds(final, rate)
    # Brute force: multiply by (1 - rate) until the density is at or below the target.
    k, d = 0, 1.0
    while d > final:
        d *= 1.0 - rate
        k += 1
    x = math.log(final) / math.log1p(-rate)
    if abs(x - round(x)) > 1e-6:  # away from exact powers, where float noise may decide
        assert n == k
    assert (1 - rate) ** n <= final * (1 + 1e-6)
    assert n == 0 or (1 - rate) ** (n - 1) > final * (1 - 1e-6)


def test_geometric_rounds_rejects_a_zero_rate_below_one():
    with pytest.raises(ValueError, match="rate"):
        schedules.geometric_rounds(0.5, 0.0)


def _poly_numpy(t, s_i, s_f, t0, t1, power):
    progress = np.clip((np.asarray(t, np.float64) - t0) / (t1 - t0), 0.0, 1.0)
    return s_f + (s_i - s_f) * (1.0 - progress) ** power


@pytest.mark.parametrize(
    ("s_i", "s_f", "t0", "t1", "power"),
    [(0.0, 0.9, 100, 1100, 3), (0.2, 0.5, 0, 10, 1), (0.5, 0.5, 3, 4, 2), (0.1, 0.95, -5, 40, 2.5)],
)
def test_polynomial_matches_numpy(s_i, s_f, t0, t1, power):
    t = np.arange(t0 - 20, t1 + 20)
    got = schedules.polynomial(
        t, initial_sparsity=s_i, final_sparsity=s_f, begin_step=t0, end_step=t1, power=power
    )
    np.testing.assert_allclose(got, _poly_numpy(t, s_i, s_f, t0, t1, power), rtol=1e-5, atol=1e-6)
    # The endpoints by hand: s_i up to the begin step, s_f from the end step on.
    assert float(got[0]) == pytest.approx(s_i, abs=1e-7)
    assert float(got[t0 - (t0 - 20)]) == pytest.approx(s_i, abs=1e-7)
    assert float(got[t1 - (t0 - 20)]) == pytest.approx(s_f, abs=1e-7)
    assert float(got[-1]) == pytest.approx(s_f, abs=1e-7)


def test_polynomial_by_hand():
    # Halfway with power 3: s = 0.8 - 0.8 * 0.5**3 = 0.7; power 1 is linear: 0.4.
    kw = dict(initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=10)
    assert float(schedules.polynomial(5, **kw)) == pytest.approx(0.7, abs=1e-6)
    assert float(schedules.polynomial(5, **kw, power=1)) == pytest.approx(0.4, abs=1e-6)


def test_exponential_matches_numpy():
    k = np.arange(0, 13)
    got = schedules.exponential(k, 10, 1e-3)
    np.testing.assert_allclose(got, 1e-3 ** np.clip(k / 10, 0, 1), rtol=1e-5)
    assert float(got[0]) == 1.0
    assert float(got[10]) == pytest.approx(1e-3, rel=1e-5)
    assert float(got[12]) == pytest.approx(1e-3, rel=1e-5)  # stays at rho after round n


def test_exponential_prunes_a_constant_fraction_per_round():
    d = schedules.exponential(jnp.arange(11), 10, 0.01)
    p = schedules.rate_between(d[:-1], d[1:])
    np.testing.assert_allclose(p, np.full(10, 1 - 0.01**0.1), rtol=1e-5)


def test_rate_between_by_hand_and_round_trip():
    assert float(schedules.rate_between(0.8, 0.64)) == pytest.approx(0.2, abs=1e-7)
    assert float(schedules.rate_between(1.0, 0.25)) == pytest.approx(0.75, abs=1e-7)
    assert float(schedules.rate_between(0.3, 0.3)) == 0.0
    d_from = np.array([1.0, 0.5, 0.2, 0.9], np.float32)
    d_to = np.array([0.9, 0.05, 0.2, 0.1], np.float32)
    p = schedules.rate_between(d_from, d_to)
    np.testing.assert_allclose(d_from * (1 - np.asarray(p)), d_to, rtol=1e-6)


def test_rate_between_traced_growth_prunes_nothing():
    p = jax.jit(schedules.rate_between)(jnp.float32(0.5), jnp.float32(0.8))
    assert float(p) == 0.0


# --- monotonicity -------------------------------------------------------------------------------


@given(rate=rates, k=st.integers(0, 60))
def test_geometric_is_nonincreasing_in_round_and_rate(rate, k):
    d = schedules.geometric(jnp.array([k, k + 1]), rate)
    assert float(d[1]) <= float(d[0]) <= 1.0
    assert float(schedules.geometric(k, min(rate + 0.04, 0.99))) <= float(d[0])


@given(
    s_i=st.floats(0.0, 0.5),
    extra=st.floats(0.0, 0.49),
    t0=st.integers(-50, 50),
    length=st.integers(1, 200),
    power=st.floats(0.5, 5.0),
)
def test_polynomial_is_nondecreasing_and_between_its_ends(s_i, extra, t0, length, power):
    s_f = s_i + extra
    t = np.arange(-60, 260)  # covers every begin/end drawn, in one shape
    s = np.asarray(
        schedules.polynomial(
            t,
            initial_sparsity=s_i,
            final_sparsity=s_f,
            begin_step=t0,
            end_step=t0 + length,
            power=power,
        )
    )
    assert np.all(np.diff(s) >= -1e-6)
    assert np.all(s >= np.float32(s_i) - 1e-6)
    assert np.all(s <= np.float32(s_f) + 1e-6)


@given(final=densities, n=st.integers(1, 100))
def test_exponential_is_nonincreasing(final, n):
    d = np.asarray(schedules.exponential(jnp.arange(102), n, final))  # one shape: no recompiles
    assert np.all(np.diff(d) <= 1e-7)
    assert d[0] == 1.0
    np.testing.assert_allclose(d[n:], final, rtol=1e-5)


# --- validation ---------------------------------------------------------------------------------

POLY = dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: schedules.one_shot(1, 0.0), "final_density"),
        (lambda: schedules.one_shot(1, 1.5), "final_density"),
        (lambda: schedules.geometric(1, 1.0), "rate"),
        (lambda: schedules.geometric(1, -0.1), "rate"),
        (lambda: schedules.geometric(1, float("nan")), "rate"),
        (lambda: schedules.geometric(-1, 0.2), "round"),
        (lambda: schedules.geometric_rounds(0.0, 0.2), "final_density"),
        (lambda: schedules.geometric_rounds(0.5, 1.0), "rate"),
        (lambda: schedules.polynomial(0, **{**POLY, "final_sparsity": 1.0}), "final_sparsity"),
        (lambda: schedules.polynomial(0, **{**POLY, "initial_sparsity": -0.1}), "initial_sparsity"),
        (lambda: schedules.polynomial(0, **{**POLY, "initial_sparsity": 0.6}), "initial_sparsity"),
        (lambda: schedules.polynomial(0, **{**POLY, "end_step": 0}), "end_step"),
        (lambda: schedules.polynomial(0, **POLY, power=0), "power"),
        (lambda: schedules.exponential(1, 0, 0.1), "n_rounds"),
        (lambda: schedules.exponential(1, 10, 0.0), "final_density"),
        (lambda: schedules.rate_between(0.0, 0.0), "density_from"),
        (lambda: schedules.rate_between(0.5, float("nan")), "density_to"),
        (lambda: schedules.rate_between(0.5, 0.6), "density_to"),
        (lambda: schedules.rate_between(np.array([0.5, 0.5]), np.array([0.4, 0.6])), "density_to"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call, named):
    with pytest.raises(ValueError, match=named):
        call()


# --- jit and vmap -------------------------------------------------------------------------------


def test_schedules_under_jit_do_not_retrace_when_values_change():
    def all_schedules(k, rate, rho, s_f, t0):
        return (
            schedules.one_shot(k, rho),
            schedules.geometric(k, rate),
            schedules.exponential(k, 10, rho),
            schedules.polynomial(
                k, initial_sparsity=0.0, final_sparsity=s_f, begin_step=t0, end_step=t0 + 10
            ),
            schedules.rate_between(rho, rho * (1 - rate)),
        )

    counter = TraceCounter(all_schedules)
    f = jax.jit(counter.fn)
    for k, rate, rho, s_f, t0 in [
        (0, 0.2, 0.1, 0.5, 0),
        (3, 0.1, 0.01, 0.9, 2),
        (7, 0.5, 0.3, 0.2, 5),
    ]:
        got = f(jnp.int32(k), jnp.float32(rate), jnp.float32(rho), jnp.float32(s_f), jnp.int32(t0))
        want = (
            1.0 if k == 0 else rho,
            (1 - rate) ** k,
            rho ** min(k / 10, 1.0),
            _poly_numpy(k, 0.0, s_f, t0, t0 + 10, 3),
            rate,
        )
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-7)
    assert counter.traces == 1


def test_schedules_vmap_over_rounds_and_rates_equal_scalar_calls():
    ks = jnp.arange(6)
    ps = jnp.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.9])
    batched = jax.jit(jax.vmap(schedules.geometric))(ks, ps)
    np.testing.assert_allclose(
        batched,
        [float(schedules.geometric(int(k), float(p))) for k, p in zip(ks, ps, strict=True)],
        rtol=1e-6,
    )
    rhos = jnp.array([0.5, 0.1, 0.01])
    grid = jax.vmap(jax.vmap(schedules.exponential, (0, None, None)), (None, None, 0))(ks, 5, rhos)
    np.testing.assert_allclose(
        grid, np.asarray(rhos)[:, None] ** np.clip(np.arange(6) / 5, 0, 1), rtol=1e-5
    )
    steps = jax.vmap(
        lambda t: schedules.polynomial(
            t, initial_sparsity=0.1, final_sparsity=0.9, begin_step=1, end_step=5
        )
    )(ks)
    np.testing.assert_allclose(steps, _poly_numpy(np.arange(6), 0.1, 0.9, 1, 5, 3), rtol=1e-6)


# --- what select makes of a schedule ------------------------------------------------------------

SHAPES = {"a": (20, 15), "b": (7, 3), "c": (5, 2), "d": (64, 9)}


def _scores(seed: int, *, ties: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in SHAPES.items():
        x = rng.normal(size=shape).astype(np.float32)
        out[name] = jnp.asarray(np.round(x) if ties else x)
    return out


def _leaf_counts(mask: dict) -> np.ndarray:
    return np.array([int(np.sum(mask[name])) for name in SHAPES])


SIZES = np.array([math.prod(s) for s in SHAPES.values()])


@pytest.mark.parametrize("rate", [0.2, 0.1, 0.15])
def test_geometric_with_layerwise_follows_the_keep_count_recurrence_exactly(rate):
    scores = _scores(0, ties=True)
    prune = jax.jit(select.layerwise)
    mask_direct = masks.ones(scores)
    mask_sched = masks.ones(scores)
    # By hand: r_{k+1} = r_k - floor(p * r_k + 1/2), p the decimal as written (select's rule).
    p = Fraction(str(rate))
    r = SIZES.copy()
    for k in range(12):
        mask_direct = prune(scores, mask_direct, jnp.float32(rate))
        step = schedules.rate_between(
            schedules.geometric(k, rate), schedules.geometric(k + 1, rate)
        )
        mask_sched = prune(scores, mask_sched, step)
        r = np.array([x - math.floor(p * int(x) + Fraction(1, 2)) for x in r])
        np.testing.assert_array_equal(_leaf_counts(mask_direct), r)
        if rate == 0.2:  # 0.2 * r is never near a rounding half, so float noise in the rate is moot
            np.testing.assert_array_equal(_leaf_counts(mask_sched), r)
        # Each round's rounding moves a leaf at most half a weight off the continuous schedule.
        dense = SIZES * (1 - rate) ** (k + 1)
        assert np.all(np.abs(_leaf_counts(mask_sched) - dense) <= 0.5 * (k + 1) + 1e-3)


def _poly_density(k, *, n):
    return 1.0 - schedules.polynomial(
        k, initial_sparsity=0.0, final_sparsity=0.95, begin_step=0, end_step=n
    )


@pytest.mark.parametrize(
    ("name", "density"),
    [
        ("geometric", lambda k, n: schedules.geometric(k, 0.25)),
        ("exponential", lambda k, n: schedules.exponential(k, n, 0.02)),
        ("polynomial", lambda k, n: _poly_density(k, n=n)),
        ("one_shot", lambda k, n: schedules.one_shot(k, 0.1)),
    ],
)
def test_layerwise_with_rate_between_tracks_any_schedule(name, density):
    n_rounds = 8
    scores = _scores(1)

    def one_round(scores, mask, k):
        rate = schedules.rate_between(density(k, n_rounds), density(k + 1, n_rounds))
        return select.layerwise(scores, mask, rate)

    counter = TraceCounter(one_round)
    step = jax.jit(counter.fn)
    mask = masks.ones(scores)
    prev = SIZES
    for k in range(n_rounds + 2):
        mask = step(scores, mask, jnp.int32(k))
        counts = _leaf_counts(mask)
        want = SIZES * float(density(k + 1, n_rounds))
        assert np.all(np.abs(counts - want) <= 0.5 * (k + 1) + 1e-3), (name, k, counts, want)
        assert np.all(counts <= prev)  # masks only shrink
        prev = counts
    assert counter.traces == 1  # the round is an array: one program for the whole schedule


def test_schedule_rates_vmapped_over_tickets_equal_per_ticket_rounds():
    # Three tickets, each with its own scores, IMP rate and round: batched == one call per ticket.
    per_rates = [0.2, 0.1, 0.5]
    per_rounds = [0, 3, 1]
    scores = [_scores(s) for s in range(3)]
    start = [jax.jit(select.layerwise)(s, masks.ones(s), 0.3) for s in scores]

    def one(s, m, k, p):
        return select.layerwise(
            s, m, schedules.rate_between(schedules.geometric(k, p), schedules.geometric(k + 1, p))
        )

    batched = jax.jit(jax.vmap(one))(
        stack(scores), stack(start), jnp.array(per_rounds), jnp.array(per_rates, jnp.float32)
    )
    one_jit = jax.jit(one)
    for i in range(3):
        single = one_jit(scores[i], start[i], per_rounds[i], per_rates[i])
        for name in SHAPES:
            np.testing.assert_array_equal(unstack(batched, i)[name], single[name])
