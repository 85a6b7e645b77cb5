"""A tiny tanh MLP and its float64 numpy references (loss, gradient, Hessian diagonal by finite
differences, Gauss-Newton diagonal), shared by the saliency and Hessian tests."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def mlp_params(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> np.ndarray:
        return (0.7 * rng.normal(size=shape)).astype(np.float32)

    return {
        "l1": {"kernel": draw(4, 5), "bias": draw(5)},
        "l2": {"kernel": draw(5, 3), "bias": draw(3)},
    }


def mlp_apply(p: Any, x: jax.Array) -> jax.Array:
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"][None])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"][None]


def mlp_batch(seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + seed)
    return rng.normal(size=(n, 4)).astype(np.float32), (np.arange(n) % 3).astype(np.int32)


def np_grad(p: Any, x: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> Any:
    """Float64 gradient of mean CE(mlp(x) / T, y), by a hand-written backward pass."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    x = np.asarray(x, np.float64)
    h = np.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    z = (h @ p["l2"]["kernel"] + p["l2"]["bias"]) / temperature
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    dz = (prob - np.eye(z.shape[1])[y]) / len(y) / temperature
    da = (dz @ p["l2"]["kernel"].T) * (1.0 - h**2)
    return {
        "l1": {"kernel": x.T @ da, "bias": da.sum(0)},
        "l2": {"kernel": h.T @ dz, "bias": dz.sum(0)},
    }


def np_loss(p: Any, x: np.ndarray, y: np.ndarray) -> float:
    h = np.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    z = h @ p["l2"]["kernel"] + p["l2"]["bias"]
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))


def np_ravel(tree: Any) -> tuple[np.ndarray, Any]:
    """Float64 numpy ``ravel_pytree`` (jax's returns jax arrays, which the numpy reference avoids)."""
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [np.shape(leaf) for leaf in leaves]
    flat = np.concatenate([np.ravel(np.asarray(leaf, np.float64)) for leaf in leaves])
    cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def unravel(v: np.ndarray) -> Any:
        parts = np.split(np.asarray(v, np.float64), cuts)
        return jax.tree.unflatten(
            treedef, [a.reshape(s) for a, s in zip(parts, shapes, strict=True)]
        )

    return flat, unravel


def f64(tree: Any) -> Any:
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def fd_hessian_diagonal(p: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 Hessian diagonal of the MLP's loss: central differences of the hand-written gradient,
    flattened in ravel_pytree's leaf order."""
    f, unravel = np_ravel(p)
    eps = 1e-5
    return np.array(
        [
            (
                np_ravel(np_grad(unravel(f + eps * e), x, y))[0][q]
                - np_ravel(np_grad(unravel(f - eps * e), x, y))[0][q]
            )
            / (2 * eps)
            for q, e in enumerate(np.eye(f.size))
        ]
    )


def np_gauss_newton_diag(p: Any, x: np.ndarray) -> np.ndarray:
    """Float64 diag of (1/N) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i with J_i from a hand-written
    Jacobian of the tanh MLP's logits, flattened in ravel_pytree's leaf order."""
    q = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    total = 0.0
    for xi in np.asarray(x, np.float64):
        a = xi @ q["l1"]["kernel"] + q["l1"]["bias"]
        h = np.tanh(a)
        z = h @ q["l2"]["kernel"] + q["l2"]["bias"]
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        classes = z.shape[0]
        rows = []
        for k in range(classes):  # ∂z_k/∂θ, leaf by leaf (l1.bias, l1.kernel, l2.bias, l2.kernel)
            dh = q["l2"]["kernel"][:, k] * (1 - h**2)
            d_l2k = np.zeros_like(q["l2"]["kernel"])
            d_l2k[:, k] = h
            d_l2b = np.eye(classes)[k]
            rows.append(np.concatenate([dh, np.outer(xi, dh).ravel(), d_l2b, d_l2k.ravel()]))
        jac = np.stack(rows)
        total = total + np.diag(jac.T @ (np.diag(prob) - np.outer(prob, prob)) @ jac)
    return total / len(x)
