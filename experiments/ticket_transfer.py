r"""One ticket to win them all (Morcos et al. 2019): do lottery tickets transfer across tasks?

Tickets are found by iterative magnitude pruning (IMP, :func:`jaxprune.sweep.run_levels`:
``large_final``, rewinding to θ_k with ``--rewind-iteration k``) twice, per seed:

* on the **source** task with the source optimizer (``--source``, ``--optimizer``, ``--lr``);
* on the **target** task with the target optimizer (``--target``, ``--target-optimizer``,
  ``--target-lr``; by default the source's).

Then, at every level ℓ ≥ 1, ONE ticket batch (one vmapped program, :func:`jaxprune.train.fit`
with ``tickets=True``) trains on the target task with the target optimizer, per seed:

* ``transferred`` — the source ticket: the source mask and the source θ_k
  (:func:`jaxprune.transfer.transplant`); the output layer (``--output-layer``) is fresh — the
  target network's own θ₀ with a random mask at the source layer's density — when the class
  counts differ, or always with ``--fresh always`` (different classes with equal counts);
* ``target`` — the ticket found on the target itself: its mask and the target θ_k;
* ``random`` — a random mask with the transferred ticket's per-layer kept counts
  (:func:`jaxprune.transfer.random_like`) on the target θ_k.

Morcos et al.'s finding: transferred tickets do about as well as the target's own
(``transferred ≈ target``) and far better than random masks (``≫ random``) at high sparsity —
better when found on larger data. The summary says, per density, whether that held here.

Rows (one per ticket and level, ``part = "transfer"``): ``variant``, ``seed``, ``level``,
``density`` (of the prunable weights), final / early-stop test accuracy and the other columns of
:func:`jaxprune.sweep.history_columns`. Each level is one committed unit of the run's
:class:`jaxprune.results.Store` (``transfer_level_LLL``), so a killed run started again resumes at
the first unfinished level; the two IMP runs resume on their own (``source/``, ``target/``) and
their rows are copied once finished (``part = "imp"``: each ticket on its own task).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits 0–4 → digits 5–9 (fresh output layer), LeNet-300-100, 12 levels at fc 30% /
  out 15% (down to ≈ 1.5%), 600 iterations, late rewinding to 50, 3 seeds: a few minutes on 2
  CPU cores. ``python -m experiments.ticket_transfer``.
* ``permuted`` — digits → digits with one fixed pixel permutation (the same labels; the output
  layer is transferred).
* ``optimizer`` — digits with Adam (1.2e-3) → digits with SGD (0.05, momentum 0.9).
* ``mnist_fashion`` — MNIST → Fashion-MNIST, LeNet-300-100, fc 20% / out 10%, 15 levels,
  20,000 iterations, rewind to 500 (not measured: a GPU run).
* ``cifar10_cifar100`` — CIFAR-10 → CIFAR-100 (fresh 100-way output layer), Conv-4, Adam 3e-4,
  conv 10% / fc 20% / out 10%, 15 levels, 25,000 iterations, rewind to 1,000 (a GPU run).

mnist, fashion_mnist, cifar10 and cifar100 must be prepared offline first: on a connected machine
run ``tfds build <name> --file_format=array_record``, copy the tensorflow_datasets folder here
and pass ``--data-dir`` (a missing dataset stops the run before training, saying so).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxprune import data, masks, models, plots, results, select, sweep, tickets, train, transfer

from . import _imp, _study

STUDY = "ticket_transfer"
VARIANTS = ("transferred", "target", "random")
"""The tickets of every level's batch, in this order per seed."""
FRESH = ("auto", "always")
"""``--fresh``: a fresh output layer when the class counts differ, or always."""
IMAGE_SETS = tuple(n for n in data.names() if n not in data.TEXT_SETS)
"""The datasets a task is made from (:func:`jaxprune.data.task`)."""
ROOT_KEY = 20190606
"""Seed of the run's keys (Morcos et al., NeurIPS 2019): tickets, data order, transfer draws."""
CLOSE = 0.02
"""Transferred counts as ≈ the target-found ticket when its mean accuracy is at most 2 points
below it (or above it)."""
FAR = 0.02
"""Transferred counts as ≫ random when its mean accuracy is more than 2 points above it."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a transfer run; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    source: str = "digits:0-4"
    target: str = "digits:5-9"
    model: str = "lenet300_100"
    levels: int = 12
    rates: tuple[tuple[str, float], ...] = (("out", 0.15),)
    default_rate: float = 0.3
    iterations: int = 600
    batch_size: int = 60
    eval_every: int = 50
    seeds: int = 3
    rewind_iteration: int = 50
    optimizer: str = "adam"
    lr: float = 1.2e-3
    target_optimizer: str | None = None
    target_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    fresh: str = "auto"
    output_layer: str = r"\['out'\]"
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "source": "task the source tickets are found on: a dataset of "
    f"{IMAGE_SETS}, optionally ':a-b' (classes a..b, relabelled 0..) or ':permuted' (one fixed "
    "pixel permutation), e.g. 'digits:0-4'",
    "target": "task the tickets are transferred to (as --source), e.g. 'digits:5-9'",
    "levels": "pruning levels after the dense run (at least 1: level ℓ's tickets are transferred)",
    "rates": "per-layer rates by path regex, e.g. 'out=0.1,conv=0.1' (fraction of the remaining)",
    "default_rate": "rate of every prunable layer no pattern in --rates matches",
    "iterations": "training steps of the dense runs and of every level (counted from θ₀)",
    "rewind_iteration": "late rewinding: every ticket starts from θ_k, the dense weights at step k",
    "optimizer": f"one of {_imp.OPTIMIZERS}: the optimizer of the source IMP run (and of the "
    "target's unless --target-optimizer)",
    "lr": "learning rate of the source IMP run (and of the target's unless --target-lr)",
    "target_optimizer": f"one of {_imp.OPTIMIZERS}: the optimizer of the target IMP run and of "
    "every transfer batch",
    "target_lr": "learning rate on the target task (default: --lr)",
    "momentum": "SGD momentum (either optimizer 'sgd')",
    "weight_decay": "coupled L2 weight decay, added to the gradient (0 = none)",
    "fresh": f"one of {FRESH}: a fresh output layer (the target's θ₀, a random mask at the "
    "source layer's density) when the class counts differ, or always",
    "output_layer": "regex of the output layer's leaf paths (what --fresh re-initialises)",
    "data_dir": "tensorflow-datasets folder for mnist/fashion_mnist/cifar10/cifar100 tasks",
}


def quick() -> Config:
    """digits 0–4 → 5–9, LeNet-300-100, fresh output layer, 12 levels, 3 seeds: a few minutes."""
    return Config(preset="quick", fresh="always")


def permuted() -> Config:
    """digits → digits with permuted pixels (same labels: the output layer is transferred)."""
    return Config(preset="permuted", source="digits", target="digits:permuted")


def optimizer_preset() -> Config:
    """digits with Adam → digits with SGD (momentum 0.9): a transfer across optimizers."""
    return Config(
        preset="optimizer", source="digits", target="digits", target_optimizer="sgd",
        target_lr=0.05,
    )  # fmt: skip


def mnist_fashion() -> Config:
    """MNIST → Fashion-MNIST, LeNet-300-100 (needs both prepared; a GPU run)."""
    return Config(
        preset="mnist_fashion", source="mnist", target="fashion_mnist", levels=15,
        rates=(("out", 0.1),), default_rate=0.2, iterations=20_000, eval_every=500,
        rewind_iteration=500,
    )  # fmt: skip


def cifar10_cifar100() -> Config:
    """CIFAR-10 → CIFAR-100, Conv-4, Adam 3e-4 (needs both prepared; a GPU run)."""
    return Config(
        preset="cifar10_cifar100", source="cifar10", target="cifar100", model="conv4",
        levels=15, rates=(("conv", 0.1), ("out", 0.1)), default_rate=0.2, iterations=25_000,
        eval_every=1000, rewind_iteration=1000, lr=3e-4,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "permuted": permuted,
    "optimizer": optimizer_preset,
    "mnist_fashion": mnist_fashion,
    "cifar10_cifar100": cifar10_cifar100,
}


# ---- settings ----------------------------------------------------------------------------------


def _check_task(name: str, spec: str) -> None:
    """The syntax of a task (:func:`jaxprune.data.task` checks the class ranges when loading)."""
    base, *views = spec.split(":")
    if base not in IMAGE_SETS:
        _study.fail(name, f"a task 'dataset[:a-b][:permuted]' on one of {IMAGE_SETS}", spec)
    for view in views:
        if view != "permuted" and not re.fullmatch(r"\d+-\d+", view):
            _study.fail(name, "a task 'dataset', 'dataset:a-b' (a class range) or "
                        "'dataset:permuted'", spec)  # fmt: skip


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the flag of any bad setting, before anything is loaded (the
    settings that need the data — input shapes, batch size, patterns — are :func:`check_tasks`)."""
    _study.check_finite(cfg)
    _study.check_at_least(cfg, 1, "levels", "iterations", "batch_size", "eval_every", "seeds")
    _study.check_at_least(cfg, 0, "rewind_iteration")
    if cfg.rewind_iteration >= cfg.iterations:
        _study.fail(
            "rewind_iteration", f"below --iterations ({cfg.iterations})", cfg.rewind_iteration
        )
    _check_task("source", cfg.source)
    _check_task("target", cfg.target)
    for name in ("optimizer", "target_optimizer"):
        if getattr(cfg, name) not in (*_imp.OPTIMIZERS, None):
            _study.fail(name, f"one of {_imp.OPTIMIZERS}", getattr(cfg, name))
    for name in ("lr", "target_lr"):
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            _study.fail(name, "> 0", getattr(cfg, name))
    if (cfg.source, *training(cfg, "source")) == (cfg.target, *training(cfg, "target")):
        _study.fail(
            "target", "another task than --source, or the same with another optimizer or "
            "learning rate (else the transferred ticket is the target's own)", cfg.target,
        )  # fmt: skip
    for name in ("momentum", "weight_decay"):
        if not getattr(cfg, name) >= 0:
            _study.fail(name, "≥ 0", getattr(cfg, name))
    _study.check_rates(cfg, "rates")
    if not 0.0 <= cfg.default_rate < 1.0:
        _study.fail("default_rate", "a rate in [0, 1)", cfg.default_rate)
    image_models = tuple(m for m in _study.PLAIN_MODELS if m not in _study.TOKEN_MODELS)
    if cfg.model not in image_models:
        _study.fail("model", f"an image model without batch norm, one of {image_models}",
                    cfg.model)  # fmt: skip
    if cfg.fresh not in FRESH:
        _study.fail("fresh", f"one of {FRESH}", cfg.fresh)
    try:
        re.compile(cfg.output_layer)
    except re.error as e:
        raise ValueError(f"--output-layer {cfg.output_layer!r} is not a valid regular "
                         f"expression (Python re): {e}.") from None  # fmt: skip
    reads = [s for s in (cfg.source, cfg.target) if s.partition(":")[0] in data.TFDS_SETS]
    if cfg.data_dir is not None and not reads:
        _study.fail("data_dir", "unset: both tasks are built into jaxprune and read no folder",
                    cfg.data_dir)  # fmt: skip


