"""Deconstructing Lottery Tickets (Zhou et al. 2019): criteria × kept resets × pruned values × seeds.

Every (criterion, kept reset, pruned value, seed) is a ticket that goes through iterative pruning;
all tickets of a level train as one vmapped program. With ``--grid slices`` (the paper's
ablations) one choice varies at a time around the first of each list — every criterion with
``rewind``/``zero``, every kept reset with ``large_final``/``zero``, every pruned value with
``large_final``/``rewind``; ``--grid product`` trains every combination. Each level also records
the *supermask* accuracies of the untrained masked network (``untrained_acc`` with the ticket's own
reset, ``supermask_acc`` with signed-constant weights), and ``--supermask-iterations`` trains
learned supermasks (frozen θ₀, Bernoulli logits, with and without dynamic weight rescaling).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100, all 15 criteria, the 7 kept resets, the 5 pruned values,
  2 seeds (52 tickets), 6 levels at fc 40% / out 20% per level (down to ≈ 5% of the weights),
  learned supermasks. ``python -m experiments.deconstructing`` (what ``make run`` runs): about
  4–6 minutes on a 2-core CPU.
* ``mnist_fc`` — MNIST, LeNet-300-100, the paper's settings (RESEARCH.md §1–2: Adam 1.2e-3,
  batch 60, fc 20% / out 10% per round, 24 rounds, 50k iterations; learned supermasks SGD lr 100,
  momentum 0.9, batch 250). Expected (Zhou et al.): large_final ≈ magnitude_increase ≈ movement
  ≫ small_final; signed resets ≈ rewind, unsigned ones worse at low density; untrained
  large_final_same_sign + signed_constant supermask ≈ 86% test accuracy; learned supermask
  ≈ 95%. GPU work (≈ 50k steps × 24 levels × tickets).
* ``cifar10_conv2`` / ``cifar10_conv4`` / ``cifar10_conv6`` — CIFAR-10 with the papers' per-layer
  rates (conv 10% / 10% / 15%, fc 20%, out 10%) and Adam 2e-4 / 3e-4 / 3e-4 for 20k / 25k / 30k
  iterations. Expected: supermask ≈ 41% (Conv), learned supermask ≈ 65% (second-hand figure).

mnist and cifar10 must be prepared offline first: on a connected machine run
``tfds build mnist --file_format=array_record``, copy the tensorflow_datasets folder here and
pass ``--data-dir`` (a missing dataset stops the run before training, saying so).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import optax

from jaxprune import criteria, masks, plots, reset, results, supermask, sweep, tickets, train

from . import _imp, _study
from ._imp import Config

ALL_KEPT = _imp.PAPER_KEPT


def quick() -> Config:
    """Digits, LeNet-300-100, the whole grid in slices, 2 seeds: a few minutes on 2 CPU cores."""
    return Config(
        preset="quick",
        levels=6,
        rates=(("out", 0.2),),
        default_rate=0.4,
        iterations=500,
        eval_every=50,
        seeds=2,
        criteria=criteria.names(),
        kept=ALL_KEPT,
        pruned=reset.pruned_names(),
        supermask_iterations=1000,
    )


def mnist_fc() -> Config:
    """MNIST LeNet-300-100 with the Deconstructing scripts' settings (RESEARCH.md §1–2)."""
    return Config(
        preset="mnist_fc",
        dataset="mnist",
        levels=24,
        rates=(("out", 0.1),),
        default_rate=0.2,
        iterations=50_000,
        eval_every=1000,
        seeds=3,
        criteria=criteria.names(),
        kept=ALL_KEPT,
        pruned=reset.pruned_names(),
        supermask_iterations=20_000,
    )


