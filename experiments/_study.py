"""The command line every study shares: options from a config dataclass, settings checks, run, report.

A study is a config dataclass with presets, a ``validate`` that raises ``ValueError`` naming the
bad setting, a ``run(cfg, *, out, progress) -> folder`` and a ``report(folder, cfg)``; :func:`cli`
turns them into a command (``python -m experiments.<study> --help``). Nothing here prunes or
trains: the sweep logic is the library's (:mod:`jaxprune.tickets`, :mod:`jaxprune.sweep`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from jaxprune import data, models, train

C = TypeVar("C")

HELP = {
    "dataset": f"dataset name, one of {data.names()}",
    "model": f"model name, one of {models.names()}",
    "val_size": "validation examples taken from the training pool (default: the dataset's)",
    "iterations": "training steps",
    "batch_size": "examples per step",
    "lr": "learning rate",
    "eval_every": "steps between evaluations (the early-stop resolution)",
    "seeds": "independent seeds (model init and masks)",
    "data_dir": "tensorflow-datasets folder for mnist/cifar (prepared offline)",
}
"""Help of the settings most studies share; a study adds its own."""


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
    help: Mapping[str, str],
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
        p.add_argument(flag, type=kind, default=None, help=help.get(field.name, ""))
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def config_from_args(
    p: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    presets: Mapping[str, Callable[[], C]],
    *,
    check: Callable[[C], None],
) -> tuple[C, argparse.Namespace]:
    """Parse ``argv`` into a config that ``check`` accepts (errors go through ``p.error``: exit 2,
    the message, no trace)."""
    args = p.parse_args(argv)
    cfg = presets[args.preset]()
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cfg)  # type: ignore[arg-type]
        if f.name != "preset" and getattr(args, f.name, None) is not None
    }
    cfg = dataclasses.replace(cfg, **changes)  # type: ignore[type-var]
    try:
        check(cfg)
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
    brief: Callable[[Path, C], str] | None = None,
) -> int:
    """The whole command line of a study: parse and check the settings, ``run(cfg, out=,
    progress=)``, ``report(folder, cfg)``, then print ``brief(folder, cfg)`` (default: the run's
    ``summary.md``), this invocation's timings when the run wrote ``timings.json``, and where
    everything is.

    The host CPU is split into one device per core first (:func:`jaxprune.train.use_host_devices`),
    so that tickets shard over the cores, and compiled programs are kept on disk for the next run
    (:func:`jaxprune.train.use_compile_cache`; ``JAXPRUNE_COMPILE_CACHE=off`` turns it off). A
    missing dataset or a setting only the run can judge (a
    ``ValueError``) ends as a CLI error (exit 2, the message, no trace); rows already committed
    stay.
    """
    train.use_host_devices()
    train.use_compile_cache()
    p = parser(description, presets, help=help)
    cfg, args = config_from_args(p, argv, presets, check=check)
    try:
        folder = run(cfg, out=args.out, progress=not args.no_progress)
    except (data.DatasetNotAvailableError, ValueError) as e:
        p.error(str(e))
    paths = report(folder, cfg)
    print(brief(folder, cfg) if brief else (folder / "summary.md").read_text())
    timings = folder / "timings.json"
    if timings.exists():
        print(describe_timings(json.loads(timings.read_text())))
    print(f"results in {folder}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def describe_timings(t: Mapping[str, float]) -> str:
    """One line for a run's ``timings.json`` (seconds of this invocation; see
    :class:`jaxprune.sweep.Sweep`).

    Example:
      >>> print(describe_timings({"total": 50.0, "compile": 9.5, "programs": 41, "train": 33.0,
      ...                         "other": 7.5, "ticket_steps": 132_000}))
      time 50.0 s: compiling 9.5 s (41 XLA programs), training 33.0 s (4,000 ticket-steps/s), everything else 7.5 s
    """
    rate = t.get("ticket_steps", 0) / t["train"] if t["train"] > 0 else 0.0
    return (
        f"time {t['total']:.1f} s: compiling {t['compile']:.1f} s ({int(t['programs'])} XLA "
        f"programs), training {t['train']:.1f} s ({rate:,.0f} ticket-steps/s), everything "
        f"else {t['other']:.1f} s"
    )
