"""The ticket-transfer study: its ticket batch, its settings checks, its report, and end to end.

Checked against numbers computed another way: the transferred ticket holds exactly the source
ticket's mask and values (a fresh output layer: the target's θ₀ with the count that
``select.keep_count``'s rounding gives, by hand), the random control exactly the transferred
ticket's per-layer counts; the densities follow the keep-count arithmetic level by level; the
report's cells are numpy means and stds of the rows; a run stopped after a level and started
again ends with exactly the rows of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import ticket_transfer as tt
from jaxprune import data, masks, results

TINY = [
    "--model", "mlp", "--levels", "2", "--seeds", "2", "--iterations", "30", "--eval-every",
    "10", "--rewind-iteration", "5", "--no-progress",
]  # fmt: skip
MLP = {"fc1": 64 * 32, "out": 32 * 5}
"""Kernel sizes of ``mlp`` (hidden 32) on 8×8 digits with 5 classes."""


def _one_line_error(argv, tmp_path, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        tt.main([*argv, "--out", str(tmp_path / "runs"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ticket_transfer: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    return err


# ---- the ticket batch ---------------------------------------------------------------------------


def _stacked(rng, shapes, seeds, kind):
    def leaf(shape):
        if kind == "mask":
            return rng.random((seeds, *shape)) < 0.4
        return rng.normal(size=(seeds, *shape)).astype(np.float32)

    return {name: {"kernel": leaf(k), "bias": leaf(b)} for name, (k, b) in shapes.items()}


def _take(tree, i):
    return jax.tree.map(lambda a: np.asarray(a)[i], tree)


def test_the_batch_holds_the_source_ticket_the_target_ticket_and_a_random_mask():
    rng = np.random.default_rng(0)
    seeds = 2
    src_shapes = {"fc1": ((6, 4), (4,)), "out": ((4, 5), (5,))}
    tgt_shapes = {"fc1": ((6, 4), (4,)), "out": ((4, 3), (3,))}  # 5 → 3 classes
    src = {"mask": _stacked(rng, src_shapes, seeds, "mask"),
           "theta_k": _stacked(rng, src_shapes, seeds, "w")}  # fmt: skip
    tgt = {"mask": _stacked(rng, tgt_shapes, seeds, "mask"),
           "theta_k": _stacked(rng, tgt_shapes, seeds, "w")}  # fmt: skip
    for tree in (src["mask"], tgt["mask"]):  # biases are never pruned
        for layer in tree.values():
            layer["bias"][:] = True
    theta0 = _stacked(rng, tgt_shapes, seeds, "w")
    cfg = dataclasses.replace(tt.quick(), seeds=seeds)
    params, mask, labels, got_seeds = tt.batch(cfg, 3, src, tgt, theta0, (r"\['out'\]",))
    assert labels == ["transferred", "target", "random"] * seeds
    assert got_seeds == [0, 0, 0, 1, 1, 1]
    for s in range(seeds):
        moved_p, moved_m = _take(params, 3 * s), _take(mask, 3 * s)
        # Hidden layer: the source ticket as it was, pruned weights zero.
        np.testing.assert_array_equal(moved_m["fc1"]["kernel"], src["mask"]["fc1"]["kernel"][s])
        np.testing.assert_array_equal(
            moved_p["fc1"]["kernel"],
            src["theta_k"]["fc1"]["kernel"][s] * src["mask"]["fc1"]["kernel"][s],
        )
        # Output layer: fresh — the target's θ₀, a random mask at the source layer's density
        # carried to 4×3 entries with keep_count's rounding: k' = n − floor((1 − k/20)·n + ½).
        k = int(src["mask"]["out"]["kernel"][s].sum())
        n = 12
        assert moved_m["out"]["kernel"].sum() == n - math.floor((1 - k / 20) * n + 0.5)
        np.testing.assert_array_equal(
            moved_p["out"]["kernel"], theta0["out"]["kernel"][s] * moved_m["out"]["kernel"]
        )
        np.testing.assert_array_equal(moved_p["out"]["bias"], theta0["out"]["bias"][s])
        # The target-found ticket: its own mask on its own θ_k.
        own_p, own_m = _take(params, 3 * s + 1), _take(mask, 3 * s + 1)
        for layer in ("fc1", "out"):
            np.testing.assert_array_equal(own_m[layer]["kernel"], tgt["mask"][layer]["kernel"][s])
            np.testing.assert_array_equal(
                own_p[layer]["kernel"],
                tgt["theta_k"][layer]["kernel"][s] * tgt["mask"][layer]["kernel"][s],
            )
        # The random control: the transferred ticket's count in every layer, elsewhere.
        rnd_p, rnd_m = _take(params, 3 * s + 2), _take(mask, 3 * s + 2)
        for layer in ("fc1", "out"):
            assert rnd_m[layer]["kernel"].sum() == moved_m[layer]["kernel"].sum()
            assert rnd_m[layer]["bias"].all()
            np.testing.assert_array_equal(
                rnd_p[layer]["kernel"], tgt["theta_k"][layer]["kernel"][s] * rnd_m[layer]["kernel"]
            )
        assert (rnd_m["fc1"]["kernel"] != moved_m["fc1"]["kernel"]).any()
    # Seeds draw apart; the same level draws the same again.
    assert (np.asarray(mask["fc1"]["kernel"][2]) != np.asarray(mask["fc1"]["kernel"][5])).any()
    again = tt.batch(cfg, 3, src, tgt, theta0, (r"\['out'\]",))
    for a, b in zip(jax.tree.leaves((params, mask)), jax.tree.leaves(again[:2]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_fresh_leaves_the_whole_source_ticket_is_transferred():
    rng = np.random.default_rng(1)
    shapes = {"fc1": ((6, 4), (4,)), "out": ((4, 3), (3,))}
    src = {"mask": _stacked(rng, shapes, 1, "mask"), "theta_k": _stacked(rng, shapes, 1, "w")}
    tgt = {"mask": _stacked(rng, shapes, 1, "mask"), "theta_k": _stacked(rng, shapes, 1, "w")}
    theta0 = _stacked(rng, shapes, 1, "w")
    cfg = dataclasses.replace(tt.permuted(), seeds=1)
    params, mask, _, _ = tt.batch(cfg, 1, src, tgt, theta0, ())
    for got, want in zip(
        jax.tree.leaves(_take(mask, 0)), jax.tree.leaves(_take(src["mask"], 0)), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    want_p = masks.apply(_take(src["theta_k"], 0), _take(src["mask"], 0))
    for got, want in zip(jax.tree.leaves(_take(params, 0)), jax.tree.leaves(want_p), strict=True):
        np.testing.assert_array_equal(got, want)


# ---- settings -----------------------------------------------------------------------------------

BAD = [
    (["--levels", "0"], "--levels must be a positive integer, got 0."),
    (["--rewind-iteration", "600"], "--rewind-iteration must be below --iterations (600)"),
    (["--source", "digitz:0-4"], "--source must be a task 'dataset[:a-b][:permuted]'"),
    (["--target", "digits:five"], "--target must be a task 'dataset', 'dataset:a-b'"),
    (["--target", "digits:4-2"], "--target: task spec 'digits:4-2': class range '4-2' must be a-b"),
    (["--target", "digits:5-12"], "--target: task spec 'digits:5-12': class range 5-12 must lie"),
    (["--target-optimizer", "rmsprop"], "--target-optimizer must be one of ('adam', 'sgd')"),
    (["--lr", "0"], "--lr must be > 0, got 0.0."),
    (["--target-lr", "0"], "--target-lr must be > 0, got 0.0."),
    (["--fresh", "never"], "--fresh must be one of ('auto', 'always'), got 'never'."),
    (["--model", "resnet20"], "--model must be an image model without batch norm"),
    (["--model", "transformer"], "--model must be an image model without batch norm"),
    (["--output-layer", "[out"], "--output-layer '[out' is not a valid regular expression"),
    (["--output-layer", "head"], "--output-layer pattern 'head' matches no parameter"),
    (["--rates", "conv=0.1"], "--rates pattern 'conv' matches no prunable layer"),
    (["--default-rate", "1"], "--default-rate must be a rate in [0, 1), got 1.0."),
    (["--batch-size", "5000"], "--batch-size must be at most the {n} training examples of "
     "--source 'digits:0-4'"),
    (["--target", "digits:0-4"], "--target must be another task than --source, or the same "
     "with another optimizer"),
    (["--data-dir", "/tmp"], "--data-dir must be unset: both tasks are built into jaxprune"),
    (["--momentum=-1"], "--momentum must be ≥ 0, got -1.0."),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_settings_stop_before_anything_is_written(argv, says, tmp_path, capsys):
    n = len(data.task("digits:0-4").train.y)  # the source's training examples
    assert says.format(n=n) in _one_line_error(argv, tmp_path, capsys)


def test_tasks_with_different_input_shapes_need_an_adapter(tmp_path, capsys, monkeypatch):
    digits = data.load("digits")

    def cropped(split: data.Split) -> data.Split:
        return data.Split(split.x[:, :6, :6], split.y)

    small = dataclasses.replace(
        digits, name="digits6", train=cropped(digits.train), val=cropped(digits.val),
        test=cropped(digits.test), input_shape=(6, 6, 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"\(8, 8, 1\) but --target 'digits' has \(6, 6, 1\)"):
        tt.check_tasks(tt.optimizer_preset(), tt.Tasks(digits, small))
    real = data.task
    monkeypatch.setattr(data, "task", lambda s, **kw: small if s == "digits:5-9" else real(s, **kw))
    err = _one_line_error([], tmp_path, capsys)
    assert "different input shapes needs an adapter" in err


def test_a_task_that_is_not_prepared_is_one_error_line(tmp_path, capsys):
    empty = tmp_path / "no_tfds"
    empty.mkdir()
    err = _one_line_error(["--preset", "mnist_fashion", "--data-dir", str(empty)], tmp_path, capsys)
    assert "mnist" in err and "tfds build" in err


# ---- report -------------------------------------------------------------------------------------


def _rows(rng: np.random.Generator) -> list[dict]:
    rows = []
    for level, density in ((1, 0.5), (2, 0.25)):
        for seed in range(3):
            for variant, base in (("transferred", 0.9), ("target", 0.91), ("random", 0.8)):
                acc = base - 0.1 * (level == 2) * (variant == "random") + rng.normal(0, 0.01)
                rows.append({
                    "part": "transfer", "level": level, "density": density, "variant": variant,
                    "seed": seed, "early_stop_test_acc": acc, "final_test_acc": acc - 0.01,
                    "fresh_output": True,
                })  # fmt: skip
    for side in ("source", "target"):
        for level, density in ((0, 1.0), (1, 0.5), (2, 0.25)):
            for seed in range(3):
                rows.append({"part": "imp", "side": side, "level": level, "density": density,
                             "seed": seed, "early_stop_test_acc": rng.uniform(0.8, 1.0)})  # fmt: skip
    return rows


def _cell(values: list[float]) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.1f} ± {a.std():.1f}"  # population std, as results.summarize


def test_the_summary_tables_and_verdict_are_computed_from_the_rows():
    rows = _rows(np.random.default_rng(0))
    text = tt.summary(rows, tt.quick())
    for value, heading in (("early_stop_test_acc", "early-stop"), ("final_test_acc", "end of")):
        section = text[text.index(heading) :]
        for level, density in ((1, 0.5), (2, 0.25)):
            cells = [
                _cell([r[value] for r in rows if r.get("variant") == v and r["level"] == level])
                for v in tt.VARIANTS
            ]
            line = f"| {level} | {density:.3f} | " + " | ".join(cells) + " |"
            assert line in section, (line, section)
    mean = {
        (lv, v): np.mean([r["early_stop_test_acc"] for r in rows
                          if r.get("variant") == v and r["level"] == lv])
        for lv in (1, 2) for v in tt.VARIANTS
    }  # fmt: skip
    for lv, density in ((1, 0.5), (2, 0.25)):
        close = mean[lv, "transferred"] >= mean[lv, "target"] - tt.CLOSE
        far = mean[lv, "transferred"] > mean[lv, "random"] + tt.FAR
        line = (
            f"density {density:.3f}: transferred {100 * mean[lv, 'transferred']:.1f} vs target "
            f"{100 * mean[lv, 'target']:.1f} (≈ {'held' if close else 'did NOT hold'}), vs "
            f"random {100 * mean[lv, 'random']:.1f} (≫ {'held' if far else 'did NOT hold'})."
        )
        assert line in text
    # Random is 10 and 20 points below, the target-found ticket 1 above: held at both.
    assert "Morcos et al.'s finding (transferred ≈ target ≫ random) held at density 0.500, " \
        "0.250." in text  # fmt: skip
    imp = [r for r in rows if r["part"] == "imp" and r["level"] == 0]
    dense = [_cell([r["early_stop_test_acc"] for r in imp if r["side"] == s])
             for s in ("source", "target")]  # fmt: skip
    assert f"| 0 | 1.000 | {dense[0]} | {dense[1]} |" in text


def test_the_verdict_names_the_densities_where_the_finding_did_not_hold():
    rows = [
        {"part": "transfer", "level": 1, "density": 0.3, "variant": v, "acc": a}
        for v, a in (("transferred", 0.70), ("target", 0.90), ("random", 0.60))
    ]
    lines = tt.verdicts(rows, "acc")
    assert lines[0] == (
        "density 0.300: transferred 70.0 vs target 90.0 (≈ did NOT hold), vs random 60.0 (≫ held)."
    )
    assert lines[-1] == (
        "Morcos et al.'s finding (transferred ≈ target ≫ random) did NOT hold at density 0.300."
    )


def test_report_writes_the_summary_and_one_line_per_variant(tmp_path):
    cfg = tt.quick()
    rows = _rows(np.random.default_rng(1))
    with results.Store(tmp_path / "run", cfg.to_json()) as store:
        store.write("rows", rows)
    out = tt.report(tmp_path / "run", cfg)
    assert set(out) == {"accuracy", "final_accuracy", "summary"}
    assert all(p.exists() and p.stat().st_size > 0 for p in out.values())
    assert (tmp_path / "run" / "summary.md").read_text() == tt.summary(rows, cfg)


# ---- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One tiny run, uninterrupted: its folder and rows."""
    out = tmp_path_factory.mktemp("straight")
    assert tt.main([*TINY, "--out", str(out)]) == 0
    (folder,) = out.iterdir()
    cfg = _config(folder)
    return folder, results.Store(folder, cfg.to_json(), readonly=True).rows()


