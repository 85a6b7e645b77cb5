"""What the two iterative-magnitude-pruning studies share: their config, presets and the glue to
:func:`jaxprune.sweep.run_levels` (``lottery_ticket`` and ``deconstructing``).

A run is a :class:`jaxprune.tickets.Table` of tickets — ``(seed, criterion, kept reset, pruned
value, source)`` — that the library's level driver prunes and trains for ``levels`` rounds,
committing one row per ticket and level and resuming where a killed run stopped. Every level
prunes the per-layer rates of each ticket's *remaining* weights, rewinds to θ₀ (or to θ_k with
``--rewind-iteration k``), records the untrained accuracy with the ticket's own reset and with
signed-constant weights (Zhou et al.'s supermask), then trains ``iterations − k`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import optax

from jaxprune import criteria, data, masks, models, reset, results, select, sweep, tickets, train

from . import _study

CONTROLS = ("reinit", "random_mask")
GRIDS = tickets.LAYOUTS
PAPER_KEPT = (
    "rewind", "reinit", "signed_reinit", "reshuffle", "signed_reshuffle", "constant",
    "signed_constant",
)  # fmt: skip
"""The kept-weight resets of Zhou et al.'s grid (without the ``_rescaled`` forms and fine-tuning)."""
SIGN_PRESERVING = ("rewind", "signed_reinit", "signed_reshuffle", "signed_constant")
ROOT_KEY = 20190503
"""Seed of every IMP run's keys: ``split(key(ROOT_KEY))`` gives the tickets' and the data order's."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a study; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "lenet300_100"
    val_size: int | None = None
    levels: int = 5
    rates: tuple[tuple[str, float], ...] = (("out", 0.1),)
    default_rate: float = 0.2
    iterations: int = 1000
    batch_size: int = 60
    lr: float = 1.2e-3
    eval_every: int = 100
    seeds: int = 2
    rewind_iteration: int = 0
    criteria: tuple[str, ...] = ("large_final",)
    kept: tuple[str, ...] = ("rewind",)
    pruned: tuple[str, ...] = ("zero",)
    grid: str = "slices"
    controls: tuple[str, ...] = ()
    supermask_iterations: int = 0
    supermask_lr: float = 100.0
    supermask_batch_size: int = 250
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rates"] = [list(r) for r in self.rates]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


HELP = {
    **_study.HELP,
    "levels": "pruning levels after the dense run (0 = dense only)",
    "rates": "per-layer rates by path regex, e.g. 'out=0.1,conv=0.1' (fraction of the remaining)",
    "default_rate": "rate of every prunable layer no pattern in --rates matches",
    "iterations": "training steps per level",
    "lr": "Adam learning rate",
    "rewind_iteration": "late rewinding: reset kept weights to θ_k, the dense weights at step k",
    "criteria": f"comma list of mask criteria, from {criteria.names()}",
    "kept": f"comma list of kept-weight resets, from {reset.kept_names()}",
    "pruned": f"comma list of pruned-weight values, from {reset.pruned_names()}",
    "grid": "'slices': vary one of criteria/kept/pruned at a time around the first of each "
    "(the paper's ablations); 'product': every combination",
    "controls": "lottery-ticket controls: comma list of 'reinit', 'random_mask'",
    "supermask_iterations": "learned-supermask training steps (0 = skip)",
    "supermask_lr": "learned-supermask SGD learning rate (momentum 0.9)",
    "supermask_batch_size": "learned-supermask batch size",
}

# The Conv-k settings of the lottery-ticket papers (RESEARCH.md §1): per-round conv rate, Adam
# learning rate, training iterations; fc layers 20%, the output layer 10%, 20 rounds.
CIFAR_CONV = {
    "conv2": (0.1, 2e-4, 20_000),
    "conv4": (0.1, 3e-4, 25_000),
    "conv6": (0.15, 3e-4, 30_000),
}


def cifar_preset(model: str, **overrides: Any) -> Config:
    """A CIFAR-10 Conv-k preset with the papers' settings; ``overrides`` set the rest."""
    conv_rate, lr, iterations = CIFAR_CONV[model]
    return Config(
        preset=f"cifar10_{model}",
        dataset="cifar10",
        model=model,
        levels=20,
        rates=(("conv", conv_rate), ("out", 0.1)),
        default_rate=0.2,
        iterations=iterations,
        lr=lr,
        eval_every=1000,
        **overrides,
    )


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained."""
    _study.check_common(cfg)
    _study.check_at_least(cfg, 0, "levels", "supermask_iterations", "rewind_iteration")
    _study.check_at_least(cfg, 1, "supermask_batch_size")
    if cfg.rewind_iteration >= cfg.iterations:
        _study.fail(
            "rewind_iteration", f"below --iterations ({cfg.iterations})", cfg.rewind_iteration
        )
    if not cfg.supermask_lr > 0:
        _study.fail("supermask_lr", "> 0", cfg.supermask_lr)
    _study.check_rates(cfg, "rates")
    if not 0.0 <= cfg.default_rate < 1.0:
        _study.fail("default_rate", "a rate in [0, 1)", cfg.default_rate)
    _study.check_names(cfg, "criteria", criteria.names())
    _study.check_names(cfg, "kept", reset.kept_names())
    _study.check_names(cfg, "pruned", reset.pruned_names())
    _study.check_names(cfg, "controls", CONTROLS, empty_ok=True)
    if cfg.grid not in GRIDS:
        _study.fail("grid", f"one of {GRIDS}", cfg.grid)


def keys() -> tuple[jax.Array, jax.Array]:
    """The tickets' key and the data order's key of every IMP run."""
    tickets_key, data_key = jax.random.split(jax.random.key(ROOT_KEY))
    return tickets_key, data_key


class Setup(NamedTuple):
    """The data and the per-seed networks of a run."""

    ds: data.Dataset
    apply_fn: Any
    theta0: Any  # stacked per seed
    rates: Any  # per-leaf rates (select.rates_by_pattern)


def setup(cfg: Config) -> Setup:
    """Load the data and build the seeds; a missing dataset, a batch larger than the data or a
    ``--rates`` pattern that matches no prunable layer stops here, before anything is written."""
    ds = _study.load_data(cfg)
    nets = [
        models.functional(
            models.build(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s)
        )
        for s in range(cfg.seeds)
    ]
    prunable = jax.tree_util.tree_flatten_with_path(masks.is_prunable(nets[0][1]))[0]
    paths = [jax.tree_util.keystr(path) for path, flag in prunable if flag]
    _study.check_patterns_match("rates", [p for p, _ in cfg.rates], paths, "prunable layer")
    rates = select.rates_by_pattern(nets[0][1], dict(cfg.rates), default=cfg.default_rate)
    return Setup(ds, nets[0][0], train.stack([n[1] for n in nets]), rates)


def columns(study: str, cfg: Config, controls: Sequence[str], kept: Sequence[str]) -> list[dict]:
    """The row columns every IMP study adds per ticket (besides the driver's own)."""
    return [
        {
            "study": study, "preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model,
            "control": control, "sign_preserving": k.removesuffix("_rescaled") in SIGN_PRESERVING,
            "rewind_iteration": cfg.rewind_iteration,
        }
        for control, k in zip(controls, kept, strict=True)
    ]  # fmt: skip


def run(
    study: str,
    cfg: Config,
    table: tickets.Table,
    controls: Sequence[str],
    *,
    out: str = "runs",
    progress: bool = True,
    extra: Callable[[results.Store, Setup, bool], tuple[float, int]] | None = None,
) -> Path:
    """Run every level of ``table`` (``controls``: each ticket's ``control`` column), then
    ``extra(store, setup, progress)`` — more units of the same run, returning its training
    seconds and ticket-steps — and write ``timings.json``; returns the run folder."""
    validate(cfg)
    s = setup(cfg)
    store = results.Store(results.run_dir(out, study, cfg.to_json()), cfg.to_json())
    k = cfg.rewind_iteration
    _, data_key = keys()
    with train.count_compiles() as compiles:
        start = time.perf_counter()
        done = sweep.run_levels(
            store, table, s.apply_fn, s.theta0, s.ds, optimizer=optax.adam(cfg.lr),
            levels=cfg.levels, rates=s.rates, iterations=cfg.iterations - k,
            dense_iterations=cfg.iterations, rewind_iteration=k, batch_size=cfg.batch_size,
            eval_every=cfg.eval_every, key=data_key, supermask_acc=True,
            columns=columns(study, cfg, controls, table.kept), progress=progress,
            desc=f"{study}: levels",
        )  # fmt: skip
        more_s, more_steps = extra(store, s, progress) if extra else (0.0, 0)
        train_s = done.timings["train"] + more_s
        store.write_csv()
        total = time.perf_counter() - start
    timings = {
        "total": total, "compile": compiles.seconds, "programs": compiles.programs,
        "train": train_s, "other": total - compiles.seconds - train_s,
        "ticket_steps": done.timings["ticket_steps"] + more_steps,
    }  # fmt: skip
    (store.path / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path
