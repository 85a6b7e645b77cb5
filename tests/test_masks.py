"""Masks against numpy: counts and densities, prunability specs, bit packing, mask comparisons."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TraceCounter, random_params, stack, unstack
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune import masks

PATHS = ["['fc1']['bias']", "['fc1']['kernel']", "['out']['bias']", "['out']['kernel']"]


def random_mask(params: dict, seed: int, density: float = 0.5) -> dict:
    """Random bool mask over every leaf (biases too, to exercise the counting)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.random(np.shape(p)) < density), params)


def np_leaves(tree: dict) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --- construction and measures ------------------------------------------------------------------


def test_ones_mirrors_params():
    params = random_params(0)
    m = masks.ones(params)
    assert jax.tree.structure(m) == jax.tree.structure(params)
    for p, leaf in zip(jax.tree.leaves(params), jax.tree.leaves(m), strict=True):
        assert leaf.dtype == jnp.bool_ and leaf.shape == p.shape and bool(leaf.all())
    masks.validate(m, params)  # does not raise
    traced = jax.jit(masks.ones)(params)
    assert jax.tree.structure(traced) == jax.tree.structure(params)


def test_apply_count_density_sparsity_match_numpy():
    params = random_params(1)
    m = random_mask(params, 2, density=0.4)
    out = masks.apply(params, m)
    for p, mk, o in zip(np_leaves(params), np_leaves(m), np_leaves(out), strict=True):
        np.testing.assert_array_equal(o, np.where(mk, p, 0.0))
    kept = sum(int(x.sum()) for x in np_leaves(m))
    size = sum(x.size for x in np_leaves(m))
    assert int(masks.count(m)) == kept
    assert masks.count(m).dtype == jnp.int32
    assert float(masks.density(m)) == pytest.approx(kept / size, rel=1e-6)
    assert float(masks.sparsity(m)) == pytest.approx(1 - kept / size, rel=1e-6)
    assert int(masks.count({})) == 0


def test_apply_zeroes_exactly_even_nonfinite_weights():
    # where(M, θ, 0) rather than θ·M: a pruned inf/NaN must become 0, not NaN.
    out = masks.apply(
        {"w": jnp.array([jnp.inf, jnp.nan, 2.0])}, {"w": jnp.array([False, False, True])}
    )
    np.testing.assert_array_equal(out["w"], [0.0, 0.0, 2.0])


def test_density_of_an_empty_tree_raises():
    with pytest.raises(ValueError, match="no entries"):
        masks.density({})


def test_layer_density_and_summary_match_numpy():
    params = random_params(3)
    m = random_mask(params, 4, density=0.3)
    per_leaf = masks.layer_density(m)
    assert list(per_leaf) == PATHS
    for path, leaf in zip(PATHS, np_leaves(m), strict=True):
        assert float(per_leaf[path]) == pytest.approx(leaf.mean(), rel=1e-6)

    leaves = dict(zip(PATHS, np_leaves(m), strict=True))
    kernels = [leaves["['fc1']['kernel']"], leaves["['out']['kernel']"]]
    s = masks.summary(m)
    assert s["kept"] == sum(int(x.sum()) for x in leaves.values())
    assert s["size"] == 6 * 5 + 5 + 5 * 3 + 3
    assert s["density"] == pytest.approx(s["kept"] / s["size"], rel=1e-6)
    assert s["prunable_kept"] == sum(int(k.sum()) for k in kernels)
    assert s["prunable_size"] == 30 + 15
    assert s["prunable_density"] == pytest.approx(s["prunable_kept"] / 45, rel=1e-6)
    assert s["layers"] == pytest.approx({p: float(x.mean()) for p, x in leaves.items()})
    assert all(isinstance(v, float) for v in s["layers"].values())

    only_out = masks.summary(m, prunable="out")  # both of out's leaves match the regex
    assert only_out["prunable_size"] == 15 + 3
    nothing = masks.summary(m, prunable=lambda path, leaf: False)
    assert nothing["prunable_density"] == 1.0 and nothing["prunable_size"] == 0


# --- which leaves are prunable ------------------------------------------------------------------


