"""Pruning at initialisation: magnitude, random, SNIP, GraSP, SynFlow, OBD and Taylor, compared.

Every method scores the weights of the *untrained* network θ₀ (the data-dependent ones on one
class-balanced batch of training examples, SynFlow on none), a mask keeps a fraction ``density``
of the prunable weights — per layer (``layerwise``: every layer keeps that fraction) or against one
ranking over the whole network (``global``) — and the masked network is then trained. All the
tickets of one density (methods × scopes × seeds) train together in one vmapped, scanned program.

Reports, per method, scope and density: test accuracy (at the early-stop iteration and at the
end), the density of the sparsest layer, and whether any layer collapsed (kept no weight at all:
the network can no longer pass a signal — Tanaka et al. 2020's *layer collapse*).

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — digits, LeNet-300-100, densities 10^0 … 10^-3 in half decades, 7 methods × 2
  scopes × 2 seeds, 500 iterations: a few minutes on 2 CPU cores.
  ``python -m experiments.pruning_at_init``.
* ``mnist_lenet`` — MNIST, LeNet-300-100, Adam 1.2e-3, batch 60, 10k iterations, 3 seeds
  (SNIP's LeNet-300-100 setting, Lee et al. 2019: ≈ 98% at 5% density, ≈ 97.6% at 2%).
  mnist must be prepared offline (``tfds build mnist --file_format=array_record`` on a connected
  machine, then ``--data-dir``). The CIFAR VGG/ResNet presets of the SynFlow paper wait for the
  VGG and ResNet models.

Run folder: ``runs/pruning_at_init-<preset>-<hash>/`` with ``rows/`` (one committed file per
density; an interrupted run started again resumes), ``state/`` (the masks, orbax),
``results.csv``, ``summary.md`` and ``accuracy.png`` / ``min_layer_density.png``.
"""

from __future__ import annotations

import dataclasses
import math
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

from jaxprune import data, masks, models, plots, results, saliency, select, sweep, train

from . import _study

