"""Param and FLOP counts against hand arithmetic: MLPs, Conv-2, strided/grouped convs, masks, ResNet-20."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import stack
from jax import lax

from jaxprune import masks, metrics, models

K = ".value"  # NNX state paths end in .value: "['fc1']['kernel'].value"
NHWC = ("NHWC", "HWIO", "NHWC")


def kernel(name: str) -> str:
    return f"['{name}']['kernel']{K}"


def mask_where(params: Any, keep: dict[str, Callable[[tuple[int, ...]], np.ndarray]]) -> Any:
    """All-True mask, except leaves whose path contains a key of ``keep``: ``keep[key](shape)``."""

    def one(path: Any, leaf: Any) -> jax.Array:
        name = jax.tree_util.keystr(path)
        for key, fn in keep.items():
            if key in name:
                return jnp.asarray(fn(np.shape(leaf)), dtype=bool)
        return jnp.ones(np.shape(leaf), bool)

    return jax.tree_util.tree_map_with_path(one, params)


def mlp_fn(name: str, input_shape: tuple[int, ...], **kwargs: Any) -> tuple[Any, Any]:
    net = models.build(name, input_shape=input_shape, num_classes=10, **kwargs)
    apply_fn, params, _ = models.functional(net)
    return apply_fn, params


# --- dense counts of the paper models, by hand -------------------------------------------------


@pytest.mark.parametrize(
    ("input_shape", "n_in"), [((28, 28, 1), 28 * 28), ((8, 8, 1), 8 * 8)], ids=["mnist", "digits"]
)
def test_lenet_300_100_macs_by_hand(input_shape: tuple[int, ...], n_in: int) -> None:
    apply_fn, params = mlp_fn("lenet300_100", input_shape)
    macs = metrics.layer_macs(apply_fn, params, input_shape)
    assert macs == {kernel("fc1"): n_in * 300, kernel("fc2"): 300 * 100, kernel("out"): 100 * 10}
    assert sum(macs.values()) == (784 * 300 + 300 * 100 + 100 * 10 if n_in == 784 else 50_200)
    assert all(isinstance(v, int) for v in macs.values())
    flops = metrics.layer_flops(apply_fn, params, input_shape)
    assert flops == {k: 2 * v for k, v in macs.items()}


def test_conv2_cifar_macs_by_hand() -> None:
    # conv1, conv2: 3×3 SAME at 32×32 (3→64, 64→64); 2×2 VALID max-pool → 16×16×64 → 256 → 256 → 10.
    apply_fn, params = mlp_fn("conv2", (32, 32, 3))
    macs = metrics.layer_macs(apply_fn, params, (32, 32, 3))
    assert macs == {
        kernel("conv1"): 32 * 32 * 64 * (3 * 3 * 3),
        kernel("conv2"): 32 * 32 * 64 * (3 * 3 * 64),
        kernel("fc1"): (16 * 16 * 64) * 256,
        kernel("fc2"): 256 * 256,
        kernel("out"): 256 * 10,
    }
    assert sum(macs.values()) == 1_769_472 + 37_748_736 + 4_194_304 + 65_536 + 2_560


def test_resnet20_cifar_macs_by_hand() -> None:
    if "resnet20" not in models.names():  # pragma: no cover - until the CIFAR ResNet lands
        pytest.skip("resnet20 is not registered yet")
    # Option-A shortcuts (the model's docstring): no 1×1 projection convs; BN and pooling uncounted.
    net = models.build("resnet20", input_shape=(32, 32, 3), num_classes=10)
    stateful_fn, params, model_state = models.stateful(net)

    def apply_fn(p: Any, x: jax.Array) -> jax.Array:
        return stateful_fn(p, model_state, x, train=False)[0]

    macs = metrics.layer_macs(apply_fn, params, (32, 32, 3))
    stem = 32 * 32 * 16 * (3 * 3 * 3)  # 442,368
    stage1 = 6 * 32 * 32 * 16 * (3 * 3 * 16)  # 6 × 2,359,296
    stage2 = 16 * 16 * 32 * (3 * 3 * 16) + 5 * 16 * 16 * 32 * (3 * 3 * 32)  # stride-2 first conv
    stage3 = 8 * 8 * 64 * (3 * 3 * 32) + 5 * 8 * 8 * 64 * (3 * 3 * 64)
    linear = 64 * 10
    assert sum(macs.values()) == stem + stage1 + stage2 + stage3 + linear == 40_551_040
    assert macs["['stem']['conv']['kernel'].value"] == stem
    assert macs["['stage2']['block0']['conv1']['kernel'].value"] == 16 * 16 * 32 * 3 * 3 * 16
    assert macs["['stage3']['block2']['conv2']['kernel'].value"] == 8 * 8 * 64 * 3 * 3 * 64
    assert len(macs) == 1 + 18 + 1 and metrics.NO_PARAM not in macs

    def train_fn(p: Any, x: jax.Array) -> jax.Array:  # batch statistics: reductions, no MACs
        return stateful_fn(p, model_state, x, train=True)[0]

    assert metrics.layer_macs(train_fn, params, (32, 32, 3)) == macs


# --- convolutions and attribution in hand-written programs --------------------------------------


def strided_then_grouped(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    h = lax.conv_general_dilated(x, p["a"], (2, 2), "VALID", dimension_numbers=NHWC)
    return lax.conv_general_dilated(
        h, p["g"], (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=3
    )


def test_strided_valid_and_grouped_conv_by_hand() -> None:
    # a: 9×9×4 → 3×3 stride 2 VALID → floor((9 − 3) / 2) + 1 = 4 → 4×4×6.
    # g: 3 groups of 6 / 3 = 2 input channels, 9 outputs, SAME → 4×4×9.
    params = {"a": jnp.ones((3, 3, 4, 6)), "g": jnp.ones((3, 3, 2, 9))}
    macs = metrics.layer_macs(strided_then_grouped, params, (9, 9, 4))
    # out_h·out_w·out_c·k_h·k_w·in_c/groups
    assert macs == {"['a']": 4 * 4 * 6 * 3 * 3 * 4 // 1, "['g']": 4 * 4 * 9 * 3 * 3 * 6 // 3}


def test_conv_count_does_not_depend_on_layout() -> None:
    def nchw(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:  # kernel (out, in, h, w)
        dn = ("NCHW", "OIHW", "NCHW")
        return lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=dn)

    macs = metrics.layer_macs(nchw, {"w": jnp.ones((8, 3, 5, 5))}, (3, 10, 12))
    assert macs == {"['w']": 10 * 12 * 8 * 5 * 5 * 3}


def test_weights_are_traced_through_reshape_cast_transpose_and_masking() -> None:
    m = jnp.arange(12).reshape(4, 3) % 2 == 0

    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        w = jnp.where(m, p["w"], 0.0).T.reshape(3, 4).astype(jnp.bfloat16)  # stored (4, 3)
        h = x.astype(jnp.bfloat16) @ w.T.reshape(4, 3)  # 4·3
        v = p["v"] * p["g"][None, :] / jnp.linalg.norm(p["v"])  # weight norm: charged to v
        return (h.astype(jnp.float32) @ v) * p["s"]  # 3·5; the scale s is elementwise

    params = {"w": jnp.ones((4, 3)), "v": jnp.ones((3, 5)), "g": jnp.ones(5), "s": jnp.ones(())}
    assert metrics.layer_macs(apply_fn, params, (4,)) == {"['v']": 3 * 5, "['w']": 4 * 3}


def test_ops_without_a_param_are_reported_apart() -> None:
    const = jnp.ones((3, 3))

    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = x @ p["w"]  # (1, 5) @ (5, 3): 15
        gram = h.T @ h  # activation × activation, (3, 1) @ (1, 3): 9 outputs × 1
        return (h @ const) + (h @ gram)  # constant kernel: 9; activation × activation: 9

    macs = metrics.layer_macs(apply_fn, {"w": jnp.ones((5, 3))}, (5,))
    assert macs == {"['w']": 5 * 3, metrics.NO_PARAM: 3 * 3 * 1 + 3 * 3 + 3 * 3}
    masked = metrics.layer_macs(
        apply_fn, {"w": jnp.ones((5, 3))}, (5,), mask={"w": jnp.eye(5, 3) > 0}
    )
    assert masked == {"['w']": 5 * 3 * 3 / 15, metrics.NO_PARAM: 27.0}  # NO_PARAM stays dense


def test_sub_programs_scan_loops_checkpoint_and_cond() -> None:
    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = jax.jit(lambda a: a @ p["w"])(x)  # 4·4
        h = jax.checkpoint(lambda a: a @ p["w"])(h)  # 4·4
        h = lax.scan(lambda c, _: (c @ p["w"], None), h, None, length=3)[0]  # 3 × 4·4
        h = lax.fori_loop(0, 2, lambda i, c: c @ p["v"], h)  # static bounds: a scan, 2 × 4·4
        stacked = jnp.stack([p["w"], p["v"]])  # a scan over stacked weights: 2 × 4·4 to w and v
        h = lax.scan(lambda c, w: (c @ w, None), h, stacked)[0]
        # cond: the more expensive branch counts (4·4 + 4·4 against 0)
        return lax.cond(x.sum() > 0, lambda a: a @ p["w"] @ p["w"], lambda a: a, h)

    params = {"w": jnp.ones((4, 4)), "v": jnp.ones((4, 4))}
    macs = metrics.layer_macs(apply_fn, params, (4,))
    # stacked = stack([w, v]) is computed from both; equal sizes: charged to the first leaf, v.
    assert macs == {"['v']": 16 * (2 + 2), "['w']": 16 * (1 + 1 + 3 + 2)}


def test_scan_carry_that_becomes_an_activation_is_tracked() -> None:
    # The carry starts as the weight w and becomes an activation after one step: the fixed point
    # marks it as input-dependent, so c @ v is activation × weight, charged to v.
    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        def body(c: jax.Array, _: None) -> tuple[jax.Array, None]:
            return c @ p["v"] + x[0, 0], None

        return lax.scan(body, p["w"], None, length=2)[0][None]

    params = {"w": jnp.ones((3, 3)), "v": jnp.ones((3, 3))}
    assert metrics.layer_macs(apply_fn, params, (1,)) == {"['v']": 2 * 3 * 3 * 3}


def test_while_loop_is_refused() -> None:
    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return lax.while_loop(lambda c: c.sum() < 10.0, lambda c: c @ p["w"], x)

    with pytest.raises(ValueError, match="while_loop"):
        metrics.layer_macs(apply_fn, {"w": jnp.ones((2, 2))}, (2,))


# --- masks: remaining counts, params, compression ---------------------------------------------


def test_masked_macs_are_density_times_dense_per_layer() -> None:
    apply_fn, params = mlp_fn("conv2", (8, 8, 1), width=0.25)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3) | (p.ndim < 2), params)
    dense = metrics.layer_macs(apply_fn, params, (8, 8, 1))
    masked = metrics.layer_macs(apply_fn, params, (8, 8, 1), mask=mask)
    density = masks.layer_density(mask)
    assert masked.keys() == dense.keys()
    for path, macs in dense.items():
        assert masked[path] == pytest.approx(macs * float(density[path]), rel=1e-6)
    # conv1 by hand: every kept kernel entry is used once per output pixel, 8·8 of them.
    leaves = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    kept_conv1 = int(np.sum(np.asarray(leaves[kernel("conv1")])))
    assert masked[kernel("conv1")] == 8 * 8 * kept_conv1


def first_150_along(axis: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """A structured mask: keep indices 0..149 of ``axis`` (neurons), everything along the rest."""

    def keep(shape: tuple[int, ...]) -> np.ndarray:
        index = np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        return np.broadcast_to(index < 150, shape)

    return keep


def test_structured_mask_equals_the_compacted_model() -> None:
    # LeNet-300-100 on digits with half the fc1 neurons removed (columns of fc1, rows of fc2) is,
    # by count, the dense 64 → 150 → 100 → 10 MLP (the compacted model).
    apply_fn, params = mlp_fn("lenet300_100", (8, 8, 1))
    mask = mask_where(
        params,
        {"['fc1']['kernel']": first_150_along(1), "['fc2']['kernel']": first_150_along(0)},
    )
    dense = metrics.layer_macs(apply_fn, params, (8, 8, 1))
    masked = metrics.layer_macs(apply_fn, params, (8, 8, 1), mask=mask)
    assert masked == {kernel("fc1"): 64 * 150, kernel("fc2"): 150 * 100, kernel("out"): 100 * 10}

    compact_fn, compact = mlp_fn("mlp", (8, 8, 1), hidden=(150, 100))
    compacted = metrics.layer_macs(compact_fn, compact, (8, 8, 1))
    assert compacted == masked
    hand = (64 * 300 + 300 * 100 + 100 * 10) / (64 * 150 + 150 * 100 + 100 * 10)  # 50200 / 25600
    assert metrics.theoretical_speedup(dense, compacted) == hand == 1.9609375
    assert metrics.theoretical_speedup(sum(dense.values()), sum(masked.values())) == hand

    # Params: the mask keeps fc1's 300 biases (never pruned); the compacted model has 150.
    total = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    kept = 64 * 150 + 300 + 150 * 100 + 100 + 100 * 10 + 10
    assert sum(metrics.layer_params(params).values()) == total == 50_610
    assert sum(metrics.layer_params(params, mask).values()) == kept == 26_010
    assert metrics.compression_ratio(params, mask) == total / kept
    compact_total = 64 * 150 + 150 + 150 * 100 + 100 + 100 * 10 + 10
    assert sum(metrics.layer_params(compact).values()) == compact_total


def test_compacted_smaller_mlp_by_hand() -> None:
    dense_fn, dense = mlp_fn("mlp", (8, 8, 1), hidden=(32,))
    small_fn, small = mlp_fn("mlp", (8, 8, 1), hidden=(12,))
    big = metrics.layer_flops(dense_fn, dense, (8, 8, 1))
    compact = metrics.layer_flops(small_fn, small, (8, 8, 1))
    assert sum(big.values()) == 2 * (64 * 32 + 32 * 10)
    assert sum(compact.values()) == 2 * (64 * 12 + 12 * 10)
    assert metrics.theoretical_speedup(big, compact) == (64 * 32 + 32 * 10) / (64 * 12 + 12 * 10)


def test_layer_params_and_compression_ratio_by_hand() -> None:
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "c": jnp.ones((2, 2, 2))}
    mask = {
        "w": jnp.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]], bool),  # 4 of 12
        "b": jnp.ones(4, bool),
        "c": jnp.zeros((2, 2, 2), bool).at[0, 0, 0].set(True),  # 1 of 8
    }
    assert metrics.layer_params(params) == {"['b']": 4, "['c']": 8, "['w']": 12}
    assert metrics.layer_params(params, mask) == {"['b']": 4, "['c']": 1, "['w']": 4}
    assert metrics.compression_ratio(params, mask) == (12 + 4 + 8) / (4 + 4 + 1)
    assert metrics.compression_ratio(params, masks.ones(params)) == 1.0
    nothing = jax.tree.map(lambda m: jnp.zeros_like(m), mask)
    assert metrics.compression_ratio(params, nothing) == math.inf


def test_report_rows_totals_and_markdown() -> None:
    apply_fn, params = mlp_fn("lenet300_100", (8, 8, 1))
    mask = mask_where(
        params, {"['fc1']['kernel']": lambda s: np.arange(s[0] * s[1]).reshape(s) % 4 == 0}
    )
    rows, totals = metrics.report(apply_fn, params, (8, 8, 1), mask)
    assert [r["layer"] for r in rows] == [
        f"['{n}']['{leaf}']{K}" for n in ("fc1", "fc2", "out") for leaf in ("bias", "kernel")
    ]
    fc1 = rows[1]
    assert fc1["shape"] == (64, 300) and fc1["params"] == 64 * 300 and fc1["kept"] == 64 * 300 // 4
    assert fc1["density"] == 0.25 and fc1["macs"] == 64 * 300 and fc1["remaining_macs"] == 64 * 75
    assert fc1["flops"] == 2 * 64 * 300 and fc1["remaining_flops"] == 2 * 64 * 75
    assert rows[0]["macs"] == 0 and rows[0]["kept"] == 300  # bias: no MACs, kept
    assert totals["macs"] == 50_200 and totals["remaining_macs"] == 50_200 - 64 * 225
    assert totals["flops"] == 2 * totals["macs"]
    assert totals["params"] == 50_610 and totals["kept"] == 50_610 - 64 * 225
    assert totals["compression_ratio"] == 50_610 / (50_610 - 64 * 225)
    assert totals["theoretical_speedup"] == 50_200 / (50_200 - 64 * 225)
    for col in ("params", "kept", "macs", "remaining_macs"):
        assert sum(r[col] for r in rows) == totals[col]
    table = metrics.markdown(metrics.Report(rows, totals))
    assert "| ['fc1']['kernel'].value | 64×300 | 19,200 | 4,800 | 19,200 | 4,800 |" in table
    assert "| total |  | 50,610 | 36,210 | 50,200 | 35,800 |" in table
    assert "bias" not in table and "bias" in metrics.markdown(
        metrics.Report(rows, totals), skip_empty=False
    )

    dense_rows, dense_totals = metrics.report(apply_fn, params, (8, 8, 1))
    assert dense_totals["compression_ratio"] == dense_totals["theoretical_speedup"] == 1.0
    assert dense_rows[1]["remaining_macs"] == 64 * 300


def test_report_has_a_no_param_row() -> None:
    def apply_fn(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        h = x @ p["w"]  # (1, 2) @ (2, 3): 6
        return h @ h.T  # (1, 3) @ (3, 1): 1 output × 3, no param

    rows, totals = metrics.report(apply_fn, {"w": jnp.ones((2, 3))}, (2,))
    assert [(r["layer"], r["params"], r["macs"]) for r in rows] == [
        ("['w']", 6, 2 * 3),
        (metrics.NO_PARAM, 0, 1 * 3),
    ]
    assert rows[-1]["density"] is None and totals["macs"] == 2 * 3 + 3
    assert f"| {metrics.NO_PARAM} |  | 0 | 0 | 3 | 3 |" in metrics.markdown(
        metrics.Report(rows, totals)
    )


# --- one network, concrete masks; errors ------------------------------------------------------


def test_stacked_tickets_are_refused() -> None:
    apply_fn, params = mlp_fn("mlp", (8, 8, 1), hidden=(16,))
    stacked = stack([params, params])
    with pytest.raises(ValueError, match="ticket"):
        metrics.layer_macs(apply_fn, stacked, (8, 8, 1))
    with pytest.raises(ValueError, match="ticket"):
        metrics.layer_macs(jax.vmap(apply_fn, in_axes=(0, None)), stacked, (8, 8, 1))
    mask = masks.ones(params)
    with pytest.raises(ValueError, match="ticket"):
        metrics.layer_macs(apply_fn, params, (8, 8, 1), mask=stack([mask, mask]))
    one = jax.tree.map(lambda a: a[1], stacked)
    assert metrics.layer_macs(apply_fn, one, (8, 8, 1)) == {
        kernel("fc1"): 64 * 16,
        kernel("out"): 16 * 10,
    }


def test_params_are_read_for_shapes_only_masks_must_be_concrete() -> None:
    apply_fn, params = mlp_fn("mlp", (8, 8, 1), hidden=(16,))
    want = {kernel("fc1"): 64 * 16, kernel("out"): 16 * 10}
    abstract = jax.eval_shape(lambda: params)
    assert metrics.layer_macs(apply_fn, abstract, (8, 8, 1)) == want
    seen = []

    @jax.jit
    def inside(p: Any) -> jax.Array:
        seen.append(metrics.layer_macs(apply_fn, p, (8, 8, 1)))  # tracers: shapes are enough
        return jnp.zeros(())

    inside(params)
    assert seen == [want]
    with pytest.raises(ValueError, match="tracer"):
        jax.jit(lambda m: metrics.layer_macs(apply_fn, params, (8, 8, 1), mask=m))(
            masks.ones(params)
        )


@pytest.mark.parametrize("bad", [64, (), (8, 0, 1), (8.0, 8, 1), "8x8"])
def test_bad_input_shape_names_the_argument(bad: Any) -> None:
    apply_fn, params = mlp_fn("mlp", (8, 8, 1), hidden=(4,))
    with pytest.raises(ValueError, match="input_shape"):
        metrics.layer_macs(apply_fn, params, bad)


def test_wrong_input_shape_for_the_model_is_a_value_error() -> None:
    apply_fn, params = mlp_fn("mlp", (8, 8, 1), hidden=(4,))
    with pytest.raises(ValueError, match=r"failed on x of shape \(1, 28, 28, 1\)"):
        metrics.layer_macs(apply_fn, params, (28, 28, 1))


def test_bad_masks_name_the_path() -> None:
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    with pytest.raises(ValueError, match="structure"):
        metrics.layer_params(params, {"w": jnp.ones((3, 4), bool)})
    with pytest.raises(ValueError, match=r"mask\['w'\] has shape \[4, 3\]"):
        metrics.compression_ratio(params, {"w": jnp.ones((4, 3), bool), "b": jnp.ones(4, bool)})
    with pytest.raises(ValueError, match=r"mask\['b'\] must be a bool array"):
        metrics.layer_macs(
            lambda p, x: x @ p["w"], params, (3,), mask={"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
        )


@pytest.mark.parametrize(
    ("dense", "remaining", "match"),
    [
        (0, 0, "dense_flops must be > 0"),
        (10, -1, "remaining_flops must be >= 0"),
        (10, 20, "swapped"),
        (float("nan"), 1, "dense_flops must be a finite number"),
        ("10", 1, "dense_flops must be a finite number"),
    ],
)
def test_theoretical_speedup_errors(dense: Any, remaining: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.theoretical_speedup(dense, remaining)


def test_theoretical_speedup_values() -> None:
    assert metrics.theoretical_speedup(800, 200) == 4.0
    assert metrics.theoretical_speedup({"a": 10, "b": 6}, {"a": 4.0, "b": 0}) == 4.0
    assert metrics.theoretical_speedup(10, 0) == math.inf
