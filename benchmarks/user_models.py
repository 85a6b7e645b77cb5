"""Models a user would bring: plain Flax NNX modules from standard layers, nothing of jaxprune's.

They are written the way a researcher writes a model in a notebook (``nnx.Conv``, ``nnx.BatchNorm``,
``nnx.LayerNorm``, ``nnx.MultiHeadAttention``, ``nnx.Linear`` and ``jnp`` glue), so that structured
pruning is tested and benchmarked on programs it was not written for:

* :class:`ConcatCNN`: two conv branches concatenated on channels, then an HWC flatten into a dense
  layer (concatenation offsets, flatten positions);
* :class:`DepthwiseSeparable`: a depthwise 3×3 conv (``feature_group_count = channels``) and a
  pointwise 1×1 conv (grouped convolutions);
* :class:`ViTBlock` and :class:`MixerBlock`: pre-norm transformer and MLP-Mixer blocks on tokens
  ``(batch, tokens, dim)`` (LayerNorm, attention heads, grouped-query attention, token mixing);
* :class:`TinyTransformer`: a ViT classifier for 8×8×1 digits built from two :class:`ViTBlock`.

Every model takes ``rngs`` by keyword, maps a batch ``x`` of shape ``(batch, *model.input_shape)``
to logits ``(batch, num_classes)`` and keeps its batch norms (if any) in train mode until
``model.eval()``, as any NNX model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _conv_bn(
    in_features: int, out_features: int, size: int, *, groups: int = 1, rngs: nnx.Rngs
) -> tuple[nnx.Conv, nnx.BatchNorm]:
    conv = nnx.Conv(
        in_features,
        out_features,
        (size, size),
        feature_group_count=groups,
        use_bias=False,  # the batch norm's shift is the bias
        rngs=rngs,
    )
    return conv, nnx.BatchNorm(out_features, rngs=rngs)


class ConcatCNN(nnx.Module):
    """Two conv branches (3×3 and 1×1) concatenated, a 3×3 conv, a 2×2 max-pool, flatten, MLP.

    ``concat(relu(bn3(conv3(x))), relu(bn1(conv1(x))))`` on channels (``2·width``), then
    ``relu(conv(·))`` (with bias), a 2×2 max-pool, the HWC flatten ``x.reshape(batch, -1)`` into
    ``relu(fc(·))`` (``hidden`` units) and the output layer ``out``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = ConcatCNN((8, 8, 3), 10, width=4, hidden=16, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, *net.input_shape))).shape, net.fc.kernel.shape  # 4·4·8 flattened
      ((2, 10), (128, 16))
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (8, 8, 3),
        num_classes: int = 10,
        *,
        width: int = 8,
        hidden: int = 32,
        rngs: nnx.Rngs,
    ):
        height, wide, channels = input_shape
        self.input_shape = (int(height), int(wide), int(channels))
        self.conv3, self.bn3 = _conv_bn(channels, width, 3, rngs=rngs)
        self.conv1, self.bn1 = _conv_bn(channels, width, 1, rngs=rngs)
        self.conv = nnx.Conv(2 * width, 2 * width, (3, 3), rngs=rngs)
        flat = (height // 2) * (wide // 2) * 2 * width
        self.fc = nnx.Linear(flat, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        a = nnx.relu(self.bn3(self.conv3(x)))
        b = nnx.relu(self.bn1(self.conv1(x)))
        x = jnp.concatenate([a, b], axis=-1)
        x = nnx.max_pool(nnx.relu(self.conv(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.out(nnx.relu(self.fc(x)))


class DepthwiseSeparable(nnx.Module):
    """MobileNet's block: a conv stem, a depthwise 3×3 conv, a pointwise 1×1 conv, pool, dense.

    ``stem`` (3×3, ``channels`` filters) → BN → ReLU → ``depthwise`` (3×3,
    ``feature_group_count = channels``: one filter per channel) → BN → ReLU → ``pointwise``
    (1×1, ``out_channels`` filters) → BN → ReLU → global average pool → ``out``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = DepthwiseSeparable((8, 8, 3), 10, channels=4, out_channels=6, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 8, 8, 3))).shape, net.depthwise.kernel.shape  # (h, w, 1, channels)
      ((2, 10), (3, 3, 1, 4))
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (8, 8, 3),
        num_classes: int = 10,
        *,
        channels: int = 8,
        out_channels: int = 16,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        self.stem, self.bn_stem = _conv_bn(self.input_shape[-1], channels, 3, rngs=rngs)
        self.depthwise, self.bn_dw = _conv_bn(channels, channels, 3, groups=channels, rngs=rngs)
        self.pointwise, self.bn_pw = _conv_bn(channels, out_channels, 1, rngs=rngs)
        self.out = nnx.Linear(out_channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn_stem(self.stem(x)))
        x = nnx.relu(self.bn_dw(self.depthwise(x)))
        x = nnx.relu(self.bn_pw(self.pointwise(x)))
        return self.out(x.mean(axis=(1, 2)))


class ViTBlock(nnx.Module):
    """A pre-norm transformer encoder block on tokens ``(batch, tokens, dim)``.

    ``x ← x + attn(ln1(x))`` (``num_heads`` heads of ``dim / num_heads`` features; with
    ``num_kv_heads`` the keys and values have fewer heads, grouped-query attention), then
    ``x ← x + mlp(ln2(x))`` with ``mlp = fc2 ∘ gelu ∘ fc1`` (``dim → mlp_ratio·dim → dim``).
    With ``num_classes`` the block is a classifier: mean over tokens, then ``out``; with
    ``num_classes=None`` it returns the tokens (a block inside a bigger model).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = ViTBlock(5, 8, 10, num_heads=4, num_kv_heads=2, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 5, 8))).shape, block.attn.key.kernel.shape  # (dim, kv heads, head dim)
      ((2, 10), (8, 2, 2))
      >>> ViTBlock(5, 8, None, num_heads=2, rngs=nnx.Rngs(0))(jnp.ones((2, 5, 8))).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_classes: int | None = 10,
        *,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        mlp_ratio: int = 4,
        rngs: nnx.Rngs,
    ):
        self.input_shape = (int(num_tokens), int(dim))
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=num_heads,
            in_features=dim,
            qkv_features=dim,
            num_kv_heads=num_kv_heads,
            decode=False,
            rngs=rngs,
        )
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp_ratio * dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_ratio * dim, dim, rngs=rngs)
        self.out = nnx.Linear(dim, num_classes, rngs=rngs) if num_classes is not None else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))
        if self.out is None:
            return x
        return self.out(x.mean(axis=1))


