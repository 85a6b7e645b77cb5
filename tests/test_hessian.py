"""Hessian diagonals against numbers computed another way: jax.hessian, float64 finite differences
of a hand-written gradient and a hand-written Gauss-Newton matrix (the tanh MLP of mlp_reference)."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from mlp_reference import (
    fd_hessian_diagonal,
    mlp_apply,
    mlp_batch,
    mlp_params,
    np_gauss_newton_diag,
)

from jaxprune import hessian


def mlp_loss(x: np.ndarray, y: np.ndarray) -> Any:
    """The mean cross-entropy of the MLP on ``(x, y)``, as a function of the params."""

    def loss(p: Any) -> jax.Array:
        logp = jax.nn.log_softmax(mlp_apply(p, jnp.asarray(x)))
        return -jnp.mean(logp[jnp.arange(len(y)), y])

    return loss


def test_exact_diagonal_equals_jax_hessian_and_finite_differences() -> None:
    p, (x, y) = mlp_params(1), mlp_batch(1)
    loss = mlp_loss(x, y)
    flat, unravel = ravel_pytree(p)
    want = jnp.diag(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat))
    # chunks of 7 do not divide 43 parameters: the last chunk is ragged
    got = jax.jit(lambda q: hessian.hessian_diagonal(loss, q, chunk_size=7))(p)
    chex.assert_trees_all_close(got, unravel(want), rtol=1e-4, atol=1e-6)
    # and against float64 finite differences of the hand-written gradient
    np.testing.assert_allclose(
        ravel_pytree(got)[0], fd_hessian_diagonal(p, x, y), rtol=1e-3, atol=1e-6
    )


def test_hutchinson_converges_to_the_exact_diagonal() -> None:
    p, (x, y) = mlp_params(2), mlp_batch(2)
    diagonal = jax.jit(
        hessian.hessian_diagonal, static_argnums=0, static_argnames=("method", "probes")
    )
    loss = mlp_loss(x, y)
    exact = np.asarray(ravel_pytree(diagonal(loss, p))[0])

    def error(n: int, seed: int) -> float:
        est = diagonal(loss, p, method="hutchinson", probes=n, key=jax.random.key(seed))
        return float(np.linalg.norm(np.asarray(ravel_pytree(est)[0]) - exact))

    few = np.mean([error(4, s) for s in range(3)])
    many = error(4000, 0)
    assert many < 0.1 * few, (many, few)  # error ~ 1/sqrt(probes): sqrt(4/4000) ≈ 0.03
    assert many < 0.05 * np.linalg.norm(exact), (many, np.linalg.norm(exact))


def test_gauss_newton_diagonal_matches_numpy_and_is_exact_for_linear_models() -> None:
    p = mlp_params(3)
    x, y = mlp_batch(3, n=7)
    got = hessian.gauss_newton_diagonal(mlp_apply, p, (x, y), chunk_size=3)  # 7 = 3 + 3 + 1
    np.testing.assert_allclose(
        ravel_pytree(got)[0], np_gauss_newton_diag(p, x), rtol=1e-4, atol=1e-7
    )

    # Softmax regression is linear in its params: Gauss-Newton = the Hessian (jax.hessian).
    def linear(q: Any, xb: jax.Array) -> jax.Array:
        return xb @ q["w"] + q["b"][None]

    lin = {"w": p["l1"]["kernel"], "b": p["l1"]["bias"]}
    yl = np.arange(7) % 5
    flat, unravel = ravel_pytree(jax.tree.map(jnp.asarray, lin))

    def loss(v: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(linear(unravel(v), x))
        return -jnp.mean(logp[jnp.arange(7), yl])

    gn = hessian.gauss_newton_diagonal(linear, lin, (x, yl))
    chex.assert_trees_all_close(
        gn, unravel(jnp.diag(jax.hessian(loss)(flat))), rtol=1e-4, atol=1e-7
    )


def test_errors_name_the_setting() -> None:
    p, (x, y) = mlp_params(0), mlp_batch(0)
    loss = mlp_loss(x, y)
    with pytest.raises(ValueError, match=r"43 > exact_limit=40.*method='hutchinson'"):
        hessian.hessian_diagonal(loss, p, exact_limit=40)
    with pytest.raises(ValueError, match="key is required by method='hutchinson'"):
        hessian.hessian_diagonal(loss, p, method="hutchinson")
    with pytest.raises(ValueError, match="unknown method 'diag'"):
        hessian.hessian_diagonal(loss, p, method="diag")  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"loss_fn\(params\) must return a scalar, got shape \[2\]"
    ):
        hessian.hessian_diagonal(lambda q: q["w"] ** 2, {"w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"params\['w'\] must be a float array"):
        hessian.hessian_diagonal(lambda q: jnp.sum(q["w"]), {"w": np.ones(2, np.int32)})
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        hessian.gauss_newton_diagonal(mlp_apply, p, (x, y), chunk_size=0)
    with pytest.raises(ValueError, match=r"batch\[1\] \(y\) must have shape \[6\]"):
        hessian.gauss_newton_diagonal(mlp_apply, p, (x, y[:5]))
