"""Benchmark of sparse training (:mod:`jaxprune.sparse_training`): one JSON object on stdout.

Run ``python -m benchmarks.sparse_training`` (``make bench-sparse``; about 4 minutes on 2 CPU
cores) or ``--smoke`` (toy sizes, every code path); progress goes to stderr. LeNet-300-100 on
MNIST-shaped synthetic images (28×28×1) on the device, batch 60, Adam 1.2e-3, RigL at 90% ERK.
Every chunk is one jitted ``lax.scan`` over steps with the engine's data order.

* ``step`` — time per step against a plain optax step without masks (``dense``):

  - ``drop_in_non_update`` / ``drop_in_update``: the drop-in step of ``docs/sparse_training.md``
    (``forward_params``, ``gradients``, ``keep_zero(adam)`` with the mask, ``update``), at
    steps where RigL does not update its mask (ΔT beyond the chunk) and where it updates at every
    step (ΔT = 1: drop by |w|, grow by |dense gradient|, reset the moments);
  - ``engine_non_update`` / ``engine_update``: the same through the engine
    (:func:`jaxprune.sparse_training.steps.make_steps`, :func:`jaxprune.train.train_chunk`).

  Targets: a non-update step ≤ 1.05 dense steps, an update step ≤ 2.5 dense steps.
* ``tickets`` — ``tickets`` RigL tickets (other keys; ΔT = 50, so the chunk holds update steps)
  in one program, vmapped on one device and sharded over the host devices, against one ticket's
  chunk run ``tickets`` times one after another (ticket-steps per second of each; ``speedup``).

Timings are medians of interleaved repetitions after a warm-up call; compare the ratios of one
run, and read them with ``machine.load_average`` (on a shared machine they move from run to run).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks import engine
from jaxprune import masks, models, train
from jaxprune.sparse_training import core
from jaxprune.sparse_training import steps as sparse_steps

__all__ = ["FULL", "SMOKE", "Config", "run", "step_overhead", "tickets"]

BATCH = 60
LEARNING_RATE = 1.2e-3
NEVER = 2**30  # a ΔT (and end) past any chunk: no update step


@dataclasses.dataclass(frozen=True)
class Config:
    """How long the benchmark runs.

    Attributes:
      reps: timed repetitions per measurement (the median is reported).
      steps: scan length of the step-overhead chunks.
      tickets: tickets trained at once in the ticket comparison.
      ticket_steps: scan length there; ``ticket_delta_t``: RigL's ΔT there; ``ticket_reps``:
        its repetitions (each call trains ``tickets × ticket_steps`` ticket-steps).
      n_train: synthetic training images on the device.
      sparsity: RigL's target sparsity.
    """

    reps: int = 7
    steps: int = 200
    tickets: int = 32
    ticket_steps: int = 100
    ticket_delta_t: int = 50
    ticket_reps: int = 3
    n_train: int = 4096
    sparsity: float = 0.9


FULL = Config()
SMOKE = Config(
    reps=1, steps=4, tickets=4, ticket_steps=4, ticket_delta_t=2, ticket_reps=1, n_train=256
)

Fn = Callable[[], Any]


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _scanned(step: Callable[..., Any], length: int, batch_size: int) -> Callable[..., Any]:
    """``chunk(carry, x, y, key, start)``: ``length`` calls of ``step(carry, xb, yb) -> (carry,
    loss)`` in one ``lax.scan``, the batches in the engine's order (a permutation per epoch)."""

    @jax.jit
    def chunk(carry: Any, x: jax.Array, y: jax.Array, key: jax.Array, start: jax.Array) -> Any:
        n = x.shape[0]
        per_epoch = n // batch_size
        first = start // per_epoch
        perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, first + e), n))(
            jnp.arange(math.ceil(length / per_epoch) + 1)
        )

        def body(c: Any, t: jax.Array) -> Any:
            perm = perms[t // per_epoch - first]
            idx = jax.lax.dynamic_slice(perm, ((t % per_epoch) * batch_size,), (batch_size,))
            return step(c, x[idx], y[idx])

        return jax.lax.scan(body, carry, start + jnp.arange(length))

    return chunk


class _Setup:
    """LeNet-300-100, the synthetic data, Adam and RigL."""

    def __init__(self, cfg: Config) -> None:
        rng = np.random.default_rng(0)
        self.x = jnp.asarray(rng.random((cfg.n_train, 28, 28, 1), dtype=np.float32))
        self.y = jnp.asarray(rng.integers(0, 10, cfg.n_train).astype(np.int32))
        net = models.build("lenet300_100", input_shape=(28, 28, 1), num_classes=10)
        self.apply_fn, self.params, _ = models.functional(net)
        self.adam = optax.adam(LEARNING_RATE)
        self.method = core.method("rigl")
        self.cfg = cfg

    def loss(self, params: Any, xb: jax.Array, yb: jax.Array) -> jax.Array:
        return train.cross_entropy(self.apply_fn(params, xb), yb)


def _dense_fn(s: _Setup) -> Fn:
    def step(carry: Any, xb: jax.Array, yb: jax.Array) -> Any:
        params, opt_state = carry
        loss, grads = jax.value_and_grad(s.loss)(params, xb, yb)
        updates, opt_state = s.adam.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    chunk = _scanned(step, s.cfg.steps, BATCH)
    carry = (s.params, s.adam.init(s.params))
    return functools.partial(chunk, carry, s.x, s.y, jax.random.key(0), jnp.int32(0))


def _drop_in_fn(s: _Setup, delta_t: int) -> Fn:
    """The drop-in step of docs/sparse_training.md, scanned."""
    m, tx = s.method, core.keep_zero(s.adam)

    def step(carry: Any, xb: jax.Array, yb: jax.Array) -> Any:
        params, opt_state, sp = carry
        loss, grads = jax.value_and_grad(s.loss)(core.forward_params(m, sp, params), xb, yb)
        grads = core.gradients(m, sp, params, grads)
        updates, opt_state = tx.update(grads, opt_state, params, mask=sp.masks)
        params = optax.apply_updates(params, updates)
        sp, params, opt_state = core.update(m, sp, params, grads, opt_state)
        return (params, opt_state, sp), loss

    sp = core.init(m, s.params, jax.random.key(1), sparsity=s.cfg.sparsity, delta_t=delta_t,
                   end=NEVER)  # fmt: skip
    params = core.apply(s.params, sp)
    chunk = _scanned(step, s.cfg.steps, BATCH)
    carry = (params, tx.init(params), sp)
    return functools.partial(chunk, carry, s.x, s.y, jax.random.key(0), jnp.int32(0))


def _engine_steps(s: _Setup) -> sparse_steps.SparseSteps:
    return sparse_steps.make_steps(s.apply_fn, s.adam, s.method)


def _engine_fn(s: _Setup, delta_t: int) -> Fn:
    steps = _engine_steps(s)
    state = jax.jit(functools.partial(steps.init, sparsity=s.cfg.sparsity, end=NEVER))(
        s.params, key=jax.random.key(1), delta_t=delta_t
    )
    outer = masks.ones(s.params)
    return functools.partial(
        train.train_chunk, steps, state, outer, None, s.x, s.y, jax.random.key(0), jnp.int32(0),
        length=s.cfg.steps, batch_size=BATCH,
    )  # fmt: skip


def step_overhead(s: _Setup) -> dict[str, Any]:
    """Sparse-training steps (drop-in and engine; no update / update every step) over dense."""
    fns = {
        "dense": _dense_fn(s),
        "drop_in_non_update": _drop_in_fn(s, NEVER),
        "drop_in_update": _drop_in_fn(s, 1),
        "engine_non_update": _engine_fn(s, NEVER),
        "engine_update": _engine_fn(s, 1),
    }
    times = engine._interleaved(fns, s.cfg.reps)
    n = s.cfg.steps
    return {
        "steps_per_chunk": n,
        "ms_per_step": {name: 1e3 * t / n for name, t in times.items()},
        "over_dense_time": {
            name: t / times["dense"] for name, t in times.items() if name != "dense"
        },
    }


@functools.partial(jax.jit, static_argnames=("steps", "sparsity", "delta_t", "end"))
def _stacked(
    steps: sparse_steps.SparseSteps, params: Any, keys: jax.Array, *, sparsity: float,
    delta_t: int, end: int,
) -> train.TrainState:  # fmt: skip
    init = functools.partial(steps.init, sparsity=sparsity, delta_t=delta_t, end=end)
    return jax.vmap(lambda k: init(params, key=k))(keys)


def tickets(s: _Setup) -> dict[str, Any]:
    """``cfg.tickets`` RigL tickets at once (vmapped; sharded) against one after another."""
    cfg = s.cfg
    n, length = cfg.tickets, cfg.ticket_steps
    steps = _engine_steps(s)
    keys = jax.random.split(jax.random.key(2), n)
    state = _stacked(steps, s.params, keys, sparsity=cfg.sparsity, delta_t=cfg.ticket_delta_t,
                     end=NEVER)  # fmt: skip
    outer = jax.vmap(masks.ones)(state.params)
    one_state = jax.tree.map(lambda a: a[0], state)
    one_outer = masks.ones(s.params)
    chunk = functools.partial(train.train_chunk, steps, length=length, batch_size=BATCH)
    key, start = jax.random.key(0), jnp.int32(0)
    fns: dict[str, Fn] = {
        "sequential": functools.partial(chunk, one_state, one_outer, None, s.x, s.y, key, start),
        "vmap": functools.partial(chunk, state, outer, None, s.x, s.y, key, start, tickets=True),
    }
    n_dev = jax.device_count()
    for d in sorted({d for d in (min(os.cpu_count() or 1, n_dev), n_dev) if 1 < d and n % d == 0}):
        mesh = train.ticket_mesh(jax.devices()[:d])
        st_d, outer_d = train.shard_tickets((state, outer), mesh)
        x, y = jax.device_put((s.x, s.y), NamedSharding(mesh, P()))
        fns[f"shard{d}"] = functools.partial(
            chunk, st_d, outer_d, None, x, y, key, start, tickets=True
        )
    times = engine._interleaved(fns, cfg.ticket_reps)
    rates = {name: (1 if name == "sequential" else n) * length / t for name, t in times.items()}
    best = max((k for k in rates if k != "sequential"), key=rates.__getitem__)
    return {
        "tickets": n,
        "steps_per_chunk": length,
        "delta_t": cfg.ticket_delta_t,
        "update_steps_in_chunk": len(range(cfg.ticket_delta_t, length, cfg.ticket_delta_t)),
        "ticket_steps_per_s": rates,
        "speedup_vs_sequential": {
            k: r / rates["sequential"] for k, r in rates.items() if k != "sequential"
        },
        "best": best,
        "best_speedup": rates[best] / rates["sequential"],
    }


def _target(value: float, target: float) -> dict[str, Any]:
    return {"value": value, "target": target, "met": value <= target}


def run(cfg: Config = FULL) -> dict[str, Any]:
    """Every measurement and the machine it ran on; the JSON-ready dict :func:`main` prints."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"machine": engine.machine(), "config": dataclasses.asdict(cfg)}
    s = _Setup(cfg)
    _log(f"step overhead: {cfg.steps} steps a chunk")
    out["step"] = step_overhead(s)
    _log(f"tickets: {cfg.tickets} RigL tickets, {cfg.ticket_steps} steps a chunk")
    out["tickets"] = tickets(s)
    ratio = out["step"]["over_dense_time"]
    out["targets"] = {
        "drop_in_non_update_over_dense": _target(ratio["drop_in_non_update"], 1.05),
        "engine_non_update_over_dense": _target(ratio["engine_non_update"], 1.05),
        "drop_in_update_over_dense": _target(ratio["drop_in_update"], 2.5),
        "engine_update_over_dense": _target(ratio["engine_update"], 2.5),
    }
    out["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.sparse_training [--smoke]``: print the JSON object."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: every code path")
    args = parser.parse_args(argv)
    train.use_host_devices(max(os.cpu_count() or 1, 8))  # sharded figures for 8 host devices too
    print(json.dumps(run(SMOKE if args.smoke else FULL), indent=2))


if __name__ == "__main__":
    main()
