r"""Layer allocation: how many weights each layer keeps at a global sparsity (uniform, ER, ERK).

For the prunable leaves (``N`` weights in all) the total kept is exactly
:math:`K = ` :func:`jaxprune.select.keep_count` ``(N, sparsity)``. Layers matching a regex of
``dense`` keep all their weights; layers matching a ``custom`` regex keep
:math:`[d \cdot n_\ell]` (:math:`[x] = \lfloor x + \tfrac12 \rfloor`). The other layers share
what is left, :math:`R = K - \text{dense} - \text{custom}`, in proportion to a raw weight
(RESEARCH §7):

.. math::

   \text{uniform: } 1, \qquad
   \text{er: } \frac{n_\text{in} + n_\text{out}}{n_\text{in} n_\text{out}}, \qquad
   \text{erk: } \frac{\sum_i k_i}{\prod_i k_i}

where ``(n_in, n_out)`` are the last two dims (a conv's channels) and :math:`k_i` all dims of
the kernel. The density of layer :math:`\ell` (size :math:`n_\ell`, raw weight :math:`r_\ell`) is

.. math::  d_\ell = \min(1, \varepsilon\, r_\ell), \qquad
           \varepsilon = \frac{R - \sum_{\ell \in C} n_\ell}{\sum_{\ell \notin C} n_\ell r_\ell}

where :math:`C` is the set of layers capped at dense: start with :math:`C = \emptyset`, add every
layer with :math:`\varepsilon r_\ell > 1` and re-solve — as many times as there are layers, which
reaches the fixed point since :math:`\varepsilon` only grows. Counts are integers by the largest-
remainder method: :math:`\lfloor n_\ell d_\ell \rfloor`, then one more to the layers with the
largest fractional parts (ties: leaf order) until the total is :math:`R`; float error in either
direction is corrected the same way, so the total is exact.

Only ``sparsity`` is an array (it may be traced, and vmapped over tickets); which leaves are
prunable / dense / custom, their shapes and raw weights are static.

Example — the small first layer is capped at dense under ERK (ε·24/128 > 1):
  >>> import jax.numpy as jnp
  >>> from jaxprune.sparse_training import allocation
  >>> params = {"fc1": {"kernel": jnp.ones((8, 16))}, "fc2": {"kernel": jnp.ones((128, 128))}}
  >>> c = allocation.layer_counts(params, 0.9, allocation="erk")
  >>> int(c["fc1"]["kernel"]), int(c["fc2"]["kernel"])  # 128 + 1523 = keep_count(16512, 0.9)
  (128, 1523)
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxprune import _checks, masks, select
from jaxprune._types import Array, Params, Prunable, PyTree
from jaxprune.sparse_training import patterns

__all__ = ["ALLOCATIONS", "layer_counts", "layer_densities"]

ALLOCATIONS = ("uniform", "er", "erk")

# Jitted, so the concrete check costs one cached call (op by op it re-runs ~100 small ops).
_concrete_keep_count = jax.jit(select._keep_count)


class _Layer(NamedTuple):
    """Static facts about one prunable leaf."""

    path: str
    size: int
    kind: str  # "free" (shares the budget) | "dense" | "custom"
    fixed: int  # the count of a dense / custom layer
    weight: int  # a_ℓ = n_ℓ · r_ℓ, an integer for all three allocations


def _raw_times_size(shape: tuple[int, ...], allocation: str) -> int:
    """:math:`n_\\ell r_\\ell` — an integer: n for uniform, (in + out)·(other dims) for er, sum of
    dims for erk."""
    size = math.prod(shape)
    if allocation == "uniform" or len(shape) == 0:
        return size
    if allocation == "erk" or len(shape) < 2:
        return sum(shape)
    return (shape[-2] + shape[-1]) * (size // (shape[-2] * shape[-1]))


def _check_regex(regex: str, *, name: str) -> None:
    try:
        re.compile(regex)
    except re.error as err:
        raise ValueError(
            f"{name} regex {regex!r} is not a valid regular expression: {err}."
        ) from err


def _check_rules(dense: Any, custom: Any) -> None:
    if isinstance(dense, str) or not all(isinstance(d, str) for d in dense):
        raise ValueError(f"dense must be a tuple of regexes (str), got {dense!r}.")
    for regex in dense:
        _check_regex(regex, name="dense")
    for item in custom:
        ok = isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)
        density = item[1] if ok else None
        if not ok or isinstance(density, bool) or not isinstance(density, int | float):
            raise ValueError(
                f"custom must be a tuple of (regex, density) pairs, e.g. (('conv1', 0.5),), got "
                f"item {item!r}."
            )
        if not 0.0 < density <= 1.0:
            raise ValueError(f"custom density for {item[0]!r} must be in (0, 1], got {density}.")
        _check_regex(item[0], name="custom")


def _layers(
    params: Params,
    prunable: Prunable,
    dense: Sequence[str],
    custom: Sequence[tuple[str, float]],
    allocation: str,
    p: patterns.Pattern,
) -> list[_Layer]:
    dense_re = [re.compile(d) for d in dense]
    custom_re = [(re.compile(c), float(d)) for c, d in custom]
    flags = jax.tree.leaves(masks.is_prunable(params, prunable))
    unit = p.unit
    out = []
    for (path, leaf), flag in zip(_checks.leaves_with_paths(params), flags, strict=True):
        if not flag:
            continue
        shape = tuple(np.shape(leaf))
        size = math.prod(shape)
        density = next((d for c, d in custom_re if c.search(path)), None)
        if any(d.search(path) for d in dense_re):
            kind, fixed = "dense", size
        elif density is not None:
            kind, fixed = "custom", math.floor(density * size + 0.5) // unit * unit
        else:
            kind, fixed = "free", 0
        out.append(_Layer(path, size, kind, fixed, _raw_times_size(shape, allocation)))
    if not out:
        raise ValueError("params has no prunable leaves (check prunable=); nothing to allocate.")
    for name, regexes in (("dense", dense), ("custom", [c for c, _ in custom])):
        for regex in regexes:
            if not any(re.search(regex, layer.path) for layer in out):
                raise ValueError(
                    f"{name} regex {regex!r} matches no prunable leaf; the prunable paths are "
                    f"{[layer.path for layer in out][:6]}."
                )
    return out


def _check_budget(layers: list[_Layer], sparsity: Any, keep: int, p: patterns.Pattern) -> None:
    """Concrete sparsity only: the dense / custom layers must fit in ``keep`` (and, for n:m, the
    sparsity must be the pattern's)."""
    fixed = sum(layer.fixed for layer in layers)
    if p.kind == "nm":
        target = 1.0 - p.n / p.m
        if abs(float(sparsity) - target) > 1e-6:
            raise ValueError(
                f"sparsity must be 1 - N/M = {target:g} for pattern {p} (every group keeps N of "
                f"M), got {float(sparsity)}."
            )
        return
    if keep < fixed:
        raise ValueError(
            f"sparsity {float(sparsity)} keeps {keep} weights, fewer than the {fixed} that the "
            "dense / custom layers keep already; lower the sparsity or drop dense= / custom=."
        )


def _solve_targets(budget: Array, sizes: np.ndarray, weights: np.ndarray) -> tuple[Array, Array]:
    """``(x, capped)``: real targets :math:`x_\\ell = \\min(n_\\ell, \\varepsilon a_\\ell)` summing
    to ``budget``, and which layers are capped at dense (the iterative ε solve)."""
    n = jnp.asarray(sizes, jnp.float32)
    a = jnp.asarray(weights, jnp.float32)
    rest = budget.astype(jnp.float32)

    def eps(capped: Array) -> Array:
        left = rest - jnp.sum(jnp.where(capped, n, 0.0))
        share = jnp.sum(jnp.where(capped, 0.0, a))
        return jnp.where(share > 0, jnp.maximum(left, 0.0) / jnp.where(share > 0, share, 1.0), 0.0)

    def grow(_: Any, capped: Array) -> Array:
        return capped | (eps(capped) * a > n)

    capped = lax.fori_loop(0, len(sizes), grow, jnp.zeros(len(sizes), bool))
    x = jnp.where(capped, n, jnp.minimum(eps(capped) * a, n))
    return x, capped


def _spread(room: Array, priority: Array, amount: Array) -> Array:
    """Integers ``0 <= g <= room`` with ``sum(g) = min(amount, sum(room))``, one at a time to the
    highest ``priority`` first (ties: lower index), cycling while ``amount`` exceeds the layers:
    ``g = min(room, q)`` for the largest ``q`` that fits, the rest +1 by priority."""

    def bit(i: Array, q: Array) -> Array:
        trial = q | (jnp.int32(1) << (30 - i))
        fits = jnp.sum(jnp.minimum(room, trial)) <= amount
        return jnp.where(fits, trial, q)

    q = lax.fori_loop(0, 31, bit, jnp.int32(0))
    base = jnp.minimum(room, q)
    extra = select.keep_top_k(priority, room > q, amount - jnp.sum(base))
    return base + extra.astype(jnp.int32)


def _largest_remainder(x: Array, capped: Array, sizes: np.ndarray, total: Array) -> Array:
    """Integer counts in ``[0, n_ℓ]`` summing to ``total``: floors, then +1 by largest fractional
    part — or, when float error made the floors overshoot, −1 by smallest (capped layers last)."""
    floor = jnp.floor(x)
    frac = x - floor
    caps = jnp.asarray(sizes, jnp.int32)
    base = jnp.clip(floor.astype(jnp.int32), 0, caps)
    short = total - jnp.sum(base)
    up = short >= 0
    room = jnp.where(up, caps - base, base)
    priority = jnp.where(up, frac, jnp.where(capped, -2.0, -frac))
    return base + jnp.where(up, 1, -1) * _spread(room, priority, jnp.abs(short))


def _check_allocation_args(
    sparsity: Any, allocation: str, dense: Any, custom: Any, p: patterns.Pattern
) -> None:
    _checks.check_choice(allocation, ALLOCATIONS, name="allocation")
    if np.ndim(sparsity) != 0:
        raise ValueError(
            f"sparsity must be a scalar (vmap over tickets for many), got shape "
            f"{list(np.shape(sparsity))}."
        )
    _checks.check_in_range(sparsity, name="sparsity")
    _check_rules(dense, custom)
    if p.kind == "nm":
        if allocation != "uniform":
            raise ValueError(
                f"allocation must be 'uniform' with pattern {p} (every group keeps N of M, so "
                f"every layer has density N/M), got {allocation!r}."
            )
        if custom:
            raise ValueError(
                f"custom densities cannot be combined with pattern {p} (every layer keeps N/M), "
                f"got custom={tuple(custom)!r}."
            )


def layer_counts(
    params: Params,
    sparsity: ArrayLike,
    *,
    allocation: str = "erk",
    prunable: Prunable = None,
    dense: tuple[str, ...] = (),
    custom: tuple[tuple[str, float], ...] = (),
    pattern: patterns.Pattern | str = "unstructured",
) -> PyTree:
    r"""How many weights each leaf keeps at a global ``sparsity`` (formulas in the module docs).

    Non-prunable leaves keep their size. Over the prunable leaves the total is exactly
    :math:`K = ` ``select.keep_count(N, sparsity)``, split by ``allocation`` ("uniform", "er",
    "erk") with layers capped at dense; ``dense`` regexes (``re.search`` on the leaf path) keep a
    layer whole, ``custom`` ``(regex, density)`` pairs give it :math:`[d\,n_\ell]` (first match
    wins; dense before custom); both count towards :math:`K`. When the custom layers keep so few
    that the others, all dense, still hold less than the rest of :math:`K` (e.g. a gradual
    schedule near sparsity 0), the other layers are dense and the total is below :math:`K`.

    Patterns: with ``block:b`` every prunable count is rounded down to a multiple of :math:`b^2`
    (the total is then :math:`K` minus that rounding). With ``n:m`` the allocation must be
    "uniform", custom is refused, and every non-dense prunable leaf keeps :math:`n_\ell \cdot n/m`
    (a concrete ``sparsity`` must equal :math:`1 - n/m`; the total exceeds :math:`K` by what
    dense layers keep beyond :math:`n/m`).

    Args:
      params: the params pytree (only shapes are read).
      sparsity: the global fraction pruned, in [0, 1); may be traced (vmap for many).
      allocation: "uniform", "er" or "erk" (static).
      prunable: which leaves are prunable (default: ``ndim >= 2``).
      dense: regexes of prunable layers kept dense.
      custom: ``(regex, density)`` pairs, density in (0, 1].
      pattern: a :class:`~jaxprune.sparse_training.patterns.Pattern` or its string.

    Returns:
      ``params``' structure of int32 scalars.

    Raises:
      ValueError: an unknown allocation, a concrete sparsity outside [0, 1), a custom density
        outside (0, 1], a dense / custom regex that is invalid or matches no prunable leaf, a
        :math:`K` below what the dense / custom layers keep, n:m with a non-uniform allocation
        or custom densities (or a concrete sparsity other than 1 − n/m), or a pattern that does
        not tile a non-dense prunable leaf. A traced sparsity cannot be checked: there the other
        layers get ``max(K − fixed, 0)`` (0 when K is too small).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune.sparse_training import allocation
      >>> params = {"a": {"kernel": jnp.ones((10, 10))}, "b": {"kernel": jnp.ones((10, 30))}}
      >>> c = allocation.layer_counts(params, 0.5, allocation="uniform")
      >>> int(c["a"]["kernel"]), int(c["b"]["kernel"])
      (50, 150)
      >>> batch = jax.jit(jax.vmap(lambda s: allocation.layer_counts(params, s)))
      >>> batch(jnp.array([0.5, 0.9]))["a"]["kernel"]
      Array([67, 13], dtype=int32)
    """
    p = patterns.pattern(pattern)
    _check_allocation_args(sparsity, allocation, dense, custom, p)
    patterns.check_pattern(params, p, prunable, dense=dense)
    layers = _layers(params, prunable, dense, custom, allocation, p)
    total_size = sum(layer.size for layer in layers)
    if total_size >= 2**31:
        raise ValueError(f"params has {total_size} prunable weights; counts are int32 (< 2^31).")
    if not _checks.is_traced(sparsity):
        with jax.ensure_compile_time_eval():  # concrete even inside a caller's jit
            keep = int(_concrete_keep_count(total_size, jnp.float32(sparsity)))
        _check_budget(layers, sparsity, keep, p)
    counts = _prunable_counts(jnp.asarray(sparsity, jnp.float32), tuple(layers), total_size, p)
    by_path = {layer.path: c for layer, c in zip(layers, list(counts), strict=True)}
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return jax.tree.unflatten(
        treedef,
        [by_path.get(jax.tree_util.keystr(path), jnp.int32(np.size(leaf))) for path, leaf in flat],
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _prunable_counts(
    sparsity: Array, layers: tuple[_Layer, ...], total_size: int, p: patterns.Pattern
) -> Array:
    """int32[L]: the count of every prunable layer, in leaf order (jitted, with the structure
    static: an eager call compiles once per model and allocation; inside a ``jit`` it is
    inlined). One array, not L scalars: a program with many outputs is slow to compile."""
    if p.kind == "nm":
        nm = [layer.size if layer.kind == "dense" else layer.size // p.m * p.n for layer in layers]
        return jnp.asarray(nm, jnp.int32)
    counts = jnp.asarray([layer.fixed for layer in layers], jnp.int32)
    free = np.array([layer.kind == "free" for layer in layers])
    if free.any():
        keep = select._keep_count(total_size, sparsity)
        sizes = np.array([layer.size for layer in layers])[free]
        weights = np.array([layer.weight for layer in layers])[free]
        budget = jnp.clip(keep - sum(layer.fixed for layer in layers), 0, int(sizes.sum()))
        x, capped = _solve_targets(budget, sizes, weights)
        counts = counts.at[np.flatnonzero(free)].set(_largest_remainder(x, capped, sizes, budget))
    whole = np.array([layer.kind == "dense" for layer in layers])  # dense layers need not tile
    return jnp.where(whole, counts, counts // p.unit * p.unit)


def layer_densities(
    params: Params,
    sparsity: ArrayLike,
    *,
    allocation: str = "erk",
    prunable: Prunable = None,
    dense: tuple[str, ...] = (),
    custom: tuple[tuple[str, float], ...] = (),
    pattern: patterns.Pattern | str = "unstructured",
) -> PyTree:
    """:func:`layer_counts` divided by each leaf's size: float32 densities, for reports.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune.sparse_training import allocation
      >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4))}, "fc": {"kernel": jnp.ones((64, 10))}}
      >>> d = allocation.layer_densities(params, 0.9, allocation="er")
      >>> [round(float(v), 3) for v in (d["conv"]["kernel"], d["fc"]["kernel"])]  # 26/36, 42/640
      [0.722, 0.066]
    """
    counts = layer_counts(
        params,
        sparsity,
        allocation=allocation,
        prunable=prunable,
        dense=dense,
        custom=custom,
        pattern=pattern,
    )
    return jax.tree.map(
        lambda c, leaf: c.astype(jnp.float32) / np.float32(max(np.size(leaf), 1)), counts, params
    )
