"""Models: parameter counts by hand, shapes, init statistics, functional/vmap equivalence, a numpy
forward pass, layer names and the prunable-leaf rule; batch-norm models and their stateful form."""

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
BN_MODELS = ["resnet20", "resnet56", "vgg11", "vgg16", "vgg16_a", "vgg19"]
# token inputs, 2-D embeddings: tested in tests/test_transformer_models.py
TRANSFORMERS = ["transformer", "vit"]
PLAIN = [name for name in models.names() if name not in BN_MODELS + TRANSFORMERS]


def _leaves(params) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _build(name: str, shape, seed: int = 0, **kw):
    if name in CONVS or name in BN_MODELS:
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
@pytest.mark.parametrize("name", PLAIN)
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


@pytest.mark.parametrize("name", [*PLAIN, "resnet20", "vgg16"])
def test_kernels_are_the_only_prunable_leaves_by_default(name: str) -> None:
    _, params, _ = models.stateful(_build(name, (8, 8, 1)))  # every model; BN scales are 1-D
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


@pytest.mark.parametrize("name", [*PLAIN, "resnet20"])
def test_biases_start_at_zero_and_seeds_decide_the_weights(name: str) -> None:
    a = _leaves(nnx.state(_build(name, (8, 8, 1), seed=0), nnx.Param))
    b = _leaves(nnx.state(_build(name, (8, 8, 1), seed=0), nnx.Param))
    c = _leaves(nnx.state(_build(name, (8, 8, 1), seed=1), nnx.Param))
    for path in a:
        np.testing.assert_array_equal(a[path], b[path])
        if "bias" in path:
            assert not a[path].any()
        elif "['scale']" in path:  # batch-norm scale: a constant (0.5 for VGG convs, else 1)
            assert set(np.unique(a[path])) <= {0.5, 1.0}
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


@pytest.mark.parametrize("name", PLAIN)
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
        ("resnet20", {"input_shape": (64,)}, r"input_shape must be \(height, width, channels\)"),
        ("vgg16", {"hidden": (4,)}, r"does not take option\(s\) \['hidden'\]"),
        ("vgg11", {"conv_grad": "fast"}, r"conv_grad must be one of auto, xla, im2col"),
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


# ---- batch-norm models: VGG and CIFAR ResNet -------------------------------------------------------


def _conv_nb(c_in: int, c_out: int) -> int:
    return 3 * 3 * c_in * c_out  # 3×3 conv without bias (batch norm follows)


def _bn(*channels: int) -> int:
    return sum(2 * c for c in channels)  # scale γ and bias β per channel


# VGG-16 on CIFAR-10 with Li et al.'s classifier (Linear 512 → BN → ReLU → Linear 10).
VGG16_CIFAR = (
    _conv_nb(3, 64) + _conv_nb(64, 64) + _conv_nb(64, 128) + _conv_nb(128, 128)
    + _conv_nb(128, 256) + 2 * _conv_nb(256, 256) + _conv_nb(256, 512) + 5 * _conv_nb(512, 512)
    + _bn(64, 64, 128, 128, 256, 256, 256, *[512] * 6)
    + _fc(512, 512) + _bn(512) + _fc(512, 10)
)  # fmt: skip
# Li et al.'s pruned VGG-16 "A": [32, 64, M, 128, 128, M, 256 ×3, M, 256 ×3, M, 256 ×3].
VGG16_A_CIFAR = (
    _conv_nb(3, 32) + _conv_nb(32, 64) + _conv_nb(64, 128) + _conv_nb(128, 128)
    + _conv_nb(128, 256) + 8 * _conv_nb(256, 256)
    + _bn(32, 64, 128, 128, *[256] * 9)
    + _fc(256, 512) + _bn(512) + _fc(512, 10)
)  # fmt: skip
# VGG-19 with Network Slimming's classifier (one Linear 512 → 10).
VGG19_CIFAR = (
    _conv_nb(3, 64) + _conv_nb(64, 64) + _conv_nb(64, 128) + _conv_nb(128, 128)
    + _conv_nb(128, 256) + 3 * _conv_nb(256, 256) + _conv_nb(256, 512) + 7 * _conv_nb(512, 512)
    + _bn(64, 64, 128, 128, *[256] * 4, *[512] * 8)
    + _fc(512, 10)
)  # fmt: skip


