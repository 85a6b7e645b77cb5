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
import functools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments import _study  # sets the host device count before jax's backend starts
from jaxprune import data, masks, models, plots, results, saliency, select, train

METHODS = ("obd", "magnitude")
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


@functools.partial(jax.jit, static_argnames=("apply_fn", "method", "scope", "hessian", "probes"))
def _prune(
    apply_fn: Any,
    method: str,
    scope: str,
    hessian: Any,  # a name of saliency.OBD_METHODS
    probes: int,
    params: Any,
    mask: Any,
    batch: Any,
    keys: Any,
    rate: jax.Array,
) -> Any:
    """Per ticket: score the trained (masked) weights, drop ``rate`` of the remaining ones."""

    def one(p: Any, m: Any, k: Any) -> Any:
        if method == "obd":
            s = saliency.obd(apply_fn, p, batch, method=hessian, probes=probes, key=k)
        else:
            s = jax.tree.map(jnp.abs, p)
        pick = select.global_ if scope == "global" else select.layerwise
        return pick(s, m, rate, key=jax.random.fold_in(k, 1))

    return jax.vmap(one)(params, mask, keys)


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Train dense, then prune and retrain every ticket level by level; returns the folder."""
    validate(cfg)
    ds = data.load(cfg.dataset, seed=0, val_size=cfg.val_size, data_dir=cfg.data_dir)
    if cfg.batch_size > len(ds.train.y):
        raise ValueError(
            f"--batch-size must be at most the {len(ds.train.y)} training examples of "
            f"{cfg.dataset!r}, got {cfg.batch_size}."
        )
    options = {"hidden": cfg.hidden} if cfg.model == "mlp" and cfg.hidden else {}
    funcs = [
        models.functional(
            models.build(
                cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s,
                **options,
            )
        )
        for s in range(cfg.seeds)
    ]  # fmt: skip
    apply_fn = funcs[0][0]
    size = models.param_count(funcs[0][1])
    if "obd" in cfg.methods and cfg.hessian == "exact" and size > saliency.EXACT_LIMIT:
        raise ValueError(
            f"--hessian exact takes one Hessian-vector product per weight, for models of at most "
            f"{saliency.EXACT_LIMIT} params; {cfg.model} has {size}. Use --hessian hutchinson "
            "(with --probes), --hessian gauss_newton, or a smaller model (--model mlp --hidden 32)."
        )
    store = results.Store(results.run_dir(out, "obd", cfg.to_json()), cfg.to_json())
    state_dir = store.path / "state"
    theta0 = train.stack([f[1] for f in funcs])
    labels = [(m, s) for m in cfg.methods for s in range(cfg.seeds)]
    n = len(labels)
    steps = train.make_steps(apply_fn, optax.adam(cfg.lr))
    root = jax.random.key(19900101)
    pick = np.random.default_rng(0).permutation(len(ds.train.y))[: cfg.score_examples]
    batch = (jnp.asarray(ds.train.x[pick]), jnp.asarray(ds.train.y[pick]))
    base = {"study": "obd", "preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model,
            "scope": cfg.scope, "hessian": cfg.hessian}  # fmt: skip
    done = set(store.done())
    start = time.time()
    like = {"mask": _stack_labels(jax.vmap(masks.ones)(theta0), labels),
            "params": _stack_labels(theta0, labels)}  # fmt: skip

    if "level_000" in done:
        saved = train.checkpoint.restore(state_dir / "level_000", like=like)
    else:
        ones = jax.vmap(masks.ones)(theta0)
        state, hist = _fit(cfg, ds, steps, theta0, ones, cfg.iterations, progress, "dense")
        params = _stack_labels(state.params, labels)
        saved = {"mask": _stack_labels(ones, labels), "params": params}
        train.checkpoint.save(state_dir / "level_000", saved, overwrite=True)
        rows = [
            {
                **base,
                "method": m,
                "seed": s,
                "level": 0,
                "density": 1.0,
                "pruned_test_acc": None,
                **_study._history_cols(hist, s),
            }
            for m, s in labels
        ]
        store.write("level_000", rows)
    mask, params = saved["mask"], saved["params"]

    bar = tqdm(range(1, cfg.levels + 1), desc="obd: levels", unit="level", disable=not progress)
    for level in bar:
        name = f"level_{level:03d}"
        if name in done:
            saved = train.checkpoint.restore(state_dir / name, like=like)
            mask, params = saved["mask"], saved["params"]
            continue
        keys = jax.vmap(lambda i, lv=level: jax.random.fold_in(jax.random.fold_in(root, lv), i))(
            jnp.arange(n)
        )
        new = mask
        for method in cfg.methods:
            idx = [i for i, (m, _) in enumerate(labels) if m == method]
            part = _prune(
                apply_fn, method, cfg.scope, cfg.hessian, cfg.probes,
                _study._take(params, idx), _study._take(mask, idx), batch, keys[np.asarray(idx)],
                jnp.float32(cfg.rate),
            )  # fmt: skip
            new = _study._put(new, idx, part)
        mask = new
        pruned = jax.vmap(masks.apply)(params, mask)
        pruned_acc = np.asarray(
            train.evaluate(steps, pruned, mask, None, *ds.test, tickets=True)[1]
        )
        state, hist = _fit(
            cfg, ds, steps, pruned, mask, cfg.retrain_iterations, progress,
            f"level {level}/{cfg.levels}",
        )  # fmt: skip
        params = jax.device_put(state.params, jax.devices()[0])
        train.checkpoint.save(state_dir / name, {"mask": mask, "params": params}, overwrite=True)
        dens = _study._density(mask)
        rows = [
            {
                **base,
                "method": m,
                "seed": s,
                "level": level,
                "density": float(dens[i]),
                "pruned_test_acc": float(pruned_acc[i]),
                **_study._history_cols(hist, i),
            }
            for i, (m, s) in enumerate(labels)
        ]
        store.write(name, rows)
    bar.close()
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    return store.path


def _stack_labels(per_seed: Any, labels: Sequence[tuple[str, int]]) -> Any:
    """Seed-stacked leaves → label-stacked (one row per ticket), on the host."""
    return _study._take(per_seed, [s for _, s in labels])


def _fit(
    cfg: Config, ds: data.Dataset, steps: train.Steps, params: Any, mask: Any, iterations: int,
    progress: bool, desc: str,
) -> tuple[Any, train.History]:  # fmt: skip
    n = jax.tree.leaves(mask)[0].shape[0]
    return train.fit(
        steps, jax.vmap(steps.init)(params), mask, ds.train, ds.val, ds.test,
        iterations=iterations, batch_size=cfg.batch_size,
        eval_every=min(cfg.eval_every, iterations), data_key=jax.random.key(7), tickets=True,
        mesh=_study._mesh_for(n), progress=progress, desc=f"{desc} ({n} tickets)",
    )  # fmt: skip


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """Per level and method, mean ± std over seeds."""
    return (
        f"# Optimal Brain Damage vs magnitude — preset `{cfg.preset}` ({cfg.dataset}, "
        f"{cfg.model}, {cfg.scope} ranking, {cfg.hessian} Hessian diagonal)\n\n"
        f"{cfg.seeds} seeds, mean ± std. `pruned_test_acc`: right after pruning, before "
        f"retraining; the others after {cfg.retrain_iterations} retraining iterations.\n\n"
        + results.markdown_table(
            rows,
            by=["level", "method"],
            values=["density", "pruned_test_acc", "early_stop_test_acc", "final_test_acc"],
        )
    )


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json()).rows()
    common: dict[str, Any] = {"x": "density", "series": "method", "log_x": True,
                              "invert_x": True, "xlabel": "density"}  # fmt: skip
    out = {
        "accuracy_pruned": plots.line_plot(
            [r for r in rows if r["level"] != 0], y="pruned_test_acc",
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
        argv, __doc__ or "", PRESETS, help=HELP, check=validate, run=run, report=report
    )


if __name__ == "__main__":
    sys.exit(main())
