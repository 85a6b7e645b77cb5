"""The pruning-at-init and OBD studies end to end on tiny settings.

Checked against numbers computed another way: the saved masks hold the exact counts of their
density, magnitude masks equal a numpy top-k of |θ|, the reported collapse flags and sparsest-layer
densities equal those recomputed from the saved masks, and a finished run started again trains
nothing and keeps one row per ticket.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import obd, pruning_at_init
from jaxprune import models, results, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "20", "--eval-every", "10", "--no-progress"]
LENET = {"fc1": (64, 300), "fc2": (300, 100), "out": (100, 10)}


def _folder(capsys: pytest.CaptureFixture[str]) -> Path:
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("results in "))
    return Path(line.removeprefix("results in ").strip())


def _config(cls: type, folder: Path) -> object:
    raw = json.loads((folder / "config.json").read_text())
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _kernels(tree: object) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        jax.tree_util.keystr(p).split("'")[1]: np.asarray(a)
        for p, a in flat
        if np.ndim(a) >= 3 or "kernel" in jax.tree_util.keystr(p)
    }


def _params(model: str = "lenet300_100", seed: int = 0, **options: object) -> object:
    net = models.build(model, input_shape=(8, 8, 1), num_classes=10, seed=seed, **options)
    return models.functional(net)[1]


def _like(params: object, n: int, dtype: object) -> object:
    return jax.tree.map(lambda a: np.zeros((n, *a.shape), dtype), params)


def _topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest, ties by lower flat index (select's rule)."""
    order = np.lexsort((np.arange(scores.size), -scores.ravel()))
    out = np.zeros(scores.size, bool)
    out[order[:k]] = True
    return out.reshape(scores.shape)


# ~35 s; every saliency and selector it uses is tested directly in test_saliency.py.
@pytest.mark.slow
def test_pruning_at_init_end_to_end(tmp_path, capsys):
    argv = [
        *TINY, "--out", str(tmp_path), "--seeds", "2", "--densities", "1,0.1,0.001",
        "--methods", "magnitude,random,snip,synflow", "--synflow-rounds", "10",
    ]  # fmt: skip
    assert pruning_at_init.main(argv) == 0
    folder = _folder(capsys)
    cfg = _config(pruning_at_init.Config, folder)
    rows = results.Store(folder, cfg.to_json()).rows()
    labels = [(m, sc, s) for m in cfg.methods for sc in cfg.scopes for s in range(2)]
    assert len(rows) == len(labels) * 3
    assert {(r["method"], r["scope"], r["seed"], r["density_target"]) for r in rows} == {
        (*lab, d) for lab in labels for d in (1.0, 0.1, 0.001)
    }
    total = sum(a * b for a, b in LENET.values())
    theta0 = [_kernels(_params(seed=s)) for s in range(2)]
    like = {"mask": _like(_params(), len(labels), bool)}
    for j, d in enumerate((0.1, 0.001)):
        saved = train.checkpoint.restore(folder / "state" / f"density_{j:02d}", like=like)
        kern = _kernels(saved["mask"])
        for i, (m, sc, s) in enumerate(labels):
            per_layer = {k: kern[k][i] for k in LENET}
            kept = {k: int(v.sum()) for k, v in per_layer.items()}
            if sc == "layerwise":  # every layer keeps round(d · size) (at least 0)
                for k, (a, b) in LENET.items():
                    assert kept[k] == math.floor(d * a * b + 0.5), (m, sc, k)
            else:
                assert sum(kept.values()) == math.floor(d * total + 0.5), (m, sc)
            if m == "magnitude":
                w = theta0[s]
                if sc == "layerwise":
                    for k in LENET:
                        want = _topk_mask(np.abs(w[k]), kept[k])
                        np.testing.assert_array_equal(per_layer[k], want)
                else:
                    flat = np.concatenate([np.abs(w[k]).ravel() for k in LENET])
                    want = _topk_mask(flat, sum(kept.values()))
                    got = np.concatenate([per_layer[k].ravel() for k in LENET])
                    np.testing.assert_array_equal(got, want)
            row = next(
                r for r in rows
                if (r["method"], r["scope"], r["seed"], r["density_target"]) == (m, sc, s, d)
            )  # fmt: skip
            dens = {k: kept[k] / (LENET[k][0] * LENET[k][1]) for k in LENET}
            assert row["collapsed"] == (min(dens.values()) == 0)
            assert row["min_layer_density"] == pytest.approx(min(dens.values()))
            assert row["density"] == pytest.approx(sum(kept.values()) / total)
    summary = (folder / "summary.md").read_text()
    assert "first collapse" in summary and "| synflow | global |" in summary
    for name in ("accuracy_layerwise.png", "accuracy_global.png", "results.csv"):
        assert (folder / name).stat().st_size > 0
    # Started again: everything is done, nothing is trained twice, rows are not duplicated.
    assert pruning_at_init.main(argv) == 0
    assert len(results.Store(folder, cfg.to_json()).rows()) == len(rows)


