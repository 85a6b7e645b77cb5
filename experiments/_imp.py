"""What the two iterative-magnitude-pruning studies share: their config, presets and the glue to
:func:`jaxprune.sweep.run_levels` (``lottery_ticket`` and ``deconstructing``).

A run is a :class:`jaxprune.tickets.Table` of tickets — ``(seed, criterion, kept reset, pruned
value, source)`` — that the library's level driver prunes and trains for ``levels`` rounds,
committing one row per ticket and level and resuming where a killed run stopped. Every level
prunes the per-layer rates of each ticket's *remaining* weights, rewinds to θ₀ (or to θ_k with
``--rewind-iteration k``), records the untrained accuracy with the ticket's own reset and with
signed-constant weights (Zhou et al.'s supermask), then trains ``iterations − k`` steps.

Training (:func:`optimizer`): Adam (the lottery-ticket papers) or SGD with momentum and coupled
weight decay (:func:`jaxprune.train.sgd`, open_lth), at ``--lr`` times ``--lr-factor`` after each
of ``--milestones`` (:func:`jaxprune.train.step_decay`; iterations counted from θ₀). A level
trained from θ_k continues the dense schedule at step k with a fresh optimizer state, as
open_lth does. Models with batch norm (``resnet*``, ``vgg*``; the lottery-ticket study only)
train through :func:`jaxprune.models.stateful`: each level rewinds the running statistics with
the weights (:func:`jaxprune.sweep.run_levels`' ``model_state``). ``--augment crop_flip`` (4-px
crop and flip, on the device), ``--normalize per_channel``, ``--precision bf16``, ``--scope
global`` with ``--ignore`` (open_lth's ``sparse_global`` with ``pruning_layers_to_ignore``) and
``--init open_lth`` (kaiming-normal kernels, U(0, 1) batch-norm scales) give open_lth's recipe.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import criteria, data, masks, models, reset, results, select, sweep, tickets, train

from . import _study

CONTROLS = ("reinit", "random_mask")
OPTIMIZERS = ("adam", "sgd")
SCOPES = ("layerwise", "global")
AUGMENTS = _study.AUGMENTS
NORMALIZE = _study.NORMALIZE
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}
"""``--precision``: the ``compute_dtype`` of :func:`jaxprune.train.make_steps`."""
INITS = ("model", "open_lth")
GRIDS = tickets.LAYOUTS
PAPER_KEPT = (
    "rewind", "reinit", "signed_reinit", "reshuffle", "signed_reshuffle", "constant",
    "signed_constant",
)  # fmt: skip
"""The kept-weight resets of Zhou et al.'s grid (without the ``_rescaled`` forms and fine-tuning)."""
SIGN_PRESERVING = ("rewind", "signed_reinit", "signed_reshuffle", "signed_constant")
ROOT_KEY = 20190503
"""Seed of every IMP run's keys: ``split(key(ROOT_KEY))`` gives the tickets' and the data order's."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a study; a preset fills them, the command line overrides them."""

    preset: str = "custom"
    dataset: str = "digits"
    model: str = "lenet300_100"
    val_size: int | None = None
    levels: int = 5
    rates: tuple[tuple[str, float], ...] = (("out", 0.1),)
    default_rate: float = 0.2
    iterations: int = 1000
    batch_size: int = 60
    lr: float = 1.2e-3
    eval_every: int = 100
    seeds: int = 2
    rewind_iteration: int = 0
    criteria: tuple[str, ...] = ("large_final",)
    kept: tuple[str, ...] = ("rewind",)
    pruned: tuple[str, ...] = ("zero",)
    grid: str = "slices"
    controls: tuple[str, ...] = ()
    supermask_iterations: int = 0
    supermask_lr: float = 100.0
    supermask_batch_size: int = 250
    data_dir: str | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    lr_factor: float = 0.1
    scope: str = "layerwise"
    ignore: tuple[str, ...] = ()
    augment: str = "none"
    normalize: str = "none"
    precision: str = "fp32"
    init: str = "model"
    width: float = 1.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rates"] = [list(r) for r in self.rates]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


