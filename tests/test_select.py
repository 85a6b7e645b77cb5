"""Selection against brute-force numpy: exact counts, tie order, thresholds, groups and N:M blocks."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, stack, unstack
from hypothesis import given
from hypothesis import strategies as st

from jaxprune import masks, select

# Compiled once per shape and reused across tests (eager calls would compile op by op).
layerwise_jit = jax.jit(select.layerwise, static_argnames=("min_keep", "prunable"))
global_jit = jax.jit(select.global_, static_argnames=("min_keep", "prunable"))
prune_jit = jax.jit(select.prune, static_argnames=("scope", "min_keep", "prunable"))
groups_jit = jax.jit(
    select.groups, static_argnames=("norm", "axis", "scope", "prunable", "min_keep")
)
n_of_m_jit = jax.jit(select.n_of_m, static_argnames=("n", "m", "axis", "prunable"))
keep_top_k_jit = jax.jit(select.keep_top_k)

# --- numpy references ---------------------------------------------------------------------------


def rate_as_fraction(rate) -> Fraction:
    """The rate the module formula uses, as an exact rational: the decimal with at most six places
    whose nearest float32 is ``float32(rate)`` if there is one, else ``float32(rate)`` itself."""
    p = np.float32(rate)
    d = Fraction(round(Fraction(float(p)) * 10**6), 10**6)
    # float(d) rounds d correctly, and rounding that to float32 is d's nearest float32: a decimal
    # is never within float64 precision of a float32 midpoint.
    return d if np.float32(float(d)) == p else Fraction(float(p))


def ref_keep_count(remaining, rate, min_keep=0):
    """The module formula in exact rational arithmetic, elementwise over ``remaining``."""
    p = rate_as_fraction(rate)
    r = np.asarray(remaining, np.int64)
    pruned = np.vectorize(lambda x: math.floor(p * int(x) + Fraction(1, 2)), otypes=[np.int64])(r)
    return np.maximum(r - pruned, np.minimum(min_keep, r))


def ref_top_k(scores, eligible, k, *, reserved=None, tiebreak=None):
    """Keep the first ``k`` of: eligible, reserved, not NaN, higher score, lower tiebreak."""
    s = np.asarray(scores, np.float64).ravel()
    elig = np.asarray(eligible, bool).ravel()
    n = s.size
    nan = np.isnan(s)
    s = np.where(nan, -np.inf, s)
    tb = np.arange(n) if tiebreak is None else np.asarray(tiebreak)
    res = np.zeros(n, bool) if reserved is None else np.asarray(reserved, bool).ravel() & elig
    order = np.lexsort((tb, -s, nan, ~res, ~elig))
    keep = np.zeros(n, bool)
    keep[order[: int(k)]] = True
    return keep & elig


def assert_one_threshold(scores, old, new):
    """Every kept score >= every score pruned this round; at equal scores, kept has lower index."""
    s, old, new = np.ravel(scores), np.ravel(old), np.ravel(new)
    dropped = old & ~new
    if not new.any() or not dropped.any():
        return
    low_kept = s[new].min()
    high_dropped = s[dropped].max()
    assert low_kept >= high_dropped
    if low_kept == high_dropped:
        assert (
            np.flatnonzero(new & (s == low_kept)).max()
            < np.flatnonzero(dropped & (s == low_kept)).min()
        )


# --- a small net with kernels, a conv and biases ------------------------------------------------

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "fc1": {"kernel": (12, 10), "bias": (10,)},
    "out": {"kernel": (10, 3), "bias": (3,)},
}
PRUNABLE = ["['conv']['kernel']", "['fc1']['kernel']", "['out']['kernel']"]


def is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def draw(seed: int, *, density: float = 1.0, ties: bool = False, shapes=SHAPES):
    """(scores, mask) on ``shapes``; ``ties`` rounds scores to a handful of values."""
    rng = np.random.default_rng(seed)

    def score(shape):
        x = rng.normal(size=shape).astype(np.float32)
        return jnp.asarray(np.round(x) if ties else x)

    scores = jax.tree.map(score, shapes, is_leaf=is_shape)
    mask = jax.tree.map(
        lambda shape: jnp.asarray(rng.random(shape) < density), shapes, is_leaf=is_shape
    )
    return scores, mask


def paths_and_leaves(tree):
    return [
        (jax.tree_util.keystr(p), np.asarray(x))
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


# --- keep_count and keep_top_k ------------------------------------------------------------------


def test_keep_count_by_hand():
    assert int(select.keep_count(100, 0.2)) == 80
    assert int(select.keep_count(10, 0.25)) == 7  # 2.5 rounds half up to 3 pruned
    assert int(select.keep_count(7, 0.0)) == 7
    assert int(select.keep_count(0, 0.5)) == 0
    assert int(select.keep_count(3, 0.1)) == 3  # 0.3 rounds to 0 pruned
    assert int(select.keep_count(5, 0.99, min_keep=2)) == 2
    assert int(select.keep_count(1, 0.9, min_keep=3)) == 1  # cannot keep more than remain
    assert int(select.keep_count(19200, 0.2)) == 15360
    # Exact halves round up although the float32 rate is below the decimal: float32(0.65) · 90 =
    # 58.4999…, float32(0.2925) · 200 = 58.4999…, float32(0.35) · 10 = 3.4999….
    assert int(select.keep_count(90, 0.65)) == 31
    assert int(select.keep_count(200, 0.2925)) == 141
    assert int(select.keep_count(10, 0.35)) == 6
    assert int(select.keep_count(2**31 - 1, 0.5)) == 2**30 - 1  # 2^30 - 1/2 + 1/2 pruned
    assert int(select.keep_count(2**31 - 1, 1.0)) == 0


def test_keep_count_matches_numpy_over_a_grid():
    r = np.arange(0, 300)
    f = jax.jit(select.keep_count, static_argnums=2)
    for p in np.linspace(0.0, 0.99, 45):
        for mk in (0, 3):
            np.testing.assert_array_equal(f(r, jnp.float32(p), mk), ref_keep_count(r, p, mk))


@jax.jit
@chex.assert_max_traces(n=1)  # one program for every (remaining, rate) pair
def keep_count_scalar(r, p):
    return select.keep_count(r, p, 2)


@jax.jit
@chex.assert_max_traces(n=1)
def keep_count_vmapped(r, p):
    return jax.vmap(lambda a, b: select.keep_count(a, b, 2))(r, p)


def check_keep_count_pairs(r, p):
    """jit and jit ∘ vmap against the formula in Fraction arithmetic (min_keep = 2)."""
    r, p = np.asarray(r, np.int32), np.asarray(p, np.float32)
    want = [
        max(int(x) - math.floor(rate_as_fraction(q) * int(x) + Fraction(1, 2)), min(2, int(x)))
        for x, q in zip(r, p, strict=True)
    ]
    assert [int(keep_count_scalar(x, q)) for x, q in zip(r, p, strict=True)] == want
    assert np.asarray(keep_count_vmapped(r, p)).tolist() == want


@st.composite
def count_and_decimal(draw):
    """``(r, d)``: ``d`` a decimal with at most six places; often ``d · r`` is an exact half."""
    places = draw(st.integers(0, 6))
    d = Fraction(draw(st.integers(0, 10**places)), 10**places)
    r = draw(st.integers(0, 2**31 - 1))
    if d.denominator % 2 == 0 and draw(st.booleans()):
        # d · r = k + 1/2 exactly for the odd multiples r of d's denominator / 2
        r = d.denominator // 2 * (2 * (r // d.denominator) + 1)
        if r > 2**31 - 1:
            r -= d.denominator
    return r, d


@given(st.lists(count_and_decimal(), min_size=16, max_size=16))
def test_keep_count_is_the_exact_formula_for_decimal_rates(pairs):
    r = [x for x, _ in pairs]
    p = [float(d) for _, d in pairs]  # as written in a config: float32(0.65) stands for 0.65
    assert all(rate_as_fraction(q) == d for q, (_, d) in zip(p, pairs, strict=True))
    check_keep_count_pairs(r, p)


@st.composite
def count_and_float32_rate(draw):
    """``(r, p)``: ``p`` any float32 in (0, 1), or a neighbour of a decimal's float32."""
    r = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        bits = draw(st.integers(0x34000000, 0x3F7FFFFF))  # 2^-23 to the float32 below 1
    else:
        decimal = np.float32(draw(st.integers(1, 10**6 - 1)) / 10**6)
        bits = int(decimal.view(np.int32)) + draw(st.sampled_from([-2, -1, 1, 2]))
    return r, float(np.int32(bits).view(np.float32))


