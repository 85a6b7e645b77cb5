"""Resets against plain numpy re-implementations, hand-computed cases and invariant properties."""

from __future__ import annotations

import collections
import functools
import re
from typing import Any

import helpers
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxprune import reset

BASES = (
    "rewind",
    "reinit",
    "signed_reinit",
    "reshuffle",
    "signed_reshuffle",
    "constant",
    "signed_constant",
)
KEPT = (*BASES, *(f"{b}_rescaled" for b in BASES), "fine_tune")
PRUNED = (
    "zero",
    "freeze_init",
    "freeze_init_zero_mask",
    "freeze_init_zero_all",
    "freeze_init_zero_random",
)
KERNELS = ("['fc1']['kernel']", "['out']['kernel']")  # the prunable leaves of random_params


# --- inputs ---------------------------------------------------------------------------------


def random_mask(params: dict, seed: int, density: float = 0.5) -> dict:
    """Random kernel masks; biases all True (they are not prunable)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: rng.random(p.shape) < density if p.ndim >= 2 else np.ones(p.shape, bool), params
    )


def trained(params: dict, seed: int) -> dict:
    """A stand-in for w_final: about half of the weights move toward zero, half away."""
    rng = np.random.default_rng(seed + 1000)
    return jax.tree.map(lambda p: (p * rng.uniform(0.0, 2.0, p.shape)).astype(np.float32), params)


def ticket(seed: int) -> tuple[dict, dict, dict, jax.Array]:
    w_init = helpers.random_params(seed)
    return w_init, random_mask(w_init, seed), trained(w_init, seed), jax.random.key(seed)


def paths_and_leaves(tree: Any) -> list[tuple[str, np.ndarray]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(p), np.asarray(x)) for p, x in flat]


# --- numpy references ------------------------------------------------------------------------


def leaf_key(key: jax.Array, j: int) -> jax.Array:
    return jax.random.fold_in(key, j)


def np_kept_leaf(name: str, w: np.ndarray, m: np.ndarray, perm: np.ndarray) -> np.ndarray:
    base = name.removesuffix("_rescaled")
    shape, w, m = w.shape, w.ravel(), m.ravel()
    alpha = np.std(w)
    if alpha <= 1e-6 * np.abs(w).max(initial=0.0):  # degenerate leaf: its mean magnitude
        alpha = np.abs(w).mean()
    if base == "rewind":
        v = w
    elif base == "reinit":
        v = w[perm]
    elif base == "signed_reinit":
        v = np.abs(w[perm]) * np.sign(w)
    elif base in ("reshuffle", "signed_reshuffle"):
        v = w.copy()
        kept = np.flatnonzero(m)
        v[kept] = w[kept[np.argsort(perm[kept])]]
        if base == "signed_reshuffle":
            v = np.abs(v) * np.sign(w)
    elif base == "constant":
        v = alpha * np.sign(w[perm])
    else:
        assert base == "signed_constant"
        v = alpha * np.sign(w)
    if name.endswith("_rescaled"):
        v = v * (m.size / max(int(m.sum()), 1))
    return np.where(m, v, w).reshape(shape)


def np_kept(
    name: str, w_init: dict, mask: dict, key: jax.Array, prunable=KERNELS, w_final=None
) -> list:
    out = []
    finals = dict(paths_and_leaves(w_final)) if w_final is not None else {}
    for j, ((path, w), (_, m)) in enumerate(
        zip(paths_and_leaves(w_init), paths_and_leaves(mask), strict=True)
    ):
        if path not in prunable:
            out.append(w)
            continue
        if name == "fine_tune":  # the trained value where kept, w_init elsewhere
            out.append(np.where(m, finals[path], w))
            continue
        perm = np.asarray(jax.random.permutation(leaf_key(key, j), w.size))
        out.append(np_kept_leaf(name, w, m, perm))
    return out


def np_pruned_leaf(name, wi, wf, m, scores):
    toward = np.abs(wi) > np.abs(wf)
    if name == "zero":
        return np.zeros_like(wi)
    if name == "freeze_init":
        return np.where(m, 0.0, wi)
    if name in ("freeze_init_zero_mask", "freeze_init_zero_all"):
        return np.where(m | toward, 0.0, wi)
    assert name == "freeze_init_zero_random"
    count = int((~m & toward).sum())
    pruned = np.flatnonzero(~m.ravel())
    chosen = pruned[np.argsort(-scores[pruned], kind="stable")[:count]]
    zeroed = np.zeros(m.size, bool)
    zeroed[chosen] = True
    return np.where(m | zeroed.reshape(m.shape), 0.0, wi)


def np_pruned(name: str, w_init, mask, w_final, key) -> list:
    out = []
    for j, ((_, wi), (_, wf), (_, m)) in enumerate(
        zip(
            paths_and_leaves(w_init),
            paths_and_leaves(w_final),
            paths_and_leaves(mask),
            strict=True,
        )
    ):
        scores = np.asarray(jax.random.uniform(leaf_key(key, j), (wi.size,)))
        out.append(np_pruned_leaf(name, wi, wf, m, scores))
    return out


def assert_leaves_close(got: Any, want: list, rtol: float = 1e-6) -> None:
    got_leaves = paths_and_leaves(got)
    assert len(got_leaves) == len(want)
    for (path, g), w in zip(got_leaves, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-7, err_msg=path)


# --- one compiled program for every name -------------------------------------------------------

COMBOS = (
    ("rewind", "zero"),
    ("reshuffle", "freeze_init_zero_random"),
    ("signed_constant_rescaled", "freeze_init_zero_all"),
)
FC1_ONLY = ("rewind", "reshuffle_rescaled", "constant")  # the prunable rule is name-independent


def everything(w_init, mask, w_final, key) -> dict:
    """Every registered name at once: one compile serves all tests (XLA compiles are slow on CPU)."""
    return {
        "kept": {n: reset.reset_kept(n, w_init, mask, key=key, w_final=w_final) for n in KEPT},
        "kept_fc1": {
            n: reset.reset_kept(n, w_init, mask, key=key, prunable="fc1.*kernel") for n in FC1_ONLY
        },
        "pruned": {
            n: reset.pruned_values(n, w_init, mask, w_final=w_final, key=key) for n in PRUNED
        },
        "reset": {
            f"{a}+{b}": reset.reset(w_init, mask, kept=a, pruned=b, w_final=w_final, key=key)
            for a, b in COMBOS
        },
    }


TRACES = helpers.TraceCounter(everything)
ALL = jax.jit(TRACES.fn)  # only ever called on trees shaped like ticket(): one trace in all


def run(w_init, mask, w_final, key) -> Any:
    return jax.device_get(ALL(w_init, mask, w_final, key))


@functools.cache
def results(seed: int) -> Any:
    return run(*ticket(seed))


# --- registry ---------------------------------------------------------------------------------


def test_names_and_needs() -> None:
    assert set(reset.kept_names()) == set(KEPT) and len(reset.kept_names()) == len(KEPT)
    assert reset.pruned_names() == PRUNED
    need_key = {"reinit", "signed_reinit", "reshuffle", "signed_reshuffle", "constant"}
    for name in KEPT:
        expected = {"key"} if name.removesuffix("_rescaled") in need_key else set()
        expected |= {"w_final"} if name == "fine_tune" else set()
        assert reset.needs(name, "zero") == frozenset(expected), name
    assert reset.needs("rewind", "freeze_init") == frozenset()
    assert reset.needs("rewind", "freeze_init_zero_mask") == {"w_final"}
    assert reset.needs("rewind", "freeze_init_zero_all") == {"w_final"}
    assert reset.needs("signed_constant", "freeze_init_zero_random") == {"key", "w_final"}
    assert reset.needs("reshuffle", "freeze_init_zero_mask") == {"key", "w_final"}


# --- against numpy ----------------------------------------------------------------------------

SEEDS = (10, 11, 12)


@pytest.mark.parametrize("name", KEPT)
def test_reset_kept_matches_numpy(name: str) -> None:
    for seed in SEEDS:
        w_init, mask, w_final, key = ticket(seed)
        want = np_kept(name, w_init, mask, key, w_final=w_final)
        assert_leaves_close(results(seed)["kept"][name], want)


def test_reset_kept_eager_matches_numpy() -> None:
    w_init, mask, _, key = ticket(3)
    for name in ("reshuffle", "constant_rescaled"):
        got = reset.reset_kept(name, w_init, mask, key=key)
        assert_leaves_close(got, np_kept(name, w_init, mask, key))


def test_non_prunable_leaves_are_w_init() -> None:
    for seed in SEEDS:
        w_init, mask, _, key = ticket(seed)
        originals = dict(paths_and_leaves(w_init))
        for name in KEPT:  # the default rule leaves the biases alone
            for path, leaf in paths_and_leaves(results(seed)["kept"][name]):
                if "bias" in path:
                    np.testing.assert_array_equal(leaf, originals[path], f"{name} {path}")
        for name in FC1_ONLY:  # a custom rule: only fc1's kernel is reset
            got = results(seed)["kept_fc1"][name]
            assert_leaves_close(got, np_kept(name, w_init, mask, key, prunable=KERNELS[:1]))
            np.testing.assert_array_equal(got["out"]["kernel"], w_init["out"]["kernel"])


@pytest.mark.parametrize("name", PRUNED)
def test_pruned_values_match_numpy(name: str) -> None:
    for seed in SEEDS:
        w_init, mask, w_final, key = ticket(seed)
        want = np_pruned(name, w_init, mask, w_final, key)
        assert_leaves_close(results(seed)["pruned"][name], want, rtol=0)


@pytest.mark.parametrize("combo", COMBOS, ids="+".join)
def test_reset_is_kept_where_mask_else_frozen(combo: tuple[str, str]) -> None:
    kept, pruned = combo
    for seed in SEEDS:
        w_init, mask, w_final, key = ticket(seed)
        params, frozen = results(seed)["reset"][f"{kept}+{pruned}"]
        start = np_kept(kept, w_init, mask, jax.random.fold_in(key, 0))
        want_frozen = np_pruned(pruned, w_init, mask, w_final, jax.random.fold_in(key, 1))
        want = []
        for (path, wi), (_, wf), (_, m), s, f in zip(
            paths_and_leaves(w_init),
            paths_and_leaves(w_final),
            paths_and_leaves(mask),
            start,
            want_frozen,
            strict=True,
        ):
            if pruned == "freeze_init_zero_all" and path in KERNELS:  # Variant 2, kept part
                s = np.where(np.abs(wi) > np.abs(wf), 0.0, s)
            want.append(np.where(m, s, f))
        assert_leaves_close(params, want)
        assert_leaves_close(frozen, want_frozen, rtol=0)


def test_rescaled_with_empty_and_full_leaves() -> None:
    w_init, _, w_final, key = ticket(7)
    mask = jax.tree.map(lambda p: np.ones(p.shape, bool), w_init)
    mask["fc1"]["kernel"] = np.zeros((6, 5), bool)  # nothing kept: no division by zero
    got = run(w_init, mask, w_final, key)["kept"]
    for base in BASES:
        scaled, plain = got[f"{base}_rescaled"], got[base]
        np.testing.assert_array_equal(scaled["fc1"]["kernel"], w_init["fc1"]["kernel"])
        np.testing.assert_allclose(scaled["out"]["kernel"], plain["out"]["kernel"], rtol=1e-6)


def test_variants_by_hand() -> None:
    w_i = {
        "b": np.array([1.0, -1.0], np.float32),
        "k": np.array([[0.5, -1.0, 2.0], [-3.0, 1.5, -0.25]], np.float32),
    }
    w_f = {
        "b": np.array([0.1, -2.0], np.float32),
        "k": np.array([[1.0, -0.5, 1.0], [-1.0, 2.0, -0.5]], np.float32),
    }
    m = {"b": np.array([True, True]), "k": np.array([[True, False, True], [False, False, True]])}
    # moved toward zero (|w_i| > |w_f|): k = [[F, T, T], [T, F, F]]; bias b[0] too (not prunable).
    cases = {
        "zero": ([[0.5, 0, 2], [0, 0, -0.25]], [[0, 0, 0], [0, 0, 0]]),
        "freeze_init": ([[0.5, -1, 2], [-3, 1.5, -0.25]], [[0, -1, 0], [-3, 1.5, 0]]),
        "freeze_init_zero_mask": ([[0.5, 0, 2], [0, 1.5, -0.25]], [[0, 0, 0], [0, 1.5, 0]]),
        "freeze_init_zero_all": ([[0.5, 0, 0], [0, 1.5, -0.25]], [[0, 0, 0], [0, 1.5, 0]]),
    }
    for pruned, (want_params, want_frozen) in cases.items():
        params, frozen = reset.reset(w_i, m, pruned=pruned, w_final=w_f)
        np.testing.assert_array_equal(params["k"], np.array(want_params, np.float32), pruned)
        np.testing.assert_array_equal(frozen["k"], np.array(want_frozen, np.float32), pruned)
        np.testing.assert_array_equal(params["b"], w_i["b"], pruned)  # never touched
        np.testing.assert_array_equal(frozen["b"], [0.0, 0.0], pruned)
    # The control zeroes 2 of the 3 pruned weights, as Variant 1 does, and freezes the third;
    # which two depends on the key.
    subsets = set()
    for seed in range(4):
        params, frozen = reset.reset(
            w_i, m, pruned="freeze_init_zero_random", w_final=w_f, key=jax.random.key(seed)
        )
        pruned_k = np.asarray(frozen["k"])[~m["k"]]
        assert (pruned_k == 0).sum() == 2
        np.testing.assert_array_equal(pruned_k[pruned_k != 0], w_i["k"][~m["k"]][pruned_k != 0])
        np.testing.assert_array_equal(np.asarray(frozen["k"])[m["k"]], 0.0)
        subsets.add(tuple(pruned_k == 0))
    assert len(subsets) > 1


def test_signed_constant_by_hand() -> None:
    w = {"k": np.array([[1.0, -7.0], [7.0, -1.0]], np.float32)}  # population std = 5
    m = {"k": np.array([[True, False], [True, True]])}
    got = reset.reset_kept("signed_constant", w, m)["k"]
    np.testing.assert_allclose(got, [[5.0, -7.0], [5.0, -5.0]], rtol=1e-6)
    got = reset.reset_kept("signed_constant_rescaled", w, m)["k"]
    np.testing.assert_allclose(got, [[20 / 3, -7.0], [20 / 3, -20 / 3]], rtol=1e-6)


# --- properties -------------------------------------------------------------------------------


@st.composite
def tickets(draw: st.DrawFn) -> tuple[dict, dict, dict, jax.Array]:
    """A ticket shaped like ticket(): non-zero values with many ties, any mask, any w_final."""
    values = st.one_of(
        st.sampled_from([0.25, 0.5, 1.0, 1.5, 3.0]), st.floats(0.015625, 4.0, width=32)
    )

    def leaf(*shape: int) -> np.ndarray:
        mag = draw(hnp.arrays(np.float32, shape, elements=values))
        return np.where(draw(hnp.arrays(np.bool_, shape)), -mag, mag).astype(np.float32)

    def tree() -> dict:
        return {
            "fc1": {"bias": leaf(5), "kernel": leaf(6, 5)},
            "out": {"bias": leaf(3), "kernel": leaf(5, 3)},
        }

    w_init, w_final = tree(), tree()
    mask = {
        "fc1": {"bias": np.ones(5, bool), "kernel": draw(hnp.arrays(np.bool_, (6, 5)))},
        "out": {"bias": np.ones(3, bool), "kernel": draw(hnp.arrays(np.bool_, (5, 3)))},
    }
    return w_init, mask, w_final, jax.random.key(draw(st.integers(0, 2**31 - 1)))


def kernels(*trees: Any):
    """(path, leaf of each tree) for the two prunable kernels."""
    for layer in ("fc1", "out"):
        yield layer, *(np.asarray(t[layer]["kernel"]) for t in trees)


SIGNED = ("rewind", "signed_reinit", "signed_reshuffle", "signed_constant")


@given(case=tickets())
def test_signed_resets_keep_every_sign(case) -> None:
    w_init, mask, _, _ = case
    out = run(*case)["kept"]
    for name in (*SIGNED, *(f"{n}_rescaled" for n in SIGNED)):
        for layer, got, w, m in kernels(out[name], w_init, mask):
            np.testing.assert_array_equal(np.sign(got[m]), np.sign(w[m]), f"{name} {layer}")
            np.testing.assert_array_equal(got[~m], w[~m], f"{name} {layer}")


@given(case=tickets())
def test_reshuffles_keep_the_kept_multiset(case) -> None:
    w_init, mask, _, _ = case
    out = run(*case)["kept"]
    for layer, got, signed, w, m in kernels(
        out["reshuffle"], out["signed_reshuffle"], w_init, mask
    ):
        np.testing.assert_array_equal(np.sort(got[m]), np.sort(w[m]), layer)
        np.testing.assert_array_equal(np.sort(np.abs(signed[m])), np.sort(np.abs(w[m])), layer)
        np.testing.assert_array_equal(got[~m], w[~m], layer)


@given(case=tickets())
def test_reinit_keeps_the_leaf_multiset(case) -> None:
    w_init, mask, w_final, key = case
    full = jax.tree.map(lambda m: np.ones_like(m), mask)
    dense = run(w_init, full, w_final, key)["kept"]
    masked = run(*case)["kept"]
    for layer, got, got_masked, w, m in kernels(dense["reinit"], masked["reinit"], w_init, mask):
        np.testing.assert_array_equal(np.sort(got.ravel()), np.sort(w.ravel()), layer)
        # Under a mask, the kept values are a sub-multiset of the leaf's values.
        extra = collections.Counter(got_masked[m].tolist()) - collections.Counter(
            w.ravel().tolist()
        )
        assert not extra, layer


@given(case=tickets())
def test_constants_have_the_leaf_std_and_signs(case) -> None:
    w_init, mask, w_final, key = case
    masked = run(*case)["kept"]
    dense = run(w_init, jax.tree.map(np.ones_like, mask), w_final, key)["kept"]
    for layer, const, signed, const_dense, w, m in kernels(
        masked["constant"], masked["signed_constant"], dense["constant"], w_init, mask
    ):
        w64 = w.astype(np.float64)
        alpha = np.std(w64)
        if alpha <= 1e-6 * np.abs(w64).max(initial=0.0):  # one repeated value: its magnitude
            alpha = np.abs(w64).mean()
        for got in (const, signed):
            assert len(set(np.abs(got[m]).tolist())) <= 1, layer  # one magnitude per leaf
            np.testing.assert_allclose(np.abs(got[m]), alpha, rtol=1e-6, err_msg=layer)
        # random signs, in w_i's proportion
        assert (const_dense > 0).sum() == (w > 0).sum(), layer
        assert (const_dense < 0).sum() == (w < 0).sum(), layer


@given(case=tickets())
def test_rescaled_is_base_times_size_over_kept(case) -> None:
    w_init, mask, _, _ = case
    out = run(*case)["kept"]
    for base in BASES:
        for layer, got, plain, w, m in kernels(out[f"{base}_rescaled"], out[base], w_init, mask):
            factor = m.size / max(int(m.sum()), 1)
            np.testing.assert_allclose(got[m], plain[m] * factor, rtol=1e-6, err_msg=base)
            np.testing.assert_array_equal(got[~m], w[~m], f"{base} {layer}")


@given(case=tickets())
def test_variants_and_random_control_semantics(case) -> None:
    w_init, mask, w_final, _ = case
    out = run(*case)
    frozen, kept = out["pruned"], out["kept"]
    v2_start, v2_frozen = out["reset"]["signed_constant_rescaled+freeze_init_zero_all"]
    rnd_start, rnd_frozen = out["reset"]["reshuffle+freeze_init_zero_random"]
    for layer, wi, wf, m, sc in kernels(w_init, w_final, mask, kept["signed_constant_rescaled"]):
        toward = np.abs(wi) > np.abs(wf)
        f = {p: np.asarray(frozen[p][layer]["kernel"]) for p in PRUNED}
        np.testing.assert_array_equal(f["zero"], 0.0)
        np.testing.assert_array_equal(f["freeze_init"], np.where(m, 0.0, wi))
        variant_1 = np.where(m | toward, 0.0, wi)
        np.testing.assert_array_equal(f["freeze_init_zero_mask"], variant_1)
        np.testing.assert_array_equal(f["freeze_init_zero_all"], variant_1)
        # Variant 2 also starts every kept weight that moved toward zero at 0.
        np.testing.assert_array_equal(v2_frozen[layer]["kernel"], variant_1)
        want = np.where(m, np.where(toward, 0.0, sc), variant_1)
        np.testing.assert_array_equal(v2_start[layer]["kernel"], want)
        # The control: as many zeros as Variant 1, at pruned positions only; w_i elsewhere.
        rnd = f["freeze_init_zero_random"]
        zeroed = ~m & (rnd == 0)
        assert zeroed.sum() == (~m & toward).sum(), layer
        np.testing.assert_array_equal(rnd[~m & ~zeroed], wi[~m & ~zeroed])
        np.testing.assert_array_equal(rnd[m], 0.0)
        r_start, r_frozen = rnd_start[layer]["kernel"], rnd_frozen[layer]["kernel"]
        assert (~m & (r_frozen == 0)).sum() == (~m & toward).sum(), layer
        np.testing.assert_array_equal(r_start[~m], r_frozen[~m])
        np.testing.assert_array_equal(np.sort(r_start[m]), np.sort(wi[m]))  # reshuffled
    for params, _ in out["reset"].values():  # biases are never reset
        for layer in ("fc1", "out"):
            np.testing.assert_array_equal(params[layer]["bias"], w_init[layer]["bias"])


# --- jit, vmap over tickets, no retracing ----------------------------------------------------


def test_vmap_over_tickets_equals_each_ticket_and_nothing_retraces() -> None:
    stacked = [helpers.stack([ticket(s)[i] for s in SEEDS]) for i in range(3)]
    keys = jnp.stack([ticket(s)[3] for s in SEEDS])
    counter = helpers.TraceCounter(jax.vmap(everything))
    batched_fn = jax.jit(counter.fn)
    batched = jax.device_get(batched_fn(*stacked, keys))
    for i, seed in enumerate(SEEDS):
        want = results(seed)  # every name, unbatched under jit (checked against numpy above)
        assert jax.tree.structure(helpers.unstack(batched, i)) == jax.tree.structure(want)
        for (path, got), (_, w) in zip(
            paths_and_leaves(helpers.unstack(batched, i)), paths_and_leaves(want), strict=True
        ):
            np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7, err_msg=path)
    other_masks = jax.tree.map(np.logical_not, stacked[1])
    batched_fn(stacked[0], other_masks, stacked[2], jax.random.split(jax.random.key(99), 3))
    assert counter.traces == 1
    # Unbatched: every ticket of this module (new keys, masks and weights, the hypothesis
    # examples included) ran through the one compiled program.
    for seed in (20, 21):
        run(*ticket(seed))
    assert TRACES.traces == 1


# --- errors -----------------------------------------------------------------------------------


def test_unknown_names_list_the_choices() -> None:
    w, m, _, key = ticket(0)
    with pytest.raises(
        ValueError, match=r"unknown kept reset 'bogus'; expected one of: constant, "
    ):
        reset.reset_kept("bogus", w, m, key=key)
    with pytest.raises(ValueError, match=r"unknown pruned value 'bogus'; expected one of: "):
        reset.pruned_values("bogus", w, m)
    with pytest.raises(ValueError, match=r"unknown kept reset 'rewnd'.*rewind_rescaled"):
        reset.reset(w, m, kept="rewnd")
    with pytest.raises(ValueError, match=r"unknown pruned value 'freeze'.*freeze_init_zero_all"):
        reset.needs("rewind", "freeze")


def test_missing_inputs_say_who_needs_them() -> None:
    w, m, wf, key = ticket(0)
    with pytest.raises(ValueError, match=r"key is required by kept reset 'reinit'"):
        reset.reset_kept("reinit", w, m)
    with pytest.raises(
        ValueError, match=r"w_final is required by pruned value 'freeze_init_zero_mask'"
    ):
        reset.pruned_values("freeze_init_zero_mask", w, m)
    with pytest.raises(
        ValueError, match=r"key is required by kept='rewind', pruned='freeze_init_zero_random'"
    ):
        reset.reset(w, m, pruned="freeze_init_zero_random", w_final=wf)
    with pytest.raises(
        ValueError, match=r"w_final is required by kept='reinit', pruned='freeze_init_zero_all'"
    ):
        reset.reset(w, m, kept="reinit", pruned="freeze_init_zero_all", key=key)


def test_bad_trees_and_keys_name_the_path() -> None:
    w, m, wf, key = ticket(0)
    no_out = {"fc1": m["fc1"]}
    with pytest.raises(ValueError, match=r"mask must have exactly the structure of params"):
        reset.reset_kept("rewind", w, no_out)
    bad_shape = {**m, "fc1": {**m["fc1"], "kernel": np.ones((5, 6), bool)}}
    with pytest.raises(ValueError, match=r"mask\['fc1'\]\['kernel'\] has shape \[5, 6\]"):
        reset.reset(w, bad_shape)
    as_float = jax.tree.map(lambda x: x.astype(np.float32), m)
    with pytest.raises(ValueError, match=r"mask\['fc1'\]\['bias'\] must be a bool array"):
        reset.pruned_values("zero", w, as_float)
    wf_bad = {**wf, "out": {**wf["out"], "kernel": np.ones((3, 5), np.float32)}}
    with pytest.raises(ValueError, match=r"w_final\['out'\]\['kernel'\] has shape \[3, 5\]"):
        reset.reset(w, m, pruned="freeze_init_zero_mask", w_final=wf_bad)
    ints = jax.tree.map(lambda x: x.astype(np.int32), w)
    with pytest.raises(ValueError, match=r"w_init\['fc1'\]\['bias'\] must be a float array"):
        reset.reset_kept("rewind", ints, m)
    with pytest.raises(ValueError, match=r"key must be a typed PRNG key.*uint32\[2\]"):
        reset.reset_kept("reinit", w, m, key=jnp.zeros(2, jnp.uint32))
    with pytest.raises(
        ValueError, match=r"key must be a single key \(shape \[\]\), got shape \[3\]"
    ):
        reset.reset(w, m, kept="reinit", key=jax.random.split(key, 3))


def _with(tree: dict, layer: str, leaf: str, index: tuple[int, ...], value: float) -> dict:
    """A copy of ``tree`` with one entry set to ``value``."""
    out = jax.tree.map(np.array, tree)
    out[layer][leaf][index] = value
    return out


@pytest.mark.parametrize(
    "call",
    [
        lambda w, m, key: reset.reset(w, m, kept="signed_constant"),
        lambda w, m, key: reset.reset_kept("reinit", w, m, key=key),
        lambda w, m, key: reset.pruned_values("freeze_init", w, m),
    ],
    ids=["reset", "reset_kept", "pruned_values"],
)
def test_non_finite_w_init_is_refused_naming_the_leaf(call) -> None:
    w, m, _, key = ticket(0)
    nan = _with(w, "fc1", "kernel", (2, 3), np.nan)
    with pytest.raises(
        ValueError,
        match=re.escape("w_init['fc1']['kernel'] holds 1 NaN and 0 infinite value(s) of 30"),
    ):
        call(nan, m, key)
    inf = jax.tree.map(jnp.asarray, _with(w, "out", "kernel", (0, 1), -np.inf))  # on the device
    with pytest.raises(
        ValueError, match=re.escape("w_init['out']['kernel'] holds 0 NaN and 1 infinite")
    ):
        call(inf, m, key)


@pytest.mark.parametrize(
    "call",
    [
        lambda w, m, wf: reset.reset(w, m, kept="fine_tune", w_final=wf),
        lambda w, m, wf: reset.reset_kept("fine_tune", w, m, w_final=wf),
        lambda w, m, wf: reset.pruned_values("freeze_init_zero_mask", w, m, w_final=wf),
    ],
    ids=["reset", "reset_kept", "pruned_values"],
)
def test_non_finite_w_final_is_refused_naming_the_leaf(call) -> None:
    w, m, wf, _ = ticket(0)
    with pytest.raises(
        ValueError,
        match=re.escape("w_final['out']['bias'] holds 0 NaN and 1 infinite value(s) of 3"),
    ):
        call(w, m, _with(wf, "out", "bias", (1,), np.inf))


def test_traced_non_finite_weights_pass_unchecked() -> None:
    # The documented fallback: under jit the values are tracers, so a NaN passes through — here
    # into every kept weight of its leaf, through the leaf's std — and other leaves are unharmed.
    w, m, _, _ = ticket(0)
    nan = _with(w, "fc1", "kernel", (2, 3), np.nan)
    out = jax.jit(lambda ww, mm: reset.reset_kept("signed_constant", ww, mm))(nan, m)
    kept = np.asarray(m["fc1"]["kernel"])
    assert np.isnan(np.asarray(out["fc1"]["kernel"])[kept]).all()
    assert np.isfinite(np.asarray(out["out"]["kernel"])).all()
