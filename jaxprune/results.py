"""Results: an append-only, resumable store of result rows, and the tables made from it.

A *run* is a folder named from its config (:func:`run_dir`); a :class:`Store` over it holds

* ``config.json`` — the run's config as canonical JSON (sorted keys), written once;
* ``rows/<seq>-<unit>.jsonl`` — one file per committed *unit* of work (e.g. one ticket batch or one
  pruning round), one JSON row per line; ``<seq>`` is a zero-padded commit counter, so reading the
  files in ``seq`` order gives the units in the order they were committed.

A row is a flat dict of JSON scalars (``str``, ``int``, ``float``, ``bool``, ``None``). A unit is
committed atomically (temp file, ``fsync``, ``os.replace``, ``fsync`` of the folder), so a process
killed at any instant leaves either the whole unit or none of it, and a committed unit can never be
written again: an interrupted sweep resumes by skipping ``store.has(unit)`` and neither duplicates
nor drops a row (invariant 9). Each unit file starts with a commit record (unit, row count,
SHA-256 of the rows), checked whenever a Store opens the run: a unit damaged later is moved to
``<run>/damaged/`` and recomputed, never silently short. One process writes a run at a time: a
Store holds an exclusive ``flock`` on ``<run>/.lock`` while open, so a second process stops at
once with a message naming the first; ``Store(..., readonly=True)`` reads (and reports) a run
without writing anything.

Only the standard library is used, so result handling never needs jax, flax or tfds.

Example:
  >>> import tempfile
  >>> from jaxprune import results
  >>> config = {"preset": "quick", "seeds": 2, "lr": 0.1}
  >>> store = results.Store(results.run_dir(tempfile.mkdtemp(), "lt", config), config)
  >>> store.path.name
  'lt-quick-...'
  >>> for seed in range(2):
  ...     unit = f"seed{seed}"
  ...     if not store.has(unit):  # resuming: skip what is already committed
  ...         store.write(unit, [{"seed": seed, "density": d, "acc": 0.9 + seed / 100 - d / 10}
  ...                            for d in (1.0, 0.5)])
  >>> store.done()
  ['seed0', 'seed1']
  >>> print(results.markdown_table(store.rows(), by=["density"], values=["acc"]))
  | density | acc | n |
  |---|---:|---:|
  | 1.0 | 0.805 ± 0.005 | 2 |
  | 0.5 | 0.855 ± 0.005 | 2 |
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

try:  # POSIX: serialise commits of concurrent processes; elsewhere one writer per run is assumed.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DamagedUnitWarning",
    "Row",
    "Scalar",
    "Store",
    "markdown_table",
    "run_dir",
    "summarize",
    "write_csv",
]

Scalar: TypeAlias = str | int | float | bool | None
"""A JSON scalar: the only kind of value a row may hold."""
Row: TypeAlias = dict[str, Scalar]
"""A flat dict of JSON scalars."""

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_NAME = 200  # file names stay well under the usual 255-byte limit
_ROW_FILE = re.compile(r"(\d+)-([A-Za-z0-9_.-]+)\.jsonl")
_TMP = ".tmp-"
_CONFIG = "config.json"
_LOCK = ".lock"
_COMMIT = "__commit__"


def _check_name(name: Any, *, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > _MAX_NAME:
        raise ValueError(
            f"{what} must be a non-empty string of at most {_MAX_NAME} characters from "
            f"[A-Za-z0-9_.-] (it names a file), got {name!r}."
        )
    return name


def _canonical(config: Mapping[str, Any]) -> str:
    """Canonical JSON of a config: sorted keys, no spaces, finite numbers only."""
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping of settings, got {type(config).__name__}.")
    try:
        return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"config must be JSON-serialisable (str keys; str, number, bool, None, list, dict "
            f"values; finite floats): {err}. Convert arrays and paths with float()/str()/list()."
        ) from err


def run_dir(base: str | os.PathLike[str], study: str, config: Mapping[str, Any]) -> Path:
    """The folder of a run, named from its config: ``base/<study>-<preset>-<hash>``.

    ``preset`` is ``config.get("preset", "custom")`` and ``hash`` the first 8 hex digits of the
    SHA-256 of the config's canonical JSON (sorted keys), so the same config always gives the same
    folder and any changed setting gives another. Tuples and lists hash alike, but ``1`` and ``1.0``
    do not (they are different JSON). The folder is not created; :class:`Store` does that.

    Args:
      base: the parent folder of all runs.
      study: the study's name, e.g. ``"deconstructing"``.
      config: the run's settings (JSON-serialisable).

    Returns:
      The run's folder.

    Example:
      >>> from jaxprune import results
      >>> results.run_dir("runs", "lt", {"preset": "quick", "lr": 0.1}).as_posix()
      'runs/lt-quick-...'
      >>> a = results.run_dir("runs", "lt", {"preset": "quick", "lr": 0.1})
      >>> a == results.run_dir("runs", "lt", {"lr": 0.1, "preset": "quick"})
      True
      >>> a == results.run_dir("runs", "lt", {"preset": "quick", "lr": 0.2})
      False
    """
    _check_name(study, what="study")
    canonical = _canonical(config)
    preset = _check_name(str(config.get("preset", "custom")), what="config['preset']")
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return Path(base) / f"{study}-{preset}-{digest}"


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: temp file in the same folder, fsync, replace."""
    tmp = path.parent / f"{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    a, b = _flatten(stored), _flatten(given)
    absent = "<absent>"
    return [
        f"{k}: stored {json.dumps(a[k]) if k in a else absent}, "
        f"given {json.dumps(b[k]) if k in b else absent}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k, absent) != b.get(k, absent)
    ]