@given(st.lists(count_and_float32_rate(), min_size=16, max_size=16))
def test_keep_count_is_the_exact_formula_for_any_float32_rate(pairs):
    check_keep_count_pairs([x for x, _ in pairs], [q for _, q in pairs])


def test_keep_count_every_six_place_decimal_at_random_counts_and_exact_halves():
    n = np.arange(10**6 + 1)
    rate = (n / 10**6).astype(np.float32)
    rng = np.random.default_rng(0)
    denominator = 10**6 // np.gcd(n, 10**6)
    halves = denominator // 2 * (2 * rng.integers(0, 2**31 // (2 * denominator)) + 1)
    f = jax.jit(jax.vmap(select.keep_count))
    for r in (rng.integers(0, 2**31, n.size), np.where(denominator % 2 == 0, halves, 2**31 - 1)):
        want = r - (n * r + 10**6 // 2) // 10**6  # int64: exact
        np.testing.assert_array_equal(f(r.astype(np.int32), rate), want)


@given(
    seed=st.integers(0, 2**16),
    n_values=st.integers(1, 4),
    k=st.integers(0, 40),
    p_elig=st.floats(0, 1),
)
def test_keep_top_k_matches_lexsort_reference_with_heavy_ties(seed, n_values, k, p_elig):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, n_values, 37).astype(np.float32)
    scores[rng.random(37) < 0.1] = -np.inf
    scores[rng.random(37) < 0.1] = np.nan
    elig = rng.random(37) < p_elig
    got = np.asarray(keep_top_k_jit(scores, elig, k))
    np.testing.assert_array_equal(got, ref_top_k(scores, elig, k))
    assert got.sum() == min(k, elig.sum())
    assert not (got & ~elig).any()
    # For the threshold, order NaN below -inf below every finite score.
    ranked = np.where(np.isnan(scores), -2e9, np.where(np.isinf(scores), -1e9, scores))
    assert_one_threshold(ranked, elig, got)


@given(
    seed=st.integers(0, 2**16),
    n_values=st.integers(1, 4),
    k=st.integers(-1, 40),
    p_elig=st.floats(0, 1),
    p_res=st.sampled_from([0.0, 0.2, 0.6]),
)
def test_keep_top_k_with_key_and_reserved_matches_the_reference_order(
    seed, n_values, k, p_elig, p_res
):
    # The documented order: reserved first, higher score (NaN lowest, -0.0 == 0.0), then the
    # higher random 32-bit draw of jax.random.bits(key), then the lower index.
    rng = np.random.default_rng(seed)
    scores = rng.integers(-1, n_values, 37).astype(np.float32) * 0.5
    scores[rng.random(37) < 0.1] = -np.inf
    scores[rng.random(37) < 0.1] = np.nan
    scores[scores == 0] *= np.where(rng.random(int((scores == 0).sum())) < 0.5, -1, 1)
    elig = rng.random(37) < p_elig
    res = rng.random(37) < p_res
    key = jax.random.key(seed)
    draws = np.asarray(jax.random.bits(key, (37,), jnp.uint32)).astype(np.int64)
    got = np.asarray(keep_top_k_jit(scores, elig, k, key=key, reserved=res))
    want = ref_top_k(scores, elig, max(k, 0), reserved=res, tiebreak=2**32 - 1 - draws)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == min(max(k, 0), elig.sum())


