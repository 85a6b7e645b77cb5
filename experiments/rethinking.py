"""Rethinking the Value of Network Pruning: fine-tuning vs Scratch-E vs Scratch-B.

Liu et al. (2019) prune a trained network by whole channels, then compare three ways of training
the pruned architecture:

* **fine-tune** — keep the inherited weights and train on at a small learning rate (the usual
  third step of train → prune → fine-tune);
* **Scratch-E** — the same architecture re-initialised at random, trained as long as the big model;
* **Scratch-B** — re-initialised, trained for the same *compute* as the big model:
  ``iterations × FLOPs(dense) / FLOPs(pruned)``, FLOPs measured on the compacted model.

Two pruning methods choose the channels:

* ``l1`` — Li et al. (2017): per layer, the filters of smallest ``Σ|W|``, a fraction ``ratio``
  of every prunable layer (``--l1-rates`` overrides layers by name pattern); the dense model is
  trained plainly.
* ``slimming`` — Network Slimming (Liu et al. 2017): the dense model is trained with the L1
  penalty ``s·Σ|γ|`` on batch-norm scales, then the channels of smallest ``|γ|`` are pruned
  against one global threshold (a fraction ``ratio`` of all channels), at least ``min_keep``
  kept per layer.

Every pruned model is **compacted** (:func:`jaxprune.structured.compact`: a physically smaller
model whose outputs equal the masked one) and trained as such, several seeds in one vmapped
program; seeds whose pruned widths differ (global thresholds) train as separate programs. The
scratch models are the pruned architecture freshly initialised at its own shapes
(:func:`jaxprune.structured.scratch`).

Training (all arms): SGD, momentum 0.9, weight decay 1e-4, the learning rate ÷10 at 50% and 75%
of the run (Liu et al.); fine-tuning at a constant ``finetune_lr``. The CIFAR presets augment as the papers do
(``--augment crop_flip``: a random crop after 4-pixel padding and a random flip, on the device)
and standardise the pixels per channel (``--normalize per_channel``); the quick preset does
neither.

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, VGG-11 (BN) at width 1/8, both methods at 50% and 75% of channels, 2 seeds,
  600 iterations (fine-tuning 200); the slimming penalty raised to ``s = 5e-3`` so that the BN
  scales become sparse within 600 steps. About 10 minutes on 2 CPU cores (11 min measured while
  another job shared them).
  ``python -m experiments.rethinking``.
* ``cifar10_vgg16`` — Li et al.'s VGG-16 → VGG-16-A: conv1 and conv8–13 lose half their
  filters, the others none (``--l1-rates``); the pruned architecture is exactly
  ``models.build("vgg16_a")``. Liu et al. 2019 Table 1: fine-tuned ≈ 93.4%, Scratch-E ≈ 93.6%,
  Scratch-B ≈ 93.8% (unpruned ≈ 93.6%).
* ``cifar10_resnet56`` — ResNet-56, L1, 10% of the filters of the first conv of every residual
  block (like Li et al.'s ResNet-56-A, who also leave a few sensitive layers unpruned; set them
  with ``--l1-rates``). Only the inner conv of each block is prunable (docs/structured.md).
* ``cifar10_vgg19`` — Network Slimming on VGG-19, 70% of channels, ``s = 1e-4``. Liu et al. 2019
  Table 4: fine-tuned ≈ 93.6%, Scratch-E ≈ 93.3%, Scratch-B ≈ 93.8% (unpruned ≈ 93.5%).

The CIFAR presets follow Liu et al. 2019: batch 64, 160 epochs (125k iterations at ~781 per
epoch), learning rate 0.1, fine-tuning 40 epochs at 1e-3. cifar10 must be prepared offline
(``tfds build cifar10 --file_format=array_record`` on a connected machine, then ``--data-dir``).

Run folder: ``runs/rethinking-<preset>-<hash>/`` with ``rows/`` (one committed file per unit:
each dense run, each method × ratio; an interrupted run started again resumes), ``state/``
(the dense weights, orbax), ``results.csv``, ``summary.md`` and ``accuracy_<method>.png``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxprune import data, models, plots, results, structured, train

from . import _channels, _study

METHODS = ("l1", "slimming")
ARMS = ("unpruned", "pruned", "fine_tune", "scratch_e", "scratch_b")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a rethinking run (see ``--help`` for each)."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "vgg11"
    width: float = 0.125
    val_size: int | None = None
    methods: tuple[str, ...] = METHODS
    ratios: tuple[float, ...] = (0.5, 0.75)
    l1_rates: tuple[tuple[str, float], ...] = ()
    min_keep: int = 1
    penalty: float = 1e-4
    iterations: int = 800
    finetune_iterations: int = 200
    batch_size: int = 64
    lr: float = 0.1
    finetune_lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eval_every: int = 100
    seeds: int = 2
    augment: str = "none"
    normalize: str = "none"
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "model": f"model with batch norm, one of {_study.BN_MODELS}",
    "width": "width multiplier of the model (1 = the paper's)",
    "methods": f"comma list of channel-pruning methods, from {METHODS}",
    "ratios": "comma list of fractions of channels to prune, in (0, 1): per layer for l1, "
    "of all channels (one global threshold) for slimming",
    "l1_rates": "l1 only: per-layer rates by channel-group name regex, e.g. 'conv[2-7]$=0' "
    "(a group no pattern matches gets the ratio)",
    "min_keep": "channels always kept in every layer (a global threshold never empties one)",
    "penalty": "Network Slimming's L1 strength s on BN scales while training the dense model",
    "iterations": "training steps of the dense model and of Scratch-E",
    "finetune_iterations": "fine-tuning steps of the pruned model",
    "lr": "SGD learning rate (÷10 at 50% and 75% of each run)",
    "finetune_lr": "constant fine-tuning learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (decoupled, added to the gradient)",
}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained."""
    _study.check_common(cfg, batch_norm=True)
    _study.check_data_options(cfg)
    _study.check_at_least(cfg, 1, "min_keep")
    # The step schedule's two milestones must lie strictly inside every run (fine-tuning's
    # constant rate takes the same form, so that all arms share one training program).
    _study.check_at_least(cfg, _channels.MIN_ITERATIONS, "iterations", "finetune_iterations")
    for name in ("width", "finetune_lr"):
        if not getattr(cfg, name) > 0:
            _study.fail(name, "> 0", getattr(cfg, name))
    for name in ("penalty", "weight_decay"):
        if not getattr(cfg, name) >= 0:
            _study.fail(name, ">= 0", getattr(cfg, name))
    if not 0 <= cfg.momentum < 1:
        _study.fail("momentum", "in [0, 1)", cfg.momentum)
    _study.check_names(cfg, "methods", METHODS)
    _study.check_fractions(cfg, "ratios", "numbers")
    _study.check_rates(cfg, "l1_rates")
    if cfg.iterations % cfg.eval_every:
        _study.fail("iterations", f"a multiple of --eval-every ({cfg.eval_every})", cfg.iterations)


