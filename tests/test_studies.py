"""The lottery-ticket and Deconstructing studies end to end on tiny settings, and the command line
every study shares (help, errors as one line).

Checked against numbers computed another way: the per-layer kept counts of every level follow the
exact arithmetic of ``select.keep_count``; the reinit control holds exactly the ticket's mask; a
run killed with SIGKILL and started again ends with the same rows as a run never interrupted.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import (
    _channels,
    _imp,
    _study,
    deconstructing,
    early_bird,
    instability,
    llm_pruning,
    lottery_ticket,
    obd,
    pruning_at_init,
    rethinking,
    sparse_training,
    ticket_transfer,
    weight_agnostic,
)
from jaxprune import criteria, data, masks, models, results, train

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


BAD_SETTINGS = [
    (["--criteria", "large_final,biggest"], "--criteria must be a comma list from"),
    (["--default-rate", "1.5"], "--default-rate must be a rate in [0, 1), got 1.5."),
    (["--rates", "out=1.5"], "--rates must be rates in [0, 1) (pattern 'out'), got 1.5."),
    (["--levels", "-1"], "--levels must be an integer ≥ 0, got -1."),
    (["--kept", "rewinding"], "--kept must be a comma list from"),
    (["--rates", "out"], "argument --rates: expected 'pattern=rate,...'"),
    (["--dataset", "imagenet"], "--dataset must be one of"),
    (["--dataset", "mnist", "--data-dir", "{empty}"], "tfds build mnist"),
    (["--batch-size", "100000"], "--batch-size must be at most the 1197 training examples"),
    (["--val-size", "0"], "--val-size must be a positive integer, got 0."),
    (["--val-size", "5000"], "val_size (--val-size) must be an int in [1, 1396] for 'digits'"),
    (["--lr", "inf"], "--lr must be a finite number, got inf."),
    (["--lr", "nan"], "--lr must be a finite number, got nan."),
    (["--supermask-lr=-inf"], "--supermask-lr must be a finite number, got -inf."),
    (["--rates", "out=0.1,conv(=0.2"], "--rates pattern 'conv(' is not a valid regular expression "
     "(Python re): missing ), unterminated subpattern at position 4."),
    (["--rates", "out=0.1,out=0.2"], "--rates must be distinct patterns (the first that matches "
     "a layer sets its rate), got 'out'."),
    (["--rates", "out=0.1,nomatch=0.5"], "--rates pattern 'nomatch' matches no prunable layer; the "
     "prunable layers are: ['fc1']['kernel'].value, ['fc2']['kernel'].value, "
     "['out']['kernel'].value."),
    (["--data-dir", "{empty}"], "--data-dir is only read for the prepared tensorflow-datasets "
     "sets ('cifar10', 'cifar100', 'fashion_mnist', 'mnist', 'tiny_shakespeare'); 'digits' is "
     "built into jaxprune and reads no folder: drop --data-dir"),
]  # fmt: skip


@pytest.mark.parametrize("module", [lottery_ticket, deconstructing], ids=lambda m: m.__name__)
@pytest.mark.parametrize(("argv", "says"), BAD_SETTINGS)
def test_bad_settings_stop_before_training(module, argv, says, tmp_path, capsys):
    empty = tmp_path / "no_tfds"
    empty.mkdir()
    argv = [a.format(empty=empty) for a in argv]
    with pytest.raises(SystemExit) as e:
        module.main([*argv, "--out", str(tmp_path / "runs")])
    assert e.value.code == 2
    study = module.__name__.rpartition(".")[2]
    err = capsys.readouterr().err
    assert err.startswith(f"{study}: error: ") and err.count("\n") == 1, err  # one line, no usage
    assert says in err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def _refused(module, argv, tmp_path, capsys) -> str:
    """The one error line of ``module.main(argv)`` (exit 2), after checking nothing was written."""
    with pytest.raises(SystemExit) as e:
        module.main([*argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{_name(module)}: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    return err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dataset", "pydoc"], "--model must be a model of token ids for the text set 'pydoc', "
         "one of ('transformer',), got 'lenet300_100'."),
        (["--model", "transformer"], "--dataset must be a text set for the language model "
         "'transformer', one of ('pydoc', 'tiny_shakespeare'), got 'digits'."),
    ],
)  # fmt: skip
def test_text_sets_go_with_language_models(argv, says, tmp_path, capsys):
    # A text set's token windows fed to an image model (or pixels to the LM) would fail deep
    # inside the first training step; the studies refuse the pair up front.
    assert says in _refused(lottery_ticket, argv, tmp_path, capsys)


def test_deconstructing_refuses_batch_norm_models(tmp_path, capsys):
    # Its supermasks train apply_fn(params, x); the lottery-ticket study takes batch norm.
    err = _refused(deconstructing, ["--model", "vgg19"], tmp_path, capsys)
    assert (
        "--model must be a model without batch norm (this study trains apply_fn(params, x), "
        "models.functional), one of ('conv2', 'conv4', 'conv6', 'lenet300_100', 'mlp', 'transformer', "
        "'vit'), got "
        "'vgg19'." in err
    )


LOTTERY_BAD_SETTINGS = [
    (["--preset", "cifar10_resnet20", "--iterations", "40000"], "--milestones must be "
     "iterations inside (0, --iterations = 40000): a milestone past the run would never apply, "
     "got 42120."),
    (["--milestones", "300,200"], "--milestones must be strictly increasing iterations, got "
     "'300,200'."),
    (["--optimizer", "rmsprop"], "--optimizer must be one of ('adam', 'sgd'), got 'rmsprop'."),
    (["--precision", "fp8"], "--precision must be one of ('fp32', 'bf16'), got 'fp8'."),
    (["--augment", "mixup"], "--augment must be one of ('none', 'crop_flip'), got 'mixup'."),
    (["--weight-decay=-1e-4"], "--weight-decay must be ≥ 0, got -0.0001."),
    (["--scope", "global"], "--rates must be empty with --scope global (one threshold for the "
     "whole net, at --default-rate), got 'out=0.15'."),
    (["--ignore", "conv"], "--ignore pattern 'conv' matches no prunable layer; the prunable "
     "layers are: ['fc1']['kernel'].value"),
    (["--ignore", "fc,out", "--rates", ""], "--ignore must be patterns that leave some prunable "
     "layer, got 'fc,out'."),
    (["--model", "resnet99"], "--model must be one of ("),
    (["--model", "mlp", "--width", "0.5"], "model 'mlp' does not take option(s) ['width']"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), LOTTERY_BAD_SETTINGS)
def test_lottery_ticket_training_settings_stop_before_anything_is_written(
    argv, says, tmp_path, capsys
):
    assert says in _refused(lottery_ticket, argv, tmp_path, capsys)


def test_open_lth_presets_follow_the_recipe():
    # RESEARCH.md §9, counted by hand: 45,000 // 128 = 351 steps an epoch.
    for name, ignore in (("cifar10_resnet20", ()), ("cifar10_vgg16", ("fc1", "out"))):
        cfg = lottery_ticket.PRESETS[name]()
        assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
        assert (cfg.batch_size, cfg.iterations, cfg.milestones) == (128, 56_160, (28_080, 42_120))
        assert (cfg.scope, cfg.default_rate, cfg.rates, cfg.ignore) == ("global", 0.2, (), ignore)
        assert (cfg.augment, cfg.normalize, cfg.init) == ("crop_flip", "per_channel", "open_lth")
        lottery_ticket.validate(cfg)
    # The Conv-k presets keep the papers' Adam settings.
    conv = lottery_ticket.PRESETS["cifar10_conv4"]()
    assert (conv.optimizer, conv.lr, conv.milestones, conv.scope) == ("adam", 3e-4, (), "layerwise")


# Minutes on 2 shared CPU cores (ResNet-20 / VGG-16 compiles); the presets' own settings are
# checked in the fast test above.
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cifar10_resnet20", "cifar10_vgg16"])
def test_open_lth_presets_end_to_end_on_mocked_cifar10(preset, tmp_path, capsys):
    argv = [
        "--preset", preset, "--out", str(tmp_path), "--levels", "1", "--seeds", "1",
        "--iterations", "8", "--milestones", "4,6", "--rewind-iteration", "4", "--eval-every", "4",
        "--batch-size", "8", "--val-size", "8", "--width", "0.125", "--no-progress",
    ]  # fmt: skip
    with tfds.testing.mock_data(num_examples=40):
        assert lottery_ticket.main(argv) == 0
    folder = _folder(capsys)
    cfg = _imp.Config(**_from_json(folder))
    assert (cfg.model, cfg.scope, cfg.augment, cfg.optimizer) == (
        preset.removeprefix("cifar10_"),
        "global",
        "crop_flip",
        "sgd",
    )
    rows = results.Store(folder, cfg.to_json()).rows()
    assert sorted((r["ticket"], r["level"]) for r in rows) == sorted(
        itertools.product(range(3), range(2))
    )
    # One global threshold: level 1 keeps exactly n - round(0.2 n) of the n prunable weights,
    # where VGG-16 ignores its classifier (fc1, out) and ResNet-20 prunes every kernel.
    with tfds.testing.mock_data(num_examples=40):
        s = _imp.setup(cfg)
    one = train.unstack(s.theta0)[0]
    sizes = {jax.tree_util.keystr(p): int(np.size(v)) for p, v in
             jax.tree_util.tree_flatten_with_path(one)[0] if np.ndim(v) >= 2}  # fmt: skip
    prunable = {k: n for k, n in sizes.items() if not any(x in k for x in cfg.ignore)}
    n = sum(prunable.values())
    for r in rows:
        expected = 1.0 if r["level"] == 0 else (n - int(np.floor(0.2 * n + 0.5))) / n
        assert r["density"] == pytest.approx(expected, abs=1e-12), r
        assert "supermask_acc" not in r  # no signed-constant supermask with batch norm
    saved = train.checkpoint.restore(
        folder / "state" / "level_001",
        like={"mask": jax.vmap(masks.ones)(train.stack([one] * 3)),
              "final": train.stack([one] * 3),
              "model_state": train.stack([train.unstack(s.model_state)[0]] * 3)},
    )  # fmt: skip
    for path, m in jax.tree_util.tree_flatten_with_path(saved["mask"])[0]:
        if jax.tree_util.keystr(path) in sizes and jax.tree_util.keystr(path) not in prunable:
            assert bool(np.all(m)), path  # an ignored layer is never pruned


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_a_level_continues_the_dense_schedule_at_the_rewind_step(name):
    # lr 0.1, × 0.1 after iterations 10 and 20 of 30; a level from θ_15 runs the dense
    # schedule's steps 15…29: by hand, 0.01 for its first 5 steps, then 0.001.
    cfg = _imp.Config(optimizer=name, lr=0.1, milestones=(10, 20), iterations=30, momentum=0.0)
    expected = [0.01] * 5 + [0.001] * 10
    dense = [0.1] * 10 + [0.01] * 10 + [0.001] * 10
    for start, rates in ((15, expected), (0, dense)):
        opt = _imp.optimizer(cfg, start=start)
        w = jax.numpy.zeros(1)
        state, seen = opt.init(w), []
        for _ in range(len(rates)):
            g = jax.numpy.ones(1)
            u, state = opt.update(g, state, w)
            # Plain SGD: the update is -rate · g; Adam with a constant g: m̂ / sqrt(v̂) = 1, so
            # -rate too, up to its float32 bias corrections and eps (≈ 1e-5 relative).
            seen.append(-float(u[0]))
        np.testing.assert_allclose(seen, rates, rtol=1e-6 if name == "sgd" else 1e-4)


def test_open_lth_init_draws_kaiming_normal_kernels_and_uniform_bn_scales():
    net = models.build("resnet20", input_shape=(8, 8, 1), num_classes=10)
    drawn = _imp.open_lth_init(models.stateful(net)[1], jax.random.key(0))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(drawn)[0]}  # fmt: skip
    # Every kernel over its std sqrt(2 / fan_in), fan_in = (3·3·)inputs, by hand: pooled, ~270k
    # draws of N(0, 1), whose sample std is within 1% of 1 (7 sigma).
    unit = [v / np.sqrt(2 / (v.size // v.shape[-1])) for v in flat.values() if v.ndim >= 2]
    pooled = np.concatenate([u.ravel() for u in unit])
    assert pooled.size > 250_000 and abs(pooled.std() - 1) < 0.01 and abs(pooled.mean()) < 0.01
    scales = np.concatenate([v for k, v in flat.items() if "scale" in k])
    assert 0 <= scales.min() and scales.max() < 1 and abs(scales.mean() - 0.5) < 0.05
    biases = [v for k, v in flat.items() if "bias" in k]
    assert all((b == 0).all() for b in biases)  # untouched: the model's zeros


STUDIES = [
    lottery_ticket, deconstructing, obd, pruning_at_init, rethinking, early_bird, instability,
    sparse_training, llm_pruning, ticket_transfer, weight_agnostic,
]  # fmt: skip


def _name(module: ModuleType) -> str:
    return module.__name__.rpartition(".")[2]


@pytest.mark.parametrize("module", STUDIES, ids=_name)
def test_every_study_prints_its_help(module, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {_name(module)} [-h]")
    assert "--out OUT" in out and "--lr LR" in out


@pytest.mark.parametrize("module", STUDIES, ids=_name)
def test_an_out_folder_that_cannot_be_written_is_one_error_line(module, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:  # the run folder would go under a file
        small = ["--pairs", "1"] if module is instability else ["--seeds", "1"]
        module.main(["--out", str(blocker / "runs"), *small, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{_name(module)}: error: ") and err.count("\n") == 1, err
    assert str(blocker / "runs") in err
    assert "Traceback" not in err and blocker.read_text() == ""


def test_errors_of_the_run_and_the_report_are_one_error_line(tmp_path, capsys):
    def cli(run: Any, report: Any) -> None:
        _study.cli(
            ["--out", str(tmp_path)], "", lottery_ticket.PRESETS, study="lottery_ticket",
            help={}, check=lambda cfg: None, run=run, report=report,
        )  # fmt: skip

    def refused(cfg: Any, *, out: str, progress: bool) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))

    def done(cfg: Any, *, out: str, progress: bool) -> Path:
        return tmp_path

    def damaged(folder: Path, cfg: Any) -> dict[str, Path]:
        raise ValueError(f"{folder}/rows/1.jsonl is damaged;\n  move it aside and run again.")

    for run, report, says in [
        (refused, damaged, f"Permission denied: '{tmp_path / 'x'}'"),
        (done, damaged, f"{tmp_path}/rows/1.jsonl is damaged; move it aside and run again."),
    ]:
        with pytest.raises(SystemExit) as e:
            cli(run, report)
        assert e.value.code == 2
        assert capsys.readouterr().err == f"lottery_ticket: error: {says}\n"


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


# Two whole studies from cleared caches (50-100 s on 2 cores): a `make test-slow` check.
@pytest.mark.slow
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


def test_a_second_process_on_a_run_stops_at_once_and_clears_nothing(tmp_path):
    # While this process holds the run (as a running study does), the same command in another
    # process stops before computing or clearing anything, naming the holder.
    argv = [*TINY, "--levels", "1", "--seeds", "1", "--out", str(tmp_path)]
    cfg = dataclasses.replace(
        lottery_ticket.PRESETS["quick"](), iterations=20, eval_every=10, levels=1, seeds=1
    )
    folder = results.run_dir(tmp_path, "lottery_ticket", cfg.to_json())
    with results.Store(folder, cfg.to_json()) as store:
        store.write("level_000", [{"ticket": 0, "level": 0}])
        (folder / "state" / "level_000").mkdir(parents=True)  # what a first process has written
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.lottery_ticket", *argv],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "JAXPRUNE_COMPILE_CACHE": "off"},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if "error" in line]
    assert error.startswith(
        f"lottery_ticket: error: run folder {folder} is in use by another process "
        f"(pid {os.getpid()} on "
    ), error
    assert "Wait for it to finish (or stop it)" in error
    assert (folder / "state" / "level_000").is_dir()  # nothing of the first was cleared
    assert results.Store(folder, cfg.to_json(), readonly=True).done() == ["level_000"]


class _Recorded(Exception):
    """Stops a study at its first training run, once that run's arguments are recorded."""


