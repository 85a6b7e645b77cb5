r"""Pruning a small language model: magnitude vs Wanda vs SparseGPT, N:M, heads and neurons, tickets.

A decoder-only transformer (:func:`jaxprune.models.build` ``"transformer"``) is trained on the
English reference-manual text that ships with CPython (``pydoc``, character level; offline), then
pruned four ways, every result a test perplexity
:math:`\exp(-\frac1N\sum_t \log p(y_t \mid x_{\le t}))` over the held-out windows
(:func:`jaxprune.metrics.perplexity`):

1. **dense** — AdamW (decoupled weight decay on the matrices), warm-up then cosine decay
   (``optax.warmup_cosine_decay_schedule``), gradients clipped to norm 1, ``--iterations`` steps;
   the weights are checkpointed so that a resumed run does not train them again.
2. **post-training** (no retraining; :func:`jaxprune.posttrain.prune`) — every method of
   ``--methods`` (magnitude per output, Wanda, SparseGPT) at every unstructured sparsity of
   ``--sparsities`` and every ``--nm`` pattern (N of every M consecutive inputs kept), each with
   ``--seeds`` draws of ``--calibration`` training windows
   (:func:`jaxprune.posttrain.calibration_windows`; magnitude reads no calibration: one row).
   The papers' ordering (RESEARCH.md §11: SparseGPT ≈ Wanda ≪ magnitude at 50%, 2:4 worse than
   50% for every method) is checked against the numbers and the verdict written plainly.
3. **structured** — attention heads (q, k, v columns and the output projection's rows of a head)
   and MLP neurons (a hidden unit's columns and row) as traced channel groups
   (:func:`jaxprune.structured.channel_groups`), scored by ``--structured-criterion``
   (:func:`~jaxprune.structured.channel_scores` over every producer; Taylor by default, with the
   gradient of the loss on the first ``--calibration`` training windows), a fraction ``--structured-rates`` of every block's heads or neurons removed
   (:func:`~jaxprune.structured.select_channels`), the model compacted
   (:func:`~jaxprune.structured.compact`, physically smaller) and fine-tuned for
   ``--recovery-iterations`` steps; perplexity right after and after the recovery.
4. **lottery tickets** — :func:`jaxprune.sweep.run_levels`: per seed, IMP with rewinding to θ₀
   (``large_final``, ``rewind``), its reinit control (the ticket's mask, the weights permuted)
   and a random mask with the same per-layer counts, all tickets one vmapped program; every
   level prunes ``--ticket-rate`` of the remaining weights of each linear layer (half of it in
   the readout); embeddings and positions are never pruned. Test perplexity of every ticket after
   training, per level.

Presets (``--preset``; any setting can be overridden, see ``--help``):

* ``quick`` — dim 64, depth 2, 4 heads, context 64 (≈ 0.1M params), 1,000 steps; methods × 50 /
  60 / 70% / 2:4 / 4:8 × 3 calibration seeds of 32 windows; heads and neurons at 25% / 50% with
  150 recovery steps; 3 ticket levels of 300 steps. 12 minutes measured on 2 CPU cores shared
  with other jobs (load average 5–7; 6 CPU-minutes). ``python -m experiments.llm_pruning``.
* ``default`` — dim 128, depth 4, 4 heads, context 128, 4,000 steps of 64 windows, 128
  calibration windows, 5 ticket levels of 1,500 steps, 2 seeds: a GPU run (not measured here;
  on 2 CPU cores an estimated several hours, most of it the tickets).

Run folder: ``runs/llm_pruning-<preset>-<hash>/`` with ``rows/`` (one committed unit per part:
``dense``, each method × target, each structured part × rate, each ticket level and its
perplexities; an interrupted run started again resumes after the last committed unit),
``state/`` (the dense weights and the tickets' levels, orbax), ``results.csv``, ``summary.md``,
``perplexity_<method>.png`` (unstructured curve, N:M points, dense line), ``perplexity.png``
(every method's unstructured curve) and ``tickets.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxprune import (
    data,
    masks,
    metrics,
    models,
    plots,
    posttrain,
    results,
    select,
    structured,
    sweep,
    tickets,
    train,
)

from . import _study

TEXT_SETS = data.TEXT_SETS
"""The text datasets (:func:`jaxprune.data.load_text`); only ``tiny_shakespeare`` reads
``--data-dir``."""
LEVELS = ("char", "byte")
MLPS = ("gelu", "swiglu")
NORMS = ("layer", "rms")
POSITIONS = ("learned", "rope")
PARTS = ("heads", "neurons")
"""Structured parts: attention heads, MLP hidden neurons."""
STRUCTURED_CRITERIA = tuple(c for c in structured.CRITERIA if c != "bn")
CONTROLS = ("ticket", "reinit", "random_mask")
NEVER_PRUNED = (r"\['embed'\]", r"\['pos'\]")
"""Leaves the tickets never prune (the token embedding and learned positions)."""
ROOT_KEY = 20230101


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of an llm_pruning run; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "pydoc"
    level: str = "char"
    context: int = 64
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp: str = "gelu"
    norm: str = "layer"
    positions: str = "learned"
    iterations: int = 1000
    batch_size: int = 32
    lr: float = 3e-3
    warmup: float = 0.05
    weight_decay: float = 0.1
    eval_every: int = 250
    methods: tuple[str, ...] = posttrain.METHODS
    sparsities: tuple[float, ...] = (0.5, 0.6, 0.7)
    nm: tuple[str, ...] = ("2:4", "4:8")
    seeds: int = 3
    calibration: int = 32
    blocksize: int = 128
    percdamp: float = 0.01
    structured_parts: tuple[str, ...] = PARTS
    structured_rates: tuple[float, ...] = (0.25, 0.5)
    structured_criterion: str = "taylor"
    recovery_iterations: int = 150
    recovery_lr: float = 1e-3
    levels: int = 3
    ticket_rate: float = 0.2
    ticket_iterations: int = 300
    ticket_seeds: int = 1
    data_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _study.config_json(self)


HELP = {
    **_study.HELP,
    "dataset": f"text dataset, one of {TEXT_SETS} (tiny_shakespeare: prepared offline)",
    "level": f"tokens, one of {LEVELS}: the corpus's characters, or utf-8 bytes (256)",
    "context": "tokens per window (the model's context length)",
    "dim": "model width",
    "depth": "transformer blocks",
    "heads": "attention heads per block (must divide --dim)",
    "mlp": f"MLP of every block, one of {MLPS}",
    "norm": f"normalisation, one of {NORMS} (LayerNorm, RMSNorm)",
    "positions": f"positions, one of {POSITIONS} (learned embedding, rotary)",
    "iterations": "training steps of the dense model",
    "lr": "peak AdamW learning rate (warm-up, then cosine decay to a tenth)",
    "warmup": "fraction of every run's steps spent warming the learning rate up from 0",
    "weight_decay": "AdamW's decoupled weight decay (matrices only)",
    "eval_every": "steps between evaluations of the validation and test loss",
    "methods": f"comma list of post-training methods, from {posttrain.METHODS}",
    "sparsities": "comma list of unstructured sparsities in (0, 1) (fraction of each linear "
    "layer's weights removed)",
    "nm": "comma list of N:M patterns along the input dimension, e.g. '2:4,4:8' (empty: none)",
    "seeds": "calibration draws per method and target (magnitude reads none: one row)",
    "calibration": "calibration windows of --context tokens drawn from the training split",
    "blocksize": "SparseGPT's column block",
    "percdamp": "SparseGPT's dampening λ as a fraction of the mean diagonal of H",
    "structured_parts": f"comma list from {PARTS} (empty: no structured pruning)",
    "structured_rates": "comma list of fractions in (0, 1) of every block's heads / neurons removed",
    "structured_criterion": f"head / neuron importance, one of {STRUCTURED_CRITERIA}",
    "recovery_iterations": "fine-tuning steps of each compacted model",
    "recovery_lr": "peak learning rate of the recovery fine-tune",
    "levels": "lottery-ticket pruning levels after the dense run (0: no tickets)",
    "ticket_rate": "fraction of the remaining weights of every linear layer pruned per level "
    "(half of it in the readout)",
    "ticket_iterations": "training steps of the tickets' dense run and of every level",
    "ticket_seeds": "seeds of the lottery tickets (each: ticket, reinit, random mask)",
    "data_dir": "tensorflow-datasets folder (tiny_shakespeare only, prepared offline)",
}


def quick() -> Config:
    """dim 64, depth 2, context 64, 1,000 steps, 3 ticket levels: about 12 minutes on 2 cores."""
    return Config(preset="quick")


def default() -> Config:
    """dim 128, depth 4, context 128, 4,000 steps, 128 calibration windows, 5 ticket levels."""
    return Config(
        preset="default", context=128, dim=128, depth=4, iterations=4000, batch_size=64,
        lr=1e-3, eval_every=500, calibration=128, recovery_iterations=500, levels=5,
        ticket_iterations=1500, ticket_seeds=2,
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {"quick": quick, "default": default}


# ---- settings ----------------------------------------------------------------------------------


def parse_nm(text: str) -> tuple[int, int]:
    """An ``"N:M"`` pattern as ``(n, m)``, ``0 < n < m``; ``ValueError`` naming ``--nm`` otherwise.

    Example:
      >>> parse_nm("2:4")
      (2, 4)
    """
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if match is None or not 0 < int(match[1]) < int(match[2]):
        _study.fail("nm", "N:M patterns with 0 < N < M, e.g. '2:4,4:8'", text)
    return int(match[1]), int(match[2])


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the flag of any bad setting, before anything is loaded."""
    _study.check_finite(cfg)
    _study.check_at_least(
        cfg, 1, "context", "dim", "depth", "heads", "iterations", "batch_size", "eval_every",
        "seeds", "calibration", "blocksize", "recovery_iterations", "ticket_iterations",
        "ticket_seeds",
    )  # fmt: skip
    _study.check_at_least(cfg, 0, "levels")
    for name, allowed in (
        ("dataset", TEXT_SETS), ("level", LEVELS), ("mlp", MLPS), ("norm", NORMS),
        ("positions", POSITIONS), ("structured_criterion", STRUCTURED_CRITERIA),
    ):  # fmt: skip
        if getattr(cfg, name) not in allowed:
            _study.fail(name, f"one of {allowed}", getattr(cfg, name))
    if cfg.data_dir is not None and cfg.dataset != "tiny_shakespeare":
        _study.fail("data_dir", f"unset for {cfg.dataset!r} (built into jaxprune)", cfg.data_dir)
    if cfg.dim % cfg.heads:
        _study.fail("heads", f"a divisor of --dim ({cfg.dim})", cfg.heads)
    for name in ("lr", "recovery_lr"):
        if not getattr(cfg, name) > 0:
            _study.fail(name, "> 0", getattr(cfg, name))
    if not 0 <= cfg.warmup < 1:
        _study.fail("warmup", "a fraction in [0, 1)", cfg.warmup)
    if cfg.weight_decay < 0:
        _study.fail("weight_decay", "≥ 0", cfg.weight_decay)
    if not 0 <= cfg.percdamp < 1:
        _study.fail("percdamp", "in [0, 1)", cfg.percdamp)
    if not 0 < cfg.ticket_rate < 1:
        _study.fail("ticket_rate", "a rate in (0, 1)", cfg.ticket_rate)
    _study.check_names(cfg, "methods", posttrain.METHODS)
    _study.check_fractions(cfg, "sparsities", "sparsities")
    for text in cfg.nm:
        parse_nm(text)
    if len(set(map(parse_nm, cfg.nm))) != len(cfg.nm):
        _study.fail("nm", "distinct N:M patterns, each given once", ",".join(cfg.nm))
    _study.check_names(cfg, "structured_parts", PARTS, empty_ok=True)
    if cfg.structured_parts:
        _study.check_fractions(cfg, "structured_rates", "fractions")


