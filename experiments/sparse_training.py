r"""Sparse training from scratch: dense vs static vs gradual vs SET vs RigL vs STE, per sparsity.

Every method of :mod:`jaxprune.sparse_training` trains each model at every sparsity of
``--sparsities`` with ``--seeds`` seeds; one method's sparsities × seeds are the tickets of ONE
vmapped, scanned program (:func:`jaxprune.sparse_training.steps.train_tickets`), whose per-ticket
sparsity and seed are arrays (no recompiling between them). The methods (``--methods``):

* ``dense`` — no pruning (the ``static`` method at sparsity 0: the same engine);
* ``static_uniform`` / ``static_erk`` — a random mask drawn at step 0 and kept (uniform or
  Erdős–Rényi-Kernel allocation; Evci et al. 2020's "Static");
* ``gradual`` — Zhu & Gupta (2017): dense at first, magnitude pruning every ΔT steps from
  ``begin_fraction``·T to ``end_fraction``·T along :math:`s_t = s_f (1 - \pi_t)^3`;
* ``set`` (Mocanu et al. 2018) — every ΔT steps until ``end_fraction``·T, drop the fraction ζ of
  each layer's active weights of least :math:`|w|`, regrow as many at random (at 0);
* ``rigl`` (Evci et al. 2020) — the same, with the cosine-decayed drop fraction
  :math:`\frac{\alpha}{2}(1 + \cos(\pi t / T_{end}))` and growth by the largest dense
  :math:`|\nabla_w L|`;
* ``ste`` / ``sr_ste`` — dense weights, each forward through the top-:math:`k` mask of the current
  weights, the gradient straight through (SR-STE adds :math:`\lambda_w (1 - m) \odot w`).

``gradual``, ``set``, ``rigl``, ``ste`` and ``sr_ste`` use ``--allocation`` (default ``erk``, as
RigL); ``static`` appears with both uniform and ERK so that "ERK ≥ uniform" can be read off.

**Training FLOPs** (:func:`jaxprune.sparse_training.flops.training_flops`, the RigL paper's
accounting, per example, relative to dense training): dense :math:`3 f_D` a step; static / SET
:math:`3 f_S`; RigL :math:`2 f_S + f_D` at its update steps (a dense weight gradient) and
:math:`3 f_S` elsewhere; gradual :math:`3 f(d_t)` with the densities in force at step t;
STE :math:`f_S + 2 f_D`. :math:`f_S` uses each ticket's final per-layer densities.

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100 and ``conv2`` at width 0.125 (conv 8, 8, pool → 32, 32),
  80 / 90 / 95 / 98% sparsity, 3 seeds, Adam 1e-3, batch 32, 600 iterations, ΔT = 25, ζ = α =
  0.3, T_end = 0.75·T, gradual from 0.1·T to 0.75·T: about 5 minutes on 2 idle CPU cores.
  ``python -m experiments.sparse_training``.
* ``cifar10`` — the RigL paper's CIFAR-10 recipe (Evci et al. 2020, "Rigging the Lottery",
  ICML, §4 and App.; its WideResNet-22-2 is not in the registry: ``resnet20`` stands in):
  SGD with momentum 0.9, lr 0.1, weight decay 5e-4, batch 128, ×0.2 at 30,000 / 70,000 / 90,000
  of 100,000 steps (the step counts as recalled from the paper's appendix: unverified), ERK,
  ΔT = 100, α = 0.3, T_end = 0.75·T; gradual pruning per Zhu & Gupta (2017) from 0.1·T to
  0.75·T (RigL's "Pruning" baseline ends at 0.75·T too); 80 / 90 / 95% sparsity, 3 seeds. No data
  augmentation (the engine's sparse fit takes none yet). cifar10 must be prepared offline
  (``tfds build cifar10 --file_format=array_record`` on a connected machine, then
  ``--data-dir``).

Run folder: ``runs/sparse_training-<preset>-<hash>/`` with ``rows/`` (one unit per model ×
method; an interrupted run started again resumes after the last finished unit), ``results.csv``,
``summary.md`` (accuracy mean ± std per method × sparsity, training FLOPs, and whether the
papers' orderings held), ``accuracy.png`` and ``train_flops.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune import data, masks, metrics, models, plots, results, sweep, train
from jaxprune.sparse_training import allocation, core, flops, steps

from . import _study

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "dense": ("static", {"allocation": "uniform"}),
    "static_uniform": ("static", {"allocation": "uniform"}),
    "static_erk": ("static", {"allocation": "erk"}),
    "gradual": ("gradual", {}),
    "set": ("set", {}),
    "rigl": ("rigl", {}),
    "ste": ("ste", {}),
    "sr_ste": ("sr_ste", {}),
}
"""The study's methods: ``label -> (sparse_training method, fixed options)``; the methods with no
fixed allocation take ``--allocation``."""
DEFAULT_METHODS = ("dense", "static_uniform", "static_erk", "gradual", "set", "rigl", "ste")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a sparse-training run; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "digits"
    models: tuple[str, ...] = ("lenet300_100", "conv2")
    width: float = 0.125
    val_size: int | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    sparsities: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98)
    seeds: int = 3
    iterations: int = 600
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    lr_factor: float = 0.1
    allocation: str = "erk"
    delta_t: int = 25
    drop_fraction: float = 0.3
    begin_fraction: float = 0.1
    end_fraction: float = 0.75
    eval_every: int = 150
    normalize: str = "none"
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "models": f"comma list of models, from {models.names()}",
    "width": "width multiplier of the conv* / vgg* / resnet* models (LeNet and mlp: full width)",
    "methods": f"comma list from {tuple(METHODS)}",
    "sparsities": "comma list of final sparsities in (0, 1): the fraction of prunable weights "
    "removed",
    "seeds": "seeds per method and sparsity: data order and masks (every ticket starts from "
    "the same initial weights, seed 0's)",
    "optimizer": f"one of {OPTIMIZERS} (sgd: momentum, coupled L2 weight decay)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD's L2 weight decay (pruned weights stay exactly 0 whatever it does)",
    "milestones": "steps where the learning rate is multiplied by --lr-factor (comma list)",
    "lr_factor": "the learning-rate multiplier at each milestone",
    "allocation": f"layer allocation of gradual/set/rigl/ste/sr_ste, one of "
    f"{allocation.ALLOCATIONS}",
    "delta_t": "ΔT: steps between mask updates (gradual, SET, RigL)",
    "drop_fraction": "SET's ζ / RigL's α: the fraction of active weights dropped and regrown",
    "begin_fraction": "gradual pruning starts at this fraction of the iterations",
    "end_fraction": "gradual pruning reaches the final sparsity, and SET / RigL stop updating, at "
    "this fraction of the iterations",
    "normalize": _study.HELP["normalize"],
}


def quick() -> Config:
    """Digits, LeNet-300-100 and conv2 × 0.125, 80–98%, 3 seeds, 600 iterations: ~5 minutes."""
    return Config(preset="quick")


def cifar10() -> Config:
    """The RigL paper's CIFAR-10 recipe (resnet20 in place of WRN-22-2), 100,000 steps."""
    return Config(
        preset="cifar10", dataset="cifar10", models=("resnet20",), width=1.0,
        sparsities=(0.8, 0.9, 0.95), iterations=100_000, batch_size=128, optimizer="sgd",
        lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=(30_000, 70_000, 90_000),
        lr_factor=0.2, delta_t=100, drop_fraction=0.3, begin_fraction=0.1, end_fraction=0.75,
        eval_every=5_000, normalize="per_channel",
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {"quick": quick, "cifar10": cifar10}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the flag of any bad setting, before anything is trained."""
    _study.check_finite(cfg)
    _study.check_at_least(cfg, 1, "iterations", "batch_size", "eval_every", "seeds", "delta_t")
    if cfg.val_size is not None:
        _study.check_at_least(cfg, 1, "val_size")
    if cfg.dataset not in data.names():
        _study.fail("dataset", f"one of {data.names()}", cfg.dataset)
    if cfg.data_dir is not None and cfg.dataset not in _study.READS_DATA_DIR:
        _study.fail("data_dir", f"unset for {cfg.dataset!r} (built into jaxprune)", cfg.data_dir)
    _study.check_names(cfg, "models", models.names())
    _study.check_pairing(cfg.dataset, cfg.models)
    _study.check_names(cfg, "methods", tuple(METHODS))
    _study.check_fractions(cfg, "sparsities", "sparsities")
    for name, allowed in (
        ("optimizer", OPTIMIZERS), ("allocation", allocation.ALLOCATIONS),
        ("normalize", _study.NORMALIZE),
    ):  # fmt: skip
        if getattr(cfg, name) not in allowed:
            _study.fail(name, f"one of {allowed}", getattr(cfg, name))
    if not cfg.lr > 0:
        _study.fail("lr", "> 0", cfg.lr)
    if not cfg.width > 0:
        _study.fail("width", "> 0", cfg.width)
    if not 0.0 <= cfg.momentum < 1.0:
        _study.fail("momentum", "in [0, 1)", cfg.momentum)
    if cfg.weight_decay < 0:
        _study.fail("weight_decay", "≥ 0", cfg.weight_decay)
    if not cfg.lr_factor > 0:
        _study.fail("lr_factor", "> 0", cfg.lr_factor)
    ms = cfg.milestones
    if any(not 0 < m < cfg.iterations for m in ms) or list(ms) != sorted(set(ms)):
        _study.fail("milestones", f"increasing steps inside (0, --iterations = {cfg.iterations})",
                    ",".join(map(str, ms)))  # fmt: skip
    if not 0.0 <= cfg.drop_fraction < 1.0:
        _study.fail("drop_fraction", "in [0, 1)", cfg.drop_fraction)
    if not 0.0 <= cfg.begin_fraction < 1.0:
        _study.fail("begin_fraction", "in [0, 1)", cfg.begin_fraction)
    if not cfg.begin_fraction < cfg.end_fraction <= 1.0:
        _study.fail("end_fraction", f"in (--begin-fraction = {cfg.begin_fraction:g}, 1]",
                    cfg.end_fraction)  # fmt: skip
    begin, end = schedule_steps(cfg)
    if end <= begin:
        _study.fail("iterations", "long enough that gradual pruning has at least one step "
                    f"(begin {begin}, end {end})", cfg.iterations)  # fmt: skip


def schedule_steps(cfg: Config) -> tuple[int, int]:
    """``(begin, end)`` in steps: gradual's first update and last (SET / RigL stop at ``end``)."""
    return round(cfg.begin_fraction * cfg.iterations), round(cfg.end_fraction * cfg.iterations)


def optimizer(cfg: Config) -> optax.GradientTransformation:
    """The run's inner optimizer (``keep_zero`` wraps it in the engine; STE uses it as it is)."""
    lr: Any = cfg.lr
    if cfg.milestones:
        lr = train.step_decay(cfg.lr, cfg.milestones, iterations=cfg.iterations,
                              factor=cfg.lr_factor)  # fmt: skip
    if cfg.optimizer == "adam":
        return optax.adam(lr)
    return train.sgd(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def method(cfg: Config, label: str) -> core.Method:
    """The :class:`~jaxprune.sparse_training.core.Method` of a study method label."""
    name, options = METHODS[label]
    return core.method(name, **{"allocation": cfg.allocation, **options})


class Net(NamedTuple):
    """One model of the run: its pure apply function, initial params (seed 0), batch-norm
    statistics (``None`` without batch norm) and dense forward FLOPs per layer."""

    apply_fn: Any
    params: Any
    model_state: Any
    layer_flops: dict[str, float]


def build(cfg: Config, name: str, ds: data.Dataset) -> Net:
    """Model ``name`` initialised from seed 0 (every ticket starts from these weights)."""
    kw = {} if name in ("lenet300_100", "mlp") else {"width": cfg.width}
    net = models.build(name, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=0, **kw)
    if name in _study.BN_MODELS:
        stateful, params, state = models.stateful(net)
        layer = metrics.layer_flops(
            lambda p, x: stateful(p, state, x, train=False)[0], params, ds.input_shape
        )
        return Net(stateful, params, state, layer)
    apply_fn, params, _ = models.functional(net)
    return Net(apply_fn, params, None, metrics.layer_flops(apply_fn, params, ds.input_shape))


def _flops_rows(cfg: Config, label: str, m: core.Method, net: Net, final_masks: Any,
                sparsity: float) -> dict[str, float]:  # fmt: skip
    """Training and inference FLOPs per example of one ticket, and their ratios to dense."""
    begin, end = schedule_steps(cfg)
    one = net.params
    kw: dict[str, Any] = {"iterations": cfg.iterations, "delta_t": cfg.delta_t}
    if m.name == "gradual":
        kw.update(begin=begin, end=end, sparsity=sparsity)

        def densities(s: float) -> Any:
            return allocation.layer_densities(one, s, allocation=m.allocation,
                                              prunable=m.prunable, dense=m.dense,
                                              custom=m.custom, pattern=m.pattern)  # fmt: skip

        d: Any = densities
    else:
        d = masks.layer_density(final_masks)
        if m.name in ("rigl", "set"):
            kw.update(begin=0, end=end)
    name = "dense" if label == "dense" else m.name
    total = flops.training_flops(name, net.layer_flops, d, **kw)
    dense_total = flops.training_flops("dense", net.layer_flops, {}, iterations=cfg.iterations)
    f_d = float(sum(net.layer_flops.values()))
    f_s = flops.sparse_flops(net.layer_flops, masks.layer_density(final_masks))
    return {
        "train_flops": total,
        "train_flops_ratio": total / dense_total,
        "inference_flops_ratio": f_s / f_d,
    }


def train_unit(cfg: Config, ds: data.Dataset, model: str, net: Net, label: str,
               progress: bool) -> list[dict[str, Any]]:  # fmt: skip
    """Train every sparsity × seed of one method on one model as one vmapped program (sharded
    over the host devices that divide the tickets); its rows."""
    m = method(cfg, label)
    sparsities = (0.0,) if label == "dense" else cfg.sparsities
    begin, end = schedule_steps(cfg)
    n = len(sparsities) * cfg.seeds
    out = steps.train_tickets(
        net.apply_fn, net.params, m, sparsities=sparsities, seeds=list(range(cfg.seeds)),
        data=ds, optimizer=optimizer(cfg), iterations=cfg.iterations, batch_size=cfg.batch_size,
        eval_every=cfg.eval_every, drop_fraction=cfg.drop_fraction, delta_t=cfg.delta_t,
        begin=begin if m.name == "gradual" else 0, end=end, mesh=train.mesh_for(n),
        progress=progress, model_state=net.model_state,
    )  # fmt: skip
    rows = []
    for i in range(n):
        final_masks = jax.tree.map(lambda a, i=i: np.asarray(a[i]), out.state.sparse.masks)
        sparsity = float(out.sparsity[i])
        rows.append({
            "model": model, "method": label, "base_method": m.name,
            "allocation": m.allocation, "sparsity": sparsity, "seed": int(out.seed[i]),
            "density": float(out.density[i]), "iterations": cfg.iterations,
            **sweep.history_columns(out.history, i),
            **_flops_rows(cfg, label, m, net, final_masks, sparsity),
        })  # fmt: skip
    return rows


def unit_name(model: str, label: str) -> str:
    return f"{model}__{label}"


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Train every model × method (one committed unit each); returns the run folder. A finished
    run trains nothing; an interrupted one resumes after its last finished unit."""
    validate(cfg)
    ds = _study.prepared_data(cfg)
    store = results.Store(results.run_dir(out, "sparse_training", cfg.to_json()), cfg.to_json())
    units = [(model, label) for model in cfg.models for label in cfg.methods]
    todo = [u for u in units if not store.has(unit_name(*u))]
    start = time.time()
    nets: dict[str, Net] = {}
    bar = tqdm(todo, desc="sparse_training", unit="unit", disable=not progress)
    for model, label in bar:
        bar.set_postfix(unit=unit_name(model, label))
        if model not in nets:
            nets[model] = build(cfg, model, ds)
        rows = train_unit(cfg, ds, model, nets[model], label, progress)
        store.write(unit_name(model, label), rows)
    bar.close()
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


# ---- report ------------------------------------------------------------------------------------


def _cell(s: Mapping[str, Any] | None, value: str, scale: float, digits: int) -> str:
    if s is None or s[f"{value}_mean"] is None:
        return "—"
    mean, std = s[f"{value}_mean"] * scale, s[f"{value}_std"] * scale
    if s[f"{value}_n"] == 1 or round(std, digits) == 0:  # one seed, or no seed changes it
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def pivot(rows: Sequence[Mapping[str, Any]], model: str, value: str = "final_test_acc",
          scale: float = 100.0, digits: int = 1) -> str:  # fmt: skip
    """A markdown table of one model: one line per method, one column per sparsity; mean ± std
    over seeds. The dense line repeats its one value in every column.

    Example:
      >>> rows = [{"model": "m", "method": "dense", "sparsity": 0.0, "acc": 0.98},
      ...         {"model": "m", "method": "rigl", "sparsity": 0.9, "acc": 0.95},
      ...         {"model": "m", "method": "rigl", "sparsity": 0.9, "acc": 0.93}]
      >>> print(pivot(rows, "m", "acc"))
      | method | 90% |
      |---|---:|
      | dense | 98.0 |
      | rigl | 94.0 ± 1.0 |
    """
    mine = [r for r in rows if r["model"] == model]
    stats = {(s["method"], s["sparsity"]): s
             for s in results.summarize(mine, ["method", "sparsity"], [value])}  # fmt: skip
    sparsities = sorted({r["sparsity"] for r in mine if r["method"] != "dense"})
    lines = ["| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |",
             "|---|" + "---:|" * len(sparsities)]  # fmt: skip
    for label in dict.fromkeys(r["method"] for r in mine):
        if label == "dense":
            cells = [_cell(stats.get(("dense", 0.0)), value, scale, digits)] * len(sparsities)
        else:
            cells = [_cell(stats.get((label, s)), value, scale, digits) for s in sparsities]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def orderings(rows: Sequence[Mapping[str, Any]], model: str, *, high: float = 0.9) -> list[str]:
    """Whether the papers' orderings held for one model, at every sparsity ≥ ``high``: RigL ≥ SET
    ≥ static (ERK) and static ERK ≥ static uniform, on mean final test accuracy.

    Example:
      >>> rows = [{"model": "m", "method": k, "sparsity": 0.9, "final_test_acc": a}
      ...         for k, a in (("rigl", 0.9), ("set", 0.92), ("static_erk", 0.8))]
      >>> orderings(rows, "m")
      ['90%: rigl ≥ set ≥ static_erk did NOT hold (rigl 90.0, set 92.0, static_erk 80.0)']
    """
    mine = [r for r in rows if r["model"] == model]
    mean = {(s["method"], s["sparsity"]): s["final_test_acc_mean"]
            for s in results.summarize(mine, ["method", "sparsity"], ["final_test_acc"])}  # fmt: skip
    out = []
    for s in sorted({r["sparsity"] for r in mine if r["sparsity"] >= high}):
        for chain in (("rigl", "set", "static_erk"), ("static_erk", "static_uniform")):
            have: list[tuple[str, float]] = [
                (c, mean[c, s]) for c in chain if mean.get((c, s)) is not None
            ]
            if len(have) < 2:
                continue
            held = all(a[1] >= b[1] for a, b in itertools.pairwise(have))
            values = ", ".join(f"{c} {100 * v:.1f}" for c, v in have)
            verdict = "held" if held else "did NOT hold"
            if max(v for _, v in have) - min(v for _, v in have) < 5e-4:  # e.g. all at chance
                verdict = "tied (no ordering)"
            out.append(f"{100 * s:g}%: {' ≥ '.join(c for c, _ in have)} {verdict} ({values})")
    return out


def summary(rows: Sequence[Mapping[str, Any]], cfg: Config) -> str:
    """The accuracy and training-FLOPs tables per model, and the orderings."""
    begin, end = schedule_steps(cfg)
    head = (
        f"# Sparse training — preset `{cfg.preset}` ({cfg.dataset}, {cfg.iterations} iterations, "
        f"{cfg.seeds} seeds, mean ± std)\n\n{cfg.optimizer} lr {cfg.lr:g}, batch {cfg.batch_size};"
        f" ΔT = {cfg.delta_t}, ζ = α = {cfg.drop_fraction:g}, SET / RigL updates until step {end};"
        f" gradual from step {begin} to {end}; allocation `{cfg.allocation}` for every method "
        "but static_uniform / dense.\n"
    )
    parts = [head]
    for model in cfg.models:
        if not any(r["model"] == model for r in rows):
            continue
        parts += [
            f"## {model}\n\n### Test accuracy (%) at the end of training\n",
            pivot(rows, model),
            "\n### Training FLOPs relative to dense training (RigL paper's accounting)\n",
            pivot(rows, model, "train_flops_ratio", scale=1.0, digits=3),
            "\n### Papers' orderings (mean test accuracy, sparsity ≥ 90%)\n",
            "\n".join(f"- {line}" for line in orderings(rows, model)) or "- (methods missing)",
            "",
        ]
    return "\n".join(parts) + "\n"


def _with_dense_at_every_sparsity(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each dense row copied at every sparsity (a flat reference line)."""
    levels = sorted({r["sparsity"] for r in rows if r["method"] != "dense"})
    out = [dict(r) for r in rows if r["method"] != "dense"]
    for r in rows:
        if r["method"] == "dense":
            out += [{**r, "sparsity": s} for s in levels]
    return out


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md``, ``accuracy.png`` and ``train_flops.png`` of a run folder."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    wide = _with_dense_at_every_sparsity(rows)
    dashed = {"dense": {"linestyle": "--"}}
    out = {
        "accuracy": plots.grid_plot(
            wide, x="sparsity", y="final_test_acc", series="method", panel="model",
            path=folder / "accuracy.png", xlabel="sparsity", ylabel="test accuracy (end)",
            title="Sparse training: accuracy against sparsity", styles=dashed,
        ),
        "train_flops": plots.grid_plot(
            wide, x="sparsity", y="train_flops_ratio", series="method", panel="model",
            path=folder / "train_flops.png", xlabel="sparsity",
            ylabel="training FLOPs / dense training", styles=dashed,
            title="Training FLOPs relative to dense (RigL paper's accounting)",
        ),
    }  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="sparse_training", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
