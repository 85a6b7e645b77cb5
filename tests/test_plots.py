"""Plots against numpy: the points drawn are the per-x means and stds of the seeds; files are images;
bad columns and empty filters say what is there."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib import image as mpimg
from matplotlib.figure import Figure

from jaxprune import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(seed: int = 0) -> list[dict]:
    """A small Deconstructing-style sweep: criterion × reset × seed × density, with a failed run."""
    rng = np.random.default_rng(seed)
    rows = []
    for reset in ["rewind", "reinit"]:
        for crit in ["large_final", "random"]:
            for s in range(3):
                for d in [1.0, 0.512, 0.107, 0.035]:
                    acc = float(0.98 - (1 - d) * rng.random() * (0.5 if crit == "random" else 0.1))
                    rows.append({"reset": reset, "crit": crit, "seed": s, "density": d, "acc": acc})
    rows.append({"reset": "rewind", "crit": "random", "seed": 9, "density": 0.5, "acc": None})
    rows.append({"reset": "rewind", "crit": "random", "seed": 9, "density": 0.2, "acc": math.nan})
    rng.shuffle(rows)
    return rows


def numpy_points(rows: list[dict], x: str, y: str, keys: list[str]) -> dict[str, tuple]:
    """The same numbers by brute force: filter, group by label and x, numpy mean / std."""
    out = {}
    labels = list(dict.fromkeys(" / ".join(str(r[k]) for k in keys) for r in rows))
    for label in labels:
        mine = [r for r in rows if " / ".join(str(r[k]) for k in keys) == label]
        mine = [r for r in mine if r[y] is not None and not math.isnan(r[y])]
        if not mine:
            continue
        xs = np.unique([r[x] for r in mine])
        ys = [np.array([r[y] for r in mine if r[x] == v]) for v in xs]
        out[label] = (xs, np.array([v.mean() for v in ys]), np.array([v.std(ddof=0) for v in ys]))
    return out


def assert_points_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for label in want:
        for a, b in zip(got[label], want[label], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """Every Figure the plotting functions save, to look at what was drawn."""
    saved: list[Figure] = []
    save = plots._save

    def keep(fig, path):
        saved.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return saved


# --- the numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_series_points_match_numpy(seed):
    rows = sweep(seed)
    got = plots.series_points(rows, x="density", y="acc", series="crit", where={"reset": "rewind"})
    want = numpy_points([r for r in rows if r["reset"] == "rewind"], "density", "acc", ["crit"])
    assert_points_equal(got, want)
    assert all(np.all(np.diff(xs) > 0) for xs, _, _ in got.values())  # ascending x


def test_series_of_several_columns_and_collection_filters():
    rows = sweep(1)
    where = {"crit": ["large_final"], "seed": {0, 2}}
    got = plots.series_points(rows, x="density", y="acc", series=["reset", "crit"], where=where)
    kept = [r for r in rows if r["crit"] == "large_final" and r["seed"] in (0, 2)]
    assert_points_equal(got, numpy_points(kept, "density", "acc", ["reset", "crit"]))
    assert set(got) == {"rewind / large_final", "reinit / large_final"}


def test_line_plot_draws_the_series_points(tmp_path, figures):
    rows = sweep(2)
    path = plots.line_plot(
        rows,
        x="density",
        y="acc",
        series="crit",
        where={"reset": "reinit"},
        path=tmp_path / "deep" / "dir" / "acc.png",
        styles={"random": {"linestyle": "--", "color": "k"}, "not_plotted": {"lw": 9}},
        title="Conv-2",
        log_x=True,
        invert_x=True,
        legend_title="criterion",
    )
    assert path == tmp_path / "deep" / "dir" / "acc.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert mpimg.imread(path).shape == (480, 720, 4)  # 6 x 4 inches at 120 dpi, RGBA
    (fig,) = figures
    (ax,) = fig.axes
    want = numpy_points([r for r in rows if r["reset"] == "reinit"], "density", "acc", ["crit"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == list(want)
    for label, (xs, means, _) in want.items():
        np.testing.assert_allclose(lines[label].get_xdata(), xs)
        np.testing.assert_allclose(lines[label].get_ydata(), means)
    bands = ax.collections
    assert len(bands) == len(want)
    for band, (_, means, stds) in zip(bands, want.values(), strict=True):
        ys = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose(
            [ys.min(), ys.max()], [(means - stds).min(), (means + stds).max()]
        )
    assert lines["random"].get_linestyle() == "--" and lines["random"].get_color() == "k"
    assert lines["large_final"].get_linestyle() == "-"
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    np.testing.assert_allclose(ax.get_xticks(), [0.035, 0.107, 0.512, 1.0])  # the densities used
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.035", "0.107", "0.512", "1"]
    assert ax.get_title() == "Conv-2" and ax.get_xlabel() == "density" and ax.get_ylabel() == "acc"
    assert ax.get_legend().get_title().get_text() == "criterion"


def test_line_plot_svg_by_suffix_and_default_axes(tmp_path, figures):
    path = plots.line_plot(
        sweep(), x="density", y="acc", series="crit", path=tmp_path / "a.svg", ylabel="accuracy"
    )
    assert path.read_text().lstrip().startswith("<?xml") and "<svg" in path.read_text()
    (ax,) = figures[0].axes
    assert ax.get_xscale() == "linear" and not ax.xaxis_inverted()
    assert ax.get_ylabel() == "accuracy" and ax.get_legend().get_title().get_text() == "crit"


def test_grid_plot_one_panel_per_value_with_consistent_colours(tmp_path, figures):
    rows = sweep(3)
    path = plots.grid_plot(
        rows,
        x="density",
        y="acc",
        series="crit",
        panel="reset",
        path=tmp_path / "grid.png",
        log_x=True,
        invert_x=True,
        title="Deconstructing",
    )
    image = mpimg.imread(path)
    assert path.read_bytes()[:8] == PNG_MAGIC and image.ndim == 3 and image.shape[2] == 4
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_visible()]
    panels = list(dict.fromkeys(r["reset"] for r in rows))
    assert [ax.get_title() for ax in axes] == [f"reset = {p}" for p in panels]
    colours = {}
    for ax, panel in zip(axes, panels, strict=True):
        want = numpy_points([r for r in rows if r["reset"] == panel], "density", "acc", ["crit"])
        for line in ax.get_lines():
            xs, means, _ = want[line.get_label()]
            np.testing.assert_allclose(line.get_xdata(), xs)
            np.testing.assert_allclose(line.get_ydata(), means)
            assert colours.setdefault(line.get_label(), line.get_color()) == line.get_color()
        assert ax.get_xscale() == "log" and ax.xaxis_inverted()
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert len(fig.legends) == 1 and fig.get_suptitle() == "Deconstructing"


def test_grid_plot_hides_unused_panels(tmp_path, figures):
    rows = [{"p": p, "s": "a", "x": x, "y": x * p} for p in range(4) for x in (1, 2)]
    plots.grid_plot(rows, x="x", y="y", series="s", panel="p", path=tmp_path / "g.png", ncols=3)
    axes = figures[0].axes
    assert len(axes) == 6 and sum(ax.get_visible() for ax in axes) == 4


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"x": "sparsity"},
            r"x='sparsity' is not a column of the rows; columns: \['reset', 'crit'",
        ),
        ({"y": "test_acc"}, r"y='test_acc' is not a column"),
        ({"series": ["crit", "criterion"]}, r"series='criterion' is not a column"),
        ({"series": []}, r"series must name at least one column"),
        (
            {"where": {"reset": "signed_constant"}},
            r"where\['reset'\] = 'signed_constant' matches no row; values of 'reset' there: \['re",
        ),
        (
            {"where": {"reset": "rewind", "seed": [7, 8]}},
            r"where\['seed'\] = \[7, 8\] matches no row \(after the filters before it\); values of 'seed' there: \[\d, \d, \d, 9\]",
        ),
        ({"where": {"lr": 0.1}}, r"where key='lr' is not a column"),
        ({"y": "crit"}, r"column 'crit' must hold numbers to be plotted, got '"),
        (
            {"where": {"seed": 9, "density": 0.5}},
            r"nothing to plot: every selected row has None or NaN",
        ),
    ],
)
def test_line_plot_errors_say_what_is_there(tmp_path, kwargs, match):
    args = {"x": "density", "y": "acc", "series": "crit", "path": tmp_path / "p.png", **kwargs}
    with pytest.raises(ValueError, match=match):
        plots.line_plot(sweep(), **args)
    assert not (tmp_path / "p.png").exists()


def test_log_x_needs_positive_x_and_grid_needs_its_panel_column(tmp_path):
    rows = [{"s": "a", "x": x, "y": 1.0, "p": 0} for x in (0.0, 1.0)]
    with pytest.raises(ValueError, match=r"log_x needs x > 0, but column 'x' has 0\.0"):
        plots.line_plot(rows, x="x", y="y", series="s", path=tmp_path / "p.png", log_x=True)
    with pytest.raises(ValueError, match=r"panel='reset' is not a column"):
        plots.grid_plot(rows, x="x", y="y", series="s", panel="reset", path=tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"ncols must be an int >= 1, got 0"):
        plots.grid_plot(rows, x="x", y="y", series="s", panel="p", path=tmp_path / "g.png", ncols=0)


def test_marked_points_flag_a_point_when_any_seed_is_marked(tmp_path, figures):
    rows = [dict(r, bad=r["density"] < 0.1 and r["seed"] == 0) for r in sweep(3) if r["seed"] != 9]
    want = numpy_points(rows, "density", "acc", ["crit"])
    got = plots.marked_points(rows, x="density", y="acc", series="crit", mark="bad")
    assert set(got) == set(want)
    for label, (xs, ys) in got.items():
        wx, wm, _ = want[label]
        np.testing.assert_allclose(xs, [0.035])
        np.testing.assert_allclose(ys, wm[wx == 0.035])
    plots.line_plot(rows, x="density", y="acc", series="crit", mark="bad", path=tmp_path / "m.png")
    (fig,) = figures
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert sum(len(c.get_xdata()) for c in crosses) == len(want)
    with pytest.raises(ValueError, match="nope"):
        plots.line_plot(
            rows, x="density", y="acc", series="crit", mark="nope", path=tmp_path / "n.png"
        )
