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
import math
import re
import sys
import traceback
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

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
    "augment": "training-batch augmentation on the device: 'none', or 'crop_flip' (a random crop "
    "after 4-pixel padding and a random horizontal flip, per ticket and step)",
    "normalize": "pixels as loaded ('none'), or standardised per channel with the training "
    "split's statistics ('per_channel')",
}
"""Help of the settings most studies share; a study adds its own."""

BN_MODELS = tuple(n for n in models.names() if n.startswith(("vgg", "resnet")))
"""The models with batch norm (:func:`jaxprune.models.stateful`): what the channel studies prune."""
PLAIN_MODELS = tuple(n for n in models.names() if n not in BN_MODELS)
"""The models without batch norm: what the studies that train ``apply_fn(params, x)``
(:func:`jaxprune.models.functional`) can run."""
TOKEN_MODELS = ("transformer",)
"""The models of token ids (language models): they train on the text sets
(:data:`jaxprune.data.TEXT_SETS`), every other model on images."""
READS_DATA_DIR = (*data.TFDS_SETS, "tiny_shakespeare")
"""The datasets read from a tensorflow-datasets folder (``--data-dir``)."""


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


def flag(name: str) -> str:
    """The command-line flag of a config field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def fail(name: str, expected: str, got: Any) -> NoReturn:
    """Raise the ``ValueError`` of a bad setting: ``--name must be <expected>, got <got>.``"""
    raise ValueError(f"{flag(name)} must be {expected}, got {got!r}.")


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


def check_finite(cfg: Any) -> None:
    """No float setting (nor a number of a list setting) is NaN or infinite."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        for v in _numbers(value):
            if not math.isfinite(v):
                fail(
                    field.name,
                    "finite numbers" if isinstance(value, tuple) else "a finite number",
                    v,
                )


def _numbers(value: Any) -> Iterable[float]:
    if isinstance(value, float):
        yield value
    elif isinstance(value, tuple):
        for v in value:
            yield from _numbers(v)


def check_fractions(cfg: Any, name: str, what: str, *, one_ok: bool = False) -> None:
    """A comma list of distinct numbers in (0, 1) — (0, 1] when ``one_ok`` —, at least one."""
    values = getattr(cfg, name)
    interval = "(0, 1]" if one_ok else "(0, 1)"
    if not values:
        fail(name, f"a non-empty comma list of {what} in {interval}", "")
    for v in values:
        if not (0.0 < v <= 1.0 if one_ok else 0.0 < v < 1.0):
            fail(name, f"{what} in {interval}", v)
    if len(set(values)) != len(values):
        fail(name, f"distinct {what}, each given once", ",".join(f"{v:g}" for v in values))


def check_rates(cfg: Any, name: str) -> None:
    """A ``pattern=rate,...`` setting: every pattern a regular expression, given once (the first
    pattern that matches a path sets its rate), every rate in [0, 1)."""
    patterns = [pattern for pattern, _ in getattr(cfg, name)]
    for pattern in patterns:
        if patterns.count(pattern) > 1:
            fail(name, "distinct patterns (the first that matches a layer sets its rate)", pattern)
    for pattern, rate in getattr(cfg, name):
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"{flag(name)} pattern {pattern!r} is not a valid regular expression (Python re): "
                f"{e}."
            ) from None
        if not 0.0 <= rate < 1.0:
            fail(name, f"rates in [0, 1) (pattern {pattern!r})", rate)


def check_patterns_match(
    name: str, patterns: Iterable[str], paths: Sequence[str], what: str
) -> None:
    """Every pattern of a ``pattern=rate`` setting finds one of ``paths`` (``re.search``): a pattern
    that matches nothing is a typo, not a rate. ``what`` names the paths in the message."""
    for pattern in patterns:
        if not any(re.search(pattern, p) for p in paths):
            raise ValueError(
                f"{flag(name)} pattern {pattern!r} matches no {what}; the {what}s are: "
                f"{', '.join(paths)}."
            )


