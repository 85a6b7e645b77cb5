"""Linear mode connectivity and instability (Frankle et al. 2020): when SGD noise stops mattering.

For every rewind point k of ``--rewind-iterations`` (θ_k: the full training state of one dense
run after k steps) and every level ℓ (ℓ = 0: the dense network; ℓ ≥ 1: the IMP subnetwork of
level ℓ, weights θ_k ⊙ m_ℓ), two copies train with different data orders (and augmentations) to
the end of the run, then the test error is evaluated at ``--alphas`` evenly spaced points of the
line between them. Instability = max_α err − mean of the two end errors; stable below 2%.

The IMP masks follow the paper: for each k, one IMP run that rewinds to θ_k
(:func:`jaxprune.sweep.run_levels` with ``rewind_iteration=k``, its own resumable folder
``imp/k<k>/`` in the run folder); level ℓ's mask of that run is the subnetwork analysed at k.
The dense trajectory is the one those runs share: its first k steps use the data order
``fold_in(key, 0)`` of every IMP run, so θ_k is the rewind point of IMP run k.

Every copy continues the full state at k (weights, optimizer state — momentum, step count,
schedule —, batch-norm statistics); a subnetwork starts from that state with its weights masked.
All rewind points, ``--pairs`` replicates and both copies of a level train as the tickets of one
vmapped fit; the optimizer stops updating at ``--iterations`` (:func:`jaxprune.instability.stop_after`),
so a copy spawned at k trains exactly ``iterations − k`` steps. The two data orders are the same
for every k and level (pair p uses ``split(fold_in(key, p))``): differences between rewind points
are not differences of data order. Batch-norm running statistics are interpolated with the
weights (not recomputed).

Reports: ``summary.md`` (instability, end errors and the IMP ticket's own test accuracy per level
and k), ``instability.png`` (instability against k, one line per level), ``path.png`` (error
against α, one line per k, one panel per level).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100, Adam 1.2e-3, batch 60, 600 iterations, k ∈ {0, 25, 100,
  250}, 5 levels at fc 45% / out 20% (down to 5.6% of the weights), 30 α, 2 pairs: about two
  minutes on 2 CPU cores. ``python -m experiments.instability``.
* ``cifar10_resnet20`` — open_lth's ResNet-20 recipe (RESEARCH.md §9): SGD 0.1, momentum 0.9,
  weight decay 1e-4, batch 128, 56,160 iterations (160 epochs of 351 steps) with ×0.1 at 28,080
  and 42,120, random crops (4-pixel padding) and flips on standardised pixels, global 20% per
  level for 8 levels (16.8% of the weights, the paper's ResNet-20 sparsity), k ∈ {0, 100, 500,
  2000}. Expected (paper): the dense network is stable from k ≈ 500–2000 on, not at k = 0; the
  sparse IMP subnetwork is unstable at k = 0 and becomes stable (and matches the dense accuracy)
  with late rewinding. cifar10 must be prepared offline (``--data-dir``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxprune import data, instability, masks, models, plots, results, select, sweep, tickets, train

from . import _imp, _study

ROOT_KEY = 20200712
"""Seed of every run's keys: ``split(key(ROOT_KEY))`` gives the IMP runs' and the copies' keys."""
OPTIMIZERS = _imp.OPTIMIZERS
SCOPES = _imp.SCOPES


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of an instability run; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "lenet300_100"
    val_size: int | None = None
    iterations: int = 600
    batch_size: int = 60
    optimizer: str = "adam"
    lr: float = 1.2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    augment: str = "none"
    normalize: str = "none"
    rewind_iterations: tuple[int, ...] = (0, 25, 100, 250)
    levels: int = 5
    rates: tuple[tuple[str, float], ...] = (("out", 0.2),)
    default_rate: float = 0.45
    scope: str = "layerwise"
    alphas: int = 30
    pairs: int = 2
    eval_every: int = 100
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "iterations": "training steps of the dense run, of every IMP level (minus k) and the end of "
    "every copy",
    "optimizer": f"one of {OPTIMIZERS} (sgd: momentum, coupled L2 weight decay)",
    "lr": "learning rate (before the milestones)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD's L2 weight decay, added to the gradient",
    "milestones": "steps at which the learning rate is multiplied by 0.1 (comma list)",
    "rewind_iterations": "the rewind points k (comma list): instability of the network at step k",
    "levels": "IMP levels after the dense network (0: the dense network only)",
    "rates": "per-layer rates by path regex, e.g. 'out=0.2' (fraction of the remaining weights)",
    "default_rate": "rate of every prunable layer no pattern in --rates matches",
    "scope": f"one of {SCOPES}: prune per layer or by one global threshold",
    "alphas": "evenly spaced points on the path between the copies, ends included (paper: 30)",
    "pairs": "pairs of copies per rewind point and level (replicates of the SGD noise)",
    "eval_every": "steps between the IMP runs' evaluations",
}


