r"""Training FLOPs of sparse-training methods: the RigL paper's accounting (Evci et al. 2020, App. H).

Per example, with :math:`f_D` the forward FLOPs of the dense network and
:math:`f_S = \sum_\ell d_\ell f_\ell` those of the sparse one (:math:`f_\ell` the forward FLOPs of
layer :math:`\ell`, from :func:`jaxprune.metrics.layer_flops`, and :math:`d_\ell` its density; ops
with no param behind them, :data:`jaxprune.metrics.NO_PARAM`, stay dense), a training step costs
a forward pass, a backward pass to the activations and one to the weights, each about one forward:

===============  =====================================================================================
method           FLOPs of step :math:`t`
===============  =====================================================================================
``dense``        :math:`3 f_D`
``static``       :math:`3 f_S`
``set``          :math:`3 f_S` (drop and random growth cost no matmul)
``rigl``         :math:`2 f_S + f_D` at an update step (the dense gradient of the weights), :math:`3 f_S`
                 at every other step
``gradual``      :math:`3 f(d_t)`, :math:`d_t` the densities of the mask in force at step :math:`t`
``ste``          :math:`f_S + 2 f_D` (sparse forward, dense backward)
``sr_ste``       :math:`f_S + 2 f_D`
===============  =====================================================================================

Update steps follow :mod:`jaxprune.sparse_training`'s schedule: RigL updates at
:math:`0 < t < T_{end}`, :math:`t \ge t_0`, :math:`t \bmod \Delta T = 0`, so its total over
:math:`T` steps is

.. math:: F_{RigL} = 3 f_S\,(T - n_u) + (2 f_S + f_D)\,n_u,\qquad
          n_u = |\{t : \max(t_0, 1) \le t < T_{end},\ t \bmod \Delta T = 0\}|

— the paper's average :math:`(3 f_S \Delta T + 2 f_S + f_D)/(\Delta T + 1)` per step up to
:math:`T_{end}` counts a cycle of :math:`\Delta T + 1` steps with one update; here the update step
is one of the :math:`\Delta T` steps of a cycle, as the engine runs it. Gradual pruning (Zhu &
Gupta) updates at :math:`t_0 \le t \le t_1`, :math:`(t - t_0) \bmod \Delta T = 0`, and at
:math:`t_1` itself, to the sparsity
:math:`s(t) = s_f (1 - \mathrm{clip}((t - t_0)/(t_1 - t_0), 0, 1))^3`
(:func:`jaxprune.schedules.polynomial` from 0); a mask set by the update after step :math:`u`
is in force from step :math:`u + 1` on, and the network is dense before the first update.

Counts are theoretical (masked weights run at dense speed) and per example: multiply by the batch
size for the FLOPs of a run, or divide by the dense total for the ratio the RigL paper plots.

Example:
  >>> from jaxprune.sparse_training import flops
  >>> layer = {"['fc1']['kernel']": 600.0, "['out']['kernel']": 200.0}   # f_D = 800
  >>> half = {"['fc1']['kernel']": 0.5, "['out']['kernel']": 0.5}        # f_S = 400
  >>> flops.training_flops("static", layer, half, iterations=10)           # 3 · 400 · 10
  12000.0
  >>> # RigL updates at t = 4 and 8: 3 · 400 · 8 + (2 · 400 + 800) · 2
  >>> flops.training_flops("rigl", layer, half, iterations=10, delta_t=4, end=10)
  12800.0
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import numpy as np

from jaxprune import _checks, metrics, schedules
from jaxprune._types import PyTree

__all__ = ["TRAINING_METHODS", "Densities", "by_path", "sparse_flops", "training_flops"]

TRAINING_METHODS = ("dense", "static", "gradual", "set", "rigl", "ste", "sr_ste")
"""The methods :func:`training_flops` counts: dense training and every sparse-training method."""

Densities: TypeAlias = Mapping[str, float] | PyTree
"""Per-layer densities: ``{keystr path: density}`` (what :func:`jaxprune.masks.layer_density`
returns), or a pytree with the params' structure holding one density per leaf (what
:func:`jaxprune.sparse_training.allocation.layer_densities` returns)."""


def by_path(densities: Densities) -> dict[str, float]:
    """Per-layer densities as ``{keystr path: float}``, the keys of :func:`jaxprune.metrics.layer_flops`.

    A dict whose keys are all key-paths (they start with ``[`` or ``.``) is taken as it is; any
    other pytree is flattened with :func:`jax.tree_util.keystr` paths.

    Example:
      >>> from jaxprune.sparse_training import flops
      >>> flops.by_path({"fc": {"kernel": 0.25, "bias": 1.0}})
      {"['fc']['bias']": 1.0, "['fc']['kernel']": 0.25}
    """
    if (
        isinstance(densities, Mapping)
        and densities
        and all(isinstance(k, str) and k.startswith(("[", ".")) for k in densities)
    ):
        return {k: float(np.asarray(v)) for k, v in densities.items()}
    return {k: float(np.asarray(v)) for k, v in _checks.leaves_with_paths(densities)}


def sparse_flops(layer_flops: Mapping[str, float], densities: Densities) -> float:
    r"""Forward FLOPs of the sparse network: :math:`f_S = \sum_\ell d_\ell f_\ell`.

    Args:
      layer_flops: dense forward FLOPs per layer, ``{path: f_ℓ}`` from
        :func:`jaxprune.metrics.layer_flops` (MACs work too: the result is then MACs).
      densities: :data:`Densities`; every path of ``layer_flops`` but
        :data:`jaxprune.metrics.NO_PARAM` (which counts dense) must have one, in [0, 1].

    Returns:
      :math:`f_S`, a float.

    Example:
      >>> from jaxprune.sparse_training import flops
      >>> flops.sparse_flops({"['a']": 600, "['b']": 200, "<no param>": 10},
      ...                    {"['a']": 0.1, "['b']": 0.5})  # 60 + 100 + 10
      170.0
    """
    d = by_path(densities)
    total = 0.0
    for path, f in layer_flops.items():
        if path == metrics.NO_PARAM:
            total += float(f)
            continue
        if path not in d:
            raise ValueError(
                f"densities has no density for the layer {path!r} of layer_flops; its paths are "
                f"{sorted(d)}. Pass the densities of the same params, as keystr paths or a "
                "params-shaped pytree."
            )
        if not 0.0 <= d[path] <= 1.0:
            raise ValueError(f"densities[{path!r}] must be in [0, 1], got {d[path]}.")
        total += d[path] * float(f)
    return total


def _check_int(value: Any, *, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def _update_steps(name: str, iterations: int, delta_t: int, begin: int, end: int) -> np.ndarray:
    """The steps (in ``[0, iterations)``) at which ``name`` updates its mask."""
    t = np.arange(iterations)
    if name == "gradual":
        # The end step is an update too (core's rule): the final sparsity is always reached.
        return t[(t >= begin) & (t <= end) & (((t - begin) % delta_t == 0) | (t == end))]
    return t[(t > 0) & (t >= begin) & (t < end) & (t % delta_t == 0)]


def _gradual_total(
    layer_flops: Mapping[str, float], densities: Callable[[float], Densities], sparsity: float,
    iterations: int, delta_t: int, begin: int, end: int,
) -> float:  # fmt: skip
    updates = _update_steps("gradual", iterations, delta_t, begin, end)
    f_dense = float(sum(layer_flops.values()))
    cost = functools.cache(lambda s: sparse_flops(layer_flops, densities(s)))
    total, now, last = 0.0, f_dense, 0
    for u in updates:  # the mask set after step u is in force from u + 1 on
        total += 3 * now * (min(u + 1, iterations) - last)
        last = min(u + 1, iterations)
        s = float(schedules.polynomial(u, initial_sparsity=0.0, final_sparsity=sparsity,
                                       begin_step=begin, end_step=end))  # fmt: skip
        now = cost(s)
    return float(total + 3 * now * (iterations - last))


def training_flops(
    method: Any,
    layer_flops: Mapping[str, float],
    densities: Densities | Callable[[float], Densities],
    *,
    iterations: int,
    delta_t: int = 100,
    begin: int = 0,
    end: int | None = None,
    sparsity: float | None = None,
) -> float:
    r"""Training FLOPs per example of ``iterations`` steps of ``method`` (see the module docstring).

    Args:
      method: a name of :data:`TRAINING_METHODS`, or a
        :class:`jaxprune.sparse_training.Method` (its ``name`` is read).
      layer_flops: dense forward FLOPs per layer, from :func:`jaxprune.metrics.layer_flops`.
      densities: the final per-layer densities (:data:`Densities`); for ``gradual`` a function
        ``densities(sparsity) -> Densities`` (e.g. ``lambda s: allocation.layer_densities(params,
        s)``), called at each scheduled sparsity. Ignored for ``dense``.
      iterations: training steps :math:`T \ge 1`.
      delta_t: steps :math:`\Delta T` between mask updates (``rigl``, ``gradual``).
      begin: first update step :math:`t_0`.
      end: ``rigl``: no update at or after it (default ``iterations``); ``gradual``: the step
        :math:`t_1` where the final sparsity is reached (required).
      sparsity: ``gradual`` only: the final sparsity :math:`s_f`.

    Returns:
      The sum over the steps of the per-step FLOPs, per example.

    Example:
      >>> from jaxprune.sparse_training import flops
      >>> layer = {"['w']": 100.0}
      >>> flops.training_flops("dense", layer, {}, iterations=5)  # 3 · 100 · 5
      1500.0
      >>> flops.training_flops("ste", layer, {"['w']": 0.2}, iterations=5)  # (20 + 200) · 5
      1100.0
      >>> # Gradual, updates at t = 0, 2, 4 to s = 0, 0.5·(1 - (1 - 2/4)³) = 0.4375, 0.5:
      >>> # steps 0-2 dense, 3-4 at density 0.5625, 5 at 0.5: 300·3 + 300·0.5625·2 + 300·0.5
      >>> flops.training_flops("gradual", layer, lambda s: {"['w']": 1 - s}, iterations=6,
      ...                      delta_t=2, begin=0, end=4, sparsity=0.5)
      1387.5
    """
    name = getattr(method, "name", method)
    _checks.check_choice(name, TRAINING_METHODS, name="method")
    iterations = _check_int(iterations, name="iterations", low=1)
    delta_t = _check_int(delta_t, name="delta_t", low=1)
    begin = _check_int(begin, name="begin", low=0)
    f_dense = float(sum(layer_flops.values()))
    if not math.isfinite(f_dense) or f_dense <= 0:
        raise ValueError(
            f"layer_flops must hold finite counts with a sum > 0, got {layer_flops!r}."
        )
    if name == "dense":
        return 3 * f_dense * iterations
    if name == "gradual":
        _checks.require(end, name="end", why="for gradual (the step of the final sparsity)")
        _checks.require(sparsity, name="sparsity", why="for gradual (the final sparsity)")
        end = _check_int(end, name="end", low=begin + 1)
        _checks.check_in_range(sparsity, name="sparsity")
        final = float(sparsity)  # type: ignore[arg-type]  # not None: required above
        if not callable(densities):
            raise ValueError(
                "densities must be a function sparsity -> per-layer densities for gradual (its "
                f"densities change during training), got {type(densities).__name__}."
            )
        return _gradual_total(layer_flops, densities, final, iterations, delta_t,
                              begin, end)  # fmt: skip
    if callable(densities):
        raise ValueError(
            f"densities must be the final per-layer densities for {name!r} (a dict of paths or a "
            "params-shaped pytree), got a function; only gradual takes one."
        )
    f_sparse = sparse_flops(layer_flops, densities)
    if name in ("static", "set"):
        return 3 * f_sparse * iterations
    if name in ("ste", "sr_ste"):
        return (f_sparse + 2 * f_dense) * iterations
    end = iterations if end is None else _check_int(end, name="end", low=begin + 1)
    n_updates = len(_update_steps("rigl", iterations, delta_t, begin, end))
    return 3 * f_sparse * (iterations - n_updates) + (2 * f_sparse + f_dense) * n_updates
