"""Many tickets on whatever accelerator is present: one JSON object on stdout, progress on stderr.

Run ``python -m benchmarks.accelerator`` (``make bench-accelerator``; at most about 5 minutes on an
H200) or ``--smoke`` (every code path at toy sizes, a minute on 2 CPU cores; ``make test-slow``
runs it). Synthetic data of the right shapes, so no dataset is needed. The figures (explained in
``docs/benchmarks.md``):

* ``lenet`` — ticket-steps per second of N = 1, 8, 32, 128, 256 LeNet-300-100 tickets (MNIST
  shape 28×28×1, batch 60, SGD with momentum, random masks at 20% density), vmapped in one scanned
  chunk (:func:`jaxprune.train.train_chunk`), in float32 and in bfloat16 compute (float32 master
  weights: ``make_steps(..., compute_dtype=jnp.bfloat16)``).
* ``resnet20`` — the same for N = 1, 8, 32 ResNet-20 tickets (CIFAR shape 32×32×3, batch 128,
  random crops and flips on the device: :class:`jaxprune.data.Augment`).
* For each: ``speedup`` = ticket-steps/s of N tickets over those of one ticket (N tickets' work
  in the time of ``N / speedup`` single ones), and ``fraction_of_peak`` = the train step's FLOPs
  (XLA's cost analysis of one ticket's step, × N) per second over the device's peak: measured
  (a large matmul in the same dtype) and, for known devices, the vendor's dense figure.
* ``vgg16_inference`` — dense against compacted VGG-16 (Li et al.'s, BN, width 1) inference:
  latency at batch 1, throughput at batch 128, eval mode (:mod:`benchmarks.structured`).

Timings are medians of repetitions after a warm-up (compile) call, each ended with
``jax.block_until_ready``; ``--budget-s`` skips what would run past the budget (listed under
``skipped``) so the command always finishes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import data, masks, models, train

from . import structured
from .engine import random_mask, train_step_flops

__all__ = ["FULL", "SMOKE", "Config", "run"]


# Vendor dense (no sparsity) peaks in TFLOP/s, by jax's device_kind; float32 is the non-tensor-core
# figure. Sources: NVIDIA H100 / H200 datasheets (SXM), A100 datasheet.
VENDOR_PEAK_TFLOPS = {
    "NVIDIA H200": {"float32": 67.0, "bfloat16": 989.0},
    "NVIDIA H100 80GB HBM3": {"float32": 67.0, "bfloat16": 989.0},
    "NVIDIA A100-SXM4-80GB": {"float32": 19.5, "bfloat16": 312.0},
    "NVIDIA A100-SXM4-40GB": {"float32": 19.5, "bfloat16": 312.0},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run.

    Attributes:
      lenet_tickets, resnet_tickets: the N of each model.
      lenet_steps, resnet_steps: steps per timed chunk.
      resnet_width: ResNet-20's width multiplier (1.0 = open_lth's 16-32-64 channels).
      reps: timed repetitions (median reported).
      dtypes: compute dtypes.
      vgg_width, vgg_reps: the VGG-16 inference comparison (``vgg_width=0`` skips it).
      peak_size: side of the square matmul that measures the peak.
      budget_s: skip measurements once this many seconds have passed.
    """

    lenet_tickets: tuple[int, ...] = (1, 8, 32, 128, 256)
    resnet_tickets: tuple[int, ...] = (1, 8, 32)
    lenet_steps: int = 200
    resnet_steps: int = 50
    resnet_width: float = 1.0
    reps: int = 3
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    vgg_width: float = 1.0
    vgg_reps: int = 7
    peak_size: int = 8192
    budget_s: float = 270.0


FULL = Config()
SMOKE = Config(
    lenet_tickets=(1, 2),
    resnet_tickets=(1, 2),
    lenet_steps=4,
    resnet_steps=2,
    resnet_width=0.25,
    reps=1,
    vgg_width=0.125,
    vgg_reps=1,
    peak_size=256,
    budget_s=600.0,
)


