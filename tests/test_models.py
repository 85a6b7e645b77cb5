"""Models: parameter counts by hand, shapes, init statistics, functional/vmap equivalence, a numpy
forward pass, layer names and the prunable-leaf rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import masks, models
from tests.helpers import stack

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
CONVS = ["conv2", "conv4", "conv6"]


def _leaves(params) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _build(name: str, shape, seed: int = 0, **kw):
    if name in CONVS:
        kw.setdefault("width", 0.125)  # narrow: the CPU forward passes stay fast
    return models.build(name, input_shape=shape, num_classes=10, seed=seed, **kw)


# ---- parameter counts, by hand -------------------------------------------------------------------

# LeNet-300-100: dense layers fan_in·fan_out + fan_out.
LENET_784 = 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
LENET_64 = 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def _conv(c_in: int, c_out: int) -> int:
    return 3 * 3 * c_in * c_out + c_out


def _fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# Conv nets on 32×32×3: each pool halves height and width.
CONV2_CIFAR = _conv(3, 64) + _conv(64, 64) + _fc(16 * 16 * 64, 256) + _fc(256, 256) + _fc(256, 10)
CONV4_CIFAR = (
    _conv(3, 64) + _conv(64, 64) + _conv(64, 128) + _conv(128, 128)
    + _fc(8 * 8 * 128, 256) + _fc(256, 256) + _fc(256, 10)
)  # fmt: skip
CONV6_CIFAR = (
    _conv(3, 64) + _conv(64, 64) + _conv(64, 128) + _conv(128, 128) + _conv(128, 256)
    + _conv(256, 256) + _fc(4 * 4 * 256, 256) + _fc(256, 256) + _fc(256, 10)
)  # fmt: skip


def test_hand_counts_are_the_papers_figures() -> None:
    assert LENET_784 == 266_610
    assert LENET_64 == 50_610
    assert CONV2_CIFAR == 1_792 + 36_928 + 4_194_560 + 65_792 + 2_570 == 4_301_642  # "4.3M"
    assert CONV4_CIFAR == 2_425_930  # "2.4M" in Frankle & Carbin, table 1
    assert CONV6_CIFAR == 2_262_602  # "2.26M"


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("lenet300_100", (28, 28, 1), LENET_784),
        ("lenet300_100", (784,), LENET_784),
        ("lenet300_100", (8, 8, 1), LENET_64),
        ("conv2", (32, 32, 3), CONV2_CIFAR),
        ("conv4", (32, 32, 3), CONV4_CIFAR),
        ("conv6", (32, 32, 3), CONV6_CIFAR),
        ("conv2", (8, 8, 1), _conv(1, 64) + _conv(64, 64) + _fc(4 * 4 * 64, 256) + 65_792 + 2_570),
    ],
)
def test_param_count_matches_hand_count(name: str, shape, expected: int) -> None:
    net = models.build(name, input_shape=shape, num_classes=10)
    _, params, rest = models.functional(net)
    assert models.param_count(params) == expected
    assert jax.tree.leaves(rest) == []  # no batch norm, no RNG state: params are everything


def test_param_count_of_a_stacked_tree_counts_every_ticket() -> None:
    _, params, _ = models.functional(models.build("mlp", input_shape=(4,), num_classes=3))
    n = 4 * 32 + 32 + 32 * 3 + 3
    assert models.param_count(params) == n
    assert models.param_count(stack([params] * 3)) == 3 * n


def test_width_scales_every_hidden_layer() -> None:
    net = models.build("conv4", input_shape=(8, 8, 1), num_classes=10, width=0.25)
    got = {k: v.shape for k, v in _leaves(nnx.state(net, nnx.Param)).items() if "kernel" in k}
    assert got == {
        "['conv1']['kernel'].value": (3, 3, 1, 16),
        "['conv2']['kernel'].value": (3, 3, 16, 16),
        "['conv3']['kernel'].value": (3, 3, 16, 32),
        "['conv4']['kernel'].value": (3, 3, 32, 32),
        "['fc1']['kernel'].value": (2 * 2 * 32, 64),
        "['fc2']['kernel'].value": (64, 64),
        "['out']['kernel'].value": (64, 10),
    }
    lenet = models.build("lenet300_100", input_shape=(8, 8, 1), num_classes=10, width=0.5)
    assert (lenet.fc1.kernel.shape, lenet.fc2.kernel.shape) == ((64, 150), (150, 50))
    tiny = models.build("conv2", input_shape=(8, 8, 1), num_classes=10, width=0.001)
    assert tiny.conv1.kernel.shape == (3, 3, 1, 1)  # at least one unit


# ---- shapes and names ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", models.names())
def test_output_shape_for_each_input_shape(name: str, shape) -> None:
    net = _build(name, shape)
    assert net(jnp.zeros((3, *shape))).shape == (3, 10)
    assert net(jnp.zeros((2, 3, *shape))).shape == (2, 3, 10)  # any leading batch axes


@pytest.mark.parametrize(
    "name, layers",
    [
        ("lenet300_100", ["fc1", "fc2", "out"]),
        ("mlp", ["fc1", "out"]),
        ("conv2", ["conv1", "conv2", "fc1", "fc2", "out"]),
        ("conv4", ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2", "out"]),
        ("conv6", ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2", "out"]),
    ],
)
def test_param_paths(name: str, layers: list[str]) -> None:
    _, params, _ = models.functional(_build(name, (8, 8, 1)))
    expected = {f"['{layer}']['{p}'].value" for layer in layers for p in ("kernel", "bias")}
    assert set(_leaves(params)) == expected


@pytest.mark.parametrize("name", models.names())
def test_kernels_are_the_only_prunable_leaves_by_default(name: str) -> None:
    _, params, _ = models.functional(_build(name, (8, 8, 1)))
    prunable = _leaves(masks.is_prunable(params))
    assert prunable == {path: path.endswith("['kernel'].value") for path in prunable}
    for path, leaf in _leaves(params).items():
        assert (leaf.ndim >= 2) == path.endswith("['kernel'].value")


def test_instantiate_rejects_params_it_cannot_initialise() -> None:
    class Scaled(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.fc1 = nnx.Linear(2, 2, rngs=rngs)
            self.scale = nnx.Param(jnp.ones(2))

    with pytest.raises(ValueError, match=r"param \['scale'\]\.value; instantiate initialises only"):
        models.instantiate(Scaled)


def test_mlp_hidden_layers() -> None:
    net = models.build("mlp", input_shape=(5,), num_classes=3, hidden=(7, 6, 4))
    assert [
        net.fc1.kernel.shape,
        net.fc2.kernel.shape,
        net.fc3.kernel.shape,
        net.out.kernel.shape,
    ] == [
        (5, 7),
        (7, 6),
        (6, 4),
        (4, 3),
    ]
    linear = models.build("mlp", input_shape=(5,), num_classes=3, hidden=())
    assert set(_leaves(nnx.state(linear, nnx.Param))) == {
        "['out']['kernel'].value",
        "['out']['bias'].value",
    }


# ---- initialisation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, layer, fan_in, fan_out",
    [
        ("lenet300_100", (28, 28, 1), "fc1", 784, 300),
        ("lenet300_100", (28, 28, 1), "fc2", 300, 100),
        ("conv2", (8, 8, 1), "conv2", 9 * 64, 9 * 64),  # fans count the 3×3 receptive field
        ("conv2", (8, 8, 1), "fc1", 4 * 4 * 64, 256),
    ],
)
def test_kernels_are_glorot_normal(name: str, shape, layer: str, fan_in: int, fan_out: int) -> None:
    net = models.build(name, input_shape=shape, num_classes=10, seed=3)
    _check_glorot(np.asarray(getattr(net, layer).kernel[...], np.float64), fan_in, fan_out)


def test_modules_built_directly_use_flax_glorot_normal() -> None:
    net = models.MLP((784,), (), 300, rngs=nnx.Rngs(5))  # the nnx initializer path, eager
    _check_glorot(np.asarray(net.out.kernel[...], np.float64), 784, 300)
    assert not np.asarray(net.out.bias[...]).any()


def _check_glorot(w: np.ndarray, fan_in: int, fan_out: int) -> None:
    w = w.ravel()
    std = math.sqrt(2.0 / (fan_in + fan_out))
    # The sample std of n normal draws has relative error ≈ 1/sqrt(2n) (0.15% to 0.6% here).
    assert abs(w.std() / std - 1) < 0.03
    assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
    # JAX's glorot_normal is a normal truncated at ±2σ', σ' = std / 0.87962566 so the std is exact.
    bound = 2 * std / 0.87962566103423978
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() > 0.95 * bound  # many draws reach close to the truncation point
    # Truncated at 2σ': P(|z| > σ') = (2Φ(-1) - 2Φ(-2)) / (1 - 2Φ(-2)) = 0.2864…
    frac = np.mean(np.abs(w) > bound / 2)
    assert abs(frac - 0.28637) < 0.03


@pytest.mark.parametrize("name", models.names())
def test_biases_start_at_zero_and_seeds_decide_the_weights(name: str) -> None:
    a = _leaves(nnx.state(_build(name, (8, 8, 1), seed=0), nnx.Param))
    b = _leaves(nnx.state(_build(name, (8, 8, 1), seed=0), nnx.Param))
    c = _leaves(nnx.state(_build(name, (8, 8, 1), seed=1), nnx.Param))
    for path in a:
        np.testing.assert_array_equal(a[path], b[path])
        if "bias" in path:
            assert not a[path].any()
        else:
            assert not np.array_equal(a[path], c[path])
            assert a[path].dtype == np.float32


# ---- forward pass against numpy ------------------------------------------------------------------


def _np_conv_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3×3 SAME cross-correlation by explicit sums (NHWC, kernel HWIO)."""
    n, h, wd, _ = x.shape
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            patch = pad[:, i : i + 3, j : j + 3, :]  # (n, 3, 3, c_in)
            out[:, i, j, :] = np.einsum("nabc,abcd->nd", patch, w)
    return out + b


