r"""Transformers as Flax NNX modules: a pre-norm :class:`Block`, a decoder-only LM and a small ViT.

Every weight matrix is an ``nnx.Linear`` with a 2-D ``(in, out)`` kernel — attention's ``query``,
``key``, ``value`` and ``proj`` as well as the MLP's ``fc1``, ``gate`` and ``fc2`` — so that
post-training pruning (Wanda, SparseGPT, N:M) and :mod:`jaxprune.masks`' default rule see plain
dense layers. A block computes, with :math:`d` the head dimension (``dim // heads``):

.. math::

    h &\leftarrow h + \mathrm{proj}\big(\mathrm{softmax}(q k^\top / \sqrt d + C)\, v\big),
    \quad q, k, v = \mathrm{query}, \mathrm{key}, \mathrm{value}(\mathrm{norm1}(h)) \\
    h &\leftarrow h + \mathrm{mlp}(\mathrm{norm2}(h)),

:math:`C` the causal mask (0 on and below the diagonal, :math:`-\infty` above; no mask in the
ViT). With ``kv_heads < heads`` (grouped-query attention) query head :math:`i` reads key / value
head :math:`\lfloor i / (heads / kv\_heads) \rfloor`. Rotary positions (``rope``) rotate
:math:`q` and :math:`k` by position-dependent angles, rotate-half layout:
:math:`x \mapsto x \cos\theta + \mathrm{rot}(x) \sin\theta`, :math:`\mathrm{rot}(x) = (-x_2,
x_1)` for the two halves of the head dimension, :math:`\theta_{t,j} = t \cdot 10000^{-2j/d}`.
MLPs: ``gelu``: :math:`\mathrm{fc2}(\mathrm{gelu}(\mathrm{fc1}\,x))` (the exact, erf GELU);
``swiglu``: :math:`\mathrm{fc2}(\mathrm{silu}(\mathrm{gate}\,x) \odot \mathrm{fc1}\,x)`. Norms:
``layer`` (``nnx.LayerNorm``, scale and bias) or ``rms`` (``nnx.RMSNorm``, scale only), both
with Flax's :math:`\epsilon = 10^{-6}`. All linear layers have a bias; there is no dropout.

Heads are split by the head dimension, never by a stored head count, and the GQA repeat factor
is ``heads // kv_heads``: removing whole heads (or whole kv-groups) with
:func:`jaxprune.structured.compact` leaves a model that still runs. The widths shown by
:attr:`Attention.heads` and friends are read from the kernels.

Both models follow the protocol that :mod:`jaxprune.posttrain` needs:
``embed_inputs(x) -> h``, ``blocks`` (a tuple of :class:`Block`), ``readout(h) -> logits``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import _checks
from jaxprune._types import Array
from jaxprune.models import _init

__all__ = [
    "EMBEDDING_LAW",
    "MLPS",
    "NORMS",
    "POSITIONS",
    "Attention",
    "Block",
    "FeedForward",
    "Transformer",
    "ViT",
]

MLPS = ("gelu", "swiglu")
NORMS = ("layer", "rms")
POSITIONS = ("learned", "rope")

EMBEDDING_LAW = _init.EMBEDDING_LAW

_ROPE_BASE = 10000.0


def _positive_int(value: object, name: str) -> int:
    _checks.check_positive_int(value, name=name)
    return int(value)  # type: ignore[call-overload]


def _choice(value: str, choices: tuple[str, ...], name: str) -> str:
    _checks.check_choice(value, choices, name=name)
    return value


def _head_dims(dim: int, heads: int, kv_heads: int | None, rope: bool) -> tuple[int, int]:
    """``(head_dim, kv_heads)`` after checking that the widths divide."""
    dim, heads = _positive_int(dim, "dim"), _positive_int(heads, "heads")
    kv = heads if kv_heads is None else _positive_int(kv_heads, "kv_heads")
    if dim % heads:
        raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}.")
    if heads % kv:
        raise ValueError(
            f"heads must be divisible by kv_heads (each kv head serves heads // kv_heads query "
            f"heads), got heads={heads}, kv_heads={kv}."
        )
    if rope and (dim // heads) % 2:
        raise ValueError(
            f"rope needs an even head dimension dim // heads, got dim={dim}, heads={heads} "
            f"(head dimension {dim // heads})."
        )
    return dim // heads, kv


def _norm(kind: str, dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm | nnx.RMSNorm:
    if kind == "layer":
        return nnx.LayerNorm(dim, rngs=rngs)
    return nnx.RMSNorm(dim, rngs=rngs)


def _rotate(x: Array, positions: int) -> Array:
    """Rotary positions on ``x`` of shape ``(B, T, heads, d)``, rotate-half layout (static T, d)."""
    d = x.shape[-1]
    freqs = _ROPE_BASE ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # (d/2,)
    angles = np.arange(positions, dtype=np.float64)[:, None] * freqs[None, :]  # (T, d/2)
    angles = np.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, d)
    cos = jnp.asarray(np.cos(angles), x.dtype)
    sin = jnp.asarray(np.sin(angles), x.dtype)
    half = d // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    """Multi-head self-attention from four ``nnx.Linear`` layers (see the module docstring).

    Params: ``query`` ``(dim, heads·d)``, ``key`` / ``value`` ``(dim, kv_heads·d)``, ``proj``
    ``(heads·d, dim)``, each with a bias.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> attn = Attention(8, 4, kv_heads=2, causal=True, rope=True, rngs=nnx.Rngs(0))
      >>> attn(jnp.ones((2, 5, 8))).shape, attn.heads, attn.kv_heads, attn.key.kernel.shape
      ((2, 5, 8), 4, 2, (8, 4))
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        causal: bool,
        rope: bool,
        rngs: nnx.Rngs,
    ) -> None:
        self.head_dim, kv = _head_dims(dim, heads, kv_heads, rope)
        self.repeats = heads // kv  # query heads per kv head; unchanged by removing kv-groups
        self.causal, self.rope = bool(causal), bool(rope)
        self.query = nnx.Linear(dim, heads * self.head_dim, rngs=rngs)
        self.key = nnx.Linear(dim, kv * self.head_dim, rngs=rngs)
        self.value = nnx.Linear(dim, kv * self.head_dim, rngs=rngs)
        self.proj = nnx.Linear(heads * self.head_dim, dim, rngs=rngs)

    @property
    def heads(self) -> int:
        """Number of query heads (read from ``query``'s kernel)."""
        return int(self.query.kernel.shape[1]) // self.head_dim

    @property
    def kv_heads(self) -> int:
        """Number of key / value heads (read from ``key``'s kernel)."""
        return int(self.key.kernel.shape[1]) // self.head_dim

    def _split(self, t: Array) -> Array:
        b, n, _ = t.shape
        return t.reshape(b, n, -1, self.head_dim)  # by the head dimension: heads may be removed

    def __call__(self, x: Array) -> Array:
        b, n, _ = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        if self.rope:
            q, k = _rotate(q, n), _rotate(k, n)
        if self.repeats > 1:  # grouped-query attention: kv head j serves query heads j·r … j·r+r−1
            shape = (b, n, k.shape[2], self.repeats, self.head_dim)
            k = jnp.broadcast_to(k[:, :, :, None, :], shape).reshape(b, n, -1, self.head_dim)
            v = jnp.broadcast_to(v[:, :, :, None, :], shape).reshape(b, n, -1, self.head_dim)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.head_dim)
        if self.causal:
            allowed = jnp.asarray(np.tril(np.ones((n, n), bool)))[None, None]
            logits = jnp.where(allowed, logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.proj(out.reshape(b, n, -1))


class FeedForward(nnx.Module):
    """The block's MLP: ``fc1`` (``dim → hidden``), ``gate`` (SwiGLU only), ``fc2`` (``hidden → dim``).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> ff = FeedForward(8, 16, kind="swiglu", rngs=nnx.Rngs(0))
      >>> ff(jnp.ones((2, 3, 8))).shape, ff.gate.kernel.shape
      ((2, 3, 8), (8, 16))
    """

    def __init__(self, dim: int, hidden: int, *, kind: str, rngs: nnx.Rngs) -> None:
        self.kind = _choice(kind, MLPS, "mlp")
        self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
        self.gate = nnx.Linear(dim, hidden, rngs=rngs) if kind == "swiglu" else None
        self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if self.gate is None:
            return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
        up = self.fc1(x)  # first, so that structured names the neuron group after fc1 in both MLPs
        return self.fc2(jax.nn.silu(self.gate(x)) * up)


class Block(nnx.Module):
    """Pre-norm transformer block: ``h + attn(norm1(h))``, then ``h + mlp(norm2(h))``.

    Args:
      dim: width of the residual stream.
      heads: query heads; ``dim % heads == 0``.
      kv_heads: key / value heads (grouped-query attention); ``heads % kv_heads == 0``;
        default ``heads``.
      mlp: ``"gelu"`` or ``"swiglu"``.
      mlp_ratio: hidden width of the MLP = ``round(mlp_ratio · dim)``.
      norm: ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm).
      causal: mask attention to the current and earlier positions.
      rope: rotary positions on queries and keys (head dimension even).
      rngs: the random streams.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = Block(16, 4, mlp="swiglu", norm="rms", causal=True, rope=False, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 3, 16))).shape, block.mlp.fc1.kernel.shape, block.attn.proj.kernel.shape
      ((2, 3, 16), (16, 64), (16, 16))
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        kv_heads: int | None = None,
        mlp: str = "gelu",
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        causal: bool,
        rope: bool,
        rngs: nnx.Rngs,
    ) -> None:
        _head_dims(dim, heads, kv_heads, rope)
        _choice(mlp, MLPS, "mlp")
        _choice(norm, NORMS, "norm")
        if not (
            isinstance(mlp_ratio, int | float)
            and not isinstance(mlp_ratio, bool)
            and math.isfinite(mlp_ratio)
            and round(mlp_ratio * dim) >= 1
        ):
            raise ValueError(
                f"mlp_ratio must be a positive number with round(mlp_ratio * dim) >= 1, got "
                f"mlp_ratio={mlp_ratio!r} (dim={dim})."
            )
        self.norm1 = _norm(norm, dim, rngs)
        self.attn = Attention(dim, heads, kv_heads=kv_heads, causal=causal, rope=rope, rngs=rngs)
        self.norm2 = _norm(norm, dim, rngs)
        self.mlp = FeedForward(dim, round(mlp_ratio * dim), kind=mlp, rngs=rngs)

    def __call__(self, h: Array) -> Array:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


def _add_blocks(owner: nnx.Module, depth: int, **kw: object) -> int:
    """Set ``owner.block0 … block{depth-1}``; returns ``depth``."""
    for i in range(depth):
        setattr(owner, f"block{i}", Block(**kw))  # type: ignore[arg-type]
    return depth


class Transformer(nnx.Module):
    """Decoder-only language model: tokens ``(B, T)`` → logits ``(B, T, vocab_size)``.

    ``embed`` (``nnx.Embed``, vocab → dim) plus, with ``positions="learned"``, ``pos``
    (``nnx.Embed``, context → dim; ``None`` with ``"rope"``, which rotates queries and keys in
    every block instead); ``block0 … block{depth-1}`` (causal :class:`Block`); the final
    ``norm``; ``out`` (``nnx.Linear`` dim → vocab, not tied to ``embed``).

    Args:
      vocab_size: number of token ids (and logits).
      context: the longest sequence; inputs may be shorter.
      dim, depth, heads, kv_heads, mlp, mlp_ratio, norm: as for :class:`Block`.
      positions: ``"learned"`` or ``"rope"``.
      rngs: the random streams (:func:`jaxprune.models.build` draws every weight through
        :func:`~jaxprune.models.instantiate` instead: Glorot kernels, zero biases, embeddings
        :math:`\\mathcal N(0, 0.02^2)`, norm scales 1).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> lm = Transformer(50, 8, dim=16, depth=2, heads=2, positions="rope", rngs=nnx.Rngs(0))
      >>> tokens = jnp.zeros((3, 5), jnp.int32)
      >>> lm(tokens).shape, len(lm.blocks), lm.pos is None
      ((3, 5, 50), 2, True)
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        *,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        kv_heads: int | None = None,
        mlp: str = "gelu",
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        positions: str = "learned",
        rngs: nnx.Rngs,
    ) -> None:
        vocab_size = _positive_int(vocab_size, "vocab_size")
        self.context = _positive_int(context, "context")
        self.input_shape = (self.context,)
        rope = _choice(positions, POSITIONS, "positions") == "rope"
        _head_dims(dim, heads, kv_heads, rope)
        depth = _positive_int(depth, "depth")
        self.embed = _init.with_laws(
            nnx.Embed(vocab_size, dim, embedding_init=EMBEDDING_LAW, rngs=rngs),
            embedding=EMBEDDING_LAW,
        )
        self.pos = (
            None
            if rope
            else _init.with_laws(
                nnx.Embed(self.context, dim, embedding_init=EMBEDDING_LAW, rngs=rngs),
                embedding=EMBEDDING_LAW,
            )
        )
        self.depth = _add_blocks(
            self, depth, dim=dim, heads=heads, kv_heads=kv_heads, mlp=mlp, mlp_ratio=mlp_ratio,
            norm=norm, causal=True, rope=rope, rngs=rngs,
        )  # fmt: skip
        self.norm = _norm(norm, dim, rngs)
        self.out = nnx.Linear(dim, vocab_size, rngs=rngs)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """``(block0, block1, …)``."""
        return tuple(getattr(self, f"block{i}") for i in range(self.depth))

    def embed_inputs(self, x: Array) -> Array:
        """Token embeddings (plus learned positions) of tokens ``x`` ``(B, T)``: ``(B, T, dim)``."""
        x = jnp.asarray(x)
        if np.ndim(x) != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"x must be integer token ids of shape (batch, positions), got "
                f"{getattr(x, 'dtype', type(x).__name__)} of shape {np.shape(x)}."
            )
        n = x.shape[1]
        if n > self.context:
            raise ValueError(
                f"x has {n} positions, more than the model's context={self.context}; pass "
                f"windows of at most {self.context} tokens."
            )
        h = self.embed(x)
        if self.pos is not None:
            h = h + self.pos.embedding[:n][None]
        return h

    def readout(self, h: Array) -> Array:
        """Logits ``out(norm(h))``: ``(B, T, vocab_size)``."""
        return self.out(self.norm(h))

    def __call__(self, x: Array) -> Array:
        h = self.embed_inputs(x)
        for block in self.blocks:
            h = block(h)
        return self.readout(h)