def _log(msg: str) -> None:
    print(f"[accelerator {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median_seconds(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(first call's seconds — compile included —, median seconds of ``reps`` later calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _peak_tflops(size: int, dtype: str, reps: int) -> float:
    """Measured TFLOP/s of a jitted ``size``×``size`` matmul in ``dtype``."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    _, sec = _median_seconds(lambda: mm(a, b), max(reps, 3))
    return 2 * size**3 / sec / 1e12


@functools.partial(jax.jit, static_argnames=("steps", "n"))
def _stacked(steps: train.Steps, params: Any, model_state: Any, n: int) -> tuple[Any, Any]:
    """``n`` tickets of the same init under different random masks, stacked."""
    mask = jax.vmap(lambda k: random_mask(params, k))(jax.random.split(jax.random.key(2), n))
    state = jax.vmap(lambda m: steps.init(masks.apply(params, m), model_state))(mask)
    return state, mask


@dataclasses.dataclass(frozen=True)
class _Model:
    name: str
    input_shape: tuple[int, ...]
    batch: int
    examples: int
    augment: data.Augment | None
    width: float = 1.0


def _setup(spec: _Model, dtype: str) -> tuple[train.Steps, Any, Any, jax.Array, jax.Array]:
    """Steps, one ticket's params and model state, and synthetic data of the model's shape."""
    net = models.build(spec.name, input_shape=spec.input_shape, num_classes=10, width=spec.width)
    apply_fn, params, model_state = models.stateful(net)
    compute = None if dtype == "float32" else jnp.dtype(dtype)
    steps = train.make_steps(
        apply_fn,
        train.sgd(0.01, momentum=0.9, weight_decay=1e-4),
        stateful=True,
        compute_dtype=compute,
    )
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (spec.examples, *spec.input_shape), jnp.float32)
    y = jax.random.randint(ky, (spec.examples,), 0, 10)
    return steps, params, model_state, x, y


def _tickets(spec: _Model, counts: tuple[int, ...], steps_per_chunk: int, cfg: Config,
             peaks: dict[str, dict[str, float | None]], deadline: float,
             skipped: list[str]) -> dict[str, Any]:  # fmt: skip
    """Ticket-steps/s of each N and dtype, the speedup over one ticket and the fraction of peak."""
    out: dict[str, Any] = {
        "input_shape": list(spec.input_shape),
        "batch": spec.batch,
        "width": spec.width,
        "augment": None if spec.augment is None else dataclasses.asdict(spec.augment),
        "steps_per_chunk": steps_per_chunk,
    }
    for dtype in cfg.dtypes:
        if time.perf_counter() > deadline:
            skipped.extend(f"{spec.name} {dtype} N={n}" for n in counts)
            continue
        steps, params, model_state, x, y = _setup(spec, dtype)
        mask0 = random_mask(params, jax.random.key(1))
        one = steps.init(masks.apply(params, mask0), model_state)
        per_step = train_step_flops(steps, one, mask0, (x[: spec.batch], y[: spec.batch]))
        rows: dict[str, Any] = {}
        for n in counts:
            if time.perf_counter() > deadline:
                skipped.append(f"{spec.name} {dtype} N={n}")
                continue
            _log(f"{spec.name} {dtype} N={n}")
            state, mask = _stacked(steps, params, model_state, n)
            extra = {} if spec.augment is None else {"augment": spec.augment}
            chunk = functools.partial(
                train.train_chunk, steps, state, mask, None, x, y,
                jax.random.split(jax.random.key(3), n), jnp.int32(0),
                length=steps_per_chunk, batch_size=spec.batch, tickets=True, **extra,
            )  # fmt: skip
            first, sec = _median_seconds(chunk, cfg.reps)
            rate = n * steps_per_chunk / sec
            row: dict[str, Any] = {"ticket_steps_per_s": rate, "first_call_s": first}
            if per_step is not None:
                achieved = per_step * rate / 1e12
                row["tflops"] = achieved
                row["fraction_of_peak"] = {
                    k: (achieved / p if p else None) for k, p in peaks[dtype].items()
                }
            rows[str(n)] = row
        if "1" in rows:
            single = rows["1"]["ticket_steps_per_s"]
            for row in rows.values():
                row["speedup"] = row["ticket_steps_per_s"] / single
        out[dtype] = {"train_step_flops_xla": per_step, "tickets": rows}
    return out


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
    }


def run(cfg: Config = FULL) -> dict[str, Any]:
    """Every figure as a dict (see the module docstring)."""
    start = time.perf_counter()
    deadline = start + cfg.budget_s
    out: dict[str, Any] = {
        "machine": machine(),
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
    }
    kind = jax.devices()[0].device_kind
    peaks: dict[str, dict[str, float | None]] = {}
    for dtype in cfg.dtypes:
        _log(f"matmul peak {dtype}")
        vendor = VENDOR_PEAK_TFLOPS.get(kind, {}).get(dtype)
        peaks[dtype] = {"measured": _peak_tflops(cfg.peak_size, dtype, cfg.reps), "vendor": vendor}
    out["peak_tflops"] = peaks
    skipped: list[str] = []
    lenet = _Model("lenet300_100", (28, 28, 1), 60, 6_000, None)
    resnet = _Model("resnet20", (32, 32, 3), 128, 4_096, data.Augment(4, True), cfg.resnet_width)
    out["lenet"] = _tickets(
        lenet, cfg.lenet_tickets, cfg.lenet_steps, cfg, peaks, deadline, skipped
    )
    out["resnet20"] = _tickets(
        resnet, cfg.resnet_tickets, cfg.resnet_steps, cfg, peaks, deadline, skipped
    )
    if cfg.vgg_width > 0 and time.perf_counter() < deadline:
        _log("vgg16 dense vs compacted inference")
        out["vgg16_inference"] = structured.run(cfg.vgg_width, 128, cfg.vgg_reps, models=("vgg16",))
    elif cfg.vgg_width > 0:
        skipped.append("vgg16_inference")
    out["skipped"] = skipped
    out["wall_s"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: print :func:`run`'s figures as JSON on stdout."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: every code path, on CPU")
    parser.add_argument("--budget-s", type=float, default=None, help="skip what runs past this")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    if args.budget_s is not None:
        if not np.isfinite(args.budget_s) or args.budget_s <= 0:
            parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
        cfg = dataclasses.replace(cfg, budget_s=args.budget_s)
    print(json.dumps(run(cfg), indent=2))


if __name__ == "__main__":
    main()
