"""Optimal Brain Damage (LeCun et al. 1990) against magnitude pruning, on the same schedule.

LeCun's loop: train the network, score every weight by its saliency ½·h_qq·θ_q² (h the diagonal
of the loss Hessian on training data), delete the lowest-scoring weights, retrain, repeat. The
magnitude baseline runs the same loop scoring by |θ_q|. Both methods and all seeds are tickets on
one axis: every level scores, prunes and retrains them in one vmapped program.

Reports per level, method and seed: density, test accuracy right after pruning (before any
retraining: what the saliency is meant to predict — deleting low-saliency weights should cost
little), and test accuracy after retraining (at the early-stop iteration and at the end).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100, 2 seeds, 1,000 dense iterations, then 6 levels each pruning
  half of the remaining weights (global ranking, as in the paper) and retraining 300 iterations;
  the Gauss-Newton Hessian diagonal (LeCun et al.'s own approximation) on 1,000 training
  examples. About a minute on 2 CPU cores. ``python -m experiments.obd``.
* ``digits_exact`` — the same on a small MLP (64-32-10, 2,410 params) with the *exact* Hessian
  diagonal (one Hessian-vector product per weight).
* ``mnist_lenet`` — MNIST LeNet-300-100, Adam 1.2e-3, batch 60, 20k dense iterations and 5k per
  retraining. mnist must be prepared offline (``tfds build mnist
  --file_format=array_record`` on a connected machine, then ``--data-dir``).

Expected (LeCun et al.): OBD deletes weights with less damage before retraining than magnitude
does, most visibly at high sparsity; after retraining the gap narrows.

Run folder: ``runs/obd-<preset>-<hash>/`` with ``rows/`` (one committed file per level;
resumable), ``state/`` (masks and weights per level, orbax), ``results.csv``, ``summary.md``,
``accuracy_pruned.png`` and ``accuracy_retrained.png``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import models, plots, results, saliency, sweep, tickets, train

from . import _study

METHODS = ("obd", "magnitude")
ROOT_KEY = 19900101
SCOPES = ("global", "layerwise")


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of an OBD run (see ``--help`` for each)."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "lenet300_100"
    hidden: tuple[int, ...] = ()
    val_size: int | None = None
    methods: tuple[str, ...] = METHODS
    scope: str = "global"
    levels: int = 6
    rate: float = 0.5
    iterations: int = 1000
    retrain_iterations: int = 300
    batch_size: int = 60
    lr: float = 1.2e-3
    eval_every: int = 50
    seeds: int = 2
    hessian: str = "gauss_newton"
    probes: int = 64
    score_examples: int = 1000
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "hidden": "hidden widths of the 'mlp' model, e.g. '64,32' (other models ignore it)",
    "methods": f"comma list from {METHODS}",
    "scope": f"ranking of the scores, one of {SCOPES} (LeCun et al. rank globally)",
    "levels": "prune-and-retrain rounds after the dense training",
    "rate": "fraction of the remaining weights deleted at each level",
    "iterations": "dense training steps before the first pruning",
    "retrain_iterations": "retraining steps after each pruning",
    "hessian": "Hessian diagonal: 'gauss_newton' (LeCun's approximation, any size), 'exact' "
    "(one Hessian-vector product per weight: small models) or 'hutchinson' (a noisy estimate)",
    "probes": "Rademacher probes of the Hutchinson estimate",
    "score_examples": "training examples on which the Hessian diagonal is taken",
}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained."""
    _study.check_common(cfg)
    _study.check_at_least(cfg, 1, "retrain_iterations", "probes", "score_examples")
    _study.check_at_least(cfg, 0, "levels")
    if not 0.0 < cfg.rate < 1.0:
        _study.fail("rate", "a fraction in (0, 1)", cfg.rate)
    _study.check_names(cfg, "methods", METHODS)
    if cfg.scope not in SCOPES:
        _study.fail("scope", f"one of {SCOPES}", cfg.scope)
    if cfg.hessian not in saliency.OBD_METHODS:
        _study.fail("hessian", f"one of {saliency.OBD_METHODS}", cfg.hessian)
    if any(h < 1 for h in cfg.hidden):
        _study.fail("hidden", "positive widths", ",".join(map(str, cfg.hidden)))


def quick() -> Config:
    """Digits, LeNet-300-100, Gauss-Newton OBD vs magnitude, 6 levels of 50%, 2 seeds."""
    return Config(preset="quick")


def digits_exact() -> Config:
    """Digits, a 64-32-10 MLP, the exact Hessian diagonal."""
    return Config(preset="digits_exact", model="mlp", hidden=(32,), hessian="exact")