def test_keep_top_k_by_hand():
    s = jnp.array([1.0, 3.0, jnp.nan, 3.0, 2.0, -jnp.inf])
    everyone = jnp.ones(6, bool)
    # Highest first, equal 3.0s by index, NaN below everything (even -inf, though NaN is first).
    assert select.keep_top_k(s, everyone, 2).tolist() == [False, True, False, True, False, False]
    assert select.keep_top_k(s, everyone, 5).tolist() == [True, True, False, True, True, True]
    assert select.keep_top_k(s, everyone, 6).tolist() == [True] * 6
    elig = jnp.array([True, False, True, True, False, True])
    assert select.keep_top_k(s, elig, 2).tolist() == [True, False, False, True, False, False]
    assert select.keep_top_k(s, elig, 10).tolist() == elig.tolist()  # min(k, #eligible)


def test_keep_top_k_reserved_entries_come_first():
    s = jnp.array([5.0, 4.0, 3.0, 2.0, 1.0])
    elig = jnp.array([True, True, True, True, False])
    reserved = jnp.array([False, False, False, True, True])  # index 4 is not eligible
    got = select.keep_top_k(s, elig, 2, reserved=reserved)
    assert got.tolist() == [True, False, False, True, False]
    np.testing.assert_array_equal(got, ref_top_k(s, elig, 2, reserved=reserved))


def test_keep_top_k_random_ties_keep_the_exact_count(key):
    s = jnp.array([3.0] * 3 + [1.0] * 17)
    picks = set()
    for i in range(8):
        k_i = jax.random.fold_in(key, i)
        got = np.asarray(keep_top_k_jit(s, jnp.ones(20, bool), 2, key=k_i))
        assert got.sum() == 2 and got[:3].sum() == 2  # ties broken among the 3.0s only
        np.testing.assert_array_equal(got, keep_top_k_jit(s, jnp.ones(20, bool), 2, key=k_i))
        picks.add(tuple(np.flatnonzero(got)))
    assert len(picks) > 1  # the key, not the index, decides among ties
    flat = jnp.zeros(20)
    wide = {
        tuple(
            np.flatnonzero(
                keep_top_k_jit(flat, jnp.ones(20, bool), 7, key=jax.random.fold_in(key, i))
            )
        )
        for i in range(5)
    }
    assert len(wide) > 1 and all(len(w) == 7 for w in wide)


def test_keep_top_k_nan_ranks_lowest_under_jit():
    s = jnp.array([jnp.nan, 0.0, jnp.nan, -5.0])
    got = keep_top_k_jit(s, jnp.ones(4, bool), 2)
    assert got.tolist() == [False, True, False, True]


# --- layerwise ----------------------------------------------------------------------------------


def check_layerwise(scores, mask, new, rates, *, min_keep=0, prunable=PRUNABLE):
    """Each prunable leaf equals the per-leaf reference; the others are untouched."""
    for (path, s), (_, old), (_, got) in zip(
        paths_and_leaves(scores), paths_and_leaves(mask), paths_and_leaves(new), strict=True
    ):
        if path not in prunable:
            np.testing.assert_array_equal(got, old, err_msg=path)
            continue
        k = ref_keep_count(old.sum(), rates[path], min_keep)
        assert got.sum() == k, path
        assert not (got & ~old).any(), path  # masks only shrink
        np.testing.assert_array_equal(got.ravel(), ref_top_k(s, old, k), err_msg=path)
        assert_one_threshold(s, old, got)


@given(
    seed=st.integers(0, 2**16),
    density=st.sampled_from([1.0, 0.7, 0.3, 0.05]),
    rate=st.floats(0.0, 0.99, exclude_max=True),
    ties=st.booleans(),
    min_keep=st.sampled_from([0, 2]),
)
def test_layerwise_exact_counts_against_reference(seed, density, rate, ties, min_keep):
    scores, mask = draw(seed, density=density, ties=ties)
    new = layerwise_jit(scores, mask, rate, min_keep=min_keep)
    check_layerwise(scores, mask, new, {p: rate for p in PRUNABLE}, min_keep=min_keep)


@given(seed=st.integers(0, 2**16), rates=st.lists(st.floats(0, 0.95), min_size=6, max_size=6))
def test_layerwise_per_leaf_rate_trees(seed, rates):
    scores, mask = draw(seed, density=0.8, ties=True)
    treedef = jax.tree.structure(mask)
    rate_tree = jax.tree.unflatten(treedef, [jnp.float32(r) for r in rates])
    new = layerwise_jit(scores, mask, rate_tree)
    check_layerwise(
        scores, mask, new, dict(zip([p for p, _ in paths_and_leaves(mask)], rates, strict=True))
    )


def test_pruned_weights_are_never_reselected():
    scores, mask = draw(0, density=0.5)
    # Give every pruned weight the best score there is: it must stay pruned.
    boosted = jax.tree.map(lambda s, m: jnp.where(m, s, 1e6), scores, mask)
    new = layerwise_jit(boosted, mask, 0.5)
    for (_, old), (_, got) in zip(paths_and_leaves(mask), paths_and_leaves(new), strict=True):
        assert not (got & ~old).any()
    check_layerwise(boosted, mask, new, {p: 0.5 for p in PRUNABLE})


def test_layerwise_prunable_spec_leaves_other_leaves_alone():
    scores, mask = draw(1)
    new = layerwise_jit(scores, mask, 0.5, prunable=masks.rule(exclude="out"))
    check_layerwise(scores, mask, new, {p: 0.5 for p in PRUNABLE}, prunable=PRUNABLE[:2])
    new = layerwise_jit(scores, mask, 0.5, prunable="bias")  # biases only: 1-D leaves too
    bias_paths = [p for p, _ in paths_and_leaves(mask) if "bias" in p]
    check_layerwise(scores, mask, new, {p: 0.5 for p in bias_paths}, prunable=bias_paths)


