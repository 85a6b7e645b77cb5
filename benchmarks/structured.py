"""Masked vs compacted VGG-16 inference: measured time and theoretical speedup, one JSON object.

Run ``python -m benchmarks.structured`` (about a minute on 2 CPU cores; ``--width 1.0`` for the
paper width). VGG-16 (Li et al.'s, with BN) on CIFAR-shaped inputs 32×32×3, batch 128, eval mode;
filters pruned by L1 norm, layerwise, at 50% and 75% of every conv and the hidden dense layer.
For each rate: the masked model (dense shapes, pruned weights zero) and the compacted one
(:func:`jaxprune.structured.compact`), both ``jax.jit``-ed, timed as the median of interleaved
repetitions after a warm-up, each ended with ``block_until_ready``; and Blalock et al.'s
theoretical speedup from :mod:`jaxprune.metrics` (dense FLOPs / compacted FLOPs).
"""

from __future__ import annotations

import argparse
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

from jaxprune import masks, metrics, models, structured


def _timed(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved (warm-up first)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _flops(fn: Any, state: Any, params: Any, shape: tuple[int, ...]) -> float:
    """Dense FLOPs per example of a stateful apply_fn in eval mode (jaxprune.metrics)."""
    counts = metrics.layer_flops(lambda p, x: fn(p, state, x, train=False)[0], params, shape)
    return float(sum(float(v) for v in counts.values()))


def run(
    width: float = 0.5, batch: int = 128, reps: int = 7, rates: tuple[float, ...] = (0.5, 0.75)
) -> dict[str, Any]:
    """The figures as a dict (see the module docstring)."""
    shape = (32, 32, 3)
    net = models.vgg16(shape, 10, width=width, conv_grad="xla")
    apply_fn, params, state = models.stateful(net)
    groups = structured.channel_groups(net)
    x = jax.random.normal(jax.random.key(0), (batch, *shape))

    def eval_fn(fn: Any, st: Any) -> Callable[[Any, jax.Array], jax.Array]:
        return jax.jit(lambda p, x: fn(p, st, x, train=False)[0])

    dense_fn = eval_fn(apply_fn, state)
    dense_flops = _flops(apply_fn, state, params, shape)
    rows = []
    for rate in rates:
        print(f"rate {rate}", file=sys.stderr)
        keep = structured.select_channels(structured.channel_scores(params, groups, "l1"), rate)
        masked = masks.apply(params, structured.element_mask(params, groups, keep))
        small = structured.compact(net, keep, params=params, model_state=state)
        small_apply = models.stateful(small.model)[0]
        small_fn = eval_fn(small_apply, small.model_state)
        calls: dict[str, Callable[[], Any]] = {
            "dense": functools.partial(dense_fn, params, x),
            "masked": functools.partial(dense_fn, masked, x),
            "compacted": functools.partial(small_fn, small.params, x),
        }
        t = _timed(calls, reps)
        flops = _flops(small_apply, small.model_state, small.params, shape)
        rows.append({
            "filters_pruned": rate,
            "params_dense": models.param_count(params),
            "params_compacted": models.param_count(small.params),
            "flops_dense": dense_flops,
            "flops_compacted": flops,
            "theoretical_speedup": metrics.theoretical_speedup(dense_flops, flops),
            "seconds_dense": t["dense"],
            "seconds_masked": t["masked"],
            "seconds_compacted": t["compacted"],
            "measured_speedup_masked": t["dense"] / t["masked"],
            "measured_speedup_compacted": t["masked"] / t["compacted"],
        })  # fmt: skip
    return {
        "model": f"vgg16 (Li et al., BN), width {width}, input 32x32x3, batch {batch}, eval mode",
        "criterion": "L1 norm of filters, layerwise (every conv and fc1)",
        "timing": f"jit, median of {reps} interleaved reps after warm-up, block_until_ready",
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} "
        f"{jax.default_backend()}",
        "results": rows,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print :func:`run`'s figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.width, args.batch, args.reps), indent=2))


if __name__ == "__main__":
    main()
