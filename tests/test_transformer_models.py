"""Transformer models: a float64 numpy forward pass, causality, init laws and seeds, the functional
and ticket-vmapped forms, the prunable-leaf rule, traced head / neuron groups and their compaction,
and the option checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from jaxprune import masks, models, structured
from tests.helpers import stack

# ---- numpy reference -----------------------------------------------------------------------------


def _p(layer_param) -> np.ndarray:
    return np.asarray(layer_param[...], np.float64)


def _linear(x: np.ndarray, layer: nnx.Linear) -> np.ndarray:
    return x @ _p(layer.kernel) + _p(layer.bias)


def _norm(x: np.ndarray, norm) -> np.ndarray:
    eps = float(norm.epsilon)
    if isinstance(norm, nnx.LayerNorm):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * _p(norm.scale) + _p(norm.bias)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * _p(norm.scale)


def _rope(x: np.ndarray) -> np.ndarray:
    """Rotate each pair (j, j + d/2) of every position t by the angle t · 10000^(−2j/d)."""
    _, n, _, d = x.shape
    out = np.empty_like(x)
    for t in range(n):
        for j in range(d // 2):
            a = t * 10000.0 ** (-2 * j / d)
            x1, x2 = x[:, t, :, j], x[:, t, :, j + d // 2]
            out[:, t, :, j] = x1 * math.cos(a) - x2 * math.sin(a)
            out[:, t, :, j + d // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


def _attention(x: np.ndarray, attn, *, causal: bool, rope: bool, heads: int, kv: int) -> np.ndarray:
    b, n, _ = x.shape
    q, k, v = (_linear(x, getattr(attn, name)) for name in ("query", "key", "value"))
    d = q.shape[-1] // heads
    q, k, v = q.reshape(b, n, heads, d), k.reshape(b, n, kv, d), v.reshape(b, n, kv, d)
    if rope:
        q, k = _rope(q), _rope(k)
    out = np.zeros((b, n, heads, d))
    for h in range(heads):
        g = h // (heads // kv)  # the kv head this query head reads
        for i in range(n):
            seen = range(i + 1) if causal else range(n)
            logits = np.stack([(q[:, i, h] * k[:, j, g]).sum(-1) / math.sqrt(d) for j in seen], -1)
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            out[:, i, h] = sum(w[:, [c]] * v[:, j, g] for c, j in enumerate(seen))
    return _linear(out.reshape(b, n, -1), attn.proj)


def _mlp(x: np.ndarray, mlp, kind: str) -> np.ndarray:
    if kind == "gelu":
        u = _linear(x, mlp.fc1)
        return _linear(0.5 * u * (1 + erf(u / math.sqrt(2))), mlp.fc2)
    g = _linear(x, mlp.gate)
    return _linear(g / (1 + np.exp(-g)) * _linear(x, mlp.fc1), mlp.fc2)


def _blocks(h: np.ndarray, net, opts: dict, *, causal: bool, rope: bool) -> np.ndarray:
    heads = opts["heads"]
    kv = opts.get("kv_heads") or heads
    for block in net.blocks:
        h = h + _attention(
            _norm(h, block.norm1), block.attn, causal=causal, rope=rope, heads=heads, kv=kv
        )
        h = h + _mlp(_norm(h, block.norm2), block.mlp, opts.get("mlp", "gelu"))
    return h


def _lm_numpy(net, tokens: np.ndarray, opts: dict) -> np.ndarray:
    rope = opts.get("positions") == "rope"
    h = _p(net.embed.embedding)[tokens]
    if not rope:
        h = h + _p(net.pos.embedding)[: tokens.shape[1]]
    h = _blocks(h, net, opts, causal=True, rope=rope)
    return _linear(_norm(h, net.norm), net.out)


def _vit_numpy(net, x: np.ndarray, opts: dict) -> np.ndarray:
    p = opts.get("patch", 2)
    b, height, width, _ = x.shape
    patches = [
        x[:, i : i + p, j : j + p, :].reshape(b, -1)  # (row, column, channel) order
        for i in range(0, height, p)
        for j in range(0, width, p)
    ]
    h = _linear(np.stack(patches, 1), net.patch) + _p(net.pos)
    h = _blocks(h, net, opts, causal=False, rope=False)
    return _linear(_norm(h, net.norm).mean(1), net.out)


def _randomised(net, seed: int):
    """Every param redrawn ~ N(0, 0.5²) (biases and norm scales too, so each one is exercised)."""
    _, params, _ = models.functional(net)
    rng = np.random.default_rng(seed)  # numpy: no compilation per leaf shape
    nnx.update(
        net, jax.tree.map(lambda a: jnp.asarray(0.5 * rng.normal(size=a.shape), a.dtype), params)
    )
    return net


def _run(net, x):
    """The model's forward pass as one compiled program (eager ops compile one by one: slower)."""
    apply_fn, params, _ = models.functional(net)
    return jax.jit(apply_fn)(params, x)