def test_layerwise_min_keep():
    s = {"w": jnp.arange(10.0).reshape(2, 5)}
    m = {"w": jnp.array([[True, False, True, False, True], [False, True, False, False, True]])}
    new = layerwise_jit(s, m, 0.9, min_keep=3)  # keep_count(5, 0.9) = 0 -> 3
    assert new["w"].tolist() == [
        [False, False, False, False, True],
        [False, True, False, False, True],
    ]
    new = layerwise_jit(s, m, 0.9, min_keep=8)  # fewer remain than min_keep: keep them all
    np.testing.assert_array_equal(new["w"], m["w"])


def test_layerwise_lenet_paper_rates_over_rounds():
    # LeNet-300-100 on 8x8 digits: fc 20%, output 10% of the remaining weights per round.
    rng = np.random.default_rng(0)
    shapes = {"fc1": (64, 300), "fc2": (300, 100), "out": (100, 10)}
    params = {
        name: {"kernel": rng.normal(size=s).astype(np.float32), "bias": np.zeros(s[1], np.float32)}
        for name, s in shapes.items()
    }
    rates = select.rates_by_pattern(params, {"out": 0.1}, default=0.2)
    assert float(rates["out"]["kernel"]) == pytest.approx(0.1)
    assert float(rates["fc2"]["kernel"]) == pytest.approx(0.2)
    scores = jax.tree.map(np.abs, params)
    mask = masks.ones(params)
    want = {"fc1": 64 * 300, "fc2": 300 * 100, "out": 100 * 10}
    for _ in range(3):
        mask = layerwise_jit(scores, mask, rates)
        for name in shapes:
            p = 0.1 if name == "out" else 0.2
            want[name] = want[name] - math.floor(p * want[name] + 0.5)  # by hand
            assert int(mask[name]["kernel"].sum()) == want[name]
            assert bool(mask[name]["bias"].all())
    assert want == {"fc1": 9830, "fc2": 15360, "out": 729}
    # Largest magnitudes win: every kept |w| >= every pruned |w| in each layer.
    for name in shapes:
        kept = np.abs(params[name]["kernel"])[np.asarray(mask[name]["kernel"])]
        pruned = np.abs(params[name]["kernel"])[~np.asarray(mask[name]["kernel"])]
        assert kept.min() >= pruned.max()


def test_rates_by_pattern_first_match_wins():
    scores, _ = draw(0)
    r = select.rates_by_pattern(scores, {"out": 0.1, "kernel": 0.3}, default=0.05)
    got = {p: round(float(x), 6) for p, x in paths_and_leaves(r)}
    assert got == {
        "['conv']['bias']": 0.05,
        "['conv']['kernel']": 0.3,
        "['fc1']['bias']": 0.05,
        "['fc1']['kernel']": 0.3,
        "['out']['bias']": 0.1,
        "['out']['kernel']": 0.1,
    }
    assert all(x.dtype == np.float32 and x.shape == () for _, x in paths_and_leaves(r))


def test_layerwise_with_a_key_keeps_exact_counts_and_varies_ties(key):
    scores = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    mask = masks.ones(scores)
    seen = set()
    for i in range(5):
        new = layerwise_jit(scores, mask, 0.6, key=jax.random.fold_in(key, i))
        assert int(new["w"].sum()) == 12 and bool(new["b"].all())
        seen.add(tuple(np.flatnonzero(np.asarray(new["w"]))))
    assert len(seen) > 1
    no_key = layerwise_jit(scores, mask, 0.6)
    assert np.flatnonzero(np.asarray(no_key["w"])).tolist() == list(range(12))  # index order


# --- global -------------------------------------------------------------------------------------


def flat_prunable(tree):
    return np.concatenate([x.ravel() for p, x in paths_and_leaves(tree) if p in PRUNABLE])


@given(
    seed=st.integers(0, 2**16),
    density=st.sampled_from([1.0, 0.6, 0.2]),
    rate=st.floats(0.0, 0.99, exclude_max=True),
    ties=st.booleans(),
)
def test_global_exact_total_and_one_threshold(seed, density, rate, ties):
    scores, mask = draw(seed, density=density, ties=ties)
    new = global_jit(scores, mask, rate)
    s, old, got = flat_prunable(scores), flat_prunable(mask), flat_prunable(new)
    k = ref_keep_count(old.sum(), rate)
    assert got.sum() == k
    assert not (got & ~old).any()
    # One global ranking: leaves in pytree order, row-major within each, lower index first on ties.
    np.testing.assert_array_equal(got, ref_top_k(s, old, k))
    assert_one_threshold(s, old, got)
    for (path, o), (_, g) in zip(paths_and_leaves(mask), paths_and_leaves(new), strict=True):
        if path not in PRUNABLE:
            np.testing.assert_array_equal(g, o)


def collapse_case():
    """A weak layer whose every score is below every score of a strong one."""
    rng = np.random.default_rng(3)
    scores = {
        "strong": {"kernel": jnp.asarray(rng.uniform(10, 20, (8, 5)), jnp.float32)},
        "weak": {"kernel": jnp.asarray(rng.uniform(-2, -1, (5, 2)), jnp.float32)},
        "weak_bias": jnp.zeros(2),
    }
    return scores, masks.ones(scores)