class Tasks(NamedTuple):
    """The two datasets of a run."""

    source: data.Dataset
    target: data.Dataset


def load_tasks(cfg: Config) -> Tasks:
    """Both tasks (:func:`jaxprune.data.task`), checked against each other (:func:`check_tasks`);
    a missing prepared dataset stops here, before anything is written."""
    out = []
    for name in ("source", "target"):
        spec = getattr(cfg, name)
        try:
            out.append(data.task(spec, data_dir=cfg.data_dir))
        except data.DatasetNotAvailableError:
            raise
        except ValueError as e:
            raise ValueError(f"{_study.flag(name)}: {e}") from None
    tasks = Tasks(*out)
    check_tasks(cfg, tasks)
    return tasks


def check_tasks(cfg: Config, tasks: Tasks) -> None:
    """The settings that need the data: equal input shapes (a transfer has no adapter), the batch
    size against both training splits, and the ``--output-layer`` and ``--rates`` patterns each
    matching a layer."""
    src, tgt = tasks
    if src.input_shape != tgt.input_shape:
        raise ValueError(
            f"--source {cfg.source!r} has inputs of shape {src.input_shape} but --target "
            f"{cfg.target!r} has {tgt.input_shape}: a transfer between different input shapes "
            "needs an adapter (a layer mapping the target's inputs to the source's), which this "
            "study does not build; choose two tasks with the same input shape."
        )
    for name, ds in (("source", src), ("target", tgt)):
        n = len(ds.train.y)
        if cfg.batch_size > n:
            _study.fail("batch_size", f"at most the {n} training examples of --{name} "
                        f"{getattr(cfg, name)!r}", cfg.batch_size)  # fmt: skip
    params = networks(cfg, tgt, 1).theta0
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    _study.check_patterns_match("output_layer", [cfg.output_layer], paths, "parameter")
    flags = jax.tree_util.tree_flatten_with_path(masks.is_prunable(params))[0]
    prunable = [jax.tree_util.keystr(p) for p, f in flags if f]
    _study.check_patterns_match("rates", [p for p, _ in cfg.rates], prunable, "prunable layer")