def quick() -> Config:
    """Digits, LeNet-300-100, 4 rewind points, 5 levels down to 5.6%: about two minutes."""
    return Config(preset="quick")


EPOCH = 45_000 // 128
"""Steps per CIFAR epoch at batch 128: 351 (45,000 training examples after the 5,000 of
validation; :func:`jaxprune.train.fit` drops the last partial batch). open_lth's 391 counts the
full 50,000."""


def cifar10_resnet20() -> Config:
    """open_lth's ResNet-20 on CIFAR-10 (RESEARCH.md §9), k ∈ {0, 100, 500, 2000}."""
    return Config(
        preset="cifar10_resnet20", dataset="cifar10", model="resnet20", iterations=160 * EPOCH,
        batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
        milestones=(80 * EPOCH, 120 * EPOCH), augment="crop_flip", normalize="per_channel",
        rewind_iterations=(0, 100, 500, 2000), levels=8, rates=(), default_rate=0.2,
        scope="global", alphas=30, pairs=1, eval_every=2000,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "cifar10_resnet20": cifar10_resnet20,
}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained or written."""
    _study.check_common(cfg, batch_norm=cfg.model in _study.BN_MODELS)
    _study.check_at_least(cfg, 0, "levels")
    _study.check_at_least(cfg, 1, "pairs")
    if cfg.alphas < 2:
        _study.fail(
            "alphas", "an integer ≥ 2 (the two copies at least; the paper evaluates 30)",
            cfg.alphas,
        )  # fmt: skip
    ks = cfg.rewind_iterations
    if not ks:
        _study.fail("rewind_iterations", "a non-empty comma list of steps", "")
    for k in ks:
        if not 0 <= k < cfg.iterations:
            _study.fail("rewind_iterations", f"steps in [0, --iterations = {cfg.iterations})", k)
    if len(set(ks)) != len(ks):
        _study.fail("rewind_iterations", "distinct steps", ",".join(map(str, ks)))
    _study.check_data_options(cfg)
    for name, allowed in (("optimizer", OPTIMIZERS), ("scope", SCOPES)):
        if getattr(cfg, name) not in allowed:
            _study.fail(name, f"one of {allowed}", getattr(cfg, name))
    if not 0.0 <= cfg.momentum < 1.0:
        _study.fail("momentum", "in [0, 1)", cfg.momentum)
    if cfg.weight_decay < 0:
        _study.fail("weight_decay", "≥ 0", cfg.weight_decay)
    ms = cfg.milestones
    if any(not 0 < m < cfg.iterations for m in ms) or list(ms) != sorted(set(ms)):
        _study.fail(
            "milestones", f"increasing steps inside (0, --iterations = {cfg.iterations})",
            ",".join(map(str, ms)),
        )  # fmt: skip
    _study.check_rates(cfg, "rates")
    if cfg.scope == "global" and cfg.rates:
        _study.fail(
            "rates", "empty with --scope global (one threshold over every prunable layer prunes "
            "--default-rate)", ",".join(f"{p}={r:g}" for p, r in cfg.rates),
        )  # fmt: skip
    if not 0.0 <= cfg.default_rate < 1.0:
        _study.fail("default_rate", "a rate in [0, 1)", cfg.default_rate)


def keys() -> tuple[jax.Array, jax.Array]:
    """The IMP runs' key (data order of the dense run and of every level) and the copies' key."""
    imp_key, copies_key = jax.random.split(jax.random.key(ROOT_KEY))
    return imp_key, copies_key


def optimizer(cfg: Config) -> optax.GradientTransformation:
    """The run's optimizer (one object: equal steps share compiled programs), stopped at
    ``--iterations`` so that every copy ends at the run's last step."""
    lr: Any = cfg.lr
    if cfg.milestones:
        lr = train.step_decay(cfg.lr, cfg.milestones, iterations=cfg.iterations)
    if cfg.optimizer == "adam":
        base = optax.adam(lr)
    else:  # PyTorch's / open_lth's SGD: L2 decay added to the gradient before the momentum
        base = train.sgd(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return instability.stop_after(base, cfg.iterations)


class Setup(NamedTuple):
    """The data, the network and the training pieces of a run."""

    ds: data.Dataset
    apply_fn: Any
    params: Any
    model_state: Any  # None for models without batch norm
    rates: Any
    steps: train.Steps
    optimizer: optax.GradientTransformation
    augment: Any  # data.Augment or None


def setup(cfg: Config) -> Setup:
    """Load the data and build the network; a missing dataset, a batch larger than the data or a
    ``--rates`` pattern that matches no prunable layer stops here, before anything is written."""
    ds = _study.prepared_data(cfg)
    augment = _study.augmentation(cfg, ds)
    net = models.build(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=0)
    bn = cfg.model in _study.BN_MODELS
    apply_fn: Any
    if bn:
        apply_fn, params, model_state = models.stateful(net)
    else:
        apply_fn, params = models.functional(net)[:2]
        model_state = None
    prunable = jax.tree_util.tree_flatten_with_path(masks.is_prunable(params))[0]
    paths = [jax.tree_util.keystr(path) for path, flag in prunable if flag]
    _study.check_patterns_match("rates", [p for p, _ in cfg.rates], paths, "prunable layer")
    rates: Any = cfg.default_rate
    if cfg.scope == "layerwise":
        rates = select.rates_by_pattern(params, dict(cfg.rates), default=cfg.default_rate)
    opt = optimizer(cfg)
    steps = train.make_steps(apply_fn, opt, stateful=bn)
    return Setup(ds, apply_fn, params, model_state, rates, steps, opt, augment)


def _imp_folder(store: results.Store, k: int) -> Path:
    return store.path / "imp" / f"k{k}"


def imp_runs(cfg: Config, s: Setup, store: results.Store, progress: bool) -> dict[int, Any]:
    """One IMP run per rewind point k (rewinding to θ_k), each resumable in ``imp/k<k>/``;
    returns its rows per k."""
    imp_key, _ = keys()
    table = tickets.table([tickets.Ticket(0)], key=jax.random.fold_in(imp_key, 2))
    extra = {} if s.model_state is None else {"model_state": train.stack([s.model_state])}
    out = {}
    for k in cfg.rewind_iterations:
        done = sweep.run_levels(
            _imp_folder(store, k), table, s.apply_fn, train.stack([s.params]), s.ds,
            optimizer=s.optimizer, levels=cfg.levels, rates=s.rates,
            iterations=cfg.iterations - k, dense_iterations=cfg.iterations, rewind_iteration=k,
            batch_size=cfg.batch_size, eval_every=cfg.eval_every, key=imp_key, scope=cfg.scope,
            augment=s.augment, config={"study": "instability", "run": store.path.name},
            progress=progress, desc=f"IMP rewinding to {k}", **extra,
        )  # fmt: skip
        out[k] = done.rows
    return out


def imp_mask(folder: Path, level: int, s: Setup) -> Any:
    """Level ``level``'s mask of the IMP run in ``folder`` (its checkpoint ``state/level_LLL``:
    ``mask``, ``final`` and, for batch-norm models, ``model_state``), one ticket stacked."""
    one = train.stack([s.params])
    like: dict[str, Any] = {"mask": jax.vmap(masks.ones)(one), "final": one}
    if s.model_state is not None:
        like["model_state"] = train.stack([s.model_state])
    return train.checkpoint.restore(folder / "state" / f"level_{level:03d}", like=like)["mask"]


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Every level's instability at every rewind point (one committed unit per level); returns
    the run folder. A finished run trains nothing."""
    validate(cfg)
    s = setup(cfg)
    store = results.Store(results.run_dir(out, "instability", cfg.to_json()), cfg.to_json())
    units = [f"level_{lv:03d}" for lv in range(cfg.levels + 1)]
    if all(store.has(u) for u in units):
        store.write_csv()
        store.close()
        return store.path
    imp_key, copies_key = keys()
    ks = sorted(cfg.rewind_iterations)
    imp_rows = imp_runs(cfg, s, store, progress) if cfg.levels else {}
    ones = masks.ones(s.params)
    spawn = instability.trajectory(
        s.steps, s.steps.init(s.params, s.model_state), ones, s.ds.train, at=ks,
        batch_size=cfg.batch_size, data_key=jax.random.fold_in(imp_key, 0), augment=s.augment,
    )  # fmt: skip
    for level, unit in enumerate(units):
        if store.has(unit):
            continue
        if level == 0:
            mask = train.stack([ones] * len(ks))
        else:
            mask = train.stack([train.unstack(imp_mask(_imp_folder(store, k), level, s))[0]
                                for k in ks])  # fmt: skip
        state = spawn._replace(params=jax.vmap(masks.apply)(spawn.params, mask))
        rows = _level(cfg, s, level, ks, state, mask, copies_key, imp_rows, progress)
        store.write(unit, rows)
    store.write_csv()
    store.close()  # the run's lock: another process may take the folder now
    return store.path


def _level(
    cfg: Config, s: Setup, level: int, ks: list[int], state: train.TrainState, mask: Any,
    copies_key: jax.Array, imp_rows: dict[int, Any], progress: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of one level: ``pairs`` × len(ks) spawn points, both copies, one fit."""
    pairs = cfg.pairs

    def repeat(tree: Any) -> Any:
        return jax.tree.map(lambda leaf: jnp.concatenate([leaf] * pairs), tree)

    pair_keys = jnp.stack([jax.random.fold_in(copies_key, p) for p in range(pairs) for _ in ks])
    out = instability.analyse(
        s.steps, repeat(state), repeat(mask), s.ds, alphas=instability.alphas(cfg.alphas),
        iterations=cfg.iterations - ks[0], batch_size=cfg.batch_size, key=pair_keys,
        augment=s.augment, progress=progress, desc=f"level {level}: copies",
    )  # fmt: skip
    density = round(float(sweep.prunable_density(mask)[0]), 4)
    network = "dense" if level == 0 else f"level {level} ({100 * density:.1f}%)"
    rows: list[dict[str, Any]] = []
    for p in range(pairs):
        for j, k in enumerate(ks):
            i = p * len(ks) + j
            err = out.errors[i]
            imp = [r for r in imp_rows.get(k, []) if r["level"] == level]
            common = {
                "level": level, "density": density, "network": network, "rewind_iteration": k,
                "pair": p,
            }  # fmt: skip
            rows.append({
                **common, "kind": "summary", "instability": float(out.instability[i]),
                "error_a": float(err[0]), "error_b": float(err[-1]),
                "end_error": float((err[0] + err[-1]) / 2), "max_error": float(err.max()),
                "alpha_max": float(out.alphas[err.argmax()]),
                "stable": bool(out.instability[i] < instability.STABLE),
                "imp_test_acc": float(imp[0]["final_test_acc"]) if imp else None,
            })  # fmt: skip
            rows += [
                {**common, "kind": "path", "alpha": float(a), "error": float(e)}
                for a, e in zip(out.alphas, err, strict=True)
            ]
    return rows


def pivot(rows: Sequence[dict[str, Any]], value: str = "instability", digits: int = 2) -> str:
    """A markdown table of ``value`` in percent: one row per network (level), one column per
    rewind point k; mean ± std over the pairs.

    Example:
      >>> rows = [{"kind": "summary", "network": "dense", "level": 0, "rewind_iteration": k,
      ...          "instability": v} for k, v in ((0, 0.031), (0, 0.029), (500, 0.004))]
      >>> print(pivot(rows))
      | network | k = 0 | k = 500 |
      |---|---:|---:|
      | dense | 3.00 ± 0.10 | 0.40 |
    """
    tops = [r for r in rows if r["kind"] == "summary"]
    groups = results.summarize(tops, by=["level", "network", "rewind_iteration"], values=[value])
    ks = sorted({g["rewind_iteration"] for g in groups})
    networks = list(dict.fromkeys((g["level"], g["network"]) for g in groups))
    cells = {(g["level"], g["rewind_iteration"]): g for g in groups}
    lines = ["| network | " + " | ".join(f"k = {k}" for k in ks) + " |"]
    lines.append("|---|" + "---:|" * len(ks))
    for level, name in sorted(networks):
        out = []
        for k in ks:
            g = cells.get((level, k))
            if g is None or not g[f"{value}_n"]:
                out.append("—")
                continue
            mean, std = 100 * g[f"{value}_mean"], 100 * g[f"{value}_std"]
            out.append(
                f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if g[f"{value}_n"] > 1 else "")
            )
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """The instability per network and rewind point (percent), then every column per level and
    rewind point; mean ± std over the pairs."""
    head = (
        f"# Instability — preset `{cfg.preset}` ({cfg.dataset}, {cfg.model}, {cfg.iterations} "
        f"iterations)\n\nTest error along the path between two copies trained from step k "
        f"({cfg.alphas} α); instability = max − mean of the ends (stable: < "
        f"{instability.STABLE:.0%}); {cfg.pairs} pair(s), mean ± std. `imp_test_acc`: the IMP "
        "ticket rewound to k, trained once (its own run).\n"
    )
    table = (
        "### Instability (% test error)\n\n"
        + pivot(rows)
        + "\n\n### Every column (fractions)\n\n"
        + results.markdown_table(
            [r for r in rows if r["kind"] == "summary"],
            by=["level", "density", "rewind_iteration"],
            values=["instability", "end_error", "max_error", "imp_test_acc"],
            digits=4,
        )
    )
    return head + "\n" + table + "\n"


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md``, ``instability.png`` and ``path.png`` of a run folder."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    tops = [r for r in rows if r["kind"] == "summary"]
    paths = [r for r in rows if r["kind"] == "path"]
    out = {
        "instability": plots.line_plot(
            tops, x="rewind_iteration", y="instability", series="network",
            path=folder / "instability.png", xlabel="rewind iteration k",
            ylabel="instability (test error)", title="Instability against the rewind point",
        ),
        "path": plots.grid_plot(
            paths, x="alpha", y="error", series="rewind_iteration", panel="network",
            path=folder / "path.png", xlabel="α", ylabel="test error", legend_title="k",
            title="Test error along the path between the two copies",
        ),
    }  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="instability", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
