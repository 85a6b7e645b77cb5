"""Benchmarks of the training engine (:mod:`jaxprune.train`): one JSON object on stdout.

Run ``python -m benchmarks.engine`` (about 5 minutes on 2 CPU cores) or ``--quick`` (a few tens
of seconds); progress goes to stderr. Everything trains LeNet-300-100 on the 8×8 digits with Adam
(learning rate 1.2e-3) and batch 60. The figures (explained in ``docs/benchmarks.md``):

* ``masked_vs_dense`` — time of a masked ``"zero"``-mode step (:func:`jaxprune.train.train_chunk`)
  over a plain optax step without masking, both inside a ``lax.scan`` chunk (target ≤ 1.03).
* ``tickets`` — ticket-steps per second for N tickets vmapped, sharded over host devices and in
  ``ticket_batch_size`` groups, against N single-ticket scanned runs one after another
  (target: 32 tickets ≥ 1.5× sequential).
* ``flops`` — achieved GFLOP/s of the train step against this machine's float32 matmul peak.
* ``scan_vs_loop`` — a scanned epoch against a Python loop over the same jitted step (≥ 1.5×).
* ``torch`` — a PyTorch peer written like the reference lottery-ticket codes (≥ 3×), or ``null``.
* ``time_to_accuracy`` — seconds of a cold :func:`jaxprune.train.fit` until 95% test accuracy.

Timings are medians of interleaved repetitions after a warm-up call, each ended with
``jax.block_until_ready``; compare ratios within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxprune import data, masks, models, train

__all__ = [
    "FULL",
    "QUICK",
    "TINY",
    "Config",
    "flops",
    "machine",
    "masked_vs_dense",
    "random_mask",
    "run",
    "scan_vs_loop",
    "tickets",
    "time_to_accuracy",
    "torch_peer",
    "train_step_flops",
]

BATCH = 60
LEARNING_RATE = 1.2e-3
DENSITY = 0.2  # fraction of kernel weights kept by the masks (the speed does not depend on it)
ACCURACY = 0.95  # the time-to-accuracy threshold


@dataclasses.dataclass(frozen=True)
class Config:
    """How long each benchmark runs.

    Attributes:
      reps: timed repetitions per measurement (the median is reported).
      steps: scan length of single-ticket chunks.
      ticket_counts: the N of the many-ticket benchmark.
      ticket_work: ticket-steps per timed call there (chunk length ``min(steps, work // N)``).
      ticket_batch_sizes: ``ticket_batch_size`` values tried (on one device).
      epochs: epochs per timed call in the scan-vs-loop benchmark.
      torch_steps: PyTorch steps per timed call.
      tta_iterations, tta_eval_every: the time-to-accuracy fit.
      peak_size: side of the square matmul that measures the float32 peak.
      cold: clear jax's caches before the time-to-accuracy fit (so it includes compilation).
      forward_mode: also time the ``"forward"`` masking mode against the dense step.
    """

    reps: int = 5
    steps: int = 500
    ticket_counts: tuple[int, ...] = (1, 8, 32, 128)
    ticket_work: int = 8_000
    ticket_batch_sizes: tuple[int, ...] = (8,)
    epochs: int = 10
    torch_steps: int = 500
    tta_iterations: int = 2_000
    tta_eval_every: int = 50
    peak_size: int = 2048
    cold: bool = True
    forward_mode: bool = True


FULL = Config()
QUICK = Config(
    reps=3,
    steps=200,
    ticket_counts=(1, 8, 32),
    ticket_work=3_000,
    epochs=4,
    torch_steps=200,
    tta_iterations=1_000,
)
TINY = Config(  # for tests: every code path, no meaningful timing
    reps=1,
    steps=10,
    ticket_counts=(2,),
    ticket_work=20,
    ticket_batch_sizes=(),
    epochs=1,
    torch_steps=10,
    tta_iterations=20,
    tta_eval_every=10,
    peak_size=128,
    cold=False,
    forward_mode=False,
)

Fn = Callable[[], Any]


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _interleaved(fns: dict[str, Fn], reps: int) -> dict[str, float]:
    """Median seconds per call of each function; one warm-up call each, then rounds in turn."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class Setup(NamedTuple):
    """The data on the device and one LeNet-300-100 with a random mask."""

    ds: data.Dataset
    apply_fn: Callable[[Any, jax.Array], jax.Array]
    params: Any
    mask: Any
    steps: train.Steps  # zero mode, Adam: shared so that equal chunks compile once
    x: jax.Array
    y: jax.Array


@functools.partial(jax.jit, static_argnames="density")
def random_mask(params: Any, key: jax.Array, density: float = DENSITY) -> Any:
    """Keep a ``density`` fraction of every kernel at random; biases are never pruned."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    kept = [
        jax.random.bernoulli(k, density, leaf.shape)
        if leaf.ndim >= 2
        else jnp.ones(leaf.shape, bool)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, kept)


def setup(seed: int = 0) -> Setup:
    """Load the digits, build LeNet-300-100 and draw a random mask."""
    ds = data.load("digits")
    net = models.build(
        "lenet300_100", input_shape=ds.input_shape, num_classes=ds.num_classes, seed=seed
    )
    apply_fn, params, _ = models.functional(net)
    mask = random_mask(params, jax.random.key(seed))
    steps = train.make_steps(apply_fn, _adam())
    return Setup(
        ds, apply_fn, params, mask, steps, jnp.asarray(ds.train.x), jnp.asarray(ds.train.y)
    )


@functools.partial(jax.jit, static_argnames="steps")
def _masked_state(steps: train.Steps, params: Any, mask: Any) -> train.TrainState:
    return steps.init(masks.apply(params, mask))


def _adam() -> optax.GradientTransformation:
    return optax.adam(LEARNING_RATE)


def _single(s: Setup, steps: train.Steps, length: int) -> Fn:
    """One masked ticket, one scanned chunk of ``length`` steps (always from the same state)."""
    state = _masked_state(steps, s.params, s.mask)
    key, start = jax.random.key(0), jnp.int32(0)
    return lambda: train.train_chunk(
        steps, state, s.mask, None, s.x, s.y, key, start, length=length, batch_size=BATCH
    )


def _dense_chunk(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    length: int,
    batch_size: int,
) -> Callable[..., Any]:
    """A plain optax step without masks in a ``lax.scan``, with the engine's data order."""

    def loss_of(params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return train.cross_entropy(apply_fn(params, xb), yb)

    @jax.jit
    def chunk(
        params: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, start: jax.Array
    ) -> Any:
        n = x.shape[0]
        per_epoch = n // batch_size
        first = start // per_epoch
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, first + e), n))(
            jnp.arange(math.ceil(length / per_epoch) + 1)
        )

        def body(carry: Any, t: jax.Array) -> Any:
            params, opt_state = carry
            perm = perms[t // per_epoch - first]
            idx = jax.lax.dynamic_slice(perm, ((t % per_epoch) * batch_size,), (batch_size,))
            loss, grads = jax.value_and_grad(loss_of)(params, x[idx], y[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(body, (params, opt_state), start + jnp.arange(length))

    return chunk


def masked_vs_dense(s: Setup, cfg: Config) -> dict[str, Any]:
    """(a) A masked zero-mode step against a dense optax step, both scanned."""
    optimizer = _adam()
    length = cfg.steps
    dense = _dense_chunk(s.apply_fn, optimizer, length, BATCH)
    opt_state = optimizer.init(s.params)
    key, start = jax.random.key(0), jnp.int32(0)
    fns = {
        "dense": lambda: dense(s.params, opt_state, s.x, s.y, key, start),
        "zero": _single(s, s.steps, length),
    }
    if cfg.forward_mode:
        fns["forward"] = _single(s, train.make_steps(s.apply_fn, optimizer, mode="forward"), length)
    t = _interleaved(fns, cfg.reps)
    out: dict[str, Any] = {"steps_per_chunk": length}
    out.update({f"{name}_steps_per_s": length / sec for name, sec in t.items()})
    out.update(
        {f"{name}_over_dense_time": sec / t["dense"] for name, sec in t.items() if name != "dense"}
    )
    return out


@functools.partial(jax.jit, static_argnames=("steps", "n"))
def _stacked(steps: train.Steps, params: Any, n: int) -> tuple[Any, Any]:
    """``n`` tickets (the same init, different random masks) stacked on a leading axis."""
    mask = jax.vmap(lambda k: random_mask(params, k))(jax.random.split(jax.random.key(1), n))
    state = jax.vmap(lambda m: steps.init(masks.apply(params, m)))(mask)
    return state, mask


def _many(
    s: Setup,
    steps: train.Steps,
    n: int,
    length: int,
    devices: int,
    ticket_batch_size: int | None,
) -> Fn:
    """``n`` tickets in one program, vmapped (``devices=1``) or sharded over ``devices`` devices."""
    state, mask = _stacked(steps, s.params, n)
    x, y = s.x, s.y
    if devices > 1:
        mesh = train.ticket_mesh(jax.devices()[:devices])
        state, mask = train.shard_tickets((state, mask), mesh)
        x, y = jax.device_put((x, y), NamedSharding(mesh, P()))
    key, start = jax.random.key(0), jnp.int32(0)
    return lambda: train.train_chunk(
        steps,
        state,
        mask,
        None,
        x,
        y,
        key,
        start,
        length=length,
        batch_size=BATCH,
        tickets=True,
        ticket_batch_size=ticket_batch_size,
    )


def _ticket_configs(n: int, cfg: Config) -> dict[str, tuple[int, int | None]]:
    """Name → (devices, ticket_batch_size) of every many-ticket configuration that fits ``n``.

    ``ticket_batch_size`` is tried on one device only: with the ticket axis sharded, ``lax.map``'s
    scan over groups runs along the sharded axis, which was 3-6× slower than plain sharding.
    """
    n_dev = jax.device_count()
    shard = sorted(
        {d for d in (min(os.cpu_count() or 1, n_dev), n_dev) if 1 < d <= n and n % d == 0}
    )
    out: dict[str, tuple[int, int | None]] = {"vmap": (1, None)}
    out.update({f"vmap_tbs{k}": (1, k) for k in cfg.ticket_batch_sizes if k < n and n % k == 0})
    out.update({f"shard{d}": (d, None) for d in shard})
    return out


def tickets(s: Setup, cfg: Config) -> dict[str, Any]:
    """(b) Ticket-steps per second for N tickets at once against N runs one after another.

    The sequential baseline is the jitted single-ticket scanned chunk of the same length; N runs
    one after another take N times one run, so its ticket-steps per second do not depend on N.
    It is timed in the same interleaved rounds as the many-ticket programs of each N.
    """
    steps = s.steps
    out: dict[str, Any] = {}
    for n in cfg.ticket_counts:
        length = max(1, min(cfg.steps, cfg.ticket_work // n))
        configs = _ticket_configs(n, cfg)
        _log(f"tickets N={n}: {length} steps, {', '.join(configs)}")
        fns = {"sequential": _single(s, steps, length)}
        fns.update({name: _many(s, steps, n, length, d, k) for name, (d, k) in configs.items()})
        t = _interleaved(fns, cfg.reps)
        rates = {name: (1 if name == "sequential" else n) * length / sec for name, sec in t.items()}
        best = max((name for name in rates if name != "sequential"), key=rates.__getitem__)
        out[str(n)] = {
            "steps_per_chunk": length,
            "ticket_steps_per_s": rates,
            "speedup_vs_sequential": {
                name: rate / rates["sequential"]
                for name, rate in rates.items()
                if name != "sequential"
            },
            "best": best,
            "best_speedup": rates[best] / rates["sequential"],
        }
    return out


def lenet_train_flops(params: Any, batch: int = BATCH) -> float:
    """Analytic FLOPs of one train step: forward 2·B·Σ(in·out), backward ≈ 2× forward."""
    kernels = [leaf for leaf in jax.tree.leaves(params) if leaf.ndim == 2]
    forward = 2 * batch * sum(int(k.shape[0] * k.shape[1]) for k in kernels)
    return 3.0 * forward


def train_step_flops(steps: train.Steps, state: Any, mask: Any, batch: Any) -> float | None:
    """XLA's own FLOP count of one train step of ``steps`` (None where cost analysis is missing)."""
    try:
        cost = jax.jit(steps.train_step).lower(state, mask, batch).compile().cost_analysis()
    except Exception:  # cost analysis is optional per backend
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops else None


def _xla_flops(s: Setup) -> float | None:
    """XLA's own FLOP count of one masked train step (None where cost analysis is missing)."""
    state = _masked_state(s.steps, s.params, s.mask)
    return train_step_flops(s.steps, state, s.mask, (s.x[:BATCH], s.y[:BATCH]))


def matmul_peak(size: int, reps: int) -> float:
    """GFLOP/s of a jitted float32 ``size``×``size`` matmul (the machine's practical peak)."""
    a, b = jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32)
    mm = jax.jit(jnp.matmul)
    t = _interleaved({"mm": lambda: mm(a, b)}, max(reps, 3))["mm"]
    return 2 * size**3 / t / 1e9


def flops(s: Setup, cfg: Config, step_rates: dict[str, float]) -> dict[str, Any]:
    """(c) GFLOP/s of the train step at the given steps/s, as a fraction of the matmul peak."""
    per_step = lenet_train_flops(s.params)
    peak = matmul_peak(cfg.peak_size, cfg.reps)
    achieved = {name: per_step * rate / 1e9 for name, rate in step_rates.items()}
    return {
        "train_step_flops_analytic": per_step,
        "train_step_flops_xla": _xla_flops(s),
        "matmul_peak_gflops": peak,
        "matmul_size": cfg.peak_size,
        "achieved_gflops": achieved,
        "fraction_of_peak": {name: g / peak for name, g in achieved.items()},
    }


def scan_vs_loop(s: Setup, cfg: Config) -> dict[str, Any]:
    """(d) Epochs as scanned chunks against a Python loop over the same jitted step.

    Both take the batch from the data on the device with the same permutation, so the only
    difference is one dispatch per epoch against one per step. A whole run as one chunk is timed
    too.
    """
    steps = s.steps
    state = _masked_state(steps, s.params, s.mask)
    n = s.x.shape[0]
    per_epoch = n // BATCH
    key = jax.random.key(0)

    @jax.jit
    def step(
        st: train.TrainState, m: Any, x: jax.Array, y: jax.Array, perm: jax.Array, j: jax.Array
    ) -> Any:
        idx = jax.lax.dynamic_slice(perm, (j * BATCH,), (BATCH,))
        return steps.train_step(st, m, (x[idx], y[idx]))

    permutation = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))

    def loop() -> Any:
        st = state
        for e in range(cfg.epochs):
            perm = permutation(e)
            for j in range(per_epoch):
                st, _ = step(st, s.mask, s.x, s.y, perm, j)
        return st

    def scanned(length: int) -> Fn:
        def go() -> Any:
            st = state
            for start in range(0, cfg.epochs * per_epoch, length):
                st, _ = train.train_chunk(
                    steps,
                    st,
                    s.mask,
                    None,
                    s.x,
                    s.y,
                    key,
                    jnp.int32(start),
                    length=length,
                    batch_size=BATCH,
                )
            return st

        return go

    total = cfg.epochs * per_epoch
    t = _interleaved(
        {"python_loop": loop, "scan_epoch": scanned(per_epoch), "scan_run": scanned(total)},
        cfg.reps,
    )
    return {
        "steps_per_epoch": per_epoch,
        "epochs": cfg.epochs,
        "steps_per_s": {name: total / sec for name, sec in t.items()},
        "scan_epoch_over_loop": t["python_loop"] / t["scan_epoch"],
        "scan_run_over_loop": t["python_loop"] / t["scan_run"],
    }


def _torch_run(s: Setup, torch: Any, loader: bool) -> Callable[[int], None]:
    """LeNet-300-100 trained like the PyTorch lottery-ticket reference codes.

    A Python loop over shuffled batches; after each optimizer step the mask is multiplied into
    the weights. ``loader=False`` slices in-memory tensors (the fastest way);
    ``loader=True`` uses a ``DataLoader`` as the reference codes do.
    """
    nn = torch.nn
    torch.manual_seed(0)
    x = torch.from_numpy(np.asarray(s.ds.train.x).reshape(len(s.ds.train.y), -1).copy())
    y = torch.from_numpy(np.asarray(s.ds.train.y).astype(np.int64))
    model = nn.Sequential(
        nn.Linear(x.shape[1], 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    kernels = [p for p in model.parameters() if p.dim() >= 2]
    kept = [(torch.rand_like(p) < DENSITY).float() for p in kernels]
    with torch.no_grad():
        for p, m in zip(kernels, kept, strict=True):
            p.mul_(m)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    per_epoch = len(y) // BATCH

    def batches() -> Any:
        if loader:
            dataset = torch.utils.data.TensorDataset(x, y)
            return iter(
                torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
            )
        perm = torch.randperm(len(y))
        return (
            (x[perm[j * BATCH : (j + 1) * BATCH]], y[perm[j * BATCH : (j + 1) * BATCH]])
            for j in range(per_epoch)
        )

    def train_steps(n_steps: int) -> None:
        done = 0
        while done < n_steps:
            for xb, yb in batches():
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
                with torch.no_grad():
                    for p, m in zip(kernels, kept, strict=True):
                        p.mul_(m)
                done += 1
                if done == n_steps:
                    return

    return train_steps


def torch_peer(s: Setup, cfg: Config) -> tuple[dict[str, Any] | None, str | None]:
    """(e) Steps per second of the PyTorch peer, timed in rounds with jaxprune's single ticket.

    Returns ``(figures, None)``, or ``(None, reason)`` when PyTorch cannot be imported.
    """
    try:
        import torch
    except ImportError as err:
        return None, f"import torch failed: {err}"
    n = cfg.torch_steps
    sliced, loader = _torch_run(s, torch, loader=False), _torch_run(s, torch, loader=True)
    t = _interleaved(
        {
            "torch": lambda: sliced(n),
            "torch_dataloader": lambda: loader(n),
            "jaxprune_single": _single(s, s.steps, n),
        },
        cfg.reps,
    )
    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": n,
        "steps_per_s": {name: n / sec for name, sec in t.items()},
    }, None


def time_to_accuracy(cfg: Config, threshold: float = ACCURACY) -> dict[str, Any]:
    """(f) Seconds of a dense ``train.fit`` from start (build and compilation included) to accuracy.

    A first fit finds the first evaluation at or above ``threshold`` and the final accuracy; a
    second, cold fit (caches cleared) of exactly that many iterations retraces the same run (the
    data order is a function of the key and the step) and is what is timed.
    """

    def fit(iterations: int) -> tuple[train.History, float]:
        if cfg.cold:
            jax.clear_caches()
        t0 = time.perf_counter()
        ds = data.load("digits")
        net = models.build(
            "lenet300_100", input_shape=ds.input_shape, num_classes=ds.num_classes, seed=0
        )
        apply_fn, params, _ = models.functional(net)
        steps = train.make_steps(apply_fn, _adam())
        _, hist = train.fit(
            steps,
            steps.init(params),
            masks.ones(params),
            ds.train,
            ds.val,
            ds.test,
            iterations=iterations,
            batch_size=BATCH,
            eval_every=cfg.tta_eval_every,
            data_key=jax.random.key(0),
            progress=False,
        )
        return hist, time.perf_counter() - t0

    hist, seconds = fit(cfg.tta_iterations)
    out: dict[str, Any] = {
        "threshold": threshold,
        "iterations": cfg.tta_iterations,
        "eval_every": cfg.tta_eval_every,
        "fit_seconds": seconds,
        "final_test_acc": float(hist.test_acc[-1]),
        "early_stop_test_acc": float(hist.early_stop_test_acc),
        "iteration_reached": None,
        "seconds_to_threshold": None,
    }
    hits = np.flatnonzero(hist.test_acc >= threshold)
    if hits.size:
        reached = int(hist.iteration[hits[0]])
        again, seconds = fit(reached)
        out.update(
            iteration_reached=reached,
            seconds_to_threshold=seconds,
            test_acc_at_threshold=float(again.test_acc[-1]),
        )
    return out


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": list(load) if load else None,
    }


def _target(value: float | None, target: float, higher_is_better: bool) -> dict[str, Any]:
    met = None if value is None else (value >= target if higher_is_better else value <= target)
    return {"value": value, "target": target, "met": met}


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    at32 = out["tickets"].get("32", {}).get("best_speedup")
    torch_ratio = None if out["torch"] is None else out["torch"]["ratio_best_many_over_torch"]
    tta = out["time_to_accuracy"]["seconds_to_threshold"]
    return {
        "zero_over_dense_time": _target(
            out["masked_vs_dense"]["zero_over_dense_time"], 1.03, False
        ),
        "tickets32_speedup": _target(at32, 1.5, True),
        "scan_epoch_over_loop": _target(out["scan_vs_loop"]["scan_epoch_over_loop"], 1.5, True),
        "best_many_tickets_over_torch": _target(torch_ratio, 3.0, True),
        "seconds_to_95pct": _target(tta, 60.0, False),
    }


def run(cfg: Config = FULL) -> dict[str, Any]:
    """Every benchmark; returns the JSON-ready dict that :func:`main` prints."""
    t0 = time.perf_counter()
    config = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as JSON lists
    out: dict[str, Any] = {"machine": machine(), "config": config}
    s = setup()
    _log("(a) masked zero-mode step vs dense step")
    out["masked_vs_dense"] = masked_vs_dense(s, cfg)
    _log("(b) many tickets")
    out["tickets"] = tickets(s, cfg)
    _log("(d) scan vs Python loop")
    out["scan_vs_loop"] = scan_vs_loop(s, cfg)
    _log("(e) PyTorch peer")
    out["torch"], reason = torch_peer(s, cfg)
    if reason is not None:
        out["torch_reason"] = reason
    else:
        fig = out["torch"]
        torch_rate = fig["steps_per_s"]["torch"]
        best = max(
            (rate, f"N={n} {name}")
            for n, f in out["tickets"].items()
            for name, rate in f["ticket_steps_per_s"].items()
            if name != "sequential"
        )
        fig["jaxprune_best_many"] = {"config": best[1], "ticket_steps_per_s": best[0]}
        fig["ratio_best_many_over_torch"] = best[0] / torch_rate
        fig["ratio_single_over_torch"] = fig["steps_per_s"]["jaxprune_single"] / torch_rate
        fig["ratio_single_over_torch_dataloader"] = (
            fig["steps_per_s"]["jaxprune_single"] / fig["steps_per_s"]["torch_dataloader"]
        )
    _log("(c) GFLOP/s against the matmul peak")
    many = out["tickets"]
    best_n = max(many, key=lambda n: many[n]["ticket_steps_per_s"][many[n]["best"]])
    out["flops"] = flops(
        s,
        cfg,
        {
            "dense_single": out["masked_vs_dense"]["dense_steps_per_s"],
            "zero_single": out["masked_vs_dense"]["zero_steps_per_s"],
            f"best_many_N{best_n}_{many[best_n]['best']}": many[best_n]["ticket_steps_per_s"][
                many[best_n]["best"]
            ],
        },
    )
    _log("(f) time to accuracy")
    out["time_to_accuracy"] = time_to_accuracy(cfg)
    out["targets"] = _targets(out)
    out["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.engine [--quick]``: print the JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, N up to 32")
    args = parser.parse_args(argv)
    # Sharded figures for 8 host devices as well as one per core (docs/benchmarks.md).
    train.use_host_devices(max(os.cpu_count() or 1, 8))
    print(json.dumps(run(QUICK if args.quick else FULL), indent=2))


if __name__ == "__main__":
    main()