def fresh_patterns(cfg: Config, tasks: Tasks) -> tuple[str, ...]:
    """The ``fresh`` regexes of :func:`jaxprune.transfer.transplant`: the output layer when the
    class counts differ or ``--fresh always``, else none.

    Example:
      >>> from jaxprune import data
      >>> ds = data.load("synthetic")
      >>> fresh_patterns(quick(), Tasks(ds, ds)) == (quick().output_layer,)  # --fresh always
      True
      >>> fresh_patterns(permuted(), Tasks(ds, ds))  # the same classes: nothing fresh
      ()
    """
    differ = tasks.source.num_classes != tasks.target.num_classes
    return (cfg.output_layer,) if differ or cfg.fresh == "always" else ()


# ---- the run -----------------------------------------------------------------------------------


class Nets(NamedTuple):
    """One task's networks: the pure apply function and θ₀ stacked per seed."""

    apply_fn: Any
    theta0: Any


def networks(cfg: Config, ds: data.Dataset, seeds: int) -> Nets:
    """``cfg.model`` for ``ds`` per seed (seed ``s`` builds the same hidden layers on every task
    with the same input shape)."""
    nets = [
        models.functional(
            models.build(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s)
        )
        for s in range(seeds)
    ]
    return Nets(nets[0][0], train.stack([n[1] for n in nets]))


