r"""Hessian diagonals of a loss, for second-order pruning: exact, Hutchinson, Gauss-Newton.

Optimal Brain Damage (:func:`jaxprune.saliency.obd`) needs the diagonal
:math:`h_{qq} = \partial^2 L / \partial\theta_q^2` of the Hessian :math:`H = \nabla^2_\theta L`
of a loss — one entry per weight — without forming :math:`H` (:math:`n \times n` for :math:`n`
parameters). Three ways, from exact and costly to approximate and cheap:

* :func:`hessian_diagonal` ``method="exact"``: :math:`h_{qq} = (H e_q)_q`, one forward-over-reverse
  Hessian-vector product (HVP) per parameter — :math:`n` HVPs, so for small models (at most
  :data:`EXACT_LIMIT` parameters unless told otherwise).
* :func:`hessian_diagonal` ``method="hutchinson"``: the unbiased estimate

  .. math::  \hat h = \frac1P \sum_{p=1}^{P} z_p \odot H z_p,
             \qquad z_p \in \{-1, +1\}^n \text{ Rademacher},

  :math:`P` HVPs for any model size; the error of each entry falls as :math:`1/\sqrt P`.
* :func:`gauss_newton_diagonal`: for the mean softmax cross-entropy of a model
  ``apply_fn(params, x) -> logits`` on a batch, the diagonal of the Gauss-Newton matrix

  .. math::  G_{qq} = \frac1N \sum_{i=1}^{N} \Big[\sum_k p_{ik} J_{ikq}^2
             - \Big(\sum_k p_{ik} J_{ikq}\Big)^2\Big],

  :math:`J_i` the Jacobian of example :math:`i`'s logits, :math:`p_i` their softmax: the
  Hessian without the network's second derivatives (LeCun et al. 1990's approximation), never
  negative, one Jacobian per example and no noise.

:func:`hessian_diagonal` takes any scalar ``loss_fn(params)``; :func:`gauss_newton_diagonal`
takes the model and a batch ``(x, y)``, the contract of :mod:`jaxprune.saliency`. Params are cast
to float32 and the diagonals are float32 pytrees like ``params``. Methods and sizes (``probes``,
``chunk_size``, ``exact_limit``) are static; params, batches and keys are arrays, so every
function runs under ``jit`` and ``vmap``.

Example — a quadratic whose Hessian has diagonal :math:`2a`, and softmax regression, where the
Gauss-Newton matrix is the Hessian (:math:`p(1 - p)` per logit):
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import hessian
  >>> a = jnp.array([1.0, 2.0, 3.0])
  >>> hessian.hessian_diagonal(lambda p: jnp.sum(a * p["w"] ** 2), {"w": jnp.ones(3)})["w"]
  Array([2., 4., 6.], dtype=float32)
  >>> apply_fn = lambda p, x: x @ p["w"]
  >>> batch = (jnp.ones((2, 1)), jnp.array([0, 1]))
  >>> hessian.gauss_newton_diagonal(apply_fn, {"w": jnp.array([[1.0, -1.0]])}, batch)["w"]
  Array([[0.104993..., 0.104993...]], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from jaxprune import _checks
from jaxprune._types import Array, ArrayLike, Key, Params, PyTree

__all__ = [
    "EXACT_LIMIT",
    "HESSIAN_METHODS",
    "ApplyFn",
    "Batch",
    "gauss_newton_diagonal",
    "hessian_diagonal",
]

ApplyFn: TypeAlias = Callable[..., Array]
"""``apply_fn(params, x) -> logits`` of shape ``[batch, classes]`` (pure, e.g.
:func:`jaxprune.models.functional`)."""
Batch: TypeAlias = tuple[ArrayLike, ArrayLike]
"""``(x, y)``: inputs with a leading batch axis and integer class labels of shape ``[batch]``."""

EXACT_LIMIT = 20_000
"""Default ``exact_limit`` of :func:`hessian_diagonal`: the exact diagonal costs one
Hessian-vector product per parameter, so above this many parameters it refuses."""

HESSIAN_METHODS = ("exact", "hutchinson")
"""The two methods of :func:`hessian_diagonal`."""


# ----------------------------------------------------------------------------- Hessian diagonal


def _scalar_loss(loss_fn: Callable[[Params], Array]) -> Callable[[Params], Array]:
    def checked(params: Params) -> Array:
        out = loss_fn(params)
        if jnp.shape(out) != ():
            raise ValueError(
                f"loss_fn(params) must return a scalar, got shape {list(jnp.shape(out))}; "
                "reduce it, e.g. with jnp.mean."
            )
        return out

    return checked


def hessian_diagonal(
    loss_fn: Callable[[Params], Array],
    params: Params,
    *,
    method: Literal["exact", "hutchinson"] = "exact",
    probes: int = 100,
    key: Key | None = None,
    chunk_size: int = 128,
    exact_limit: int = EXACT_LIMIT,
) -> PyTree:
    r"""The diagonal :math:`h_{qq} = \partial^2 L / \partial\theta_q^2` of the Hessian of ``loss_fn``.

    ``exact``: :math:`h_{qq} = (H e_q)_q`, one forward-over-reverse Hessian-vector product
    (``jax.linearize`` of ``jax.grad``, linearised once) per parameter :math:`q`, ``chunk_size``
    of them vmapped at a time. It costs :math:`n` HVPs for :math:`n` parameters, so it is for
    small models: above ``exact_limit`` parameters it raises.

    ``hutchinson``: the unbiased estimate (Bekas et al. 2007)

    .. math::  \hat h = \frac1P \sum_{p=1}^{P} z_p \odot H z_p,
               \qquad z_p \in \{-1, +1\}^n \text{ Rademacher},

    with :math:`P` = ``probes`` drawn from ``key``; its error per entry falls as
    :math:`\sqrt{\sum_{j \ne q} h_{qj}^2 / P}`. Probes are summed in chunks of ``chunk_size``
    (memory ``chunk_size`` × n).

    Args:
      loss_fn: pure ``loss_fn(params) -> scalar``.
      params: a pytree of float arrays.
      method: ``"exact"`` or ``"hutchinson"`` (static).
      probes: number of Rademacher probes for ``hutchinson`` (static).
      key: PRNG key (``jax.random.key``); required by ``hutchinson``.
      chunk_size: HVPs evaluated together (static); trades memory for speed.
      exact_limit: the most parameters ``exact`` accepts (static).

    Returns:
      A float32 pytree like ``params``: the diagonal, leaf by leaf.

    Raises:
      ValueError: unknown ``method``; ``exact`` on more than ``exact_limit`` parameters;
        ``hutchinson`` without ``key``; a non-scalar loss; non-float params.

    Example — the Hessian of :math:`\sum_i a_i w_i^2 + w_0 w_1` has diagonal :math:`2a`:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import hessian
      >>> a = jnp.array([1.0, 2.0, 3.0])
      >>> loss = lambda p: jnp.sum(a * p["w"] ** 2) + p["w"][0] * p["w"][1]
      >>> hessian.hessian_diagonal(loss, {"w": jnp.ones(3)})["w"]
      Array([2., 4., 6.], dtype=float32)
      >>> est = hessian.hessian_diagonal(loss, {"w": jnp.ones(3)}, method="hutchinson",
      ...                                 probes=64, key=jax.random.key(0))
      >>> bool(jnp.allclose(est["w"], 2 * a, atol=0.5))
      True
    """
    _checks.check_choice(method, HESSIAN_METHODS, name="method")
    _checks.check_params(params)
    _checks.check_positive_int(chunk_size, name="chunk_size")
    _checks.check_key(key)
    flat, unravel = ravel_pytree(_checks.as_float32(params))
    n = flat.shape[0]
    loss = _scalar_loss(loss_fn)

    def flat_grad(v: Array) -> Array:
        return ravel_pytree(jax.grad(loss)(unravel(v)))[0]

    if method == "exact":
        _checks.check_positive_int(exact_limit, name="exact_limit")
        if n > exact_limit:
            raise ValueError(
                f"hessian_diagonal(method='exact') needs one Hessian-vector product per "
                f"parameter: params have {n} > exact_limit={exact_limit}. Use "
                "method='hutchinson' (probes=, key=) for a model this size, or raise "
                "exact_limit if you can afford it."
            )
        _, hvp = jax.linearize(flat_grad, flat)

        def column_entry(q: Array) -> Array:  # (H e_q)_q
            return hvp(jax.nn.one_hot(q, n, dtype=flat.dtype))[q]

        diag = lax.map(column_entry, jnp.arange(n), batch_size=min(chunk_size, n))
        return unravel(diag)

    _checks.check_positive_int(probes, name="probes")
    _checks.require(key, name="key", why="by method='hutchinson' (it draws the probes)")
    assert key is not None
    _, hvp = jax.linearize(flat_grad, flat)
    chunk = min(chunk_size, probes)
    n_chunks = -(-probes // chunk)
    keys = jax.random.split(key, n_chunks * chunk).reshape(n_chunks, chunk)
    # Probes past `probes` (padding of the last chunk) get weight 0.
    weights = (jnp.arange(n_chunks * chunk) < probes).astype(flat.dtype).reshape(n_chunks, chunk)

    def one(k: Key) -> Array:
        z = jax.random.rademacher(k, (n,), jnp.int32).astype(flat.dtype)
        return z * hvp(z)

    def body(total: Array, chunk_in: tuple[Key, Array]) -> tuple[Array, None]:
        ks, w = chunk_in
        return total + jnp.sum(jax.vmap(one)(ks) * w[:, None], axis=0), None

    total, _ = lax.scan(body, jnp.zeros_like(flat), (keys, weights))
    return unravel(total / probes)


def gauss_newton_diagonal(
    apply_fn: ApplyFn, params: Params, batch: Batch, *, chunk_size: int = 64
) -> PyTree:
    r"""Diagonal of the Gauss-Newton matrix of the mean softmax cross-entropy on ``batch``.

    With logits :math:`z_i = f(\theta, x_i)`, Jacobians :math:`J_i = \partial z_i/\partial\theta`
    and softmax :math:`p_i`, the Hessian of the loss splits into
    :math:`G = \frac1N \sum_i J_i^\top (\mathrm{diag}(p_i) - p_i p_i^\top) J_i` plus a term in the
    second derivatives of :math:`f`. :math:`G` drops that term (LeCun et al. 1990's
    approximation), is positive semi-definite, and for cross-entropy equals the Fisher
    information; its diagonal is a variance under :math:`p_i`:

    .. math::  G_{qq} = \frac1N \sum_i \Big[\sum_k p_{ik} J_{ikq}^2
               - \Big(\sum_k p_{ik} J_{ikq}\Big)^2\Big].

    It costs one Jacobian (:math:`C` backward passes) per example — no probes, no noise, any
    model size; ``chunk_size`` examples are vmapped at a time. Labels are not used. For a model
    linear in its params (softmax regression) it equals the exact Hessian diagonal.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      params: a pytree of float arrays.
      batch: ``(x, y)``; only ``x`` is read (``y`` is checked like every batch).
      chunk_size: examples per vmapped Jacobian (static); trades memory for speed.

    Returns:
      A float32 pytree like ``params``.

    Example — softmax regression, where the Gauss-Newton matrix is the Hessian:
      >>> import jax, jax.numpy as jnp
      >>> from jaxprune import hessian
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> params = {"w": jax.random.normal(jax.random.key(0), (3, 4))}
      >>> batch = (jax.random.normal(jax.random.key(1), (5, 3)), jnp.arange(5) % 4)
      >>> gn = hessian.gauss_newton_diagonal(apply_fn, params, batch)
      >>> def loss(p):
      ...     logp = jax.nn.log_softmax(apply_fn(p, batch[0]))
      ...     return -jnp.mean(logp[jnp.arange(5), batch[1]])
      >>> bool(jnp.allclose(gn["w"], hessian.hessian_diagonal(loss, params)["w"], atol=1e-6))
      True
    """
    p32, x, _ = _checks.prepare_model_inputs(apply_fn, params, batch)
    _checks.check_positive_int(chunk_size, name="chunk_size")
    flat, unravel = ravel_pytree(p32)
    n_examples = x.shape[0]
    chunk = min(chunk_size, n_examples)
    n_chunks = -(-n_examples // chunk)
    pad = n_chunks * chunk - n_examples
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        n_chunks, chunk, *x.shape[1:]
    )
    weights = (jnp.arange(n_chunks * chunk) < n_examples).astype(flat.dtype)
    weights = weights.reshape(n_chunks, chunk)

    def one(xi: Array) -> Array:
        def logits_of(v: Array) -> Array:
            return _checks.model_logits(apply_fn, unravel(v), xi[None])[0].astype(jnp.float32)

        p = jax.nn.softmax(logits_of(flat))
        jac = jax.jacrev(logits_of)(flat)  # [classes, params]
        mean = p @ jac
        return p @ (jac * jac) - mean * mean

    def body(total: Array, chunk_in: tuple[Array, Array]) -> tuple[Array, None]:
        xc, w = chunk_in
        return total + jnp.sum(jax.vmap(one)(xc) * w[:, None], axis=0), None

    total, _ = lax.scan(body, jnp.zeros_like(flat), (xs, weights))
    return unravel(total / n_examples)