def _config(folder: Path) -> tt.Config:
    import json

    raw = json.loads((folder / "config.json").read_text())
    raw["rates"] = tuple(tuple(r) for r in raw["rates"])
    return tt.Config(**raw)


# ~30 s from cold caches: the whole study twice (straight, then stopped and resumed).
@pytest.mark.slow
def test_a_tiny_run_end_to_end(straight):
    folder, rows = straight
    transfer = [r for r in rows if r["part"] == "transfer"]
    assert sorted((r["level"], r["seed"], r["variant"]) for r in transfer) == sorted(
        (lv, s, v) for lv in (1, 2) for s in (0, 1) for v in tt.VARIANTS
    )
    for r in transfer:  # every variant at the level's density, from the keep-count arithmetic
        kept = dict(MLP)
        for _ in range(r["level"]):
            kept = {k: v - math.floor((0.15 if k == "out" else 0.3) * v + 0.5)
                    for k, v in kept.items()}  # fmt: skip
        assert r["density"] == pytest.approx(sum(kept.values()) / sum(MLP.values()), abs=1e-12)
        assert r["fresh_output"] is True and 0 <= r["early_stop_test_acc"] <= 1
    # The target-found ticket is the target IMP run's own level, trained again in a larger
    # batch: the same init, mask, optimizer and data order, so the same loss up to the
    # floating-point reassociation of a batch of 6 tickets vs 2 (no threshold decision between).
    imp = {(r["level"], r["seed"]): r for r in rows if r["part"] == "imp" and r["side"] == "target"}
    for r in transfer:
        if r["variant"] == "target":
            own = imp[r["level"], r["seed"]]
            assert r["final_test_loss"] == pytest.approx(own["final_test_loss"], rel=1e-4)
    summary = (folder / "summary.md").read_text()
    assert "| level | density | transferred | target | random |" in summary
    assert (folder / "accuracy.png").exists() and (folder / "final_accuracy.png").exists()