def training(cfg: Config, side: str) -> tuple[str, float]:
    """The optimizer and learning rate of ``side`` (``"source"`` or ``"target"``): the target's
    are ``--optimizer`` / ``--lr`` unless ``--target-optimizer`` / ``--target-lr`` are given.

    Example:
      >>> training(optimizer_preset(), "source"), training(optimizer_preset(), "target")
      (('adam', 0.0012), ('sgd', 0.05))
    """
    if side == "target":
        return cfg.target_optimizer or cfg.optimizer, cfg.target_lr or cfg.lr
    return cfg.optimizer, cfg.lr


def side_config(cfg: Config, side: str) -> _imp.Config:
    """The :class:`experiments._imp.Config` of one side's training (its optimizer)."""
    opt, lr = training(cfg, side)
    return _imp.Config(
        iterations=cfg.iterations, optimizer=opt, lr=lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip


def keys() -> tuple[jax.Array, jax.Array, jax.Array]:
    """The IMP tickets' key, the data order's key, the transfer draws' key."""
    k1, k2, k3 = jax.random.split(jax.random.key(ROOT_KEY), 3)
    return k1, k2, k3


def imp(
    cfg: Config, side: str, ds: data.Dataset, nets: Nets, folder: Path, progress: bool
) -> sweep.Sweep:
    """IMP on one side's task with its optimizer: one ``large_final`` / rewind ticket per seed
    (:func:`jaxprune.sweep.run_levels`, resumable by level, in ``folder``)."""
    tickets_key, data_key, _ = keys()
    table = tickets.table(
        [tickets.Ticket(s, "large_final", "rewind", "zero") for s in range(cfg.seeds)],
        key=tickets_key,
    )
    one = jax.tree.map(lambda p: p[0], nets.theta0)
    rates = select.rates_by_pattern(one, dict(cfg.rates), default=cfg.default_rate)
    k = cfg.rewind_iteration
    spec = getattr(cfg, side)
    opt, lr = training(cfg, side)
    return sweep.run_levels(
        folder, table, nets.apply_fn, nets.theta0, ds,
        optimizer=_imp.optimizer(side_config(cfg, side)), levels=cfg.levels, rates=rates,
        iterations=cfg.iterations - k, dense_iterations=cfg.iterations, rewind_iteration=k,
        batch_size=cfg.batch_size, eval_every=cfg.eval_every, key=data_key,
        columns={"part": "imp", "side": side, "task": spec},
        config={"study": STUDY, "side": side, "task": spec, "model": cfg.model,
                "optimizer": opt, "lr": lr,
                "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        progress=progress, desc=f"{side} IMP ({spec}): levels",
    )  # fmt: skip


def batch(
    cfg: Config, level: int, src: Mapping[str, Any], tgt: Mapping[str, Any], theta0: Any,
    fresh: Sequence[str],
) -> tuple[Any, Any, list[str], list[int]]:  # fmt: skip
    """The level's ticket batch: per seed ``transferred``, ``target``, ``random`` (params with
    the pruned weights zeroed, masks, variant labels, seeds), built in one compiled program.

    ``src`` / ``tgt``: :func:`jaxprune.sweep.load_level` of the two IMP runs (one ticket per
    seed); ``theta0``: the target networks' θ₀ per seed (the fresh output layer's values).
    Seed ``s`` draws the fresh layer's mask from the first half of ``split(fold_in(fold_in(key,
    level), s))`` and the random mask from the second.
    """
    _, _, transfer_key = keys()
    level_key = jax.random.fold_in(transfer_key, level)
    seed_keys = jnp.stack([jax.random.fold_in(level_key, s) for s in range(cfg.seeds)])
    params, mask = _variants(
        src["mask"], src["theta_k"], tgt["mask"], tgt["theta_k"], theta0, seed_keys,
        fresh=tuple(fresh),
    )  # fmt: skip
    labels = [v for _ in range(cfg.seeds) for v in VARIANTS]
    seeds = [s for s in range(cfg.seeds) for _ in VARIANTS]
    return params, mask, labels, seeds


@functools.partial(jax.jit, static_argnames="fresh")
def _variants(
    src_mask: Any, src_theta: Any, tgt_mask: Any, tgt_theta: Any, theta0: Any, keys: jax.Array,
    *, fresh: tuple[str, ...],
) -> tuple[Any, Any]:  # fmt: skip
    def one(sm: Any, st: Any, tm: Any, tt: Any, t0: Any, key: jax.Array) -> tuple[Any, Any]:
        k_fresh, k_random = jax.random.split(key)
        moved_p, moved_m = transfer.transplant(sm, st, t0, fresh=fresh or None, key=k_fresh)
        random_m = transfer.random_like(moved_m, k_random)
        ps, ms = (moved_p, tt, tt), (moved_m, tm, random_m)
        return tuple(map(masks.apply, ps, ms)), ms

    ps, ms = jax.vmap(one)(src_mask, src_theta, tgt_mask, tgt_theta, theta0, keys)

    def interleave(*trees: Any) -> Any:  # [seeds] × variants → [seeds · variants], seed-major
        return jax.tree.map(lambda *a: jnp.stack(a, 1).reshape(-1, *a[0].shape[1:]), *trees)

    return interleave(*ps), interleave(*ms)


@functools.partial(jax.jit, static_argnames="steps")
def _init_states(steps: train.Steps, params: Any) -> train.TrainState:
    return jax.vmap(steps.init)(params)


def transfer_level(
    cfg: Config, level: int, tasks: Tasks, nets: Mapping[str, Nets], folders: Mapping[str, Path],
    fresh: Sequence[str], progress: bool,
) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    """Train level ``level``'s ticket batch on the target task; its rows and ticket-steps."""
    src = sweep.load_level(folders["source"], level, nets["source"].theta0)
    tgt = sweep.load_level(folders["target"], level, nets["target"].theta0)
    params, mask, labels, seeds = batch(cfg, level, src, tgt, nets["target"].theta0, fresh)
    k = cfg.rewind_iteration
    side = side_config(cfg, "target")
    steps = train.make_steps(nets["target"].apply_fn, _imp.optimizer(side, start=k))
    n = len(labels)
    iterations = cfg.iterations - k
    _, data_key, _ = keys()
    ds = tasks.target
    _, hist = train.fit(
        steps, _init_states(steps, params), mask, ds.train, ds.val, ds.test,
        iterations=iterations, batch_size=cfg.batch_size,
        eval_every=min(cfg.eval_every, iterations), data_key=jax.random.fold_in(data_key, 1),
        tickets=True, mesh=train.mesh_for(n), progress=progress,
        desc=f"level {level}/{cfg.levels} transfer ({n} tickets)", check_finite=False,
    )  # fmt: skip
    density = sweep.prunable_density(mask)
    rows = [
        {
            "part": "transfer", "study": STUDY, "preset": cfg.preset, "source": cfg.source,
            "target": cfg.target, "model": cfg.model, "variant": labels[i], "seed": seeds[i],
            "level": level, "density": float(density[i]), "fresh_output": bool(fresh),
            "rewind_iteration": k, "iterations": iterations,
            **sweep.history_columns(hist, i, k),
        }
        for i in range(n)
    ]  # fmt: skip
    return rows, n * iterations


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Both IMP runs, then every transfer level not yet committed; returns the run folder."""
    validate(cfg)
    tasks = load_tasks(cfg)
    fresh = fresh_patterns(cfg, tasks)
    store = results.Store(results.run_dir(out, STUDY, cfg.to_json()), cfg.to_json())
    folders = {"source": store.path / "source", "target": store.path / "target"}
    nets = {side: networks(cfg, ds, cfg.seeds) for side, ds in zip(folders, tasks, strict=True)}
    with train.count_compiles() as compiles:
        start = time.perf_counter()
        train_s, ticket_steps = 0.0, 0
        for side, ds in zip(folders, tasks, strict=True):
            done = imp(cfg, side, ds, nets[side], folders[side], progress)
            train_s += done.timings["train"]
            ticket_steps += int(done.timings["ticket_steps"])
            if not store.has(f"imp_{side}"):
                store.write(f"imp_{side}", done.rows)
        todo = [lv for lv in range(1, cfg.levels + 1) if not store.has(_unit(lv))]
        bar = tqdm(todo, desc=f"{STUDY}: transfer levels", unit="level", disable=not progress)
        for level in bar:
            t0, c0 = time.perf_counter(), compiles.seconds
            rows, steps = transfer_level(cfg, level, tasks, nets, folders, fresh, progress)
            train_s += time.perf_counter() - t0 - (compiles.seconds - c0)
            ticket_steps += steps
            store.write(_unit(level), rows)
        store.write_csv()
        total = time.perf_counter() - start
    timings = {
        "total": total, "compile": compiles.seconds, "programs": compiles.programs,
        "train": train_s, "other": total - compiles.seconds - train_s,
        "ticket_steps": ticket_steps,
    }  # fmt: skip
    (store.path / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


def _unit(level: int) -> str:
    return f"transfer_level_{level:03d}"


# ---- report ------------------------------------------------------------------------------------


def _cell(s: Mapping[str, Any] | None, value: str) -> str:
    if s is None or s.get(f"{value}_mean") is None:
        return "—"
    mean, std = 100 * s[f"{value}_mean"], 100 * s[f"{value}_std"]
    return f"{mean:.1f}" if s[f"{value}_n"] == 1 else f"{mean:.1f} ± {std:.1f}"


def transfer_table(rows: Sequence[Mapping[str, Any]], value: str = "early_stop_test_acc") -> str:
    """Per level: the density and each variant's test accuracy in % (mean ± std over seeds).

    Example:
      >>> rows = [{"part": "transfer", "level": 1, "density": 0.5, "variant": v, "acc": a}
      ...         for v, a in (("transferred", 0.9), ("transferred", 0.8), ("target", 0.9),
      ...                      ("random", 0.7))]
      >>> print(transfer_table(rows, "acc"))
      | level | density | transferred | target | random |
      |---:|---:|---:|---:|---:|
      | 1 | 0.500 | 85.0 ± 5.0 | 90.0 | 70.0 |
    """
    mine = [r for r in rows if r.get("part") == "transfer"]
    stats = {
        (s["level"], s["variant"]): s
        for s in results.summarize(mine, ["level", "variant"], [value, "density"])
    }
    lines = ["| level | density | " + " | ".join(VARIANTS) + " |",
             "|---:|---:|" + "---:|" * len(VARIANTS)]  # fmt: skip
    for level in sorted({r["level"] for r in mine}):
        d = stats.get((level, "transferred"))
        density = "—" if d is None or d["density_mean"] is None else f"{d['density_mean']:.3f}"
        cells = [_cell(stats.get((level, v)), value) for v in VARIANTS]
        lines.append(f"| {level} | {density} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Mapping[str, Any]], value: str = "early_stop_test_acc") -> list[str]:
    """Per level, whether Morcos et al.'s finding held: ``transferred ≈ target`` (at most
    :data:`CLOSE` below it) and ``transferred ≫ random`` (more than :data:`FAR` above it), in
    words, from the mean accuracies over seeds; then one line over all levels.

    Example:
      >>> rows = [{"part": "transfer", "level": lv, "density": d, "variant": v, "acc": a}
      ...         for lv, d, v, a in ((1, 0.5, "transferred", 0.90), (1, 0.5, "target", 0.91),
      ...                             (1, 0.5, "random", 0.89), (2, 0.2, "transferred", 0.88),
      ...                             (2, 0.2, "target", 0.89), (2, 0.2, "random", 0.70))]
      >>> for line in verdicts(rows, "acc"): print(line)
      density 0.500: transferred 90.0 vs target 91.0 (≈ held), vs random 89.0 (≫ did NOT hold).
      density 0.200: transferred 88.0 vs target 89.0 (≈ held), vs random 70.0 (≫ held).
      Morcos et al.'s finding (transferred ≈ target ≫ random) held at density 0.200; it did NOT hold at density 0.500.
    """
    mine = [r for r in rows if r.get("part") == "transfer"]
    mean = {
        (s["level"], s["variant"]): s[f"{value}_mean"]
        for s in results.summarize(mine, ["level", "variant"], [value])
    }
    dens = {
        s["level"]: s["density_mean"]
        for s in results.summarize(
            [r for r in mine if r["variant"] == "transferred"], ["level"], ["density"]
        )
    }
    out: list[str] = []
    held: list[str] = []
    failed: list[str] = []
    for level in sorted(dens):
        t, g, r = (mean.get((level, v)) for v in VARIANTS)
        if t is None or g is None or r is None:
            continue
        close, far = t >= g - CLOSE, t > r + FAR
        where = f"{dens[level]:.3f}"
        (held if close and far else failed).append(where)
        out.append(
            f"density {where}: transferred {100 * t:.1f} vs target {100 * g:.1f} "
            f"(≈ {'held' if close else 'did NOT hold'}), vs random {100 * r:.1f} "
            f"(≫ {'held' if far else 'did NOT hold'})."
        )
    if out:
        parts = []
        if held:
            parts.append(f"held at density {', '.join(held)}")
        if failed:
            parts.append(f"did NOT hold at density {', '.join(failed)}")
        out.append("Morcos et al.'s finding (transferred ≈ target ≫ random) " + "; it ".join(parts)
                   + ".")  # fmt: skip
    return out


def imp_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Each IMP run's own tickets on their own task (level 0: the dense network), % mean ± std."""
    mine = [r for r in rows if r.get("part") == "imp"]
    stats = {
        (s["level"], s["side"]): s
        for s in results.summarize(mine, ["level", "side"], ["early_stop_test_acc", "density"])
    }
    lines = ["| level | density | source ticket on source | target ticket on target |",
             "|---:|---:|---:|---:|"]  # fmt: skip
    for level in sorted({r["level"] for r in mine}):
        d = stats.get((level, "source"))
        density = "—" if d is None else f"{d['density_mean']:.3f}"
        cells = [_cell(stats.get((level, side)), "early_stop_test_acc")
                 for side in ("source", "target")]  # fmt: skip
        lines.append(f"| {level} | {density} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[Mapping[str, Any]], cfg: Config) -> str:
    """The transfer tables (early-stop and final accuracy), the verdict, the IMP runs' own table."""
    fresh = next((r["fresh_output"] for r in rows if r.get("part") == "transfer"), None)
    (s_opt, s_lr), (t_opt, t_lr) = training(cfg, "source"), training(cfg, "target")
    head = (
        f"# Ticket transfer — preset `{cfg.preset}`: `{cfg.source}` ({s_opt} {s_lr:g}) → "
        f"`{cfg.target}` ({t_opt} {t_lr:g})\n\n"
        f"{cfg.model}, {cfg.seeds} seeds (mean ± std, test accuracy in %), {cfg.iterations} "
        f"iterations, rewind to iteration {cfg.rewind_iteration}; output layer "
        f"{'fresh' if fresh else 'transferred'}.\n"
    )
    return "\n".join([
        head,
        "## Transfer: test accuracy at the early-stop iteration (minimum validation loss)\n",
        transfer_table(rows, "early_stop_test_acc"),
        "\n## Transfer: test accuracy at the end of training\n",
        transfer_table(rows, "final_test_acc"),
        f"\n## Morcos et al.'s finding (≈: at most {100 * CLOSE:g} points below the target-found "
        f"ticket; ≫: more than {100 * FAR:g} points above random; early-stop accuracy)\n",
        "\n".join(f"- {line}" for line in verdicts(rows)) or "- (no transfer level finished)",
        "\n## The IMP runs on their own tasks (early-stop test accuracy)\n",
        imp_table(rows),
    ]) + "\n"  # fmt: skip


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the accuracy-vs-density plots (one line per variant)."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    mine = [r for r in rows if r.get("part") == "transfer"]
    s_opt, t_opt = training(cfg, "source")[0], training(cfg, "target")[0]
    common: dict[str, Any] = {
        "x": "density", "series": "variant", "log_x": True, "invert_x": True, "xlabel": "density",
        "title": f"Ticket transfer {cfg.source} ({s_opt}) → {cfg.target} ({t_opt})",
    }  # fmt: skip
    out: dict[str, Path] = {}
    if mine:
        out["accuracy"] = plots.line_plot(
            mine, y="early_stop_test_acc", path=folder / "accuracy.png",
            ylabel="test accuracy (early stop)", **common,
        )  # fmt: skip
        out["final_accuracy"] = plots.line_plot(
            mine, y="final_test_acc", path=folder / "final_accuracy.png",
            ylabel="test accuracy (end of training)", **common,
        )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study=STUDY, help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