def _tokens(shape, vocab: int = 11, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


LM_OPTIONS = [
    {"heads": 2},
    {"heads": 4, "kv_heads": 1, "mlp": "swiglu", "norm": "rms", "positions": "rope"},
    {"heads": 4, "kv_heads": 2, "norm": "rms", "positions": "rope"},
    {"heads": 4, "kv_heads": 2, "mlp": "swiglu", "mlp_ratio": 1.5},
]


def _lm(opts: dict, *, seed: int = 0, context: int = 6, vocab: int = 11, **kw):
    return models.build(
        "transformer", input_shape=(context,), num_classes=vocab, seed=seed,
        dim=8, depth=2, **opts, **kw,
    )  # fmt: skip


# ---- forward passes against numpy ----------------------------------------------------------------


@pytest.mark.parametrize("opts", LM_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_transformer_forward_matches_numpy(opts) -> None:
    net = _randomised(_lm(opts), 1)
    for n in (6, 4):  # the full context and a shorter window
        x = _tokens((2, n), seed=n)
        want = _lm_numpy(net, np.asarray(x), opts)
        got = _run(net, x)
        assert got.shape == (2, n, 11)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    # the protocol posttrain uses composes to the same logits
    @jax.jit
    def protocol(x):
        h = net.embed_inputs(x)
        for block in net.blocks:
            h = block(h)
        return net.readout(h)

    np.testing.assert_allclose(protocol(x), want, rtol=1e-4, atol=1e-4)


VIT_OPTIONS = [
    ((4, 4, 1), {"heads": 2}),
    ((4, 6, 3), {"heads": 4, "kv_heads": 2, "mlp": "swiglu", "norm": "rms"}),
    ((8, 4, 2), {"heads": 2, "kv_heads": 1, "patch": 4, "mlp_ratio": 1.0}),
]


@pytest.mark.parametrize("shape, opts", VIT_OPTIONS, ids=["mha", "gqa-swiglu-rms", "mqa-patch4"])
def test_vit_forward_matches_numpy(shape, opts) -> None:
    net = models.build("vit", input_shape=shape, num_classes=5, dim=8, seed=2, **opts)
    net = _randomised(net, 3)
    x = jax.random.normal(jax.random.key(4), (3, *shape))
    got = _run(net, x)
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, _vit_numpy(net, np.asarray(x, np.float64), opts), rtol=1e-4, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_changing_a_token_changes_no_earlier_logits(positions) -> None:
    net = _randomised(_lm({"heads": 2, "positions": positions}), 5)
    apply_fn, params, _ = models.functional(net)
    forward = jax.jit(apply_fn)
    x = _tokens((2, 6))
    for t in (0, 3, 5):
        y = x.at[:, t].set((x[:, t] + 1) % 11)
        a, b = np.asarray(forward(params, x)), np.asarray(forward(params, y))
        np.testing.assert_array_equal(a[:, :t], b[:, :t])  # same computation up to t
        assert np.abs(a[:, t:] - b[:, t:]).max(axis=-1).min() > 1e-4  # every later position sees it


# ---- initialisation ------------------------------------------------------------------------------


def _leaves(net) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(net, nnx.Param))
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


@pytest.mark.parametrize("name", ["transformer", "vit"])
def test_seed_decides_the_weights(name: str) -> None:
    shape = (6,) if name == "transformer" else (4, 4, 1)
    build = lambda seed: models.build(  # noqa: E731
        name, input_shape=shape, num_classes=7, seed=seed, dim=8, depth=2, heads=2
    )
    a, b, c = _leaves(build(0)), _leaves(build(0)), _leaves(build(1))
    for path, leaf in a.items():
        np.testing.assert_array_equal(leaf, b[path])
        constant = path.endswith(("['bias'].value", "['scale'].value"))
        assert constant == np.array_equal(leaf, c[path]), path


def test_init_laws_of_the_language_model() -> None:
    """Embeddings N(0, 0.02²) (2¹⁸ draws: the std is within 1%), Glorot-normal kernels, norm
    scales 1 and every bias 0."""
    net = models.build(
        "transformer", input_shape=(512,), num_classes=4096, dim=64, depth=1, heads=4,
        mlp="swiglu", seed=3,
    )  # fmt: skip
    for table in (net.embed.embedding, net.pos.embedding):
        w = np.asarray(table[...])
        assert abs(w.std() - 0.02) < 0.0004 and abs(w.mean()) < 0.0002
        assert np.abs(w).max() > 4 * 0.02  # untruncated (a ±2σ truncation never reaches 4σ)
    fc1 = np.asarray(net.block0.mlp.fc1.kernel[...])  # (64, 256)
    assert abs(fc1.std() / math.sqrt(2 / (64 + 256)) - 1) < 0.03
    for path, leaf in _leaves(net).items():
        if path.endswith("['scale'].value"):
            np.testing.assert_array_equal(leaf, 1.0)
        if path.endswith("['bias'].value"):
            np.testing.assert_array_equal(leaf, 0.0)
    assert sum(p.endswith("['scale'].value") for p in _leaves(net)) == 3  # norm1, norm2, norm


def test_vit_positions_follow_their_law() -> None:
    """2¹⁵ draws: the std is within 1.5% of 0.02."""
    net = models.build(
        "vit", input_shape=(16, 16, 1), num_classes=10, patch=1, dim=128, depth=1, seed=1
    )
    pos = np.asarray(net.pos[...])  # (256 tokens, 128)
    assert pos.shape == (256, 128) and abs(pos.std() - 0.02) < 0.0006


# ---- functional form, tickets, masks -------------------------------------------------------------


@pytest.mark.parametrize("name", ["transformer", "vit"])
def test_functional_and_vmapped_tickets_equal_each_model_alone(name: str) -> None:
    if name == "transformer":
        nets = [_lm(LM_OPTIONS[1], seed=s) for s in range(3)]
        x = _tokens((2, 6))
    else:
        nets = [
            models.build("vit", input_shape=(4, 4, 1), num_classes=3, dim=8, depth=1, seed=s)
            for s in range(3)
        ]
        x = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    apply_fn, params, rest = models.functional(nets[0])
    assert jax.tree.leaves(rest) == []
    forward = jax.jit(apply_fn)  # the same architecture: one program for every ticket
    module = jax.jit(lambda x: nets[0](x))  # the module itself, closed over
    np.testing.assert_allclose(forward(params, x), module(x), rtol=1e-6, atol=1e-6)
    tickets = [models.functional(n)[1] for n in nets]
    got = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))(stack(tickets), x)
    for i, ticket in enumerate(tickets):
        np.testing.assert_allclose(got[i], forward(ticket, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[0], got[1])


def test_default_rule_prunes_every_weight_matrix() -> None:
    net = _lm(LM_OPTIONS[3])
    _, params, _ = models.functional(net)
    prunable = {p: v for p, v in _leaves_of(masks.is_prunable(params)).items()}
    layers = ("query", "key", "value", "proj", "fc1", "gate", "fc2")
    for i in range(2):
        for layer in layers:
            part = "attn" if layer in layers[:4] else "mlp"
            assert prunable[f"['block{i}']['{part}']['{layer}']['kernel'].value"]
            assert not prunable[f"['block{i}']['{part}']['{layer}']['bias'].value"]
        assert not prunable[f"['block{i}']['norm1']['scale'].value"]
    assert prunable["['out']['kernel'].value"] and prunable["['embed']['embedding'].value"]
    only = _leaves_of(masks.is_prunable(params, "kernel"))
    assert only == {p: p.endswith("['kernel'].value") for p in only}
    ones = masks.ones(params)
    masks.validate(ones, params)
    assert int(masks.count(ones)) == models.param_count(params)


def _leaves_of(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): v for p, v in flat}


