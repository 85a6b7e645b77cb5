"""Results store against its promises: round trip, no duplicates, one config per run, all-or-nothing
commits under crashes and SIGKILL, and summaries / tables / CSV against numbers computed here."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxprune import results

CONFIG = {"preset": "quick", "lr": 0.1, "seeds": [0, 1], "model": {"name": "lenet", "width": 300}}
RESULTS_PY = Path(results.__file__).resolve()


def unit_rows(unit: str, n: int = 3) -> list[dict]:
    return [{"unit": unit, "i": i, "acc": i / 10, "ok": i % 2 == 0, "note": None} for i in range(n)]


def row_files(store: results.Store) -> list[Path]:
    return sorted(p for p in (store.path / "rows").iterdir() if not p.name.startswith("."))


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".tmp-*"))


# --- run_dir ------------------------------------------------------------------------------------


def test_run_dir_is_a_function_of_the_config(tmp_path):
    a = results.run_dir(tmp_path, "lt", CONFIG)
    assert a.parent == tmp_path
    assert re.fullmatch(r"lt-quick-[0-9a-f]{8}", a.name)
    reordered = {
        "model": {"width": 300, "name": "lenet"},
        "seeds": (0, 1),
        "lr": 0.1,
        "preset": "quick",
    }
    assert results.run_dir(tmp_path, "lt", reordered) == a
    for changed in ({"lr": 0.2}, {"seeds": [0, 1, 2]}, {"model": {"name": "lenet", "width": 100}}):
        assert results.run_dir(tmp_path, "lt", {**CONFIG, **changed}) != a
    assert results.run_dir(tmp_path, "lt", {"lr": 0.1}).name.startswith("lt-custom-")
    assert not a.exists()  # naming a run does not create it


@pytest.mark.parametrize(
    ("study", "config", "match"),
    [
        ("a/b", {}, "study must be"),
        ("lt", {"preset": "../x"}, r"config\['preset'\] must be"),
        ("lt", {"w": np.zeros(2)}, "config must be JSON-serialisable"),
        ("lt", {"lr": float("nan")}, "finite floats"),
        ("lt", [("lr", 1)], "config must be a mapping"),
    ],
)
def test_run_dir_rejects_bad_names_and_configs(tmp_path, study, config, match):
    with pytest.raises(ValueError, match=match):
        results.run_dir(tmp_path, study, config)


# --- round trip, order, duplicates -----------------------------------------------------------------


def test_round_trip_in_commit_order(tmp_path):
    store = results.Store(tmp_path / "run", CONFIG)
    assert store.done() == [] and store.rows() == []
    for unit in ["seed1", "seed0", "b.2", "a-1"]:  # deliberately not sorted
        store.write(unit, unit_rows(unit))
    store.write("empty", [])
    expected_units = ["seed1", "seed0", "b.2", "a-1", "empty"]
    assert store.done() == expected_units
    assert store.has("seed0") and not store.has("seed2")
    expected = [r for u in expected_units[:-1] for r in unit_rows(u)]
    assert store.rows() == expected
    # A fresh Store (a resumed process) sees the same.
    again = results.Store(tmp_path / "run", CONFIG)
    assert again.done() == expected_units and again.rows() == expected
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == json.loads(
        json.dumps(CONFIG)
    )


def test_values_keep_their_json_types_and_numpy_scalars_are_converted(tmp_path):
    store = results.Store(tmp_path, {})
    row = {
        "s": "x|y",
        "i": 3,
        "f": 0.1,
        "t": True,
        "n": None,
        "inf": math.inf,
        "np_f32": np.float32(0.5),
        "np_i64": np.int64(7),
        "np_b": np.bool_(False),
    }
    store.write("u", [row])
    (got,) = results.Store(tmp_path, {}).rows()
    assert got == {**row, "np_f32": 0.5, "np_i64": 7, "np_b": False}
    assert [type(got[k]) for k in ("i", "t", "np_i64", "np_b")] == [int, bool, int, bool]
    store.write("nan", [{"acc": math.nan}])  # a diverged run is a result too
    assert math.isnan(store.rows()[-1]["acc"])


def test_a_committed_unit_is_never_written_again(tmp_path):
    store = results.Store(tmp_path, CONFIG)
    store.write("seed0", unit_rows("seed0"))
    with pytest.raises(ValueError, match=r"unit 'seed0' is already committed .*store\.has"):
        store.write("seed0", unit_rows("seed0", 5))
    with pytest.raises(ValueError, match="already committed"):  # nor from another Store
        results.Store(tmp_path, CONFIG).write("seed0", [])
    assert store.rows() == unit_rows("seed0")
    assert len(row_files(store)) == 1


@pytest.mark.parametrize("unit", ["", "a/b", "a b", "ü", "x" * 201, 3, None])
def test_unit_names_are_validated(tmp_path, unit):
    store = results.Store(tmp_path, {})
    with pytest.raises(ValueError, match=r"unit must be .*\[A-Za-z0-9_.-\]"):
        store.write(unit, [])
    with pytest.raises(ValueError, match="unit must be"):
        store.has(unit)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"a": 1}, {"a": [1, 2]}], r"rows\[1\]\['a'\] must be a JSON scalar .*got list"),
        ([{"a": {"b": 1}}], r"rows\[0\]\['a'\] must be a JSON scalar .*got dict"),
        ([{"a": 1}, {"b": 2}, {"w": np.zeros(3)}], r"rows\[2\]\['w'\] .*got ndarray"),
        ([{1: 2}], r"rows\[0\] has key 1"),
        ([{"a": 1}, ["a", 1]], r"rows\[1\] must be a dict"),
        ({"a": 1}, "rows must be a sequence of dicts"),
    ],
)
def test_bad_rows_are_refused_naming_index_and_key(tmp_path, rows, match):
    store = results.Store(tmp_path, {})
    with pytest.raises(ValueError, match=match):
        store.write("u", rows)
    assert store.done() == []  # nothing half-committed


# --- one config per run ---------------------------------------------------------------------------


def test_a_run_folder_never_mixes_configs(tmp_path):
    results.Store(tmp_path, CONFIG).write("seed0", unit_rows("seed0"))
    results.Store(tmp_path, dict(reversed(CONFIG.items())))  # same settings, other order: fine
    other = {**CONFIG, "lr": 0.2, "model": {"name": "lenet", "width": 100}, "epochs": 3}
    del other["seeds"]
    with pytest.raises(ValueError) as err:
        results.Store(tmp_path, other)
    msg = str(err.value)
    assert "config differs" in msg and str(tmp_path / "config.json") in msg
    assert "lr: stored 0.1, given 0.2" in msg
    assert "model.width: stored 300, given 100" in msg
    assert "epochs: stored <absent>, given 3" in msg
    assert "seeds: stored [0, 1], given <absent>" in msg
    assert "preset" not in msg.split(":", 1)[1].split(". A run")[0]  # unchanged keys not listed
    assert results.Store(tmp_path, CONFIG).rows() == unit_rows("seed0")  # untouched


def test_rows_without_a_config_are_not_adopted(tmp_path):
    results.Store(tmp_path, CONFIG).write("seed0", [])
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"holds committed rows but no config\.json"):
        results.Store(tmp_path, CONFIG)


# --- crashes --------------------------------------------------------------------------------------


def test_leftover_temp_files_are_ignored_then_cleaned(tmp_path):
    store = results.Store(tmp_path, CONFIG)
    store.write("seed0", unit_rows("seed0"))
    # What a writer killed before its os.replace leaves behind: a half-written temp file.
    whole = "".join(json.dumps(r) + "\n" for r in unit_rows("seed1"))
    half = tmp_path / "rows" / ".tmp-999-deadbeef-000002-seed1.jsonl"
    half.write_text(whole[: len(whole) // 2])
    (tmp_path / ".tmp-999-cafe-results.csv").write_text("unit,i\nseed")
    assert store.done() == ["seed0"] and not store.has("seed1")
    assert store.rows() == unit_rows("seed0")
    fresh = results.Store(tmp_path, CONFIG)
    assert temp_files(tmp_path) == []
    fresh.write("seed1", unit_rows("seed1"))  # the interrupted unit is redone, once
    assert fresh.rows() == unit_rows("seed0") + unit_rows("seed1")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = results.Store(tmp_path, CONFIG)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write("seed0", unit_rows("seed0"))
    monkeypatch.undo()
    assert store.done() == [] and temp_files(tmp_path) == []
    store.write("seed0", unit_rows("seed0"))
    assert store.rows() == unit_rows("seed0")


def test_hand_copied_duplicates_and_corrupt_files_are_loud(tmp_path):
    store = results.Store(tmp_path, CONFIG)
    store.write("seed0", unit_rows("seed0"))
    (first,) = row_files(store)
    copy = first.with_name("000007-seed0.jsonl")
    copy.write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match=r"unit 'seed0' is committed twice \(000001-seed0"):
        store.rows()
    copy.unlink()
    first.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"000001-seed0\.jsonl:2 is not a JSON row"):
        store.rows()


WRITER = textwrap.dedent(
    """
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("jaxprune_results", sys.argv[1])
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)  # the stdlib-only module alone: no jax start-up
    store = results.Store(sys.argv[2], {"study": "kill"})
    n_units, n_rows = int(sys.argv[3]), int(sys.argv[4])
    for u in range(n_units):
        unit = f"u{u:04d}"
        if not store.has(unit):
            rows = [{"unit": unit, "i": i, "pad": "x" * 200} for i in range(n_rows)]
            try:
                store.write(unit, rows)
            except ValueError:  # another writer committed it first
                pass
    """
)


def expected_rows(unit: str, n_rows: int) -> list[dict]:
    return [{"unit": unit, "i": i, "pad": "x" * 200} for i in range(n_rows)]


def spawn(run: Path, n_units: int, n_rows: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(RESULTS_PY), str(run), str(n_units), str(n_rows)]
    )


def committed(run: Path) -> int:
    try:
        return sum(1 for name in os.listdir(run / "rows") if not name.startswith("."))
    except FileNotFoundError:
        return 0


def test_sigkill_leaves_whole_units_and_the_sweep_resumes_exactly(tmp_path):
    n_units, n_rows = 150, 50
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    kills = 0
    for round_ in range(6):
        target = committed(run) + int(rng.integers(1, 20))
        proc = spawn(run, n_units, n_rows)
        deadline = time.monotonic() + 20
        while committed(run) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # mid-sweep, at whatever instant this lands
            kills += 1
        assert proc.wait(timeout=20) in (0, -signal.SIGKILL)
        # Check the raw files before a Store touches them: whole units, every line valid JSON.
        files = sorted(p for p in (run / "rows").iterdir() if not p.name.startswith("."))
        for f in files:
            record, *lines = f.read_text().splitlines()
            assert len(lines) == n_rows, f"round {round_}: {f.name} has {len(lines)} rows"
            unit = f.name.split("-", 1)[1].removesuffix(".jsonl")
            assert json.loads(record)["__commit__"]["rows"] == n_rows
            assert [json.loads(line) for line in lines] == expected_rows(unit, n_rows)
        with results.Store(run, {"study": "kill"}) as store:  # released for the next writer
            assert temp_files(run) == []
            done = store.done()
        assert done == [f"u{u:04d}" for u in range(len(done))]  # a gap-free prefix, in order
        assert len(done) == len(files)
    assert kills >= 1, "the writer always finished before the kill; nothing was tested"
    assert 0 < len(done) < n_units
    # Resume in this process: exactly one copy of every unit, none lost.
    store = results.Store(run, {"study": "kill"})
    for u in range(n_units):
        unit = f"u{u:04d}"
        if not store.has(unit):
            store.write(unit, expected_rows(unit, n_rows))
    assert store.done() == [f"u{u:04d}" for u in range(n_units)]
    assert store.rows() == [r for u in range(n_units) for r in expected_rows(f"u{u:04d}", n_rows)]


def test_a_second_process_stops_at_once_naming_the_first(tmp_path):
    run = tmp_path / "run"
    with results.Store(run, {"study": "kill"}) as store:
        store.write("u0000", expected_rows("u0000", 2))
        proc = subprocess.run(
            [sys.executable, "-c", WRITER, str(RESULTS_PY), str(run), "60", "20"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 1
        assert f"run folder {run} is in use by another process (pid {os.getpid()} on" in proc.stderr
        assert store.done() == ["u0000"]  # the second process wrote nothing
    # Released: the next process runs (and resumes: u0000 is not written again).
    assert spawn(run, 60, 20).wait(timeout=60) == 0
    store = results.Store(run, {"study": "kill"})
    assert store.done() == [f"u{u:04d}" for u in range(60)]
    assert store.rows()[:2] == expected_rows("u0000", 2) and len(store.rows()) == 2 + 59 * 20


def _damage(file: Path, how: str) -> None:
    if how == "empty":
        file.write_bytes(b"")
    elif how == "last line dropped":
        file.write_text("".join(file.read_text().splitlines(keepends=True)[:-1]))
    elif how == "garbage bytes":
        file.write_bytes(file.read_bytes()[:40] + b"\xff\xfe\x00garbage")
    else:  # a value edited by hand
        file.write_text(file.read_text().replace('"acc":0.5', '"acc":0.9'))


@pytest.mark.parametrize("how", ["empty", "last line dropped", "garbage bytes", "edited"])
def test_a_damaged_unit_is_found_moved_aside_and_recomputed(tmp_path, how):
    store = results.Store(tmp_path, CONFIG)
    for unit in ("seed0", "seed1"):
        store.write(unit, [{"seed": unit, "acc": 0.5}, {"seed": unit, "acc": 0.25}])
    store.close()
    bad = row_files(store)[0]
    _damage(bad, how)
    with pytest.raises(ValueError, match=rf"damaged units in a run opened read-only: .*{bad.name}"):
        results.Store(tmp_path, CONFIG, readonly=True)
    with pytest.warns(results.DamagedUnitWarning, match=rf"damaged unit: .*{bad.name}.*moved to"):
        again = results.Store(tmp_path, CONFIG)
    assert again.done() == ["seed1"]  # seed0 is to be recomputed
    (kept,) = (tmp_path / "damaged").iterdir()  # nothing already written is lost
    assert kept.name.endswith(bad.name)
    again.write("seed0", [{"seed": "seed0", "acc": 0.5}, {"seed": "seed0", "acc": 0.25}])
    assert sorted(r["seed"] for r in again.rows()) == ["seed0", "seed0", "seed1", "seed1"]


def test_a_finished_run_is_read_without_writing_anything(tmp_path):
    store = results.Store(tmp_path / "run", CONFIG)
    store.write("seed0", unit_rows("seed0"))
    store.close()
    (tmp_path / "run" / ".lock").unlink()

    def snapshot() -> dict:
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "run").rglob("*")}

    before = snapshot()
    assert results.Store(tmp_path / "run", CONFIG, readonly=True).rows() == unit_rows("seed0")
    assert snapshot() == before  # no lock file, no temp clean-up, no config write: a read-only
    # folder (a finished run on a shared disk) can be re-reported.
    with pytest.raises(ValueError, match="is read-only"):
        results.Store(tmp_path / "run", CONFIG, readonly=True).write("seed1", [])


def test_an_unwritable_folder_is_named():
    with pytest.raises(OSError, match=r"cannot write the run folder /proc/jaxprune-run: .*--out"):
        results.Store("/proc/jaxprune-run", CONFIG)


def test_a_damaged_config_is_named(tmp_path):
    results.Store(tmp_path, CONFIG).close()
    (tmp_path / "config.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(ValueError, match=r"config.json is damaged"):
        results.Store(tmp_path, CONFIG)
    with pytest.raises(ValueError, match="holds no run"):
        results.Store(tmp_path / "elsewhere", CONFIG, readonly=True)


# --- summaries, tables, CSV -----------------------------------------------------------------------


def random_rows(seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for crit in ["large_final", "random", "magnitude_increase"]:
        for density in [1.0, 0.5, 0.2]:
            for s in range(int(rng.integers(1, 5))):
                acc = float(rng.random())
                loss = None if rng.random() < 0.2 else float(rng.random() * 3)
                if rng.random() < 0.1:
                    acc = math.nan
                rows.append({"crit": crit, "density": density, "seed": s, "acc": acc, "loss": loss})
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_summarize_matches_numpy(seed):
    rows = random_rows(seed)
    out = results.summarize(rows, by=["crit", "density"], values=["acc", "loss"])
    keys = list(dict.fromkeys((r["crit"], r["density"]) for r in rows))  # first appearance
    assert [(g["crit"], g["density"]) for g in out] == keys
    for g in out:
        members = [r for r in rows if (r["crit"], r["density"]) == (g["crit"], g["density"])]
        assert g["n"] == len(members)
        assert list(g) == [
            "crit",
            "density",
            "acc_mean",
            "acc_std",
            "acc_n",
            "loss_mean",
            "loss_std",
            "loss_n",
            "n",
        ]
        for v in ["acc", "loss"]:
            xs = np.array([r[v] for r in members if r[v] is not None], dtype=np.float64)
            xs = xs[~np.isnan(xs)]
            assert g[f"{v}_n"] == xs.size
            if xs.size:
                assert g[f"{v}_mean"] == pytest.approx(np.mean(xs), rel=1e-12)
                assert g[f"{v}_std"] == pytest.approx(np.std(xs, ddof=0), rel=1e-9, abs=1e-15)
            else:
                assert g[f"{v}_mean"] is None and g[f"{v}_std"] is None


def test_summarize_refuses_missing_columns_and_text_values():
    rows = [{"crit": "a", "acc": 0.5}, {"crit": "b", "acc": "high"}]
    with pytest.raises(ValueError, match=r"by names column\(s\) \['reset'\] absent from every row"):
        results.summarize(rows, by=["reset"], values=["acc"])
    with pytest.raises(ValueError, match=r"values names column\(s\) \['loss'\]"):
        results.summarize(rows, by=["crit"], values=["loss"])
    with pytest.raises(ValueError, match=r"values column 'acc' must hold numbers.*'high'"):
        results.summarize(rows, by=["crit"], values=["acc"])
    with pytest.raises(ValueError, match="by must be a list of column names"):
        results.summarize(rows, by="crit", values=["acc"])


def test_markdown_table():
    rows = [
        {"reset": "rewind", "density": 0.2, "acc": 0.9, "loss": 0.30},
        {"reset": "rewind", "density": 0.2, "acc": 0.8, "loss": None},
        {"reset": "reinit", "density": 0.2, "acc": 0.5, "loss": None},
        {"reset": "a|b", "density": 0.2, "acc": 0.25, "loss": 1.0},
    ]
    table = results.markdown_table(rows, ["reset", "density"], ["acc", "loss"], digits=2, title="T")
    assert table.splitlines() == [
        "### T",
        "",
        "| reset | density | acc | loss | n |",
        "|---|---|---:|---:|---:|",
        "| rewind | 0.2 | 0.85 ± 0.05 | 0.30 | 2 |",
        "| reinit | 0.2 | 0.50 | — | 1 |",
        "| a\\|b | 0.2 | 0.25 | 1.00 | 1 |",
    ]
    assert results.markdown_table(rows[:2], ["reset"], ["acc"]).splitlines()[2] == (
        "| rewind | 0.850 ± 0.050 | 2 |"
    )
    with pytest.raises(ValueError, match="digits must be an int >= 0"):
        results.markdown_table(rows, ["reset"], ["acc"], digits=-1)


def test_csv_has_the_union_of_columns_in_first_seen_order(tmp_path):
    store = results.Store(tmp_path / "run", CONFIG)
    store.write("a", [{"x": 1, "acc": 0.5}, {"x": 2, "note": "hi, there"}])
    store.write("b", [{"acc": 0.25, "extra": True, "x": None}])
    path = store.write_csv()
    assert path == tmp_path / "run" / "results.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["x", "acc", "note", "extra"]
        got = list(reader)
    assert got == [
        {"x": "1", "acc": "0.5", "note": "", "extra": ""},
        {"x": "2", "acc": "", "note": "hi, there", "extra": ""},
        {"x": "", "acc": "0.25", "note": "", "extra": "True"},
    ]
    other = store.write_csv(tmp_path / "out" / "deep" / "r.csv")  # parents created
    assert other.read_text() == path.read_text()
    assert temp_files(tmp_path) == []
    empty = results.Store(tmp_path / "empty", {}).write_csv()
    assert empty.read_text() == ""