def test_global_min_keep_prevents_layer_collapse():
    scores, mask = collapse_case()
    plain = global_jit(scores, mask, 0.5)  # keep_count(50, 0.5) = 25 < 40 strong weights
    assert int(plain["weak"]["kernel"].sum()) == 0  # the weak layer is gone
    assert int(plain["strong"]["kernel"].sum()) == 25

    kept = global_jit(scores, mask, 0.5, min_keep=3)
    weak = np.asarray(kept["weak"]["kernel"])
    assert weak.sum() == 3
    # The weak layer keeps its own best three; the strong one its best 25 - 3.
    np.testing.assert_array_equal(
        weak.ravel(), ref_top_k(scores["weak"]["kernel"], np.ones(10, bool), 3)
    )
    strong = np.asarray(kept["strong"]["kernel"])
    np.testing.assert_array_equal(
        strong.ravel(), ref_top_k(scores["strong"]["kernel"], np.ones(40, bool), 22)
    )
    assert bool(kept["weak_bias"].all())


def test_global_min_keep_can_exceed_the_rate():
    scores, mask = collapse_case()
    # keep_count(50, 0.95) = 2, but 3 reserved in each of 2 layers: 6 stay.
    kept = global_jit(scores, mask, 0.95, min_keep=3)
    assert int(kept["weak"]["kernel"].sum()) == 3 and int(kept["strong"]["kernel"].sum()) == 3
    # A layer with fewer remaining than min_keep keeps all it has.
    small = {
        "strong": {"kernel": mask["strong"]["kernel"]},
        "weak": {"kernel": jnp.zeros((5, 2), bool).at[0, 0].set(True)},
        "weak_bias": mask["weak_bias"],
    }
    kept = global_jit(scores, small, 0.9, min_keep=3)
    assert int(kept["weak"]["kernel"].sum()) == 1 and bool(kept["weak"]["kernel"][0, 0])


def test_global_with_a_key_keeps_the_exact_total(key):
    scores = {"a": jnp.ones((4, 5)), "b": jnp.ones((5, 2))}
    seen = set()
    for i in range(4):
        new = global_jit(scores, masks.ones(scores), 0.5, key=jax.random.fold_in(key, i))
        assert int(masks.count(new)) == 15
        seen.add(tuple(np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(new)])))
    assert len(seen) > 1


def test_prune_dispatches_by_scope():
    scores, mask = draw(5, density=0.7, ties=True)
    a = prune_jit(scores, mask, 0.4, scope="layerwise", min_keep=2)
    b = layerwise_jit(scores, mask, 0.4, min_keep=2)
    c = prune_jit(scores, mask, 0.4, scope="global")
    d = global_jit(scores, mask, 0.4)
    chex.assert_trees_all_equal((a, c), (b, d))
    assert int(masks.count(a)) != int(masks.count(c))  # the two scopes do differ here
    assert select.SCOPES == ("layerwise", "global")
    with pytest.raises(ValueError, match=r"unknown scope 'neuron'.*global, layerwise"):
        select.prune(scores, mask, 0.4, scope="neuron")  # type: ignore[arg-type]


# --- structured groups --------------------------------------------------------------------------


def ref_group_scores(s, norm, axis=-1):
    s = np.asarray(s, np.float64)
    moved = np.moveaxis(s, axis, -1).reshape(-1, s.shape[axis])
    a = np.abs(moved)
    return {"l1": a.sum(0), "l2": np.sqrt((moved**2).sum(0)), "max": a.max(0)}[norm]


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_group_scores_match_numpy(norm, axis):
    scores, _ = draw(7)
    got = select.group_scores(scores, norm=norm, axis=axis)
    for (path, s), (_, g) in zip(paths_and_leaves(scores), paths_and_leaves(got), strict=True):
        np.testing.assert_allclose(g, ref_group_scores(s, norm, axis), rtol=1e-5, err_msg=path)
    assert float(select.group_scores({"s": jnp.float32(-2.0)})["s"]) == 2.0


def test_group_scores_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        select.group_scores({"w": jnp.ones((2, 2))}, norm="l3")


def ref_groups_layerwise(scores, mask, rate, *, norm="l1", min_keep=1):
    """Per prunable leaf: prune whole output groups (last axis) by their norm."""
    out = {}
    for (path, s), (_, m) in zip(paths_and_leaves(scores), paths_and_leaves(mask), strict=True):
        if path not in PRUNABLE:
            out[path] = m
            continue
        g = ref_group_scores(s, norm)
        alive = np.moveaxis(m, -1, 0).reshape(m.shape[-1], -1).any(1)
        keep = ref_top_k(g, alive, ref_keep_count(alive.sum(), rate, min_keep))
        out[path] = m & keep
    return out


@given(
    seed=st.integers(0, 2**16),
    rate=st.floats(0.0, 0.99, exclude_max=True),
    norm=st.sampled_from(["l1", "l2", "max"]),
    ties=st.booleans(),
)
def test_groups_layerwise_remove_whole_columns(seed, rate, norm, ties):
    scores, mask = draw(seed, ties=ties)
    new = groups_jit(scores, mask, rate, norm=norm)
    want = ref_groups_layerwise(scores, mask, rate, norm=norm)
    for path, got in paths_and_leaves(new):
        np.testing.assert_array_equal(got, want[path], err_msg=path)
        if path in PRUNABLE:
            cols = np.moveaxis(got, -1, 0).reshape(got.shape[-1], -1)
            assert np.all(cols.all(1) | ~cols.any(1))  # a column is all kept or all gone
            n_groups = got.shape[-1]
            assert cols.any(1).sum() == ref_keep_count(n_groups, rate, 1) >= 1


