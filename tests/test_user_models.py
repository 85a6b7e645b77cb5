"""The user-style models of benchmarks/user_models.py compute what their docstrings say.

Each model's eval-mode forward is checked against the same formula written out in float64 numpy
from the model's own (randomised) parameters; every model runs under ``jax.jit``.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import user_models

# Float32 forward against a float64 reference through a few layers: a relative tolerance.
TOL = {"rtol": 2e-4, "atol": 2e-5}


MODELS: dict[str, Callable[[nnx.Rngs], nnx.Module]] = {
    "concat": lambda rngs: user_models.ConcatCNN((8, 8, 3), 10, width=4, hidden=16, rngs=rngs),
    "depthwise": lambda rngs: user_models.DepthwiseSeparable((6, 6, 2), 7, channels=4, rngs=rngs),
    "vit": lambda rngs: user_models.ViTBlock(5, 8, 3, num_heads=4, rngs=rngs),
    "vit_gqa": lambda rngs: user_models.ViTBlock(5, 8, 3, num_heads=4, num_kv_heads=2, rngs=rngs),
    "mixer": lambda rngs: user_models.MixerBlock(
        5, 8, 3, token_hidden=6, channel_hidden=12, rngs=rngs
    ),
    "transformer": lambda rngs: user_models.TinyTransformer(
        (8, 8, 1), 10, dim=8, num_heads=2, rngs=rngs
    ),
}


def _randomised(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """The model in eval mode with every variable random (BN variances positive): no zero biases."""
    state = nnx.state(model)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    new = [
        jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        if "var" in path
        else 0.5 * jax.random.normal(k, leaf.shape)
        for k, leaf, path in zip(keys, leaves, paths, strict=True)
    ]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    model.eval()
    return model


def _np(variable: nnx.Variable) -> np.ndarray:
    return np.asarray(variable[...], np.float64)


def _conv(x: np.ndarray, k: np.ndarray, groups: int = 1) -> np.ndarray:
    """SAME, stride-1 convolution with an odd kernel, grouped, as a sum over kernel offsets."""
    kh, kw, cin_g, cout = k.shape
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((b, h, w, cout))
    per_group = cout // groups
    for o in range(cout):
        g = o // per_group
        for di in range(kh):
            for dj in range(kw):
                patch = xp[:, di : di + h, dj : dj + w, g * cin_g : (g + 1) * cin_g]
                out[..., o] += patch @ k[di, dj, :, o]
    return out


def _bn(x: np.ndarray, bn: nnx.BatchNorm) -> np.ndarray:
    return (x - _np(bn.mean)) / np.sqrt(_np(bn.var) + 1e-5) * _np(bn.scale) + _np(bn.bias)


def _ln(x: np.ndarray, ln: nnx.LayerNorm) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * _np(ln.scale) + _np(ln.bias)


def _dense(x: np.ndarray, layer: nnx.Linear) -> np.ndarray:
    return x @ _np(layer.kernel) + _np(layer.bias)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _gelu(x: np.ndarray) -> np.ndarray:  # jax.nn.gelu's default (tanh) approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _attention(x: np.ndarray, mha: nnx.MultiHeadAttention) -> np.ndarray:
    """Softmax attention per head; query head h reads key/value head h // (heads / kv heads)."""
    q = np.einsum("btd,dhe->bthe", x, _np(mha.query.kernel)) + _np(mha.query.bias)
    k = np.einsum("btd,dhe->bthe", x, _np(mha.key.kernel)) + _np(mha.key.bias)
    v = np.einsum("btd,dhe->bthe", x, _np(mha.value.kernel)) + _np(mha.value.bias)
    heads, kv_heads, head_dim = q.shape[2], k.shape[2], q.shape[3]
    outs = []
    for h in range(heads):
        kv = h // (heads // kv_heads)
        logits = q[:, :, h] @ k[:, :, kv].transpose(0, 2, 1) / np.sqrt(head_dim)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        outs.append(weights @ v[:, :, kv])
    y = np.stack(outs, axis=2)  # (b, t, heads, head_dim)
    return np.einsum("bthe,hed->btd", y, _np(mha.out.kernel)) + _np(mha.out.bias)