def check_groups(cfg: Config, groups: Sequence[structured.ChannelGroup]) -> None:
    """The settings that need the model's channel groups: every ``--l1-rates`` pattern names
    one, and ``--min-keep`` fits in the narrowest."""
    _study.check_patterns_match(
        "l1_rates", [p for p, _ in cfg.l1_rates], [g.name for g in groups], "channel group"
    )
    narrowest = min(groups, key=lambda g: g.size)
    if cfg.min_keep > narrowest.size:
        _study.fail(
            "min_keep", f"at most {narrowest.size}, the channels of the narrowest group "
            f"({narrowest.name} of {cfg.model} at width {cfg.width:g})", cfg.min_keep,
        )  # fmt: skip


def quick() -> Config:
    """Digits, VGG-11 (BN) width 1/8, L1 and slimming at 50% / 75% of channels, 2 seeds.

    The slimming penalty is raised to ``s = 5e-3`` for the short run: with ``1e-4`` the BN scales
    barely move in 600 steps (their median stays near the initial 0.5); with ``5e-3`` a quarter
    of them end near 0 and the dense accuracy is unchanged (``2e-2`` wrecks the dense model).
    """
    return Config(preset="quick", iterations=600, finetune_iterations=200, penalty=5e-3)


def _cifar(preset: str, model: str, **overrides: Any) -> Config:
    return Config(
        preset=preset, dataset="cifar10", model=model, width=1.0, iterations=125_000,
        finetune_iterations=31_250, eval_every=3_125, seeds=3, augment="crop_flip",
        normalize="per_channel", **overrides,
    )  # fmt: skip


