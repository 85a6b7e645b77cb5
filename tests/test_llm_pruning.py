"""The language-model pruning study: settings refused before anything is written, the report
computed from the rows (means and stds recomputed with numpy, the verdicts from the numbers), and
a tiny run killed mid-way and resumed, its rows checked against other computations."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import llm_pruning
from jaxprune import data, results

ROOT = Path(__file__).resolve().parents[1]


def _refused(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        llm_pruning.main([*argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llm_pruning: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    return err


BAD_SETTINGS = [
    (["--sparsities", "0.5,1.0"], "--sparsities must be sparsities in (0, 1), got 1.0."),
    (["--sparsities", "0.5,0.5"], "--sparsities must be distinct sparsities, each given once"),
    (["--nm", "4:2"], "--nm must be N:M patterns with 0 < N < M, e.g. '2:4,4:8', got '4:2'."),
    (["--nm", "2:4,two"], "--nm must be N:M patterns with 0 < N < M, e.g. '2:4,4:8', got 'two'."),
    (["--nm", "2:4,2:4"], "--nm must be distinct N:M patterns, each given once, got '2:4,2:4'."),
    (["--calibration", "0"], "--calibration must be a positive integer, got 0."),
    (["--seeds", "0"], "--seeds must be a positive integer, got 0."),
    (["--methods", "wanda,obs"], "--methods must be a comma list from ('magnitude', 'wanda', "
     "'sparsegpt'), got 'obs'."),
    (["--heads", "3"], "--heads must be a divisor of --dim (64), got 3."),
    (["--dataset", "digits"], "--dataset must be one of ('pydoc', 'tiny_shakespeare'), got "
     "'digits'."),
    (["--data-dir", "/nowhere"], "--data-dir must be unset for 'pydoc' (built into jaxprune)"),
    (["--structured-parts", "layers"], "--structured-parts must be a comma list from ('heads', "
     "'neurons'), got 'layers'."),
    (["--structured-rates", "0"], "--structured-rates must be fractions in (0, 1), got 0.0."),
    (["--ticket-rate", "1"], "--ticket-rate must be a rate in (0, 1), got 1.0."),
    (["--warmup", "1"], "--warmup must be a fraction in [0, 1), got 1.0."),
    (["--lr", "nan"], "--lr must be a finite number, got nan."),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), BAD_SETTINGS)
def test_bad_settings_stop_before_anything_is_written(argv, says, tmp_path, capsys):
    assert says in _refused(argv, tmp_path, capsys)


def test_settings_that_need_the_model_and_data_stop_before_training(tmp_path, capsys):
    n_train = len(data.load_text("pydoc", context=64).train[0])  # the quick preset's windows
    err = _refused(["--calibration", str(n_train + 1)], tmp_path, capsys)
    assert f"--calibration must be at most the {n_train} training windows" in err
    # fc2 of every block reads 4·dim = 256 inputs, attention 64: 3 divides neither.
    err = _refused(["--nm", "2:4,1:3"], tmp_path, capsys)
    assert "--nm must be patterns whose M divides the input size of every pruned layer" in err
    assert "has 64 inputs, not a multiple of 3), got '1:3'." in err


def _rows(rng: np.random.Generator) -> list[dict]:
    """Rows of a run with 3 methods × (50%, 60%, 2:4) × 2 seeds, made up but of the run's form."""
    rows: list[dict] = [{
        "part": "dense", "method": "dense", "target": "dense", "sparsity": 0.0, "params": 1234,
        "test_ppl": 4.0, "val_ppl": 4.1, "iterations": 10,
    }]  # fmt: skip
    base = {"sparsegpt": 5.0, "wanda": 5.2, "magnitude": 9.0}
    for method, b in base.items():
        for target, sparsity, nm, extra in (
            ("50%", 0.5, None, 0.0), ("60%", 0.6, None, 1.0), ("2:4", None, "2:4", 2.0),
        ):  # fmt: skip
            for seed in range(1 if method == "magnitude" else 2):
                rows.append({
                    "part": "posttrain", "method": method, "target": target,
                    "target_sparsity": 0.5 if nm else sparsity, "nm": nm,
                    "calibration_seed": seed, "test_ppl": b + extra + rng.uniform(0, 0.1),
                    "prune_seconds": rng.uniform(1, 2),
                })  # fmt: skip
    rows.append({
        "part": "structured", "what": "heads", "rate": 0.25, "units_kept": 6, "units": 8,
        "params": 1000, "params_dense": 1234, "test_ppl_pruned": 7.5, "test_ppl": 4.5,
    })  # fmt: skip
    for level, density in ((0, 1.0), (1, 0.8)):
        for ticket, control in enumerate(llm_pruning.CONTROLS):
            rows.append({"part": "tickets", "level": level, "ticket": ticket, "density": density,
                         "control": control, "final_test_loss": 1.4 + level * ticket / 10
                         + rng.uniform(0, 0.1)})  # fmt: skip
    return rows