class MixerBlock(nnx.Module):
    """An MLP-Mixer block on tokens ``(batch, tokens, dim)``, then mean over tokens and ``out``.

    Token mixing across tokens (on the transpose ``(batch, dim, tokens)``):
    ``x ← x + (token_fc2 ∘ gelu ∘ token_fc1)(ln1(x)ᵀ)ᵀ``; channel mixing:
    ``x ← x + (channel_fc2 ∘ gelu ∘ channel_fc1)(ln2(x))`` (Tolstikhin et al., 2021).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = MixerBlock(5, 8, 10, token_hidden=6, channel_hidden=16, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((2, 5, 8))).shape, net.token_fc1.kernel.shape
      ((2, 10), (5, 6))
    """

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_classes: int = 10,
        *,
        token_hidden: int = 16,
        channel_hidden: int = 32,
        rngs: nnx.Rngs,
    ):
        self.input_shape = (int(num_tokens), int(dim))
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.token_fc1 = nnx.Linear(num_tokens, token_hidden, rngs=rngs)
        self.token_fc2 = nnx.Linear(token_hidden, num_tokens, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.channel_fc1 = nnx.Linear(dim, channel_hidden, rngs=rngs)
        self.channel_fc2 = nnx.Linear(channel_hidden, dim, rngs=rngs)
        self.out = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.swapaxes(self.ln1(x), 1, 2)
        x = x + jnp.swapaxes(self.token_fc2(nnx.gelu(self.token_fc1(y))), 1, 2)
        x = x + self.channel_fc2(nnx.gelu(self.channel_fc1(self.ln2(x))))
        return self.out(x.mean(axis=1))


class TinyTransformer(nnx.Module):
    """A small ViT for digit-sized images: patches, embedding, ``depth`` blocks, mean pool, dense.

    The image ``(batch, H, W, C)`` is cut into ``patch × patch`` patches by a reshape (row-major
    patch order, ``T = (H / patch)·(W / patch)`` tokens of ``patch²·C`` values), embedded by
    ``embed`` (``Linear → dim``) plus a learned position embedding ``pos`` (``1 × T × dim``), passed
    through ``depth`` :class:`ViTBlock` (``blocks``, without their own heads), a final LayerNorm,
    averaged over tokens and classified by ``out``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> net = TinyTransformer((8, 8, 1), 10, dim=8, num_heads=2, rngs=nnx.Rngs(0))
      >>> net(jnp.ones((3, 8, 8, 1))).shape, net.pos.shape  # 16 patches of 2×2
      ((3, 10), (1, 16, 8))
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (8, 8, 1),
        num_classes: int = 10,
        *,
        patch: int = 2,
        dim: int = 32,
        num_heads: int = 4,
        depth: int = 2,
        rngs: nnx.Rngs,
    ):
        height, width, channels = (int(d) for d in input_shape)
        if height % patch or width % patch:
            raise ValueError(
                f"input_shape must have height and width divisible by patch={patch}, "
                f"got {tuple(input_shape)}."
            )
        self.input_shape = (height, width, channels)
        self.patch = patch
        tokens = (height // patch) * (width // patch)
        self.embed = nnx.Linear(patch * patch * channels, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, dim)))
        self.blocks = nnx.List(
            [ViTBlock(tokens, dim, None, num_heads=num_heads, rngs=rngs) for _ in range(depth)]
        )
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.out = nnx.Linear(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), p * p * c)) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x).mean(axis=1))