def cifar10_vgg16() -> Config:
    """VGG-16 → VGG-16-A by L1 norm (Li et al. 2017; Liu et al. 2019 Table 1)."""
    return _cifar(
        "cifar10_vgg16", "vgg16", methods=("l1",), ratios=(0.5,),
        l1_rates=((r"^conv[2-7]$", 0.0), (r"^fc1$", 0.0)),
    )  # fmt: skip


def cifar10_resnet56() -> Config:
    """ResNet-56, L1, 10% of every block's first conv (≈ Li et al.'s ResNet-56-A); the residual
    stream (the group named after the stem, coupling every block's second conv) stays whole."""
    return _cifar(
        "cifar10_resnet56", "resnet56", methods=("l1",), ratios=(0.1,),
        l1_rates=((r"^stem/", 0.0),),
    )  # fmt: skip


def cifar10_vgg19() -> Config:
    """Network Slimming on VGG-19, 70% of channels, s = 1e-4 (Liu et al. 2019 Table 4)."""
    return _cifar("cifar10_vgg19", "vgg19", methods=("slimming",), ratios=(0.7,), penalty=1e-4)


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "cifar10_vgg16": cifar10_vgg16,
    "cifar10_resnet56": cifar10_resnet56,
    "cifar10_vgg19": cifar10_vgg19,
}


# ---- channel selection -------------------------------------------------------------------------


def l1_rate(name: str, ratio: float, l1_rates: Sequence[tuple[str, float]]) -> float:
    """The l1 rate of a channel group: the first ``l1_rates`` pattern that matches, else ``ratio``.

    Example:
      >>> l1_rate("conv3", 0.5, [(r"^conv[2-7]$", 0.0)]), l1_rate("conv9", 0.5, [(r"^conv[2-7]$", 0.0)])
      (0.0, 0.5)
    """
    for pattern, rate in l1_rates:
        if re.search(pattern, name):
            return rate
    return ratio


def keep_vectors(
    cfg: Config, method: str, ratio: float, module: Any, params: Any
) -> dict[str, Any]:
    """One seed's keep vectors: L1 per layer, or slimming's global ``|γ|`` threshold."""
    groups = structured.channel_groups(module)
    if method == "l1":
        scores = structured.channel_scores(params, groups, "l1")
        rates = {g.name: l1_rate(g.name, ratio, cfg.l1_rates) for g in groups}
        keep = structured.select_channels(scores, rates, min_keep=cfg.min_keep)
    else:
        scores = structured.channel_scores(params, groups, "bn")
        keep = structured.select_channels(scores, ratio, scope="global", min_keep=cfg.min_keep)
    return {n: np.asarray(v) for n, v in keep.items()}


def scratch_b_iterations(iterations: int, speedup: float, eval_every: int) -> int:
    """Scratch-B's budget: ``iterations × FLOPs(dense) / FLOPs(pruned)``, to a whole evaluation.

    Example:
      >>> scratch_b_iterations(800, 3.96, 100)  # 3168 steps, rounded to the nearest 100
      3200
    """
    return max(eval_every, round(iterations * speedup / eval_every) * eval_every)


