"""Seconds to prune a whole small language model per method, and 2:4 sparse matmul on a GPU: JSON.

Run ``python -m benchmarks.llm_pruning`` (``make bench-llm``; a few minutes on 2 CPU cores;
``--smoke`` for toy sizes, ``--out PATH`` to also write the JSON to a file).

**Pruning time.** For each model shape — the ``quick`` and ``default`` presets of
``experiments/llm_pruning`` (dim 64 / depth 2 / context 64 with 32 calibration windows, dim 128 /
depth 4 / context 128 with 128) —, each method of :data:`jaxprune.posttrain.METHODS` and each
target (50% unstructured, 2:4): :func:`jaxprune.posttrain.prune` of the whole model (every
linear layer of every block, calibration propagated block by block) timed from the call to its
params ready (``block_until_ready``). ``first_s`` is the first call at that shape and target
(it compiles each layer shape's programs); ``warm_s`` the median of ``reps`` calls after it.
The model is freshly initialised (the time does not depend on the trained values) and the
calibration windows are real ``pydoc`` text.

**2:4 matmul (GPU only).** ``jax.experimental.sparse.nm`` (``nm_pack`` / ``nm_spmm``, CUDA
sm80+, 16-bit inputs) against a dense ``bfloat16`` matmul at the model's layer shapes. Skipped
with a note on a CPU; where the installed jax has no such module (jax 0.10.2 has none) the JSON
says so.

``machine`` holds the platform, jax version, backend, device kind and the load average before
and after (the timings of a shared machine are only as good as its load).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune import data, models, posttrain


@dataclasses.dataclass(frozen=True)
class Shape:
    """One model shape: the transformer's size, its context and the calibration windows."""

    name: str
    dim: int
    depth: int
    heads: int
    context: int
    calibration: int


@dataclasses.dataclass(frozen=True)
class Config:
    """What :func:`run` measures."""

    shapes: tuple[Shape, ...] = (
        Shape("quick", 64, 2, 4, 64, 32),
        Shape("default", 128, 4, 4, 128, 128),
    )
    targets: tuple[str, ...] = ("0.5", "2:4")
    reps: int = 3
    matmul_tokens: int = 4096
    matmul_reps: int = 20


SMOKE = Config(shapes=(Shape("smoke", 16, 1, 2, 16, 4),), reps=1, matmul_tokens=64, matmul_reps=2)

NM_MODULE = "jax.experimental.sparse.nm"


def _target(text: str) -> dict[str, Any]:
    return {"nm": text} if ":" in text else {"sparsity": float(text)}


def _build(shape: Shape, vocab: int) -> Any:
    return models.build(
        "transformer", input_shape=(shape.context,), num_classes=vocab, seed=0, dim=shape.dim,
        depth=shape.depth, heads=shape.heads,
    )  # fmt: skip


def _prune_seconds(model: Any, calib: Any, method: str, target: str) -> float:
    t0 = time.perf_counter()
    out = posttrain.prune(model, calib, method=method, **_target(target))
    jax.block_until_ready(out.params)
    return time.perf_counter() - t0


def prune_times(shape: Shape, cfg: Config) -> dict[str, Any]:
    """Pruning seconds of every method and target at one shape (see the module docstring)."""
    ds = data.load_text("pydoc", context=shape.context)
    model = _build(shape, ds.num_classes)
    calib = posttrain.calibration_windows(ds.train[0], shape.calibration, seed=0)
    out: dict[str, Any] = {
        "dim": shape.dim, "depth": shape.depth, "heads": shape.heads, "context": shape.context,
        "vocab": ds.num_classes, "calibration_windows": shape.calibration,
        "calibration_tokens": shape.calibration * shape.context,
        "params": models.param_count(models.functional(model)[1]), "seconds": {},
    }  # fmt: skip
    for method in posttrain.METHODS:
        for target in cfg.targets:
            print(f"  {shape.name}: {method} {target}", file=sys.stderr)
            first = _prune_seconds(model, calib, method, target)
            warm = [_prune_seconds(model, calib, method, target) for _ in range(cfg.reps)]
            out["seconds"].setdefault(method, {})[target] = {
                "first_s": first,
                "warm_s": statistics.median(warm),
            }
    return out


