"""Compacted vs dense inference, measured and theoretical speed-up, for five models: one JSON object.

Run ``python -m benchmarks.structured`` (``make bench-structured``; about 3 minutes on 2 CPU cores;
``--smoke`` for a tiny run, ``--out PATH`` to also write the JSON to a file). Models, eval mode:
VGG-16 (Li et al.'s, with BN; ``--width``, 0.5 by default) and He et al.'s ResNet-20 and ResNet-56
on CIFAR-shaped inputs 32×32×3 (:func:`jaxprune.models.build`), and two models a user would
write (:mod:`benchmarks.user_models`): :class:`~benchmarks.user_models.ConcatCNN` on 32×32×3 and
:class:`~benchmarks.user_models.TinyTransformer` on 8×8×1 digits.

For each model and each rate (50% and 75% of the prunable channels removed): channel groups
traced from the program (:func:`jaxprune.structured.channel_groups`), filters ranked by L1 norm
layerwise (:func:`~jaxprune.structured.channel_scores`, :func:`~jaxprune.structured.select_channels`),
the model compacted (:func:`~jaxprune.structured.compact`). The dense model and each compacted
one are ``jax.jit``-ed, warmed up, and timed as the median of interleaved repetitions (each ended
with ``block_until_ready``): latency at batch 1 and throughput at batch 128 (examples/s).
Measured speed-up = dense time / compacted time; theoretical speed-up = dense FLOPs / compacted
FLOPs of every matmul and convolution (:func:`jaxprune.metrics.layer_flops`, Blalock et al.).
One row per model and rate: ``group_sizes``, ``channels_kept``, ``params_dense`` /
``params_compacted`` (and ``params_predicted`` by :func:`~jaxprune.structured.compacted_param_count`),
``flops_*`` and ``theoretical_speedup``, ``latency_ms_*`` and ``latency_speedup`` (batch 1),
``throughput_*`` and ``throughput_speedup`` (batch ``batch``), and a check that the compacted model
computes the masked one's logits (``max_abs_diff_masked`` against ``max_abs_logit_masked``).
``machine`` has the platform, jax version, device kind and the load average at start and end
(the timings of a shared machine are only as good as its load).
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import user_models
from jaxprune import masks, metrics, models, structured

MODELS = ("vgg16", "resnet20", "resnet56", "concat_cnn", "tiny_transformer")


@dataclasses.dataclass(frozen=True)
class Config:
    """What :func:`run` runs: ``width`` scales VGG-16, ``scale`` the other models (1.0 = the sizes below).

    ResNets: ``build(name, width=scale)`` (16/32/64 channels at 1.0); ConcatCNN: branches of
    ``32·scale`` filters, hidden layer ``256·scale``; TinyTransformer: ``dim = 128·scale``,
    4 heads, 2 blocks.
    """

    width: float = 0.5
    scale: float = 1.0
    batch: int = 128
    reps: int = 7
    latency_reps: int = 51
    rates: tuple[float, ...] = (0.5, 0.75)
    models: tuple[str, ...] = MODELS


SMOKE = Config(width=1 / 16, scale=0.25, batch=4, reps=1, latency_reps=1)


def _build(name: str, cfg: Config) -> nnx.Module:
    cifar = (32, 32, 3)
    if name == "vgg16":
        return models.build(name, input_shape=cifar, num_classes=10, width=cfg.width)
    if name in ("resnet20", "resnet56"):
        return models.build(name, input_shape=cifar, num_classes=10, width=cfg.scale)
    rngs = nnx.Rngs(0)
    if name == "concat_cnn":
        width, hidden = max(1, round(32 * cfg.scale)), max(1, round(256 * cfg.scale))
        return user_models.ConcatCNN(cifar, 10, width=width, hidden=hidden, rngs=rngs)
    if name == "tiny_transformer":
        dim = 4 * max(1, round(32 * cfg.scale))  # 4 heads
        return user_models.TinyTransformer((8, 8, 1), 10, dim=dim, num_heads=4, rngs=rngs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}.")


def _timed(fns: Mapping[str, Callable[[], Any]], reps: int) -> dict[str, float]:
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


class _Net:
    """A model's pure eval forward (jitted), its params, state, and FLOPs per example."""

    def __init__(self, model: nnx.Module, shape: tuple[int, ...]):
        apply_fn, self.params, self.state = models.stateful(model)
        self.forward = jax.jit(lambda p, s, x: apply_fn(p, s, x, train=False)[0])
        fn = functools.partial(apply_fn, train=False)
        counts = metrics.layer_flops(lambda p, x: fn(p, self.state, x)[0], self.params, shape)
        self.flops = float(sum(counts.values()))

    def call(self, x: jax.Array, params: Any = None) -> Callable[[], jax.Array]:
        return functools.partial(
            self.forward, self.params if params is None else params, self.state, x
        )