def _resnet_cifar(n: int) -> int:
    """Stem conv 3→16 + BN; per stage n blocks of two conv+BN; option-A shortcuts: no params."""
    stem = _conv_nb(3, 16) + _bn(16)
    stage1 = n * 2 * (_conv_nb(16, 16) + _bn(16))
    stage2 = _conv_nb(16, 32) + (2 * n - 1) * _conv_nb(32, 32) + 2 * n * _bn(32)
    stage3 = _conv_nb(32, 64) + (2 * n - 1) * _conv_nb(64, 64) + 2 * n * _bn(64)
    return stem + stage1 + stage2 + stage3 + _fc(64, 10)


def test_bn_hand_counts_are_the_papers_figures() -> None:
    assert VGG16_CIFAR == 14_710_464 + 8_448 + 262_656 + 1_024 + 5_130 == 14_987_722  # "1.5×10⁷"
    assert VGG16_A_CIFAR == 5_397_034  # Li et al.: 5.4×10⁶
    assert VGG19_CIFAR == 20_035_018  # Network-Slimming README: 20.04M
    assert _resnet_cifar(3) == 432 + 32 + 14_016 + 51_072 + 203_520 + 650 == 269_722  # "0.27M"
    assert _resnet_cifar(9) == 853_018  # He et al.: 0.85M


@pytest.fixture(scope="module")
def cifar_nets() -> dict:
    """Paper-width BN models on 32×32×3, built once for the count and init tests."""
    return {
        name: models.build(name, input_shape=(32, 32, 3), num_classes=10, seed=3)
        for name in ("vgg16", "resnet20")
    }


@pytest.mark.parametrize(
    "name, expected, stats",
    [
        ("vgg16", VGG16_CIFAR, 2 * (64 + 64 + 128 + 128 + 3 * 256 + 6 * 512 + 512)),
        ("resnet20", _resnet_cifar(3), 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)),
    ],
)
def test_bn_param_count_matches_hand_count(
    cifar_nets, name: str, expected: int, stats: int
) -> None:
    _, params, model_state = models.stateful(cifar_nets[name])
    assert models.param_count(params) == expected
    assert models.param_count(model_state) == stats  # running mean and var per BN channel


@pytest.mark.parametrize("name, expected", [("vgg16_a", VGG16_A_CIFAR), ("resnet56", 853_018)])
def test_other_bn_param_counts(name: str, expected: int) -> None:
    net = models.build(name, input_shape=(32, 32, 3), num_classes=10)
    assert models.param_count(nnx.state(net, nnx.Param)) == expected
    assert _logits_shape(net, (2, 32, 32, 3), train=True) == (2, 10)


def test_vgg19_param_count_without_drawing_20m_weights() -> None:
    net = nnx.eval_shape(
        lambda: models.VGG((32, 32, 3), models.VGG_PLANS["vgg19"], 10, rngs=nnx.Rngs(0))
    )
    assert models.param_count(nnx.state(net, nnx.Param)) == VGG19_CIFAR


def _logits_shape(net: nnx.Module, x_shape: tuple[int, ...], train: bool) -> tuple[int, ...]:
    """The output shape of the stateful form, by abstract evaluation (nothing compiled)."""
    apply_fn, params, model_state = models.stateful(net)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(lambda p, s, x: apply_fn(p, s, x, train=train), params, model_state, x)[
        0
    ].shape


@pytest.mark.parametrize(
    "name, shape",
    # resnet56 is resnet20 with 9 blocks a stage instead of 3: its CIFAR shape is checked with
    # its parameter count, at paper width.
    [(n, s) for n in BN_MODELS if n != "resnet56" for s in SHAPES],
    ids=str,
)
def test_bn_output_shape_for_each_input_shape(name: str, shape) -> None:
    net = models.build(name, input_shape=shape, num_classes=10, width=0.0625)
    assert _logits_shape(net, (3, *shape), train=True) == (3, 10)
    assert _logits_shape(net, (2, 3, *shape), train=False) == (2, 3, 10)  # any leading batch axes