METHODS = ("magnitude", "random", "snip", "grasp", "synflow", "obd", "taylor")
SCOPES = ("layerwise", "global")
HALF_DECADES = tuple(float(f"{10 ** (-k / 2):.4g}") for k in range(7))  # 1 … 0.001


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a pruning-at-initialisation run (see ``--help`` for each)."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "lenet300_100"
    val_size: int | None = None
    methods: tuple[str, ...] = METHODS
    scopes: tuple[str, ...] = SCOPES
    densities: tuple[float, ...] = HALF_DECADES
    iterations: int = 500
    batch_size: int = 60
    lr: float = 1.2e-3
    eval_every: int = 50
    seeds: int = 2
    per_class: int = 10
    grasp_temperature: float = 200.0
    synflow_rounds: int = 100
    obd_hessian: str = "gauss_newton"
    obd_probes: int = 64
    taylor_microbatches: int = 10
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "methods": f"comma list of saliency methods, from {METHODS}",
    "scopes": f"comma list of selection scopes, from {SCOPES}",
    "densities": "comma list of kept fractions in (0, 1]; 1 trains the dense network",
    "iterations": "training steps after pruning",
    "per_class": "examples per class in the scoring batch (SNIP, GraSP, Taylor, OBD)",
    "grasp_temperature": "GraSP divides the logits by this before the loss (200 in the paper)",
    "synflow_rounds": "SynFlow's pruning rounds (exponential schedule; 100 in the paper)",
    "obd_hessian": f"OBD's Hessian diagonal, one of {saliency.OBD_METHODS}",
    "obd_probes": "Rademacher probes of the Hutchinson Hessian-diagonal estimate (OBD)",
    "taylor_microbatches": "Taylor averages (g·θ)² over this many slices of the scoring batch "
    "(each slice holds per_class/slices examples of every class)",
}


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained."""
    _study.check_common(cfg)
    _study.check_at_least(
        cfg, 1, "per_class", "synflow_rounds", "obd_probes", "taylor_microbatches"
    )
    if not cfg.grasp_temperature > 0:
        _study.fail("grasp_temperature", "> 0", cfg.grasp_temperature)
    if cfg.per_class % cfg.taylor_microbatches:
        _study.fail("taylor_microbatches", f"a divisor of --per-class ({cfg.per_class})",
                    cfg.taylor_microbatches)  # fmt: skip
    if cfg.obd_hessian not in saliency.OBD_METHODS:
        _study.fail("obd_hessian", f"one of {saliency.OBD_METHODS}", cfg.obd_hessian)
    _study.check_names(cfg, "methods", METHODS)
    _study.check_names(cfg, "scopes", SCOPES)
    _study.check_fractions(cfg, "densities", "numbers", one_ok=True)


def quick() -> Config:
    """Digits, LeNet-300-100, every method and scope, 10^0 … 10^-3, 2 seeds."""
    return Config(preset="quick")


def mnist_lenet() -> Config:
    """MNIST LeNet-300-100 (Lee et al. 2019's SNIP setting; Adam 1.2e-3, batch 60)."""
    return Config(preset="mnist_lenet", dataset="mnist", iterations=10_000, eval_every=500, seeds=3)


PRESETS: dict[str, Callable[[], Config]] = {"quick": quick, "mnist_lenet": mnist_lenet}


# ---- masks -------------------------------------------------------------------------------------


def _scores(cfg: Config, apply_fn: Any, method: str, params: Any, batch: Any, key: Any) -> Any:
    """One ticket's scores at θ₀ (higher = keep)."""
    options: dict[str, Any] = {}
    if method == "grasp":
        options["temperature"] = cfg.grasp_temperature
    elif method == "obd":
        options.update(method=cfg.obd_hessian, probes=cfg.obd_probes)
    elif method == "taylor":
        options["microbatches"] = cfg.taylor_microbatches
    return saliency.score(method, apply_fn, params, batch, key=key, **options)


def _masks_for(
    cfg: Config, apply_fn: Any, input_shape: tuple[int, ...], theta0: Any, batches: Any, keys: Any
) -> dict[tuple[str, str], Any]:
    """``{(method, scope): mask stacked over (density, seed)}`` for the densities below 1."""
    densities = jnp.asarray([d for d in cfg.densities if d < 1.0], jnp.float32)
    out: dict[tuple[str, str], Any] = {}
    for method in cfg.methods:
        for scope in cfg.scopes:
            out[(method, scope)] = _method_masks(
                cfg, apply_fn, input_shape, method, scope, theta0, batches, keys, densities
            )
    return out


def _method_masks(
    cfg: Config,
    apply_fn: Any,
    input_shape: tuple[int, ...],
    method: str,
    scope: Any,  # a name of SCOPES
    theta0: Any,
    batches: Any,
    keys: Any,
    densities: jax.Array,
) -> Any:
    @jax.jit
    def per_seed(params: Any, batch: Any, key: Any) -> Any:
        ones = masks.ones(params)
        if method == "synflow":  # iterative: the scores depend on the target density

            def at(d: jax.Array) -> Any:
                return saliency.synflow_prune(
                    apply_fn, params, ones, input_shape, density=d,
                    rounds=cfg.synflow_rounds, scope=scope,
                )  # fmt: skip

            return jax.lax.map(at, densities)
        s = _scores(cfg, apply_fn, method, params, batch, key)
        pick = select.layerwise if scope == "layerwise" else select.global_
        tie = jax.random.fold_in(key, 1)
        return jax.lax.map(lambda d: pick(s, ones, 1.0 - d, key=tie), densities)

    per = [
        per_seed(
            jax.tree.map(lambda a, i=i: a[i], theta0),
            jax.tree.map(lambda a, i=i: a[i], batches),
            keys[i],
        )
        for i in range(cfg.seeds)
    ]
    return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a], axis=1), *per)