class ViT(nnx.Module):
    """Vision transformer without class token: patches → blocks → mean over tokens → logits.

    ``patch`` (``nnx.Linear`` p·p·C → dim) embeds each non-overlapping p×p patch (flattened in
    (row, column, channel) order; patches in raster order), ``pos`` (``nnx.Param`` of shape
    ``(tokens, dim)``) is added, ``block0 …`` are non-causal :class:`Block` s without rope,
    ``norm`` is the final norm and ``out`` (dim → classes) reads the mean over tokens.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> vit = ViT((8, 8, 1), 10, patch=4, dim=16, heads=2, rngs=nnx.Rngs(0))
      >>> vit(jnp.ones((3, 8, 8, 1))).shape, vit.pos.shape, vit.patch.kernel.shape
      ((3, 10), (4, 16), (16, 16))
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        patch: int = 2,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        kv_heads: int | None = None,
        mlp: str = "gelu",
        mlp_ratio: float = 2.0,
        norm: str = "layer",
        rngs: nnx.Rngs,
    ) -> None:
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(d, int | np.integer) and d > 0 for d in shape):
            raise ValueError(
                f"input_shape must be (height, width, channels) of positive ints, got {shape!r}."
            )
        self.input_shape = tuple(int(d) for d in shape)
        self.patch_size = _positive_int(patch, "patch")
        _head_dims(dim, heads, kv_heads, False)
        depth = _positive_int(depth, "depth")
        height, width, channels = self.input_shape
        if height % patch or width % patch:
            raise ValueError(
                f"patch must divide the image height and width, got patch={patch} for "
                f"input_shape={self.input_shape}."
            )
        tokens = (height // patch) * (width // patch)
        self.patch = nnx.Linear(patch * patch * channels, dim, rngs=rngs)
        self.pos = nnx.Param(EMBEDDING_LAW(rngs.params(), (tokens, dim)))
        self.pos_init = EMBEDDING_LAW  # the law instantiate draws `pos` from
        self.depth = _add_blocks(
            self, depth, dim=dim, heads=heads, kv_heads=kv_heads, mlp=mlp, mlp_ratio=mlp_ratio,
            norm=norm, causal=False, rope=False, rngs=rngs,
        )  # fmt: skip
        self.norm = _norm(norm, dim, rngs)
        self.out = nnx.Linear(dim, _positive_int(num_classes, "num_classes"), rngs=rngs)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """``(block0, block1, …)``."""
        return tuple(getattr(self, f"block{i}") for i in range(self.depth))

    def embed_inputs(self, x: Array) -> Array:
        """Patch embeddings plus positions of images ``x`` ``(B, H, W, C)``: ``(B, tokens, dim)``."""
        if tuple(np.shape(x)[1:]) != self.input_shape or np.ndim(x) != 4:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.input_shape))}) for this "
                f"model, got {tuple(np.shape(x))}."
            )
        b, (height, width, channels), p = x.shape[0], self.input_shape, self.patch_size
        x = x.reshape(b, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
        return self.patch(x.reshape(b, -1, p * p * channels)) + self.pos[...][None]

    def readout(self, h: Array) -> Array:
        """Logits ``out(mean over tokens of norm(h))``: ``(B, classes)``."""
        return self.out(self.norm(h).mean(axis=1))

    def __call__(self, x: Array) -> Array:
        h = self.embed_inputs(x)
        for block in self.blocks:
            h = block(h)
        return self.readout(h)
