r"""Model-aware saliency: OBD, SNIP, GraSP, Taylor and SynFlow scores, by name.

Where :mod:`jaxprune.criteria` scores weights from their values alone, a saliency reads the model:
``apply_fn(params, x) -> logits`` (e.g. from :func:`jaxprune.models.functional`, or any pure
function) and, for the data-driven methods, a batch ``(x, y)`` of inputs and integer labels.
The loss is the mean softmax cross-entropy :math:`L(\theta)` of ``apply_fn(θ, x)`` on ``y``;
:math:`g = \nabla_\theta L`, :math:`H = \nabla^2_\theta L`. **Higher score = keep**, as in
:mod:`jaxprune.criteria`, so the scores plug into :func:`jaxprune.select.layerwise`,
:func:`~jaxprune.select.global_` and :func:`~jaxprune.select.prune` unchanged.

=============  ==============================================  =================================
name           score (per weight :math:`\theta_q`)             source
=============  ==============================================  =================================
``obd``        :math:`\tfrac12\, H_{qq}\, \theta_q^2`          LeCun et al. 1990
``snip``       :math:`|g_q\, \theta_q|`                        Lee et al. 2019
``grasp``      :math:`\theta_q\, (H g)_q`, logits / T          Wang et al. 2020 (sign: below)
``taylor``     :math:`\tfrac1M \sum_m (g^{(m)}_q \theta_q)^2`  Molchanov et al. 2019
``synflow``    :math:`|\theta_q\, \partial R / \partial       Tanaka et al. 2020 (data-free)
               \theta_q|` on :math:`|\theta|`, input 1
``magnitude``  :math:`|\theta_q|`                              baseline
``random``     :math:`U[0, 1)` from ``key``                    baseline
=============  ==============================================  =================================

OBD's Hessian diagonals (exact, Hutchinson, Gauss-Newton) come from :mod:`jaxprune.hessian`.

Scores are float32 pytrees with the params' structure and leaf shapes, for every leaf —
biases included; which leaves may be *pruned* is decided by the selector's ``prunable`` rule
(kernels only by default), exactly as for criteria. A NaN in the params (or a NaN loss) gives NaN
scores, which :mod:`jaxprune.select` rejects. Params are cast to float32 first.

Every function is pure: method names, option values that set shapes (``probes``,
``microbatches``, ``input_shape``) and ``float64`` are static; params, batches, densities and keys
are arrays, so each function runs under ``jit`` and ``jit ∘ vmap`` over a leading ticket axis of
params without recompiling when they change. Keys are keyword-only and never defaulted.

Example — SNIP on a two-layer net, half of each kernel kept:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import masks, saliency, select
  >>> def apply_fn(p, x):
  ...     return jnp.tanh(x @ p["w1"]) @ p["w2"]
  >>> params = {"w1": jnp.sin(jnp.arange(24.0)).reshape(4, 6),
  ...           "w2": jnp.cos(jnp.arange(18.0)).reshape(6, 3)}
  >>> batch = (jnp.sin(jnp.arange(32.0) / 3).reshape(8, 4), jnp.arange(8) % 3)
  >>> scores = saliency.score("snip", apply_fn, params, batch)
  >>> kept = select.layerwise(scores, masks.ones(params), 0.5)
  >>> int(kept["w1"].sum()), int(kept["w2"].sum())
  (12, 9)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxprune import _checks, criteria, hessian, masks, schedules, select
from jaxprune._types import Array, ArrayLike, Key, Mask, Params, Prunable, PyTree, Scores

__all__ = [
    "EXACT_LIMIT",
    "HESSIAN_METHODS",
    "METHODS",
    "OBD_METHODS",
    "ApplyFn",
    "Batch",
    "balanced_batch",
    "gauss_newton_diagonal",
    "grasp",
    "hessian_diagonal",
    "iterative_prune",
    "names",
    "obd",
    "score",
    "snip",
    "synflow",
    "synflow_prune",
    "taylor",
]

ApplyFn: TypeAlias = hessian.ApplyFn
Batch: TypeAlias = hessian.Batch

EXACT_LIMIT = hessian.EXACT_LIMIT
"""Default ``exact_limit`` of :func:`obd` (:data:`jaxprune.hessian.EXACT_LIMIT`)."""

OBD_METHODS = (*hessian.HESSIAN_METHODS, "gauss_newton")
"""How :func:`obd` takes the Hessian diagonal: :func:`jaxprune.hessian.hessian_diagonal`'s two
methods, or :func:`jaxprune.hessian.gauss_newton_diagonal`."""

# The Hessian estimators live in jaxprune.hessian; these names keep old callers working.
HESSIAN_METHODS = hessian.HESSIAN_METHODS
hessian_diagonal = hessian.hessian_diagonal
gauss_newton_diagonal = hessian.gauss_newton_diagonal


# ----------------------------------------------------------------------------- validation


def _check_input_shape(input_shape: Any) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
    if not shape or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints (one example, without the "
            f"batch axis, e.g. (28, 28, 1)), got {input_shape!r}."
        )
    return tuple(int(d) for d in shape)


def _check_positive(value: Any, *, name: str) -> None:
    if _checks.is_traced(value):
        return
    arr = np.asarray(value, np.float64)
    if arr.shape != () or not arr > 0:
        raise ValueError(f"{name} must be a positive scalar, got {value!r}.")


# ----------------------------------------------------------------------------- the loss


def _cross_entropy(logits: Array, y: Array) -> Array:
    """Mean softmax cross-entropy with integer labels (as :func:`jaxprune.train.cross_entropy`)."""
    if not _checks.is_traced(y):
        labels = np.asarray(y)
        if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(
                f"batch[1] (y) must hold labels in [0, {logits.shape[1]}) for logits with "
                f"{logits.shape[1]} classes, got labels in [{labels.min()}, {labels.max()}]."
            )
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), axis=1)
    return -jnp.mean(picked)


def _loss_fn(
    apply_fn: ApplyFn, x: Array, y: Array, temperature: ArrayLike = 1.0
) -> Callable[[Params], Array]:
    def loss(params: Params) -> Array:
        return _cross_entropy(_checks.model_logits(apply_fn, params, x) / temperature, y)

    return loss


# ----------------------------------------------------------------------------- data-driven scores


def obd(
    apply_fn: ApplyFn,
    params: Params,
    batch: Batch,
    *,
    method: Literal["exact", "hutchinson", "gauss_newton"] = "exact",
    probes: int = 100,
    key: Key | None = None,
    chunk_size: int = 128,
    exact_limit: int = EXACT_LIMIT,
) -> Scores:
    r"""Optimal Brain Damage (LeCun et al. 1990): :math:`s_q = \tfrac12\, h_{qq}\, \theta_q^2`.

    The loss change of deleting weight :math:`q` to second order, ignoring the off-diagonal
    Hessian and the gradient (the net is assumed at a minimum). :math:`h_{qq}` is the Hessian
    diagonal of the cross-entropy on ``batch`` (:func:`jaxprune.hessian.hessian_diagonal`:
    ``exact`` for small models, ``hutchinson`` otherwise), or its Gauss-Newton part
    (``gauss_newton``, :func:`jaxprune.hessian.gauss_newton_diagonal`: the approximation LeCun et
    al. used, never negative, exact and cheap for any model size). Away from a minimum the true :math:`h_{qq}` can be negative, and so
    can the score: such weights rank lowest and are pruned first. The paper's loop: train, score,
    prune the lowest, retrain, repeat.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the (trained) params.
      batch: ``(x, y)``, integer labels.
      method: one of :data:`OBD_METHODS` (static).
      probes, key, chunk_size, exact_limit: as :func:`jaxprune.hessian.hessian_diagonal`
        (``chunk_size`` is the number of examples per vmapped Jacobian for ``gauss_newton``).

    Returns:
      float32 scores like ``params``; higher = keep.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> s = saliency.obd(apply_fn, {"w": jnp.array([[1.0, -1.0]])}, (jnp.ones((2, 1)), jnp.array([0, 1])))
      >>> s["w"]  # h_qq = p(1 - p) = 0.105 for both logits (p = softmax(1, -1)), times ½·1²
      Array([[0.0524..., 0.0524...]], dtype=float32)
    """
    _checks.check_choice(method, OBD_METHODS, name="method")
    p32, x, y = _checks.prepare_model_inputs(apply_fn, params, batch)
    if method == "gauss_newton":
        diag = hessian.gauss_newton_diagonal(apply_fn, p32, (x, y), chunk_size=chunk_size)
        return jax.tree.map(lambda h, p: 0.5 * h * p * p, diag, p32)
    diag = hessian.hessian_diagonal(
        _loss_fn(apply_fn, x, y),
        p32,
        method=method,
        probes=probes,
        key=key,
        chunk_size=chunk_size,
        exact_limit=exact_limit,
    )
    return jax.tree.map(lambda h, p: 0.5 * h * p * p, diag, p32)


def snip(apply_fn: ApplyFn, params: Params, batch: Batch) -> Scores:
    r"""SNIP connection sensitivity (Lee et al. 2019): :math:`s_q = |g_q\, \theta_q|`.

    :math:`g` is the gradient of the mean cross-entropy on ``batch`` at ``params`` (at
    initialisation, on one small batch — about ten examples per class is the usual choice, see
    :func:`balanced_batch`). The paper divides by
    :math:`\sum_q |g_q \theta_q|`, a constant that changes no ranking, so it is left out. Equal
    to :func:`jaxprune.criteria.score` ``("snip", params, grads=g)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> s = saliency.snip(apply_fn, {"w": jnp.array([[2.0, -1.0]])}, (jnp.ones((1, 1)), jnp.array([0])))
      >>> s["w"].round(4)  # g = softmax(2, -1) - (1, 0) = (-0.0474, 0.0474)
      Array([[0.0949, 0.0474]], dtype=float32)
    """
    p32, x, y = _checks.prepare_model_inputs(apply_fn, params, batch)
    grads = jax.grad(_loss_fn(apply_fn, x, y))(p32)
    return jax.tree.map(lambda g, p: jnp.abs(g * p), grads, p32)


def grasp(
    apply_fn: ApplyFn,
    params: Params,
    batch: Batch,
    *,
    temperature: ArrayLike = 200.0,
    prunable: Prunable = None,
) -> Scores:
    r"""GraSP, gradient signal preservation (Wang et al. 2020): :math:`s = \theta \odot H g`.

    The loss is the cross-entropy of the *tempered* logits ``apply_fn(θ, x) / temperature``
    (T = 200 in the paper, to soften the softmax at init); :math:`g` is its gradient restricted to
    the ``prunable`` leaves (kernels by default — the reference code differentiates only conv and
    linear weights) and :math:`Hg` one forward-over-reverse Hessian-vector product, evaluated for
    every leaf.

    **Sign.** Wang et al. write the score as :math:`S(-\theta) = -\theta \odot Hg` and *remove*
    the weights with the highest :math:`S`; the reference code computes ``-θ * Hg`` and keeps
    those at or below the top-p threshold. Both keep the highest :math:`\theta \odot Hg`, which is
    this score under jaxprune's higher = keep convention. Feeding the paper's :math:`S` to a
    keep-highest selector would invert GraSP. Later analyses question the sign itself and study
    :math:`|\theta \odot Hg|` instead: ``jax.tree.map(jnp.abs, scores)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the params at initialisation.
      batch: ``(x, y)``; the reference uses a class-balanced batch (:func:`balanced_batch`).
      temperature: T > 0, the logit divisor (may be traced).
      prunable: which leaves' gradients enter :math:`g` (a
        :data:`~jaxprune._types.Prunable` spec; static).

    Returns:
      float32 scores like ``params``; higher = keep. They can be negative.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> params = {"w1": jnp.sin(jnp.arange(12.0)).reshape(3, 4),
      ...           "w2": jnp.cos(jnp.arange(8.0)).reshape(4, 2)}
      >>> grasp = jax.jit(saliency.grasp, static_argnums=0)  # apply_fn is static
      >>> s = grasp(apply_fn, params, (jnp.ones((2, 3)), jnp.array([0, 1])))
      >>> jax.tree.map(jnp.shape, s)
      {'w1': (3, 4), 'w2': (4, 2)}
    """
    p32, x, y = _checks.prepare_model_inputs(apply_fn, params, batch)
    _check_positive(temperature, name="temperature")
    loss = _loss_fn(apply_fn, x, y, temperature)
    flags = masks.is_prunable(p32, prunable)
    grads = jax.grad(loss)(p32)
    g = jax.tree.map(lambda gq, f: gq if f else jnp.zeros_like(gq), grads, flags)
    _, hg = jax.jvp(jax.grad(loss), (p32,), (lax.stop_gradient(g),))
    return jax.tree.map(lambda h, p: p * h, hg, p32)


def taylor(apply_fn: ApplyFn, params: Params, batch: Batch, *, microbatches: int = 1) -> Scores:
    r"""First-order Taylor importance (Molchanov et al. 2019): :math:`s_q = \overline{(g_q \theta_q)^2}`.

    Removing weight :math:`q` changes the loss by :math:`\Delta L \approx -g_q \theta_q` to first
    order; Molchanov et al. score its square, averaged over mini-batches:

    .. math::  s_q = \frac1M \sum_{m=1}^{M} \big(g^{(m)}_q\, \theta_q\big)^2,

    where :math:`g^{(m)}` is the gradient of the mean cross-entropy on the :math:`m`-th of
    ``microbatches`` equal, contiguous slices of ``batch``. **How it differs from SNIP**
    (:math:`|\bar g_q \theta_q|`, one gradient of the whole batch): with ``microbatches=1`` the
    score is SNIP's squared, so it ranks weights *identically*; with :math:`M > 1` it averages the
    squares of per-slice gradients, so a weight whose gradient is large but changes sign between
    slices keeps a high score where SNIP's averaged gradient cancels. (Their group score for a
    filter, :math:`(\sum_{q \in \text{group}} g_q \theta_q)^2`, is not this per-weight sum.)

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the params (trained, for pruning during fine-tuning as in the paper).
      batch: ``(x, y)``; its size must be a multiple of ``microbatches``.
      microbatches: :math:`M` (static).

    Returns:
      float32 scores like ``params``; higher = keep.

    Example — one slice is SNIP squared:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> params, batch = {"w": jnp.array([[2.0, -1.0]])}, (jnp.ones((2, 1)), jnp.array([0, 1]))
      >>> t, s = saliency.taylor(apply_fn, params, batch), saliency.snip(apply_fn, params, batch)
      >>> bool(jnp.allclose(t["w"], s["w"] ** 2))
      True
      >>> saliency.taylor(apply_fn, params, batch, microbatches=2)["w"]  # slices disagree
      Array([[1.819..., 0.454...]], dtype=float32)
    """
    p32, x, y = _checks.prepare_model_inputs(apply_fn, params, batch)
    _checks.check_positive_int(microbatches, name="microbatches")
    if x.shape[0] % microbatches:
        raise ValueError(
            f"batch size {x.shape[0]} must be a multiple of microbatches={microbatches} (equal "
            "slices)."
        )
    xs = x.reshape(microbatches, -1, *x.shape[1:])
    ys = y.reshape(microbatches, -1)

    def slice_grad(xm: Array, ym: Array) -> PyTree:
        return jax.grad(_loss_fn(apply_fn, xm, ym))(p32)

    grads = jax.vmap(slice_grad)(xs, ys)
    return jax.tree.map(lambda g, p: jnp.mean(jnp.square(g * p[None]), axis=0), grads, p32)


def balanced_batch(
    x: ArrayLike,
    y: ArrayLike,
    per_class: int,
    *,
    key: Key,
    num_classes: int | None = None,
) -> tuple[Array, Array]:
    """A class-balanced batch: ``per_class`` random examples of each class, class by class.

    SNIP and GraSP score on such a batch (about ten examples per class is the usual choice).
    Within a class the examples are a uniform draw without replacement from ``key``.

    Args:
      x: inputs, leading axis = examples.
      y: integer labels ``[examples]`` in ``[0, num_classes)``.
      per_class: examples per class (static).
      key: PRNG key (keyword-only, required).
      num_classes: the number of classes (static); default ``y.max() + 1``, which needs a
        concrete ``y`` (pass it under ``jit``).

    Returns:
      ``(x_b, y_b)`` with ``num_classes · per_class`` examples: class 0's first, then class 1's…

    Raises:
      ValueError: a class with fewer than ``per_class`` examples (checked when ``y`` is concrete;
        under ``jit`` the short class's slots are filled with examples of the next classes);
        mismatched shapes; a missing or malformed key.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> x, y = jnp.arange(10.0)[:, None], jnp.array([0, 1, 1, 0, 2, 2, 1, 0, 2, 0])
      >>> xb, yb = saliency.balanced_batch(x, y, 2, key=jax.random.key(0))
      >>> yb
      Array([0, 0, 1, 1, 2, 2], dtype=int32)
      >>> bool(jnp.all(y[xb[:, 0].astype(int)] == yb))
      True
    """
    xa, ya = _checks.check_batch((x, y), name="(x, y)")
    _checks.check_positive_int(per_class, name="per_class")
    _checks.require(key, name="key", why="by balanced_batch (it draws the examples)")
    _checks.check_key(key)
    if num_classes is None:
        if _checks.is_traced(y):
            raise ValueError(
                "num_classes is required when y is traced (under jit): pass num_classes=."
            )
        num_classes = int(np.max(np.asarray(y))) + 1
    _checks.check_positive_int(num_classes, name="num_classes")
    if not _checks.is_traced(y):  # the argument itself: numpy labels stay concrete under jit
        counts = np.bincount(np.asarray(y), minlength=num_classes)
        short = [(c, int(n)) for c, n in enumerate(counts[:num_classes]) if n < per_class]
        if short:
            raise ValueError(
                f"per_class={per_class} but class(es) have too few examples: "
                + ", ".join(f"class {c}: {n}" for c, n in short[:5])
                + ". Lower per_class or pass more data."
            )
    perm = jax.random.permutation(key, xa.shape[0])
    # stable sort of a random permutation by label: each class's examples in random order
    order = perm[jnp.argsort(ya[perm], stable=True)]
    counts_t = jnp.bincount(ya, length=num_classes)
    starts = jnp.cumsum(counts_t) - counts_t
    idx = (starts[:, None] + jnp.arange(per_class)[None, :]).reshape(-1)
    picked = order[jnp.minimum(idx, xa.shape[0] - 1)]
    return xa[picked], jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)


# ----------------------------------------------------------------------------- SynFlow


def _synflow(
    apply_fn: ApplyFn,
    params: Params,
    input_shape: tuple[int, ...],
    state: PyTree | None,
    dtype: Any,
    normalise: bool,
) -> Scores:
    linear = jax.tree.map(lambda p: jnp.abs(jnp.asarray(p, dtype)), params)
    ones = jnp.ones((1, *input_shape), dtype)
    lin_state = (
        None if state is None else jax.tree.map(lambda s: jnp.abs(jnp.asarray(s, dtype)), state)
    )

    def flow(p: Params) -> Array:
        out = apply_fn(p, ones) if lin_state is None else apply_fn(p, ones, lin_state)
        return jnp.sum(out)

    r, grads = jax.value_and_grad(flow)(linear)
    # R is a sum of products of |θ| on an all-ones input: >= 0; 0 only when no path survives.
    scale = jnp.where(r > 0, r, 1.0) if normalise else jnp.ones((), r.dtype)
    return jax.tree.map(lambda p, g: (jnp.abs(p * g) / scale).astype(jnp.float32), linear, grads)


def synflow(
    apply_fn: ApplyFn,
    params: Params,
    input_shape: Sequence[int],
    *,
    state: PyTree | None = None,
    float64: bool = False,
) -> Scores:
    r"""SynFlow, iterative synaptic flow (Tanaka et al. 2020) — one data-free scoring.

    Every parameter is replaced by its absolute value, an all-ones input of shape
    ``(1, *input_shape)`` is fed forward, and

    .. math::  R = \mathbb{1}^\top f(\mathbb{1};\, |\theta|), \qquad
               s_q = \Big|\theta_q \frac{\partial R}{\partial \theta_q}\Big|.

    For a bias-free chain of dense layers :math:`s(W_\ell)_{ij} = (\mathbb{1}^\top |W_1| \cdots
    |W_{\ell-1}|)_i\, |W_\ell|_{ij}\, (|W_{\ell+1}| \cdots |W_L|\, \mathbb{1})_j`, and the scores
    are **conserved**: what flows into a neuron flows out of it, so every layer's scores sum to
    :math:`R`. No data is read: the scores depend on the weights and the architecture only.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``; the outputs may have any shape.
      params: the params (every leaf is made non-negative, biases too).
      input_shape: one example's shape, without the batch axis (static).
      state: non-param variables the forward pass reads (BatchNorm statistics); SynFlow takes
        their absolute value too, and ``apply_fn(params, x, state)`` is called. ``None`` (the
        models here have none) calls ``apply_fn(params, x)``.
      float64: compute in float64 (static) — deep nets over- or underflow float32, where
        :math:`R` is a product over layers. It works without ``jax_enable_x64`` (a local
        ``jax.enable_x64`` context). The float32 scores it returns are :math:`s_q / R`
        (computed in float64), so they fit float32's range: same ranking, and every layer of a
        chain then sums to 1; entries below :math:`\approx 10^{-45} R` round to 0.

    Returns:
      float32 scores like ``params``; higher = keep. Iterate with :func:`synflow_prune`.

    Example — a two-layer chain, :math:`R = 1^\top|W_1||W_2|1 = 1 \cdot 1 + 2 \cdot 1 = 3`:
      >>> import jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> p = {"w1": jnp.array([[1.0, -2.0]]), "w2": jnp.array([[1.0], [-1.0]])}
      >>> s = saliency.synflow(lambda p, x: x @ p["w1"] @ p["w2"], p, (1,))
      >>> s["w1"], s["w2"]
      (Array([[1., 2.]], dtype=float32), Array([[1.], [2.]], dtype=float32))
      >>> saliency.synflow(lambda p, x: x @ p["w1"] @ p["w2"], p, (1,), float64=True)["w1"]
      Array([[0.33333334, 0.6666667 ]], dtype=float32)
    """
    _checks.check_apply_fn(apply_fn)
    _checks.check_params(params)
    shape = _check_input_shape(input_shape)
    if float64:
        with jax.enable_x64(True):
            return _synflow(apply_fn, params, shape, state, jnp.float64, True)
    return _synflow(apply_fn, params, shape, state, jnp.float32, False)


# ----------------------------------------------------------------------------- iterative pruning


def _target_counts(start: Array, density: Array, size: int, k: Array, rounds: Array) -> Array:
    """Weights kept after round ``k``: ``start · (T/start)^(k/n)`` rounded, exactly T at k = n.

    ``T = keep_count(size, 1 - density)``: what one-shot pruning of a dense leaf to ``density``
    keeps, so one round equals one-shot selection.
    """
    final = select.keep_count(size, 1.0 - density)
    final = jnp.minimum(final, start)  # a mask already sparser than the target is left alone
    ratio = final.astype(jnp.float32) / jnp.maximum(start, 1).astype(jnp.float32)
    frac = schedules.exponential(k, rounds, ratio)
    counts = jnp.floor(start.astype(jnp.float32) * frac + 0.5).astype(jnp.int32)
    counts = jnp.clip(counts, final, start)
    return jnp.where(k >= rounds, final, counts)


def _rate(remaining: Array, target: Array) -> Array:
    """The select ``rate`` that takes ``remaining`` to ``target`` (exact for < 2^22 pruned)."""
    r = remaining.astype(jnp.float32)
    rate = (r - target.astype(jnp.float32)) / jnp.maximum(r, 1.0)
    return jnp.clip(rate, 0.0, 1.0 - 1e-7)


def _schedule_counts(schedule: schedules.Schedule, size: int, k: Array) -> Array:
    """Weights kept after round ``k``: ``keep_count(size, 1 - schedule(k))``, one-shot's count."""
    density = jnp.asarray(schedule(k), jnp.float32)
    if density.shape != ():
        raise ValueError(
            f"a density schedule must return one density per round, got shape "
            f"{list(density.shape)}; for per-leaf densities use scope='layerwise' with one "
            "schedule, or prune each leaf group separately."
        )
    return select.keep_count(size, 1.0 - density)


def iterative_prune(
    score_fn: Callable[[Params], Scores],
    params: Params,
    mask: Mask,
    *,
    density: ArrayLike | schedules.Schedule,
    rounds: ArrayLike = 100,
    scope: select.Scope = "global",
    prunable: Prunable = None,
    min_keep: int = 0,
) -> Mask:
    r"""Prune in ``rounds`` rounds along a density schedule, re-scoring the masked net each round.

    Round :math:`k = 1 \dots n` scores the masked params :math:`\theta \odot M_{k-1}` with
    ``score_fn`` and prunes the lowest scores so that :math:`c_k` weights stay kept, an exact
    count. :math:`N` is the number of prunable weights and :math:`c_0` the number kept at the start.

    ``density`` is either the final density :math:`\rho` — SynFlow's exponential schedule
    (:func:`jaxprune.schedules.exponential`), kept fraction :math:`\rho^{k/n}`, from :math:`c_0` to
    exactly one-shot's count:

    .. math::  c_k = \operatorname{round}\big(c_0\, (c_n / c_0)^{k/n}\big), \qquad
               c_n = \text{select.keep\_count}(N, 1 - \rho),

    or any schedule, a callable :math:`d(k)` of the traced round (a
    :data:`~jaxprune.schedules.Schedule`, like an optax schedule) giving the density after round
    :math:`k`, of all :math:`N` weights:

    .. math::  c_k = \min\big(c_{k-1},\; \text{select.keep\_count}(N, 1 - d(k))\big),

    one-shot pruning's count at :math:`d(k)` — masks only shrink, so a schedule that rises (or
    starts above :math:`c_0 / N`) prunes nothing until it falls below. ``scope="global"`` counts
    all prunable weights together (SynFlow); ``"layerwise"`` applies the schedule to each prunable
    leaf. ``rounds=1`` is one-shot pruning. The loop is one ``lax.fori_loop``: compiled once,
    whatever the density or rounds.

    Args:
      score_fn: ``score_fn(params) -> scores`` (higher = keep), e.g. a closure over
        :func:`synflow` or :func:`snip`.
      params: the params (pruned entries are zeroed before scoring).
      mask: the starting mask (bool pytree like ``params``); pruned weights stay pruned. A leaf
        already at or below the target keeps its mask.
      density: the final fraction :math:`\rho \in (0, 1]` of the prunable weights kept (of all of
        them, not of the remaining), may be traced; or a schedule ``density(k) -> density`` for
        ``k = 1 … rounds`` (static callable; the values it closes over may be traced), e.g.
        ``lambda k: schedules.geometric(k, 0.2)``.
      rounds: :math:`n > 0`; may be traced.
      scope: ``"global"`` or ``"layerwise"`` (static).
      prunable: which leaves may be pruned (static spec; kernels by default).
      min_keep: as in :func:`jaxprune.select.global_` (static): at least this many per leaf, which
        can keep more than the target.

    Returns:
      The new bool mask.

    Example — iterative SNIP to 30% of the weights in 3 rounds, then IMP's 20% per round:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import masks, saliency, schedules
      >>> apply_fn = lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"]
      >>> params = {"w1": jnp.sin(jnp.arange(20.0)).reshape(4, 5),
      ...           "w2": jnp.cos(jnp.arange(15.0)).reshape(5, 3)}
      >>> batch = (jnp.sin(jnp.arange(24.0) / 3).reshape(6, 4), jnp.arange(6) % 3)
      >>> snip = lambda q: saliency.snip(apply_fn, q, batch)
      >>> snip_prune = jax.jit(lambda p, d: saliency.iterative_prune(
      ...     snip, p, masks.ones(p), density=d, rounds=3))
      >>> m = snip_prune(params, 0.3)  # density is traced: any density, one program
      >>> int(masks.count(m))  # round(0.3 · 35)
      10
      >>> m = saliency.iterative_prune(snip, params, masks.ones(params), rounds=3,
      ...                              density=lambda k: schedules.geometric(k, 0.2))
      >>> int(masks.count(m))  # 35 → 28 → 22 → 18: 35 - ⌊35 · (1 - 0.8^k) + ½⌋
      18
    """
    _checks.check_mask(mask, params)
    _checks.check_choice(scope, select.SCOPES, name="scope")
    _check_positive(rounds, name="rounds")
    rounds_ = jnp.asarray(rounds, jnp.int32)
    target: Callable[[Array, int, Array], Array]  # (count at the start, size, round) -> count
    if callable(density):
        schedule = density

        def target(start: Array, size: int, k: Array) -> Array:
            return _schedule_counts(schedule, size, k)

    else:
        _checks.check_in_range(density, name="density", high_inclusive=True)
        _check_positive(density, name="density")
        final_density = jnp.asarray(density, jnp.float32)

        def target(start: Array, size: int, k: Array) -> Array:
            return _target_counts(start, final_density, size, k, rounds_)

    flags = masks.is_prunable(mask, prunable)
    flat_flags = jax.tree.leaves(flags)
    sizes = [int(np.size(m)) for m in jax.tree.leaves(mask)]

    def counts(m: Mask) -> list[Array]:
        return [jnp.sum(leaf, dtype=jnp.int32) for leaf in jax.tree.leaves(m)]

    start = counts(mask)
    total_start = sum((c for c, f in zip(start, flat_flags, strict=True) if f), jnp.int32(0))
    total_size = sum(s for s, f in zip(sizes, flat_flags, strict=True) if f)

    def one_round(k: Array, m: Mask) -> Mask:
        scores = score_fn(
            jax.tree.map(lambda p, mk: jnp.where(mk, p, jnp.zeros_like(p)), params, m)
        )
        now = counts(m)
        # _rate never grows a mask: a target above the current count prunes nothing.
        if scope == "global":
            kept = sum((c for c, f in zip(now, flat_flags, strict=True) if f), jnp.int32(0))
            rate: Any = _rate(kept, target(total_start, total_size, k + 1))
        else:
            rates = [
                _rate(c, target(c0, size, k + 1)) if f else jnp.float32(0)
                for c, c0, size, f in zip(now, start, sizes, flat_flags, strict=True)
            ]
            rate = jax.tree.unflatten(jax.tree.structure(mask), rates)
        return select.prune(scores, m, rate, scope=scope, prunable=flags, min_keep=min_keep)

    return lax.fori_loop(0, rounds_, one_round, mask)


def synflow_prune(
    apply_fn: ApplyFn,
    params: Params,
    mask: Mask,
    input_shape: Sequence[int],
    *,
    density: ArrayLike | schedules.Schedule,
    rounds: ArrayLike = 100,
    scope: select.Scope = "global",
    prunable: Prunable = None,
    min_keep: int = 0,
    state: PyTree | None = None,
    float64: bool = False,
) -> Mask:
    r"""SynFlow pruning: :func:`iterative_prune` with :func:`synflow` scores (global, 100 rounds).

    Tanaka et al. prune globally in :math:`n = 100` rounds to density :math:`\rho =
    10^{-\text{compression}}`, re-scoring the masked net each round: a layer that loses weights
    gets higher scores per surviving weight (the flow through it is conserved), which is what
    keeps it from being emptied (*layer collapse*) at extreme compression.

    Args:
      apply_fn, input_shape, state, float64: as :func:`synflow`.
      params, mask, density, rounds, scope, prunable, min_keep: as :func:`iterative_prune`.

    Returns:
      The new bool mask, exactly at ``density`` (of the prunable weights) when ``min_keep`` does
      not intervene.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import masks, saliency
      >>> params = {"w1": jnp.sin(jnp.arange(64.0)).reshape(8, 8),
      ...           "w2": jnp.cos(jnp.arange(16.0)).reshape(8, 2)}
      >>> m = saliency.synflow_prune(lambda p, x: x @ p["w1"] @ p["w2"], params,
      ...                            masks.ones(params), (8,), density=0.1, rounds=10)
      >>> int(masks.count(m)), [int(m[k].sum()) > 0 for k in ("w1", "w2")]  # no layer collapses
      (8, [True, True])
    """
    _checks.check_apply_fn(apply_fn)
    shape = _check_input_shape(input_shape)

    def score_fn(p: Params) -> Scores:
        return synflow(apply_fn, p, shape, state=state, float64=float64)

    return iterative_prune(
        score_fn,
        params,
        mask,
        density=density,
        rounds=rounds,
        scope=scope,
        prunable=prunable,
        min_keep=min_keep,
    )


# ----------------------------------------------------------------------------- registry


def _magnitude(apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None) -> Scores:
    del apply_fn, batch, key
    return criteria.score("large_init", params)


def _random(apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None) -> Scores:
    del apply_fn, batch
    return criteria.score("random", params, key=key)


def _obd(
    apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None, **options: Any
) -> Scores:
    return obd(apply_fn, params, batch, key=key, **options)


def _snip(apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None) -> Scores:
    del key
    return snip(apply_fn, params, batch)


def _grasp(
    apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None, **options: Any
) -> Scores:
    del key
    return grasp(apply_fn, params, batch, **options)


def _taylor(
    apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None, **options: Any
) -> Scores:
    del key
    return taylor(apply_fn, params, batch, **options)


def _synflow_by_name(
    apply_fn: ApplyFn, params: Params, batch: Any, *, key: Key | None, **options: Any
) -> Scores:
    del key
    if "input_shape" not in options:
        if batch is None:
            raise ValueError(
                "method 'synflow' needs input_shape=… (or a batch, whose x gives the shape; its "
                "values are never read)."
            )
        options["input_shape"] = tuple(jnp.shape(batch[0]))[1:]
    return synflow(apply_fn, params, **options)


# (name, function, needs a batch, needs a key, accepted options)
_TABLE: tuple[tuple[str, Callable[..., Scores], bool, bool, frozenset[str]], ...] = (
    ("obd", _obd, True, False, frozenset({"method", "probes", "chunk_size", "exact_limit"})),
    ("snip", _snip, True, False, frozenset()),
    ("grasp", _grasp, True, False, frozenset({"temperature", "prunable"})),
    ("taylor", _taylor, True, False, frozenset({"microbatches"})),
    ("synflow", _synflow_by_name, False, False, frozenset({"input_shape", "state", "float64"})),
    ("magnitude", _magnitude, False, False, frozenset()),
    ("random", _random, False, True, frozenset()),
)

METHODS: Mapping[str, Callable[..., Scores]] = types.MappingProxyType(
    {name: fn for name, fn, *_ in _TABLE}
)
"""Read-only registry: method name → ``fn(apply_fn, params, batch, *, key, **options)``."""

_SPEC: Mapping[str, tuple[bool, bool, frozenset[str]]] = types.MappingProxyType(
    {name: (b, k, o) for name, _, b, k, o in _TABLE}
)


def names() -> tuple[str, ...]:
    """All saliency method names, for studies that loop over methods.

    Example:
      >>> from jaxprune import saliency
      >>> saliency.names()
      ('obd', 'snip', 'grasp', 'taylor', 'synflow', 'magnitude', 'random')
    """
    return tuple(METHODS)


def score(
    name: str,
    apply_fn: ApplyFn,
    params: Params,
    batch: Batch | None = None,
    *,
    key: Key | None = None,
    **options: Any,
) -> Scores:
    """Score every weight by saliency method ``name``; higher = keep.

    ``synflow``, ``magnitude`` and ``random`` read no data (``batch`` may be ``None``; ``synflow``
    takes its ``input_shape`` from ``batch``'s x unless given); ``random`` needs ``key`` and
    draws leaf ``i`` from ``fold_in(key, i)`` as :func:`jaxprune.criteria.score` does; ``obd``
    needs ``key`` with ``method="hutchinson"``. A ``key`` given to a method that draws nothing is
    checked and ignored, so one call shape serves every method.

    Args:
      name: one of :func:`names` (static).
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: the params pytree.
      batch: ``(x, y)`` for the data-driven methods.
      key: PRNG key, keyword-only.
      **options: the method's keyword options (static unless noted there): ``obd``: ``method``,
        ``probes``, ``chunk_size``, ``exact_limit``; ``grasp``: ``temperature``, ``prunable``;
        ``taylor``: ``microbatches``; ``synflow``: ``input_shape``, ``state``, ``float64``.

    Returns:
      float32 scores like ``params``.

    Raises:
      ValueError: unknown ``name`` or option; a needed ``batch`` or ``key`` missing; bad shapes.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import saliency
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> params = {"w": jnp.array([[2.0, -1.0]])}
      >>> saliency.score("magnitude", apply_fn, params)["w"]
      Array([[2., 1.]], dtype=float32)
      >>> saliency.score("synflow", apply_fn, params, input_shape=(1,))["w"]
      Array([[2., 1.]], dtype=float32)
    """
    _checks.check_choice(name, METHODS, name="saliency method")
    needs_batch, needs_key, accepted = _SPEC[name]
    unknown = sorted(set(options) - accepted)
    if unknown:
        takes = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"method {name!r} takes no option(s) {unknown}; its options: {takes}.")
    if needs_batch:
        _checks.require(batch, name="batch", why=f"by saliency method {name!r}")
    if needs_key:
        _checks.require(key, name="key", why=f"by saliency method {name!r}")
    _checks.check_key(key)
    _checks.check_apply_fn(apply_fn)
    _checks.check_params(params)
    return METHODS[name](apply_fn, params, batch, key=key, **options)
