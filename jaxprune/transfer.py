r"""Ticket transfer: move a ticket found on one task to another (Morcos et al., 2019).

*One ticket to win them all* finds winning tickets (mask + late-rewound weights θ_k) with
iterative magnitude pruning on a **source** task and trains them on a **target** task — another
dataset, or another optimizer. Two pieces here, both pure array code (``jit`` and ``vmap`` over
stacked tickets):

* :func:`transplant` — the source ticket's mask and values, with the leaves matched by ``fresh``
  (the output layer, when the tasks' class counts differ) re-initialised from the target network
  and given a random mask at the source leaf's density;
* :func:`random_like` — the control: a random mask with exactly the same number of kept weights
  in every prunable leaf.

The leaves a leaf is prunable by follow :func:`jaxprune.masks.is_prunable` (default: every leaf of
``ndim ≥ 2``). Example — a 10-class ticket moved to a 5-class task:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import masks, transfer
  >>> src = {"fc": {"kernel": jnp.ones((4, 3))}, "out": {"kernel": jnp.ones((3, 10))}}
  >>> tgt = {"fc": {"kernel": jnp.zeros((4, 3))}, "out": {"kernel": jnp.zeros((3, 5))}}
  >>> mask = {"fc": {"kernel": jnp.arange(12).reshape(4, 3) < 6},
  ...         "out": {"kernel": jnp.arange(30).reshape(3, 10) < 12}}
  >>> params, new = transfer.transplant(mask, src, tgt, fresh="out", key=jax.random.key(0))
  >>> float(params["fc"]["kernel"].sum()), float(params["out"]["kernel"].sum())  # source / target
  (12.0, 0.0)
  >>> int(new["fc"]["kernel"].sum()), int(new["out"]["kernel"].sum())  # 12/30 of 15 = 6
  (6, 6)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import _checks, masks, select
from jaxprune._types import Array, Key, Mask, Params, Prunable

__all__ = ["random_like", "transplant"]


def _patterns(fresh: str | Sequence[str] | None) -> list[re.Pattern[str]]:
    if fresh is None:
        return []
    items = [fresh] if isinstance(fresh, str) else list(fresh)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(
                f"fresh must be a regex or a sequence of regexes over leaf paths (e.g. "
                f"\"['out']\"), got an item {item!r} of type {type(item).__name__}."
            )
    try:
        return [re.compile(p) for p in items]
    except re.error as err:
        raise ValueError(f"fresh holds an invalid regex: {err}.") from None


def _random_kept(key: Key, shape: tuple[int, ...], k: Array) -> Array:
    """A bool array of ``shape`` with exactly ``k`` True entries at uniformly random positions."""
    n = int(np.prod(shape))
    scores = jax.random.uniform(key, (n,))
    # keep_top_k keeps exactly k even where two draws tie (lower index first).
    return select.keep_top_k(scores, jnp.ones(n, bool), k).reshape(shape)


def _count_at_density(kept: Array, n_source: int, n_target: int) -> Array:
    """``kept`` of ``n_source`` carried to a leaf of ``n_target``: :func:`select.keep_count` of the
    target size at the source's pruned fraction; the count itself when the sizes agree."""
    if n_source == n_target:
        return kept
    rate = (n_source - kept).astype(jnp.float32) / jnp.float32(n_source)
    return select._keep_count(n_target, rate)