# ---- structured: heads and MLP neurons -----------------------------------------------------------


def _compact_half(net, x):
    """Compact to half of every group (a fixed choice, units 1, 2, 5, 6, …: which half is
    immaterial here, selection is tested in test_structured_importance): the small model
    computes what the masked one does."""
    apply_fn, params, _ = models.functional(net)
    groups = structured.channel_groups(net, x)
    keep = {g.name: np.isin(np.arange(g.size) % 4, (1, 2)) for g in groups}
    small = structured.compact(net, keep, x=x, groups=groups, check=False)
    mask = structured.element_mask(params, groups, keep)
    forward = jax.jit(apply_fn)
    want = forward(jax.tree.map(lambda p, m: np.where(m, p, 0), params, mask), x)
    np.testing.assert_allclose(_run(small.model, x), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(forward(params, x), want, atol=1e-3)  # the pruning did something
    assert structured.compacted_param_count(params, groups, keep) == models.param_count(
        small.params
    )
    return groups, small.model


@pytest.mark.parametrize(
    "opts",
    [
        {"heads": 4, "mlp": "gelu"},
        {"heads": 4, "kv_heads": 2, "mlp": "swiglu", "norm": "rms", "positions": "rope"},
    ],
    ids=["mha-gelu", "gqa-swiglu-rope"],
)
def test_transformer_heads_and_mlp_neurons_are_groups_and_compact(opts) -> None:
    """dim 16, 4 heads of 4: per block a heads group (query heads with their key / value heads,
    the proj input rows) — with 2 kv heads a unit is a kv-group of 2 query heads, 1 key and 1
    value head — and a group of the 32 MLP neurons (fc1 [and gate] columns, fc2 rows)."""
    net = _randomised(
        models.build("transformer", input_shape=(6,), num_classes=11, dim=16, depth=2,
                     mlp_ratio=2.0, **opts),
        7,
    )  # fmt: skip
    x = _tokens((2, 6))
    kv = opts.get("kv_heads", 4)
    groups, small = _compact_half(net, x)
    names = [(g.name, g.size) for g in groups]
    assert names == [("block0/attn/query", kv), ("block0/mlp/fc1", 32),
                     ("block1/attn/query", kv), ("block1/mlp/fc1", 32)]  # fmt: skip
    heads, neurons = groups[0], groups[1]
    per = 4 * 4 // kv  # query columns per unit
    assert [(s.path, s.axis) for s in heads.producers] == [
        (("block0", "attn", name, "kernel"), 1) for name in ("query", "key", "value")
    ]
    assert heads.producers[0].positions == tuple(
        tuple(range(u * per, (u + 1) * per)) for u in range(kv)
    )
    assert heads.producers[1].positions == tuple(tuple(range(u * 4, u * 4 + 4)) for u in range(kv))
    assert [(s.path, s.axis) for s in heads.consumers] == [
        (("block0", "attn", "proj", "kernel"), 0)
    ]
    fcs = ["fc1", "gate"] if opts["mlp"] == "swiglu" else ["fc1"]
    assert [s.path[2] for s in neurons.producers] == fcs
    assert [(s.path, s.axis) for s in neurons.consumers] == [
        (("block0", "mlp", "fc2", "kernel"), 0)
    ]
    for block in small.blocks:
        assert block.attn.heads == 2 and block.attn.kv_heads == kv // 2
        assert block.mlp.fc1.kernel.shape == (16, 16) and block.mlp.fc2.kernel.shape == (16, 16)


def test_vit_heads_compact() -> None:
    net = models.build("vit", input_shape=(4, 4, 2), num_classes=3, dim=16, heads=4, seed=1)
    net = _randomised(net, 2)
    groups, small = _compact_half(net, jax.random.normal(jax.random.key(0), (2, 4, 4, 2)))
    assert [(g.name, g.size) for g in groups] == [
        ("block0/attn/query", 4), ("block0/mlp/fc1", 32),
        ("block1/attn/query", 4), ("block1/mlp/fc1", 32),
    ]  # fmt: skip
    assert small.block1.attn.query.kernel.shape == (16, 8)


# ---- bad options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dim": 10, "heads": 4}, r"dim must be divisible by heads.*dim=10, heads=4"),
        ({"heads": 4, "kv_heads": 3}, r"heads must be divisible by kv_heads.*kv_heads=3"),
        ({"mlp": "relu"}, r"unknown mlp 'relu'.*gelu, swiglu"),
        ({"norm": "batch"}, r"unknown norm 'batch'.*layer, rms"),
        ({"positions": "alibi"}, r"unknown positions 'alibi'.*learned, rope"),
        ({"dim": 12, "heads": 4, "positions": "rope"}, r"rope needs an even head dimension"),
        ({"depth": 0}, r"depth must be a positive int"),
        ({"mlp_ratio": 0.0}, r"mlp_ratio must be a positive number"),
        ({"width": 0.5}, r"does not take option\(s\) \['dim', 'width'\]"),
    ],
)
def test_bad_transformer_options_name_the_argument(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        models.build("transformer", input_shape=(6,), num_classes=11, **{"dim": 8, **kw})


def test_bad_inputs_and_shapes_name_the_argument() -> None:
    net = _lm({"heads": 2})
    with pytest.raises(ValueError, match=r"7 positions, more than the model's context=6"):
        net(_tokens((2, 7)))
    with pytest.raises(ValueError, match=r"x must be integer token ids"):
        net(jnp.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"input_shape must be \(context,\)"):
        models.build("transformer", input_shape=(8, 8, 1), num_classes=11)
    with pytest.raises(ValueError, match=r"patch must divide the image.*patch=4.*\(6, 8, 1\)"):
        models.build("vit", input_shape=(6, 8, 1), num_classes=3, patch=4)
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, channels\)"):
        models.build("vit", input_shape=(64,), num_classes=3)
    with pytest.raises(ValueError, match=r"heads must be divisible by kv_heads"):
        models.ViT((4, 4, 1), 3, dim=8, heads=4, kv_heads=3, rngs=nnx.Rngs(0))
    vit = models.build("vit", input_shape=(4, 4, 1), num_classes=3, dim=8)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4, 4, 1\)"):
        vit(jnp.zeros((2, 4, 4, 3)))