def test_obd_study_prunes_the_lowest_saliency_of_the_trained_weights(tmp_path, capsys):
    argv = [
        *TINY, "--out", str(tmp_path), "--seeds", "1", "--levels", "2", "--rate", "0.5",
        "--retrain-iterations", "10", "--model", "mlp", "--hidden", "16", "--hessian", "exact",
        "--score-examples", "50",
    ]  # fmt: skip
    assert obd.main(argv) == 0
    folder = _folder(capsys)
    cfg = _config(obd.Config, folder)
    rows = results.Store(folder, cfg.to_json()).rows()
    assert sorted((r["method"], r["level"]) for r in rows) == sorted(
        (m, lv) for m in ("obd", "magnitude") for lv in range(3)
    )
    sizes = 64 * 16 + 16 * 10
    for r in rows:
        kept = sizes
        for _ in range(r["level"]):
            kept -= math.floor(0.5 * kept + 0.5)
        assert r["density"] == pytest.approx(kept / sizes)
        assert (r["untrained_acc"] is None) == (r["level"] == 0)
    # The magnitude ticket's level-1 mask is the global top half of its trained dense weights.
    p = _params("mlp", hidden=(16,))
    like0 = {"theta_k": _like(p, 1, np.float32), "final": _like(p, 1, np.float32)}
    like = {"mask": _like(p, 2, bool), "final": _like(p, 2, np.float32)}
    dense = train.checkpoint.restore(folder / "state" / "level_000", like=like0)
    level1 = train.checkpoint.restore(folder / "state" / "level_001", like=like)
    i = 1  # tickets: (obd, seed 0), (magnitude, seed 0); one dense run for seed 0
    w = {k: v[0] for k, v in _kernels(dense["final"]).items()}
    m = {k: v[i] for k, v in _kernels(level1["mask"]).items()}
    names = sorted(w)
    flat = np.concatenate([np.abs(w[k]).ravel() for k in names])
    want = _topk_mask(flat, sum(int(m[k].sum()) for k in names))
    np.testing.assert_array_equal(np.concatenate([m[k].ravel() for k in names]), want)
    assert (folder / "accuracy_pruned.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("module", "argv", "says"),
    [
        (pruning_at_init, ["--methods", "snip,biggest"], "--methods must be a comma list from"),
        (pruning_at_init, ["--densities", "0.5,1.5"], "--densities must be numbers in (0, 1]"),
        (pruning_at_init, ["--densities", "1,0.1,0.1"],
         "--densities must be distinct numbers, each given once, got '1,0.1,0.1'."),
        (pruning_at_init, ["--densities", "0.1,nan"], "--densities must be finite numbers, got nan."),
        (pruning_at_init, ["--scopes", "local"], "--scopes must be"),
        (pruning_at_init, ["--dataset", "mnist", "--data-dir", "/nonexistent"], "mnist"),
        (pruning_at_init, ["--model", "vgg19"], "--model must be a model without batch norm"),
        (pruning_at_init, ["--per-class", "100000"], "--per-class must be at most 116, the "
         "training examples of the rarest class of 'digits', got 100000."),
        (pruning_at_init, ["--data-dir", "/tmp"], "--data-dir is only read for the prepared "
         "tensorflow-datasets sets"),
        (obd, ["--rate", "1.5"], "--rate must be a fraction in (0, 1), got 1.5"),
        (obd, ["--levels", "-1"], "--levels must be an integer ≥ 0, got -1"),
        (obd, ["--hessian", "exact"], "--hessian exact takes one Hessian-vector product"),
        (obd, ["--score-examples", "100000"],
         "--score-examples must be at most the 1197 training examples of 'digits', got 100000."),
        (obd, ["--lr", "inf"], "--lr must be a finite number, got inf."),
        (obd, ["--data-dir", "/tmp"], "'digits' is built into jaxprune and reads no folder"),
    ],
)  # fmt: skip
def test_bad_settings_stop_before_training(module, argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    study = module.__name__.rpartition(".")[2]
    assert err.startswith(f"{study}: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not list(tmp_path.iterdir())  # no run folder was made


def test_an_error_of_the_run_is_one_line_on_stderr_and_nothing_else(tmp_path):
    # The real process: no traceback, no usage, nothing printed after the error (absl's logging
    # may add its own lines).
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.obd", "--hessian", "exact", "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "JAXPRUNE_COMPILE_CACHE": "off"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if not x.startswith("WARNING:absl:")]
    assert len(lines) == 1 and lines[0].startswith("obd: error: --hessian exact takes"), lines
    assert proc.stdout == "" and not list(tmp_path.iterdir())
