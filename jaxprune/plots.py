"""Plots: sparsity–accuracy curves and ablation grids from result rows (matplotlib, PNG/SVG).

Rows are the flat dicts of :mod:`jaxprune.results`. A *series* is one curve (e.g. one mask
criterion); the rows sharing a series and an ``x`` value (the seeds) are averaged, and the curve is
drawn with a shaded band of ± one (population) standard deviation. :func:`series_points` gives
the exact numbers drawn.

Lottery-ticket convention: put the density (fraction of weights remaining) on a log x axis,
inverted so that pruning proceeds left to right — ``log_x=True, invert_x=True``.

Figures are built on :class:`matplotlib.figure.Figure` without ``pyplot``, so plotting needs no
display, does not touch the global backend and is safe from threads.

Example:
  >>> import os, tempfile
  >>> from jaxprune import plots
  >>> rows = [{"criterion": c, "seed": s, "density": d, "acc": 0.9 - (1 - d) * w + s / 100}
  ...         for c, w in (("magnitude", 0.1), ("random", 0.5))
  ...         for s in range(2) for d in (1.0, 0.5, 0.2)]
  >>> plots.series_points(rows, x="density", y="acc", series="criterion")["random"][1]
  array([0.505, 0.655, 0.905])
  >>> path = plots.line_plot(rows, x="density", y="acc", series="criterion",
  ...                        path=os.path.join(tempfile.mkdtemp(), "acc.png"),
  ...                        log_x=True, invert_x=True, styles={"random": {"linestyle": "--"}})
  >>> path.read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
  True
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["grid_plot", "line_plot", "marked_points", "select_rows", "series_points"]

_DPI = 120
_MAX_TICKS = 12
_COLORS = [f"C{i}" for i in range(10)]
_LEGEND_INSIDE = 6  # more series than this: the legend goes beside the axes, not over the lines


def _palette(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per label: matplotlib's default cycle, or tab20 past its 10 colours."""
    if len(labels) <= len(_COLORS):
        return {label: _COLORS[i] for i, label in enumerate(labels)}
    cmap = matplotlib.colormaps["tab20"]
    return {label: cmap(i % 20) for i, label in enumerate(labels)}


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _require(rows: Sequence[Mapping[str, Any]], column: str, what: str) -> None:
    if not isinstance(column, str):
        raise ValueError(f"{what} must be a column name (str), got {column!r}.")
    if not any(column in row for row in rows):
        raise ValueError(
            f"{what}={column!r} is not a column of the rows; columns: {_columns(rows)}."
        )


def _as_names(series: str | Sequence[str]) -> list[str]:
    return [series] if isinstance(series, str) else list(series)


def _is_collection(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, (str, bytes, Mapping))


def select_rows(
    rows: Sequence[Mapping[str, Any]], where: Mapping[str, Any] | None = None
) -> list[Mapping[str, Any]]:
    """The rows matching every filter of ``where``: ``row[key] == value``, or ``in value``.

    A filter value that is a list, tuple or set means "any of these". Filters apply in order; if
    one leaves no row, the ``ValueError`` names it and lists the values that column does have.

    Example:
      >>> from jaxprune import plots
      >>> rows = [{"reset": "rewind", "s": 0}, {"reset": "reinit", "s": 0}, {"reset": "rewind", "s": 1}]
      >>> len(plots.select_rows(rows, {"reset": "rewind"})), len(plots.select_rows(rows, {"s": [0, 1]}))
      (2, 3)
      >>> plots.select_rows(rows, {"reset": "random"})
      Traceback (most recent call last):
      ...
      ValueError: where['reset'] = 'random' matches no row; values of 'reset' there: ['rewind', 'reinit'].
    """
    kept = list(rows)
    for key, want in (where or {}).items():
        _require(kept, key, "where key")
        if _is_collection(want):
            match = [r for r in kept if r.get(key) in want]
        else:
            match = [r for r in kept if r.get(key) == want]
        if not match:
            present = list(dict.fromkeys(r.get(key) for r in kept))
            earlier = " (after the filters before it)" if kept != list(rows) else ""
            raise ValueError(
                f"where[{key!r}] = {want!r} matches no row{earlier}; values of {key!r} there: "
                f"{present}."
            )
        kept = match
    return kept