def test_groups_by_hand_on_a_dense_kernel():
    w = {"k": jnp.array([[1.0, -2.0, 0.1, 3.0], [1.0, 0.5, 0.1, 0.0]]), "b": jnp.zeros(4)}
    # L1 column norms 2, 2.5, 0.2, 3: 50% keeps columns 1 and 3; the bias stays.
    new = groups_jit(w, masks.ones(w), 0.5)
    assert new["k"].tolist() == [[False, True, False, True]] * 2
    assert bool(new["b"].all())
    # A pruned column stays pruned and no longer counts as remaining: 1 of 2 -> keep 1.
    again = groups_jit(w, new, 0.5)
    assert again["k"].tolist() == [[False, False, False, True]] * 2
    # min_keep=1 (the default) keeps a group even at a rate that would remove all.
    last = groups_jit(w, again, 0.9)
    assert last["k"].tolist() == [[False, False, False, True]] * 2
    assert int(groups_jit(w, again, 0.9, min_keep=0)["k"].sum()) == 0


def test_groups_partially_pruned_group_stays_partial():
    w = {"k": jnp.array([[1.0, 5.0], [1.0, 5.0]])}
    m = {"k": jnp.array([[True, True], [True, False]])}
    new = groups_jit(w, m, 0.0)
    np.testing.assert_array_equal(new["k"], m["k"])  # no group pruned, element mask unchanged


def test_groups_conv_filters_along_the_output_axis():
    rng = np.random.default_rng(2)
    w = {"conv": jnp.asarray(rng.normal(size=(3, 3, 2, 6)), jnp.float32)}
    new = groups_jit(w, masks.ones(w), 0.5)
    l1 = np.abs(np.asarray(w["conv"])).sum(axis=(0, 1, 2))
    keep = np.zeros(6, bool)
    keep[np.argsort(-l1)[:3]] = True
    np.testing.assert_array_equal(new["conv"], np.broadcast_to(keep, (3, 3, 2, 6)))


@given(seed=st.integers(0, 2**16), rate=st.floats(0.0, 0.95))
def test_groups_global_exact_group_count_and_one_threshold(seed, rate):
    scores, mask = draw(seed)
    new = groups_jit(scores, mask, rate, scope="global", min_keep=0)
    g_scores = np.concatenate(
        [ref_group_scores(s, "l1") for p, s in paths_and_leaves(scores) if p in PRUNABLE]
    )
    g_kept = np.concatenate(
        [
            np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1).all(1)
            for p, x in paths_and_leaves(new)
            if p in PRUNABLE
        ]
    )
    n_groups = g_scores.size
    k = ref_keep_count(n_groups, rate)
    assert g_kept.sum() == k
    np.testing.assert_array_equal(
        g_kept, ref_top_k(g_scores.astype(np.float32), np.ones(n_groups, bool), k)
    )


def test_groups_global_min_keep_keeps_a_group_per_layer():
    scores, mask = collapse_case()
    # Group L1 norms: strong ~ 8*15 per column, weak ~ 5*1.5; 90% of 7 groups keeps 1.
    plain = groups_jit(scores, mask, 0.9, scope="global", min_keep=0)
    assert int(plain["weak"]["kernel"].sum()) == 0
    kept = groups_jit(scores, mask, 0.9, scope="global")  # min_keep=1 by default
    weak_cols = np.asarray(kept["weak"]["kernel"]).all(0)
    assert weak_cols.sum() == 1
    best = np.argmax(np.abs(np.asarray(scores["weak"]["kernel"])).sum(0))
    assert weak_cols[best]
    assert np.asarray(kept["strong"]["kernel"]).all(0).sum() == 1


# --- N:M ----------------------------------------------------------------------------------------


def ref_n_of_m(s, m_old, n, m, axis=-2):
    """Brute force: walk every block of m consecutive entries along ``axis`` and keep its n best."""
    s = np.moveaxis(np.asarray(s), axis, -1)
    old = np.moveaxis(np.asarray(m_old), axis, -1)
    new = np.zeros_like(old)
    for idx in np.ndindex(*old.shape[:-1]):
        for start in range(0, old.shape[-1], m):
            cand = [j for j in range(start, start + m) if old[(*idx, j)]]
            cand.sort(key=lambda j: (np.isnan(s[(*idx, j)]), -s[(*idx, j)], j))
            for j in cand[:n]:
                new[(*idx, j)] = True
    return np.moveaxis(new, -1, axis)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 2), (1, 4), (3, 4), (4, 4)])
def test_n_of_m_every_block_keeps_exactly_n(n, m):
    rng = np.random.default_rng(n * 10 + m)
    scores = {
        "dense": {
            "kernel": jnp.asarray(np.round(rng.normal(size=(8, 3))), jnp.float32),
            "bias": jnp.ones(3),
        },
        "conv": jnp.asarray(np.round(rng.normal(size=(2, 2, 4, 3))), jnp.float32),
    }
    mask = masks.ones(scores)
    new = n_of_m_jit(scores, mask, n, m)
    for key_, axis_len in (("dense", 8), ("conv", 4)):
        s = scores[key_]["kernel"] if key_ == "dense" else scores[key_]
        got = np.asarray(new[key_]["kernel"] if key_ == "dense" else new[key_])
        np.testing.assert_array_equal(got, ref_n_of_m(s, np.ones(s.shape, bool), n, m))
        blocks = np.moveaxis(got, -2, -1).reshape(-1, m)  # consecutive input entries
        assert np.all(blocks.sum(1) == n) and blocks.shape[0] * m == got.size
        assert axis_len % m == 0
    assert bool(new["dense"]["bias"].all())


@given(seed=st.integers(0, 2**16), density=st.floats(0, 1))
def test_n_of_m_already_pruned_stay_pruned(seed, density):
    rng = np.random.default_rng(seed)
    scores = {"w": jnp.asarray(np.round(rng.normal(size=(12, 5))), jnp.float32)}
    mask = {"w": jnp.asarray(rng.random((12, 5)) < density)}
    new = n_of_m_jit(scores, mask, 2, 4)
    got, old = np.asarray(new["w"]), np.asarray(mask["w"])
    assert not (got & ~old).any()
    np.testing.assert_array_equal(got, ref_n_of_m(scores["w"], old, 2, 4))
    per_block = np.moveaxis(got, -2, -1).reshape(-1, 4).sum(1)
    np.testing.assert_array_equal(
        per_block, np.minimum(2, np.moveaxis(old, -2, -1).reshape(-1, 4).sum(1))
    )