def test_the_report_is_computed_from_the_rows(tmp_path):
    cfg = dataclasses.replace(llm_pruning.quick(), sparsities=(0.5, 0.6), nm=("2:4",))
    rows = _rows(np.random.default_rng(0))
    store = results.Store(tmp_path / "run", cfg.to_json())
    store.write("all", rows)
    store.close()
    paths = llm_pruning.report(tmp_path / "run", cfg)
    text = paths["summary"].read_text()
    for method in ("magnitude", "wanda", "sparsegpt"):
        cells = []
        for target in ("50%", "60%", "2:4"):
            v = np.array([r["test_ppl"] for r in rows
                          if r.get("method") == method and r.get("target") == target])  # fmt: skip
            cells.append(f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std():.2f}")
        assert f"| {method} | {' | '.join(cells)} |" in text, method
    assert "| dense | 4.00 | 4.00 | 4.00 |" in text
    # 5.0-5.1 vs 5.2-5.3: within 10%; magnitude 9.0-9.1 is far above both; 2:4 = 50% + 2.
    assert "50%: SparseGPT ≈ Wanda ≪ magnitude held" in text
    assert "2:4 worse than 50%: held for every method" in text
    assert "| heads | 25% | 6/8 | 1,000 / 1,234 | 7.50 | 4.50 |" in text
    for level, density in ((0, "1.000"), (1, "0.800")):
        cells = [f"{math.exp(r['final_test_loss']):.2f}" for c in llm_pruning.CONTROLS
                 for r in rows
                 if r["part"] == "tickets" and r["level"] == level and r["control"] == c]  # fmt: skip
        assert f"| {level} | {density} | {' | '.join(cells)} |" in text
    for name in (
        "perplexity",
        "perplexity_magnitude",
        "perplexity_wanda",
        "perplexity_sparsegpt",
        "tickets",
    ):
        assert paths[name].stat().st_size > 0


@pytest.mark.parametrize(
    ("ppl", "says"),
    [
        ({"sparsegpt": 5.0, "wanda": 6.0, "magnitude": 9.0},
         "did NOT hold: SparseGPT and Wanda differ by 20%"),
        ({"sparsegpt": 5.0, "wanda": 5.2, "magnitude": 5.5},
         "did NOT hold: magnitude is not clearly worse than both"),
    ],
)  # fmt: skip
def test_the_ordering_verdict_says_plainly_what_did_not_hold(ppl, says):
    rows = [{"part": "posttrain", "method": m, "target": "50%", "test_ppl": v}
            for m, v in ppl.items()]  # fmt: skip
    rows += [{"part": "posttrain", "method": "wanda", "target": "2:4", "test_ppl": 9.9},
             {"part": "posttrain", "method": "magnitude", "target": "2:4", "test_ppl": 1.0}]  # fmt: skip
    lines = llm_pruning.orderings(rows)
    assert says in lines[0]
    assert lines[1].startswith("2:4 worse than 50%: held for wanda, NOT for magnitude")