HELP = {
    **_study.HELP,
    "levels": "pruning levels after the dense run (0 = dense only)",
    "rates": "per-layer rates by path regex, e.g. 'out=0.1,conv=0.1' (fraction of the remaining)",
    "default_rate": "rate of every prunable layer no pattern in --rates matches",
    "iterations": "training steps per level",
    "lr": "learning rate (before the --milestones decays)",
    "optimizer": f"one of {OPTIMIZERS}: Adam, or SGD with momentum and coupled weight decay "
    "(PyTorch's, open_lth's)",
    "momentum": "SGD momentum (--optimizer sgd)",
    "weight_decay": "coupled L2 weight decay, added to the gradient (0 = none)",
    "milestones": "comma list of iterations (from θ₀) after which the rate is multiplied by "
    "--lr-factor, inside (0, --iterations)",
    "lr_factor": "learning-rate multiplier at each milestone",
    "scope": f"one of {SCOPES}: prune each layer at its rate, or one global threshold at "
    "--default-rate over every prunable kernel (then --rates must be empty)",
    "ignore": "comma list of regexes of kernels never pruned (open_lth's pruning_layers_to_ignore)",
    "precision": f"one of {tuple(PRECISIONS)}: bf16 runs forward and backward in bfloat16 "
    "(params and optimizer state stay float32)",
    "init": f"one of {INITS}: the model's own init, or open_lth's (kaiming-normal fan-in "
    "kernels, U(0, 1) batch-norm scales)",
    "width": "multiplier of every hidden width (models with a width option)",
    "rewind_iteration": "late rewinding: reset kept weights to θ_k, the dense weights at step k",
    "criteria": f"comma list of mask criteria, from {criteria.names()}",
    "kept": f"comma list of kept-weight resets, from {reset.kept_names()}",
    "pruned": f"comma list of pruned-weight values, from {reset.pruned_names()}",
    "grid": "'slices': vary one of criteria/kept/pruned at a time around the first of each "
    "(the paper's ablations); 'product': every combination",
    "controls": "lottery-ticket controls: comma list of 'reinit', 'random_mask'",
    "supermask_iterations": "learned-supermask training steps (0 = skip)",
    "supermask_lr": "learned-supermask SGD learning rate (momentum 0.9)",
    "supermask_batch_size": "learned-supermask batch size",
}

# The Conv-k settings of the lottery-ticket papers (RESEARCH.md §1): per-round conv rate, Adam
# learning rate, training iterations; fc layers 20%, the output layer 10%, 20 rounds.
CIFAR_CONV = {
    "conv2": (0.1, 2e-4, 20_000),
    "conv4": (0.1, 3e-4, 25_000),
    "conv6": (0.15, 3e-4, 30_000),
}


def cifar_preset(model: str, **overrides: Any) -> Config:
    """A CIFAR-10 Conv-k preset with the papers' settings; ``overrides`` set the rest."""
    conv_rate, lr, iterations = CIFAR_CONV[model]
    return Config(
        preset=f"cifar10_{model}",
        dataset="cifar10",
        model=model,
        levels=20,
        rates=(("conv", conv_rate), ("out", 0.1)),
        default_rate=0.2,
        iterations=iterations,
        lr=lr,
        eval_every=1000,
        **overrides,
    )


def validate(cfg: Config, *, batch_norm: bool = False) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained.

    ``batch_norm``: whether the study also trains models with batch norm (the lottery-ticket
    study does; Deconstructing's supermasks need models without)."""
    if batch_norm and cfg.model not in models.names():
        _study.fail("model", f"one of {models.names()}", cfg.model)
    _study.check_common(cfg, batch_norm=batch_norm and cfg.model in _study.BN_MODELS)
    _study.check_at_least(cfg, 0, "levels", "supermask_iterations", "rewind_iteration")
    _study.check_at_least(cfg, 1, "supermask_batch_size")
    if cfg.rewind_iteration >= cfg.iterations:
        _study.fail(
            "rewind_iteration", f"below --iterations ({cfg.iterations})", cfg.rewind_iteration
        )
    if not cfg.supermask_lr > 0:
        _study.fail("supermask_lr", "> 0", cfg.supermask_lr)
    _study.check_rates(cfg, "rates")
    if not 0.0 <= cfg.default_rate < 1.0:
        _study.fail("default_rate", "a rate in [0, 1)", cfg.default_rate)
    _study.check_names(cfg, "criteria", criteria.names())
    _study.check_names(cfg, "kept", reset.kept_names())
    _study.check_names(cfg, "pruned", reset.pruned_names())
    _study.check_names(cfg, "controls", CONTROLS, empty_ok=True)
    if cfg.grid not in GRIDS:
        _study.fail("grid", f"one of {GRIDS}", cfg.grid)
    _check_training(cfg)


def _check_training(cfg: Config) -> None:
    """The optimizer, schedule, pruning scope and data settings."""
    for name, allowed in (
        ("optimizer", OPTIMIZERS), ("scope", SCOPES), ("augment", AUGMENTS),
        ("normalize", NORMALIZE), ("precision", tuple(PRECISIONS)), ("init", INITS),
    ):  # fmt: skip
        if getattr(cfg, name) not in allowed:
            _study.fail(name, f"one of {allowed}", getattr(cfg, name))
    for name in ("momentum", "weight_decay"):
        if not getattr(cfg, name) >= 0:
            _study.fail(name, "≥ 0", getattr(cfg, name))
    if not cfg.lr_factor > 0:
        _study.fail("lr_factor", "> 0 (0.1 divides the rate by 10)", cfg.lr_factor)
    if not cfg.width > 0:
        _study.fail("width", "> 0", cfg.width)
    ms = cfg.milestones
    if any(b <= a for a, b in itertools.pairwise(ms)):
        _study.fail("milestones", "strictly increasing iterations", ",".join(map(str, ms)))
    for m in ms:
        if not 0 < m < cfg.iterations:
            _study.fail(
                "milestones", f"iterations inside (0, --iterations = {cfg.iterations}): a "
                "milestone past the run would never apply", m,
            )  # fmt: skip
    if cfg.scope == "global" and cfg.rates:
        _study.fail(
            "rates", "empty with --scope global (one threshold for the whole net, at "
            "--default-rate)", ",".join(f"{p}={r:g}" for p, r in cfg.rates),
        )  # fmt: skip
    for pattern in cfg.ignore:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"--ignore pattern {pattern!r} is not a valid regular expression (Python re): {e}."
            ) from None


