"""The engine shared by the lottery-ticket and Deconstructing studies: configs, CLI, IMP over tickets.

A study is a list of tickets — ``(seed, criterion, kept reset, pruned value, control)`` — trained
through ``levels`` rounds of iterative pruning. Every level trains all tickets in one vmapped,
scanned program (:func:`jaxprune.train.fit`), the ticket axis sharded over the host devices.

Level 0 is the dense network: it is trained once per seed and shared by every ticket of that seed.
At level ``l ≥ 1`` each ticket

1. scores its weights by its criterion from ``w_init`` (θ₀, or θ_k with late rewinding) and its
   weights trained at level ``l−1``, and prunes the per-layer rates of its *remaining* weights;
2. takes the mask of its ``source`` ticket (itself, or — for the lottery-ticket ``reinit``
   control — the ticket of its seed);
3. resets its kept weights (``kept``) and sets its pruned weights (``pruned``);
4. is evaluated untrained (``untrained_acc``), and with the same mask on signed-constant weights
   (``supermask_acc``: the supermask of Zhou et al.), then trained for ``iterations − k`` steps.

Results (one row per ticket and level) are committed to a :class:`jaxprune.results.Store` after
each level together with an orbax checkpoint of masks and trained weights, so a killed run started
again with the same command resumes at the first unfinished level.
"""

from __future__ import annotations

import os

# Many host devices let the ticket axis be split over the CPU cores (PERFORMANCE.md: the biggest
# CPU lever). Only effective before jax starts; a user's own XLA_FLAGS win.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={max(os.cpu_count() or 1, 1)}"
    ).strip()

import argparse
import dataclasses
import functools
import json
import shutil
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune import criteria, data, masks, models, reset, results, select, train

C = TypeVar("C")
SIGN_PRESERVING = ("rewind", "signed_reinit", "signed_reshuffle", "signed_constant")


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

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rates"] = [list(r) for r in self.rates]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


HELP = {
    "dataset": f"dataset name, one of {data.names()}",
    "model": f"model name, one of {models.names()}",
    "val_size": "validation examples taken from the training pool (default: the dataset's)",
    "levels": "pruning levels after the dense run (0 = dense only)",
    "rates": "per-layer rates by path regex, e.g. 'out=0.1,conv=0.1' (fraction of the remaining)",
    "default_rate": "rate of every prunable layer no pattern in --rates matches",
    "iterations": "training steps per level",
    "batch_size": "examples per step",
    "lr": "Adam learning rate",
    "eval_every": "steps between evaluations (the early-stop resolution)",
    "seeds": "independent seeds (model init and masks)",
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
    "data_dir": "tensorflow-datasets folder for mnist/cifar (prepared offline)",
}
CONTROLS = ("reinit", "random_mask")
GRIDS = ("slices", "product")


class Ticket(NamedTuple):
    seed: int
    criterion: str
    kept: str
    pruned: str
    control: str  # "ticket", "reinit", "random_mask" (lottery ticket) or "-" (deconstructing)
    source: int  # the ticket whose mask this one takes


# ---- configuration and command line ----------------------------------------------------------


