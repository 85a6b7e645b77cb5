"""The lottery-ticket and Deconstructing studies end to end on tiny settings.

Checked against numbers computed another way: the per-layer kept counts of every level follow the
exact arithmetic of ``select.keep_count``; the reinit control holds exactly the ticket's mask; a
run killed with SIGKILL and started again ends with the same rows as a run never interrupted.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import _imp, deconstructing, lottery_ticket
from jaxprune import criteria, masks, results, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "20", "--eval-every", "10", "--no-progress"]
LENET = {"fc1": 64 * 300, "fc2": 300 * 100, "out": 100 * 10}


def _expected_density(level: int, fc: float, out: float) -> float:
    kept = dict(LENET)
    for _ in range(level):
        kept = {
            k: v - int(np.floor((out if k == "out" else fc) * v + 0.5)) for k, v in kept.items()
        }
    return sum(kept.values()) / sum(LENET.values())


def _folder(capsys: pytest.CaptureFixture[str]) -> Path:
    return _output_folder(capsys.readouterr().out)


def _output_folder(out: str) -> Path:
    line = next(x for x in out.splitlines() if "results in " in x)
    return Path(line.split("results in ")[1].strip())


def test_deconstructing_end_to_end(tmp_path, capsys):
    argv = [
        *TINY,
        "--out", str(tmp_path), "--levels", "2", "--seeds", "2",
        "--rates", "out=0.25", "--default-rate", "0.5",
        "--criteria", "large_final,snip,random", "--kept", "rewind,signed_constant,reinit",
        "--pruned", "zero,freeze_init", "--supermask-iterations", "20",
    ]  # fmt: skip
    assert deconstructing.main(argv) == 0
    folder = _folder(capsys)
    cfg = _imp.Config(**{**_from_json(folder)})
    rows = results.Store(folder, cfg.to_json()).rows()
    imp = [r for r in rows if "level" in r]
    # slices: 3 criteria + 2 more kept + 1 more pruned = 6 combinations, × 2 seeds.
    combos = {(r["criterion"], r["kept"], r["pruned"]) for r in imp}
    assert len(combos) == 6 and ("large_final", "rewind", "freeze_init") in combos
    keys = [(r["ticket"], r["level"]) for r in imp]
    assert sorted(keys) == sorted(itertools.product(range(12), range(3)))  # one row each
    for r in imp:
        assert r["density"] == pytest.approx(_expected_density(r["level"], 0.5, 0.25), abs=1e-9)
        assert 0 <= r["early_stop_test_acc"] <= 1 and 0 <= r["early_stop_iteration"] <= 20
        if r["level"] == 0:
            assert r["untrained_acc"] is None
        else:
            assert 0 <= r["untrained_acc"] <= 1 and 0 <= r["supermask_acc"] <= 1
    learned = [r for r in rows if "rescale" in r]
    assert sorted((r["seed"], r["rescale"]) for r in learned) == [
        (0, False), (0, True), (1, False), (1, True),
    ]  # fmt: skip
    for name in ("results.csv", "summary.md", "accuracy_by_criterion.png", "accuracy_by_kept.png",
                 "accuracy_by_pruned.png", "supermask_by_criterion.png", "untrained_by_kept.png"):  # fmt: skip
        assert (folder / name).stat().st_size > 0, name
    assert "Learned supermasks" in (folder / "summary.md").read_text()


def _from_json(folder: Path) -> dict:
    raw = json.loads((folder / "config.json").read_text())
    raw["rates"] = tuple(tuple(r) for r in raw["rates"])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def test_lottery_ticket_controls_follow_the_ticket(tmp_path, capsys):
    argv = [*TINY, "--out", str(tmp_path), "--levels", "2", "--seeds", "2"]
    assert lottery_ticket.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| level | control |" in printed  # the summary table goes to the terminal
    folder = _output_folder(printed)
    cfg = _imp.Config(**_from_json(folder))
    rows = results.Store(folder, cfg.to_json()).rows()
    assert len(rows) == 2 * 3 * 3
    assert {r["control"] for r in rows} == {"ticket", "reinit", "random_mask"}
    for r in rows:
        assert r["density"] == pytest.approx(_expected_density(r["level"], 0.3, 0.15), abs=1e-9)
    # The masks saved at the last level: reinit = the ticket's mask, random_mask has the same
    # per-layer counts but other positions.
    table, _ = lottery_ticket.table(cfg)
    like = train.checkpoint.restore(folder / "state" / "level_002", like=_like(cfg, table.n))
    m = train.unstack(like["mask"])
    for seed in range(2):
        t, reinit, rnd = m[3 * seed], m[3 * seed + 1], m[3 * seed + 2]
        assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), t, reinit))
        assert masks.count(masks.prunable_leaves(rnd)) == masks.count(masks.prunable_leaves(t))
        assert float(masks.jaccard(masks.prunable_leaves(rnd), masks.prunable_leaves(t))) < 0.9


def _like(cfg: _imp.Config, n: int) -> dict:
    s = _imp.setup(cfg)
    params = train.stack([train.unstack(s.theta0)[0]] * n)
    return {"mask": jax.vmap(masks.ones)(params), "final": params}


# The tfds loaders are tested in test_data.py; the whole study on mocked mnist is a slow check.
@pytest.mark.slow
def test_lottery_ticket_on_mocked_mnist(tmp_path, capsys):
    argv = [
        "--preset", "mnist_lenet", "--out", str(tmp_path), "--levels", "1", "--seeds", "1",
        "--iterations", "4", "--eval-every", "2", "--batch-size", "8", "--val-size", "8",
        "--no-progress",
    ]  # fmt: skip
    with tfds.testing.mock_data(num_examples=40):
        assert lottery_ticket.main(argv) == 0
    folder = _folder(capsys)
    rows = results.Store(folder, _imp.Config(**_from_json(folder)).to_json()).rows()
    assert len(rows) == 1 * 3 * 2 and {r["dataset"] for r in rows} == {"mnist"}


# The tfds loaders are tested in test_data.py; the whole study on mocked mnist is a slow check.
@pytest.mark.slow
def test_deconstructing_on_mocked_mnist(tmp_path, capsys):
    argv = [
        "--preset", "mnist_fc", "--out", str(tmp_path), "--levels", "1", "--seeds", "1",
        "--iterations", "4", "--eval-every", "2", "--batch-size", "8", "--val-size", "8",
        "--criteria", "large_final,movement", "--kept", "rewind", "--pruned", "zero",
        "--supermask-iterations", "2", "--supermask-batch-size", "8", "--no-progress",
    ]  # fmt: skip
    with tfds.testing.mock_data(num_examples=40):
        assert deconstructing.main(argv) == 0
    folder = _folder(capsys)
    rows = results.Store(folder, _imp.Config(**_from_json(folder)).to_json()).rows()
    assert len([r for r in rows if "level" in r]) == 2 * 2


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--criteria", "large_final,biggest"], "--criteria must be a comma list from"),
        (["--default-rate", "1.5"], "--rates must be rates in [0, 1)"),
        (["--rates", "out=1.5"], "--rates must be rates in [0, 1)"),
        (["--levels", "-1"], "--levels must be an integer ≥ 0, got -1"),
        (["--kept", "rewinding"], "--kept must be a comma list from"),
        (["--rates", "out"], "argument --rates: expected 'pattern=rate,...'"),
        (["--dataset", "imagenet"], "--dataset must be one of"),
        (["--dataset", "mnist"], "tfds build mnist"),
        (["--batch-size", "100000"], "--batch-size must be at most the 1197 training examples"),
    ],
)
def test_bad_settings_stop_before_training(argv, says, tmp_path, capsys):
    data_dir = tmp_path / "no_tfds"
    data_dir.mkdir()
    with pytest.raises(SystemExit) as e:
        deconstructing.main([*argv, "--out", str(tmp_path / "runs"), "--data-dir", str(data_dir)])
    assert e.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def _units(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "rows").glob("*.jsonl")) if folder.exists() else []


# ~30 s: a subprocess killed mid-run; the resume path also runs in the rethinking/early_bird tests.
@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_rows(tmp_path):
    args = [
        "-m", "experiments.lottery_ticket", "--levels", "3", "--seeds", "1", "--iterations", "200",
        "--eval-every", "100", "--no-progress",
    ]  # fmt: skip
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        # The three runs compile the same programs: share them through jax's persistent cache.
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *args, "--out", str(killed)], cwd=ROOT, env=env)
    deadline = time.time() + 240
    run = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed.glob("*/rows/*level_001.jsonl"))
        if found:
            run = found[0].parents[1]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run is not None, "the run never committed level 1"
    before = _units(run)
    assert len(before) < 4, f"the run finished before it could be killed: {before}"
    subprocess.run([sys.executable, *args, "--out", str(killed)], cwd=ROOT, env=env, check=True)
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, *args, "--out", str(straight)], cwd=ROOT, env=env, check=True)
    cfg = _imp.Config(**_from_json(run))
    resumed = results.Store(run, cfg.to_json()).rows()
    reference = results.Store(straight / run.name, cfg.to_json()).rows()
    assert sorted((r["ticket"], r["level"]) for r in resumed) == sorted(
        itertools.product(range(3), range(4))
    )
    key = lambda r: (r["level"], r["ticket"])  # noqa: E731
    for a, b in zip(sorted(resumed, key=key), sorted(reference, key=key), strict=True):
        assert a["density"] == b["density"]
        assert a["early_stop_iteration"] == b["early_stop_iteration"]
        assert a["final_test_acc"] == pytest.approx(b["final_test_acc"], abs=0.01)


def test_compiled_programs_do_not_grow_with_the_names_in_the_grid(tmp_path, capsys):
    # The same study with 2 criteria and with all 15: every name is handled inside one compiled
    # round (tickets.next_level), so the larger grid compiles no more XLA programs. (Both grids
    # hold a criterion that reads the gradients at θ_k — snip —, a fixed cost of three programs
    # whenever any criterion needs them, not one per name.)
    counts = {}
    for label, crit in (("2", "snip,random"), ("15", ",".join(criteria.names()))):
        jax.clear_caches()  # count every program each run needs, not what the other compiled
        argv = [
            *TINY, "--out", str(tmp_path / label), "--levels", "2", "--seeds", "2",
            "--criteria", crit, "--kept", "rewind,reinit", "--pruned", "zero,freeze_init",
        ]  # fmt: skip
        assert deconstructing.main(argv) == 0
        folder = _folder(capsys)
        counts[label] = json.loads((folder / "timings.json").read_text())["programs"]
    assert counts["15"] <= counts["2"], counts