def flags_of(tree: dict) -> list[bool]:
    return jax.tree.leaves(tree)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, [False, True, False, True]),
        ("kernel", [False, True, False, True]),
        ("fc1", [True, True, False, False]),
        (r"out.*kernel", [False, False, False, True]),
        (["fc1.*kernel", "out.*bias"], [False, True, True, False]),
        (("bias",), [True, False, True, False]),
        (lambda path, leaf: leaf.shape[-1] == 5, [True, True, False, False]),
        (masks.rule(exclude="out"), [False, True, False, False]),
        (masks.rule(include="bias", exclude="fc1"), [False, False, True, False]),
        (masks.rule(include=["fc1", "out"], exclude=["bias"]), [False, True, False, True]),
        (masks.rule(), [False, True, False, True]),
        (
            {"fc1": {"kernel": True, "bias": False}, "out": {"kernel": False, "bias": True}},
            [False, True, True, False],
        ),
    ],
)
def test_is_prunable_specs(spec, expected):
    params = random_params(0)
    got = masks.is_prunable(params, spec)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    assert flags_of(got) == expected
    assert all(type(f) is bool for f in flags_of(got))
    # The same flags, worked out by hand over the paths.
    assert list(masks.prunable_leaves(params, spec)) == [
        p for p, e in zip(PATHS, expected, strict=True) if e
    ]


def test_is_prunable_default_rule_is_ndim_at_least_two():
    params = {
        "conv": jnp.ones((3, 3, 2, 4)),
        "s": jnp.ones(()),
        "v": jnp.ones(7),
        "m": jnp.ones((1, 1)),
    }
    assert masks.is_prunable(params) == {"conv": True, "s": False, "v": False, "m": True}


class Box:
    """A pytree node with a ``.value`` attribute, flattened the way Flax NNX state is."""

    def __init__(self, value):
        self.value = value


jax.tree_util.register_pytree_with_keys(
    Box,
    lambda b: (((jax.tree_util.GetAttrKey("value"), b.value),), None),
    lambda _, xs: Box(xs[0]),
)


def test_is_prunable_sees_flax_nnx_style_paths():
    # NNX state flattens to paths like "['fc1']['kernel'].value"; regexes are searched, not matched.
    params = {"fc1": {"kernel": Box(jnp.ones((2, 2))), "bias": Box(jnp.ones(2))}}
    assert list(masks.prunable_leaves(params, r"kernel'\]\.value$")) == ["['fc1']['kernel'].value"]
    assert list(masks.prunable_leaves(params)) == ["['fc1']['kernel'].value"]


def test_is_prunable_bool_tree_errors_name_the_problem():
    params = random_params(0)
    with pytest.raises(ValueError, match=re.escape("['out']['bias']")):
        masks.is_prunable(params, {"fc1": {"kernel": True, "bias": False}, "out": {"kernel": True}})
    bad = {"fc1": {"kernel": True, "bias": False}, "out": {"kernel": 1, "bias": True}}
    with pytest.raises(ValueError, match=re.escape("prunable['out']['kernel']")):
        masks.is_prunable(params, bad)


# --- packing ------------------------------------------------------------------------------------

shapes = st.lists(st.integers(1, 13), min_size=0, max_size=3).map(tuple)