def layer_shapes(shape: Shape) -> list[tuple[int, int]]:
    """The distinct ``(in, out)`` shapes of the linear layers of a block (GELU MLP, ratio 4)."""
    d = shape.dim
    return sorted({(d, d), (d, 4 * d), (4 * d, d)})


def nm_matmul(cfg: Config) -> dict[str, Any]:
    """2:4 sparse against dense matmul at the layer shapes, on a GPU; otherwise why not."""
    try:
        nm = importlib.import_module(NM_MODULE)
    except ImportError as err:
        return {
            "available": False,
            "reason": f"{NM_MODULE} is not in jax {jax.__version__} ({err}); nothing measured",
        }
    if jax.default_backend() != "gpu":
        return {"available": True, "skipped": f"needs a CUDA GPU (backend {jax.default_backend()})"}
    rows = []
    for shape in cfg.shapes:
        for k, n in layer_shapes(shape):
            rows.append(_nm_row(nm, cfg, k, n))
    return {"available": True, "results": rows}


def _nm_row(nm: Any, cfg: Config, k: int, n: int) -> dict[str, Any]:
    """One layer shape: tokens × k inputs times a 2:4-sparse (k, n) kernel, as nm_spmm takes it
    (the sparse operand on the left: the kernel transposed, (n, k) with 2 of every 4 along k)."""
    key = jax.random.key(0)
    w = jax.random.normal(key, (n, k), jnp.bfloat16)
    x = jax.random.normal(jax.random.fold_in(key, 1), (k, cfg.matmul_tokens), jnp.bfloat16)
    groups = jnp.abs(w).reshape(n, k // 4, 4)
    order = jnp.argsort(-groups, axis=-1)
    mask = (jnp.argsort(order, axis=-1) < 2).reshape(n, k)
    values = w[mask].reshape(n, k // 2)
    row: dict[str, Any] = {"in": k, "out": n, "tokens": cfg.matmul_tokens}
    try:
        packed = nm.nm_pack(mask)
        sparse = jax.jit(lambda v, x: nm.nm_spmm(v, x, packed))
        dense = jax.jit(lambda w, x: w @ x)
        row["max_abs_diff"] = float(
            jnp.abs(sparse(values, x).astype(jnp.float32) - dense(w * mask, x)).max()
        )
        row["sparse_ms"] = 1e3 * _median_s(lambda: sparse(values, x), cfg.matmul_reps)
        row["dense_ms"] = 1e3 * _median_s(lambda: dense(w, x), cfg.matmul_reps)
        row["speedup"] = row["dense_ms"] / row["sparse_ms"]
    except Exception as err:  # an experimental API: record what failed, measure the rest
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def _median_s(fn: Any, reps: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(cfg: Config) -> dict[str, Any]:
    """The figures as a dict (see the module docstring)."""
    start, load_start = time.perf_counter(), os.getloadavg()
    pruning = {}
    for shape in cfg.shapes:
        print(shape.name, file=sys.stderr)
        pruning[shape.name] = prune_times(shape, cfg)
    load_after_pruning = os.getloadavg()
    matmul = nm_matmul(cfg)
    device = jax.devices()[0]
    return {
        "config": dataclasses.asdict(cfg),
        "timing": "posttrain.prune of the whole model, call to params ready; first call "
        f"(compiles) and the median of {cfg.reps} warm calls",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device_kind": device.device_kind,
            "loadavg_start": list(load_start),
            "loadavg_after_pruning": list(load_after_pruning),
            "loadavg_end": list(os.getloadavg()),
        },
        "pruning": pruning,
        "nm_matmul": matmul,
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print :func:`run`'s figures as JSON (and write them to ``--out``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a toy model, one rep")
    parser.add_argument("--reps", type=int, default=Config.reps, help="warm calls per figure")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else dataclasses.replace(Config(), reps=args.reps)
    text = json.dumps(run(cfg), indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
