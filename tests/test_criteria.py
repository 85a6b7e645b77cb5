"""Mask criteria against a plain numpy re-implementation, brute-force percentiles and exact counts."""

from __future__ import annotations

import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxprune import criteria, masks, select
from tests.helpers import TraceCounter, random_params, stack, unstack

ALL = (
    "large_final",
    "small_final",
    "large_init",
    "small_init",
    "large_init_large_final",
    "small_init_small_final",
    "magnitude_increase",
    "movement",
    "random",
    "large_final_same_sign",
    "large_final_diff_sign",
    "magnitude_increase_same_sign",
    "magnitude_increase_diff_sign",
    "snip",
    "grad",
)
DETERMINISTIC = tuple(n for n in ALL if n != "random")
RANKED = ("large_init_large_final", "small_init_small_final")
READS_FINAL = tuple(
    n for n in ALL if n not in ("large_init", "small_init", "random", "snip", "grad")
)


# ----------------------------------------------------------------------------- numpy reference


def np_rank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rank by counting, O(n²): how many entries come before each one (pruned, value, index)."""
    v, m = np.ravel(values), np.ravel(mask).astype(bool)
    idx = np.arange(v.size)
    vj, vl = v[:, None], v[None, :]
    mj, ml = m[:, None], m[None, :]
    same_m = mj == ml
    before = (
        (~ml & mj) | (same_m & (vl < vj)) | (same_m & (vl == vj) & (idx[None, :] < idx[:, None]))
    )
    return before.sum(axis=1).reshape(np.shape(values))


def reference(name: str, wi: Any, wf: Any, g: Any, m: Any) -> np.ndarray:
    wi, wf, g = (np.asarray(x, np.float64) for x in (wi, wf, g))
    m = np.asarray(m, bool)
    ai, af = np.abs(wi), np.abs(wf)
    same = np.sign(wi) == np.sign(wf)
    table = {
        "large_final": lambda: af,
        "small_final": lambda: -af,
        "large_init": lambda: ai,
        "small_init": lambda: -ai,
        "large_init_large_final": lambda: np.minimum(np_rank(ai, m), np_rank(af, m)),
        "small_init_small_final": lambda: np.minimum(np_rank(-ai, m), np_rank(-af, m)),
        "magnitude_increase": lambda: af - ai,
        "movement": lambda: np.abs(wf - wi),
        "large_final_same_sign": lambda: np.where(same, af, -np.inf),
        "large_final_diff_sign": lambda: np.where(~same, af, -np.inf),
        "magnitude_increase_same_sign": lambda: np.where(same, af - ai, -np.inf),
        "magnitude_increase_diff_sign": lambda: np.where(~same, af - ai, -np.inf),
        "snip": lambda: np.abs(g * wi),
        "grad": lambda: np.abs(g),
    }
    return np.asarray(table[name](), np.float64)


def make_inputs(seed: int, *, ties: bool = False) -> dict[str, Any]:
    """w_init, w_final (some signs flipped, some exact zeros), grads and a partial mask."""
    rng = np.random.default_rng(1000 + seed)
    w_init = random_params(seed, ties=ties)

    def final(w: np.ndarray) -> np.ndarray:
        out = (0.5 * w + rng.normal(size=w.shape)).astype(np.float32)
        out = np.round(out, 0) if ties else out
        out.ravel()[0] = 0.0  # sign(0) only agrees with 0
        return out

    w_final = jax.tree.map(final, w_init)
    grads = jax.tree.map(lambda w: rng.normal(size=w.shape).astype(np.float32), w_init)
    mask = jax.tree.map(lambda w: rng.random(w.shape) < 0.7, w_init)
    return {"w_init": w_init, "w_final": w_final, "grads": grads, "mask": mask}


def run(name: str, inp: dict[str, Any], key: jax.Array | None = None) -> Any:
    return criteria.score(
        name, inp["w_init"], inp["w_final"], grads=inp["grads"], mask=inp["mask"], key=key
    )


# ----------------------------------------------------------------------------- registry


def test_names_and_registry_are_the_papers() -> None:
    assert criteria.names() == ALL
    assert set(criteria.CRITERIA) == set(ALL)
    assert isinstance(criteria.CRITERIA, types.MappingProxyType)
    with pytest.raises(TypeError):
        criteria.CRITERIA["mine"] = criteria.CRITERIA["grad"]


def test_needs_table() -> None:
    expected = {n: {"w_final"} for n in READS_FINAL}
    expected |= {"large_init": set(), "small_init": set(), "random": {"key"}}
    expected |= {"snip": {"grads"}, "grad": {"grads"}}
    assert {n: set(criteria.needs(n)) for n in ALL} == expected
    assert all(criteria.needs(n) <= set(criteria.INPUTS) for n in ALL)


@pytest.mark.parametrize("name", ALL)
def test_needs_is_exactly_what_score_requires(name: str, key: jax.Array) -> None:
    inp = make_inputs(0)
    given_ = {"w_final": inp["w_final"], "grads": inp["grads"], "key": key}
    need = criteria.needs(name)
    only = {k: (v if k in need else None) for k, v in given_.items()}
    out = criteria.score(name, inp["w_init"], only["w_final"], grads=only["grads"], key=only["key"])
    assert jax.tree.structure(out) == jax.tree.structure(inp["w_init"])
    for missing in need:
        partial = dict(only, **{missing: None})
        with pytest.raises(ValueError, match=f"{missing} is required by criterion '{name}'"):
            criteria.score(
                name, inp["w_init"], partial["w_final"], grads=partial["grads"], key=partial["key"]
            )


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_matches_numpy_reference(name: str, ties: bool) -> None:
    for seed in range(3):
        inp = make_inputs(seed, ties=ties)
        for mask in (inp["mask"], None):
            out = criteria.score(name, inp["w_init"], inp["w_final"], grads=inp["grads"], mask=mask)
            m = masks.ones(inp["w_init"]) if mask is None else mask
            for path in (("fc1", "kernel"), ("fc1", "bias"), ("out", "kernel"), ("out", "bias")):
                got = out[path[0]][path[1]]
                args = [t[path[0]][path[1]] for t in (inp["w_init"], inp["w_final"], inp["grads"])]
                want = reference(name, *args, m[path[0]][path[1]])
                assert got.dtype == jnp.float32 and got.shape == want.shape
                np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_by_hand() -> None:
    w_i = {"w": jnp.array([0.5, -1.0, 2.0, 0.0])}
    w_f = {"w": jnp.array([-1.5, -0.5, 3.0, 0.0])}
    g = {"w": jnp.array([2.0, -1.0, 0.5, 4.0])}
    s = lambda name: np.asarray(criteria.score(name, w_i, w_f, grads=g)["w"]).tolist()  # noqa: E731
    assert s("movement") == [2.0, 0.5, 1.0, 0.0]
    assert s("large_final_same_sign") == [-np.inf, 0.5, 3.0, 0.0]
    assert s("large_final_diff_sign") == [1.5, -np.inf, -np.inf, -np.inf]
    assert s("magnitude_increase_same_sign") == [-np.inf, -0.5, 1.0, 0.0]
    assert s("snip") == [1.0, 1.0, 1.0, 0.0]
    # |w_i| ascending: 0.0(3) 0.5(0) 1.0(1) 2.0(2); |w_f|: 0.0(3) 0.5(1) 1.5(0) 3.0(2)
    assert s("large_init_large_final") == [1.0, 1.0, 3.0, 0.0]
    # -|w_i| ascending: 2.0(2) 1.0(1) 0.5(0) 0.0(3); -|w_f|: 3.0(2) 1.5(0) 0.5(1) 0.0(3)
    assert s("small_init_small_final") == [1.0, 1.0, 0.0, 3.0]


def test_registry_functions_score_one_leaf() -> None:
    w_i, w_f = jnp.array([1.0, -2.0]), jnp.array([-3.0, -1.0])
    fn = criteria.CRITERIA["magnitude_increase"]
    out = fn(w_init=w_i, w_final=w_f, grad=None, mask=jnp.ones(2, bool), key=None)
    np.testing.assert_array_equal(np.asarray(out), [2.0, -1.0])


def test_random_is_uniform_per_leaf_from_fold_in(key: jax.Array) -> None:
    params = {"a": jnp.zeros((100, 50)), "b": jnp.zeros((100, 50)), "c": jnp.zeros(())}
    out = criteria.score("random", params, key=key)
    leaves = jax.tree.leaves(out)
    for i, leaf in enumerate(leaves):  # the documented contract: leaf i uses fold_in(key, i)
        want = jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, jnp.float32)
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want))
    a, b = np.asarray(out["a"]), np.asarray(out["b"])
    assert a.dtype == np.float32 and (a >= 0).all() and (a < 1).all()
    assert abs(a.mean() - 0.5) < 0.02 and abs(a.var() - 1 / 12) < 0.01
    assert not np.array_equal(a, b)  # leaves draw independently
    other = np.asarray(criteria.score("random", params, key=jax.random.key(1))["a"])
    assert not np.array_equal(a, other)
    again = np.asarray(criteria.score("random", params, key=key)["a"])
    np.testing.assert_array_equal(a, again)


@pytest.mark.parametrize("name", ALL)
def test_float32_scores_with_params_structure(name: str, key: jax.Array) -> None:
    w_i = {"k": [jnp.ones((2, 3), jnp.bfloat16), jnp.float16(-2.0)], "t": (jnp.arange(4.0),)}
    w_f = jax.tree.map(lambda w: -w, w_i)
    out = criteria.score(name, w_i, w_f, grads=w_f, key=key)
    assert jax.tree.structure(out) == jax.tree.structure(w_i)
    for s, w in zip(jax.tree.leaves(out), jax.tree.leaves(w_i), strict=True):
        assert s.dtype == jnp.float32 and s.shape == jnp.shape(w)


@pytest.mark.parametrize("name", ALL)
def test_mask_none_means_all_kept(name: str, key: jax.Array) -> None:
    inp = make_inputs(1)
    a = criteria.score(name, inp["w_init"], inp["w_final"], grads=inp["grads"], key=key)
    dense = masks.ones(inp["w_init"])
    b = criteria.score(name, inp["w_init"], inp["w_final"], grads=inp["grads"], mask=dense, key=key)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("name", [n for n in ALL if n != "random"])
def test_nan_in_is_nan_out(name: str) -> None:
    inp = make_inputs(2)
    read = {"w_final"} if name in READS_FINAL else set()
    read |= {"grads"} if name in ("snip", "grad") else set()
    read |= {"w_init"} if name not in ("large_final", "small_final", "grad") else set()
    for which in read:
        bad = jax.tree.map(np.copy, inp)
        bad[which]["fc1"]["kernel"][2, 3] = np.nan
        out = np.asarray(run(name, bad)["fc1"]["kernel"])
        assert np.isnan(out[2, 3]), which
        # a rank criterion's NaN shifts the other ranks, which stay finite
        if name not in RANKED:
            assert np.isnan(out).sum() == 1
        with pytest.raises(ValueError, match="NaN"):
            select.layerwise(run(name, bad), masks.ones(inp["w_init"]), 0.2)


# ----------------------------------------------------------------------------- both-large / both-small


# One compiled program per shape: the rate is traced, so many targets cost no recompiles.
_layerwise = jax.jit(lambda s, m, rate: select.layerwise({"w": s}, {"w": m}, rate)["w"])


def keep_exactly(scores: Any, mask: np.ndarray, k: int) -> np.ndarray:
    """select.layerwise with the rate that keeps exactly k of r remaining (rate = (r - k) / r)."""
    r = int(np.sum(mask))
    rate = (r - k) / r if r else 0.0
    return np.asarray(_layerwise(scores, mask, jnp.float32(rate)))


SHAPES = [(1, 1), (2, 3), (4, 5), (7, 6)]


@st.composite
def tied_leaf(draw: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    shape = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**31 - 1))
    levels = draw(st.integers(1, 4))  # 1 level = every |w| ties
    rng = np.random.default_rng(seed)
    wi = rng.integers(-levels + 1, levels, size=shape).astype(np.float32)
    wf = rng.integers(-levels + 1, levels, size=shape).astype(np.float32)
    mask = rng.random(shape) < draw(st.sampled_from([0.3, 0.8, 1.0]))
    k = draw(st.integers(0, int(mask.sum())))
    return wi, wf, mask, k


@pytest.mark.parametrize("name", RANKED)
@given(case=tied_leaf())
def test_exact_count_and_percentile_semantics_with_ties(name: str, case: Any) -> None:
    wi, wf, mask, k = case
    s = criteria.score(name, {"w": wi}, {"w": wf}, mask={"w": mask})["w"]
    new = keep_exactly(s, mask, k)
    assert new.sum() == k  # exact, despite the ties
    assert not (new & ~mask).any()  # pruned weights are never re-selected
    # Percentile semantics on ranks computed by counting: for some threshold t, every weight
    # whose two ranks are both > t is kept, and every kept weight has both ranks >= t.
    sign = 1.0 if name == RANKED[0] else -1.0
    lo = np.minimum(np_rank(sign * np.abs(wi), mask), np_rank(sign * np.abs(wf), mask))
    n_pruned = int((~mask).sum())
    ok = [
        t
        for t in range(n_pruned, wi.size + 1)
        if (new[(lo > t) & mask]).all() and (lo[new] >= t).all()
    ]
    assert ok, (lo, new)


def percentile_sets(a: np.ndarray, b: np.ndarray, *, below: bool) -> np.ndarray:
    """The paper's rule by brute force over q: row j keeps the weights whose |w_i| and |w_f| are
    both above (or both below) the q_j-th percentile of their own values, on a fine grid of q."""
    qs = np.linspace(0.0, 100.0, 4001)  # levels of q are >= 100 / n wide, n <= 42: all are hit
    # "inverted_cdf": thresholds are data values at the same order statistic of a and b; an
    # interpolated threshold can round onto a data value in one array and not the other.
    pa = np.percentile(a, qs, method="inverted_cdf")[:, None]
    pb = np.percentile(b, qs, method="inverted_cdf")[:, None]
    return (a < pa) & (b < pb) if below else (a > pa) & (b > pb)


@pytest.mark.parametrize("name", RANKED)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES[1:]))
def test_same_kept_set_as_percentile_rule(name: str, seed: int, shape: Any) -> None:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    # tie-free magnitudes with random signs, so the percentile rule has one answer per count
    wi = ((rng.permutation(n) + 1) * rng.choice([-1, 1], n)).astype(np.float32).reshape(shape)
    wf = ((rng.permutation(n) + 1) * rng.choice([-1, 1], n)).astype(np.float32).reshape(shape)
    mask = rng.random(shape) < 0.75
    s = criteria.score(name, {"w": wi}, {"w": wf}, mask={"w": mask})["w"]
    sets = percentile_sets(np.abs(wi)[mask], np.abs(wf)[mask], below=name == RANKED[1])
    counts = sets.sum(axis=1)
    for k in range(int(mask.sum()) + 1):
        new = keep_exactly(s, mask, k)
        ours = new[mask]
        assert new.sum() == k and not (new & ~mask).any()
        if k == mask.sum():  # a strict percentile always drops the extreme weight: keep-all is q<0
            assert ours.all()
            continue
        if (counts == k).any():  # every q that keeps k keeps the same set: ours
            np.testing.assert_array_equal(
                sets[counts == k], np.broadcast_to(ours, sets[counts == k].shape)
            )
        else:  # the count jumps past k: ours lies between the two neighbouring percentile sets
            # no q in [0, 100] keeps more than k: the next level up is keep-all (q < 0)
            over = (
                sets[counts > k][np.argmin(counts[counts > k])]
                if (counts > k).any()
                else ours | True
            )
            under = sets[counts < k][np.argmax(counts[counts < k])]
            assert over.sum() - under.sum() == 2
            assert (ours >= under).all() and (ours <= over).all()


@pytest.mark.parametrize("name", RANKED)
def test_rounds_rank_among_survivors_only(name: str) -> None:
    rng = np.random.default_rng(7)
    wi = rng.normal(size=(8, 6)).astype(np.float32)
    mask = np.ones((8, 6), bool)
    for round_ in range(5):
        wf = rng.normal(size=(8, 6)).astype(np.float32)
        wf[~mask] = 0.0  # zero mode: pruned weights are 0, i.e. the smallest |w_f|
        s = np.asarray(criteria.score(name, {"w": wi}, {"w": wf}, mask={"w": mask})["w"])
        # kept weights score by their ranks among the kept ones alone, offset past the pruned
        sign = 1.0 if name == RANKED[0] else -1.0
        alone = [np_rank(sign * np.abs(w[mask]), np.ones(mask.sum(), bool)) for w in (wi, wf)]
        np.testing.assert_array_equal(s[mask], np.minimum(*alone) + (~mask).sum())
        assert (s[~mask] < (~mask).sum()).all()
        new = np.asarray(_layerwise(s, mask, jnp.float32(0.2)))
        r = int(mask.sum())
        assert new.sum() == r - int(np.floor(0.2 * r + 0.5)), round_
        assert not (new & ~mask).any()
        mask = new


# ----------------------------------------------------------------------------- same / diff sign


SIGNED = [
    ("large_final_same_sign", True),
    ("large_final_diff_sign", False),
    ("magnitude_increase_same_sign", True),
    ("magnitude_increase_diff_sign", False),
]


@pytest.mark.parametrize(("name", "same"), SIGNED)
@given(seed=st.integers(0, 2**31 - 1), rate=st.floats(0.0, 0.95))
def test_sign_criteria_keep_matching_signs(name: str, same: bool, seed: int, rate: float) -> None:
    rng = np.random.default_rng(seed)
    wi = rng.normal(size=(6, 7)).astype(np.float32)
    wf = (wi * rng.uniform(-1.0, 2.0, size=wi.shape)).astype(np.float32)
    mask = rng.random(wi.shape) < 0.9
    s = criteria.score(name, {"w": wi}, {"w": wf}, mask={"w": mask})["w"]
    new = np.asarray(_layerwise(s, mask, jnp.float32(rate)))
    match = (np.sign(wi) == np.sign(wf)) == same
    eligible = match & mask
    if new.sum() <= eligible.sum():
        assert match[new].all()
    else:  # too few pass the sign test: all of them are kept, the rest fill the count
        assert new[eligible].all()
    # among the matching weights, the kept ones are the best by the base score
    base = np.abs(wf) if "large_final" in name else np.abs(wf) - np.abs(wi)
    kept, dropped = new & eligible, ~new & eligible
    if kept.any() and dropped.any():
        assert base[kept].min() >= base[dropped].max()


# ----------------------------------------------------------------------------- jit and vmap


def _fn(name: str) -> Any:
    return lambda wi, wf, g, m, k: criteria.score(name, wi, wf, grads=g, mask=m, key=k)


def _args(seeds: range, key: jax.Array) -> list[tuple[Any, ...]]:
    out = []
    for seed in seeds:
        inp = make_inputs(seed)
        # one layer (kernel and bias) keeps compiles cheap and still has two leaves (two keys)
        out.append(tuple({"fc1": inp[k]["fc1"]} for k in ("w_init", "w_final", "grads", "mask")))
    keys = jax.random.split(key, len(out))
    return [(*a, keys[i]) for i, a in enumerate(out)]


def _equal(a: Any, b: Any) -> None:
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize("name", ALL)
def test_jit_matches_eager_without_retracing(name: str, key: jax.Array) -> None:
    counter = TraceCounter(_fn(name))
    jitted = jax.jit(counter.fn)
    for args in _args(range(3), key):  # new weights, grads, mask and key every call
        _equal(jitted(*args), _fn(name)(*args))
    assert counter.traces == 1


@pytest.mark.parametrize("name", ALL)
def test_jit_vmap_over_tickets_matches_each_ticket(name: str, key: jax.Array) -> None:
    counter = TraceCounter(_fn(name))
    batched = jax.jit(jax.vmap(counter.fn))
    for seeds, k in ((range(3), key), (range(3, 6), jax.random.key(9))):
        per_ticket = _args(seeds, k)
        stacked = [stack([a[j] for a in per_ticket]) for j in range(4)]
        keys = jnp.stack([a[4] for a in per_ticket])
        out = batched(*stacked, keys)
        for t, args in enumerate(per_ticket):
            _equal(unstack(out, t), _fn(name)(*args))
    assert counter.traces == 1
    if name == "random":  # tickets with different keys draw different noise
        assert not np.array_equal(out["fc1"]["kernel"][0], out["fc1"]["kernel"][1])


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_all() -> None:
    inp = make_inputs(0)
    listed = r"unknown criterion 'large_finale'; expected one of: .*grad, large_final, .*snip"
    with pytest.raises(ValueError, match=listed):
        criteria.score("large_finale", inp["w_init"], inp["w_final"])
    with pytest.raises(ValueError, match="unknown criterion 'bogus'"):
        criteria.needs("bogus")


def test_missing_inputs_name_the_argument() -> None:
    w = make_inputs(0)["w_init"]
    with pytest.raises(ValueError, match="w_final is required by criterion 'movement'"):
        criteria.score("movement", w)
    with pytest.raises(ValueError, match="grads is required by criterion 'snip'"):
        criteria.score("snip", w, w)
    with pytest.raises(ValueError, match="key is required by criterion 'random'"):
        criteria.score("random", w, w)


def test_structure_and_shape_mismatches_name_the_path() -> None:
    inp = make_inputs(0)
    w = inp["w_init"]
    short = {"fc1": w["fc1"], "out": {"bias": w["out"]["bias"]}}
    with pytest.raises(
        ValueError,
        match=r"w_final must have exactly the structure of w_init.*\['out'\]\['kernel'\]",
    ):
        criteria.score("large_final", w, short)
    bad_g = jax.tree.map(np.copy, inp["grads"])
    bad_g["fc1"]["kernel"] = bad_g["fc1"]["kernel"].T
    with pytest.raises(
        ValueError,
        match=r"grads\['fc1'\]\['kernel'\] has shape \[5, 6\] but w_init\['fc1'\]\['kernel'\] has shape \[6, 5\]",
    ):
        criteria.score("snip", w, grads=bad_g)
    with pytest.raises(ValueError, match=r"grads.*structure of w_init"):
        criteria.score("large_init", w, grads=short)  # given but unused: still checked
    bad_m = jax.tree.map(np.copy, inp["mask"])
    bad_m["out"]["bias"] = bad_m["out"]["bias"].astype(np.float32)
    with pytest.raises(ValueError, match=r"mask\['out'\]\['bias'\] must be a bool array"):
        criteria.score("large_init_large_final", w, w, mask=bad_m)
    bad_m["out"]["bias"] = np.ones(4, bool)
    with pytest.raises(ValueError, match=r"mask\['out'\]\['bias'\] has shape \[4\]"):
        criteria.score("large_init_large_final", w, w, mask=bad_m)


def test_bad_keys() -> None:
    w = make_inputs(0)["w_init"]
    with pytest.raises(ValueError, match=r"typed PRNG key from jax\.random\.key"):
        criteria.score("random", w, key=jax.random.key_data(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"single key \(shape \[\]\), got shape \[3\]"):
        criteria.score("random", w, key=jax.random.split(jax.random.key(0), 3))