def _label(row: Mapping[str, Any], names: Sequence[str]) -> str:
    return " / ".join(str(row.get(n)) for n in names)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(value: Any, column: str) -> float:
    if isinstance(value, str) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"column {column!r} must hold numbers to be plotted, got {value!r}.")
    return float(value)


def series_points(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    series: str | Sequence[str],
    where: Mapping[str, Any] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The numbers a line plot draws: per series, the sorted ``x`` values and mean and std of ``y``.

    Rows are filtered by ``where`` (see :func:`select_rows`) and grouped by the ``series``
    column(s) — the label is their values joined by ``" / "`` — in order of first appearance. Within
    a series, rows with equal ``x`` (the seeds) are averaged: mean and population std (ddof=0) of
    ``y``. Rows whose ``x`` or ``y`` is ``None`` or NaN are left out (e.g. a failed run).

    Args:
      rows: result rows.
      x: the x column (numbers; e.g. ``"density"``).
      y: the y column (numbers; e.g. ``"test_acc"``).
      series: the column, or columns, whose values tell the curves apart.
      where: filters on the rows, ``{column: value or collection of values}``.

    Returns:
      ``{label: (xs, means, stds)}``, three float64 arrays of equal length with ``xs`` ascending.

    Example:
      >>> from jaxprune import plots
      >>> rows = [{"c": "a", "d": 0.5, "acc": 0.7}, {"c": "a", "d": 0.5, "acc": 0.9},
      ...         {"c": "a", "d": 1.0, "acc": 1.0}]
      >>> plots.series_points(rows, x="d", y="acc", series="c")
      {'a': (array([0.5, 1. ]), array([0.8, 1. ]), array([0.1, 0. ]))}
    """
    names = _check_columns(rows, x=x, y=y, series=series)
    return _points(select_rows(rows, where), x=x, y=y, names=names)


def marked_points(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    series: str | Sequence[str],
    mark: str,
    where: Mapping[str, Any] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The points of :func:`series_points` where the boolean column ``mark`` is true in any row.

    Returns:
      ``{label: (xs, mean ys)}`` for the series that have at least one marked point.

    Example:
      >>> from jaxprune import plots
      >>> rows = [{"m": "a", "d": 0.1, "acc": 0.2, "bad": True},
      ...         {"m": "a", "d": 0.1, "acc": 0.4, "bad": False},
      ...         {"m": "a", "d": 1.0, "acc": 0.9, "bad": False}]
      >>> plots.marked_points(rows, x="d", y="acc", series="m", mark="bad")
      {'a': (array([0.1]), array([0.3]))}
    """
    names = _check_columns(rows, x=x, y=y, series=series)
    _require(rows, mark, "mark")
    selected = select_rows(rows, where)
    points = _points(selected, x=x, y=y, names=names)
    flagged: dict[str, set[float]] = {}
    for row in selected:
        if row.get(mark) and not _is_missing(row.get(x)):
            flagged.setdefault(_label(row, names), set()).add(_number(row[x], x))
    out = {}
    for label, xs_marked in flagged.items():
        if label not in points:
            continue
        xs, means, _ = points[label]
        keep = np.isin(xs, sorted(xs_marked))
        if keep.any():
            out[label] = (xs[keep], means[keep])
    return out


def _check_columns(
    rows: Sequence[Mapping[str, Any]], *, x: str, y: str, series: str | Sequence[str]
) -> list[str]:
    names = _as_names(series)
    if not names:
        raise ValueError("series must name at least one column, got [].")
    for column, what in [(x, "x"), (y, "y"), *((n, "series") for n in names)]:
        _require(rows, column, what)
    return names


def _points(
    rows: Sequence[Mapping[str, Any]], *, x: str, y: str, names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    groups: dict[str, dict[float, list[float]]] = {}
    for row in rows:
        xv, yv = row.get(x), row.get(y)
        if _is_missing(xv) or _is_missing(yv):
            continue
        per_x = groups.setdefault(_label(row, names), {})
        per_x.setdefault(_number(xv, x), []).append(_number(yv, y))
    out = {}
    for label, per_x in groups.items():
        xs = sorted(per_x)
        ys = [np.asarray(per_x[v]) for v in xs]
        out[label] = (
            np.asarray(xs, dtype=np.float64),
            np.asarray([v.mean() for v in ys], dtype=np.float64),
            np.asarray([v.std() for v in ys], dtype=np.float64),
        )
    return out


def _require_points(
    per_panel: Sequence[Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]], *, x: str, y: str
) -> None:
    if not any(per_panel):
        raise ValueError(
            f"nothing to plot: every selected row has None or NaN in x={x!r} or y={y!r}."
        )


def _draw(
    ax: Axes,
    points: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    colors: Mapping[str, str],
    styles: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    for label, (xs, means, stds) in points.items():
        kwargs: dict[str, Any] = {"color": colors[label], "marker": "o", "markersize": 3}
        kwargs.update((styles or {}).get(label, {}))
        (line,) = ax.plot(xs, means, label=label, **kwargs)
        ax.fill_between(xs, means - stds, means + stds, color=line.get_color(), alpha=0.2, lw=0)


def _format_axes(
    ax: Axes, *, x: str, xs: np.ndarray, log_x: bool, invert_x: bool, xlabel: str, ylabel: str
) -> None:
    if log_x:
        if xs.size and xs.min() <= 0:
            raise ValueError(f"log_x needs x > 0, but column {x!r} has {float(xs.min())}.")
        ax.set_xscale("log")
        ticks = np.unique(xs)
        if 0 < ticks.size <= _MAX_TICKS:  # label the densities used, not just the decades
            ax.set_xticks(ticks, labels=[f"{t:.3g}" for t in ticks])
            ax.minorticks_off()
    if invert_x and not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)  # format from the suffix: .png (default use), .svg, .pdf
    return out


def _all_x(points: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.concatenate([p[0] for p in points.values()]) if points else np.zeros(0)


def line_plot(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    series: str | Sequence[str],
    path: str | os.PathLike[str],
    where: Mapping[str, Any] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    log_x: bool = False,
    invert_x: bool = False,
    legend_title: str | None = None,
    mark: str | None = None,
) -> Path:
    """Plot mean ``y`` against ``x``, one line per series with a ±std band, and save it.

    The numbers drawn are :func:`series_points`. For the lottery-ticket convention pass the density
    as ``x`` with ``log_x=True, invert_x=True`` (pruning proceeds left to right).

    Args:
      rows: result rows.
      x, y, series, where: as in :func:`series_points`.
      path: the image file (``.png``; ``.svg``/``.pdf`` by suffix); parent folders are created.
      styles: ``{label: kwargs for Axes.plot}``, e.g. ``{"random": {"linestyle": "--"}}``;
        labels not plotted are ignored.
      title: the figure title.
      xlabel, ylabel: axis labels (default: the column names).
      log_x: log-scaled x axis (x must be > 0).
      invert_x: x decreasing to the right.
      legend_title: the legend's title (default: the series column names).
      mark: a boolean column; a point where it is true in any row (any seed) gets a black ×
        on top of its marker, e.g. ``mark="collapsed"`` for layer collapse.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      ValueError: ``x``, ``y``, ``mark`` or a series column is not a column of the rows, or a
        ``where`` filter matches no row (the message names it and lists the values present).
    """
    points = series_points(rows, x=x, y=y, series=series, where=where)
    _require_points([points], x=x, y=y)
    colors = _palette(list(points))
    wide = len(points) > _LEGEND_INSIDE
    fig = Figure(figsize=(8.5 if wide else 6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, points, colors, styles)
    if mark is not None:
        _require(rows, mark, "mark")
        marked = marked_points(rows, x=x, y=y, series=series, mark=mark, where=where)
        for i, (xs, ys) in enumerate(marked.values()):
            ax.plot(xs, ys, linestyle="none", marker="x", color="black", markersize=8,
                    label=f"{mark}" if i == 0 else None)  # fmt: skip
    _format_axes(
        ax,
        log_x=log_x,
        invert_x=invert_x,
        xlabel=xlabel or x,
        ylabel=ylabel or y,
        x=x,
        xs=_all_x(points),
    )
    if points:
        where_legend: dict[str, Any] = (
            {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if wide else {}
        )
        ax.legend(
            title=legend_title or " / ".join(_as_names(series)), fontsize="small", **where_legend
        )
    if title:
        ax.set_title(title)
    return _save(fig, path)


def grid_plot(
    rows: Sequence[Mapping[str, Any]],
    *,
    x: str,
    y: str,
    series: str | Sequence[str],
    panel: str,
    path: str | os.PathLike[str],
    where: Mapping[str, Any] | None = None,
    styles: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    xlabel: str | None = None,
    ylabel: str | None = None,
    log_x: bool = False,
    invert_x: bool = False,
    legend_title: str | None = None,
    ncols: int | None = None,
) -> Path:
    """One :func:`line_plot` panel per value of the ``panel`` column, on shared axes.

    E.g. "accuracy vs density, one panel per reset": ``panel="reset", series="criterion"``. Panels
    come in order of first appearance, titled ``panel = value``; a series keeps one colour in
    every panel, and one legend serves the whole figure.

    Args:
      rows, x, y, series, path, where, styles, title, xlabel, ylabel, log_x, invert_x,
        legend_title: as in :func:`line_plot`.
      panel: the column whose values get one subplot each.
      ncols: panels per row (default: up to 3).

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Example:
      >>> import os, tempfile
      >>> from jaxprune import plots
      >>> rows = [{"reset": r, "crit": c, "density": d, "acc": 0.9 * d ** k}
      ...         for r, k in (("rewind", 0.1), ("reinit", 0.3)) for c in ("large_final", "random")
      ...         for d in (1.0, 0.3, 0.1)]
      >>> plots.grid_plot(rows, x="density", y="acc", series="crit", panel="reset",
      ...                 path=os.path.join(tempfile.mkdtemp(), "grid.png"),
      ...                 log_x=True, invert_x=True).suffix
      '.png'
    """
    names = _check_columns(rows, x=x, y=y, series=series)
    _require(rows, panel, "panel")
    kept = select_rows(rows, where)
    values = list(dict.fromkeys(r.get(panel) for r in kept))
    per_panel = [
        _points([r for r in kept if r.get(panel) == v], x=x, y=y, names=names) for v in values
    ]
    _require_points(per_panel, x=x, y=y)
    labels = list(dict.fromkeys(label for points in per_panel for label in points))
    colors = _palette(list(labels))
    if ncols is not None and (not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}.")
    cols = min(ncols or 3, len(values))
    nrows = -(-len(values) // cols)
    fig = Figure(figsize=(4.0 * cols + 1.5, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    xs = np.concatenate([_all_x(points) for points in per_panel])
    for ax, value, points in zip(axes, values, per_panel, strict=False):
        _draw(ax, points, colors, styles)
        _format_axes(
            ax, log_x=log_x, invert_x=invert_x, xlabel=xlabel or x, ylabel=ylabel or y, x=x, xs=xs
        )
        ax.set_title(f"{panel} = {value}")
        ax.label_outer()
    for ax in axes[len(values) :]:
        ax.set_visible(False)
    handles: dict[str, Artist] = {}
    for ax in axes[: len(values)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside right upper",
            title=legend_title or " / ".join(_as_names(series)),
            fontsize="small",
        )
    if title:
        fig.suptitle(title)
    return _save(fig, path)