def _bench_model(name: str, cfg: Config) -> list[dict[str, Any]]:
    """One row per rate for one model (see the module docstring)."""
    model = _build(name, cfg)
    shape = tuple(int(d) for d in model.input_shape)  # type: ignore[attr-defined]
    example = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    groups = structured.channel_groups(model, example)
    dense = _Net(model, shape)
    scores = structured.channel_scores(dense.params, groups, "l1")
    x1 = jax.random.normal(jax.random.key(1), (1, *shape))
    xb = jax.random.normal(jax.random.key(2), (cfg.batch, *shape))
    small: dict[str, _Net] = {}  # by rate, as text
    rows: dict[str, dict[str, Any]] = {}
    for rate in cfg.rates:
        keep = structured.select_channels(scores, rate)
        compacted = structured.compact(model, keep, groups=groups, x=example)
        small[str(rate)] = net = _Net(compacted.model, shape)
        masked = masks.apply(dense.params, structured.element_mask(dense.params, groups, keep))
        want = dense.call(x1, masked)()
        diff = jnp.abs(want - net.call(x1)()).max()
        rows[str(rate)] = {
            "model": name,
            "channels_removed": rate,
            "group_sizes": [int(g.size) for g in groups],
            "channels": int(sum(g.size for g in groups)),
            "channels_kept": int(sum(int(np.sum(np.asarray(k))) for k in keep.values())),
            "params_dense": models.param_count(dense.params),
            "params_compacted": models.param_count(net.params),
            "params_predicted": int(structured.compacted_param_count(dense.params, groups, keep)),
            "max_abs_diff_masked": float(diff),
            "max_abs_logit_masked": float(jnp.abs(want).max()),
            "flops_dense": dense.flops,
            "flops_compacted": net.flops,
            "theoretical_speedup": metrics.theoretical_speedup(dense.flops, net.flops),
        }
    for label, x, reps in (("latency", x1, cfg.latency_reps), ("batch", xb, cfg.reps)):
        print(f"  {name}: timing {label}", file=sys.stderr)
        calls = {"dense": dense.call(x)} | {r: net.call(x) for r, net in small.items()}
        t = _timed(calls, reps)
        for r, row in rows.items():
            if label == "latency":
                row["latency_ms_dense"] = 1e3 * t["dense"]
                row["latency_ms_compacted"] = 1e3 * t[r]
                row["latency_speedup"] = t["dense"] / t[r]
            else:
                row["throughput_dense"] = cfg.batch / t["dense"]
                row["throughput_compacted"] = cfg.batch / t[r]
                row["throughput_speedup"] = t["dense"] / t[r]
    return list(rows.values())


def run(
    width: float = 0.5,
    batch: int = 128,
    reps: int = 7,
    rates: tuple[float, ...] = (0.5, 0.75),
    *,
    scale: float = 1.0,
    latency_reps: int = 51,
    models: tuple[str, ...] = MODELS,
) -> dict[str, Any]:
    """The figures as a dict (see the module docstring and :class:`Config` for the arguments)."""
    start, load_start = time.perf_counter(), os.getloadavg()
    cfg = Config(width, scale, batch, reps, latency_reps, tuple(rates), tuple(models))
    for name in cfg.models:
        if name not in MODELS:
            raise ValueError(f"models must be among {MODELS}, got {name!r}.")
    results = []
    for name in cfg.models:
        print(f"{name}", file=sys.stderr)
        results += _bench_model(name, cfg)
    device = jax.devices()[0]
    return {
        "config": dataclasses.asdict(cfg),
        "criterion": "L1 norm of each group's producer filters, layerwise (select_channels)",
        "timing": (
            f"jit, eval mode, warm; median of {cfg.latency_reps} (batch 1) and {cfg.reps} "
            f"(batch {cfg.batch}) interleaved reps, block_until_ready"
        ),
        "flops": "metrics.layer_flops: every matmul and conv (attention's included), per example",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device_kind": device.device_kind,
            "loadavg_start": list(load_start),
            "loadavg_end": list(os.getloadavg()),
        },
        "results": results,
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: print :func:`run`'s figures as JSON (and write them to ``--out``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    default = Config()
    parser.add_argument("--smoke", action="store_true", help="tiny models, one rep")
    parser.add_argument("--width", type=float, default=default.width, help="VGG-16 width")
    parser.add_argument("--scale", type=float, default=default.scale, help="other models' size")
    parser.add_argument("--batch", type=int, default=default.batch)
    parser.add_argument("--reps", type=int, default=default.reps)
    parser.add_argument("--latency-reps", type=int, default=default.latency_reps)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        cfg = dataclasses.replace(SMOKE, models=tuple(args.models))
    else:
        cfg = Config(
            width=args.width,
            scale=args.scale,
            batch=args.batch,
            reps=args.reps,
            latency_reps=args.latency_reps,
            models=tuple(args.models),
        )
    figures = run(**dataclasses.asdict(cfg))
    text = json.dumps(figures, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