@pytest.mark.slow
def test_a_run_stopped_after_a_level_resumes_to_exactly_the_same_rows(
    straight, tmp_path, monkeypatch
):
    folder, rows = straight
    real = tt.transfer_level

    def dies_at_level_2(cfg, level, *args, **kwargs):
        if level == 2:
            raise KeyboardInterrupt  # as a kill between two committed units
        return real(cfg, level, *args, **kwargs)

    monkeypatch.setattr(tt, "transfer_level", dies_at_level_2)
    with pytest.raises(KeyboardInterrupt):
        tt.run(_config(folder), out=str(tmp_path), progress=False)
    (stopped,) = tmp_path.iterdir()
    units = sorted(p.stem.split("-", 1)[1] for p in (stopped / "rows").glob("*.jsonl"))
    assert "transfer_level_001" in units and "transfer_level_002" not in units
    monkeypatch.setattr(tt, "transfer_level", real)
    resumed = tt.run(_config(folder), out=str(tmp_path), progress=False)
    assert resumed == stopped and resumed.name == folder.name
    again = results.Store(resumed, _config(folder).to_json(), readonly=True).rows()
    key = lambda r: (r["part"], r.get("side", ""), r["level"], r["seed"], r.get("variant", ""))  # noqa: E731
    assert sorted(again, key=key) == sorted(rows, key=key)