@settings(max_examples=10)  # every new shape compiles pack/unpack anew
@given(shape_a=shapes, shape_b=shapes, seed=st.integers(0, 2**16), p=st.floats(0, 1))
def test_pack_unpack_round_trip_at_one_bit_per_weight(shape_a, shape_b, seed, p):
    rng = np.random.default_rng(seed)
    m = {"a": jnp.asarray(rng.random(shape_a) < p), "b": [jnp.asarray(rng.random(shape_b) < p)]}
    packed = masks.pack(m)
    for leaf, bits in zip(jax.tree.leaves(m), jax.tree.leaves(packed), strict=True):
        n = math.prod(leaf.shape)
        assert bits.dtype == jnp.uint8 and bits.shape == ((n + 7) // 8,)
        # Row-major, most significant bit first: the same bytes as numpy's packbits.
        np.testing.assert_array_equal(bits, np.packbits(np.asarray(leaf).ravel()))
    back = masks.unpack(packed, m)
    for leaf, got in zip(jax.tree.leaves(m), jax.tree.leaves(back), strict=True):
        assert got.dtype == jnp.bool_ and got.shape == leaf.shape
        np.testing.assert_array_equal(got, leaf)


def test_pack_handles_empty_and_scalar_leaves():
    m = {"empty": jnp.zeros((0, 3), bool), "scalar": jnp.array(True)}
    packed = masks.pack(m)
    assert packed["empty"].shape == (0,) and packed["scalar"].tolist() == [128]
    back = masks.unpack(packed, m)
    assert back["empty"].shape == (0, 3) and bool(back["scalar"]) is True


def test_pack_and_unpack_errors():
    with pytest.raises(ValueError, match=r"mask\['w'\].*float32"):
        masks.pack({"w": jnp.ones(3)})
    m = {"w": jnp.ones((3, 5), bool)}
    with pytest.raises(ValueError, match=r"\[2\].*\[3, 5\]"):
        masks.unpack({"w": jnp.zeros(3, jnp.uint8)}, m)
    with pytest.raises(ValueError, match="packed"):
        masks.unpack({"v": jnp.zeros(2, jnp.uint8)}, m)


def test_pack_and_unpack_under_jit():
    m = random_mask(random_params(0), 5)
    back = jax.jit(lambda mm: masks.unpack(masks.pack(mm), mm))(m)
    for a, b in zip(np_leaves(m), np_leaves(back), strict=True):
        np.testing.assert_array_equal(a, b)


# --- comparisons --------------------------------------------------------------------------------


def kept_set(m: dict) -> set[tuple[int, int]]:
    return {(i, j) for i, leaf in enumerate(np_leaves(m)) for j in np.flatnonzero(leaf.ravel())}


def set_measures(a: dict, b: dict) -> tuple[float, float, float]:
    sa, sb = kept_set(a), kept_set(b)
    n = sum(x.size for x in np_leaves(a))
    small = min(len(sa), len(sb))
    over = len(sa & sb) / small if small else 1.0  # an empty set lies inside any set
    union = sa | sb
    jac = len(sa & sb) / len(union) if union else 1.0
    return over, jac, len(sa ^ sb) / n


@given(seed=st.integers(0, 2**16), da=st.sampled_from([0.0, 0.1, 0.5, 1.0]), db=st.floats(0, 1))
def test_overlap_jaccard_hamming_match_set_formulas(seed, da, db):
    params = random_params(0)
    a = random_mask(params, seed, da)
    b = random_mask(params, seed + 1, db)
    over, jac, ham = set_measures(a, b)
    assert float(masks.overlap(a, b)) == pytest.approx(over, rel=1e-6)
    assert float(masks.jaccard(a, b)) == pytest.approx(jac, rel=1e-6)
    assert float(masks.hamming(a, b)) == pytest.approx(ham, rel=1e-6)


def test_comparisons_by_hand_including_empty_masks():
    a = {"w": jnp.array([True, True, False, False])}
    b = {"w": jnp.array([True, False, True, False])}
    empty = {"w": jnp.zeros(4, bool)}
    assert float(masks.overlap(a, b)) == 0.5  # 1 shared / min(2, 2)
    assert float(masks.jaccard(a, b)) == pytest.approx(1 / 3)  # 1 shared / 3 in the union
    assert float(masks.hamming(a, b)) == 0.5  # 2 of 4 differ
    assert float(masks.jaccard(empty, empty)) == 1.0
    assert float(masks.overlap(empty, empty)) == 1.0
    assert float(masks.hamming(empty, empty)) == 0.0
    assert float(masks.jaccard(a, empty)) == 0.0
    assert float(masks.hamming(a, empty)) == 0.5
    assert float(masks.overlap(a, a)) == 1.0 and float(masks.jaccard(a, a)) == 1.0


def test_comparisons_reject_masks_of_different_shapes():
    with pytest.raises(ValueError, match=r"b\['w'\] has shape \[3\].*a\['w'\] has shape \[4\]"):
        masks.jaccard({"w": jnp.ones(4, bool)}, {"w": jnp.ones(3, bool)})


# --- boundary errors ----------------------------------------------------------------------------


def test_structure_mismatch_names_the_first_differing_path():
    params = random_params(0)
    m = masks.ones(params)
    del m["out"]["bias"]
    for call in (lambda: masks.validate(m, params), lambda: masks.apply(params, m)):
        with pytest.raises(ValueError, match="structure") as err:
            call()
        msg = str(err.value)
        # Flattening order: fc1/bias, fc1/kernel, out/bias, out/kernel -> leaf #2 differs first.
        assert "leaf #2" in msg and "params has ['out']['bias']" in msg
        assert "mask has ['out']['kernel']" in msg


def test_renamed_leaf_is_named():
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=re.escape("['c']")):
        masks.validate({"a": jnp.ones((2, 2), bool), "c": jnp.ones(2, bool)}, params)


