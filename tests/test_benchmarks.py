"""The engine benchmark runs end to end on tiny settings and reports every figure.

Only the shape of the report is checked — which keys, plain JSON, positive numbers — never a
time: the benchmark measures, the tests do not judge the measurements.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import accelerator, engine, structured
from benchmarks import llm_pruning as llm_bench
from benchmarks import sparse_training as sparse_bench

SECTIONS = {
    "machine",
    "config",
    "masked_vs_dense",
    "tickets",
    "scan_vs_loop",
    "torch",
    "flops",
    "time_to_accuracy",
    "targets",
    "wall_s",
}


# The tiny engine run still compiles every variant (~30-50 s on 2 cores), so the checks of its
# report are `make test-slow` checks; the by-hand FLOP count below stays in `make test`.
@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return engine.run(engine.TINY)


def _numbers(tree: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, tree


@pytest.mark.slow
def test_report_has_every_section_and_is_plain_json(report: dict[str, Any]) -> None:
    assert SECTIONS <= set(report)
    assert json.loads(json.dumps(report)) == report
    for key in ("platform", "cpu_count", "jax", "backend", "device_count"):
        assert report["machine"][key]
    if report["torch"] is None:
        assert report["torch_reason"]


@pytest.mark.slow
def test_rates_and_ratios_are_positive(report: dict[str, Any]) -> None:
    checked = 0
    for section in ("masked_vs_dense", "tickets", "scan_vs_loop", "flops", "torch"):
        for path, value in _numbers(report[section] or {}, section):
            assert math.isfinite(value) and value > 0, path
            checked += 1
    assert checked > 20


@pytest.mark.slow
def test_every_ticket_count_has_sequential_and_vmap(report: dict[str, Any]) -> None:
    for n in engine.TINY.ticket_counts:
        fig = report["tickets"][str(n)]
        assert {"sequential", "vmap"} <= set(fig["ticket_steps_per_s"])
        assert fig["best"] in fig["speedup_vs_sequential"]


@pytest.mark.slow
def test_targets_name_value_and_verdict(report: dict[str, Any]) -> None:
    for name, t in report["targets"].items():
        assert set(t) == {"value", "target", "met"}, name
        assert (t["met"] is None) == (t["value"] is None), name


@pytest.mark.slow
def test_time_to_accuracy_reports_accuracy(report: dict[str, Any]) -> None:
    tta = report["time_to_accuracy"]
    assert 0 < tta["final_test_acc"] <= 1
    assert tta["fit_seconds"] > 0


def test_lenet_flops_by_hand() -> None:
    s = engine.setup()
    forward = 2 * engine.BATCH * (64 * 300 + 300 * 100 + 100 * 10)
    assert engine.lenet_train_flops(s.params) == 3 * forward


@pytest.mark.slow
def test_structured_benchmark_smoke_reports_every_model_and_rate(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out_file = tmp_path / "structured.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.structured", "--smoke", "--out", str(out_file)],
        cwd=root, capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout)  # stdout is the JSON alone; progress went to stderr
    assert json.loads(out_file.read_text()) == out
    cfg = structured.SMOKE
    assert [(r["model"], r["channels_removed"]) for r in out["results"]] == [
        (m, rate) for m in structured.MODELS for rate in cfg.rates
    ]
    for row in out["results"]:
        rate, sizes = row["channels_removed"], row["group_sizes"]
        # Layerwise L1: every group keeps max(C - round(rate * C), 1) of its C channels.
        assert row["channels_kept"] == sum(max(c - math.floor(rate * c + 0.5), 1) for c in sizes)
        # The compacted model is the masked one (float32 sums in another order: relative 1e-5),
        # with the parameter count the groups predict.
        assert row["max_abs_diff_masked"] <= 1e-5 * max(1.0, row["max_abs_logit_masked"])
        assert row["params_compacted"] == row["params_predicted"] < row["params_dense"]
        # Speed-ups are the row's own ratios: FLOPs, and times (batch 1 and batch B).
        assert row["theoretical_speedup"] == pytest.approx(
            row["flops_dense"] / row["flops_compacted"]
        )
        lat, thr = row["latency_ms_dense"], row["throughput_dense"]
        assert row["latency_speedup"] == pytest.approx(lat / row["latency_ms_compacted"])
        assert row["throughput_speedup"] == pytest.approx(row["throughput_compacted"] / thr)
        assert all(math.isfinite(v) and v > 0 for v in (lat, thr, row["throughput_compacted"]))
    load = out["machine"]["loadavg_start"] + out["machine"]["loadavg_end"]
    assert len(load) == 6 and all(v >= 0 for v in load)


@pytest.mark.slow
def test_accelerator_smoke_prints_pure_json_with_every_count_and_dtype() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.accelerator", "--smoke"],
        cwd=root, capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout)  # stdout is the JSON alone; progress went to stderr
    assert out["skipped"] == []
    cfg = accelerator.SMOKE
    for model, counts in (("lenet", cfg.lenet_tickets), ("resnet20", cfg.resnet_tickets)):
        for dtype in cfg.dtypes:
            rows = out[model][dtype]["tickets"]
            assert sorted(rows, key=int) == [str(n) for n in counts]
            single = rows["1"]["ticket_steps_per_s"]
            for row in rows.values():
                assert math.isfinite(row["ticket_steps_per_s"]) and row["ticket_steps_per_s"] > 0
                # The speedup is the N-ticket rate over the single-ticket rate of the same run.
                assert row["speedup"] == pytest.approx(row["ticket_steps_per_s"] / single)
                if "tflops" in row:  # XLA's FLOPs per ticket-step × ticket-steps/s
                    flops = out[model][dtype]["train_step_flops_xla"]
                    assert row["tflops"] == pytest.approx(flops * row["ticket_steps_per_s"] / 1e12)
                    peak = out["peak_tflops"][dtype]["measured"]
                    assert row["fraction_of_peak"]["measured"] == pytest.approx(
                        row["tflops"] / peak
                    )
    assert out["resnet20"]["augment"] == {"crop_padding": 4, "flip": True, "fill": 0.0}
    assert out["vgg16_inference"]["results"]


def test_accelerator_budget_skips_every_measurement_past_it() -> None:
    cfg = dataclasses.replace(accelerator.SMOKE, budget_s=1e-9, dtypes=("float32",), peak_size=64)
    out = accelerator.run(cfg)
    expected = [f"{m} float32 N={n}" for m, ns in
                (("lenet300_100", cfg.lenet_tickets), ("resnet20", cfg.resnet_tickets))
                for n in ns] + ["vgg16_inference"]  # fmt: skip
    assert out["skipped"] == expected
    assert "float32" not in out["lenet"] and json.loads(json.dumps(out)) == out


@pytest.mark.slow
def test_sparse_training_smoke_reports_every_ratio_from_its_own_timings() -> None:
    out = sparse_bench.run(sparse_bench.SMOKE)
    assert json.loads(json.dumps(out)) == out
    ms = out["step"]["ms_per_step"]
    for name, ratio in out["step"]["over_dense_time"].items():
        assert ratio == pytest.approx(ms[name] / ms["dense"]), name
    t = out["tickets"]
    assert {"sequential", "vmap"} <= set(t["ticket_steps_per_s"])
    for name, speedup in t["speedup_vs_sequential"].items():
        rate = t["ticket_steps_per_s"][name]
        assert speedup == pytest.approx(rate / t["ticket_steps_per_s"]["sequential"]), name
    for name, target in out["targets"].items():
        assert target["met"] == (target["value"] <= target["target"]), name
    load = out["machine"]["load_average_end"]
    assert load is None or len(load) == 3


@pytest.mark.slow
def test_llm_pruning_smoke_reports_every_method_and_target(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    out_file = tmp_path / "llm.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.llm_pruning", "--smoke", "--out", str(out_file)],
        cwd=root, capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    out = json.loads(proc.stdout)  # stdout is the JSON alone; progress went to stderr
    assert json.loads(out_file.read_text()) == out
    (shape,) = llm_bench.SMOKE.shapes
    fig = out["pruning"][shape.name]
    assert fig["calibration_tokens"] == shape.calibration * shape.context
    assert sorted(fig["seconds"]) == sorted(("magnitude", "wanda", "sparsegpt"))
    for targets in fig["seconds"].values():
        assert sorted(targets) == sorted(llm_bench.SMOKE.targets)
        for t in targets.values():
            assert all(math.isfinite(v) and v > 0 for v in (t["first_s"], t["warm_s"]))
    nm = out["nm_matmul"]
    if not nm["available"]:  # jax without jax.experimental.sparse.nm: said so, nothing timed
        assert "jax.experimental.sparse.nm" in nm["reason"] and "results" not in nm
    elif out["machine"]["backend"] != "gpu":
        assert "skipped" in nm
    machine = out["machine"]
    load = machine["loadavg_start"] + machine["loadavg_after_pruning"] + machine["loadavg_end"]
    assert len(load) == 9 and all(v >= 0 for v in load)