def _vit_tokens(x: np.ndarray, block: user_models.ViTBlock) -> np.ndarray:
    x = x + _attention(_ln(x, block.ln1), block.attn)
    return x + _dense(_gelu(_dense(_ln(x, block.ln2), block.fc1)), block.fc2)


def _patches(x: np.ndarray, p: int) -> np.ndarray:
    """Row-major patches, each flattened (i, j, channel), by explicit loops."""
    b, h, w, c = x.shape
    rows = []
    for i in range(0, h, p):
        for j in range(0, w, p):
            rows.append(x[:, i : i + p, j : j + p, :].reshape(b, p * p * c))
    return np.stack(rows, axis=1)


def _reference(name: str, net: nnx.Module, x: np.ndarray) -> np.ndarray:
    if name == "concat":
        a = _relu(_bn(_conv(x, _np(net.conv3.kernel)), net.bn3))
        b = _relu(_bn(_conv(x, _np(net.conv1.kernel)), net.bn1))
        y = _relu(_conv(np.concatenate([a, b], -1), _np(net.conv.kernel)) + _np(net.conv.bias))
        n, h, w, c = y.shape
        y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        return _dense(_relu(_dense(y.reshape(n, -1), net.fc)), net.out)
    if name == "depthwise":
        y = _relu(_bn(_conv(x, _np(net.stem.kernel)), net.bn_stem))
        y = _relu(_bn(_conv(y, _np(net.depthwise.kernel), groups=y.shape[-1]), net.bn_dw))
        y = _relu(_bn(_conv(y, _np(net.pointwise.kernel)), net.bn_pw))
        return _dense(y.mean(axis=(1, 2)), net.out)
    if name.startswith("vit"):
        return _dense(_vit_tokens(x, net).mean(1), net.out)
    if name == "mixer":
        y = _ln(x, net.ln1).transpose(0, 2, 1)
        x = x + _dense(_gelu(_dense(y, net.token_fc1)), net.token_fc2).transpose(0, 2, 1)
        x = x + _dense(_gelu(_dense(_ln(x, net.ln2), net.channel_fc1)), net.channel_fc2)
        return _dense(x.mean(1), net.out)
    assert name == "transformer"
    y = _dense(_patches(x, net.patch), net.embed) + _np(net.pos)
    for block in net.blocks:
        y = _vit_tokens(y, block)
    return _dense(_ln(y, net.norm).mean(1), net.out)


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_forward_matches_the_formula_in_numpy_and_jit(name: str) -> None:
    net = _randomised(MODELS[name](nnx.Rngs(0)))
    x = np.asarray(jax.random.normal(jax.random.key(2), (3, *net.input_shape)))
    want = _reference(name, net, x.astype(np.float64))
    assert want.shape == (3, net.out.out_features)
    got = net(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), want, **TOL)
    # The pure form users jit: split once, merge inside.
    graphdef, state = nnx.split(net)
    jitted = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(jitted), want, **TOL)


def test_vit_block_without_head_returns_tokens() -> None:
    block = user_models.ViTBlock(5, 8, None, num_heads=2, rngs=nnx.Rngs(0))
    block = _randomised(block)
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, 5, 8)))
    got = np.asarray(block(jnp.asarray(x)))
    np.testing.assert_allclose(got, _vit_tokens(x.astype(np.float64), block), **TOL)


def test_batch_norms_train_until_eval() -> None:
    net = user_models.DepthwiseSeparable((6, 6, 2), 7, channels=4, rngs=nnx.Rngs(0))
    before = np.asarray(net.bn_stem.mean[...])
    net(jnp.ones((2, 6, 6, 2)))  # train mode: running statistics move
    assert not np.allclose(np.asarray(net.bn_stem.mean[...]), before)
    net.eval()
    moved = np.asarray(net.bn_stem.mean[...])
    net(jnp.ones((2, 6, 6, 2)))
    np.testing.assert_array_equal(np.asarray(net.bn_stem.mean[...]), moved)


def test_transformer_rejects_a_shape_patches_do_not_tile() -> None:
    with pytest.raises(ValueError, match=r"input_shape.*patch=2.*\(7, 8, 1\)"):
        user_models.TinyTransformer((7, 8, 1), rngs=nnx.Rngs(0))


def test_docstring_examples_run() -> None:
    result = doctest.testmod(user_models, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