def test_linear_sparsity_counts_the_blocks_kernels_only():
    params = {
        "block0": {"fc": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}},
        "embed": {"embedding": jnp.ones((5, 4))},
    }
    mask = {
        "block0": {"fc": {"kernel": jnp.array([[1, 0]] * 3 + [[0, 0]], bool),
                          "bias": jnp.zeros(2, bool)}},
        "embed": {"embedding": jnp.zeros((5, 4), bool)},
    }  # fmt: skip
    assert llm_pruning.linear_sparsity(params, mask) == 1 - 3 / 8


TINY = [
    "--dim", "16", "--depth", "1", "--heads", "2", "--context", "16", "--iterations", "20",
    "--eval-every", "10", "--batch-size", "8", "--seeds", "2", "--calibration", "4",
    "--sparsities", "0.5", "--nm", "2:4", "--structured-rates", "0.5",
    "--recovery-iterations", "10", "--levels", "1", "--ticket-iterations", "10", "--no-progress",
]  # fmt: skip


def _units(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "rows").glob("*.jsonl"))}


# Two tiny runs of every part (one killed mid-way): about 2-3 minutes on 2 loaded cores.
@pytest.mark.slow
def test_a_killed_run_resumes_without_duplicating_rows(tmp_path):
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    args = [sys.executable, "-m", "experiments.llm_pruning", *TINY, "--out", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env)
    deadline, run = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        found = list(tmp_path.glob("llm_pruning-*/rows/*posttrain_wanda*.jsonl"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run is not None, "the run never committed a post-training unit"
    before = _units(run)
    assert not any("tickets" in name or "level" in name for name in before), before
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
    after = _units(run)
    assert all(after[name] == data_ for name, data_ in before.items())  # never written again
    names = [name.split("-", 1)[1].removesuffix(".jsonl") for name in after]
    assert sorted(names) == sorted({*names})  # every unit once
    expected = {"dense", "level_000", "level_001",
                "structured_heads_0.5", "structured_neurons_0.5"} | {
                f"posttrain_{m}_{t}" for m in ("magnitude", "wanda", "sparsegpt")
                for t in ("50-", "2-4")}  # fmt: skip
    assert set(names) == expected
    cfg = llm_pruning.Config(**{
        **dataclasses.asdict(llm_pruning.quick()), "dim": 16, "depth": 1, "heads": 2,
        "context": 16, "iterations": 20, "eval_every": 10, "batch_size": 8, "seeds": 2,
        "calibration": 4, "sparsities": (0.5,), "nm": ("2:4",), "structured_rates": (0.5,),
        "recovery_iterations": 10, "levels": 1, "ticket_iterations": 10,
    })  # fmt: skip
    rows = results.Store(run, cfg.to_json(), readonly=True).rows()
    (dense,) = [r for r in rows if r["part"] == "dense"]
    # metrics.perplexity against the training engine's own test loss (mean token NLL).
    assert dense["test_ppl"] == pytest.approx(math.exp(dense["final_test_loss"]), rel=1e-4)
    post = [r for r in rows if r["part"] == "posttrain"]
    assert sorted((r["method"], r["target"], r["calibration_seed"]) for r in post) == sorted(
        [("magnitude", t, None) for t in ("50%", "2:4")]
        + [(m, t, s) for m in ("wanda", "sparsegpt") for t in ("50%", "2:4") for s in (0, 1)]
    )
    for r in post:  # every kernel has an even number of entries: exactly half pruned
        assert r["sparsity"] == 0.5 and math.isfinite(r["test_ppl"])
    ppl = [r for r in rows if r["part"] == "tickets"]
    assert len(ppl) == 2 * 3
    level0 = {r["final_test_loss"] for r in ppl if r["level"] == 0}
    assert len(level0) == 1  # the three tickets of a seed share its dense run
    heads = next(r for r in rows if r.get("what") == "heads")
    assert (heads["units_kept"], heads["units"]) == (1, 2) and heads["params"] < dense["params"]
    summary = (run / "summary.md").read_text()
    assert (
        "| wanda |" in summary and "| level | density | ticket | reinit | random_mask |" in summary
    )
