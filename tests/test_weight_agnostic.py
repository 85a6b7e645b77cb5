"""The weight-agnostic study end to end on tiny settings: its rows against an uninterrupted
:func:`jaxprune.wann.search`, resuming after an interruption (and after a kill) with the same
rows, settings refused before anything runs, and the report computed from the rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import weight_agnostic as study
from jaxprune import data, results, wann

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--population", "6", "--generations", "5", "--chunk", "2", "--hidden", "4", "--links", "12",
    "--elite", "2", "--tournament", "2", "--search-batch", "300", "--iterations", "20",
    "--eval-every", "10", "--batch-size", "32", "--random-draws", "2", "--no-progress",
]  # fmt: skip


def _config(folder: Path) -> study.Config:
    raw = json.loads((folder / "config.json").read_text())
    return study.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _rows(folder: Path) -> list[dict]:
    return results.Store(folder, _config(folder).to_json(), readonly=True).rows()


def _run(out: Path, *extra: str) -> Path:
    assert study.main([*TINY, *extra, "--out", str(out)]) == 0
    (folder,) = out.iterdir()
    return folder


def _generation_rows(rows: list[dict]) -> list[dict]:
    return sorted((r for r in rows if r["part"] == "generation"), key=lambda r: r["generation"])


# ~20-30 s on 2 shared cores: the search's and the trained column's programs compile.
@pytest.mark.slow
def test_tiny_run_matches_one_uninterrupted_search_and_resumes(tmp_path, capsys, monkeypatch):
    folder = _run(tmp_path / "a")
    printed = capsys.readouterr().out
    assert "| seed | connections | hidden nodes | random shared weight |" in printed
    cfg = _config(folder)
    rows = _rows(folder)
    # The study's chunks (generations 0-2, 2-4, 4-5, each resumed from the saved state) give
    # exactly the history of one uninterrupted search with the same settings.
    ds = data.load("digits", seed=0)
    splits = study.inputs(cfg, ds)
    x, y = splits["train"]
    ref = wann.search(
        x, y, population=6, generations=5, hidden=4, links=12, elite=2, tournament=2,
        batch_size=300, classes=10, seed=0, probs=cfg.probs, conn_prob=cfg.conn_prob,
        progress=False,
    )  # fmt: skip
    gens = _generation_rows(rows)
    assert [r["generation"] for r in gens] == [1, 2, 3, 4, 5]
    for col, key in study.GENERATION_COLUMNS.items():
        assert [r[col] for r in gens] == [float(v) for v in ref.history[key]], col
    (final,) = [r for r in rows if r["part"] == "final"]
    assert final["connections"] == int(ref.best.conn.sum()) == len(final["edges"].split(";"))
    assert final["edges"] == study.describe(ref.best, 64, 10)["edges"]
    expected = wann.final_columns(
        ref.best, splits, seed=0, random_draws=2, iterations=20, batch_size=32,
        learning_rate=cfg.lr, eval_every=10,
    )  # fmt: skip
    for col, key in (("random_acc", "random"), ("shared_acc", "shared"),
                     ("ensemble_acc", "ensemble"), ("trained_acc", "trained")):  # fmt: skip
        assert final[col] == pytest.approx(expected[key], abs=1e-6), col
    # The random-shared-weight column by a node-by-node numpy forward pass: the draws are
    # default_rng(seed).uniform(-2, 2, --random-draws).
    # float32 (JAX) and float64 (here) may order two logits within ~1e-4 differently: each such
    # example may flip, so the margin allows one test example per near-tie (exact ties, as
    # between unconnected outputs at exactly 0, take the first index in both).
    xt, yt = splits["test"]
    drawn = np.random.default_rng(0).uniform(-2.0, 2.0, 2)
    acc, close = [], 0
    for w in drawn:
        logits = _np_logits(w * ref.best.conn, ref.best.act, xt, 10)
        top2 = np.sort(logits, axis=1)[:, -2:]
        close += int(((top2[:, 1] - top2[:, 0] > 0) & (top2[:, 1] - top2[:, 0] < 1e-4)).sum())
        acc.append((logits.argmax(1) == yt).mean())
    margin = close / len(yt) / len(drawn) + 1e-6
    assert final["random_shared_acc"] == pytest.approx(np.mean(acc), abs=margin)
    for name in ("summary.md", "results.csv", "accuracy.png", "connections.png",
                 "network_seed0.png"):  # fmt: skip
        assert (folder / name).stat().st_size > 0, name
    assert sorted(p.name for p in (folder / "state").iterdir()) == [
        "seed0_gen0002.json", "seed0_gen0004.json", "seed0_gen0005.json",
    ]  # fmt: skip

    # A finished run searches nothing when started again.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished run searched again")

    monkeypatch.setattr(study.wann, "search", refuse)
    monkeypatch.setattr(study.wann, "final_columns", refuse)
    assert study.main([*TINY, "--out", str(tmp_path / "a")]) == 0
    assert _rows(folder) == rows


NP_ACT = {
    "linear": lambda z: z, "step": lambda z: (z > 0) * 1.0, "sin": lambda z: np.sin(np.pi * z),
    "gaussian": lambda z: np.exp(-z * z / 2), "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "inverse": lambda z: -z, "abs": np.abs,
    "relu": lambda z: np.maximum(z, 0), "cos": lambda z: np.cos(np.pi * z),
}  # fmt: skip


def _np_logits(w: np.ndarray, act: np.ndarray, x: np.ndarray, n_out: int) -> np.ndarray:
    """Node by node, in float64: a_j = f_j(sum_i w_ij a_i) for hidden j, outputs linear."""
    n_in, n = x.shape[1], w.shape[0]
    a = np.zeros((len(x), n))
    a[:, :n_in], a[:, n_in] = x, 1.0
    for j in range(n_in + 1, n - n_out):
        a[:, j] = NP_ACT[wann.ACTIVATIONS[act[j - n_in - 1]]](a @ w[:, j])
    return a @ w[:, n - n_out :]


class _Stop(Exception):
    pass


# ~20 s: two tiny runs (the second shares the first's compiled programs).
@pytest.mark.slow
def test_an_interrupted_run_and_a_damaged_state_resume_with_the_same_rows(tmp_path, monkeypatch):
    straight = _rows(_run(tmp_path / "straight"))
    # Interrupted inside the second chunk: one chunk committed, its state saved.
    real = study.wann.search
    calls = []

    def stop_second(*args, **kwargs):
        calls.append(kwargs["generations"])
        if len(calls) == 2:
            raise _Stop
        return real(*args, **kwargs)

    monkeypatch.setattr(study.wann, "search", stop_second)
    with pytest.raises(_Stop):
        study.main([*TINY, "--out", str(tmp_path / "cut")])
    (folder,) = (tmp_path / "cut").iterdir()
    done = results.Store(folder, _config(folder).to_json(), readonly=True).done()
    assert done == ["seed0_gen0000-0002"]
    resumed_from = []

    def record(*args, **kwargs):
        resumed_from.append(None if kwargs["resume"] is None else kwargs["resume"].generation)
        return real(*args, **kwargs)

    monkeypatch.setattr(study.wann, "search", record)
    assert study.main([*TINY, "--out", str(tmp_path / "cut")]) == 0
    assert resumed_from == [2, 4]  # restarted at the first unfinished generation
    assert _rows(folder) == straight

    # A committed chunk whose state file is unreadable is discarded and searched again.
    state = folder / "state" / "seed0_gen0004.json"
    state.write_text("{not json")
    with results.Store(folder, _config(folder).to_json()) as store:
        for unit in ("seed0_gen0004-0005", "seed0_final"):
            with pytest.warns(results.DamagedUnitWarning, match="go on from generation 4"):
                store.discard(unit, "test: make the run go on from generation 4")
    resumed_from.clear()
    with pytest.warns(results.DamagedUnitWarning, match="unreadable"):
        assert study.main([*TINY, "--out", str(tmp_path / "cut")]) == 0
    assert resumed_from == [2, 4]
    assert sorted(map(json.dumps, _rows(folder))) == sorted(map(json.dumps, straight))


def _units(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "rows").glob("*.jsonl"))}


# A subprocess killed mid-search, then the same command again: 1-2 minutes on 2 loaded cores.
@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_rows(tmp_path):
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    argv = [*TINY, "--generations", "12"]
    args = [sys.executable, "-m", "experiments.weight_agnostic", *argv]
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "killed")], cwd=ROOT, env=env)
    deadline, run = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*/rows/*gen0002-0004.jsonl"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run is not None, "the run never committed its second chunk"
    before = _units(run)
    assert not any("final" in name for name in before), before
    for out in ("killed", "straight"):
        subprocess.run([*args, "--out", str(tmp_path / out)], cwd=ROOT, env=env, check=True,
                       capture_output=True)  # fmt: skip
    after = _units(run)
    assert all(after[name] == body for name, body in before.items())  # never written again
    assert _rows(run) == _rows(tmp_path / "straight" / run.name)


BAD_SETTINGS = [
    (["--activations", ""], "--activations must be a non-empty comma list from ('linear', "),
    (["--activations", "tanh,swish"], "--activations must be a comma list from ('linear', "),
    (["--activations", "tanh,tanh"], "--activations must be distinct names, each given once"),
    (["--population", "1"], "--population must be an integer ≥ 2, got 1."),
    (["--hidden", "-1"], "--hidden must be an integer ≥ 0, got -1."),
    (["--generations", "0"], "--generations must be a positive integer, got 0."),
    (["--population", "16", "--elite", "16"],
     "--elite must be fewer than --population = 16, got 16."),
    (["--population", "16", "--tournament", "17"],
     "--tournament must be at most --population = 16, got 17."),
    (["--weights", ""], "--weights must be a non-empty comma list of shared weight values"),
    (["--weights", "1,0"], "--weights must be non-zero values"),
    (["--weights", "1,1"], "--weights must be distinct values"),
    (["--weights", "1,nan"], "--weights must be finite numbers, got nan."),
    (["--probs", "1,1"], "--probs must be 3 numbers ≥ 0 with a positive sum"),
    (["--conn-prob", "1.5"], "--conn-prob must be a probability in [0, 1], got 1.5."),
    (["--lr", "0"], "--lr must be > 0, got 0.0."),
    (["--dataset", "pydoc"], "--dataset must be an image dataset, one of"),
    (["--pool", "3"], "--pool must be a divisor of the 8×8 images of 'digits', got 3."),
    (["--links", "651"], "--links must be at most the 650 input → output connections"),
    (["--search-batch", "5000"], "--search-batch must be at most the 1197 training examples"),
    (["--dataset", "mnist", "--data-dir", "{empty}"], "dataset 'mnist' is not prepared"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), BAD_SETTINGS)
def test_bad_settings_stop_before_anything_is_written(argv, says, tmp_path, capsys):
    empty = tmp_path / "no_tfds"
    empty.mkdir()
    argv = [a.format(empty=empty) for a in argv]
    with pytest.raises(SystemExit) as e:
        study.main([*argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("weight_agnostic: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not (tmp_path / "runs").exists()  # nothing searched, nothing written


def test_presets_are_valid_and_mnist_pools_to_14x14():
    for make in study.PRESETS.values():
        study.validate(make())
    cfg = study.mnist()
    assert (cfg.dataset, cfg.pool, cfg.weights) == ("mnist", 2, wann.SHARED_WEIGHTS)


def test_inputs_average_pool_then_flatten():
    ds = data.load("digits", seed=0)
    cfg = study.Config(pool=2)
    x, y = study.inputs(cfg, ds)["test"]
    img = ds.test.x[7, :, :, 0]
    by_hand = [img[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean() for r in range(4) for c in range(4)]
    assert x.shape == (len(ds.test.y), 16) and np.array_equal(y, ds.test.y)
    np.testing.assert_allclose(x[7], by_hand, rtol=1e-6)


def test_describe_and_layers_of_a_hand_built_network():
    # 2 inputs, bias, 3 hidden slots, 2 outputs: x0 → h0 → h2 → o1, bias → h2, x1 → o0.
    n = 2 + 1 + 3 + 2
    conn = np.zeros((n, n), bool)
    for i, j in ((0, 3), (3, 5), (2, 5), (5, 7), (1, 6)):
        conn[i, j] = True
    act = np.array([wann.ACTIVATIONS.index(a) for a in ("tanh", "cos", "sin")], np.int32)
    text = study.describe(wann.Genome(conn, act), n_in=2, n_out=2)
    assert text == {"edges": "x0>h0;x1>o0;bias>h2;h0>h2;h2>o1", "nodes": "h0:tanh;h2:sin"}
    cols = study.layers(study.parse_edges(text["edges"]))
    # By hand: inputs 0; h0 fed by x0 → 1; h2 fed by h0 (1) and bias (0) → 2; outputs 3.
    assert cols == {"x0": 0, "h0": 1, "x1": 0, "o0": 3, "bias": 0, "h2": 2, "o1": 3}


def _final(seed, conn, hidden, rand_shared, rand, w, shared, ens, trained):
    return {"part": "final", "seed": seed, "connections": conn, "hidden_used": hidden,
            "random_shared_acc": rand_shared, "random_acc": rand, "random_std": 0.01, "shared_weight": w, "shared_acc": shared,
            "ensemble_acc": ens, "trained_acc": trained, "edges": "x0>h0;h0>o1;bias>o0",
            "nodes": "h0:relu"}  # fmt: skip


def test_the_report_is_computed_from_the_rows(tmp_path):
    finals = [_final(0, 30, 3, 0.35, 0.40, -1.0, 0.55, 0.60, 0.80),
              _final(1, 40, 5, 0.45, 0.50, 2.0, 0.65, 0.70, 0.90)]  # fmt: skip
    gens = [
        {"part": "generation", "seed": s, "generation": g, "best_mean_acc": m,
         "best_max_acc": m + 0.05, "best_connections": c, "pop_max_acc": m + 0.1,
         "mean_connections": c - 1.5}
        for s in (0, 1) for g, m, c in ((1, 0.1 + s / 10, 20 + s), (2, 0.2 + s / 10, 22 + s))
    ]  # fmt: skip
    cfg = study.Config(seeds=2, generations=2, chunk=1, population=4, elite=1)
    text = study.summary(finals + gens, cfg)
    assert "| 0 | 30 | 3 | 35.0 | 40.0 | 55.0 (w = -1) | 60.0 | 80.0 |" in text
    assert "| 1 | 40 | 5 | 45.0 | 50.0 | 65.0 (w = 2) | 70.0 | 90.0 |" in text
    # The mean line, by hand: (0.40 + 0.50) / 2 = 45.0 ± 5.0 (population std), ...
    assert ("| mean | 35.0 | 4.0 | 40.0 ± 5.0 | 45.0 ± 5.0 | 60.0 ± 5.0 | 65.0 ± 5.0 | "
            "85.0 ± 5.0 |") in text  # fmt: skip
    # Generation 1: best mean (0.1 + 0.2) / 2 = 15.0, max 20.0, connections 20.5, ...
    assert "| 1 | 15.0 | 20.0 | 20.5 | 25.0 | 19 |" in text
    assert "| 2 | 25.0 | 30.0 | 22.5 | 35.0 | 21 |" in text
    assert "- random shared weight < best shared weight: held (40.0 vs 60.0)." in text
    assert "- random weights < best shared weight: held (45.0 vs 60.0)." in text
    assert "- ensemble < trained: held (65.0 vs 85.0)." in text
    # A verdict that did not hold says so plainly.
    worse = [_final(0, 30, 3, 0.65, 0.70, 1.0, 0.60, 0.50, 0.55)]
    assert study.verdicts(worse) == [
        "random shared weight < best shared weight: did NOT hold (65.0 vs 60.0).",
        "random weights < best shared weight: did NOT hold (70.0 vs 60.0).",
        "best shared weight < trained: did NOT hold (60.0 vs 55.0).",
        "ensemble < trained: held (50.0 vs 55.0).",
    ]
    path = study.draw_network("x0>h0;h0>o1;bias>o0", "h0:relu", tmp_path / "net.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chunks_cover_every_generation_once():
    for generations, chunk in ((1, 1), (10, 3), (7, 10), (40, 10)):
        spans = study.chunks(study.Config(generations=generations, chunk=chunk))
        covered = [g for a, b in spans for g in range(a, b)]
        assert covered == list(range(generations))
        assert all(0 < b - a <= chunk for a, b in spans)