def linear_inputs(model: Any) -> dict[str, int]:
    """The input size of every ``nnx.Linear`` inside the model's blocks (what post-training
    pruning prunes), by path.

    Example:
      >>> from jaxprune import models
      >>> net = models.build("transformer", input_shape=(8,), num_classes=5, dim=8, depth=1,
      ...                    heads=2)
      >>> linear_inputs(net)["block0/mlp/fc2"]
      32
    """
    out = {}
    for i, block in enumerate(model.blocks):
        for path, node in nnx.iter_graph(block):
            if isinstance(node, nnx.Linear):
                out["/".join(map(str, (f"block{i}", *path)))] = int(node.kernel.shape[0])
    return out


def check_model(cfg: Config, model: Any, n_train: int) -> None:
    """The settings that need the model and the data: every ``--nm`` M divides the input size of
    every pruned layer, ``--calibration`` and ``--batch-size`` fit in the training windows."""
    inputs = linear_inputs(model)
    for text in cfg.nm:
        _, m = parse_nm(text)
        bad = {p: k for p, k in inputs.items() if k % m}
        if bad:
            path, k = next(iter(bad.items()))
            _study.fail(
                "nm", f"patterns whose M divides the input size of every pruned layer ({path} "
                f"has {k} inputs, not a multiple of {m})", text,
            )  # fmt: skip
    for name in ("calibration", "batch_size"):
        if getattr(cfg, name) > n_train:
            _study.fail(
                name, f"at most the {n_train} training windows of {cfg.dataset!r} at context "
                f"{cfg.context}", getattr(cfg, name),
            )  # fmt: skip