def optimizer(cfg: Config, *, start: int = 0) -> optax.GradientTransformation:
    """The optimizer of a run, its schedule read from step ``start`` on (a level trained from
    θ_k continues the dense run's schedule at step k, as open_lth's does).

    Adam or :func:`jaxprune.train.sgd` (momentum, coupled weight decay), at ``--lr`` times
    ``--lr-factor`` after each milestone still ahead (:func:`jaxprune.train.step_decay`).
    """
    passed = sum(m <= start for m in cfg.milestones)
    lr = cfg.lr * cfg.lr_factor**passed
    ahead = tuple(m - start for m in cfg.milestones if m > start)
    rate: float | train.StepDecay = lr
    if ahead:
        rate = train.step_decay(lr, ahead, iterations=cfg.iterations - start, factor=cfg.lr_factor)
    if cfg.optimizer == "sgd":
        return train.sgd(rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    adam = optax.adam(rate)
    if cfg.weight_decay:
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), adam)
    return adam


def keys() -> tuple[jax.Array, jax.Array]:
    """The tickets' key and the data order's key of every IMP run."""
    tickets_key, data_key = jax.random.split(jax.random.key(ROOT_KEY))
    return tickets_key, data_key


class Setup(NamedTuple):
    """The data and the per-seed networks of a run."""

    ds: data.Dataset
    apply_fn: Any  # functional, or stateful (batch norm) with model_state
    theta0: Any  # stacked per seed
    rates: Any  # per-leaf rates (select.rates_by_pattern), or one rate (global scope)
    model_state: Any = None  # batch-norm running statistics stacked per seed, or None
    prunable: Any = None  # what the selection prunes: masks.rule(exclude=ignore), or None
    augment: data.Augment | None = None


KAIMING_NORMAL = models.Law("normal", gain=math.sqrt(2.0), fan="in")
"""open_lth's ``kaiming_normal`` (PyTorch's ``kaiming_normal_``): N(0, 2 / fan_in)."""
_BN2D_SCALE = re.compile(r"\['bn\d*'\]\['scale'\]")