def test_n_of_m_other_axis():
    s = {"w": jnp.array([[1.0, 4.0, 2.0, 3.0], [0.0, -1.0, 5.0, 5.0]])}
    new = n_of_m_jit(s, masks.ones(s), 2, 4, axis=-1)
    assert new["w"].tolist() == [[False, True, False, True], [False, False, True, True]]


@pytest.mark.parametrize(("n", "m"), [(0, 4), (5, 4), (2.0, 4), (2, -4), (-1, 2)])
def test_n_of_m_rejects_bad_n_m(n, m):
    s = {"w": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match="n and m"):
        select.n_of_m(s, masks.ones(s), n, m)


def test_n_of_m_rejects_shapes_that_do_not_divide_naming_the_path():
    s = {"fc": {"kernel": jnp.ones((6, 4))}, "ok": jnp.ones((4, 4))}
    with pytest.raises(ValueError, match=re.escape("mask['fc']['kernel'] has shape [6, 4]")):
        select.n_of_m(s, masks.ones(s), 2, 4)
    v = {"v": jnp.ones(8)}
    with pytest.raises(ValueError, match=re.escape("mask['v']")):
        select.n_of_m(v, masks.ones(v), 2, 4, prunable="v")
    out = select.n_of_m(s, masks.ones(s), 2, 4, prunable="ok")  # leave it out with prunable=
    assert bool(out["fc"]["kernel"].all()) and int(out["ok"].sum()) == 8


# --- boundary errors ----------------------------------------------------------------------------

ALL_RATED = {
    "layerwise": lambda s, m, r: select.layerwise(s, m, r),
    "global_": lambda s, m, r: select.global_(s, m, r),
    "groups": lambda s, m, r: select.groups(s, m, r),
    "groups_global": lambda s, m, r: select.groups(s, m, r, scope="global"),
    "prune": lambda s, m, r: select.prune(s, m, r, scope="global"),
}


@pytest.mark.parametrize("name", list(ALL_RATED))
@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan"), 2.0])
def test_bad_rate_names_rate(name, rate):
    scores, mask = draw(0)
    with pytest.raises(ValueError, match=r"^rate must be in \[0.0, 1.0\)"):
        ALL_RATED[name](scores, mask, rate)


def test_bad_rate_in_a_rate_tree_names_its_path():
    scores, mask = draw(0)
    rates = jax.tree.map(lambda _: 0.2, mask)
    rates["out"]["kernel"] = 1.0
    with pytest.raises(ValueError, match=re.escape("rate['out']['kernel'] must be in [0.0, 1.0)")):
        select.layerwise(scores, mask, rates)
    with pytest.raises(ValueError, match="rate must be a scalar for global"):
        select.global_(scores, mask, jax.tree.map(lambda _: 0.2, mask))
    with pytest.raises(ValueError, match=r"rate must be a scalar per call.*\[3\]"):
        select.layerwise(scores, mask, jnp.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=re.escape("rate must have exactly the structure of mask")):
        select.layerwise(scores, mask, {"out": 0.1, "fc1": 0.2})
    with pytest.raises(ValueError, match=re.escape("patterns['out'] must be in")):
        select.rates_by_pattern(scores, {"out": 1.5})


@pytest.mark.parametrize(
    "call",
    [
        lambda s, m: select.layerwise(s, m, 0.2),
        lambda s, m: select.global_(s, m, 0.2),
        lambda s, m: select.groups(s, m, 0.2),
        lambda s, m: select.n_of_m(s, m, 1, 2),
    ],
    ids=["layerwise", "global_", "groups", "n_of_m"],
)
def test_input_errors_name_the_path(call):
    scores, mask = draw(0)
    nan = jax.tree.map(lambda x: x, scores)
    nan["fc1"]["kernel"] = nan["fc1"]["kernel"].at[2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=re.escape("scores['fc1']['kernel'] holds 1 NaN")):
        call(nan, mask)
    missing = {k: v for k, v in scores.items() if k != "conv"}
    with pytest.raises(ValueError, match=re.escape("['conv']['bias']")):
        call(missing, mask)
    wrong = jax.tree.map(lambda x: x, scores)
    wrong["out"]["kernel"] = jnp.ones((3, 10))
    with pytest.raises(ValueError, match=re.escape("scores['out']['kernel'] has shape [3, 10]")):
        call(wrong, mask)
    floaty = jax.tree.map(lambda x: x, mask)
    floaty["fc1"]["bias"] = floaty["fc1"]["bias"].astype(jnp.float32)
    with pytest.raises(ValueError, match=re.escape("mask['fc1']['bias'] must be a bool")):
        call(scores, floaty)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), np.float32(-1e-7)])
def test_keep_count_refuses_a_concrete_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match=r"^rate must be in \[0.0, 1.0\], got \["):
        select.keep_count(10, rate)
    with pytest.raises(ValueError, match=r"^rate must be in \[0.0, 1.0\], got \["):
        select.keep_count(10, jnp.float32(rate))  # a concrete jax array is a value too