def _np_pool(x: np.ndarray) -> np.ndarray:
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def test_conv_forward_matches_numpy() -> None:
    net = models.instantiate(
        lambda rngs: models.ConvNet((5, 7, 2), (3, "pool", 4), (6,), 3, rngs=rngs)
    )
    # Non-zero biases so that their placement is checked too.
    for layer in (net.conv1, net.conv2, net.fc1, net.out):
        layer.bias[...] = jnp.linspace(-0.3, 0.3, layer.bias.shape[0])
    p = {
        f"{layer}/{part}": np.asarray(getattr(getattr(net, layer), part)[...], np.float64)
        for layer in ("conv1", "conv2", "fc1", "out")
        for part in ("kernel", "bias")
    }
    x = np.random.default_rng(0).random((4, 5, 7, 2))
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = relu(_np_conv_same(x, p["conv1/kernel"], p["conv1/bias"]))
    h = _np_pool(h)  # 5×7 → 2×3: VALID pooling drops the odd row and column
    h = relu(_np_conv_same(h, p["conv2/kernel"], p["conv2/bias"]))
    h = h.reshape(4, -1)  # NHWC order, as TF's flatten
    h = relu(h @ p["fc1/kernel"] + p["fc1/bias"])
    want = h @ p["out/kernel"] + p["out/bias"]
    got = np.asarray(net(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_lenet_forward_matches_numpy() -> None:
    net = models.build("lenet300_100", input_shape=(8, 8, 1), num_classes=10, seed=2)
    p = _leaves(nnx.state(net, nnx.Param))
    x = np.random.default_rng(1).random((6, 8, 8, 1))
    h = x.reshape(6, 64)
    for layer in ("fc1", "fc2"):
        h = np.maximum(h @ p[f"['{layer}']['kernel'].value"] + p[f"['{layer}']['bias'].value"], 0)
    want = h @ p["['out']['kernel'].value"] + p["['out']['bias'].value"]
    np.testing.assert_allclose(
        np.asarray(net(jnp.asarray(x, jnp.float32))), want, rtol=1e-4, atol=1e-5
    )


# ---- the functional form -------------------------------------------------------------------------


@pytest.mark.parametrize("name", models.names())
def test_functional_apply_equals_the_module(name: str) -> None:
    net = _build(name, (8, 8, 1), seed=4)
    x = jnp.asarray(np.random.default_rng(1).random((5, 8, 8, 1)), jnp.float32)
    apply_fn, params, _ = models.functional(net)
    want = np.asarray(net(x))
    np.testing.assert_array_equal(np.asarray(apply_fn(params, x)), want)
    np.testing.assert_allclose(np.asarray(jax.jit(apply_fn)(params, x)), want, rtol=1e-5, atol=1e-6)


def test_functional_apply_uses_the_params_it_is_given() -> None:
    apply_fn, params, _ = models.functional(models.build("mlp", input_shape=(4,), num_classes=3))
    zeroed = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_array_equal(np.asarray(apply_fn(zeroed, jnp.ones((2, 4)))), np.zeros((2, 3)))
    # Gradients flow to every param leaf through nnx.merge.
    grads = jax.grad(lambda p: apply_fn(p, jnp.ones((2, 4))).sum())(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert np.asarray(grads["out"]["bias"][...]).tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("name", ["lenet300_100", "conv2", "mlp"])
def test_vmap_over_stacked_tickets_equals_per_ticket_calls(name: str) -> None:
    nets = [_build(name, (8, 8, 1), seed=s) for s in range(3)]
    apply_fn, _, _ = models.functional(nets[0])
    params = [models.functional(net)[1] for net in nets]
    x = jnp.asarray(np.random.default_rng(2).random((4, 8, 8, 1)), jnp.float32)
    batched = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(stack(params), x)
    assert batched.shape == (3, 4, 10)
    for i, net in enumerate(nets):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(net(x)), rtol=1e-5, atol=1e-6)


# ---- bad input -----------------------------------------------------------------------------------


def test_unknown_model_lists_the_names() -> None:
    with pytest.raises(
        ValueError, match=r"unknown model name 'resnet'.*conv2, conv4, conv6, lenet300_100, mlp"
    ):
        models.build("resnet", input_shape=(8, 8, 1), num_classes=10)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("conv6", {"input_shape": (4, 4, 1)}, r"too small for 3 2×2 max-pools.*at least 8"),
        ("conv2", {"input_shape": (64,)}, r"input_shape must be \(height, width, channels\)"),
        ("lenet300_100", {"input_shape": ()}, r"input_shape must be a non-empty tuple"),
        ("lenet300_100", {"input_shape": (8, 0)}, r"input_shape must be a non-empty tuple"),
        ("conv2", {"width": 0.0}, r"width must be a positive number"),
        ("lenet300_100", {"num_classes": 0}, r"num_classes must be a positive int"),
        ("mlp", {"hidden": (4, -1)}, r"hidden must be a sequence of positive ints"),
        ("mlp", {"width": 2.0}, r"model 'mlp' does not take option\(s\) \['width'\]"),
        ("conv4", {"hidden": (4,)}, r"does not take option\(s\) \['hidden'\]"),
    ],
)
def test_bad_build_arguments(name: str, kwargs: dict, match: str) -> None:
    args = {"input_shape": (8, 8, 1), "num_classes": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        models.build(name, **args)


def test_wrong_input_shape_names_the_expected_shape() -> None:
    net = models.build("conv2", input_shape=(8, 8, 1), num_classes=10, width=0.125)
    with pytest.raises(
        ValueError, match=r"x must have shape \(batch\.\.\., 8, 8, 1\).*got \(2, 28, 28, 1\)"
    ):
        net(jnp.zeros((2, 28, 28, 1)))
    with pytest.raises(ValueError, match=r"at least one leading batch axis"):
        net(jnp.zeros((8, 8, 1)))


# ---- im2col kernel gradients ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "strides, padding", [((1, 1), "SAME"), ((2, 2), "VALID"), ((2, 1), ((1, 2), (0, 1)))]
)
def test_im2col_conv_matches_autodiff_of_xla_conv(strides, padding) -> None:
    rng = np.random.default_rng(7)  # numpy draws: no RNG program to compile
    x = jnp.asarray(rng.standard_normal((3, 7, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def fast(x, w):
        return models.conv_im2col_grad(x, w, strides, padding)

    @jax.jit
    def both(x, w, g):
        (y_xla, vjp_xla), (y_fast, vjp_fast) = jax.vjp(xla, x, w), jax.vjp(fast, x, w)
        return y_xla, y_fast, vjp_xla(g), vjp_fast(g)

    g = jnp.asarray(rng.standard_normal(jax.eval_shape(xla, x, w).shape), jnp.float32)
    y_xla, y_fast, want, got = both(x, w, g)
    np.testing.assert_allclose(np.asarray(y_fast), np.asarray(y_xla), rtol=1e-6, atol=1e-6)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_im2col_conv_rejects_what_it_does_not_support() -> None:
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(
        ValueError, match=r"plain 2-D NHWC convolutions only.*rhs_dilation=\(2, 2\)"
    ):
        models.conv_im2col_grad(x, w, (1, 1), "SAME", rhs_dilation=(2, 2))
    with pytest.raises(ValueError, match=r"conv_grad must be one of auto, xla, im2col, got 'fast'"):
        models.build("conv2", input_shape=(8, 8, 1), num_classes=10, conv_grad="fast")


def test_conv_grad_modes_train_alike_under_scan_and_vmap() -> None:
    """Two SGD steps in a lax.scan for two vmapped tickets: im2col and XLA gradients agree."""
    x = jnp.asarray(np.random.default_rng(3).random((6, 8, 8, 1)), jnp.float32)
    y = jnp.arange(6) % 10

    def run(conv_grad: str):
        nets = [_build("conv2", (8, 8, 1), seed=s, conv_grad=conv_grad) for s in (0, 1)]
        apply_fn, _, _ = models.functional(nets[0])
        params = stack([models.functional(n)[1] for n in nets])

        def loss(p):
            logp = jax.nn.log_softmax(apply_fn(p, x))
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(p, _):
            return jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p)), loss(p)

        train = jax.vmap(lambda p: jax.lax.scan(step, p, None, length=2))
        return jax.jit(train)(params)

    (p_fast, l_fast), (p_xla, l_xla) = run("im2col"), run("xla")
    np.testing.assert_allclose(np.asarray(l_fast), np.asarray(l_xla), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_fast), jax.tree.leaves(p_xla), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    # Training moved the kernels: the comparison is not between two copies of the init.
    p0 = models.functional(_build("conv2", (8, 8, 1), seed=0))[1]
    assert not np.allclose(
        np.asarray(p_fast["conv1"]["kernel"][...][0]), np.asarray(p0["conv1"]["kernel"][...])
    )


def test_auto_conv_grad_is_im2col_on_cpu() -> None:
    net = models.build("conv2", input_shape=(8, 8, 1), num_classes=10, width=0.125)
    expected = (
        models.conv_im2col_grad if jax.default_backend() == "cpu" else jax.lax.conv_general_dilated
    )
    assert net.conv1.conv_general_dilated is expected