@pytest.mark.parametrize("module", [rethinking, early_bird], ids=_name)
def test_channel_studies_hand_their_augmentation_to_every_fit(module, tmp_path, monkeypatch):
    seen = []

    def fit(*args, **kwargs):
        seen.append(kwargs.get("augment"))
        raise _Recorded

    monkeypatch.setattr(_channels.train, "fit", fit)
    argv = ["--out", str(tmp_path), "--seeds", "1", "--width", "0.0625", "--no-progress",
            "--augment", "crop_flip", "--normalize", "per_channel"]  # fmt: skip
    with pytest.raises(_Recorded):
        module.main(argv)
    ds = data.normalize(data.load("digits"))
    # Black of the standardised pixels: (0 - mean) / std per channel, what a 0 pixel becomes.
    black = -np.asarray(ds.normalization.mean) / np.asarray(ds.normalization.std)
    (augment,) = seen
    assert (augment.crop_padding, augment.flip) == (4, True)
    np.testing.assert_allclose(np.ravel(augment.fill), black, rtol=1e-6)


@pytest.mark.parametrize("module", [lottery_ticket, rethinking, early_bird, instability], ids=_name)
def test_an_unknown_augmentation_is_one_error_line(module, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--out", str(tmp_path), "--augment", "mixup", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"{_name(module)}: error: --augment must be one of ('none', 'crop_flip'), got 'mixup'.\n"
    )
    assert not any(tmp_path.iterdir())
