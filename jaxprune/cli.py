"""The ``jaxprune`` command: list the studies, run one with its options.

``jaxprune`` (or ``jaxprune --list``) lists the studies with the first line of each one's
documentation; ``jaxprune STUDY [OPTIONS]`` runs it exactly as ``python -m experiments.STUDY
[OPTIONS]`` does in a checkout of the repository (``jaxprune STUDY --help`` for its presets and
options). An installed jaxprune carries the studies as :mod:`jaxprune.studies`.

Example:
  >>> from jaxprune import cli
  >>> cli.main(["--list"])  # doctest: +ELLIPSIS
  deconstructing    Deconstructing Lottery Tickets (Zhou et al. 2019): ...
  ...
  0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["STUDIES", "main", "study"]

STUDIES = (
    "deconstructing",
    "lottery_ticket",
    "obd",
    "pruning_at_init",
    "rethinking",
    "early_bird",
    "instability",
    "sparse_training",
    "llm_pruning",
    "ticket_transfer",
    "weight_agnostic",
)
"""The studies, the main job (``make run``) first."""


def study(name: str) -> ModuleType:
    """The module of study ``name``: ``jaxprune.studies.NAME`` when installed, else the
    repository's ``experiments.NAME``."""
    if name not in STUDIES:
        raise ValueError(f"study must be one of {STUDIES}, got {name!r}.")
    try:
        return importlib.import_module(f"jaxprune.studies.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("jaxprune.studies", f"jaxprune.studies.{name}"):
            raise
        return importlib.import_module(f"experiments.{name}")


def _listing() -> str:
    width = max(map(len, STUDIES)) + 4
    lines = []
    for name in STUDIES:
        doc = (study(name).__doc__ or "").strip().splitlines()
        lines.append(f"{name:<{width}}{doc[0] if doc else ''}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``jaxprune [--list | STUDY [OPTIONS]]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("--list", "list"):
        print(_listing())
        return 0
    if args[0] in ("-h", "--help"):
        print(__doc__.split("\n\nExample")[0] if __doc__ else "")
        print("\nstudies:\n" + _listing())
        return 0
    name, rest = args[0], args[1:]
    if name not in STUDIES:
        print(
            f"jaxprune: error: unknown study {name!r}; expected one of {', '.join(STUDIES)} "
            "(jaxprune --list describes them).",
            file=sys.stderr,
        )
        return 2
    return int(study(name).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