def test_shape_mismatch_names_the_path_and_both_shapes():
    params = random_params(0)
    m = masks.ones(params)
    m["fc1"]["kernel"] = jnp.ones((5, 6), bool)
    for call in (lambda: masks.validate(m, params), lambda: masks.apply(params, m)):
        with pytest.raises(ValueError) as err:
            call()
        assert "mask['fc1']['kernel'] has shape [5, 6]" in str(err.value)
        assert "params['fc1']['kernel'] has shape [6, 5]" in str(err.value)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.uint8])
def test_non_bool_mask_names_the_path_and_dtype(dtype):
    params = random_params(0)
    m = masks.ones(params)
    m["out"]["kernel"] = jnp.ones((5, 3), dtype)
    for call in (lambda: masks.validate(m, params), lambda: masks.apply(params, m)):
        with pytest.raises(
            ValueError, match=re.escape("mask['out']['kernel'] must be a bool")
        ) as err:
            call()
        assert np.dtype(dtype).name in str(err.value)


# --- jit and vmap over tickets ------------------------------------------------------------------


def test_measures_under_jit_do_not_retrace_when_the_mask_changes():
    params = random_params(0)

    def measures(params, a, b):
        return (
            masks.count(a),
            masks.density(a),
            masks.sparsity(a),
            masks.layer_density(a),
            masks.overlap(a, b),
            masks.jaccard(a, b),
            masks.hamming(a, b),
            masks.apply(params, a),
        )

    counter = TraceCounter(measures)
    f = jax.jit(counter.fn)
    for seed in range(3):
        a, b = random_mask(params, seed, 0.3 + 0.2 * seed), random_mask(params, seed + 10)
        got = f(params, a, b)
        want = measures(params, a, b)  # eager
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6)
        assert float(got[1]) == pytest.approx(
            np.mean(np.concatenate([x.ravel() for x in np_leaves(a)]))
        )
    assert counter.traces == 1


def test_measures_under_jit_vmap_are_per_ticket():
    params = random_params(0)
    a = [random_mask(params, s, d) for s, d in [(0, 0.1), (1, 0.5), (2, 0.9)]]
    b = [random_mask(params, s + 5, 0.5) for s in range(3)]

    def measures(x, y):
        return {
            "count": masks.count(x),
            "density": masks.density(x),
            "prunable": masks.density(masks.prunable_leaves(x)),
            "layers": masks.layer_density(x),
            "overlap": masks.overlap(x, y),
            "jaccard": masks.jaccard(x, y),
            "hamming": masks.hamming(x, y),
            "apply": masks.apply(params, x),
        }

    batched = jax.jit(jax.vmap(measures))(stack(a), stack(b))
    for i in range(3):
        got = unstack(batched, i)
        leaves = np_leaves(a[i])
        over, jac, ham = set_measures(a[i], b[i])
        assert int(got["count"]) == sum(int(x.sum()) for x in leaves)
        assert float(got["density"]) == pytest.approx(
            np.concatenate([x.ravel() for x in leaves]).mean(), rel=1e-6
        )
        assert float(got["prunable"]) == pytest.approx(
            np.concatenate([leaves[1].ravel(), leaves[3].ravel()]).mean(), rel=1e-6
        )
        for path, leaf in zip(PATHS, leaves, strict=True):
            assert float(got["layers"][path]) == pytest.approx(leaf.mean(), rel=1e-6)
        assert float(got["overlap"]) == pytest.approx(over, rel=1e-6)
        assert float(got["jaccard"]) == pytest.approx(jac, rel=1e-6)
        assert float(got["hamming"]) == pytest.approx(ham, rel=1e-6)
        for p, mk, o in zip(np_leaves(params), leaves, np_leaves(got["apply"]), strict=True):
            np.testing.assert_array_equal(o, np.where(mk, p, 0.0))