def check_common(cfg: Any, *, batch_norm: bool = False) -> None:
    """The settings the studies share (each one a config has): finite numbers, training lengths,
    learning rate, dataset, data folder, validation size and model — with batch norm when
    ``batch_norm`` (the channel studies), else without."""
    check_finite(cfg)
    lengths = ("iterations", "batch_size", "eval_every", "seeds")
    check_at_least(cfg, 1, *(n for n in lengths if hasattr(cfg, n)))
    if cfg.val_size is not None:
        check_at_least(cfg, 1, "val_size")
    if not cfg.lr > 0:
        fail("lr", "> 0", cfg.lr)
    if cfg.dataset not in data.names():
        fail("dataset", f"one of {data.names()}", cfg.dataset)
    if cfg.data_dir is not None and cfg.dataset not in READS_DATA_DIR:
        raise ValueError(
            f"--data-dir is only read for the prepared tensorflow-datasets sets "
            f"{tuple(sorted(READS_DATA_DIR))}; {cfg.dataset!r} is built into jaxprune and reads "
            f"no folder: drop --data-dir (got {cfg.data_dir!r})."
        )
    check_pairing(cfg.dataset, (cfg.model,))
    if batch_norm and cfg.model not in BN_MODELS:
        fail("model", f"a model with batch norm, one of {BN_MODELS}", cfg.model)
    if not batch_norm and cfg.model not in PLAIN_MODELS:
        fail(
            "model", "a model without batch norm (this study trains apply_fn(params, x), "
            f"models.functional), one of {PLAIN_MODELS}", cfg.model,
        )  # fmt: skip


def check_pairing(dataset: str, model_names: Sequence[str]) -> None:
    """Text sets go with the models of token ids (:data:`TOKEN_MODELS`), images with the others."""
    text = dataset in data.TEXT_SETS
    for name in model_names:
        if text and name not in TOKEN_MODELS:
            fail("model", f"a model of token ids for the text set {dataset!r}, one of "
                 f"{TOKEN_MODELS}", name)  # fmt: skip
        if not text and name in TOKEN_MODELS:
            fail("dataset", f"a text set for the language model {name!r}, one of "
                 f"{data.TEXT_SETS}", dataset)  # fmt: skip


def load_data(cfg: Any) -> data.Dataset:
    """The dataset of a config (seed 0: the same split for every run), ``--batch-size`` checked
    against its training examples."""
    ds = data.load(cfg.dataset, seed=0, val_size=cfg.val_size, data_dir=cfg.data_dir)
    n = len(ds.train.y)
    if cfg.batch_size > n:
        fail("batch_size", f"at most the {n} training examples of {cfg.dataset!r}", cfg.batch_size)
    return ds


AUGMENTS = ("none", "crop_flip")
"""``--augment``: none, or open_lth's CIFAR augmentation (:class:`jaxprune.data.Augment`)."""
NORMALIZE = ("none", "per_channel")
"""``--normalize``: none, or per-channel standardisation (:func:`jaxprune.data.normalize`)."""


def check_data_options(cfg: Any) -> None:
    """``--augment`` and ``--normalize`` are among their choices."""
    for name, allowed in (("augment", AUGMENTS), ("normalize", NORMALIZE)):
        if getattr(cfg, name) not in allowed:
            fail(name, f"one of {allowed}", getattr(cfg, name))


def prepared_data(cfg: Any) -> data.Dataset:
    """:func:`load_data`, standardised per channel when ``cfg.normalize == "per_channel"``."""
    ds = load_data(cfg)
    return data.normalize(ds) if cfg.normalize == "per_channel" else ds


def augmentation(cfg: Any, ds: data.Dataset) -> data.Augment | None:
    """The augmentation of ``cfg.augment`` for ``ds`` (``None`` for ``"none"``), its image shape
    checked. Crops pad with black — the normalised value of a 0 pixel when ``ds`` is
    standardised —, as torchvision pads before normalising."""
    if cfg.augment != "crop_flip":
        return None
    fill = ds.normalization.black if ds.normalization is not None else 0.0
    augment = data.Augment(crop_padding=4, flip=True, fill=fill)
    augment.check_images((1, *ds.input_shape), name="--augment crop_flip")
    return augment


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
    prog: str | None = None,
) -> argparse.ArgumentParser:
    """A CLI: ``--preset`` picks a config, every other option overrides one of its fields.

    The options are the fields of the presets' config dataclass (``--batch-size`` for
    ``batch_size``), parsed by type: comma lists for tuples, numbers, strings. ``prog`` (the
    study's name) starts every error line: ``<prog>: error: <message>``, exit status 2.
    """
    p = _Parser(prog=prog, description=description, formatter_class=_Formatter)
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
        kind = _kind(field.name, hints[field.name])
        # argparse formats help with %: a literal "50%" must reach it as "50%%".
        text = help.get(field.name, "").replace("%", "%%")
        p.add_argument(flag(field.name), type=kind, default=None, help=text)
    return p