def mnist_lenet() -> Config:
    """MNIST LeNet-300-100 (Adam 1.2e-3, batch 60; RESEARCH.md §1 settings)."""
    return Config(
        preset="mnist_lenet",
        dataset="mnist",
        iterations=20_000,
        retrain_iterations=5_000,
        eval_every=500,
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "digits_exact": digits_exact,
    "mnist_lenet": mnist_lenet,
}


def table(cfg: Config) -> tickets.Table:
    """Every method × seed: OBD scores (``"obd"``) or magnitude (``large_final``), and every kept
    weight continues from its trained value (``fine_tune``): LeCun's prune-and-retrain loop."""
    crit = {"obd": "obd", "magnitude": "large_final"}
    return tickets.table(
        [tickets.Ticket(s, crit[m], "fine_tune") for m in cfg.methods for s in range(cfg.seeds)],
        key=jax.random.split(jax.random.key(ROOT_KEY))[0],
    )


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Train dense, then prune and retrain every ticket level by level; returns the folder."""
    validate(cfg)
    ds = _study.load_data(cfg)
    if cfg.score_examples > len(ds.train.y):
        _study.fail(
            "score_examples", f"at most the {len(ds.train.y)} training examples of {cfg.dataset!r}",
            cfg.score_examples,
        )  # fmt: skip
    options = {"hidden": cfg.hidden} if cfg.model == "mlp" and cfg.hidden else {}
    nets = [
        models.functional(
            models.build(
                cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s,
                **options,
            )
        )
        for s in range(cfg.seeds)
    ]  # fmt: skip
    apply_fn = nets[0][0]
    size = models.param_count(nets[0][1])
    if "obd" in cfg.methods and cfg.hessian == "exact" and size > saliency.EXACT_LIMIT:
        raise ValueError(
            f"--hessian exact takes one Hessian-vector product per weight, for models of at most "
            f"{saliency.EXACT_LIMIT} params; {cfg.model} has {size}. Use --hessian hutchinson "
            "(with --probes), --hessian gauss_newton, or a smaller model (--model mlp --hidden 32)."
        )
    pick = np.random.default_rng(0).permutation(len(ds.train.y))[: cfg.score_examples]
    batch = (jnp.asarray(ds.train.x[pick]), jnp.asarray(ds.train.y[pick]))

    def obd(w_init: Any, w_final: Any, *, grads: Any, mask: Any, key: Any) -> Any:
        """½·h_qq·θ_q² of the trained (pruned) weights."""
        del w_init, grads, mask
        return saliency.obd(
            apply_fn,
            w_final,
            batch,
            method=cfg.hessian,  # type: ignore[arg-type]
            probes=cfg.probes,
            key=key,
        )

    t = table(cfg)
    store = results.Store(results.run_dir(out, "obd", cfg.to_json()), cfg.to_json())
    base = {"study": "obd", "preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model,
            "scope": cfg.scope, "hessian": cfg.hessian}  # fmt: skip
    done = sweep.run_levels(
        store, t, apply_fn, train.stack([n[1] for n in nets]), ds,
        optimizer=optax.adam(cfg.lr), levels=cfg.levels, rates=cfg.rate,
        iterations=cfg.retrain_iterations, dense_iterations=cfg.iterations,
        batch_size=cfg.batch_size, eval_every=cfg.eval_every,
        key=jax.random.split(jax.random.key(ROOT_KEY))[1], scope=cfg.scope,
        scorers={"obd": obd}, columns=[{**base, "method": m} for m in cfg.methods for _ in range(cfg.seeds)],
        progress=progress, desc="obd: levels",
    )  # fmt: skip
    (store.path / "timings.json").write_text(json.dumps(done.timings, indent=1) + "\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """Per level and method, mean ± std over seeds."""
    return (
        f"# Optimal Brain Damage vs magnitude — preset `{cfg.preset}` ({cfg.dataset}, "
        f"{cfg.model}, {cfg.scope} ranking, {cfg.hessian} Hessian diagonal)\n\n"
        f"{cfg.seeds} seeds, mean ± std. `untrained_acc`: right after pruning, before "
        f"retraining; the others after {cfg.retrain_iterations} retraining iterations.\n\n"
        + results.markdown_table(
            rows,
            by=["level", "method"],
            values=["density", "untrained_acc", "early_stop_test_acc", "final_test_acc"],
        )
    )


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    common: dict[str, Any] = {"x": "density", "series": "method", "log_x": True,
                              "invert_x": True, "xlabel": "density"}  # fmt: skip
    out = {
        "accuracy_pruned": plots.line_plot(
            [r for r in rows if r["level"] != 0], y="untrained_acc",
            path=folder / "accuracy_pruned.png", ylabel="test accuracy before retraining",
            title="Right after pruning", **common,
        ),
        "accuracy_retrained": plots.line_plot(
            rows, y="early_stop_test_acc", path=folder / "accuracy_retrained.png",
            ylabel="test accuracy (early stop)", title="After retraining", **common,
        ),
    }  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="obd", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