def layer_stats(mask: Any, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per ticket of a stacked ``mask``: the smallest density of a prunable layer, and collapse.

    A layer has collapsed when it keeps no weight at all.
    """
    flags = jax.tree.leaves(masks.is_prunable(jax.tree.map(lambda a: a[0], params)))
    per_layer = [
        np.asarray(m).reshape(np.shape(m)[0], -1).mean(axis=1)
        for m, f in zip(jax.tree.leaves(mask), flags, strict=True)
        if f
    ]
    dens = np.stack(per_layer, axis=1)
    return dens.min(axis=1), (dens == 0).any(axis=1)


# ---- the run -----------------------------------------------------------------------------------


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Score, prune and train every ticket, one committed unit per density; returns the folder."""
    validate(cfg)
    ds = _study.load_data(cfg)
    fewest = int(np.bincount(ds.train.y, minlength=ds.num_classes).min())
    if cfg.per_class > fewest:
        _study.fail(
            "per_class", f"at most {fewest}, the training examples of the rarest class of "
            f"{cfg.dataset!r}", cfg.per_class,
        )  # fmt: skip
    funcs = [
        models.functional(
            models.build(cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s)
        )
        for s in range(cfg.seeds)
    ]
    apply_fn = funcs[0][0]
    theta0 = train.stack([f[1] for f in funcs])
    root = jax.random.key(20200626)
    keys = [jax.random.fold_in(root, s) for s in range(cfg.seeds)]
    batches = train.stack([_scoring_batch(ds, cfg.per_class, k) for k in keys])
    # Every setting is checked: only now is the run folder made.
    store = results.Store(results.run_dir(out, "pruning_at_init", cfg.to_json()), cfg.to_json())
    steps = train.make_steps(apply_fn, optax.adam(cfg.lr))
    done = set(store.done())
    start = time.time()
    base = {"study": "pruning_at_init", "preset": cfg.preset, "dataset": cfg.dataset,
            "model": cfg.model}  # fmt: skip
    sparse = [d for d in cfg.densities if d < 1.0]
    mask_of: dict[tuple[str, str], Any] | None = None
    units = [("dense", 1.0)] * (1.0 in cfg.densities) + [
        (f"density_{i:02d}", d) for i, d in enumerate(sparse)
    ]
    bar = tqdm(units, desc="pruning_at_init: densities", unit="density", disable=not progress)
    for unit, d in bar:
        bar.set_postfix(density=d)
        if unit in done:
            continue
        if unit == "dense":
            ones = jax.vmap(masks.ones)(theta0)
            _, hist = _fit(cfg, ds, steps, theta0, ones, progress, "dense")
            labels = [
                (m, sc, s) for m in cfg.methods for sc in cfg.scopes for s in range(cfg.seeds)
            ]
            rows = [_row(base, label, 1.0, 1.0, 1.0, False, hist, label[2]) for label in labels]
            store.write(unit, rows)
            continue
        if mask_of is None:
            mask_of = _masks_for(cfg, apply_fn, ds.input_shape, theta0, batches, keys)
        j = sparse.index(d)
        labels = [(m, sc, s) for m in cfg.methods for sc in cfg.scopes for s in range(cfg.seeds)]
        mask = jax.tree.map(
            lambda *a: np.concatenate(a, axis=0),
            *[_at(mask_of[(m, sc)], j) for m in cfg.methods for sc in cfg.scopes],
        )
        params0 = train.stack([jax.tree.map(lambda a, s=s: a[s], theta0) for *_, s in labels])
        min_dens, collapsed = layer_stats(mask, theta0)
        dens = sweep.prunable_density(mask)
        train.checkpoint.save(store.path / "state" / unit, {"mask": mask}, overwrite=True)
        _, hist = _fit(cfg, ds, steps, params0, mask, progress, f"density {d:g}")
        rows = [
            _row(base, label, d, float(dens[i]), float(min_dens[i]), bool(collapsed[i]), hist, i)
            for i, label in enumerate(labels)
        ]
        store.write(unit, rows)
    bar.close()
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


def _scoring_batch(ds: data.Dataset, per_class: int, key: Any) -> tuple[Any, Any]:
    """A class-balanced batch, interleaved (one example of each class, then the next…), so that
    every contiguous slice — Taylor's microbatches — holds all classes equally."""
    x, y = saliency.balanced_batch(
        ds.train.x, ds.train.y, per_class, key=key, num_classes=ds.num_classes
    )
    order = np.arange(ds.num_classes * per_class).reshape(ds.num_classes, per_class).T.ravel()
    return x[order], y[order]


def _at(tree: Any, j: int) -> Any:
    return jax.tree.map(lambda a: a[j], tree)


def _row(
    base: dict[str, Any],
    label: tuple[str, str, int],
    target: float,
    density: float,
    min_layer_density: float,
    collapsed: bool,
    hist: train.History,
    i: int,
) -> dict[str, Any]:
    method, scope, seed = label
    return {
        **base,
        "method": method,
        "scope": scope,
        "seed": seed,
        "density_target": target,
        "density": density,
        "compression": math.log10(1.0 / target),
        "min_layer_density": min_layer_density,
        "collapsed": collapsed,
        **sweep.history_columns(hist, i),
    }


def _fit(
    cfg: Config, ds: data.Dataset, steps: train.Steps, params: Any, mask: Any, progress: bool,
    desc: str,
) -> tuple[Any, train.History]:  # fmt: skip
    n = jax.tree.leaves(mask)[0].shape[0]
    state = jax.vmap(steps.init)(jax.vmap(masks.apply)(params, mask))
    return train.fit(
        steps, state, mask, ds.train, ds.val, ds.test, iterations=cfg.iterations,
        batch_size=cfg.batch_size, eval_every=min(cfg.eval_every, cfg.iterations),
        data_key=jax.random.key(1), tickets=True, mesh=train.mesh_for(n),
        progress=progress, desc=f"{desc} ({n} tickets)",
    )  # fmt: skip


# ---- report ------------------------------------------------------------------------------------


def pivot(rows: Sequence[dict[str, Any]], value: str, digits: int = 3) -> str:
    """A markdown table: one line per method / scope, one column per density, mean ± std."""
    stats = results.summarize(rows, by=["method", "scope", "density_target"], values=[value])
    cols = sorted({r["density_target"] for r in stats}, reverse=True)
    cell = {(r["method"], r["scope"], r["density_target"]): r for r in stats}
    lines = [
        "| method | scope | " + " | ".join(f"{c:g}" for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for m, sc in dict.fromkeys((r["method"], r["scope"]) for r in stats):
        vals = []
        for c in cols:
            r = cell.get((m, sc, c))
            mean, std = (r[f"{value}_mean"], r[f"{value}_std"]) if r else (None, None)
            vals.append("—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}")
        lines.append(f"| {m} | {sc} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def first_collapse(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], float | None]:
    """Per method / scope: the highest density at which some seed collapsed a layer (or None)."""
    out: dict[tuple[str, str], float | None] = {}
    for r in rows:
        key = (r["method"], r["scope"])
        out.setdefault(key, None)
        if r["collapsed"]:
            prev = out[key]
            out[key] = r["density_target"] if prev is None else max(prev, r["density_target"])
    return out


def summary(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """The accuracy table, the sparsest-layer table and where each method first collapsed."""
    collapse = first_collapse(rows)
    lines = [
        "| method | scope | first collapse at density |",
        "|---|---|---|",
        *(
            f"| {m} | {sc} | {'never' if d is None else f'{d:g}'} |"
            for (m, sc), d in collapse.items()
        ),
    ]
    return (
        f"# Pruning at initialisation — preset `{cfg.preset}` ({cfg.dataset}, {cfg.model})\n\n"
        f"{cfg.seeds} seeds, mean ± std; trained {cfg.iterations} iterations after pruning.\n\n"
        "### Test accuracy at the early-stop iteration, per density\n\n"
        + pivot(rows, "early_stop_test_acc")
        + "\n\n### Density of the sparsest layer\n\n"
        + pivot(rows, "min_layer_density", digits=4)
        + "\n\n### Layer collapse (a layer with no weight left)\n\n"
        + "\n".join(lines)
        + "\n"
    )


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md`` and the plots of a finished run folder; returns their paths."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    common: dict[str, Any] = {"x": "density_target", "series": "method", "log_x": True,
                              "invert_x": True, "xlabel": "density (kept fraction)"}  # fmt: skip
    out = {}
    for scope in cfg.scopes:
        out[f"accuracy_{scope}"] = plots.line_plot(
            rows, y="early_stop_test_acc", where={"scope": scope}, mark="collapsed",
            path=folder / f"accuracy_{scope}.png", ylabel="test accuracy (early stop)",
            title=f"Pruning at init ({scope}); × = a layer collapsed", **common,
        )  # fmt: skip
        out[f"min_layer_density_{scope}"] = plots.line_plot(
            rows, y="min_layer_density",
            where={"scope": scope}, path=folder / f"min_layer_density_{scope}.png",
            ylabel="density of the sparsest layer", title=f"Sparsest layer ({scope})", **common,
        )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="pruning_at_init", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
