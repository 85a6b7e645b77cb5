"""Shared test helpers: small random param trees and trace counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
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
