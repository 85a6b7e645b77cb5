"""Boundary validation: every failure is a ``ValueError`` that names the argument and shows evidence.

Static checks (tree structure, shapes, dtypes, names) run at trace time, so they cost nothing under
``jit``. Value checks (rates in range, NaN scores) run only on concrete arrays: under ``jit`` a value
is a tracer and cannot be inspected without a host sync, so traced values pass unchecked and the
documented fallback applies (e.g. NaN scores rank lowest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._types import Array, Params, PyTree


def is_traced(x: Any) -> bool:
    """Whether ``x`` is a JAX tracer (inside ``jit``/``vmap``/``grad``), i.e. has no concrete value."""
    return isinstance(x, jax.core.Tracer)


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
    """``[(keystr(path), leaf), ...]`` in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return f"{type(x).__name__} {x!r}"
    return f"{dtype}{list(shape)}"


def check_same_structure(tree: PyTree, ref: PyTree, *, name: str, ref_name: str = "params") -> None:
    """Raise if ``tree`` and ``ref`` do not have the same pytree structure; name the first differing path."""
    if jax.tree.structure(tree) == jax.tree.structure(ref):  # type: ignore[operator]
        return
    got = [p for p, _ in leaves_with_paths(tree)]
    want = [p for p, _ in leaves_with_paths(ref)]
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if first is None:
        first = min(len(got), len(want))
    got_at = got[first] if first < len(got) else "<no more leaves>"
    want_at = want[first] if first < len(want) else "<no more leaves>"
    missing = sorted(set(want) - set(got))[:3]
    extra = sorted(set(got) - set(want))[:3]
    raise ValueError(
        f"{name} must have exactly the structure of {ref_name}: first difference at leaf #{first}: "
        f"{ref_name} has {want_at}, {name} has {got_at} ({len(want)} vs {len(got)} leaves"
        + (f"; missing from {name}: {missing}" if missing else "")
        + (f"; not in {ref_name}: {extra}" if extra else "")
        + "). Build it from the same params, e.g. jaxprune.masks.ones(params)."
    )


def check_like(tree: PyTree, ref: PyTree, *, name: str, ref_name: str = "params") -> None:
    """Raise unless ``tree`` has ``ref``'s structure and every leaf has the matching leaf's shape."""
    check_same_structure(tree, ref, name=name, ref_name=ref_name)
    for (path, leaf), (_, ref_leaf) in zip(
        leaves_with_paths(tree), leaves_with_paths(ref), strict=True
    ):
        if np.shape(leaf) != np.shape(ref_leaf):
            raise ValueError(
                f"{name}{path} has shape {list(np.shape(leaf))} but {ref_name}{path} has shape "
                f"{list(np.shape(ref_leaf))}; every leaf of {name} must match {ref_name}'s shape."
            )


def check_mask(mask: PyTree, params: PyTree, *, name: str = "mask") -> None:
    """Raise unless ``mask`` mirrors ``params`` exactly with bool leaves (invariant 1)."""
    check_like(mask, params, name=name)
    for path, leaf in leaves_with_paths(mask):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or np.dtype(dtype) != np.bool_:
            raise ValueError(
                f"{name}{path} must be a bool array, got {_describe(leaf)}. Masks hold True = kept; "
                f"convert with jax.tree.map(lambda m: m.astype(bool), {name}) if it is 0/1."
            )


def check_in_range(
    value: Any,
    *,
    name: str,
    low: float = 0.0,
    high: float = 1.0,
    high_inclusive: bool = False,
) -> None:
    """Raise if a concrete scalar (or every leaf of a pytree of them) is outside ``[low, high)``.

    Traced values are not checked (see module docstring).
    """
    closing = "]" if high_inclusive else ")"
    check_real(value, name=name)
    for path, leaf in leaves_with_paths(value):
        if is_traced(leaf):
            continue
        arr = np.asarray(leaf, dtype=np.float64)
        bad = np.isnan(arr) | (arr < low) | ((arr > high) if high_inclusive else (arr >= high))
        if bad.any():
            shown = arr[bad].ravel()[:3].tolist()
            raise ValueError(
                f"{name}{path} must be in [{low}, {high}{closing}, got {shown}"
                + (f" (of shape {list(arr.shape)})" if arr.ndim else "")
                + "."
            )


def check_no_nan(tree: PyTree, *, name: str) -> None:
    """Raise if a concrete leaf of ``tree`` holds a NaN; names the first such path and the count."""
    for path, leaf in leaves_with_paths(tree):
        if is_traced(leaf):
            continue
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            raise ValueError(
                f"{name}{path} holds {int(np.isnan(arr).sum())} NaN value(s) of {arr.size}; scores "
                "must be numbers (did training diverge, or a gradient come back NaN?)."
            )


def check_real(value: Any, *, name: str) -> None:
    """Raise unless every leaf of ``value`` is a real number or an int/float array (static check).

    A string such as ``"0.2"`` or a bool would otherwise be converted silently, or fail deep
    inside JAX with a ``TypeError``.
    """
    for path, leaf in leaves_with_paths(value):
        dtype = None if isinstance(leaf, str | bytes) else getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, int | float) and not isinstance(leaf, bool):
            continue
        if dtype is None or not (
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        ):
            raise ValueError(
                f"{name}{path} must be a real number (an int or float, or an array of them), "
                f"got {_describe(leaf)}."
            )


