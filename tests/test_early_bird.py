"""The Early-Bird study: its emergence rule, mask distances, schedule arithmetic, and a tiny run.

Checked against numbers computed another way: the rule against a brute-force copy of the
official FIFO (``EarlyBird`` in GATECH-EIC/Early-Bird-Tickets ``main.py``), distances against
numpy loops and ``masks.hamming``, the resumed schedule's rate per update against one written by hand,
the saved masks against a numpy global threshold of the snapshot's |γ|, compacted sizes against
``structured.compacted_param_count`` and FLOPs counted by hand from the kept widths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from experiments import _channels, early_bird
from jaxprune import masks as jmasks
from jaxprune import models, results, structured, train

ROOT = Path(__file__).resolve().parents[1]
# 400 validation examples, as many as the test set: one evaluation program serves both.
TINY = ["--width", "0.0625", "--mask-every", "2", "--val-size", "400", "--no-progress"]
VGG11_WIDTHS = [4, 8, 16, 16, 32, 32, 32, 32]  # vgg11 at width 0.0625
VGG11_SIDES = [8, 4, 2, 2, 1, 1, 1, 1]  # the map each conv sees on 8×8 digits


class OfficialFIFO:
    """A brute-force copy of the official rule: a FIFO of ``keep`` masks, distances of the newest
    to each older one, initialised to 1, emerged when none exceeds ε."""

    def __init__(self, keep: int, epsilon: float) -> None:
        self.keep, self.epsilon = keep, epsilon
        self.masks: list[list[bool]] = []
        self.dists = [1.0] * (keep - 1)

    def emerge(self, mask: list[bool]) -> bool:
        self.masks.append(mask)
        if len(self.masks) > self.keep:
            self.masks.pop(0)
        if len(self.masks) < self.keep:
            return False
        for i in range(self.keep - 1):
            differ = sum(a != b for a, b in zip(self.masks[-1], self.masks[i], strict=True))
            self.dists[i] = differ / len(mask)
        return all(d <= self.epsilon for d in self.dists)


def _walk(rng: np.random.Generator, k: int, c: int) -> np.ndarray:
    """K masks of C channels, each flipping a few channels of the one before."""
    m = [rng.random(c) < 0.5]
    for _ in range(k - 1):
        flips = rng.random(c) < rng.choice([0.0, 0.05, 0.2, 0.5])
        m.append(m[-1] ^ flips)
    return np.stack(m)


@pytest.mark.parametrize("window", [2, 3, 5, 6])
@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.25, 1.0])
def test_emergence_matches_the_official_fifo(window, epsilon):
    rng = np.random.default_rng(window * 100 + int(epsilon * 100))
    for _ in range(20):
        masks = _walk(rng, int(rng.integers(1, 14)), int(rng.integers(5, 40)))
        fifo = OfficialFIFO(window, epsilon)
        want = next((k for k, m in enumerate(masks) if fifo.emerge(m.tolist())), -1)
        assert int(early_bird.first_emergence(masks, window, epsilon)) == want
        # The online use (the last `window` masks only) agrees at every point.
        fifo = OfficialFIFO(window, epsilon)
        for k in range(len(masks)):
            latest = early_bird.window_distances(masks[max(0, k - window + 1) : k + 1], window)
            online = bool(latest[-1] <= epsilon)  # NaN (FIFO not full) is False
            assert online == fifo.emerge(masks[k].tolist()), (k, window, epsilon)


def test_emergence_needs_every_mask_in_the_window_close():
    a = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    b = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # one flip from a: 0.1
    c = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]  # one from b, two from a: 0.2
    # Each mask is within 0.1 of the one before, but the newest is 0.2 from the oldest.
    assert int(early_bird.first_emergence([a, b, c], 3, 0.1)) == -1
    assert int(early_bird.first_emergence([a, b, c, c], 3, 0.1)) == 3
    assert int(early_bird.first_emergence([a, b, c], 2, 0.1)) == 1
    assert int(early_bird.first_emergence([a, b, c], 3, 0.2)) == 2
    # Batch axes between the points and the channels: one answer per (seed, ratio).
    stack = np.stack([[a, c], [b, c], [c, c]])  # [K=3, 2, C]
    np.testing.assert_array_equal(early_bird.first_emergence(stack, 2, 0.1), [1, 1])
    assert early_bird.window_distances(stack, 2).shape == (3, 2)


def test_distance_matrix_matches_numpy_and_hamming():
    rng = np.random.default_rng(0)
    masks = rng.random((7, 23)) < 0.4
    d = early_bird.distance_matrix(masks)
    for i in range(7):
        for j in range(7):
            assert d[i, j] == np.count_nonzero(masks[i] != masks[j]) / 23
            split = {"a": masks[i, :5], "b": masks[i, 5:]}, {"a": masks[j, :5], "b": masks[j, 5:]}
            assert d[i, j] == pytest.approx(float(jmasks.hamming(*split)))
    with pytest.raises(ValueError, match=r"\[K, C\]"):
        early_bird.distance_matrix(masks[0])


@pytest.mark.parametrize("start", [0, 1, 17, 36, 53, 54, 71, 72, 90, 107])
def test_a_run_resumed_at_start_continues_the_schedule(start):
    # eb_continue resumes the schedule at `start`: the rate of each update it makes must be the
    # full run's rate of that step, by hand 0.1 before step 54 (= 108/2), 0.01 before 81, then
    # 0.001; read from the optimizer state after every update.
    opt = _channels.optimizer(0.9, 1e-4)
    params = {"w": jax.numpy.ones(3)}
    st = train.TrainState(params, opt.init(params), jax.numpy.zeros((), jax.numpy.int32))
    st = _channels.with_schedule(st, _channels.schedule(108, 0.1), start)
    opt_state = st.opt_state
    update = jax.jit(opt.update)
    got = []
    for _ in range(start, 108):
        _, opt_state = update({"w": jax.numpy.ones(3)}, opt_state, params)
        got.append(float(optax.tree_utils.tree_get(opt_state, "learning_rate")))
    t = np.arange(start, 108)
    want = np.where(t < 54, 0.1, np.where(t < 81, 0.01, 0.001))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 rounding of 0.1·0.1^i


def test_train_cost_by_hand():
    # 100 of 1,000 iterations dense at 4 FLOPs, the rest at 1: (400 + 900) / 4000.
    assert early_bird.train_cost("eb_continue", 100, 1000, 4.0, 1.0) == pytest.approx(0.325)
    assert early_bird.train_cost("eb_scratch", 100, 1000, 4.0, 1.0) == pytest.approx(0.35)
    assert early_bird.train_cost("dense", 100, 1000, 4.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="arm must be one of"):
        early_bird.train_cost("late", 100, 1000, 4.0, 1.0)


def test_fit_groups_share_a_program_only_for_equal_widths_and_start():
    keeps = [
        {"conv1": np.array([1, 0, 1]), "conv2": np.array([1, 1])},
        {"conv1": np.array([0, 1, 1]), "conv2": np.array([1, 1])},  # same widths as seed 0
        {"conv1": np.array([1, 1, 1]), "conv2": np.array([0, 1])},
        {"conv1": np.array([1, 1, 0]), "conv2": np.array([1, 1])},
    ]
    starts = [36, 54, 36, 36]
    scratch = early_bird.fit_groups(keeps, starts, "eb_scratch")
    assert list(scratch.values()) == [[0, 1, 3], [2]]
    cont = early_bird.fit_groups(keeps, starts, "eb_continue")
    assert list(cont.values()) == [[0, 3], [1], [2]]
    assert [start for _, start in cont] == [36, 54, 36]


# ---- end to end ----------------------------------------------------------------------------------


def _folder(capsys: pytest.CaptureFixture[str]) -> Path:
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("results in "))
    return Path(line.removeprefix("results in ").strip())


def _config(folder: Path) -> early_bird.Config:
    raw = json.loads((folder / "config.json").read_text())
    return early_bird.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _numpy_keep(gammas: list[np.ndarray], ratio: float) -> np.ndarray:
    """select_channels' global rule in numpy: keep C − round(pC) of the largest |γ|, each layer's
    largest reserved first; ties by lower index."""
    scores = np.concatenate([np.abs(g) for g in gammas])
    n_keep = max(scores.size - math.floor(ratio * scores.size + 0.5), len(gammas))
    keep = np.zeros(scores.size, bool)
    offsets = np.cumsum([0] + [g.size for g in gammas])
    for i, g in enumerate(gammas):
        keep[offsets[i] + np.argmax(np.abs(g))] = True
    order = np.lexsort((np.arange(scores.size), -scores))
    rest = [i for i in order if not keep[i]][: n_keep - len(gammas)]
    keep[rest] = True
    return keep


def _vgg11_flops(kept: list[int]) -> int:
    """FLOPs per example by hand: 2·H·W·9·C_in·C_out per 3×3 conv, 2·C·10 for the classifier."""
    ins = [1, *kept[:-1]]
    convs = sum(2 * s * s * 9 * a * b for s, a, b in zip(VGG11_SIDES, ins, kept, strict=True))
    return convs + 2 * kept[-1] * 10


def _dense(seed: int) -> object:
    return models.build("vgg11", input_shape=(8, 8, 1), num_classes=10, seed=seed, width=0.0625)


def test_tiny_run_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    # ε = 1 accepts any mask: the ticket emerges as soon as the FIFO holds `window` masks.
    argv = [*TINY, "--out", str(tmp_path), "--iterations", "8", "--window", "2",
            "--epsilon", "1", "--seeds", "1", "--ratios", "0.5"]  # fmt: skip
    assert early_bird.main(argv) == 0
    folder = _folder(capsys)
    cfg = _config(folder)
    rows = results.Store(folder, cfg.to_json()).rows()
    assert sorted(r["arm"] for r in rows) == sorted(early_bird.ARMS)
    t_eb, total = 2 * 2, 8  # the 2nd mask, at iteration 2 · mask_every
    by_arm = {r["arm"]: r for r in rows}
    for r in rows:
        assert r["emerged"] is True and r["emergence_iteration"] == t_eb
        assert r["emergence_epoch"] == pytest.approx(t_eb / (997 // 64))  # 1,197 − 200 more val
    assert by_arm["dense"]["steps_taken"] == total
    assert by_arm["eb_continue"]["steps_taken"] == total - t_eb  # counted by the optimizer
    assert by_arm["eb_continue"]["start_iteration"] == t_eb
    assert by_arm["eb_scratch"]["steps_taken"] == total

    # The saved mask at emergence is the global |γ| threshold of the saved snapshot.
    with np.load(folder / "state" / "masks.npz") as f:
        masks, iterations = f["masks"], f["iterations"]
    assert masks.shape == (4, 1, 1, sum(VGG11_WIDTHS)) and list(iterations) == [2, 4, 6, 8]
    net = _dense(0)
    _, params, model_state = models.stateful(net)
    like = jax.tree.map(lambda a: np.zeros((1, *a.shape), a.dtype),
                        {"params": params, "model_state": model_state})  # fmt: skip
    snap = train.checkpoint.restore(folder / "state" / "eb_tickets", like=like)
    gammas = [np.asarray(snap["params"][f"bn{i}"]["scale"][...])[0] for i in range(1, 9)]
    mask = masks[1, 0, 0]
    np.testing.assert_array_equal(mask, _numpy_keep(gammas, 0.5))
    assert by_arm["dense"]["channel_density"] == pytest.approx(mask.mean())
    assert by_arm["dense"]["eb_final_distance"] == pytest.approx(np.mean(mask != masks[-1, 0, 0]))

    # Compacted sizes: the structured prediction and FLOPs by hand from the kept widths.
    cuts = np.cumsum([0, *VGG11_WIDTHS])
    keep = {f"conv{i + 1}": mask[cuts[i] : cuts[i + 1]] for i in range(8)}
    want_params = structured.compacted_param_count(params, structured.channel_groups(net), keep)
    f_d, f_p = _vgg11_flops(VGG11_WIDTHS), _vgg11_flops([int(v.sum()) for v in keep.values()])
    for arm in ("eb_continue", "eb_scratch"):
        assert by_arm[arm]["params"] == want_params
        assert by_arm[arm]["flops"] == f_p
        assert by_arm[arm]["flops_ratio"] == pytest.approx(f_p / f_d)
    assert by_arm["dense"]["flops"] == f_d == 106_624
    assert by_arm["dense"]["params"] == models.param_count(params)
    assert by_arm["eb_continue"]["train_cost"] == pytest.approx(
        (t_eb * f_d + (total - t_eb) * f_p) / (total * f_d)
    )

    summary = (folder / "summary.md").read_text()
    for heading in ("### Emergence", "### Test accuracy", "### Size and training cost"):
        assert heading in summary
    assert "| 0.5 | 1/1 |" in summary
    for name in ("mask_distance.png", "mask_distance_matrix.png", "accuracy.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"

    # Started again: every unit is done, nothing trains, the rows are the same.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(early_bird._channels, "fit", no_training)
    assert early_bird.main(argv) == 0
    assert _folder(capsys) == folder
    assert results.Store(folder, cfg.to_json()).rows() == rows


@pytest.mark.slow
def test_no_emergence_takes_the_final_mask_and_groups_seeds(tmp_path, capsys):
    # 4 mask points never fill a FIFO of 5: no EB ticket, the final mask is taken, flagged.
    argv = [*TINY, "--out", str(tmp_path), "--iterations", "8", "--window", "5",
            "--seeds", "2", "--ratios", "0.5"]  # fmt: skip
    assert early_bird.main(argv) == 0
    folder = _folder(capsys)
    rows = results.Store(folder, _config(folder).to_json()).rows()
    assert len(rows) == 6
    for r in rows:
        assert r["emerged"] is False and r["emergence_iteration"] is None
        assert r["ticket_iteration"] == 8
        if r["arm"] == "eb_continue":  # drawn at the end: evaluated, not trained
            assert r["steps_taken"] == 0 and r["train_cost"] == 1.0
        if r["arm"] == "eb_scratch":
            assert r["steps_taken"] == 8
    assert "| 0.5 | 0/2 |" in (folder / "summary.md").read_text()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--epsilon", "0"], "--epsilon must be a distance in (0, 1], got 0.0"),
        (["--epsilon", "1.5"], "--epsilon must be a distance in (0, 1]"),
        (["--window", "1"], "--window must be an integer ≥ 2, got 1"),
        (["--ratios", "0.5,1"], "--ratios must be prune ratios in (0, 1), got 1.0"),
        (["--ratios", "0.5,0.5"], "--ratios must be distinct prune ratios, each given once"),
        (["--model", "lenet300_100"], "--model must be a model with batch norm"),
        (["--model", "vgg12"], "--model must be a model with batch norm"),
        (["--mask-every", "-1"], "--mask-every must be an integer ≥ 0, got -1"),
        (["--mask-every", "900"], "--mask-every must be at most --iterations (540), got 900"),
        (["--momentum", "1"], "--momentum must be in [0, 1)"),
        (["--penalty=-1e-4"], "--penalty must be >= 0, got -0.0001"),
        (["--lr", "nan"], "--lr must be a finite number, got nan."),
        (["--iterations", "10"], "--iterations must be at least one mask interval (18"),
        (["--batch-size", "5000"], "--batch-size must be at most the 1197 training examples"),
        (["--val-size", "0"], "--val-size must be a positive integer, got 0."),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "cifar10"),
        (["--data-dir", "/tmp"], "'digits' is built into jaxprune and reads no folder"),
    ],
)
def test_bad_settings_stop_before_training(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        early_bird.main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("early_bird: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not list(tmp_path.iterdir())  # no run folder was made


def test_a_damaged_checkpoint_is_named_once_and_recomputed(tmp_path):
    # A run whose search is committed but whose ticket snapshots are damaged: the search is
    # un-committed (its rows moved to damaged/) and recomputed, with one warning naming the
    # checkpoint. Orbax gives up on the first unreadable array and closes its event loop while
    # other reads are in flight; those used to print "Event loop is closed" and "Future exception
    # was never retrieved" tracebacks (by chance: they race the exit) — none may appear.
    argv = [*TINY, "--out", str(tmp_path), "--iterations", "8", "--seeds", "1", "--ratios", "0.5"]
    cfg = dataclasses.replace(early_bird.quick(), width=0.0625, mask_every=2, val_size=400,
                              iterations=8, seeds=1, ratios=(0.5,))  # fmt: skip
    folder = results.run_dir(tmp_path, "early_bird", cfg.to_json())
    state = folder / "state"
    state.mkdir(parents=True)
    np.savez(state / "masks.npz", masks=np.ones((1, 1, 1, 4), bool), iterations=np.array([2]),
             ticket_point=np.zeros((1, 1), int), emerged=np.ones((1, 1), bool))  # fmt: skip
    _, params, model_state = models.stateful(_dense(0))
    like = jax.tree.map(lambda a: np.zeros((1, *a.shape), a.dtype),
                        {"params": params, "model_state": model_state})  # fmt: skip
    train.checkpoint.save(state / "eb_tickets", like)
    arrays = [f for f in (state / "eb_tickets").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert arrays
    for f in arrays:  # every array file truncated
        f.write_bytes(f.read_bytes()[:16])
    with results.Store(folder, cfg.to_json()) as store:  # the search committed
        store.write("search", [{"arm": "dense", "seed": 0}])
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.early_bird", *argv], cwd=ROOT, capture_output=True,
        env={**os.environ, "JAXPRUNE_COMPILE_CACHE": "off"}, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for noise in ("Traceback", "Event loop is closed", "never retrieved", "tensorstore_spec"):
        assert noise not in proc.stderr, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if "DamagedUnitWarning" in x]
    assert "unit 'search'" in warning and f"the checkpoint in '{state / 'eb_tickets'}'" in warning
    assert "is damaged" in warning and "recomputed when the run goes on" in warning
    rows = results.Store(folder, cfg.to_json(), readonly=True).rows()
    assert {r["arm"] for r in rows} >= {"dense"} and len(rows) > 1  # searched again, retrained