def _json_scalar(value: Any) -> Scalar:
    """``value`` as a JSON scalar; numpy scalars are converted, anything else is refused."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    item = getattr(value, "item", None)  # numpy scalars (np.float32, np.int64, np.bool_, ...)
    if callable(item) and getattr(value, "shape", None) == () and hasattr(value, "dtype"):
        if type(value).__module__ == "numpy":
            converted = item()
            if converted is None or isinstance(converted, (str, bool, int, float)):
                return converted
    raise TypeError(type(value).__name__)


def _encode_rows(rows: Sequence[Mapping[str, Any]]) -> bytes:
    if isinstance(rows, (Mapping, str, bytes)) or not isinstance(rows, Sequence):
        raise ValueError(
            f"rows must be a sequence of dicts (a list of rows), got {type(rows).__name__}."
        )
    lines = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{i}] must be a dict of JSON scalars, got {type(row).__name__}.")
        clean: dict[str, Scalar] = {}
        for key, value in row.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"rows[{i}] has key {key!r}; row keys must be non-empty strings.")
            if key == _COMMIT:
                raise ValueError(f"rows[{i}] has key {key!r}, the name of the commit record.")
            try:
                clean[key] = _json_scalar(value)
            except TypeError:
                raise ValueError(
                    f"rows[{i}][{key!r}] must be a JSON scalar (str, int, float, bool or None), "
                    f"got {type(value).__name__} {value!r:.80}. Convert arrays with float(x) or "
                    f"int(x); store lists as several columns or a string."
                ) from None
        # NaN / ±inf are kept (a diverged run is a result) as Python's NaN / Infinity tokens.
        lines.append(json.dumps(clean, separators=(",", ":")) + "\n")
    return "".join(lines).encode()


class DamagedUnitWarning(UserWarning):
    """A committed unit failed its check and was moved to ``<run>/damaged/`` to be recomputed."""


_HELD: dict[str, list[int]] = {}  # resolved run folder → [lock file descriptor, Stores using it]


def _holder(lock: Path) -> str:
    try:
        return lock.read_text(errors="replace").strip() or "an unknown process"
    except OSError:
        return "an unknown process"


def _acquire(path: Path) -> None:
    """Take the run's exclusive lock for this process (shared by its Stores on the folder)."""
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = path / _LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel at any exit
        except OSError:
            os.close(fd)
            raise ValueError(
                f"run folder {path} is in use by another process ({_holder(lock)}). One process "
                "per run: two would redo each other's work and clear each other's state. Wait "
                "for it to finish (or stop it) and start again: the run resumes where it stopped."
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n".encode())
    _HELD[key] = [fd, 1]


def _release(path: Path) -> None:
    key = str(path.resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        os.close(held[0])


class Store:
    """The append-only, resumable store of one run's result rows (see the module docstring).

    Args:
      path: the run's folder (usually :func:`run_dir`); created if missing.
      config: the run's settings. Written to ``config.json`` on first use; a later ``Store`` on the
        same folder must be given the same config, or it raises ``ValueError`` naming the settings
        that differ, so a run folder never mixes configs.
      readonly: read a run without writing anything (e.g. to report a finished run, also from a
        read-only folder): no lock, no repair — a damaged unit is a ``ValueError`` naming its file.

    A writable Store takes the run's lock for as long as it is open (:meth:`close`, or a ``with``
    block; the kernel releases it if the process dies), so a second process on the same folder
    stops at once with a message naming the holder. Leftover temp files of a killed writer are
    removed, and every committed unit is checked against its commit record: a damaged one (a file
    truncated, edited or unreadable) is moved to ``<run>/damaged/`` — nothing is deleted — with a
    :class:`DamagedUnitWarning`, and is no longer :meth:`done`, so the run recomputes it.

    Example:
      >>> import tempfile
      >>> from jaxprune import results
      >>> store = results.Store(tempfile.mkdtemp(), {"lr": 0.1})
      >>> store.write("round0", [{"density": 1.0, "acc": 0.97}])
      >>> store.has("round0"), store.rows()
      (True, [{'density': 1.0, 'acc': 0.97}])
      >>> results.Store(store.path, {"lr": 0.2})
      Traceback (most recent call last):
      ...
      ValueError: ... lr: stored 0.1, given 0.2...
      >>> results.Store(store.path, {"lr": 0.1}, readonly=True).rows()
      [{'density': 1.0, 'acc': 0.97}]
      >>> store.close()
    """

    def __init__(
        self, path: str | os.PathLike[str], config: Mapping[str, Any], *, readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.config: dict[str, Any] = json.loads(_canonical(config))
        self.readonly = readonly
        self._rows_dir = self.path / "rows"
        self._locked = False
        if readonly:
            if not (self.path / _CONFIG).exists():
                raise ValueError(f"{self.path} holds no run ({_CONFIG} is missing).")
            self._check_config()
            damaged = self._damaged()
            if damaged:
                raise ValueError(
                    "damaged units in a run opened read-only: "
                    + "; ".join(why for _, why in damaged)
                    + ". Run the study again on this folder to recompute them."
                )
            return
        try:
            self._rows_dir.mkdir(parents=True, exist_ok=True)
            _acquire(self.path)
        except OSError as err:
            raise OSError(
                err.errno, f"cannot write the run folder {self.path}: {err.strerror}; choose "
                "another output folder (e.g. --out)"
            ) from None  # fmt: skip
        self._locked = True
        try:
            self._check_config()
            self._clean_temps()
            self._repair()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run's lock (idempotent; also on garbage collection and at exit)."""
        if self._locked:
            self._locked = False
            _release(self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, units={len(self.done())})"

    def _check_config(self) -> None:
        config_file = self.path / _CONFIG
        if not config_file.exists():
            if self._scan():
                raise ValueError(
                    f"{self.path} holds committed rows but no {_CONFIG}; refusing to guess its "
                    f"config. Use another folder (run_dir) or restore {_CONFIG}."
                )
            text = json.dumps(self.config, sort_keys=True, indent=1) + "\n"
            _atomic_write(config_file, text.encode())
            return
        try:
            stored = json.loads(config_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{config_file} is damaged ({err}); it cannot be told apart from another run's "
                "config. Move the run folder aside and start the run again."
            ) from None
        if stored != self.config:
            diff = _config_diff(stored, self.config)
            raise ValueError(
                f"config differs from the one this run was started with ({config_file}): "
                + "; ".join(diff)
                + ". A run folder never mixes configs: use run_dir(base, study, config) to get "
                "the new config's own folder."
            )

    def _clean_temps(self) -> None:
        for folder in (self.path, self._rows_dir):
            for entry in os.scandir(folder):
                if entry.name.startswith(_TMP) and entry.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _scan(self) -> list[tuple[int, str, str]]:
        """Committed units as ``(seq, unit, file name)`` in commit order; refuses duplicates."""
        # Plain strings, not Paths: has() rescans the folder on every call, so keep it cheap.
        found: list[tuple[int, str, str]] = []
        try:
            names = os.listdir(self._rows_dir)
        except FileNotFoundError:
            return []
        for name in names:
            match = _ROW_FILE.fullmatch(name)
            if match:
                found.append((int(match[1]), match[2], name))
        found.sort()
        seen: dict[str, str] = {}
        for _, unit, name in found:
            if unit in seen:
                raise ValueError(
                    f"unit {unit!r} is committed twice ({seen[unit]} and {name}) in "
                    f"{self._rows_dir}; files were copied in by hand. Remove one of them."
                )
            seen[unit] = name
        return found

    def _damaged(self) -> list[tuple[str, str]]:
        """``(file name, what is wrong)`` of every committed unit that fails its commit record."""
        out = []
        for _, unit, name in self._scan():
            try:
                _read_unit(self._rows_dir / name, unit)
            except ValueError as err:
                out.append((name, str(err)))
        return out

    def _repair(self) -> None:
        for name, why in self._damaged():
            self._move_aside(name, f"damaged unit: {why}")

    def _move_aside(self, name: str, what: str) -> None:
        aside = self.path / "damaged"
        aside.mkdir(exist_ok=True)
        os.replace(self._rows_dir / name, aside / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}")
        _fsync_dir(self._rows_dir)
        warnings.warn(
            f"{what}: moved to {aside} and recomputed when the run goes on.",
            DamagedUnitWarning,
            stacklevel=4,
        )

    def discard(self, unit: str, why: str) -> None:
        """Un-commit ``unit`` so that the run recomputes it: its file is moved to
        ``<run>/damaged/`` (nothing is deleted), with a :class:`DamagedUnitWarning` saying ``why``
        (e.g. the checkpoint it wrote is unreadable)."""
        if self.readonly:
            raise ValueError(f"Store({str(self.path)!r}) is read-only; open it to write.")
        for _, name, file in self._scan():
            if name == unit:
                self._move_aside(file, f"unit {unit!r} ({self._rows_dir / file}): {why}")
                return
        raise ValueError(f"unit {unit!r} is not committed in {self._rows_dir}.")

    def done(self) -> list[str]:
        """Names of the committed units, in commit order."""
        return [unit for _, unit, _ in self._scan()]

    def has(self, unit: str) -> bool:
        """Whether ``unit`` is committed (skip it when resuming)."""
        _check_name(unit, what="unit")
        return unit in self.done()

    def write(self, unit: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Commit the rows of ``unit`` atomically: all of them become visible at once, or none.

        The file starts with the unit's commit record — its name, its number of rows and the
        SHA-256 of the rows — so that a unit damaged later is detected, not silently short.

        Args:
          unit: the unit's name, from ``[A-Za-z0-9_.-]`` (e.g. ``"seed3-round2"``).
          rows: its rows, flat dicts of JSON scalars (numpy scalars are converted; NaN and ±inf
            are kept). An empty list commits the unit with no rows.

        Raises:
          ValueError: ``unit`` is already committed (a unit is never written twice), a name or
            row is invalid (the message names the row index and key), or the Store is read-only.
        """
        if self.readonly:
            raise ValueError(f"Store({str(self.path)!r}) is read-only; open it to write.")
        _check_name(unit, what="unit")
        body = _encode_rows(rows)
        record = {_COMMIT: {"unit": unit, "rows": len(rows), "sha256": _digest(body)}}
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode() + body
        found = self._scan()
        for _, name, file in found:
            if name == unit:
                raise ValueError(
                    f"unit {unit!r} is already committed ({self._rows_dir / file}); a unit is "
                    "never written twice. Check store.has(unit) before computing it."
                )
        seq = found[-1][0] + 1 if found else 1
        _atomic_write(self._rows_dir / f"{seq:06d}-{unit}.jsonl", data)

    def rows(self) -> list[Row]:
        """All committed rows, unit by unit in commit order."""
        out: list[Row] = []
        for _, unit, name in self._scan():
            out.extend(_read_unit(self._rows_dir / name, unit))
        return out

    def write_csv(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write all rows as CSV (atomically), default ``<run>/results.csv``; returns the path.

        Columns are the union of the rows' keys in first-seen order; a missing value or ``None``
        is an empty cell.
        """
        return write_csv(self.rows(), self.path / "results.csv" if path is None else path)


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _read_unit(file: Path, unit: str) -> list[Row]:
    """The rows of one committed unit file, checked against its commit record.

    Files written before commit records existed (no record line) are read as they are.
    """
    try:
        data = file.read_bytes()
        text = data.decode()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} cannot be read as UTF-8 text: {err}") from None
    lines = text.splitlines(keepends=True)
    if not lines:
        raise ValueError(f"{file} is empty: its commit record and rows are gone")
    record = None
    if lines[0].startswith('{"' + _COMMIT + '"'):
        try:
            record = json.loads(lines[0])[_COMMIT]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{file}:1 is a damaged commit record") from None
        lines = lines[1:]
    rows: list[Row] = []
    for n, line in enumerate(lines, start=2 if record else 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:  # a damaged or hand-edited file
            raise ValueError(f"{file}:{n} is not a JSON row: {err}") from None
    if record is not None:
        body = "".join(lines).encode()
        if record.get("unit") != unit:
            raise ValueError(f"{file} holds unit {record.get('unit')!r}, not {unit!r}")
        if record.get("rows") != len(rows):
            raise ValueError(
                f"{file} has {len(rows)} rows, its commit record says {record.get('rows')}"
            )
        if record.get("sha256") != _digest(body):
            raise ValueError(f"{file} does not match the checksum of its commit record")
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` to ``path`` as CSV, atomically; columns in first-seen order.

    Example:
      >>> import os, tempfile
      >>> from jaxprune import results
      >>> p = results.write_csv([{"a": 1}, {"a": 2, "b": None}], os.path.join(tempfile.mkdtemp(), "r.csv"))
      >>> p.read_text().splitlines()
      ['a,b', '1,', '2,']
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    if columns:
        writer.writeheader()
    writer.writerows(rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, buf.getvalue().encode())
    return out


def _columns_present(rows: Sequence[Mapping[str, Any]], names: Sequence[str], what: str) -> None:
    if isinstance(names, str):
        raise ValueError(f"{what} must be a list of column names, got the string {names!r}.")
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    missing = [c for c in names if c not in seen]
    if missing:
        raise ValueError(
            f"{what} names column(s) {missing} absent from every row; columns: {list(seen)}."
        )


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summarize(
    rows: Sequence[Mapping[str, Any]], by: Sequence[str], values: Sequence[str]
) -> list[dict[str, Any]]:
    r"""Group ``rows`` by the ``by`` columns and give mean, std and count of each value column.

    Groups come in order of first appearance. For each value column ``v`` over a group's rows,
    skipping ``None`` and NaN: ``v_mean``, ``v_std`` (population, :math:`\sqrt{\frac1n\sum(x-\bar
    x)^2}`, ddof=0) and ``v_n`` (how many values were used; mean and std are ``None`` when 0).
    ``n`` is the number of rows in the group. A row without a ``by`` column falls in the group of
    ``None``.

    Args:
      rows: result rows (e.g. ``Store.rows()``).
      by: the grouping columns, e.g. ``["criterion", "density"]``.
      values: the numeric columns to summarise, e.g. ``["test_acc"]``.

    Returns:
      One dict per group: the ``by`` columns, then ``v_mean, v_std, v_n`` per value, then ``n``.

    Example:
      >>> from jaxprune import results
      >>> rows = [{"d": 0.5, "acc": 0.75}, {"d": 0.5, "acc": 0.25}, {"d": 0.1, "acc": None}]
      >>> results.summarize(rows, by=["d"], values=["acc"])
      [{'d': 0.5, 'acc_mean': 0.5, 'acc_std': 0.25, 'acc_n': 2, 'n': 2},
       {'d': 0.1, 'acc_mean': None, 'acc_std': None, 'acc_n': 0, 'n': 1}]
    """
    _columns_present(rows, by, "by")
    _columns_present(rows, values, "values")
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(b) for b in by), []).append(row)
    out = []
    for key, members in groups.items():
        summary: dict[str, Any] = dict(zip(by, key, strict=True))
        for v in values:
            xs = []
            for row in members:
                x = row.get(v)
                if _is_missing(x):
                    continue
                if isinstance(x, str) or not isinstance(x, (int, float)):
                    raise ValueError(
                        f"values column {v!r} must hold numbers (or None/NaN), got {x!r} in a row "
                        f"of group {summary}."
                    )
                xs.append(float(x))
            mean = math.fsum(xs) / len(xs) if xs else None
            std = (
                math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
                if mean is not None
                else None
            )
            summary.update({f"{v}_mean": mean, f"{v}_std": std, f"{v}_n": len(xs)})
        summary["n"] = len(members)
        out.append(summary)
    return out


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    by: Sequence[str],
    values: Sequence[str],
    *,
    digits: int = 3,
    title: str | None = None,
) -> str:
    """A GitHub-markdown table of :func:`summarize`: one column per ``by``, per value, and ``n``.

    A value cell is ``mean ± std`` with ``digits`` decimals, just ``mean`` when one value was
    averaged, and ``—`` when none. ``title`` adds a ``### title`` heading above the table.

    Example:
      >>> from jaxprune import results
      >>> rows = [{"reset": "rewind", "acc": 0.98}, {"reset": "rewind", "acc": 0.96},
      ...         {"reset": "reinit", "acc": 0.9}]
      >>> print(results.markdown_table(rows, by=["reset"], values=["acc"], digits=2, title="LeNet"))
      ### LeNet
      <BLANKLINE>
      | reset | acc | n |
      |---|---:|---:|
      | rewind | 0.97 ± 0.01 | 2 |
      | reinit | 0.90 | 1 |
    """
    if not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be an int >= 0, got {digits!r}.")
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join([*map(_cell, by), *map(_cell, values), "n"]) + " |")
    lines.append("|" + "---|" * len(by) + "---:|" * (len(values) + 1))
    for group in summarize(rows, by, values):
        cells = [_cell(group[b]) for b in by]
        for v in values:
            mean, std, n = group[f"{v}_mean"], group[f"{v}_std"], group[f"{v}_n"]
            if n == 0:
                cells.append("—")
            elif n == 1:
                cells.append(f"{mean:.{digits}f}")
            else:
                cells.append(f"{mean:.{digits}f} ± {std:.{digits}f}")
        cells.append(str(group["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