def _cifar(model: str) -> Config:
    return _imp.cifar_preset(
        model,
        seeds=3,
        criteria=criteria.names(),
        kept=ALL_KEPT,
        pruned=reset.pruned_names(),
        supermask_iterations=20_000,
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "mnist_fc": mnist_fc,
    **{f"cifar10_{m}": functools.partial(_cifar, m) for m in _imp.CIFAR_CONV},
}


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the PNG plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    imp = [r for r in rows if "level" in r]
    c0, k0, p0 = cfg.criteria[0], cfg.kept[0], cfg.pruned[0]
    out: dict[str, Path] = {}
    common: dict[str, Any] = {"x": "density", "log_x": True, "invert_x": True, "xlabel": "density"}
    sign_styles = {k: {"linestyle": "-" if k in _imp.SIGN_PRESERVING else "--"} for k in ALL_KEPT}
    slices = [
        ("criterion", {"kept": k0, "pruned": p0}, None),
        ("kept", {"criterion": c0, "pruned": p0}, sign_styles),
        ("pruned", {"criterion": c0, "kept": k0}, None),
    ]
    for series, where, styles in slices:
        if len({r[series] for r in imp if all(r[k] == v for k, v in where.items())}) < 2:
            continue
        fixed = ", ".join(f"{k}={v}" for k, v in where.items())
        out[f"accuracy_by_{series}"] = plots.line_plot(
            imp, y="early_stop_test_acc", series=series, where=where, styles=styles,
            path=folder / f"accuracy_by_{series}.png", ylabel="test accuracy (early stop)",
            title=f"Accuracy vs density per {series} ({fixed})", **common,
        )  # fmt: skip
        out[f"early_stop_by_{series}"] = plots.line_plot(
            imp, y="early_stop_iteration", series=series, where=where, styles=styles,
            path=folder / f"early_stop_by_{series}.png", ylabel="early-stop iteration",
            title=f"Early-stop iteration vs density per {series} ({fixed})", **common,
        )  # fmt: skip
    pruned_rows = [r for r in imp if r["level"] != 0]
    if pruned_rows:
        out["supermask_by_criterion"] = plots.line_plot(
            pruned_rows, y="supermask_acc", series="criterion", where={"kept": k0, "pruned": p0},
            path=folder / "supermask_by_criterion.png", ylabel="untrained accuracy",
            title="Supermasks: untrained mask × signed-constant weights", **common,
        )  # fmt: skip
        out["untrained_by_kept"] = plots.line_plot(
            pruned_rows, y="untrained_acc", series="kept", where={"criterion": c0, "pruned": p0},
            styles=sign_styles, path=folder / "untrained_by_kept.png",
            ylabel="untrained accuracy", title=f"Untrained {c0} masks per kept reset", **common,
        )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def summary(rows: Sequence[dict[str, Any]], cfg: Config, *, every_level: bool = True) -> str:
    """Markdown tables of a run, mean ± std over seeds: dense, then each ablation slice at the
    lowest density, the learned supermasks, and (``every_level``) every level of every ticket."""
    imp = [r for r in rows if "level" in r]
    c0, k0, p0 = cfg.criteria[0], cfg.kept[0], cfg.pruned[0]
    last = max((r["level"] for r in imp), default=0)
    low = [r for r in imp if r["level"] == last]
    density = low[0]["density"] if low else 1.0
    accs = ["early_stop_test_acc", "final_test_acc", "first_eval_test_acc"]
    untrained = ["untrained_acc", "supermask_acc"]
    base = {"criterion": c0, "kept": k0, "pruned": p0}

    def only(rs: Sequence[dict[str, Any]], **fixed: Any) -> list[dict[str, Any]]:
        return [r for r in rs if all(r[k] == v for k, v in fixed.items())]

    at = f"level {last}, density {density:.3f}"
    parts = [
        f"# Deconstructing lottery tickets — preset `{cfg.preset}` ({cfg.dataset}, {cfg.model})\n",
        f"{cfg.seeds} seeds, mean ± std over seeds. `first_eval_test_acc` is the test accuracy "
        f"after {cfg.eval_every} iterations; `untrained_acc` the masked network before training "
        "with the ticket's own reset; `supermask_acc` the same mask on signed-constant weights.\n",
        results.markdown_table(
            only(imp, level=0, **base), by=["level"], values=accs, title="Dense network"
        ),
    ]
    slices = [
        ("criterion", ["criterion"], {"kept": k0, "pruned": p0}),
        ("kept reset", ["kept", "sign_preserving"], {"criterion": c0, "pruned": p0}),
        ("pruned value", ["pruned"], {"criterion": c0, "kept": k0}),
    ]
    for what, by, fixed in slices:
        chosen = only(low, **fixed)
        if last and len({tuple(r[b] for b in by) for r in chosen}) > 1:
            where = ", ".join(f"{k}={v}" for k, v in fixed.items())
            parts.append(
                results.markdown_table(
                    chosen, by=by, values=[*accs, *untrained], title=f"Per {what} ({where}; {at})"
                )
            )
    learned = [r for r in rows if "rescale" in r]
    if learned:
        parts.append(
            results.markdown_table(
                learned,
                by=["rescale"],
                values=["density", "final_test_acc", "early_stop_test_acc"],
                title="Learned supermasks (weights frozen at θ₀, Bernoulli logits)",
            )
        )
    if every_level:
        parts.append(
            results.markdown_table(
                [r for r in imp if r["level"] > 0],
                by=["criterion", "kept", "pruned", "level"],
                values=["density", *accs, "early_stop_iteration", *untrained],
                title="Every level",
            )
        )
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"