def test_bn_models_follow_the_reference_init(cifar_nets) -> None:
    res, vgg = _leaves(nnx.state(cifar_nets["resnet20"])), _leaves(nnx.state(cifar_nets["vgg16"]))
    # Convs: N(0, 2 / (9·C_out)), untruncated (PyTorch normal_): ~4.55% of draws beyond 2σ.
    for name, leaves in (("resnet20", res), ("vgg16", vgg)):
        for path, w in leaves.items():
            if "conv" in path and path.endswith("['kernel'].value") and w.size > 30_000:
                std = math.sqrt(2.0 / (9 * w.shape[-1]))
                assert abs(w.std() / std - 1) < 0.03, (name, path)
                assert abs(np.mean(np.abs(w) > 2 * std) - 0.0455) < 0.01, (name, path)
    # ResNet classifier: Torch's default Linear init U(±1/sqrt(fan_in)), fan_in = 64; bias 0.
    out = res["['out']['kernel'].value"]
    assert np.abs(out).max() <= 1 / 8 and np.abs(out).max() > 0.95 / 8
    assert abs(np.abs(out).mean() - 1 / 16) < 0.01  # E|U(-b, b)| = b / 2
    # VGG linears: N(0, 0.01²).
    assert abs(vgg["['fc1']['kernel'].value"].std() / 0.01 - 1) < 0.03
    # BN: scale 0.5 after VGG convs (Network-Slimming code), 1 elsewhere; bias, mean 0; var 1.
    for name, leaves in (("resnet20", res), ("vgg16", vgg)):
        for path, v in leaves.items():
            if path.endswith("['scale'].value"):
                want = 0.5 if name == "vgg16" and "fc" not in path else 1.0
                assert (v == want).all(), path
            if path.endswith(("['bias'].value", "['mean'].value")):
                assert not v.any(), path
            if path.endswith("['var'].value"):
                assert (v == 1).all(), path


def test_laws_draw_what_they_say_when_called_as_flax_initialisers() -> None:
    # Modules built directly (nnx.Rngs, no instantiate) call the laws themselves.
    w = np.asarray(models.Law("normal", 2**0.5, "out")(jax.random.key(0), (3, 3, 32, 32)))
    std = math.sqrt(2 / (9 * 32))
    assert abs(w.std() / std - 1) < 0.03  # 9216 draws: ~0.7% sampling error
    assert abs(np.mean(np.abs(w) > 2 * std) - 0.0455) < 0.01  # untruncated
    assert models.Law("uniform", 1.0, "in").scale((64, 10)) == 1 / 8  # bound 1/sqrt(fan_in)
    assert (np.asarray(models.Law("constant", 0.5)(jax.random.key(2), (3,))) == 0.5).all()
    with pytest.raises(ValueError, match="kind must be normal, uniform or constant"):
        models.Law("gaussian", 1.0)  # type: ignore[arg-type]


def test_bn_param_paths_name_the_layers() -> None:
    _, params, model_state = models.stateful(_build("resnet20", (8, 8, 1)))
    blocks = [f"['stage{s}']['block{b}']" for s in (1, 2, 3) for b in range(3)]
    want = {"['stem']['conv']['kernel'].value", "['out']['kernel'].value", "['out']['bias'].value"}
    want |= {f"['stem']['bn']['{p}'].value" for p in ("scale", "bias")}
    for block in blocks:
        want |= {f"{block}['conv1']['kernel'].value", f"{block}['conv2']['kernel'].value"}
        want |= {f"{block}['bn{i}']['{p}'].value" for i in (1, 2) for p in ("scale", "bias")}
    assert set(_leaves(params)) == want
    stats = {p.replace("['scale']", "['mean']") for p in want if "['scale']" in p}
    stats |= {p.replace("['scale']", "['var']") for p in want if "['scale']" in p}
    assert set(_leaves(model_state)) == stats

    _, params, _ = models.stateful(_build("vgg16", (8, 8, 1)))
    layers = {path.split("]")[0] + "]" for path in _leaves(params)}
    assert layers == {f"['conv{i}']" for i in range(1, 14)} | {
        f"['bn{i}']" for i in range(1, 14)
    } | {"['fc1']", "['bn_fc1']", "['out']"}


