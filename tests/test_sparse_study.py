"""The sparse-training study end to end on a tiny setting: rows, exact densities, FLOPs by hand,
the report, and a finished run that trains nothing when started again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import sparse_training as study
from jaxprune import results, select

ARGV = [
    "--models", "mlp", "--methods", "dense,static_erk,rigl", "--sparsities", "0.5,0.9",
    "--seeds", "2", "--iterations", "20", "--eval-every", "10", "--delta-t", "5",
    "--no-progress",
]  # fmt: skip
# The mlp on 8×8 digits: 64 → 32 → 10; forward FLOPs 2·64·32 and 2·32·10.
FC1, OUT = 2 * 64 * 32, 2 * 32 * 10


def _config(folder: Path) -> study.Config:
    raw = json.loads((folder / "config.json").read_text())
    return study.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


# ~35 s on 2 shared cores: each method compiles its own fit (three programs here).
@pytest.mark.slow
def test_tiny_run_rows_flops_report_and_resume(tmp_path, capsys, monkeypatch):
    assert study.main([*ARGV, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| method | 50% | 90% |" in printed  # the summary goes to the terminal
    (folder,) = tmp_path.iterdir()
    cfg = _config(folder)
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    assert sorted((r["method"], r["sparsity"], r["seed"]) for r in rows) == sorted(
        [("dense", 0.0, 0), ("dense", 0.0, 1)]
        + [(m, s, r) for m in ("static_erk", "rigl") for s in (0.5, 0.9) for r in (0, 1)]
    )
    n = 64 * 32 + 32 * 10
    for r in rows:
        # Exactly keep_count(N, s) of the N prunable weights stay, for every method.
        kept = int(select.keep_count(n, r["sparsity"]))
        assert r["density"] == pytest.approx(kept / n, abs=1e-6)
        assert 0.0 <= r["final_test_acc"] <= 1.0
    # Training FLOPs relative to dense, by hand: static 3 f_S / 3 f_D; RigL at ΔT = 5 until
    # T_end = round(0.75 · 20) = 15 updates at t = 5 and 10, paying 2 f_S + f_D there.
    f_d = FC1 + OUT
    for r in rows:
        f_s = r["inference_flops_ratio"] * f_d
        if r["method"] == "static_erk":
            assert r["train_flops_ratio"] == pytest.approx(f_s / f_d)
        elif r["method"] == "rigl":
            expected = (18 * 3 * f_s + 2 * (2 * f_s + f_d)) / (20 * 3 * f_d)
            assert r["train_flops_ratio"] == pytest.approx(expected)
            assert r["inference_flops_ratio"] < 1.0
        else:
            assert r["train_flops_ratio"] == 1.0 and r["inference_flops_ratio"] == 1.0
    for name in ("summary.md", "accuracy.png", "train_flops.png", "results.csv"):
        assert (folder / name).stat().st_size > 0, name

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(study.steps, "train_tickets", refuse)
    assert study.main([*ARGV, "--out", str(tmp_path)]) == 0
    assert results.Store(folder, cfg.to_json(), readonly=True).rows() == rows


def test_orderings_say_plainly_where_they_did_not_hold():
    rows = [
        {"model": "m", "method": k, "sparsity": s, "final_test_acc": a}
        for k, s, a in (
            ("rigl", 0.95, 0.9), ("set", 0.95, 0.85), ("static_erk", 0.95, 0.8),
            ("static_uniform", 0.95, 0.82), ("rigl", 0.8, 0.1), ("rigl", 0.98, 0.1),
            ("set", 0.98, 0.1), ("static_erk", 0.98, 0.1),
        )
    ]  # fmt: skip
    assert study.orderings(rows, "m") == [
        "95%: rigl ≥ set ≥ static_erk held (rigl 90.0, set 85.0, static_erk 80.0)",
        "95%: static_erk ≥ static_uniform did NOT hold (static_erk 80.0, static_uniform 82.0)",
        "98%: rigl ≥ set ≥ static_erk tied (no ordering) (rigl 10.0, set 10.0, static_erk 10.0)",
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--methods", "dense,lottery"], "--methods must be a comma list"),
        (["--sparsities", "0.9,1.0"], "--sparsities must be sparsities in (0, 1)"),
        (["--delta-t", "0"], "--delta-t must be a positive integer"),
        (["--allocation", "fan"], "--allocation must be one of"),
        (["--end-fraction", "0.05"], "--end-fraction must be in (--begin-fraction"),
        (["--models", "vgg99"], "--models must be a comma list"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cifar10_preset_follows_the_rigl_recipe():
    cfg = study.cifar10()
    study.validate(cfg)
    assert (cfg.delta_t, cfg.drop_fraction, cfg.end_fraction, cfg.allocation) == (
        100, 0.3, 0.75, "erk"
    )  # fmt: skip
    assert study.schedule_steps(cfg) == (10_000, 75_000)