def table(cfg: Config) -> tickets.Table:
    """Every (criterion, kept, pruned) combination of the grid for every seed, seed-major."""
    return tickets.grid(
        cfg.seeds, cfg.criteria, cfg.kept, cfg.pruned, layout=cfg.grid, key=_imp.keys()[0]
    )


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Every level of every ticket, then the learned supermasks; returns the run folder."""
    t = table(cfg)
    return _imp.run(
        "deconstructing", cfg, t, ["-"] * t.n, out=out, progress=progress,
        extra=functools.partial(learned_supermasks, cfg),
    )  # fmt: skip


def learned_supermasks(
    cfg: Config, store: results.Store, s: _imp.Setup, progress: bool
) -> tuple[float, int]:
    """Weights frozen at θ₀, a logit per weight trained through a Bernoulli sample (Zhou et al.),
    with and without dynamic weight rescaling: one committed unit; returns the training seconds
    and ticket-steps."""
    if not cfg.supermask_iterations or store.has("learned_supermask"):
        return 0.0, 0
    rows, seconds = [], 0.0
    keys = jax.random.split(jax.random.key(7), cfg.seeds)
    ones = jax.jit(jax.vmap(masks.ones))(s.theta0)
    batch = min(cfg.supermask_batch_size, len(s.ds.train.y))
    for rescale in (False, True):
        steps = supermask.make_steps(
            s.apply_fn, optax.sgd(cfg.supermask_lr, momentum=0.9), rescale=rescale
        )
        state = jax.jit(jax.vmap(lambda w, k, st=steps: st.init(supermask.logits_init(w), key=k)))(
            s.theta0, keys
        )
        with train.count_compiles() as compiles:
            t0 = time.perf_counter()
            state, hist = train.fit(
                steps, state, ones, s.ds.train, s.ds.val, s.ds.test,
                iterations=cfg.supermask_iterations, batch_size=batch,
                eval_every=min(cfg.eval_every, cfg.supermask_iterations),
                data_key=jax.random.key(3), frozen=s.theta0, tickets=True,
                mesh=train.mesh_for(cfg.seeds), progress=progress,
                desc=f"learned supermask{' (rescaled)' if rescale else ''}",
            )  # fmt: skip
            seconds += time.perf_counter() - t0 - compiles.seconds
        dens = sweep.prunable_density(jax.jit(jax.vmap(supermask.mask_of))(state.params))
        for seed in range(cfg.seeds):
            rows.append(
                {
                    "study": "deconstructing", "preset": cfg.preset, "dataset": cfg.dataset,
                    "model": cfg.model, "seed": seed, "rescale": rescale,
                    "density": float(dens[seed]), **sweep.history_columns(hist, seed),
                    "iterations": cfg.supermask_iterations,
                }
            )  # fmt: skip
    store.write("learned_supermask", rows)
    return seconds, 2 * cfg.seeds * cfg.supermask_iterations


def brief(folder: Path, cfg: Config) -> str:
    """What the command prints: the summary without the every-level table."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    n = len({r["ticket"] for r in rows if "ticket" in r})
    return (
        summary(rows, cfg, every_level=False)
        + f"\n{n} tickets × {cfg.levels + 1} levels (the every-level table is in summary.md)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="deconstructing", help=_imp.HELP,
        check=_imp.validate, run=run, report=report, brief=brief,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