def open_lth_init(params: Any, key: jax.Array) -> Any:
    r"""open_lth's init (``model_init='kaiming_normal'``, ``batchnorm_init='uniform'``): every
    kernel (``ndim ≥ 2``: conv and linear) :math:`\mathcal N(0, 2/fan_{in})`, every conv batch
    norm's scale (``['bn…']['scale']``) :math:`U(0, 1)`; other leaves (biases, ``bn_fc1``)
    unchanged. Leaf ``i`` draws from ``fold_in(key, i)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = open_lth_init({"bn1": {"scale": jnp.ones(4)}, "conv1": {"kernel": jnp.ones((3, 3, 8, 4))}},
      ...                   jax.random.key(0))
      >>> bool((p["bn1"]["scale"] < 1).all()), p["conv1"]["kernel"].shape
      (True, (3, 3, 8, 4))
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, leaf) in enumerate(flat):
        k = jax.random.fold_in(key, i)
        if np.ndim(leaf) >= 2:
            out.append(KAIMING_NORMAL(k, np.shape(leaf), leaf.dtype))
        elif _BN2D_SCALE.search(jax.tree_util.keystr(path)):
            out.append(jax.random.uniform(k, np.shape(leaf), leaf.dtype))
        else:
            out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def setup(cfg: Config) -> Setup:
    """Load the data and build the seeds; a missing dataset, a batch larger than the data, a
    ``--width`` the model does not take or a ``--rates`` / ``--ignore`` pattern that matches no
    prunable layer stops here, before anything is written."""
    ds = _study.prepared_data(cfg)
    augment = _study.augmentation(cfg, ds)
    options = {} if cfg.width == 1.0 else {"width": cfg.width}
    split = models.stateful if cfg.model in _study.BN_MODELS else models.functional
    nets = [
        split(
            models.build(
                cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=s,
                **options,
            )
        )
        for s in range(cfg.seeds)
    ]  # fmt: skip
    params = [n[1] for n in nets]
    if cfg.init == "open_lth":
        params = [open_lth_init(p, jax.random.key(s)) for s, p in enumerate(params)]
    prunable = jax.tree_util.tree_flatten_with_path(masks.is_prunable(params[0]))[0]
    paths = [jax.tree_util.keystr(path) for path, flag in prunable if flag]
    _study.check_patterns_match("rates", [p for p, _ in cfg.rates], paths, "prunable layer")
    _study.check_patterns_match("ignore", cfg.ignore, paths, "prunable layer")
    if paths and all(any(re.search(p, path) for p in cfg.ignore) for path in paths):
        _study.fail("ignore", "patterns that leave some prunable layer", ",".join(cfg.ignore))
    rates = (
        cfg.default_rate
        if cfg.scope == "global"
        else select.rates_by_pattern(params[0], dict(cfg.rates), default=cfg.default_rate)
    )
    bn = split is models.stateful
    return Setup(
        ds, nets[0][0], train.stack(params), rates,
        model_state=train.stack([n[2] for n in nets]) if bn else None,
        prunable=masks.rule(exclude=list(cfg.ignore)) if cfg.ignore else None, augment=augment,
    )  # fmt: skip


def columns(study: str, cfg: Config, controls: Sequence[str], kept: Sequence[str]) -> list[dict]:
    """The row columns every IMP study adds per ticket (besides the driver's own)."""
    return [
        {
            "study": study, "preset": cfg.preset, "dataset": cfg.dataset, "model": cfg.model,
            "control": control, "sign_preserving": k.removesuffix("_rescaled") in SIGN_PRESERVING,
            "rewind_iteration": cfg.rewind_iteration,
        }
        for control, k in zip(controls, kept, strict=True)
    ]  # fmt: skip


def run(
    study: str,
    cfg: Config,
    table: tickets.Table,
    controls: Sequence[str],
    *,
    out: str = "runs",
    progress: bool = True,
    extra: Callable[[results.Store, Setup, bool], tuple[float, int]] | None = None,
    batch_norm: bool = False,
) -> Path:
    """Run every level of ``table`` (``controls``: each ticket's ``control`` column), then
    ``extra(store, setup, progress)`` — more units of the same run, returning its training
    seconds and ticket-steps — and write ``timings.json``; returns the run folder.
    ``batch_norm``: as :func:`validate`."""
    validate(cfg, batch_norm=batch_norm)
    s = setup(cfg)
    store = results.Store(results.run_dir(out, study, cfg.to_json()), cfg.to_json())
    k = cfg.rewind_iteration
    _, data_key = keys()
    with train.count_compiles() as compiles:
        start = time.perf_counter()
        done = sweep.run_levels(
            store, table, s.apply_fn, s.theta0, s.ds, optimizer=optimizer(cfg),
            level_optimizer=optimizer(cfg, start=k) if k and cfg.milestones else None,
            levels=cfg.levels, rates=s.rates, iterations=cfg.iterations - k,
            dense_iterations=cfg.iterations, rewind_iteration=k, batch_size=cfg.batch_size,
            eval_every=cfg.eval_every, key=data_key, supermask_acc=s.model_state is None,
            columns=columns(study, cfg, controls, table.kept), progress=progress,
            desc=f"{study}: levels", scope=cfg.scope, model_state=s.model_state,
            augment=s.augment, prunable=s.prunable, compute_dtype=PRECISIONS[cfg.precision],
        )  # fmt: skip
        more_s, more_steps = extra(store, s, progress) if extra else (0.0, 0)
        train_s = done.timings["train"] + more_s
        store.write_csv()
        total = time.perf_counter() - start
    timings = {
        "total": total, "compile": compiles.seconds, "programs": compiles.programs,
        "train": train_s, "other": total - compiles.seconds - train_s,
        "ticket_steps": done.timings["ticket_steps"] + more_steps,
    }  # fmt: skip
    (store.path / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    store.close()  # the run's lock: another process may take the folder now
    return store.path