def _parse_rates(text: str) -> tuple[tuple[str, float], ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pattern, sep, value = part.rpartition("=")
        if not sep or not pattern:
            raise argparse.ArgumentTypeError(
                f"expected 'pattern=rate,...', got {part!r} in {text!r}."
            )
        try:
            out.append((pattern, float(value)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number after '=', got {value!r} in {text!r}."
            ) from None
    return tuple(out)


def _names(text: str) -> tuple[str, ...]:
    return tuple(filter(None, (p.strip() for p in text.split(","))))


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


def fail(name: str, expected: str, got: Any) -> None:
    """Raise the ``ValueError`` of a bad setting: ``--name must be <expected>, got <got>.``"""
    raise ValueError(f"--{name.replace('_', '-')} must be {expected}, got {got!r}.")


def check_at_least(cfg: Any, low: int, *names: str) -> None:
    """Every named integer setting is at least ``low`` (1: positive, 0: not negative)."""
    for name in names:
        if getattr(cfg, name) < low:
            fail(
                name,
                "a positive integer" if low == 1 else f"an integer ≥ {low}",
                getattr(cfg, name),
            )


def check_names(cfg: Any, name: str, allowed: Sequence[str], *, empty_ok: bool = False) -> None:
    """A comma-list setting holds only ``allowed`` names (and at least one unless ``empty_ok``)."""
    values = getattr(cfg, name)
    if not values and not empty_ok:
        fail(name, f"a non-empty comma list from {tuple(allowed)}", ",".join(values))
    for v in values:
        if v not in allowed:
            fail(name, f"a comma list from {tuple(allowed)}", v)


def check_common(cfg: Any) -> None:
    """The settings every study has: dataset, model, learning rate, training lengths."""
    check_at_least(cfg, 1, "iterations", "batch_size", "eval_every", "seeds")
    if not cfg.lr > 0:
        fail("lr", "> 0", cfg.lr)
    if cfg.dataset not in data.names():
        fail("dataset", f"one of {data.names()}", cfg.dataset)
    if cfg.model not in models.names():
        fail("model", f"one of {models.names()}", cfg.model)


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` for any bad setting, before anything is trained."""
    check_common(cfg)
    check_at_least(cfg, 0, "levels", "supermask_iterations", "rewind_iteration")
    check_at_least(cfg, 1, "supermask_batch_size")
    if cfg.rewind_iteration >= cfg.iterations:
        fail("rewind_iteration", f"below --iterations ({cfg.iterations})", cfg.rewind_iteration)
    if not cfg.supermask_lr > 0:
        fail("supermask_lr", "> 0", cfg.supermask_lr)
    for pattern, rate in (*cfg.rates, ("(default)", cfg.default_rate)):
        if not 0.0 <= rate < 1.0:
            fail("rates", f"rates in [0, 1) (pattern {pattern!r})", rate)
    check_names(cfg, "criteria", criteria.names())
    check_names(cfg, "kept", reset.kept_names())
    check_names(cfg, "pruned", reset.pruned_names())
    check_names(cfg, "controls", CONTROLS, empty_ok=True)
    if cfg.grid not in GRIDS:
        fail("grid", f"one of {GRIDS}", cfg.grid)


def config_json(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON values (tuples as lists), for the run store."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _kind(name: str, hint: Any) -> Callable[[str], Any]:
    """How the command line parses a config field, from its type hint."""
    if name == "rates" or hint in (tuple[tuple[str, float], ...],):
        return _parse_rates
    if hint in (tuple[str, ...],):
        return _names
    if hint in (tuple[float, ...],):
        return _floats
    if hint in (tuple[int, ...],):
        return _ints
    if hint in (int, int | None):
        return int
    if hint in (float, float | None):
        return float
    if hint in (str, str | None):
        return str
    raise TypeError(f"config field {name!r} has a type the CLI cannot parse: {hint!r}")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of numbers, got {text!r}."
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of integers, got {text!r}."
        ) from None


def parser(
    description: str,
    presets: Mapping[str, Callable[[], Any]],
    *,
    help: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """A CLI: ``--preset`` picks a config, every other option overrides one of its fields.

    The options are the fields of the presets' config dataclass (``--batch-size`` for
    ``batch_size``), parsed by type: comma lists for tuples, numbers, strings.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=_Formatter)
    p.add_argument(
        "--preset", default="quick", choices=sorted(presets), help="settings to start from"
    )
    p.add_argument("--out", default="runs", help="folder under which the run folder is made")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    cls = type(next(iter(presets.values()))())
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name == "preset":
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _kind(field.name, hints[field.name])
        p.add_argument(flag, type=kind, default=None, help=(help or HELP).get(field.name, ""))
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def config_from_args(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    presets: Mapping[str, Callable[[], C]],
    *,
    check: Callable[[C], None] | None = None,
) -> tuple[C, argparse.Namespace]:
    """Parse ``argv`` into a validated config (errors go through ``p.error``: exit 2, no trace).

    ``check`` validates the config (default: :func:`validate`, for the IMP studies' ``Config``).
    """
    args = p.parse_args(argv)
    cfg = presets[args.preset]()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
        if f.name != "preset" and getattr(args, f.name, None) is not None
    }
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    try:
        (check or validate)(cfg)  # type: ignore[arg-type]
    except ValueError as e:
        p.error(str(e))
    return cfg, args


def cli(
    argv: Sequence[str] | None,
    description: str,
    presets: Mapping[str, Callable[[], C]],
    *,
    help: Mapping[str, str],
    check: Callable[[C], None],
    run: Callable[..., Path],
    report: Callable[[Path, C], Mapping[str, Path]],
) -> int:
    """The whole command line of a study: parse and check the settings, ``run(cfg, out=,
    progress=)``, ``report(folder, cfg)``, then print ``summary.md`` and where everything is.

    A missing dataset or a setting only the run can judge (a ``ValueError``) ends as a CLI error
    (exit 2, the message, no trace); rows already committed stay.
    """
    p = parser(description, presets, help=help)
    cfg, args = config_from_args(p, argv, presets, check=check)
    try:
        folder = run(cfg, out=args.out, progress=not args.no_progress)
    except (data.DatasetNotAvailableError, ValueError) as e:
        p.error(str(e))
    paths = report(folder, cfg)
    print((folder / "summary.md").read_text())
    print(f"results in {folder}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


# ---- tickets ---------------------------------------------------------------------------------


def grid(cfg: Config) -> list[tuple[str, str, str]]:
    """The (criterion, kept, pruned) combinations of a Deconstructing config, in a fixed order."""
    c0, k0, p0 = cfg.criteria[0], cfg.kept[0], cfg.pruned[0]
    if cfg.grid == "product":
        combos = [(c, k, p) for c in cfg.criteria for k in cfg.kept for p in cfg.pruned]
    else:
        combos = (
            [(c, k0, p0) for c in cfg.criteria]
            + [(c0, k, p0) for k in cfg.kept]
            + [(c0, k0, p) for p in cfg.pruned]
        )
    return list(dict.fromkeys(combos))


def deconstructing_tickets(cfg: Config) -> list[Ticket]:
    out: list[Ticket] = []
    for seed in range(cfg.seeds):
        for c, k, p in grid(cfg):
            out.append(Ticket(seed, c, k, p, "-", len(out)))
    return out


def lottery_tickets(cfg: Config) -> list[Ticket]:
    """Per seed: the ticket (``criteria[0]``, ``kept[0]``), then each control of ``cfg.controls``.

    ``reinit`` takes the ticket's mask at every level and random weights (Frankle & Carbin's
    control); ``random_mask`` prunes at random — the same per-layer counts — from θ₀.
    """
    out: list[Ticket] = []
    c0, k0, p0 = cfg.criteria[0], cfg.kept[0], cfg.pruned[0]
    for seed in range(cfg.seeds):
        ticket = len(out)
        out.append(Ticket(seed, c0, k0, p0, "ticket", ticket))
        for control in cfg.controls:
            if control == "reinit":
                out.append(Ticket(seed, c0, "reinit", p0, "reinit", ticket))
            else:
                out.append(Ticket(seed, "random", k0, p0, "random_mask", len(out)))
    return out


# ---- jitted pieces -----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("criterion",))
def _next_masks(
    criterion: str, w_init: Any, w_final: Any, mask: Any, grads: Any, keys: Any, rates: Any
) -> Any:
    use_grads = "grads" in criteria.needs(criterion)
    use_key = "key" in criteria.needs(criterion)

    def one(wi: Any, wf: Any, m: Any, g: Any, k: Any) -> Any:
        k = jax.random.wrap_key_data(k)
        s = criteria.score(
            criterion, wi, wf, grads=g if use_grads else None, mask=m, key=k if use_key else None
        )
        # Ties (e.g. every same-sign weight under a *_diff_sign criterion) are broken at random:
        # by index they would keep a block of the first rows.
        return select.layerwise(s, m, rates, key=jax.random.fold_in(k, 1))

    return jax.vmap(one)(w_init, w_final, mask, grads, keys)


@functools.partial(jax.jit, static_argnames=("kept", "pruned"))
def _reset(kept: str, pruned: str, w_init: Any, mask: Any, w_final: Any, keys: Any) -> Any:
    need = reset.needs(kept, pruned)

    def one(wi: Any, m: Any, wf: Any, k: Any) -> Any:
        k = jax.random.wrap_key_data(k)
        return reset.reset(
            wi,
            m,
            kept=kept,
            pruned=pruned,
            w_final=wf if "w_final" in need else None,
            key=k if "key" in need else None,
        )

    return jax.vmap(one)(w_init, mask, w_final, keys)


def _take(tree: Any, idx: Sequence[int]) -> Any:
    """Rows ``idx`` of every leaf, on the host (numpy indexing compiles nothing)."""
    ix = np.asarray(idx, np.int64)
    return jax.tree.map(lambda a: np.asarray(a)[ix], tree)


def _put(tree: Any, idx: Sequence[int], part: Any) -> Any:
    """A host copy of ``tree`` with rows ``idx`` replaced by ``part``."""
    ix = np.asarray(idx, np.int64)

    def one(a: Any, b: Any) -> np.ndarray:
        out = np.array(a)
        out[ix] = np.asarray(b)
        return out

    return jax.tree.map(one, tree, part)


@functools.partial(jax.jit, static_argnames=("n",))
def _ticket_keys(root: Any, level: Any, *, n: int) -> Any:
    """Raw key data (``(n, …)`` uint32) for ticket ``i`` at ``level``: ``fold_in(fold_in(root, i), level)``."""
    return jax.vmap(
        lambda i: jax.random.key_data(jax.random.fold_in(jax.random.fold_in(root, i), level))
    )(jnp.arange(n))


def _grouped(keys_of: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], list[int]]:
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, k in enumerate(keys_of):
        groups.setdefault(k, []).append(i)
    return groups


def _mesh_for(n: int) -> Any:
    """A mesh over the most host devices that divide the ticket count (``None`` for one)."""
    devs = jax.devices()
    d = max(k for k in range(1, len(devs) + 1) if n % k == 0)
    return None if d == 1 else train.ticket_mesh(devs[:d])


def _density(mask: Any) -> np.ndarray:
    """Density over the prunable leaves, per ticket (leading axis)."""
    flags = jax.tree.leaves(masks.is_prunable(jax.tree.map(lambda m: m[0], mask)))
    leaves = [m for m, f in zip(jax.tree.leaves(mask), flags, strict=True) if f]
    kept = sum(np.asarray(m).reshape(m.shape[0], -1).sum(1) for m in leaves)
    total = sum(int(np.prod(m.shape[1:])) for m in leaves)
    return np.asarray(kept, np.float64) / total


# ---- the run ---------------------------------------------------------------------------------


class _Setup(NamedTuple):
    ds: data.Dataset
    apply_fn: Any
    theta0: Any  # stacked per seed
    rates: Any


def _setup(cfg: Config) -> _Setup:
    ds = data.load(cfg.dataset, seed=0, val_size=cfg.val_size, data_dir=cfg.data_dir)
    if cfg.batch_size > len(ds.train.y):
        raise ValueError(
            f"--batch-size must be at most the {len(ds.train.y)} training examples of "
            f"{cfg.dataset!r}, got {cfg.batch_size}."
        )
    funcs = [
        models.functional(
            models.build(
                cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, seed=seed
            )
        )
        for seed in range(cfg.seeds)
    ]
    theta0 = train.stack([f[1] for f in funcs])
    rates = select.rates_by_pattern(funcs[0][1], dict(cfg.rates), default=cfg.default_rate)
    return _Setup(ds, funcs[0][0], theta0, rates)


def _fit(
    cfg: Config,
    s: _Setup,
    steps: train.Steps,
    state: Any,
    mask: Any,
    frozen: Any,
    *,
    iterations: int,
    data_key: Any,
    progress: bool,
    desc: str,
) -> tuple[Any, train.History]:
    n = jax.tree.leaves(mask)[0].shape[0]
    state, hist = train.fit(
        steps,
        state,
        mask,
        s.ds.train,
        s.ds.val,
        s.ds.test,
        iterations=iterations,
        batch_size=cfg.batch_size,
        eval_every=min(cfg.eval_every, iterations),
        data_key=data_key,
        frozen=frozen,
        tickets=True,
        mesh=_mesh_for(n),
        progress=progress,
        desc=desc,
    )
    # Back on one device, so the pruning step can mix these params with unsharded masks.
    return jax.device_put(state, jax.devices()[0]), hist


def _row_base(study: str, cfg: Config, t: Ticket) -> dict[str, Any]:
    return {
        "study": study,
        "preset": cfg.preset,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "seed": t.seed,
        "control": t.control,
        "criterion": t.criterion,
        "kept": t.kept,
        "sign_preserving": t.kept.removesuffix("_rescaled") in SIGN_PRESERVING,
        "pruned": t.pruned,
        "rewind_iteration": cfg.rewind_iteration,
    }


def _history_cols(hist: train.History, i: int, offset: int = 0) -> dict[str, Any]:
    return {
        "final_test_acc": float(hist.test_acc[i, -1]),
        "final_val_acc": float(hist.val_acc[i, -1]),
        "early_stop_iteration": int(hist.early_stop_iteration[i]) + offset,
        "early_stop_test_acc": float(hist.early_stop_test_acc[i]),
        # Differences between tickets show most early in training (PERFORMANCE.md, digits).
        "first_eval_iteration": int(hist.iteration[0]) + offset,
        "first_eval_test_acc": float(hist.test_acc[i, 0]),
    }


def _clear_state(folder: Path, level: int) -> None:
    for stale in folder.glob(f"level_{level:03d}*"):
        shutil.rmtree(stale, ignore_errors=True)


def run(
    study: str,
    cfg: Config,
    tickets: list[Ticket],
    *,
    out: str | os.PathLike[str] = "runs",
    progress: bool = True,
) -> Path:
    """Train every ticket through every level, committing rows as it goes; returns the run folder.

    Resumes a run folder that already holds some levels (same config ⇒ same folder).
    """
    validate(cfg)
    s = _setup(cfg)  # loads the data: a missing dataset stops here, before any training
    store = results.Store(results.run_dir(out, study, cfg.to_json()), cfg.to_json())
    state_dir = store.path / "state"
    n = len(tickets)
    seed_of = [t.seed for t in tickets]
    forward = any(t.pruned != "zero" for t in tickets)
    steps = train.make_steps(s.apply_fn, optax.adam(cfg.lr), mode="forward" if forward else "zero")
    dense_steps = train.make_steps(s.apply_fn, optax.adam(cfg.lr))
    k = cfg.rewind_iteration
    root = jax.random.key(20190503)
    done = set(store.done())
    start = time.time()

    # Level 0: one dense run per seed, shared by all the tickets of that seed.
    like0 = {"theta_k": s.theta0, "final": s.theta0}
    if "level_000" in done:
        saved = train.checkpoint.restore(state_dir / "level_000", like=like0)
        theta_k, dense_final = saved["theta_k"], saved["final"]
    else:
        _clear_state(state_dir, 0)
        ones = jax.vmap(masks.ones)(s.theta0)
        state = jax.vmap(dense_steps.init)(s.theta0)
        offset = 0
        if k:
            state, _ = _fit(
                cfg, s, dense_steps, state, ones, None, iterations=k,
                data_key=jax.random.fold_in(root, 0), progress=progress, desc="dense to θ_k",
            )  # fmt: skip
            offset = k
        theta_k = state.params if k else s.theta0
        state, hist = _fit(
            cfg, s, dense_steps, state, ones, None, iterations=cfg.iterations - k,
            data_key=jax.random.fold_in(root, 1), progress=progress, desc="level 0 (dense)",
        )  # fmt: skip
        dense_final = state.params
        train.checkpoint.save(state_dir / "level_000", {"theta_k": theta_k, "final": dense_final})
        rows = []
        for i, t in enumerate(tickets):
            rows.append(
                {
                    **_row_base(study, cfg, t),
                    "level": 0,
                    "density": 1.0,
                    **_history_cols(hist, t.seed, offset),
                    "untrained_acc": None,
                    "supermask_acc": None,
                    "iterations": cfg.iterations,
                    "ticket": i,
                }
            )
        store.write("level_000", rows)
        done.add("level_000")

    w_init = _take(theta_k, seed_of)  # the rewind point of each ticket's seed
    mask = jax.tree.map(lambda a: np.ones(a.shape, bool), w_init)
    final = _take(dense_final, seed_of)
    grads = (
        _init_grads(cfg, s, w_init)
        if any("grads" in criteria.needs(t.criterion) for t in tickets)
        else w_init
    )
    like = {"mask": mask, "final": final}
    bar = tqdm(total=cfg.levels, desc=f"{study}: levels", unit="level", disable=not progress)
    for level in range(1, cfg.levels + 1):
        name = f"level_{level:03d}"
        bar.set_postfix(tickets=n, level=level)
        if name in done:
            if f"level_{level + 1:03d}" not in done:
                saved = train.checkpoint.restore(state_dir / name, like=like)
                mask, final = saved["mask"], saved["final"]
            bar.update(1)
            continue
        _clear_state(state_dir, level)
        keys = np.asarray(_ticket_keys(root, level, n=n))
        new = mask
        for (crit,), idx in _grouped([(t.criterion,) for t in tickets]).items():
            part = _next_masks(
                crit, *(_take(a, idx) for a in (w_init, final, mask, grads, keys)), s.rates
            )
            new = _put(new, idx, part)
        mask = _take(new, [t.source for t in tickets])
        params, frozen = w_init, w_init
        for (kept, pruned), idx in _grouped([(t.kept, t.pruned) for t in tickets]).items():
            p, f = _reset(kept, pruned, *(_take(a, idx) for a in (w_init, mask, final, keys)))
            params, frozen = _put(params, idx, p), _put(frozen, idx, f)
        xs, ys = s.ds.test
        ev = functools.partial(train.evaluate, tickets=True)
        untrained = ev(steps, params, mask, frozen if forward else None, xs, ys)[1]
        signed = _reset("signed_constant", "zero", w_init, mask, final, keys)[0]
        supermask = ev(steps, signed, mask, None, xs, ys)[1]
        state, hist = _fit(
            cfg, s, steps, jax.vmap(steps.init)(params), mask, frozen if forward else None,
            iterations=cfg.iterations - k, data_key=jax.random.fold_in(root, 1),
            progress=progress, desc=f"level {level}/{cfg.levels} ({n} tickets)",
        )  # fmt: skip
        final = state.params
        train.checkpoint.save(state_dir / name, {"mask": mask, "final": final})
        dens = _density(mask)
        rows = [
            {
                **_row_base(study, cfg, t),
                "level": level,
                "density": float(dens[i]),
                **_history_cols(hist, i, k),
                "untrained_acc": float(untrained[i]),
                "supermask_acc": float(supermask[i]),
                "iterations": cfg.iterations - k,
                "ticket": i,
            }
            for i, t in enumerate(tickets)
        ]
        store.write(name, rows)
        done.add(name)
        bar.update(1)
    bar.close()
    if cfg.supermask_iterations and "learned_supermask" not in done:
        store.write("learned_supermask", _learned_supermasks(study, cfg, s, progress))
    store.write_csv()
    (store.path / "elapsed.txt").write_text(f"{time.time() - start:.1f} s (this invocation)\n")
    return store.path


def _init_grads(cfg: Config, s: _Setup, w_init: Any) -> Any:
    """Gradients of the training loss at ``w_init`` on the first 1,000 training examples."""
    x = jnp.asarray(s.ds.train.x[:1000])
    y = jnp.asarray(s.ds.train.y[:1000])

    def loss(p: Any) -> Any:
        return train.cross_entropy(s.apply_fn(p, x), y)

    return jax.jit(jax.vmap(jax.grad(loss)))(w_init)


def _init_with_key(steps: train.Steps, logits: Any, key: Any) -> Any:
    init: Any = steps.init  # the supermask steps' init takes the sampling key too
    return init(logits, key=key)


def _learned_supermasks(study: str, cfg: Config, s: _Setup, progress: bool) -> list[dict[str, Any]]:
    """Weights frozen at θ₀, a logit per weight trained through a Bernoulli sample (Zhou et al.)."""
    from jaxprune import supermask

    rows = []
    keys = jax.random.split(jax.random.key(7), cfg.seeds)
    ones = jax.vmap(masks.ones)(s.theta0)
    batch = min(cfg.supermask_batch_size, len(s.ds.train.y))
    for rescale in (False, True):
        steps = supermask.make_steps(
            s.apply_fn, optax.sgd(cfg.supermask_lr, momentum=0.9), rescale=rescale
        )
        logits = jax.vmap(supermask.logits_init)(s.theta0)
        state = jax.vmap(functools.partial(_init_with_key, steps))(logits, keys)
        state, hist = train.fit(
            steps, state, ones, s.ds.train, s.ds.val, s.ds.test,
            iterations=cfg.supermask_iterations, batch_size=batch,
            eval_every=min(cfg.eval_every, cfg.supermask_iterations), data_key=jax.random.key(3),
            frozen=s.theta0, tickets=True, mesh=_mesh_for(cfg.seeds), progress=progress,
            desc=f"learned supermask{' (rescaled)' if rescale else ''}",
        )  # fmt: skip
        learned = jax.vmap(supermask.mask_of)(state.params)
        dens = _density(learned)
        for seed in range(cfg.seeds):
            rows.append(
                {
                    "study": study,
                    "preset": cfg.preset,
                    "dataset": cfg.dataset,
                    "model": cfg.model,
                    "seed": seed,
                    "rescale": rescale,
                    "density": float(dens[seed]),
                    **_history_cols(hist, seed),
                    "iterations": cfg.supermask_iterations,
                }
            )
    return rows