def check_finite(tree: PyTree, *, name: str) -> None:
    """Raise if a concrete float leaf of ``tree`` holds NaN or ±inf; names the first such path.

    Read on the host (no copy on a CPU; one on an accelerator): a device reduction would compile
    a program per leaf shape, costlier than the check. Traced leaves are not checked (see module
    docstring).
    """
    found = []
    for path, leaf in leaves_with_paths(tree):
        if not is_traced(leaf) and jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            found.append((path, leaf))
    for (path, _), arr in zip(found, jax.device_get([leaf for _, leaf in found]), strict=True):
        arr = np.asarray(arr)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name}{path} holds {int(np.isnan(arr).sum())} NaN and {int(np.isinf(arr).sum())} "
                f"infinite value(s) of {arr.size}; weights must be finite (did a training run "
                "diverge?)."
            )


def check_choice(value: str, choices: Iterable[str] | Mapping[str, Any], *, name: str) -> None:
    """Raise if ``value`` is not one of ``choices``; the message lists them all."""
    options = sorted(choices)
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(options)}.")


def require(value: Any, *, name: str, why: str) -> None:
    """Raise if a needed optional argument is ``None``."""
    if value is None:
        raise ValueError(f"{name} is required {why}, got None.")


def _check_typed_key(key: Any, *, name: str) -> None:
    dtype = getattr(key, "dtype", None)
    if dtype is None or not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"{name} must be a typed PRNG key from jax.random.key(seed), got "
            f"{getattr(dtype, 'name', type(key).__name__)}{list(np.shape(key))}; wrap raw uint32 "
            f"key data with jax.random.wrap_key_data({name})."
        )


def check_key(key: Any) -> None:
    """Raise unless ``key`` is ``None`` or one typed PRNG key (``jax.random.key``), shape ``[]``."""
    if key is None:
        return
    _check_typed_key(key, name="key")
    if np.shape(key) != ():
        raise ValueError(
            f"key must be a single key (shape []), got shape {list(np.shape(key))}; for many "
            "tickets, jax.vmap over the stacked keys."
        )


def check_keys(keys: Any, *, name: str, count: int | None) -> None:
    """Raise unless ``keys`` is one typed PRNG key (shape ``[]``) or, when ``count`` is given,
    one per ticket (shape ``[count]``); ``None`` is refused."""
    _check_typed_key(keys, name=name)
    shape = np.shape(keys)
    if shape != () and (count is None or shape != (count,)):
        allowed = (
            "[]" if count is None else f"[] (one for every ticket) or [{count}] (one per ticket)"
        )
        raise ValueError(f"{name} must have shape {allowed}, got {list(shape)}.")


# --- the model contract (apply_fn, params, batch) of the model-aware functions: hessian, saliency


def check_apply_fn(apply_fn: Any) -> None:
    if not callable(apply_fn):
        raise ValueError(
            f"apply_fn must be a callable apply_fn(params, x) -> logits, got "
            f"{type(apply_fn).__name__}; for a Flax NNX model use jaxprune.models.functional(model)[0]."
        )


def check_params(params: Params, *, name: str = "params") -> None:
    leaves = leaves_with_paths(params)
    if not leaves:
        raise ValueError(f"{name} has no leaves; pass the model's params pytree.")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"{name}{path} must be a float array, got "
                f"{getattr(dtype, 'name', type(leaf).__name__)}{list(np.shape(leaf))}."
            )


def check_batch(batch: Any, *, name: str = "batch") -> tuple[Array, Array]:
    """``(x, y)`` with a shared leading axis and integer labels ``[B]``; returns them as arrays."""
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        raise ValueError(
            f"{name} must be a pair (x, y) of inputs and integer labels, got "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
            + "."
        )
    x, y = jnp.asarray(batch[0]), jnp.asarray(batch[1])
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{name}[0] (x) must have a non-empty leading batch axis, got shape {list(x.shape)}."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"{name}[1] (y) must hold integer class labels, got {y.dtype.name}{list(y.shape)}; "
            "for one-hot labels pass y.argmax(-1)."
        )
    if y.shape != (x.shape[0],):
        raise ValueError(
            f"{name}[1] (y) must have shape [{x.shape[0]}] (one label per example of x), got "
            f"{list(y.shape)}."
        )
    return x, y


def check_positive_int(value: Any, *, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int (static), got {value!r}.")


def check_nonnegative_int(value: Any, *, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (static), got {value!r}.")


def as_float32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), tree)


def model_logits(apply_fn: Callable[..., Array], params: Params, x: Array) -> Array:
    logits = apply_fn(params, x)
    shape = tuple(jnp.shape(logits))
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(
            f"apply_fn(params, x) must return logits of shape [batch, classes] = "
            f"[{x.shape[0]}, C] for x of shape {list(x.shape)}, got {list(shape)}."
        )
    return logits


def prepare_model_inputs(
    apply_fn: Callable[..., Array], params: Params, batch: Any
) -> tuple[Params, Array, Array]:
    check_apply_fn(apply_fn)
    check_params(params)
    x, y = check_batch(batch)
    return as_float32(params), x, y
