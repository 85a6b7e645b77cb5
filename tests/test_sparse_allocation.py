"""Layer allocation (uniform / ER / ERK) and sparsity patterns (unstructured / N:M / block) of
jaxprune.sparse_training, against numpy references written here from RESEARCH §7."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import masks
from jaxprune import select as select_lib
from jaxprune.sparse_training import allocation, patterns

# A tiny conv + dense stack; its small first conv is capped at dense by ER and (below ~0.93
# sparsity) by ERK; biases are not prunable.
SHAPES = {
    "conv1": (3, 3, 1, 4),
    "conv2": (3, 3, 4, 16),
    "fc1": (256, 64),
    "out": (64, 10),
}
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98]
RANDOM_SPARSITIES = list(np.random.default_rng(0).uniform(0.3, 0.99, size=12))


_KEEP_COUNT = jax.jit(select_lib.keep_count)  # one compiled program for the many reference calls


def keep(n: int, sparsity: float) -> int:
    """The contract's total: ``select.keep_count(n, sparsity)``."""
    return int(_KEEP_COUNT(n, np.float32(sparsity)))


def model() -> dict:
    params = {}
    for name, shape in SHAPES.items():
        params[name] = {"kernel": jnp.ones(shape), "bias": jnp.zeros(shape[-1])}
    return params


def shape_only(shape: tuple[int, ...]) -> np.ndarray:
    """A leaf with ``shape`` and no memory behind it (layer_counts reads shapes only)."""
    return np.broadcast_to(np.zeros((), np.float32), shape)


def kernel_counts(counts: dict) -> np.ndarray:
    return np.array([int(counts[name]["kernel"]) for name in SHAPES])


def raw_weight(shape: tuple[int, ...], kind: str) -> float:
    """RESEARCH §7 as written: ER (n_in + n_out)/(n_in n_out); ERK sum(dims)/prod(dims)."""
    if kind == "uniform":
        return 1.0
    if kind == "er":
        n_in, n_out = shape[-2], shape[-1]
        return (n_in + n_out) / (n_in * n_out)
    return sum(shape) / math.prod(shape)