# ---- model, optimizer, data --------------------------------------------------------------------


def build(cfg: Config, ds: data.Dataset, seed: int = 0) -> nnx.Module:
    """The study's transformer, initialised from ``seed``."""
    return models.build(
        "transformer", input_shape=(cfg.context,), num_classes=ds.num_classes, seed=seed,
        dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, mlp=cfg.mlp, norm=cfg.norm,
        positions=cfg.positions,
    )  # fmt: skip


def _decayed(params: Any) -> Any:
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def optimizer(lr: float, iterations: int, warmup: float, weight_decay: float) -> Any:
    r"""AdamW (β = 0.9, 0.95; weight decay on the matrices), gradients clipped to norm 1, the
    rate warmed up linearly over ``round(warmup·iterations)`` steps from 0 to ``lr``, then
    cosine-decayed to ``lr / 10`` at ``iterations``."""
    steps = max(1, round(warmup * iterations))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=steps, decay_steps=max(iterations, steps + 1), end_value=lr / 10
    )
    adamw = optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=_decayed)
    return optax.chain(optax.clip_by_global_norm(1.0), adamw)


def with_params(model: nnx.Module, params: Any) -> nnx.Module:
    """A copy of ``model`` holding ``params`` (the module :func:`posttrain.prune` reads)."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
    return nnx.merge(graphdef, params, rest, copy=True)


def linear_sparsity(params: Any, mask: Any) -> float:
    r"""Fraction of the blocks' linear kernels' entries that ``mask`` removes:
    :math:`1 - \sum_\ell |M_\ell|_1 / \sum_\ell n_\ell` over the 2-D ``kernel`` leaves whose path
    names a block.

    Example:
      >>> import numpy as np
      >>> p = {"block0": {"kernel": np.ones((2, 2))}, "out": {"kernel": np.ones((2, 2))}}
      >>> m = {"block0": {"kernel": np.eye(2, dtype=bool)}, "out": {"kernel": np.zeros((2, 2), bool)}}
      >>> linear_sparsity(p, m)
      0.5
    """
    kept = total = 0
    for (path, m), p in zip(
        jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(params), strict=True
    ):
        text = jax.tree_util.keystr(path)
        if "block" in text and "kernel" in text and np.ndim(p) == 2:
            kept += int(np.sum(np.asarray(m)))
            total += int(np.size(p))
    return 1.0 - kept / total if total else 0.0


# ---- the run -----------------------------------------------------------------------------------


class Dense(NamedTuple):
    """The trained dense model: its module (trained weights), pure apply function and params."""

    model: nnx.Module
    apply_fn: Any
    params: Any


def target_name(sparsity: float | None, nm: str | None) -> str:
    """The column name of a target: ``"50%"`` or ``"2:4"``.

    Example:
      >>> target_name(0.5, None), target_name(None, "2:4")
      ('50%', '2:4')
    """
    return nm if nm is not None else f"{100 * sparsity:g}%"  # type: ignore[operator]


def targets(cfg: Config) -> list[tuple[float | None, str | None]]:
    """``(sparsity, None)`` for every unstructured target, then ``(None, "N:M")``."""
    return [(s, None) for s in cfg.sparsities] + [(None, t) for t in cfg.nm]


def _unit(*parts: Any) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.-]", "-", str(p)) for p in parts)


def train_dense(cfg: Config, ds: data.Dataset, store: results.Store, progress: bool) -> Dense:
    """The dense model: restored from ``state/dense`` when the ``dense`` unit is committed,
    else trained (and checkpointed, and its row committed)."""
    model = build(cfg, ds)
    apply_fn, params, _ = models.functional(model)
    folder = store.path / "state" / "dense"
    if store.has("dense"):
        try:
            trained = train.checkpoint.restore(folder, like={"params": params})["params"]
            return Dense(with_params(model, trained), apply_fn, trained)
        except (ValueError, OSError) as err:  # recomputed: the same program, the same weights
            store.discard("dense", f"its checkpoint {folder} is unreadable ({err})")
    opt = optimizer(cfg.lr, cfg.iterations, cfg.warmup, cfg.weight_decay)
    steps = train.make_steps(apply_fn, opt)
    t0 = time.time()
    state, hist = train.fit(
        steps, steps.init(params), masks.ones(params), ds.train, ds.val, ds.test,
        iterations=cfg.iterations, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
        data_key=jax.random.key(ROOT_KEY), progress=progress, desc="dense LM",
    )  # fmt: skip
    seconds = time.time() - t0
    train.checkpoint.save(folder, {"params": state.params}, overwrite=True)
    row = {
        "part": "dense", "method": "dense", "target": "dense", "sparsity": 0.0,
        "params": models.param_count(state.params),
        "test_ppl": metrics.perplexity(apply_fn, state.params, ds.test),
        "val_ppl": metrics.perplexity(apply_fn, state.params, ds.val),
        "final_test_loss": float(hist.test_loss[-1]),
        "final_test_acc": float(hist.test_acc[-1]), "train_seconds": seconds,
        "iterations": cfg.iterations,
    }  # fmt: skip
    store.write("dense", [row])
    return Dense(with_params(model, state.params), apply_fn, state.params)


def posttrain_rows(
    cfg: Config, ds: data.Dataset, dense: Dense, method: str, sparsity: float | None,
    nm: str | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One method at one target: a row per calibration seed (one for magnitude)."""
    rows = []
    for seed in range(1 if method == "magnitude" else cfg.seeds):
        calib = posttrain.calibration_windows(ds.train[0], cfg.calibration, seed=seed)
        pruned = posttrain.prune(
            dense.model, calib, method=method, sparsity=sparsity, nm=nm,
            blocksize=cfg.blocksize, percdamp=cfg.percdamp,
        )  # fmt: skip
        errors = [float(v["error"]) for v in pruned.layers.values()]
        rows.append({
            "part": "posttrain", "method": method, "target": target_name(sparsity, nm),
            "target_sparsity": sparsity if nm is None else 1 - _ratio(nm),
            "nm": nm, "calibration_seed": None if method == "magnitude" else seed,
            "calibration": cfg.calibration,
            "sparsity": linear_sparsity(pruned.params, pruned.mask),
            "test_ppl": metrics.perplexity(dense.apply_fn, pruned.params, ds.test),
            "prune_seconds": float(pruned.seconds),
            "layer_error_sum": float(np.sum(errors)),
        })  # fmt: skip
    return rows