# ---- the run -----------------------------------------------------------------------------------


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Train, prune, compact and retrain every arm, one committed unit at a time; the folder."""
    validate(cfg)
    ds = _study.prepared_data(cfg)
    augment = _study.augmentation(cfg, ds)
    nets = _channels.build(cfg.model, ds, range(cfg.seeds), width=cfg.width)
    check_groups(cfg, structured.channel_groups(nets.modules[0]))
    store = results.Store(results.run_dir(out, "rethinking", cfg.to_json()), cfg.to_json())
    dense_flops = _channels.flops(nets.modules[0], ds.input_shape)
    dense_params = models.param_count(_channels.ticket(nets.params, 0))
    done = set(store.done())
    start = time.time()
    key = jax.random.key(20190101)
    base = {"study": "rethinking", "preset": cfg.preset, "dataset": cfg.dataset,
            "model": cfg.model, "width": cfg.width}  # fmt: skip
    for method in cfg.methods:
        unit = f"dense_{method}"
        state_path = store.path / "state" / unit
        like = {"params": nets.params, "model_state": nets.model_state}
        missing = [j for j in range(len(cfg.ratios)) if f"{method}_{j:02d}" not in done]
        if unit in done and missing:  # a finished method restores nothing
            try:
                trained = train.checkpoint.restore(state_path, like=like)
            except (ValueError, OSError) as err:  # recomputed: the same program, the same weights
                store.discard(unit, f"its checkpoint {state_path} is unreadable ({err})")
                done.discard(unit)
        if unit not in done:
            penalty = cfg.penalty if method == "slimming" else 0.0
            s = _channels.steps(nets.apply_fn, cfg.momentum, cfg.weight_decay, penalty)
            t0 = time.time()
            state, hist = _channels.fit(
                s, _channels.init_state(s, nets), ds, _channels.schedule(cfg.iterations, cfg.lr),
                batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                data_key=jax.random.fold_in(key, 0), progress=progress, augment=augment,
                desc=f"dense ({method}, {cfg.seeds} seeds)",
            )  # fmt: skip
            seconds = time.time() - t0
            trained = {"params": state.params, "model_state": state.model_state}
            train.checkpoint.save(state_path, trained, overwrite=True)
            rows = [
                {**base, "method": method, "ratio": 0.0, "seed": i, "arm": "unpruned",
                 "iterations": cfg.iterations, "channels_kept": 1.0, "params": dense_params,
                 "flops": dense_flops, "compression": 1.0, "speedup": 1.0,
                 "train_seconds": seconds, **_accs(hist, i)}
                for i in range(cfg.seeds)
            ]  # fmt: skip
            store.write(unit, rows)
        for j in missing:
            ratio = cfg.ratios[j]
            rows = _prune_and_retrain(
                cfg, ds, nets, trained, method, ratio, base, dense_flops, dense_params,
                jax.random.fold_in(key, 1 + j), progress,
            )  # fmt: skip
            store.write(f"{method}_{j:02d}", rows)
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


def _accs(hist: train.History, i: int) -> dict[str, Any]:
    return {
        "final_test_acc": float(hist.test_acc[i, -1]),
        "early_stop_test_acc": float(hist.early_stop_test_acc[i]),
        "early_stop_iteration": int(hist.early_stop_iteration[i]),
    }


def _prune_and_retrain(
    cfg: Config, ds: data.Dataset, nets: _channels.Nets, trained: dict[str, Any], method: str,
    ratio: float, base: dict[str, Any], dense_flops: float, dense_params: int, key: Any,
    progress: bool,
) -> list[dict[str, Any]]:  # fmt: skip
    """The pruned / fine-tune / Scratch-E / Scratch-B rows of one method and ratio, all seeds."""
    keeps = [
        keep_vectors(cfg, method, ratio, nets.modules[i], _channels.ticket(trained["params"], i))
        for i in range(cfg.seeds)
    ]
    by_arch: dict[Any, list[int]] = {}
    for i, k in enumerate(keeps):
        by_arch.setdefault(_channels.arch_key(k), []).append(i)
    rows: list[dict[str, Any]] = []
    for g, seeds in enumerate(by_arch.values()):
        compacted = [
            structured.compact(
                nets.modules[i],
                keeps[i],
                params=_channels.ticket(trained["params"], i),
                model_state=_channels.ticket(trained["model_state"], i),
            )
            for i in seeds
        ]
        inherited = _channels.stack([c.model for c in compacted])
        fresh = _channels.stack(
            [structured.scratch(nets.modules[i], keeps[i], seed=10_000 + i) for i in seeds]
        )
        small = compacted[0].model
        flops = _channels.flops(small, ds.input_shape)
        params = models.param_count(compacted[0].params)
        speedup = dense_flops / flops
        budget = scratch_b_iterations(cfg.iterations, speedup, cfg.eval_every)
        kept = sum(int(np.sum(v)) for v in keeps[seeds[0]].values()) / sum(
            np.size(v) for v in keeps[seeds[0]].values()
        )
        # One compiled program for every arm of this architecture: the scratch params share the
        # compacted model's structure, so its apply_fn serves them.
        s = _channels.steps(inherited.apply_fn, cfg.momentum, cfg.weight_decay)
        tag = f"{method} {ratio:g}" + (f" arch {g + 1}/{len(by_arch)}" if len(by_arch) > 1 else "")
        pruned_acc = _channels.test_accuracy(s, _channels.init_state(s, inherited), ds)
        arms: list[tuple[str, int, Any, float]] = [("pruned", 0, None, 0.0)]
        for arm, nets_, sched in (
            ("fine_tune", inherited, _channels.constant(cfg.finetune_iterations, cfg.finetune_lr)),
            ("scratch_e", fresh, _channels.schedule(cfg.iterations, cfg.lr)),
            ("scratch_b", fresh, _channels.schedule(budget, cfg.lr)),
        ):  # fmt: skip
            t0 = time.time()
            _, hist = _channels.fit(
                s, _channels.init_state(s, nets_), ds, sched, data_key=jax.random.fold_in(key, g),
                desc=f"{tag}: {arm} ({len(seeds)} seeds)", batch_size=cfg.batch_size,
                eval_every=cfg.eval_every, progress=progress,
                augment=_study.augmentation(cfg, ds),
            )  # fmt: skip
            arms.append((arm, sched.iterations, hist, time.time() - t0))
        for arm, iterations, hist, seconds in arms:
            for t, i in enumerate(seeds):
                accs = (
                    {"final_test_acc": float(pruned_acc[t]), "early_stop_test_acc": float(pruned_acc[t]),
                     "early_stop_iteration": 0}
                    if hist is None else _accs(hist, t)
                )  # fmt: skip
                rows.append(
                    {**base, "method": method, "ratio": ratio, "seed": i, "arm": arm,
                     "iterations": iterations, "channels_kept": kept, "params": params,
                     "flops": flops, "compression": dense_params / params, "speedup": speedup,
                     "train_seconds": seconds, **accs}
                )  # fmt: skip
    return sorted(rows, key=lambda r: (ARMS.index(r["arm"]), r["seed"]))


# ---- report ------------------------------------------------------------------------------------


def table(rows: Sequence[dict[str, Any]], value: str = "final_test_acc", digits: int = 3) -> str:
    """A markdown table: one line per method and ratio, one column per arm, mean ± std."""
    stats = results.summarize(rows, by=["method", "ratio", "arm"], values=[value])
    cell = {(r["method"], r["ratio"], r["arm"]): r for r in stats}
    unpruned = {r["method"]: r for r in stats if r["arm"] == "unpruned"}
    arms = [a for a in ARMS if a != "unpruned"]
    lines = [
        "| method | pruned | unpruned | " + " | ".join(a.replace("_", "-") for a in arms) + " |",
        "|---|---|---|" + "---|" * len(arms),
    ]

    def fmt(r: dict[str, Any] | None) -> str:
        if r is None or r[f"{value}_mean"] is None:
            return "—"
        return f"{r[f'{value}_mean']:.{digits}f} ± {r[f'{value}_std']:.{digits}f}"

    for m, ratio in dict.fromkeys(
        (r["method"], r["ratio"]) for r in stats if r["arm"] != "unpruned"
    ):
        vals = [fmt(cell.get((m, ratio, a))) for a in arms]
        lines.append(f"| {m} | {ratio:.0%} | {fmt(unpruned.get(m))} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per method and ratio: kept channels, params, FLOPs, compression, speedup, iterations."""
    stats = results.summarize(
        [r for r in rows if r["arm"] in ("unpruned", "scratch_b")],
        by=["method", "ratio", "arm"],
        values=["channels_kept", "params", "flops", "compression", "speedup", "iterations"],
    )
    lines = [
        "| method | pruned | channels kept | params | FLOPs / example | compression | "
        "theoretical speedup | Scratch-B iterations |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in stats:
        if r["arm"] == "unpruned":
            continue
        lines.append(
            f"| {r['method']} | {r['ratio']:.0%} | {r['channels_kept_mean']:.3f} | "
            f"{r['params_mean']:,.0f} | {r['flops_mean']:,.0f} | {r['compression_mean']:.2f}× | "
            f"{r['speedup_mean']:.2f}× | {r['iterations_mean']:,.0f} |"
        )
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """The accuracy tables (final and early-stop) and the cost table."""
    dense = next((r for r in rows if r["arm"] == "unpruned"), None)
    head = (
        f"# Rethinking the value of pruning — preset `{cfg.preset}` ({cfg.dataset}, "
        f"{cfg.model} width {cfg.width:g})\n\n"
        f"{cfg.seeds} seeds, mean ± std. Dense and Scratch-E: {cfg.iterations} iterations; "
        f"fine-tune: {cfg.finetune_iterations} at lr {cfg.finetune_lr:g}; Scratch-B: the dense "
        "iterations × the measured FLOPs ratio. `pruned` = the compacted model with inherited "
        "weights, before any retraining. Pruned percentages are of the prunable channels "
        "(l1: of every layer; slimming: of all, globally).\n"
    )
    if dense is not None:
        head += (
            f"\nDense model: {dense['params']:,} params, {dense['flops']:,.0f} FLOPs per example.\n"
        )
    return (
        head
        + "\n### Test accuracy at the end of training\n\n"
        + table(rows)
        + "\n\n### Test accuracy at the early-stop iteration (least validation loss)\n\n"
        + table(rows, "early_stop_test_acc")
        + "\n\n### Size and cost of the compacted models\n\n"
        + cost_table(rows)
        + "\n"
    )


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and one accuracy-vs-speedup plot per method; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    out: dict[str, Path] = {}
    for method in cfg.methods:
        mine = [r for r in rows if r["method"] == method]
        unpruned = [r for r in mine if r["arm"] == "unpruned"]
        # Every retraining arm starts from the unpruned point, so the curves share their origin.
        plotted = [
            *mine,
            *({**r, "arm": a} for r in unpruned for a in ("fine_tune", "scratch_e", "scratch_b")),
        ]
        out[f"accuracy_{method}"] = plots.line_plot(
            [r for r in plotted if r["arm"] != "unpruned"], x="speedup", y="final_test_acc",
            series="arm", log_x=True, path=folder / f"accuracy_{method}.png",
            xlabel="theoretical speedup (dense FLOPs / pruned FLOPs)", ylabel="test accuracy",
            title=f"{method}: inherited weights vs scratch ({cfg.model}, {cfg.dataset})",
            styles={"pruned": {"linestyle": ":"}},
        )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="rethinking", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