def test_keep_count_clips_a_traced_rate():
    # The documented fallback: a traced rate cannot be checked, so it is clipped into [0, 1].
    count = jax.jit(select.keep_count)
    assert int(count(10, -0.1)) == 10
    assert int(count(10, 1.5)) == 0
    assert int(select.keep_count(10, 1.0)) == 0  # 1 is in range for keep_count itself


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"rate": "0.2"},
            "rate must be a real number (an int or float, or an array of them), got str '0.2'",
        ),
        (
            {"rate": True},
            "rate must be a real number (an int or float, or an array of them), got bool",
        ),
        ({"min_keep": -1}, "min_keep must be a non-negative int (static), got -1"),
        ({"min_keep": 1.5}, "min_keep must be a non-negative int (static), got 1.5"),
        ({"min_keep": jnp.int32(2)}, "min_keep must be a non-negative int (static), got Array(2"),
    ],
)
def test_keep_count_refuses_a_string_rate_and_a_bad_min_keep(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        select.keep_count(10, **{"rate": 0.2, **kwargs})


SELECT_WITH_KEY = {
    "layerwise": lambda s, m, **kw: select.layerwise(s, m, 0.2, **kw),
    "global_": lambda s, m, **kw: select.global_(s, m, 0.2, **kw),
    "groups": lambda s, m, **kw: select.groups(s, m, 0.2, **kw),
    "prune": lambda s, m, **kw: select.prune(s, m, 0.2, scope="global", **kw),
}


@pytest.mark.parametrize("name", list(SELECT_WITH_KEY))
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"key": jax.random.PRNGKey(0)},
            "key must be a typed PRNG key from jax.random.key(seed), got uint32[2]",
        ),
        ({"key": 3}, "key must be a typed PRNG key from jax.random.key(seed), got int[]"),
        (
            {"key": jax.random.split(jax.random.key(0), 2)},
            "key must be a single key (shape []), got shape [2]",
        ),
        ({"min_keep": -1}, "min_keep must be a non-negative int (static), got -1"),
        ({"min_keep": 2.0}, "min_keep must be a non-negative int (static), got 2.0"),
    ],
    ids=["raw_key", "int_key", "stacked_keys", "negative_min_keep", "float_min_keep"],
)
def test_selectors_check_key_and_min_keep(name, kwargs, message):
    scores, mask = draw(0)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        SELECT_WITH_KEY[name](scores, mask, **kwargs)


def test_keep_top_k_checks_its_key():
    s, e = jnp.array([1.0, 3.0, 2.0]), jnp.ones(3, bool)
    with pytest.raises(ValueError, match=re.escape("key must be a typed PRNG key")):
        select.keep_top_k(s, e, 2, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize("name", list(ALL_RATED))
def test_string_rate_is_a_value_error_naming_rate(name):
    scores, mask = draw(0)
    with pytest.raises(
        ValueError, match=re.escape("rate must be a real number") + ".*got str '0.2'"
    ):
        ALL_RATED[name](scores, mask, "0.2")
    rates = jax.tree.map(lambda _: 0.2, mask)
    rates["out"]["kernel"] = "0.2"
    with pytest.raises(ValueError, match=re.escape("rate['out']['kernel'] must be a real number")):
        select.layerwise(scores, mask, rates)


def test_traced_nan_scores_rank_lowest():
    # Under jit a NaN cannot be rejected; it ranks below everything, -inf included (criteria use
    # -inf for "lowest", and a diverged weight must not outrank those).
    s = {"w": jnp.array([[jnp.nan, 1.0], [-jnp.inf, jnp.nan]])}
    new = layerwise_jit(s, masks.ones(s), 0.5)
    assert new["w"].tolist() == [[False, True], [True, False]]
    col = {"k": jnp.array([[jnp.nan], [-jnp.inf], [1.0], [2.0]])}
    new = n_of_m_jit(col, masks.ones(col), 3, 4)
    assert new["k"].ravel().tolist() == [False, True, True, True]


# --- jit ∘ vmap over tickets, and no retracing --------------------------------------------------


# Two kernels and a bias: enough to tell leaves apart, small enough to compile fast.
TICKET_SHAPES = {"fc1": {"kernel": (8, 6), "bias": (6,)}, "out": {"kernel": (6, 4)}}


def tickets(key):
    """Three tickets with different scores, masks, rates and keys."""
    drawn = [
        draw(s, density=d, ties=True, shapes=TICKET_SHAPES)
        for s, d in [(11, 1.0), (12, 0.6), (13, 0.3)]
    ]
    scores = [d[0] for d in drawn]
    mask = [d[1] for d in drawn]
    rates = [0.2, 0.5, 0.0]
    keys = list(jax.random.split(key, 3))
    return scores, mask, rates, keys


SELECTORS = {
    "layerwise": lambda s, m, r, k: select.layerwise(s, m, r, key=k, min_keep=1),
    "layerwise_rate_tree": lambda s, m, r, k: select.layerwise(s, m, jax.tree.map(lambda _: r, m)),
    "global_": lambda s, m, r, k: select.global_(s, m, r, key=k, min_keep=2),
    "groups": lambda s, m, r, k: select.groups(s, m, r, key=k),
    "groups_global": lambda s, m, r, k: select.groups(s, m, r, scope="global", norm="l2"),
    "n_of_m": lambda s, m, r, k: select.n_of_m(s, m, 2, 4, prunable="fc1.*kernel"),
}


@pytest.mark.parametrize("name", list(SELECTORS))
def test_jit_vmap_over_tickets_equals_per_ticket_calls_that_never_retrace(name, key):
    fn = SELECTORS[name]
    scores, mask, rates, keys = tickets(key)
    batched = jax.jit(jax.vmap(fn))(
        stack(scores), stack(mask), jnp.array(rates, jnp.float32), jnp.stack(keys)
    )
    counter = TraceCounter(fn)
    single = jax.jit(counter.fn)  # unbatched: one ticket per call
    for i in range(3):
        # Another ticket's scores, mask, rate and key: the same compiled program.
        got = single(scores[i], mask[i], jnp.float32(rates[i]), keys[i])
        for (path, a), (_, b) in zip(
            paths_and_leaves(unstack(batched, i)), paths_and_leaves(got), strict=True
        ):
            np.testing.assert_array_equal(a, b, err_msg=f"ticket {i} {path}")
        for (_, new), (_, old) in zip(
            paths_and_leaves(got), paths_and_leaves(mask[i]), strict=True
        ):
            assert not (new & ~old).any()
    assert counter.traces == 1
