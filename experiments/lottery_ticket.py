"""The Lottery Ticket Hypothesis (Frankle & Carbin 2019): iterative magnitude pruning with rewinding.

Per seed, three tickets train side by side at every level, in one vmapped program:

* ``ticket`` — prune the per-layer rates of the remaining weights by ``|w_f|`` (``large_final``),
  reset the kept weights to θ₀ (or to θ_k with ``--rewind-iteration k``, late rewinding);
* ``reinit`` — the ticket's mask with freshly drawn weights (the paper's random re-initialisation);
* ``random_mask`` — a random mask with the same per-layer counts, from θ₀.

Reports per level: density, test accuracy at the end and at the early-stop iteration (minimum
validation loss), and the early-stop iteration itself.

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100, 8 levels at fc 30% / out 15% (down to ≈ 6%), 600 iterations,
  3 seeds: about a minute on 2 CPU cores. ``python -m experiments.lottery_ticket``.
* ``mnist_lenet`` — MNIST LeNet-300-100: Adam 1.2e-3, batch 60, fc 20% / out 10%, 50k iterations,
  20 levels (RESEARCH.md §1). Expected: tickets match the dense net (≈ 98%) down to ≈ 3.6% of the
  weights and learn faster (earlier early-stop); reinit degrades from ≈ 50% density on.
* ``cifar10_conv2`` / ``cifar10_conv4`` / ``cifar10_conv6`` — conv 10% / 10% / 15%, fc 20%,
  out 10%; Adam 2e-4 / 3e-4 / 3e-4; 20k / 25k / 30k iterations. Expected: tickets up to ≈ 3.4
  points above dense at moderate density; reinit and random masks lose that gain.
* ``cifar10_resnet20`` / ``cifar10_vgg16`` — open_lth's recipe (RESEARCH.md §9): batch norm,
  SGD 0.1 (momentum 0.9, weight decay 1e-4), batch 128, 160 epochs (56,160 iterations) with
  × 0.1 at epochs 80 and 120, 4-px crop + flip, per-channel normalisation, one global 20%
  threshold per level (VGG-16: conv kernels only), late rewinding to iteration 2,000, 16 levels.
  Expected (unverified): ResNet-20 ≈ 91–92% dense, tickets matching it to a few percent
  density. A GPU run: see docs/lottery_ticket.md for the cost. ``--precision bf16`` for mixed
  precision.

mnist and cifar10 must be prepared offline first: on a connected machine run
``tfds build mnist --file_format=array_record``, copy the tensorflow_datasets folder here and
pass ``--data-dir`` (a missing dataset stops the run before training, saying so).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxprune import plots, results, tickets

from . import _imp, _study
from ._imp import Config

CONTROLS = _imp.CONTROLS


def quick() -> Config:
    """Digits, LeNet-300-100, ticket and both controls, 3 seeds: about a minute on 2 CPU cores."""
    return Config(
        preset="quick",
        levels=8,
        rates=(("out", 0.15),),
        default_rate=0.3,
        iterations=600,
        eval_every=50,
        seeds=3,
        controls=CONTROLS,
    )


def mnist_lenet() -> Config:
    """MNIST LeNet-300-100 with the paper's settings (RESEARCH.md §1)."""
    return Config(
        preset="mnist_lenet",
        dataset="mnist",
        levels=20,
        rates=(("out", 0.1),),
        default_rate=0.2,
        iterations=50_000,
        eval_every=1000,
        seeds=5,
        controls=CONTROLS,
    )


def _cifar(model: str) -> Config:
    return _imp.cifar_preset(model, seeds=5, controls=CONTROLS)


CIFAR_TRAIN = 45_000
"""CIFAR-10 training examples here: the 50,000 less the 5,000 held out for validation."""
EPOCH = CIFAR_TRAIN // 128
"""Steps per epoch at batch 128: 351 — :func:`jaxprune.train.fit` drops the last partial batch of
each epoch (PyTorch's loader would make a 352nd of 72 examples; open_lth, training on all 50,000,
counts 391)."""
OPEN_LTH_REWIND = 2000
"""Late-rewinding iteration of the open_lth presets (open_lth's experiments use 500–2000 for
ResNet-20; Frankle et al. 2020 find ResNet-20 and VGG-16 stable from about there)."""


def open_lth(model: str, **overrides: Any) -> Config:
    """open_lth's CIFAR-10 recipe (RESEARCH.md §9) for ``model``; ``overrides`` set the rest.

    SGD lr 0.1, momentum 0.9, coupled weight decay 1e-4, batch 128, 160 epochs (160 × 351 =
    56,160 iterations) with the rate × 0.1 after epochs 80 and 120 (iterations 28,080 and
    42,120); one global 20% magnitude threshold per level over the prunable kernels; 4-px crop +
    flip, per-channel normalisation; kaiming-normal kernels and U(0, 1) batch-norm scales; rewind
    to iteration 2,000; 3 seeds, each with both controls; 16 levels (density 0.8¹⁶ ≈ 2.8%).
    """
    base: dict[str, Any] = {
        "preset": f"cifar10_{model}", "dataset": "cifar10", "model": model, "levels": 16,
        "rates": (), "default_rate": 0.2, "scope": "global", "iterations": 160 * EPOCH,
        "batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4,
        "milestones": (80 * EPOCH, 120 * EPOCH), "lr_factor": 0.1, "eval_every": 2 * EPOCH,
        "rewind_iteration": OPEN_LTH_REWIND, "seeds": 3, "controls": CONTROLS,
        "augment": "crop_flip", "normalize": "per_channel", "init": "open_lth",
    }  # fmt: skip
    return Config(**{**base, **overrides})


