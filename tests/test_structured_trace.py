"""Channel groups traced from the program, and compaction of any NNX model (jaxprune.structured)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import user_models
from jaxprune import masks, metrics, models, structured
from jaxprune.structured import trace

# ---- the groups a person writes down by reading the model's code ------------------------------


def _own(n_channels: int, length: int) -> tuple[tuple[int, ...], ...]:
    """Channel k owns positions i with i mod n_channels = k (a producer's axis, or a flatten)."""
    return tuple(tuple(range(k, length, n_channels)) for k in range(n_channels))


def _hand(
    producer, size, *, conv=True, bias=True, bn=None, consumer, consumer_axis, consumer_len=None
):
    """{(path, axis): owned positions} of one hand-written group (the old hand-coded table): the
    producer kernel's last axis (3 for a conv, 1 for a dense layer), its bias, its batch norm,
    and the consumer's input axis."""
    table = {((*producer, "kernel"), 3 if conv else 1): _own(size, size)}
    if bias:
        table[((*producer, "bias"), 0)] = _own(size, size)
    for leaf in ("scale", "bias", "mean", "var") if bn else ():
        table[((*bn, leaf), 0)] = _own(size, size)
    table[(consumer, consumer_axis)] = _own(size, consumer_len or size)
    return table


def _traced(group: structured.ChannelGroup) -> dict:
    return {(s.path, s.axis): s.positions for s in (*group.members, *group.consumers)}


def _conv_table(net: models.ConvNet) -> dict[str, dict]:
    """ConvNet: each conv's filters feed the next conv's input channels; the last conv's feed
    fc1's rows after an HWC flatten (row i belongs to channel i mod C); dense layers chain."""
    p = models.functional(net)[1]
    convs = [s for s in getattr(net, "steps", ()) if s != models.POOL]
    dense = list(net.dense_names)
    out = {}
    for a, b in zip(convs, [*convs[1:], dense[0]][: len(convs)], strict=True):
        size = p[a]["kernel"][...].shape[-1]
        rows = p[b]["kernel"][...].shape[0] if b.startswith("fc") else size
        out[a] = _hand(
            (a,), size, consumer=(b, "kernel"), consumer_axis=2 if b.startswith("conv") else 0,
            consumer_len=rows,
        )  # fmt: skip
    for a, b in zip(dense, [*dense[1:], "out"], strict=True):
        size = p[a]["kernel"][...].shape[-1]
        out[a] = _hand((a,), size, conv=False, consumer=(b, "kernel"), consumer_axis=0)
    return out


def _vgg_table(net: models.VGG) -> dict[str, dict]:
    """VGG: conv k → bn k → next conv (input channels); the last conv → global average pool →
    fc1 → bn_fc1 → out; no conv biases."""
    p = models.stateful(net)[1]
    convs = [s for s in net.steps if isinstance(s, str)]
    out = {}
    head = "fc1" if net.hidden is not None else "out"
    for a, b in zip(convs, [*convs[1:], head], strict=True):
        size = p[a]["kernel"][...].shape[-1]
        out[a] = _hand(
            (a,), size, bias=False, bn=(f"bn{a[4:]}",), consumer=(b, "kernel"),
            consumer_axis=2 if b.startswith("conv") else 0,
        )  # fmt: skip
    if net.hidden is None:
        return out
    out["fc1"] = _hand(
        ("fc1",), p["fc1"]["kernel"][...].shape[-1], conv=False, bn=("bn_fc1",),
        consumer=("out", "kernel"),
        consumer_axis=0,
    )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "make, table",
    [
        (lambda: models.mlp((8, 8, 1), 10, hidden=(16, 12)), _conv_table),
        (lambda: models.conv4((8, 8, 1), 10, width=0.125), _conv_table),
        (lambda: models.conv6((16, 16, 3), 10, width=0.0625), _conv_table),
        (lambda: models.vgg16((8, 8, 3), 10, width=0.0625), _vgg_table),
        (lambda: models.vgg11((8, 8, 3), 10, width=0.0625), _vgg_table),
    ],
    ids=["mlp", "conv4", "conv6", "vgg16", "vgg11"],
)
def test_traced_groups_equal_the_hand_written_ones(make, table) -> None:
    net = make()
    groups = structured.channel_groups(net)
    want = table(net)
    assert [g.name for g in groups] == list(want)  # forward order
    for g in groups:
        assert _traced(g) == want[g.name], g.name
        assert g.size == len(next(iter(want[g.name].values())))
        assert g.kernel == (g.name, "kernel") and g.producers[0].path == g.kernel
    bn = {g.name: g.bn_scale for g in groups}
    if isinstance(net, models.VGG):
        assert bn["conv3"] == ("bn3", "scale")
        assert bn.get("fc1", ("bn_fc1", "scale")) == ("bn_fc1", "scale")
    else:
        assert set(bn.values()) == {None}


