"""The engine benchmark runs end to end on tiny settings and reports every figure.

Only the shape of the report is checked — which keys, plain JSON, positive numbers — never a
time: the benchmark measures, the tests do not judge the measurements.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks import engine, structured

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
def test_structured_benchmark_reports_masked_and_compacted() -> None:
    out = structured.run(width=0.0625, batch=4, reps=1, rates=(0.5,))
    assert json.loads(json.dumps(out)) == out
    (row,) = out["results"]
    assert row["params_compacted"] < row["params_dense"]
    # Theoretical speedup = dense FLOPs / compacted FLOPs, as the row's own counts say.
    assert row["theoretical_speedup"] == pytest.approx(row["flops_dense"] / row["flops_compacted"])
    for key in ("seconds_dense", "seconds_masked", "seconds_compacted"):
        assert math.isfinite(row[key]) and row[key] > 0