def transplant(
    source_mask: Mask,
    source_params: Params,
    target_params: Params,
    *,
    fresh: str | Sequence[str] | None,
    key: Key,
) -> tuple[Params, Mask]:
    r"""The source ticket on the target network: source values and mask, except ``fresh`` leaves.

    For every leaf path ``p`` (the three trees have the same structure):

    * ``p`` matches a regex of ``fresh`` (``re.search`` in ``jax.tree_util.keystr(path)``): the
      value is ``target_params[p]`` (the target's own initialisation) and the mask is random with
      exactly :math:`k' = n_t - \lfloor (1 - k/n_s)\, n_t + \tfrac12 \rfloor` True entries —
      the source leaf's density :math:`k/n_s` carried to the target leaf's :math:`n_t` entries,
      rounded as :func:`jaxprune.select.keep_count` (:math:`k' = k` when the sizes agree);
    * otherwise: ``source_params[p]`` and ``source_mask[p]``; the source and target leaves must
      have the same shape.

    Pure and static in its checks: runs under ``jit`` (``fresh`` static) and ``jit ∘ vmap`` over
    stacked tickets (one key per ticket).

    Args:
      source_mask: the source ticket's mask (bool, ``source_params``' structure and shapes).
      source_params: the source ticket's weights (e.g. θ_k of the source run).
      target_params: an initialised target network with the same leaf paths; only its
        ``fresh`` leaves are used, the others give the shapes to check.
      fresh: a regex, a sequence of regexes, or ``None`` (nothing fresh); every regex must match
        at least one leaf.
      key: typed PRNG key for the fresh leaves' random masks (leaf ``i`` uses
        ``fold_in(key, i)``).

    Returns:
      ``(params, mask)`` with ``target_params``' structure and shapes.

    Raises:
      ValueError: trees with different leaf paths; a mask that is not a bool mirror of
        ``source_params``; a non-fresh leaf whose source and target shapes differ (different
        input shapes need an adapter); a ``fresh`` regex that matches no leaf.

    Example — ``fresh=None`` keeps everything; a changed input shape is refused:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import masks, transfer
      >>> src = {"w": jnp.ones((4, 2))}
      >>> p, m = transfer.transplant(masks.ones(src), src, {"w": jnp.zeros((4, 2))}, fresh=None,
      ...                            key=jax.random.key(0))
      >>> float(p["w"].sum()), int(m["w"].sum())
      (8.0, 8)
      >>> transfer.transplant(masks.ones(src), src, {"w": jnp.zeros((6, 2))}, fresh=None,
      ...                     key=jax.random.key(0))
      Traceback (most recent call last):
      ...
      ValueError: leaf ['w'] has shape [4, 2] in source_params but [6, 2] in target_params...
    """
    _checks.check_mask(source_mask, source_params, name="source_mask")
    _checks.check_same_structure(
        target_params, source_params, name="target_params", ref_name="source_params"
    )
    _checks.check_key(key)
    if key is None:
        raise ValueError("key must be a typed PRNG key from jax.random.key(seed), got None.")
    patterns = _patterns(fresh)
    paths = [path for path, _ in _checks.leaves_with_paths(source_params)]
    for pat in patterns:
        if not any(pat.search(path) for path in paths):
            raise ValueError(
                f"fresh regex {pat.pattern!r} matches no leaf path; the paths are: "
                f"{', '.join(paths[:8])}{' …' if len(paths) > 8 else ''}."
            )
    flags = tuple(any(pat.search(path) for pat in patterns) for path in paths)
    for path, s, t, flag in zip(
        paths, jax.tree.leaves(source_params), jax.tree.leaves(target_params), flags, strict=True
    ):
        if not flag and np.shape(s) != np.shape(t):
            raise ValueError(
                f"leaf {path} has shape {list(np.shape(s))} in source_params but "
                f"{list(np.shape(t))} in target_params: different input shapes need an adapter "
                "(a layer that maps the target's inputs to the source's); only the leaves "
                'matched by fresh may change shape (e.g. fresh="out" for the output layer).'
            )
    return _transplant(source_mask, source_params, target_params, key, flags)


@functools.partial(jax.jit, static_argnums=4)
def _transplant(
    source_mask: Mask, source_params: Params, target_params: Params, key: Key,
    fresh: tuple[bool, ...],
) -> tuple[Params, Mask]:  # fmt: skip
    # One program (eagerly, keep_top_k's bisection would dispatch op by op).
    m_leaves, treedef = jax.tree.flatten(source_mask)
    s_leaves = jax.tree.leaves(source_params)
    t_leaves = jax.tree.leaves(target_params)
    out_p, out_m = [], []
    for i, (m, s, t, flag) in enumerate(zip(m_leaves, s_leaves, t_leaves, fresh, strict=True)):
        if flag:
            kept = jnp.sum(m, dtype=jnp.int32)
            k = _count_at_density(kept, int(np.size(m)), int(np.size(t)))
            out_p.append(jnp.asarray(t))
            out_m.append(_random_kept(jax.random.fold_in(key, i), tuple(np.shape(t)), k))
        else:
            out_p.append(jnp.asarray(s))
            out_m.append(jnp.asarray(m))
    return jax.tree.unflatten(treedef, out_p), jax.tree.unflatten(treedef, out_m)


def random_like(mask: Mask, key: Key, prunable: Prunable = None) -> Mask:
    r"""A random mask with the same number of kept weights as ``mask`` in every prunable leaf.

    Each prunable leaf (:func:`jaxprune.masks.is_prunable`) keeps :math:`k_\ell = \sum m_\ell`
    entries drawn uniformly at random without replacement (leaf ``i`` from ``fold_in(key, i)``);
    the other leaves are returned as they are. The per-layer density of the control equals the
    ticket's exactly. Runs under ``jit`` and ``jit ∘ vmap`` (one key per ticket).

    Args:
      mask: a bool mask pytree.
      key: typed PRNG key.
      prunable: which leaves are redrawn (a :data:`~jaxprune._types.Prunable` spec; default
        ``ndim ≥ 2``).

    Returns:
      A bool mask with ``mask``'s structure and shapes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import transfer
      >>> m = {"w": jnp.arange(20).reshape(4, 5) < 7, "b": jnp.array([True, False])}
      >>> r = transfer.random_like(m, jax.random.key(1))
      >>> int(r["w"].sum()), r["b"].tolist()
      (7, [True, False])
    """
    _checks.check_mask(mask, mask)
    _checks.check_key(key)
    if key is None:
        raise ValueError("key must be a typed PRNG key from jax.random.key(seed), got None.")
    flags = tuple(bool(f) for f in jax.tree.leaves(masks.is_prunable(mask, prunable)))
    return _random_like(mask, key, flags)


@functools.partial(jax.jit, static_argnums=2)
def _random_like(mask: Mask, key: Key, flags: tuple[bool, ...]) -> Mask:
    leaves, treedef = jax.tree.flatten(mask)
    out = [
        _random_kept(jax.random.fold_in(key, i), tuple(np.shape(m)), jnp.sum(m, dtype=jnp.int32))
        if flag
        else jnp.asarray(m)
        for i, (m, flag) in enumerate(zip(leaves, flags, strict=True))
    ]
    return jax.tree.unflatten(treedef, out)
