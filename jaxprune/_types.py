"""Type aliases shared across jaxprune (one place, so signatures read the same everywhere)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import jax
from jax.typing import ArrayLike

Array: TypeAlias = jax.Array
Key: TypeAlias = jax.Array
PyTree: TypeAlias = Any
Params: TypeAlias = PyTree
"""A pytree of float arrays (e.g. the ``nnx.Param`` state of a Flax model, or a plain dict)."""
Mask: TypeAlias = PyTree
"""A pytree with exactly the params' structure whose leaves are bool arrays of the leaves' shapes."""
Scores: TypeAlias = PyTree
"""A pytree with the params' structure of float scores; higher = keep."""

PrunableRule: TypeAlias = Callable[[str, Any], bool]
"""``rule(path, leaf) -> bool``: whether a leaf may be pruned; ``path`` is ``jax.tree_util.keystr``."""
Prunable: TypeAlias = str | Sequence[str] | PrunableRule | PyTree | None
"""Which leaves may be pruned: ``None`` (default rule: leaves with ``ndim >= 2``), a regex or list of
regexes searched in the leaf's path, a callable rule, or a pytree of Python bools."""

__all__ = [
    "Array",
    "ArrayLike",
    "Key",
    "Mask",
    "Params",
    "Prunable",
    "PrunableRule",
    "PyTree",
    "Scores",
]