@pytest.mark.parametrize(
    "name, shape, pools",
    [
        ("vgg16", (32, 32, 3), [(2, 2)] * 4),
        ("vgg16", (8, 8, 1), [(2, 2)] * 3),  # 8 → 4 → 2 → 1; the 4th pool is dropped
        ("vgg11", (4, 16, 3), [(2, 2), (2, 2), (1, 2), (1, 2)]),  # height 1: pool the width only
    ],
)
def test_vgg_pools_never_shrink_a_side_below_one(name: str, shape, pools) -> None:
    net = models.build(name, input_shape=shape, num_classes=10, width=0.0625)
    assert [s for s in net.steps if isinstance(s, tuple)] == pools
    assert _logits_shape(net, (2, *shape), train=True) == (2, 10)


def _np_conv3x3(x: np.ndarray, w: np.ndarray, stride: int = 1) -> np.ndarray:
    """3×3 cross-correlation, zero padding 1 on every side (PyTorch's padding=1), no bias."""
    n, h, wd, _ = x.shape
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.zeros((n, ho, wo, w.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            patch = pad[:, i * stride : i * stride + 3, j * stride : j * stride + 3, :]
            out[:, i, j, :] = np.einsum("nabc,abcd->nd", patch, w)
    return out


def _np_bn(h: np.ndarray, scale, bias, mean=None, var=None):
    """Batch norm over every axis but the last; batch statistics (biased variance) when no stats."""
    axes = tuple(range(h.ndim - 1))
    batch_mean, batch_var = h.mean(axes), h.var(axes)
    m, v = (batch_mean, batch_var) if mean is None else (mean, var)
    return (h - m) / np.sqrt(v + 1e-5) * scale + bias, batch_mean, batch_var


def _randomise_bn(net, rng) -> None:
    """Non-trivial BN scales, biases and running statistics, so that their placement is checked."""
    for _, bn in nnx.iter_graph(net):
        if isinstance(bn, nnx.BatchNorm):
            c = bn.scale.shape[0]
            bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
            bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
            bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_vgg_forward_and_running_stats_match_numpy(train: bool) -> None:
    net = models.instantiate(
        lambda rngs: models.VGG((5, 7, 2), (3, "pool", 4), 3, hidden=5, rngs=rngs)
    )
    rng = np.random.default_rng(0)
    _randomise_bn(net, rng)
    net.out.bias[...] = jnp.linspace(-0.3, 0.3, 3)
    p = {k: np.asarray(v, np.float64) for k, v in _leaves(nnx.state(net)).items()}

    def g(layer: str, part: str) -> np.ndarray:
        return p[f"['{layer}']['{part}'].value"]

    def bn(h, layer):
        stats = () if train else (g(layer, "mean"), g(layer, "var"))
        out, m, v = _np_bn(h, g(layer, "scale"), g(layer, "bias"), *stats)
        new[layer] = (0.9 * g(layer, "mean") + 0.1 * m, 0.9 * g(layer, "var") + 0.1 * v)
        return out

    new: dict = {}
    x = rng.random((6, 5, 7, 2))
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    h = relu(bn(_np_conv3x3(x, g("conv1", "kernel")), "bn1"))
    h = _np_pool(h)  # 5×7 → 2×3
    h = relu(bn(_np_conv3x3(h, g("conv2", "kernel")), "bn2"))
    h = h.mean(axis=(1, 2))  # global average pool
    h = relu(bn(h @ g("fc1", "kernel") + g("fc1", "bias"), "bn_fc1"))
    want = h @ g("out", "kernel") + g("out", "bias")

    apply_fn, params, model_state = models.stateful(net)
    logits, new_state = jax.jit(apply_fn, static_argnames="train")(
        params, model_state, jnp.asarray(x, jnp.float32), train=train
    )
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4)
    got = _leaves(new_state)
    for layer, (mean, var) in new.items():
        want_mean, want_var = (mean, var) if train else (g(layer, "mean"), g(layer, "var"))
        np.testing.assert_allclose(
            got[f"['{layer}']['mean'].value"], want_mean, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(got[f"['{layer}']['var'].value"], want_var, rtol=1e-4, atol=1e-5)


def test_resnet_block_with_option_a_shortcut_matches_numpy() -> None:
    block = models.instantiate(lambda rngs: models.BasicBlock(2, 3, 2, rngs=rngs), seed=1)
    rng = np.random.default_rng(2)
    _randomise_bn(block, rng)
    p = {k: np.asarray(v, np.float64) for k, v in _leaves(nnx.state(block)).items()}
    x = rng.normal(size=(4, 5, 5, 2))  # odd sides: the stride-2 conv and the subsampling give 3×3

    def bn(h, layer):
        return _np_bn(h, p[f"['{layer}']['scale'].value"], p[f"['{layer}']['bias'].value"])[0]

    h = np.maximum(bn(_np_conv3x3(x, p["['conv1']['kernel'].value"], 2), "bn1"), 0)
    h = bn(_np_conv3x3(h, p["['conv2']['kernel'].value"]), "bn2")
    shortcut = np.concatenate([x[:, ::2, ::2, :], np.zeros((4, 3, 3, 1))], axis=-1)  # option A
    want = np.maximum(h + shortcut, 0)
    apply_fn, params, model_state = models.stateful(block)
    got, _ = apply_fn(params, model_state, jnp.asarray(x, jnp.float32), train=True)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_stateful_apply_equals_the_module_in_both_modes() -> None:
    net = models.instantiate(lambda rngs: models.ResNet((6, 6, 1), 1, (2, 3, 4), 10, rngs=rngs), 4)
    x = jnp.asarray(np.random.default_rng(1).random((5, 6, 6, 1)), jnp.float32)
    apply_fn, params, model_state = models.stateful(net)
    logits, new_state = apply_fn(params, model_state, x, train=True)
    # The model passed in is untouched by apply_fn: still in training mode, statistics at init.
    assert not _leaves(nnx.state(net, nnx.BatchStat))["['stem']['bn']['mean'].value"].any()
    np.testing.assert_allclose(np.asarray(logits), np.asarray(net(x)), rtol=1e-5, atol=1e-5)
    for path, v in _leaves(nnx.state(net, nnx.BatchStat)).items():  # net(x) updated its stats
        np.testing.assert_allclose(_leaves(new_state)[path], v, rtol=1e-6, atol=1e-7)
    net.eval()
    eval_logits, same = apply_fn(params, new_state, x, train=False)
    assert same is new_state
    np.testing.assert_allclose(np.asarray(eval_logits), np.asarray(net(x)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(eval_logits), np.asarray(logits))  # the modes differ


def test_stateful_form_of_a_model_without_batch_norm() -> None:
    net = models.build("mlp", input_shape=(4,), num_classes=3, seed=1)
    apply_fn, params, model_state = models.stateful(net)
    assert jax.tree.leaves(model_state) == []
    x = jnp.ones((2, 4))
    for train in (True, False):
        np.testing.assert_array_equal(
            np.asarray(apply_fn(params, model_state, x, train=train)[0]), np.asarray(net(x))
        )


def test_functional_refuses_batch_norm_and_train_must_be_a_bool() -> None:
    net = _build("resnet20", (8, 8, 1))
    with pytest.raises(ValueError, match=r"batch-norm statistics \(\['stage1'\].*models\.stateful"):
        models.functional(net)
    apply_fn, params, model_state = models.stateful(net)
    with pytest.raises(ValueError, match="train must be a Python bool"):
        apply_fn(params, model_state, jnp.zeros((2, 8, 8, 1)), train=jnp.bool_(True))


def test_vmapped_bn_tickets_equal_per_ticket_calls() -> None:
    nets = [
        models.instantiate(
            lambda rngs: models.VGG((8, 8, 1), (4, "pool", 6), 10, hidden=5, rngs=rngs), s
        )
        for s in range(3)
    ]
    forms = [models.stateful(n) for n in nets]
    apply_fn = forms[0][0]
    params, states = stack([f[1] for f in forms]), stack([f[2] for f in forms])
    x = jnp.asarray(np.random.default_rng(2).random((4, 8, 8, 1)), jnp.float32)
    one = jax.jit(lambda p, s: apply_fn(p, s, x, train=True))
    logits, new_states = jax.jit(jax.vmap(one))(params, states)
    for i, (_, p, s) in enumerate(forms):
        want_logits, want_state = one(p, s)  # batch statistics of ticket i only
        np.testing.assert_allclose(
            np.asarray(logits[i]), np.asarray(want_logits), rtol=1e-5, atol=1e-5
        )
        for a, b in zip(jax.tree.leaves(want_state), jax.tree.leaves(new_states), strict=True):
            np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a), rtol=1e-5, atol=1e-6)