def cifar10_resnet20() -> Config:
    """ResNet-20 on CIFAR-10, open_lth's ``cifar_resnet_20`` lottery recipe (:func:`open_lth`).

    Source: open_lth (facebookresearch/open_lth, ``models/cifar_resnet.py`` default hparams);
    Frankle, Dziugaite, Roy & Carbin, "Stabilizing the Lottery Ticket Hypothesis" (2019) and
    "Linear Mode Connectivity and the Lottery Ticket Hypothesis" (ICML 2020). Every conv and
    linear kernel is pruned (open_lth's ``sparse_global`` over all of them). jaxprune's
    ``resnet20`` has option-A (parameter-free) shortcuts where open_lth's has 1×1 conv + BN
    projections in the two downsampling blocks (≈ 0.27M vs ≈ 0.27M + 2.6k weights).

    Expected (RESEARCH.md §9, *unverified*): dense ≈ 91–92% test accuracy with augmentation;
    tickets rewound to iteration 2,000 match it down to a few percent density, while
    ``reinit`` and ``random_mask`` fall below it early (Frankle et al. 2020). Cost: a GPU run
    (docs/lottery_ticket.md); a CPU trains it only at toy scale.
    """
    return open_lth("resnet20")


def cifar10_vgg16() -> Config:
    """VGG-16 (with batch norm) on CIFAR-10, open_lth's ``cifar_vgg_16`` lottery recipe.

    As :func:`cifar10_resnet20` (:func:`open_lth`), pruning the conv kernels only: open_lth
    ignores its VGG's classifier (``pruning_layers_to_ignore='fc.weight'``), and so this preset
    ignores ``fc1`` and ``out`` — jaxprune's ``vgg16`` has Li et al.'s classifier (512 → BN →
    ReLU → classes) where open_lth's has one linear layer, and no conv biases where open_lth's
    convs have them. Source: open_lth ``models/cifar_vgg.py``; Frankle et al. (2019, 2020).

    Expected (*unverified*; RESEARCH.md gives no VGG-16 figure): dense ≈ 93% test accuracy,
    tickets at late rewinding matching it to a few percent density. Cost: a GPU run.
    """
    return open_lth("vgg16", ignore=("fc1", "out"))


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "mnist_lenet": mnist_lenet,
    **{f"cifar10_{m}": functools.partial(_cifar, m) for m in _imp.CIFAR_CONV},
    "cifar10_resnet20": cifar10_resnet20,
    "cifar10_vgg16": cifar10_vgg16,
}


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the PNG plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    common: dict[str, Any] = {
        "x": "density", "series": "control", "log_x": True, "invert_x": True, "xlabel": "density",
    }  # fmt: skip
    out = {
        "accuracy": plots.line_plot(
            rows, y="early_stop_test_acc", path=folder / "accuracy.png",
            ylabel="test accuracy (early stop)", title="Lottery tickets vs controls", **common,
        ),
        "final_accuracy": plots.line_plot(
            rows, y="final_test_acc", path=folder / "final_accuracy.png",
            ylabel="test accuracy (end of training)", title="Lottery tickets vs controls", **common,
        ),
        "early_stop": plots.line_plot(
            rows, y="early_stop_iteration", path=folder / "early_stop.png",
            ylabel="early-stop iteration", title="Early-stop iteration vs density", **common,
        ),
    }  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """Per level and ticket kind, mean ± std over seeds."""
    head = (
        f"# Lottery ticket — preset `{cfg.preset}` ({cfg.dataset}, {cfg.model}, "
        f"rewind to iteration {cfg.rewind_iteration})\n\n{cfg.seeds} seeds; mean ± std. "
        f"`first_eval_test_acc`: test accuracy after {cfg.eval_every} iterations.\n"
    )
    table = results.markdown_table(
        rows,
        by=["level", "control"],
        values=[
            "density",
            "final_test_acc",
            "early_stop_test_acc",
            "early_stop_iteration",
            "first_eval_test_acc",
        ],
    )
    return head + "\n" + table


def table(cfg: Config) -> tuple[tickets.Table, list[str]]:
    """Per seed: the ticket (``criteria[0]``, ``kept[0]``), then each control of ``cfg.controls``;
    and each ticket's ``control`` label.

    ``reinit`` takes the ticket's mask at every level and random weights (Frankle & Carbin's
    control); ``random_mask`` prunes at random — the same per-layer counts — from θ₀.
    """
    out: list[tickets.Ticket] = []
    labels: list[str] = []
    c0, k0, p0 = cfg.criteria[0], cfg.kept[0], cfg.pruned[0]
    for seed in range(cfg.seeds):
        ticket = len(out)
        out.append(tickets.Ticket(seed, c0, k0, p0))
        labels.append("ticket")
        for control in cfg.controls:
            if control == "reinit":
                out.append(tickets.Ticket(seed, c0, "reinit", p0, source=ticket))
            else:
                out.append(tickets.Ticket(seed, "random", k0, p0))
            labels.append(control)
    return tickets.table(out, key=_imp.keys()[0]), labels


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Every level of the tickets and their controls; returns the run folder."""
    t, labels = table(cfg)
    return _imp.run("lottery_ticket", cfg, t, labels, out=out, progress=progress, batch_norm=True)


def validate(cfg: Config) -> None:
    """:func:`experiments._imp.validate`, models with batch norm allowed."""
    _imp.validate(cfg, batch_norm=True)


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="lottery_ticket", help=_imp.HELP,
        check=validate, run=run, report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