def _ratio(nm: str) -> float:
    n, m = parse_nm(nm)
    return n / m


def _part_groups(groups: Sequence[structured.ChannelGroup], part: str) -> list[str]:
    """The names of the groups of one structured part: heads (the query's group of each block)
    or neurons (each block's MLP hidden units)."""
    pattern = r"attn/query$" if part == "heads" else r"mlp/(fc1|gate)$"
    return [g.name for g in groups if re.search(pattern, g.name)]


def structured_rows(
    cfg: Config, ds: data.Dataset, dense: Dense, part: str, rate: float, progress: bool
) -> list[dict[str, Any]]:
    """Remove ``rate`` of every block's heads or neurons, compact, evaluate, fine-tune, evaluate."""
    example = jax.ShapeDtypeStruct((1, cfg.context), jnp.int32)
    groups = structured.channel_groups(dense.model, example)
    chosen = _part_groups(groups, part)
    if len(chosen) != cfg.depth:
        raise ValueError(
            f"the traced channel groups of the transformer do not hold one {part} group per "
            f"block (found {chosen} among {[g.name for g in groups]}): the model no longer "
            "has the layout this study prunes."
        )
    grads = None
    if cfg.structured_criterion == "taylor":
        x, y = (jnp.asarray(a[: cfg.calibration]) for a in ds.train)

        def loss(p: Any) -> jax.Array:
            return train.cross_entropy(dense.apply_fn(p, x), y)

        grads = jax.grad(loss)(dense.params)
    scores = structured.channel_scores(
        dense.params, tuple(groups), cfg.structured_criterion, grads=grads, over="producers"
    )
    rates = {g.name: rate if g.name in chosen else 0.0 for g in groups}
    keep = structured.select_channels(scores, rates)
    small = structured.compact(dense.model, keep, params=dense.params, groups=tuple(groups),
                               x=example)  # fmt: skip
    apply_fn, params, _ = models.functional(small.model)
    before = metrics.perplexity(apply_fn, params, ds.test)
    opt = optimizer(cfg.recovery_lr, cfg.recovery_iterations, cfg.warmup, cfg.weight_decay)
    steps = train.make_steps(apply_fn, opt)
    t0 = time.time()
    state, _ = train.fit(
        steps, steps.init(params), masks.ones(params), ds.train, ds.val, ds.test,
        iterations=cfg.recovery_iterations, batch_size=cfg.batch_size,
        eval_every=min(cfg.eval_every, cfg.recovery_iterations),
        data_key=jax.random.fold_in(jax.random.key(ROOT_KEY), 1), progress=progress,
        desc=f"recovery ({part} {rate:.0%})",
    )  # fmt: skip
    kept = [int(np.sum(np.asarray(keep[n]))) for n in chosen]
    total = [g.size for g in groups if g.name in chosen]
    return [{
        "part": "structured", "method": f"{part} ({cfg.structured_criterion})", "what": part,
        "rate": rate, "units_kept": int(sum(kept)), "units": int(sum(total)),
        "params": models.param_count(params), "params_dense": models.param_count(dense.params),
        "test_ppl_pruned": before,
        "test_ppl": metrics.perplexity(apply_fn, state.params, ds.test),
        "recovery_iterations": cfg.recovery_iterations, "recovery_seconds": time.time() - t0,
    }]  # fmt: skip


