"""Shared test helpers: small random param trees, a toy tanh MLP and its data, trace counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def random_params(seed: int = 0, *, ties: bool = False) -> dict[str, Any]:
    """A small MLP-like param tree (two kernels, two biases); ``ties`` rounds values to force ties."""
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> np.ndarray:
        x = rng.normal(size=shape).astype(np.float32)
        return np.round(x, 0) if ties else x

    return {
        "fc1": {"kernel": draw(6, 5), "bias": draw(5)},
        "out": {"kernel": draw(5, 3), "bias": draw(3)},
    }


def stack(trees: list[Any]) -> Any:
    """Stack a list of same-structure pytrees on a new leading (ticket) axis."""
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def unstack(tree: Any, i: int) -> Any:
    """Ticket ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


class TraceCounter:
    """Wraps ``fn`` so that ``.traces`` counts how often JAX traced it (i.e. compiled it anew)."""

    def __init__(self, fn: Callable[..., Any]):
        self.traces = 0

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.traces += 1
            return fn(*args, **kwargs)

        self.fn = counted


def init_mlp(seed: int, sizes: tuple[int, int, int], bias: float = 0.0) -> dict[str, Any]:
    """A two-layer MLP ``{"fc", "out"}`` of ``sizes = (n_in, n_hidden, n_out)``: Glorot-normal
    kernels from ``key(seed)``; the hidden bias ``bias``, the output bias ``-bias``."""
    n_in, n_hid, n_out = sizes
    k1, k2 = jax.random.split(jax.random.key(seed))
    g = jax.nn.initializers.glorot_normal()
    return {
        "fc": {"kernel": g(k1, (n_in, n_hid)), "bias": jnp.full(n_hid, bias)},
        "out": {"kernel": g(k2, (n_hid, n_out)), "bias": jnp.full(n_out, 0.0 - bias)},
    }


def apply_mlp(p: dict[str, Any], x: jax.Array) -> jax.Array:
    """The MLP of :func:`init_mlp` with tanh: tests compare differently compiled programs
    (vmapped, chunked, sharded), and ReLU's kink at 0 would turn a rounding difference in a
    pre-activation into a different gradient (a discrete decision); tanh keeps the runs
    rounding-close."""
    h = jnp.tanh(x @ p["fc"]["kernel"] + p["fc"]["bias"][None])
    return h @ p["out"]["kernel"] + p["out"]["bias"][None]


def toy_data(n: int, seed: int, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gaussian inputs labelled by the argmax of a random linear map (learnable)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype(np.float32)
    w = rng.normal(size=(n_in, n_out))
    return x, np.argmax(x @ w, axis=1).astype(np.int32)