def test_resnet20_groups_match_a_hand_count() -> None:
    """ResNet-20 (3 stages × 3 basic blocks, widths 16/32/64, option-A shortcuts):

    * each block's conv1 → bn1 → conv2 (input channels): one group per block, 9 in all, of 16,
      16, 16, 32, 32, 32, 64, 64, 64 channels;
    * the residual stream: the stem conv and bn, and every block's conv2 and bn2 in all three
      stages add channel by channel (the shortcut pads the stream with zero channels, so stream
      channel c < 16 is the same channel in every stage): one group of 16 channels with 10
      producers (stem + 9 conv2), 5 + 9·5 = 50 member slices, consumed by the 9 conv1 and by
      the first 16 rows of the classifier;
    * stream channels 16–31 (stage 2 on) and 32–63 (stage 3) are created by the padding: the
      padded model could not drop them, so they are frozen (in no group)."""
    net = models.resnet20((8, 8, 3), 10, width=1.0)
    groups = structured.channel_groups(net)
    assert len(groups) == 10
    stream, blocks = groups[0], groups[1:]
    assert [g.name for g in blocks] == [
        f"stage{s}/block{b}/conv1" for s in (1, 2, 3) for b in range(3)
    ]
    assert [g.size for g in blocks] == [16] * 3 + [32] * 3 + [64] * 3
    for g in blocks:
        blk = tuple(g.name.split("/")[:2])
        assert _traced(g) == _hand(
            (*blk, "conv1"), g.size, bias=False, bn=(*blk, "bn1"),
            consumer=(*blk, "conv2", "kernel"), consumer_axis=2,
        )  # fmt: skip
    assert stream.name == "stem/conv" and stream.size == 16
    conv2 = [(f"stage{s}", f"block{b}", "conv2", "kernel") for s in (1, 2, 3) for b in range(3)]
    assert [s.path for s in stream.producers] == [("stem", "conv", "kernel"), *conv2]
    assert len(stream.members) == 50
    assert stream.bn_scale == ("stem", "bn", "scale")
    assert {s.path for s in stream.consumers} == {
        (f"stage{s}", f"block{b}", "conv1", "kernel") for s in (1, 2, 3) for b in range(3)
    } | {("out", "kernel")}
    own16 = _own(16, 16)
    assert all(s.positions == own16 for s in (*stream.members, *stream.consumers))
    # the stage-3 conv2 outputs 64 channels; only the first 16 belong to a group
    assert next(s for s in stream.producers if s.path == conv2[-1]).axis == 3


def test_resnet56_has_one_stream_group_and_27_block_groups() -> None:
    groups = structured.channel_groups(models.resnet56((8, 8, 3), 10, width=0.25))
    assert len(groups) == 28 and len(groups[0].producers) == 1 + 27
    assert sum(len(g.producers) == 1 for g in groups) == 27


# ---- models a user brings ---------------------------------------------------------------------