def ticket_table(cfg: Config) -> tuple[tickets.Table, list[str]]:
    """Per seed: the ticket (``large_final``, rewind to θ₀), its reinit control (the ticket's
    mask, weights permuted) and a random mask with the ticket's per-layer counts; and each
    ticket's ``control`` label."""
    out: list[tickets.Ticket] = []
    labels: list[str] = []
    for seed in range(cfg.ticket_seeds):
        ticket = len(out)
        out += [
            tickets.Ticket(seed, "large_final", "rewind", "zero"),
            tickets.Ticket(seed, "large_final", "reinit", "zero", source=ticket),
            tickets.Ticket(seed, "random", "rewind", "zero"),
        ]
        labels += list(CONTROLS)
    return tickets.table(out, key=jax.random.key(ROOT_KEY + 1)), labels


def run_tickets(cfg: Config, ds: data.Dataset, store: results.Store, progress: bool) -> None:
    """Every ticket level (:func:`jaxprune.sweep.run_levels`, resumable by level); a ticket's test
    perplexity is ``exp(final_test_loss)``, the engine's mean token cross-entropy."""
    nets = [models.functional(build(cfg, ds, seed=s)) for s in range(cfg.ticket_seeds)]
    apply_fn, theta0 = nets[0][0], train.stack([n[1] for n in nets])
    table, labels = ticket_table(cfg)
    rates = select.rates_by_pattern(nets[0][1], {r"\['out'\]": cfg.ticket_rate / 2},
                                    default=cfg.ticket_rate)  # fmt: skip
    opt = optimizer(cfg.lr, cfg.ticket_iterations, cfg.warmup, cfg.weight_decay)
    sweep.run_levels(
        store, table, apply_fn, theta0, ds, optimizer=opt, levels=cfg.levels, rates=rates,
        iterations=cfg.ticket_iterations, batch_size=cfg.batch_size,
        eval_every=min(cfg.eval_every, cfg.ticket_iterations),
        key=jax.random.key(ROOT_KEY + 2), prunable=masks.rule(exclude=list(NEVER_PRUNED)),
        columns=[{"part": "tickets", "control": c} for c in labels], progress=progress,
        desc="tickets: levels",
    )  # fmt: skip