def reference_targets(shapes: list, sparsity: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 (ε·raw, capped) by the iterative capping solve; total = keep_count(N, s).

    The density of a layer is 1 where capped, ε·raw elsewhere."""
    sizes = np.array([math.prod(s) for s in shapes], np.float64)
    raw = np.array([raw_weight(s, kind) for s in shapes])
    total = keep(int(sizes.sum()), sparsity)
    capped = np.zeros(len(shapes), bool)
    while True:
        eps = (total - sizes[capped].sum()) / (sizes[~capped] * raw[~capped]).sum()
        grown = capped | (eps * raw > 1.0)
        if (grown == capped).all():
            break
        capped = grown
    return eps * raw, capped


def reference_largest_remainder(x: np.ndarray, total: int) -> np.ndarray:
    """Floors, then +1 to the largest fractional parts (ties: lower index)."""
    counts = np.floor(x).astype(np.int64)
    order = sorted(range(len(x)), key=lambda i: (-(x[i] - counts[i]), i))
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return counts


def decisions_have_margin(
    eps_raw: np.ndarray, capped: np.ndarray, sizes: np.ndarray, total: int, margin: float = 1e-2
) -> bool:
    """Whether float32 error (relative ~1e-6 here, targets < 2e4) cannot change the integer
    result: no layer within ``margin`` (relative) of the cap, no uncapped target within
    ``margin`` of an integer, and the fractional parts at the cut (the last that gets +1 and the
    first that does not) more than ``margin`` apart."""
    if np.min(np.abs(eps_raw - 1.0)) < margin:
        return False
    x = (eps_raw * sizes)[~capped]
    frac = x - np.floor(x)
    if frac.size and np.min(np.minimum(frac, 1 - frac)) < margin:
        return False
    need = total - int(np.floor(x).sum()) - int(sizes[capped].sum())
    ranked = np.sort(frac)[::-1]
    return not (0 < need < len(x) and ranked[need - 1] - ranked[need] < margin)


# --- allocation


@pytest.mark.parametrize("kind", ["er", "erk"])
def test_er_erk_densities_match_numpy_solve_with_capping(kind: str) -> None:
    params = model()
    shapes = list(SHAPES.values())
    sizes = np.array([math.prod(s) for s in shapes])
    capped_seen = exact_seen = 0
    for s in SPARSITIES + RANDOM_SPARSITIES:
        eps_raw, capped = reference_targets(shapes, s, kind)
        density = np.where(capped, 1.0, eps_raw)
        capped_seen += capped.any()
        counts = kernel_counts(allocation.layer_counts(params, s, allocation=kind))
        total = keep(int(sizes.sum()), s)
        assert counts.sum() == total, (kind, s)
        assert (counts <= sizes).all() and (counts >= 0).all()
        np.testing.assert_array_equal(counts[capped], sizes[capped])  # capped layers are dense
        # Largest remainder: every count is the floor or the ceiling of the exact target (up to
        # float32 error: relative ~1e-6 on targets < 2e4, so < 1e-2 in absolute terms).
        assert np.all(np.abs(counts - density * sizes) < 1 + 1e-2), (kind, s)
        x = density * sizes
        if decisions_have_margin(eps_raw, capped, sizes, total):
            exact_seen += 1
            np.testing.assert_array_equal(counts, reference_largest_remainder(x, total))
        dens = allocation.layer_densities(params, s, allocation=kind)
        got = np.array([float(dens[name]["kernel"]) for name in SHAPES])
        np.testing.assert_allclose(got, counts / sizes, rtol=1e-6)
    assert capped_seen >= 3  # the capping branch was exercised, not only the plain solve
    assert exact_seen >= 3  # and the exact largest-remainder comparison ran


def test_uniform_gives_equal_densities() -> None:
    params = model()
    sizes = np.array([math.prod(s) for s in SHAPES.values()])
    for s in SPARSITIES + RANDOM_SPARSITIES:
        counts = kernel_counts(allocation.layer_counts(params, s, allocation="uniform"))
        total = keep(int(sizes.sum()), s)
        assert counts.sum() == total
        # Each count is within one of size · K/N (plus float32 error, as above).
        assert np.all(np.abs(counts - sizes * total / sizes.sum()) < 1 + 1e-2)


def test_total_exact_on_a_large_model_despite_float32() -> None:
    # ResNet-50-like kernel shapes (≈ 25M weights): float32 targets are off by up to tens of
    # weights per layer; the total must still be exact. (Layer shapes only: no memory.)
    shapes = [(7, 7, 3, 64)]
    for c_in, width, blocks in ((64, 64, 3), (256, 128, 4), (512, 256, 6), (1024, 512, 3)):
        for b in range(blocks):
            shapes += [(1, 1, c_in if b == 0 else width * 4, width), (3, 3, width, width)]
            shapes += [(1, 1, width, width * 4)]
        shapes += [(1, 1, c_in, width * 4)]
    shapes += [(2048, 1000)]
    params = {f"l{i:02d}": shape_only(s) for i, s in enumerate(shapes)}
    sizes = np.array([math.prod(s) for s in shapes])
    sparsities = [*SPARSITIES, 0.7, 0.85, 0.99, 0.999, *RANDOM_SPARSITIES]
    for kind in allocation.ALLOCATIONS:
        for s in sparsities:
            counts = allocation.layer_counts(params, s, allocation=kind)
            got = np.array([int(counts[f"l{i:02d}"]) for i in range(len(shapes))])
            total = keep(int(sizes.sum()), s)
            assert got.sum() == total, (kind, s)
            assert (got <= sizes).all() and (got >= 0).all()
            eps_raw, capped = reference_targets(shapes, s, kind)
            density = np.where(capped, 1.0, eps_raw)
            # Within one plus float32 error (relative ~1e-6 of the 25M total) of the exact targets.
            assert np.all(np.abs(got - density * sizes) < 1 + 4e-6 * sizes.sum()), (kind, s)


def reference_spread(x: np.ndarray, capped: np.ndarray, caps: np.ndarray, total: int) -> np.ndarray:
    """The documented rule as a loop: floors, then one at a time in rounds, +1 by largest
    fractional part (or, when the floors overshoot, -1 by smallest, capped layers last), each
    round over the layers that can still move, ties by lower index."""
    counts = np.clip(np.floor(x), 0, caps).astype(np.int64)
    frac = (x - np.floor(x)).astype(np.float64)
    step = 1 if total >= counts.sum() else -1
    key = [
        (-f, i) if step > 0 else (c, f, i)
        for i, (f, c) in enumerate(zip(frac, capped, strict=True))
    ]
    order = [i for _, i in sorted((k, i) for i, k in enumerate(key))]
    while counts.sum() != total:
        movable = [i for i in order if (counts[i] < caps[i] if step > 0 else counts[i] > 0)]
        assert movable, "total out of reach"
        for i in movable:
            if counts.sum() == total:
                break
            counts[i] += step
    return counts


def test_largest_remainder_corrects_float_error_both_ways() -> None:
    # Private helper, tested directly: on the models above float32 error never exceeds the number
    # of layers, so the overshoot and the several-rounds branches would go untested.
    rng = np.random.default_rng(4)
    caps = np.array([50, 400, 7, 1000, 90])
    x = (rng.uniform(0.1, 0.9, 5) * caps).astype(np.float32)
    x[2] = 7.0  # a capped layer: exactly its size
    capped = np.array([False, False, True, False, False])
    floors = int(np.floor(x).sum())
    spread = jax.jit(lambda total: allocation._largest_remainder(x, capped, caps, total))
    for delta in (-300, -40, -6, -2, 0, 1, 3, 4, 23, 600):
        got = spread(jnp.int32(floors + delta))
        np.testing.assert_array_equal(
            got, reference_spread(x, capped, caps, floors + delta), str(delta)
        )


def test_dense_and_custom_layers_respected() -> None:
    params = model()
    sizes = dict(zip(SHAPES, (math.prod(s) for s in SHAPES.values()), strict=True))
    n = sum(sizes.values())
    # "out" matches both custom regexes: the first wins (0.3); conv1 matches dense and "o":
    # dense wins; conv2 gets 0.9; fc1 alone shares what is left.
    custom = (("out", 0.3), ("o", 0.9))
    for s in SPARSITIES[:-1]:
        counts = allocation.layer_counts(params, s, dense=("conv1",), custom=custom)
        got = dict(zip(SHAPES, kernel_counts(counts), strict=True))
        assert got["conv1"] == sizes["conv1"]
        assert got["conv2"] == math.floor(0.9 * sizes["conv2"] + 0.5)
        assert got["out"] == math.floor(0.3 * sizes["out"] + 0.5)
        total = keep(n, s)
        assert got["fc1"] == total - got["conv1"] - got["conv2"] - got["out"]
        assert int(counts["fc1"]["bias"]) == 64  # non-prunable leaves keep their size
    # Sparsity 0 with a custom layer below density 1: the others are dense, the total is below K.
    counts = allocation.layer_counts(params, 0.0, custom=(("fc1", 0.25),))
    np.testing.assert_array_equal(kernel_counts(counts), [36, 576, 4096, 640])
    # Too few kept for what dense keeps: an error when concrete, 0 for the others when traced.
    traced = jax.jit(lambda s: allocation.layer_counts(params, s, dense=("fc1",)))(0.99)
    np.testing.assert_array_equal(kernel_counts(traced), [0, 0, 16384, 0])


def test_non_prunable_and_prunable_rule() -> None:
    params = model()
    counts = allocation.layer_counts(params, 0.9, prunable=masks.rule(exclude="out"))
    assert int(counts["out"]["kernel"]) == 640
    sizes = [math.prod(SHAPES[k]) for k in ("conv1", "conv2", "fc1")]
    kept = sum(int(counts[k]["kernel"]) for k in ("conv1", "conv2", "fc1"))
    assert kept == keep(sum(sizes), 0.9)


def test_jit_and_jit_vmap_equal_eager() -> None:
    params = model()
    shapes = list(SHAPES.values())
    sizes = np.array([math.prod(s) for s in shapes])
    n = int(sizes.sum())
    # Only sparsities whose integer decisions have a margin against float error (see
    # decisions_have_margin) under every allocation are compared between the eager and the
    # compiled float32 programs.
    candidates = np.random.default_rng(1).uniform(0.5, 0.99, size=200).astype(np.float32)
    chosen = [
        float(s)
        for s in candidates
        if all(
            decisions_have_margin(*reference_targets(shapes, float(s), kind), sizes, keep(n, s))
            for kind in allocation.ALLOCATIONS
        )
    ][:10]
    assert len(chosen) == 10
    batch = jnp.asarray(chosen, jnp.float32)

    def counts_of(s: jax.Array) -> list:
        return [allocation.layer_counts(params, s, allocation=k) for k in allocation.ALLOCATIONS]

    vmapped = jax.jit(jax.vmap(counts_of))(batch)
    single = jax.jit(counts_of)
    for i, s in enumerate(chosen):
        for j, kind in enumerate(allocation.ALLOCATIONS):
            eager = kernel_counts(counts_of(batch[i])[j])
            batched = np.array([int(vmapped[j][name]["kernel"][i]) for name in SHAPES])
            np.testing.assert_array_equal(kernel_counts(single(batch[i])[j]), eager, kind)
            np.testing.assert_array_equal(batched, eager, kind)
            assert eager.sum() == keep(n, s)


def test_block_and_nm_counts() -> None:
    params = {"a": {"kernel": jnp.ones((8, 16))}, "b": {"kernel": jnp.ones((16, 8))}}
    for s in SPARSITIES:
        c = allocation.layer_counts(params, s, pattern="block:4")
        got = np.array([int(c["a"]["kernel"]), int(c["b"]["kernel"])])
        free = allocation.layer_counts(params, s)
        exact = np.array([int(free["a"]["kernel"]), int(free["b"]["kernel"])])
        np.testing.assert_array_equal(got, exact // 16 * 16)
    # A dense layer need not fit the pattern and stays whole (6·5 = 30 is no multiple of 16).
    odd = {**params, "first": {"kernel": jnp.ones((6, 5))}}
    c = allocation.layer_counts(odd, 0.8, pattern="block:4", dense=("first",))
    assert int(c["first"]["kernel"]) == 30
    rest = int(select_lib.keep_count(30 + 256, 0.8)) - 30  # what a and b share
    got = int(c["a"]["kernel"]) + int(c["b"]["kernel"])
    assert got % 16 == 0 and 0 <= rest - got < 2 * 16
    nm = allocation.layer_counts(odd, 0.5, allocation="uniform", pattern="2:4", dense=("first",))
    assert [int(nm[k]["kernel"]) for k in ("first", "a", "b")] == [30, 64, 64]
    nm = allocation.layer_counts(params, 0.5, allocation="uniform", pattern="2:4")
    assert int(nm["a"]["kernel"]) == 64 and int(nm["b"]["kernel"]) == 64
    nm = allocation.layer_counts(params, 0.75, allocation="uniform", pattern="1:4")
    assert int(nm["a"]["kernel"]) == 32


# --- patterns


def reference_top(scores: np.ndarray, k: int, eligible: np.ndarray, reserved=None) -> np.ndarray:
    """Python: reserved-and-eligible first (best first), then the best eligible; equal scores
    by lower index (``sorted`` is stable)."""
    flat, elig = scores.ravel(), eligible.ravel()
    res = np.zeros_like(elig) if reserved is None else reserved.ravel() & elig
    order = sorted(np.flatnonzero(elig), key=lambda i: (not res[i], -flat[i]))
    out = np.zeros(flat.shape, bool)
    out[order[:k]] = True
    return out.reshape(scores.shape)


def test_pattern_parsing() -> None:
    assert patterns.pattern("unstructured") == patterns.Pattern("unstructured")
    assert patterns.pattern("2:4") == patterns.Pattern("nm", n=2, m=4)
    assert patterns.pattern(" 4 : 8 ") == patterns.Pattern("nm", n=4, m=8)
    assert patterns.pattern("block:4") == patterns.Pattern("block", block=4)
    p = patterns.Pattern("block", block=2)
    assert (
        patterns.pattern(p) is p and str(p) == "block:2" and str(patterns.pattern("1:4")) == "1:4"
    )
    assert hash(patterns.pattern("2:4")) == hash(patterns.Pattern("nm", n=2, m=4))


def test_select_unstructured_matches_argsort() -> None:
    rng = np.random.default_rng(0)
    scores = rng.permutation(60).reshape(5, 12).astype(np.float32)  # tie-free
    eligible = rng.random((5, 12)) < 0.7
    reserved = rng.random((5, 12)) < 0.2
    for k in (0, 1, 17, 30, 60):
        all_in = np.ones_like(eligible)
        got = np.asarray(patterns.select(scores, k, "unstructured"))
        np.testing.assert_array_equal(got, reference_top(scores, k, all_in))
        got = np.asarray(patterns.select(scores, k, "unstructured", eligible=eligible))
        np.testing.assert_array_equal(got, reference_top(scores, k, eligible))
        assert got.sum() == min(k, eligible.sum())
        got = patterns.select(scores, k, "unstructured", eligible=eligible, reserved=reserved)
        np.testing.assert_array_equal(np.asarray(got), reference_top(scores, k, eligible, reserved))


def nm_groups(x: np.ndarray, m: int) -> list[tuple[np.ndarray, ...]]:
    """Index arrays of the groups: m consecutive entries along axis -2, by Python loops."""
    out = []
    for lead in np.ndindex(*x.shape[:-2]):
        for g in range(x.shape[-2] // m):
            for col in range(x.shape[-1]):
                out.append(
                    tuple(
                        np.array([(*lead, g * m + r, col)[d] for r in range(m)])
                        for d in range(x.ndim)
                    )
                )
    return out


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize("shape", [(16, 6), (3, 3, 8, 4)])
def test_select_nm_keeps_top_n_in_every_group(spec: str, shape: tuple[int, ...]) -> None:
    p = patterns.pattern(spec)
    rng = np.random.default_rng(1)
    size = math.prod(shape)
    scores = rng.permutation(size).reshape(shape).astype(np.float32)
    eligible = rng.random(shape) < 0.8
    reserved = rng.random(shape) < 0.2
    got = np.asarray(patterns.select(scores, size // p.m * p.n, p))
    got_el = np.asarray(patterns.select(scores, size // p.m * p.n, p, eligible=eligible))
    got_res = np.asarray(
        patterns.select(scores, size // p.m * p.n, p, eligible=eligible, reserved=reserved)
    )
    assert got.sum() == size * p.n // p.m
    for idx in nm_groups(scores, p.m):
        sc = scores[idx]
        all_in = np.ones(p.m, bool)
        np.testing.assert_array_equal(got[idx], reference_top(sc, p.n, all_in))
        np.testing.assert_array_equal(got_el[idx], reference_top(sc, p.n, eligible[idx]))
        np.testing.assert_array_equal(
            got_res[idx], reference_top(sc, p.n, eligible[idx], reserved[idx])
        )


def tile_reference(scores: np.ndarray, k: int, b: int, eligible=None, reserved=None) -> np.ndarray:
    """numpy: b×b tiles of the last two dims ranked by mean score, count // b² whole tiles."""
    rows, cols = scores.shape[-2] // b, scores.shape[-1] // b
    tiles = [
        (lead, r, c)
        for lead in np.ndindex(*scores.shape[:-2])
        for r in range(rows)
        for c in range(cols)
    ]

    def block(x: np.ndarray, t: tuple) -> np.ndarray:
        lead, r, c = t
        return x[lead][r * b : (r + 1) * b, c * b : (c + 1) * b]

    means = np.array([block(scores, t).astype(np.float64).mean() for t in tiles])
    elig = np.array([True if eligible is None else block(eligible, t).all() for t in tiles])
    res = np.array([False if reserved is None else block(reserved, t).any() for t in tiles])
    chosen = reference_top(means, k // (b * b), elig, res)
    out = np.zeros(scores.shape, bool)
    for t, keep in zip(tiles, chosen, strict=True):
        lead, r, c = t
        out[lead][r * b : (r + 1) * b, c * b : (c + 1) * b] = keep
    return out


@pytest.mark.parametrize("shape,b", [((8, 12), 2), ((8, 8), 4), ((3, 3, 4, 8), 2)])
def test_select_block_matches_tile_ranking(shape: tuple[int, ...], b: int) -> None:
    rng = np.random.default_rng(2)
    # Integer scores: a tile mean (a sum of b² integers < 2^24 over a power of two) is exact in
    # float32, so equal means are truly equal and both sides break the tie by lower tile index.
    scores = rng.permutation(math.prod(shape)).reshape(shape).astype(np.float32)
    eligible = rng.random(shape) < 0.97
    reserved = rng.random(shape) < 0.05
    size = math.prod(shape)
    for k in (0, b * b, 3 * b * b + 1, size // 2, size):
        got = np.asarray(patterns.select(scores, k, f"block:{b}"))
        ref = tile_reference(scores, k, b)
        np.testing.assert_array_equal(got, ref)
        assert got.sum() == k // (b * b) * b * b
        got = np.asarray(
            patterns.select(scores, k, f"block:{b}", eligible=eligible, reserved=reserved)
        )
        np.testing.assert_array_equal(got, tile_reference(scores, k, b, eligible, reserved))


def test_select_traced_count_under_jit_vmap() -> None:
    rng = np.random.default_rng(3)
    scores = jnp.asarray(rng.permutation(4 * 8 * 8).reshape(4, 8, 8).astype(np.float32))
    for spec, counts in (
        ("unstructured", [0, 5, 100, 256]),
        ("2:4", [0, 128, 256]),
        ("block:2", [0, 4, 7, 64, 256]),
    ):
        batch = jnp.asarray(counts, jnp.int32)
        got = jax.jit(jax.vmap(lambda c, spec=spec: patterns.select(scores, c, spec)))(batch)
        for i, k in enumerate(counts):
            # Same scores in both programs; block tile means are exact (small integer sums / 4).
            np.testing.assert_array_equal(got[i], patterns.select(scores, k, spec))


def test_drop_count_matches_exact_rounding() -> None:
    def half_up(x: Fraction) -> int:
        return math.floor(x + Fraction(1, 2))

    size = 256
    for f in (0.0, 0.1, 0.25, 0.3, 0.5, 1.0):
        exact = Fraction(str(f))
        for count in (0, 1, 7, 40, 64, 128, 256):
            assert int(patterns.drop_count(count, f, "unstructured", size)) == half_up(
                exact * count
            )
            tiles = count // 4
            assert int(patterns.drop_count(count, f, "block:2", size)) == half_up(exact * tiles) * 4
            groups = size // 4
            per = count // groups
            assert int(patterns.drop_count(count, f, "2:4", size)) == groups * half_up(exact * per)
    traced = jax.jit(jax.vmap(lambda f: patterns.drop_count(40, f, "unstructured", 64)))
    np.testing.assert_array_equal(traced(jnp.array([0.1, 0.3, 0.5])), [4, 12, 20])


# --- bad input


def test_bad_allocation_inputs_name_the_argument() -> None:
    params = model()
    with pytest.raises(ValueError, match="allocation"):
        allocation.layer_counts(params, 0.9, allocation="erdos")
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            allocation.layer_counts(params, bad)
    with pytest.raises(ValueError, match="sparsity must be a scalar"):
        allocation.layer_counts(params, jnp.array([0.5, 0.9]))
    for density in (1.5, 0.0, -0.2):
        with pytest.raises(ValueError, match=r"custom density .*fc1.* \(0, 1\]"):
            allocation.layer_counts(params, 0.9, custom=(("fc1", density),))
    with pytest.raises(ValueError, match="custom must be"):
        allocation.layer_counts(params, 0.9, custom=("fc1", 0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dense regex 'fc\\(' is not a valid regular"):
        allocation.layer_counts(params, 0.9, dense=("fc(",))
    with pytest.raises(ValueError, match="dense regex 'fc9' matches no prunable leaf"):
        allocation.layer_counts(params, 0.9, dense=("fc9",))
    with pytest.raises(ValueError, match=r"fewer than the .* dense / custom layers keep"):
        allocation.layer_counts(params, 0.95, dense=("fc1",))
    with pytest.raises(ValueError, match="allocation must be 'uniform' with pattern 2:4"):
        allocation.layer_counts({"k": jnp.ones((8, 4))}, 0.5, allocation="erk", pattern="2:4")
    with pytest.raises(ValueError, match=r"sparsity must be 1 - N/M = 0\.5"):
        allocation.layer_counts({"k": jnp.ones((8, 4))}, 0.9, allocation="uniform", pattern="2:4")


def test_bad_patterns_name_the_argument() -> None:
    for bad, why in (
        ("5:4", "pattern N:M must have 1 <= N <= M"),
        ("0:4", "pattern N:M must have 1 <= N <= M"),
        ("block:0", "pattern block:B needs a tile side B >= 1"),
        ("2-4", "pattern must be"),
        ("blocks:4", "pattern must be"),
        (4, "pattern must be"),
    ):
        with pytest.raises(ValueError, match=why):
            patterns.pattern(bad)  # type: ignore[arg-type]
    params = {"conv": {"kernel": jnp.ones((3, 3, 8, 4))}, "fc": {"kernel": jnp.ones((4, 4))}}
    with pytest.raises(
        ValueError, match=r"pattern 2:3 does not fit params\['conv'\]\['kernel'\]: M=3"
    ):
        patterns.check_pattern(params, "2:3")
    with pytest.raises(
        ValueError, match=r"pattern block:3 does not fit params\['fc'\]\['kernel'\]"
    ):
        patterns.check_pattern({"fc": {"kernel": jnp.ones((4, 4))}}, "block:3")
    patterns.check_pattern(params, "2:4")  # fits
    patterns.check_pattern(params, "block:3", dense=("fc",), prunable="fc")  # dense: not checked
    with pytest.raises(ValueError, match=r"pattern 2:3 does not fit params\['conv'\]"):
        allocation.layer_counts(params, 1 / 3, allocation="uniform", pattern="2:3")
    with pytest.raises(ValueError, match="pattern 2:3 does not fit scores"):
        patterns.select(jnp.ones((8, 4)), 4, "2:3")
    with pytest.raises(ValueError, match="eligible must have the scores' shape"):
        patterns.select(jnp.ones((8, 4)), 4, "2:4", eligible=jnp.ones((4, 8), bool))
    with pytest.raises(ValueError, match="fraction"):
        patterns.drop_count(10, 1.5, "unstructured", 10)