class _LayerNormMLP(nnx.Module):
    """fc1 → LayerNorm → relu → fc2 → relu → out: the LayerNorm's mean over fc1's outputs couples
    every fc1 channel with every other, so only fc2 is prunable."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.fc2(nnx.relu(self.ln(self.fc1(x))))))


def test_a_reduction_over_channels_freezes_them_with_the_reason() -> None:
    net = _LayerNormMLP(rngs=nnx.Rngs(0))
    graph = trace.trace_model(net, jnp.ones((2, 6)))
    assert [g.name for g in graph.groups] == ["fc2"]
    assert "reduce_sum" in graph.frozen["fc1"]
    assert graph.frozen["out"] == "reaches the model's output"


class _Sorted(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(4, 6, rngs=rngs)
        self.fc2 = nnx.Linear(6, 2, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.sort(self.fc1(x), axis=-1))


def test_an_unsupported_op_is_an_error_naming_it_or_freezes_on_request() -> None:
    net = _Sorted(rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"operation 'sort' on prunable channels \(channels of fc1/"
    ):
        structured.channel_groups(net, jnp.ones((2, 4)))
    graph = trace.trace_model(net, jnp.ones((2, 4)), unsupported="freeze")
    assert graph.groups == () and "'sort'" in graph.frozen["fc1"]
    with pytest.raises(
        ValueError, match=r"unknown unsupported .ignore.; expected one of: error, freeze"
    ):
        structured.channel_groups(net, jnp.ones((2, 4)), unsupported="ignore")


def test_a_model_without_input_shape_needs_x() -> None:
    with pytest.raises(ValueError, match=r"x \(an example input with a batch axis\) is required"):
        structured.channel_groups(_Sorted(rngs=nnx.Rngs(0)))


def test_trace_groups_of_a_pure_function_with_a_residual_and_a_slice() -> None:
    """Hand count: a and b add (one group of 4 with two producers, consumed by c and by d);
    c's outputs are sliced (the pruned model would slice other columns): frozen; d is free."""

    def fn(p, x):
        h = jax.nn.relu(x @ p["a"])
        h = h + jnp.tanh(h @ p["b"])
        s = (h @ p["c"])[:, :3]
        return jnp.concatenate([s, jax.nn.relu(h @ p["d"])], -1) @ p["out"]

    p = {k: jnp.ones(s) for k, s in
         {"a": (3, 4), "b": (4, 4), "c": (4, 5), "d": (4, 6), "out": (9, 2)}.items()}  # fmt: skip
    graph = structured.trace_groups(fn, p, jnp.ones((2, 3)))
    assert [(g.name, g.size) for g in graph.groups] == [("a", 4), ("d", 6)]
    a, d = graph.groups
    assert [s.path for s in a.producers] == [("a",), ("b",)]
    assert {s.path for s in a.consumers} == {("b",), ("c",), ("d",)}
    # d's channels land at offset 3 of the concatenation: rows 3..8 of out
    assert next(s for s in d.consumers if s.path == ("out",)).positions == tuple(
        (3 + k,) for k in range(6)
    )
    assert graph.frozen["c"] == "sliced"


# ---- compaction of any model ------------------------------------------------------------------