def _ticket_ppl(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ticket rows, each with ``test_ppl = exp(final_test_loss)``."""
    return [
        {**r, "test_ppl": math.exp(r["final_test_loss"])}
        for r in rows
        if r.get("part") == "tickets" and r.get("final_test_loss") is not None
    ]


def run(cfg: Config, *, out: str = "runs", progress: bool = True) -> Path:
    """Train the dense model, then every post-training, structured and ticket unit not yet
    committed; returns the run folder."""
    validate(cfg)
    ds = data.load_text(cfg.dataset, context=cfg.context, level=cfg.level, data_dir=cfg.data_dir)
    check_model(cfg, build(cfg, ds), len(ds.train[0]))
    store = results.Store(results.run_dir(out, "llm_pruning", cfg.to_json()), cfg.to_json())
    start = time.time()
    dense = train_dense(cfg, ds, store, progress)
    units: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []
    for method in cfg.methods:
        for sparsity, nm in targets(cfg):
            units.append((
                _unit("posttrain", method, target_name(sparsity, nm)),
                functools.partial(posttrain_rows, cfg, ds, dense, method, sparsity, nm),
            ))  # fmt: skip
    for part in cfg.structured_parts:
        for rate in cfg.structured_rates:
            units.append((
                _unit("structured", part, rate),
                functools.partial(structured_rows, cfg, ds, dense, part, rate, progress),
            ))  # fmt: skip
    todo = [(name, fn) for name, fn in units if not store.has(name)]
    bar = tqdm(todo, desc="llm_pruning", unit="unit", disable=not progress)
    for name, fn in bar:
        bar.set_postfix(unit=name)
        store.write(name, fn())
    bar.close()
    if cfg.levels:
        run_tickets(cfg, ds, store, progress)
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path


# ---- report ------------------------------------------------------------------------------------


def _cell(s: Mapping[str, Any] | None, value: str, digits: int = 2) -> str:
    if s is None or s.get(f"{value}_mean") is None:
        return "—"
    mean, std = s[f"{value}_mean"], s[f"{value}_std"]
    if s[f"{value}_n"] == 1 or round(std, digits) == 0:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def perplexity_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Post-training test perplexity: a line per method (and the dense model), a column per
    target; mean ± std over calibration seeds.

    Example:
      >>> rows = [{"part": "dense", "method": "dense", "target": "dense", "test_ppl": 4.0},
      ...         {"part": "posttrain", "method": "wanda", "target": "50%", "test_ppl": 5.0},
      ...         {"part": "posttrain", "method": "wanda", "target": "50%", "test_ppl": 6.0}]
      >>> print(perplexity_table(rows))
      | method | 50% |
      |---|---:|
      | dense | 4.00 |
      | wanda | 5.50 ± 0.50 |
    """
    post = [r for r in rows if r.get("part") == "posttrain"]
    cols = list(dict.fromkeys(r["target"] for r in post))
    stats = {(s["method"], s["target"]): s
             for s in results.summarize(post, ["method", "target"], ["test_ppl"])}  # fmt: skip
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    dense = [r for r in rows if r.get("part") == "dense"]
    if dense:
        d = results.summarize(dense, ["part"], ["test_ppl"])[0]
        lines.append("| dense | " + " | ".join([_cell(d, "test_ppl")] * len(cols)) + " |")
    for method in dict.fromkeys(r["method"] for r in post):
        cells = [_cell(stats.get((method, c)), "test_ppl") for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
    post = [r for r in rows if r.get("part") == "posttrain"]
    return {
        (s["method"], s["target"]): s["test_ppl_mean"]
        for s in results.summarize(post, ["method", "target"], ["test_ppl"])
        if s["test_ppl_mean"] is not None
    }


CLOSE = 0.10
"""SparseGPT and Wanda count as "≈" when their mean perplexities differ by at most 10%."""
FAR = 0.10
"""Magnitude counts as "≪"-worse when its perplexity is more than 10% above the worse of the two."""


def orderings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Whether the papers' ordering held, in words: SparseGPT ≈ Wanda (within :data:`CLOSE`) ≪
    magnitude (more than :data:`FAR` worse) at 50%, and 2:4 worse than 50% for every method.

    Example:
      >>> rows = [{"part": "posttrain", "method": m, "target": t, "test_ppl": v}
      ...         for m, t, v in (("sparsegpt", "50%", 5.0), ("wanda", "50%", 5.2),
      ...                         ("magnitude", "50%", 9.0), ("wanda", "2:4", 5.1))]
      >>> for line in orderings(rows): print(line)
      50%: SparseGPT ≈ Wanda ≪ magnitude held (sparsegpt 5.00, wanda 5.20, magnitude 9.00).
      2:4 worse than 50%: held for none of wanda (2:4 5.10 vs 50% 5.20).
    """
    mean = _means(rows)
    out = []
    if all((m, "50%") in mean for m in ("sparsegpt", "wanda", "magnitude")):
        g, w, mag = (mean[m, "50%"] for m in ("sparsegpt", "wanda", "magnitude"))
        close = abs(g - w) <= CLOSE * min(g, w)
        far = mag > (1 + FAR) * max(g, w)
        parts = []
        if not close:
            parts.append(f"SparseGPT and Wanda differ by {abs(g - w) / min(g, w):.0%}")
        if not far:
            parts.append("magnitude is not clearly worse than both")
        verdict = "held" if close and far else "did NOT hold: " + "; ".join(parts)
        out.append(
            f"50%: SparseGPT ≈ Wanda ≪ magnitude {verdict} (sparsegpt {g:.2f}, wanda {w:.2f}, "
            f"magnitude {mag:.2f})."
        )
    both = [
        m for m in dict.fromkeys(k[0] for k in mean) if (m, "50%") in mean and (m, "2:4") in mean
    ]
    if both:
        held = [m for m in both if mean[m, "2:4"] > mean[m, "50%"]]
        failed = [m for m in both if m not in held]
        detail = ", ".join(
            f"{m} (2:4 {mean[m, '2:4']:.2f} vs 50% {mean[m, '50%']:.2f})" for m in both
        )
        if not failed:
            out.append(f"2:4 worse than 50%: held for every method: {detail}.")
        elif not held:
            out.append(f"2:4 worse than 50%: held for none of {detail}.")
        else:
            out.append(f"2:4 worse than 50%: held for {', '.join(held)}, NOT for "
                       f"{', '.join(failed)}: {detail}.")  # fmt: skip
    return out


def structured_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Heads / neurons removed: params, test perplexity right after and after recovery."""
    mine = [r for r in rows if r.get("part") == "structured"]
    lines = [
        "| removed | rate | units kept | params | test ppl (pruned) | test ppl (recovered) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in mine:
        lines.append(
            f"| {r['what']} | {100 * r['rate']:g}% | {r['units_kept']}/{r['units']} | "
            f"{r['params']:,} / {r['params_dense']:,} | {r['test_ppl_pruned']:.2f} | "
            f"{r['test_ppl']:.2f} |"
        )
    return "\n".join(lines)


def ticket_perplexity_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per level: the density and each control's test perplexity (mean ± std over seeds)."""
    ppl = _ticket_ppl(rows)
    stats = {(s["level"], s["control"]): s
             for s in results.summarize(ppl, ["level", "control"], ["test_ppl", "density"])}  # fmt: skip
    controls = [c for c in CONTROLS if any(r["control"] == c for r in ppl)]
    lines = ["| level | density | " + " | ".join(controls) + " |",
             "|---:|---:|" + "---:|" * len(controls)]  # fmt: skip
    for level in sorted({r["level"] for r in ppl}):
        d = stats.get((level, "ticket"))
        density = "—" if d is None or d["density_mean"] is None else f"{d['density_mean']:.3f}"
        cells = [_cell(stats.get((level, c)), "test_ppl") for c in controls]
        lines.append(f"| {level} | {density} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Seconds to prune the whole model, per method and target: the fastest of the calibration
    draws (the first prune of a layer shape and target compiles: magnitude's single draw may
    include it).

    Example:
      >>> rows = [{"part": "posttrain", "method": "wanda", "target": "50%", "prune_seconds": s}
      ...         for s in (3.0, 0.25, 0.5)]
      >>> print(timing_table(rows))
      | method | 50% |
      |---|---:|
      | wanda | 0.25 |
    """
    post = [r for r in rows if r.get("part") == "posttrain"]
    fastest: dict[tuple[str, str], float] = {}
    for r in post:
        key = (r["method"], r["target"])
        fastest[key] = min(fastest.get(key, math.inf), r["prune_seconds"])
    cols = list(dict.fromkeys(t for _, t in fastest))
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for method in dict.fromkeys(m for m, _ in fastest):
        cells = [f"{fastest[method, c]:.2f}" if (method, c) in fastest else "—" for c in cols]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[Mapping[str, Any]], cfg: Config) -> str:
    """The tables of a run and the verdict on the papers' ordering."""
    dense = next((r for r in rows if r.get("part") == "dense"), None)
    head = (
        f"# Pruning a small language model — preset `{cfg.preset}` ({cfg.dataset}, {cfg.level} "
        f"level, context {cfg.context})\n\nTransformer dim {cfg.dim}, depth {cfg.depth}, "
        f"{cfg.heads} heads, {cfg.mlp} MLP, {cfg.norm} norm, {cfg.positions} positions"
    )
    if dense is not None:
        head += (
            f"; {dense['params']:,} params, trained {dense['iterations']} steps: test perplexity "
            f"{dense['test_ppl']:.2f} (validation {dense['val_ppl']:.2f})"
        )
    parts = [
        head + ".\n",
        f"## Post-training pruning: test perplexity\n\n{cfg.seeds} calibration draws of "
        f"{cfg.calibration} windows (mean ± std; magnitude reads none). Sparsity of every linear "
        "layer of the blocks; embeddings, norms and the readout dense.\n",
        perplexity_table(rows),
        "\n### The papers' ordering (RESEARCH.md §11)\n",
        "\n".join(f"- {line}" for line in orderings(rows)) or "- (methods or targets missing)",
        "\n### Seconds to prune the whole model (fastest calibration draw; `make bench-llm` times "
        "first and warm calls apart)\n",
        timing_table(rows),
    ]
    if any(r.get("part") == "structured" for r in rows):
        parts += [
            f"\n## Structured: heads and MLP neurons removed, compacted\n\nImportance "
            f"`{cfg.structured_criterion}`; recovery: {cfg.recovery_iterations} steps at peak "
            f"lr {cfg.recovery_lr:g}.\n",
            structured_table(rows),
        ]
    if _ticket_ppl(rows):
        parts += [
            f"\n## Lottery tickets: test perplexity after training\n\n{cfg.ticket_seeds} seed(s); "
            f"{cfg.ticket_iterations} steps per level; {100 * cfg.ticket_rate:g}% of the remaining "
            "weights of every block linear layer per level (readout half of it); level 0 is the "
            "dense run.\n",
            ticket_perplexity_table(rows),
        ]
    return "\n".join(parts) + "\n"


def plot_rows(rows: Sequence[Mapping[str, Any]], method: str) -> list[dict[str, Any]]:
    """The points of one method's plot: ``curve`` = ``unstructured`` (a line over the
    sparsities, from the dense model at 0), each N:M pattern (a point at its sparsity) and
    ``dense`` (repeated from 0 to the largest sparsity: a flat reference line)."""
    mine = [r for r in rows if r.get("part") == "posttrain" and r["method"] == method]
    out = [{**r, "curve": r["nm"] or "unstructured", "x": r["target_sparsity"]} for r in mine]
    levels = sorted({r["target_sparsity"] for r in mine})
    for r in rows:
        if r.get("part") == "dense" and mine:
            out += [{**r, "curve": "unstructured", "x": 0.0}]
            out += [{**r, "curve": "dense", "x": s} for s in (0.0, levels[-1])]
    return out


def report(folder: Path, cfg: Config) -> dict[str, Path]:
    """Write ``summary.md``, one perplexity-vs-sparsity plot per method, one of every method's
    unstructured curve, and the tickets' plot."""
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    out: dict[str, Path] = {}
    styles: dict[str, dict[str, Any]] = {"dense": {"linestyle": "--"}}
    for text, marker in zip(cfg.nm, "sD^v", strict=False):
        styles[text] = {"linestyle": "none", "marker": marker, "markersize": 8}
    for method in cfg.methods:
        points = plot_rows(rows, method)
        if not points:
            continue
        out[f"perplexity_{method}"] = plots.line_plot(
            points, x="x", y="test_ppl", series="curve", styles=styles,
            path=folder / f"perplexity_{method}.png", xlabel="sparsity of the linear layers",
            ylabel="test perplexity", title=f"{method}: perplexity after post-training pruning",
        )  # fmt: skip
    both = [{**r, "curve": m if r["curve"] == "unstructured" else r["curve"]}
            for m in cfg.methods for r in plot_rows(rows, m)
            if r["curve"] == "unstructured" or (r["curve"] == "dense" and m == cfg.methods[0])]  # fmt: skip
    if both:
        out["perplexity"] = plots.line_plot(
            both, x="x", y="test_ppl", series="curve", styles=styles,
            path=folder / "perplexity.png", xlabel="sparsity of the linear layers",
            ylabel="test perplexity", title="Post-training pruning, unstructured",
        )  # fmt: skip
    ppl = _ticket_ppl(rows)
    if ppl:
        out["tickets"] = plots.line_plot(
            ppl, x="density", y="test_ppl", series="control", log_x=True, invert_x=True,
            path=folder / "tickets.png", xlabel="density", ylabel="test perplexity",
            title="Lottery tickets of the small transformer",
        )  # fmt: skip
    (folder / "summary.md").write_text(summary(rows, cfg))
    out["summary"] = folder / "summary.md"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return _study.cli(
        argv, __doc__ or "", PRESETS, study="llm_pruning", help=HELP, check=validate, run=run,
        report=report,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
