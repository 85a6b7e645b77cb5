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


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "mnist_lenet": mnist_lenet,
    **{f"cifar10_{m}": functools.partial(_cifar, m) for m in _imp.CIFAR_CONV},
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
    return _imp.run("lottery_ticket", cfg, t, labels, out=out, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="lottery_ticket", help=_imp.HELP,
        check=_imp.validate, run=run, report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