def _randomised(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for leaf in leaves:
        a = rng.normal(size=np.shape(leaf)).astype(np.float32) * 0.5
        out.append(jnp.asarray(a if np.ndim(leaf) != 1 else np.abs(a) + 0.5))
    return jax.tree.unflatten(treedef, out)


def _check_compaction(net, x, rate=0.5):
    """Compact at ``rate`` of every group's channels (L1, layerwise): outputs equal the masked
    model's (eval mode, random BN statistics), and the parameter count equals the prediction."""
    fn, params, state = trace.eval_function(net)
    params, state = _randomised(params, 1), _randomised(state, 2)
    groups = structured.channel_groups(net, x)
    keep = structured.select_channels(structured.channel_scores(params, groups, "l1"), rate)
    small = structured.compact(
        net, keep, params=params, model_state=state, groups=groups, x=x, check=False
    )  # checked here instead, with the test's own tolerance
    mask = structured.element_mask(params, groups, keep)
    fn = jax.jit(fn)
    want = fn(masks.apply(params, mask), state, x)
    small_fn = trace.eval_function(small.model)[0]
    got = jax.jit(small_fn)(small.params, small.model_state, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    predicted = structured.compacted_param_count(params, groups, keep)
    assert predicted == models.param_count(small.params)
    assert predicted == sum(metrics.layer_params(small.params).values())
    assert predicted < models.param_count(params)
    assert not np.allclose(fn(params, state, x), want)  # the pruning did something
    return groups, keep, small


@pytest.mark.parametrize(
    "make, shape",
    [
        pytest.param(
            lambda: models.vgg16((8, 8, 3), 10, width=0.0625), (8, 8, 3), marks=pytest.mark.slow
        ),
        (lambda: models.resnet20((8, 8, 3), 10, width=0.5), (8, 8, 3)),
    ],
    ids=["vgg16", "resnet20"],
)
def test_jaxprune_models_compact_generically(make, shape) -> None:
    net = make()
    _groups, keep, small = _check_compaction(net, jax.random.normal(jax.random.key(0), (3, *shape)))
    assert type(small.model) is type(net)
    if isinstance(net, models.ResNet):  # the residual stream was pruned too, in every stage
        assert int(np.sum(keep["stem/conv"])) == 4
        assert small.model.stage3.block2.conv2.kernel.shape[-1] == 4 + 8 + 16
        assert small.model.out.kernel.shape == (28, 10)


@pytest.mark.slow
def test_resnet56_compacts_with_its_stages_coupled() -> None:
    net = models.resnet56((8, 8, 3), 10, width=0.5)
    _check_compaction(net, jax.random.normal(jax.random.key(0), (2, 8, 8, 3)))


def _x(shape, batch=3):
    return jax.random.normal(jax.random.key(0), (batch, *shape))


def test_user_cnn_with_a_concatenation_and_a_flatten_compacts() -> None:
    """Hand count: the two branches (conv3 and conv1, 4 filters each) are separate groups that
    feed offsets 0–3 and 4–7 of conv's input; conv's 8 filters reach fc's rows through a 2×2 max
    pool and an HWC flatten of a 4×4×8 map, so filter c owns rows {8 s + c: s < 16}."""
    net = user_models.ConcatCNN((8, 8, 3), 10, width=4, hidden=16, rngs=nnx.Rngs(0))
    groups, _keep, small = _check_compaction(net, _x((8, 8, 3)))
    assert [(g.name, g.size) for g in groups] == [
        ("conv3", 4),
        ("conv1", 4),
        ("conv", 8),
        ("fc", 16),
    ]
    by = {g.name: g for g in groups}
    assert by["conv3"].bn_scale == ("bn3", "scale")
    assert by["conv1"].consumers[0].positions == tuple((4 + k,) for k in range(4))
    assert by["conv"].consumers[0].positions == tuple(tuple(range(c, 128, 8)) for c in range(8))
    assert small.model.conv.kernel.shape == (3, 3, 4, 4) and small.model.fc.kernel.shape == (64, 8)


def test_depthwise_separable_block_couples_depthwise_in_and_out() -> None:
    """The depthwise conv filters channel c of the stem alone: stem filter c, its BN, depthwise
    filter c and its BN, and pointwise input c are one channel."""
    net = user_models.DepthwiseSeparable(
        (8, 8, 3), 10, channels=6, out_channels=8, rngs=nnx.Rngs(0)
    )
    groups, _keep, small = _check_compaction(net, _x((8, 8, 3)))
    assert [(g.name, g.size) for g in groups] == [("stem", 6), ("pointwise", 8)]
    assert [s.path for s in groups[0].producers] == [("stem", "kernel"), ("depthwise", "kernel")]
    assert small.model.depthwise.kernel.shape == (3, 3, 1, 3)
    assert small.model.depthwise.feature_group_count == 3


@pytest.mark.parametrize("kv_heads", [None, 2], ids=["mha", "gqa"])
def test_attention_heads_are_removed_whole(kv_heads) -> None:
    """ViT block, 4 heads of 4 features: a head owns its q, k, v output columns and the output
    projection's input rows; under grouped-query attention (2 kv heads) a kv-group of 2 query
    heads, 1 key head and 1 value head is the unit. The LayerNorm'd residual stream is frozen."""
    net = user_models.ViTBlock(5, 16, 3, num_heads=4, num_kv_heads=kv_heads, rngs=nnx.Rngs(0))
    graph = trace.trace_model(net)
    heads = graph.groups[0]
    units = kv_heads or 4
    assert [(g.name, g.size) for g in graph.groups] == [("attn/query", units), ("fc1", 64)]
    q = heads.producers[0]
    assert q.path == ("attn", "query", "kernel") and q.axis == 1
    assert q.positions == tuple(
        tuple(range(k * 4 // units, (k + 1) * 4 // units)) for k in range(units)
    )
    assert [s.path[:2] for s in heads.producers] == [("attn", n) for n in ("query", "key", "value")]
    assert [(s.path, s.axis) for s in heads.consumers] == [(("attn", "out", "kernel"), 0)]
    assert "fc2" in graph.frozen and "out" in graph.frozen
    _groups, _keep, small = _check_compaction(net, _x((5, 16)))
    attn = small.model.attn
    assert attn.num_heads == 2 and attn.query.kernel.shape == (16, 2, 4)
    assert attn.key.kernel.shape == (16, 2 if kv_heads is None else 1, 4)


def test_mixer_block_prunes_both_hidden_layers() -> None:
    net = user_models.MixerBlock(5, 8, 3, token_hidden=6, channel_hidden=16, rngs=nnx.Rngs(0))
    groups, _, small = _check_compaction(net, _x((5, 8)))
    assert [(g.name, g.size) for g in groups] == [("token_fc1", 6), ("channel_fc1", 16)]
    assert small.model.token_fc1.kernel.shape == (5, 3)


def test_tiny_transformer_compacts_every_block() -> None:
    net = user_models.TinyTransformer((8, 8, 1), 10, dim=8, num_heads=2, depth=2, rngs=nnx.Rngs(0))
    groups, _, small = _check_compaction(net, _x((8, 8, 1)))
    assert [g.name for g in groups] == [
        "blocks/0/attn/query", "blocks/0/fc1", "blocks/1/attn/query", "blocks/1/fc1"
    ]  # fmt: skip
    assert small.model.blocks[1].attn.num_heads == 1


class _OwnAttention(nnx.Module):
    """A hand-written attention that reshapes by its own head count (not a flax layer)."""

    def __init__(self, dim: int, heads: int, *, by_heads: bool, rngs: nnx.Rngs):
        self.q, self.k, self.v = (nnx.Linear(dim, dim, rngs=rngs) for _ in range(3))
        self.o = nnx.Linear(dim, dim, rngs=rngs)
        self.out = nnx.Linear(dim, 2, rngs=rngs)
        self.heads, self.head_dim, self.by_heads = heads, dim // heads, by_heads

    def split(self, t):
        b, n, _ = t.shape
        return (
            t.reshape(b, n, self.heads, -1) if self.by_heads else t.reshape(b, n, -1, self.head_dim)
        )

    def __call__(self, x):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.head_dim), -1)
        h = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        return self.out(self.o(h.reshape(*x.shape[:2], -1)).mean(1))


def test_own_attention_reshaping_by_head_dim_compacts_and_by_head_count_is_refused() -> None:
    """The reshape D → (heads, d) joins each head's d columns into one unit (4 heads of 2); a
    model that reshapes by its own head count computes something else once heads are removed,
    and compaction says so instead of returning it."""
    x = _x((5, 8))
    net = _OwnAttention(8, 4, by_heads=False, rngs=nnx.Rngs(0))
    groups, _, small = _check_compaction(net, x)
    assert [(g.name, g.size) for g in groups] == [("q", 4), ("o", 8)]  # no residual: o is free
    assert groups[0].producers[0].positions == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert small.model.q.kernel.shape == (8, 4)
    bad = _OwnAttention(8, 4, by_heads=True, rngs=nnx.Rngs(0))
    keep = {"q": jnp.array([True, False, True, False]), "o": jnp.ones(8, bool)}
    with pytest.raises(ValueError, match="compacted _OwnAttention does not"):
        structured.compact(bad, keep, x=x)


def test_scratch_of_a_user_model_draws_each_layer_from_its_own_initialiser() -> None:
    net = user_models.DepthwiseSeparable(
        (8, 8, 3), 10, channels=6, out_channels=8, rngs=nnx.Rngs(0)
    )
    groups = structured.channel_groups(net)
    keep = {g.name: jnp.arange(g.size) % 3 != 0 for g in groups}
    small = structured.compact(net, keep).model
    fresh = structured.scratch(net, keep, seed=5)
    shapes = jax.tree.map(jnp.shape, nnx.state(small))
    assert jax.tree.map(jnp.shape, nnx.state(fresh)) == shapes
    assert float(jnp.abs(fresh.bn_dw.scale[...] - 1).max()) == 0.0  # ones_init
    assert float(jnp.abs(fresh.bn_dw.var[...] - 1).max()) == 0.0  # fresh statistics
    # nnx.Conv's default kernel init is LeCun normal: std sqrt(1 / fan_in) at the pruned fan-in
    k = np.asarray(fresh.pointwise.kernel[...])
    assert k.shape == (1, 1, 4, 5) and 0.5 < k.std() * np.sqrt(4) < 1.5
    other = structured.scratch(net, keep, seed=6)
    assert not np.allclose(k, np.asarray(other.pointwise.kernel[...]))


class _TinyLM(nnx.Module):
    """A decoder block as language models write it: token embedding (tied to the output),
    RMSNorm, causal multi-head attention, a SwiGLU MLP (gate and up multiply), dropout."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.emb = nnx.Embed(50, 16, rngs=rngs)
        self.ln1, self.ln2 = nnx.RMSNorm(16, rngs=rngs), nnx.RMSNorm(16, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=16, decode=False, rngs=rngs)
        self.gate, self.up = nnx.Linear(16, 32, rngs=rngs), nnx.Linear(16, 32, rngs=rngs)
        self.down = nnx.Linear(32, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, tokens):
        x = self.emb(tokens)
        x = x + self.drop(self.attn(self.ln1(x), mask=nnx.make_causal_mask(tokens)))
        h = self.ln2(x)
        x = x + self.down(nnx.silu(self.gate(h)) * self.up(h))
        return self.emb.attend(x)


def test_language_model_block_heads_and_swiglu_neurons() -> None:
    """Hand count: 4 heads (the causal mask is broadcast over heads: it couples nothing); 32
    SwiGLU neurons, each owning a gate column, an up column and a down row; the embedding is
    indexed by the tokens and the RMSNorm'd residual stream is reduced over: both frozen."""
    net = _TinyLM(rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 50)
    graph = trace.trace_model(net, tokens)
    assert [(g.name, g.size) for g in graph.groups] == [("attn/query", 4), ("gate", 32)]
    assert [s.path for s in graph.groups[1].producers] == [("gate", "kernel"), ("up", "kernel")]
    assert "gather" in graph.frozen["emb"] and "reduce_sum" in graph.frozen["down"]
    _, _, small = _check_compaction(net, tokens)
    assert small.model.attn.num_heads == 2 and small.model.down.kernel.shape == (16, 16)