class _Parser(argparse.ArgumentParser):
    """Errors as one line, ``<prog>: error: <message>`` (exit 2), without the usage: a study has
    thirty options, and ``--help`` lists them."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def one_line(message: str) -> str:
    """A message on one line: its lines joined by spaces, their indentation dropped."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def describe_error(err: BaseException) -> str:
    """The message of a ``ValueError`` or ``OSError`` for the error line: an ``OSError`` as its
    reason and the file it names (``No such file or directory: 'x'``), without ``[Errno 2]``."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": {str(err.filename)!r}" if err.filename is not None else "")
    return str(err) or type(err).__name__


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
        p.error(describe_error(e))
    return cfg, args


def cli(
    argv: Sequence[str] | None,
    description: str,
    presets: Mapping[str, Callable[[], C]],
    *,
    study: str,
    help: Mapping[str, str],
    check: Callable[[C], None],
    run: Callable[..., Path],
    report: Callable[[Path, C], Mapping[str, Path]],
    brief: Callable[[Path, C], str] | None = None,
) -> int:
    """The whole command line of ``study``: parse and check the settings, ``run(cfg, out=,
    progress=)``, ``report(folder, cfg)``, then print ``brief(folder, cfg)`` (default: the run's
    ``summary.md``), this invocation's timings when the run wrote ``timings.json``, and where
    everything is.

    The host CPU is split into one device per core first (:func:`jaxprune.train.use_host_devices`),
    so that tickets shard over the cores, and compiled programs are kept on disk for the next run
    (:func:`jaxprune.train.use_compile_cache`; ``JAXPRUNE_COMPILE_CACHE=off`` turns it off).

    Every error a user can fix — a bad setting, a missing dataset, a folder that cannot be
    written, a damaged run folder or checkpoint: a ``ValueError`` or an ``OSError``, from the
    checks, the run or the report — ends the same way: one line ``<study>: error: <message>`` on
    stderr, exit status 2, no trace. The settings are checked before anything is written; rows a
    run already committed stay.
    """
    train.use_host_devices()
    _quiet_stray_reads()
    p = parser(description, presets, help=help, prog=study)
    cfg, args = config_from_args(p, argv, presets, check=check)
    try:
        train.use_compile_cache()
        folder = run(cfg, out=args.out, progress=not args.no_progress)
        paths = report(folder, cfg)
        print(brief(folder, cfg) if brief else (folder / "summary.md").read_text())
        timings = folder / "timings.json"
        if timings.exists():
            print(describe_timings(json.loads(timings.read_text())))
    except (ValueError, OSError) as e:
        p.error(describe_error(e))
    print(f"results in {folder}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _quiet_stray_reads() -> None:
    """Drop orbax's stray ``RuntimeError: Event loop is closed`` reports (nothing else).

    When one array of a checkpoint cannot be read (a damaged run folder), orbax's restore closes
    its event loop at once, while tensorstore still reads the other arrays on its own threads;
    each read that lands afterwards calls ``loop.call_soon_threadsafe`` on the closed loop and
    the ``RuntimeError`` goes to ``sys.unraisablehook``, whose default prints a traceback — after
    the real error, or between its lines. The restore has already failed with its own
    ``ValueError``, so these reports say nothing more. Installed only over Python's default hook:
    a test runner's own hook is left alone.
    """
    default = sys.__unraisablehook__
    if sys.unraisablehook is not default:
        return

    def hook(u: Any) -> None:
        frames = [f.name for f in traceback.extract_tb(u.exc_traceback)]
        if (
            u.object is None
            and isinstance(u.exc_value, RuntimeError)
            and str(u.exc_value) == "Event loop is closed"
            and "call_soon_threadsafe" in frames
        ):
            return
        default(u)

    sys.unraisablehook = hook


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
