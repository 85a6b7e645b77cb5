"""The level driver: rows against the exact count arithmetic, resuming, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune import data, masks, models, results, sweep, tickets, train

HIDDEN = 16
SIZES = {"fc0": 64 * HIDDEN, "out": HIDDEN * 10}  # the prunable kernels of models.build("mlp")


@pytest.fixture(scope="module")
def setup():
    ds = data.load("digits")
    nets = [
        models.functional(models.build("mlp", input_shape=ds.input_shape, num_classes=10,
                                       seed=s, hidden=(HIDDEN,)))
        for s in range(2)
    ]  # fmt: skip
    return ds, nets[0][0], train.stack([n[1] for n in nets])


def _run(folder, setup, table, **kw):
    ds, apply_fn, theta0 = setup
    settings = dict(
        optimizer=optax.adam(1e-2), levels=2, rates=0.5, iterations=20, batch_size=64,
        eval_every=10, key=jax.random.key(1), progress=False,
    )  # fmt: skip
    return sweep.run_levels(folder, table, apply_fn, theta0, ds, **{**settings, **kw})


def test_rows_follow_the_count_arithmetic_and_a_resumed_run_recomputes_nothing_done(
    tmp_path, setup, monkeypatch
):
    table = tickets.table(
        [tickets.Ticket(0), tickets.Ticket(1, "random", "reinit", "freeze_init"),
         tickets.Ticket(1, kept="reinit", source=0)],
        key=jax.random.key(0),
    )  # fmt: skip
    first = _run(tmp_path / "run", setup, table, columns=[{"name": c} for c in "abc"],
                 rewind_iteration=5)  # fmt: skip
    assert sorted((r["ticket"], r["level"]) for r in first.rows) == [
        (t, lv) for t in range(3) for lv in range(3)
    ]
    for r in first.rows:
        kept = {k: v for k, v in SIZES.items()}
        for _ in range(r["level"]):
            kept = {k: v - math.floor(0.5 * v + 0.5) for k, v in kept.items()}
        assert r["density"] == pytest.approx(sum(kept.values()) / sum(SIZES.values()))
        assert r["name"] == "abc"[r["ticket"]] and r["source"] == (
            0 if r["ticket"] == 2 else r["ticket"]
        )
        assert r["iterations"] == (25 if r["level"] == 0 else 20)
        # Evaluations after 10 and 20 steps from the rewind point θ_5, counted from θ_0.
        assert r["early_stop_iteration"] in (15, 25) and r["first_eval_iteration"] == 15
        assert (r["untrained_acc"] is None) == (r["level"] == 0)
    assert set(first.timings) == {"total", "compile", "train", "other", "programs", "ticket_steps"}
    assert first.timings["ticket_steps"] == 2 * (5 + 20) + 2 * 3 * 20  # dense seeds, then levels
    # Lose the last level (its rows and its checkpoint), as a run killed during it would.
    (unit,) = (tmp_path / "run" / "rows").glob("*-level_002.jsonl")
    unit.unlink()
    fits, restored = [], []
    monkeypatch.setattr(sweep.train_, "fit", _counting(train.fit, fits))
    monkeypatch.setattr(
        sweep.train_.checkpoint, "restore", _counting(train.checkpoint.restore, restored)
    )
    again = _run(tmp_path / "run", setup, table, columns=[{"name": c} for c in "abc"],
                 rewind_iteration=5)  # fmt: skip
    assert len(fits) == 1  # level 2 only: level 0 and 1 are restored, not retrained
    assert [str(a[0].name) for a, _ in restored] == ["level_000", "level_001"]
    key = lambda r: (r["level"], r["ticket"])  # noqa: E731
    for a, b in zip(sorted(first.rows, key=key), sorted(again.rows, key=key), strict=True):
        assert a == b  # the same program, inputs and data order: the same numbers


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append((args, kwargs))
        return fn(*args, **kwargs)

    return wrapped


def test_bad_input_is_a_value_error_naming_the_argument(tmp_path, setup):
    table = tickets.grid(3, key=jax.random.key(0))  # seeds 0..2, theta0 holds 2
    with pytest.raises(ValueError, match=r"theta0 must hold a rewind point for every seed"):
        _run(tmp_path / "a", setup, table)
    two = tickets.grid(2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"batch_size must be at most the 1197 training examples"):
        _run(tmp_path / "b", setup, two, batch_size=100_000)
    with pytest.raises(ValueError, match=r"rewind_iteration must be below dense_iterations \(20\)"):
        _run(tmp_path / "c", setup, two, rewind_iteration=20, dense_iterations=20)
    with pytest.raises(
        ValueError,
        match=r"columns must be one mapping for every ticket or one per ticket \(2\), got 3",
    ):
        _run(tmp_path / "d", setup, two, columns=[{}, {}, {}])
    assert not any((tmp_path / f).exists() for f in "abcd")  # refused before anything is written
    _run(tmp_path / "e", setup, two, levels=0)
    other = tickets.grid(2, ("random",), key=jax.random.key(0))
    with pytest.raises(ValueError, match="config differs"):
        _run(tmp_path / "e", setup, other, levels=0)  # a folder never mixes runs
    assert len(results.Store(tmp_path / "e", _config(tmp_path / "e")).rows()) == 2


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def _rows_by_key(rows):
    return {(r["level"], r["ticket"]): r for r in rows}


def test_damage_is_repaired_by_recomputing_and_a_finished_run_restores_nothing(
    tmp_path, setup, monkeypatch
):
    table = tickets.grid(2, ("large_final", "random"), key=jax.random.key(4))
    first = _run(tmp_path / "run", setup, table)
    fits, restored = [], []
    monkeypatch.setattr(sweep.train_, "fit", _counting(train.fit, fits))
    monkeypatch.setattr(
        sweep.train_.checkpoint, "restore", _counting(train.checkpoint.restore, restored)
    )
    # Finished: nothing is computed or restored, even with a checkpoint gone.
    shutil.rmtree(tmp_path / "run" / "state" / "level_001")
    assert _rows_by_key(_run(tmp_path / "run", setup, table).rows) == _rows_by_key(first.rows)
    assert (fits, restored) == ([], [])
    # Level 1's rows damaged (truncated to nothing): moved aside and recomputed from level 0 —
    # the same numbers, as the program, inputs and data order are the same.
    (unit,) = (tmp_path / "run" / "rows").glob("*-level_001.jsonl")
    unit.write_bytes(b"")
    with pytest.warns(
        results.DamagedUnitWarning, match=r"damaged unit: .*level_001.jsonl is empty"
    ):
        again = _run(tmp_path / "run", setup, table)
    assert len(fits) == 1 and _rows_by_key(again.rows) == _rows_by_key(first.rows)
    # Level 2 lost and level 1's checkpoint unreadable: level 1 is un-committed and recomputed,
    # then level 2.
    (unit,) = (tmp_path / "run" / "rows").glob("*-level_002.jsonl")
    unit.unlink()
    shutil.rmtree(tmp_path / "run" / "state" / "level_001")
    fits.clear()
    with pytest.warns(
        results.DamagedUnitWarning, match=r"unit 'level_001'.*checkpoint .*unreadable"
    ):
        third = _run(tmp_path / "run", setup, table)
    assert len(fits) == 2 and _rows_by_key(third.rows) == _rows_by_key(first.rows)
    assert len(list((tmp_path / "run" / "damaged").iterdir())) == 2  # nothing was deleted


# ---- batch-norm models: the running statistics travel with θ_k ---------------------------------


class _BatchNormMLP(nnx.Module):
    """flatten → 16 → batch norm → ReLU → 10: the smallest model with running statistics."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 16, rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.bn1(self.fc1(x.reshape(x.shape[0], -1)))))


@pytest.fixture(scope="module")
def bn_setup():
    """Two seeds of a batch-norm MLP (``models.stateful``) on digits."""
    ds = data.load("digits")
    nets = [models.stateful(models.instantiate(_BatchNormMLP, seed=s)) for s in range(2)]
    return (ds, nets[0][0], train.stack([n[1] for n in nets]), train.stack([n[2] for n in nets]))


BN_TABLE = [tickets.Ticket(0), tickets.Ticket(1), tickets.Ticket(1, kept="reinit", source=1)]


def _bn_run(folder, bn_setup, **kw):
    ds, apply_fn, theta0, state0 = bn_setup
    table = tickets.table(BN_TABLE, key=jax.random.key(2))
    settings = dict(
        optimizer=optax.sgd(0.05, momentum=0.9), levels=2, rates=0.3, scope="global",
        iterations=20, batch_size=64, eval_every=10, key=jax.random.key(3), progress=False,
        rewind_iteration=5, model_state=state0, prunable=masks.rule(exclude="out"),
    )  # fmt: skip
    return sweep.run_levels(folder, table, apply_fn, theta0, ds, **{**settings, **kw})


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def test_batch_norm_levels_start_from_their_seeds_state_at_k_and_resume_it(
    tmp_path, bn_setup, monkeypatch
):
    ds, apply_fn, _, state0 = bn_setup
    fits = []
    monkeypatch.setattr(sweep.train_, "fit", _recording(train.fit, fits))
    first = _bn_run(tmp_path / "run", bn_setup)
    assert sorted((r["ticket"], r["level"]) for r in first.rows) == [
        (t, lv) for t in range(3) for lv in range(3)
    ]
    # One global threshold over fc1's 64·16 = 1024 weights only (out is excluded): 30% of the
    # remaining, rounded half up, by hand: 1024 → 717 → 502.
    kept = {0: 1024, 1: 717, 2: 502}
    assert all(r["density"] == kept[r["level"]] / 1024 for r in first.rows)
    # Fits: dense to θ_5, dense from θ_5 on, level 1, level 2 (states on the host, per ticket).
    assert [f["iterations"] for f in fits] == [5, 20, 20, 20]
    assert _same(fits[0]["state"].model_state, state0)  # the dense run starts at the init's
    state_k = fits[0]["out"].model_state  # the dense run's running statistics after 5 steps
    assert not _same(state_k, state0)
    # The dense run goes on from step 5 with its own state: statistics and momentum carried.
    assert _same(fits[1]["state"].model_state, state_k) and int(fits[1]["state"].step[0]) == 5
    seeds = np.array([t.seed for t in BN_TABLE])
    for f in fits[2:]:  # every level: each ticket from its seed's statistics at k, step 0
        assert _same(f["state"].model_state, jax.tree.map(lambda a: a[seeds], state_k))
        assert int(np.max(f["state"].step)) == 0
    # Untrained accuracy of ticket 0 at level 1, recomputed with apply_fn in eval mode from the
    # checkpointed mask, θ_5 and the seed's statistics at 5.
    saved = train.checkpoint.restore(
        tmp_path / "run" / "state" / "level_001",
        like={"mask": fits[2]["mask"], "final": fits[2]["out"].params,
              "model_state": fits[2]["out"].model_state},
    )  # fmt: skip
    mask0 = jax.tree.map(lambda m: m[0], saved["mask"])
    theta_k0 = jax.tree.map(lambda p: p[0], fits[0]["out"].params)
    params = jax.tree.map(lambda p, m: np.where(m, p, 0.0), theta_k0, mask0)
    logits, _ = apply_fn(params, jax.tree.map(lambda s: s[0], state_k), ds.test.x, train=False)
    expected = float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(ds.test.y)))
    (row,) = [r for r in first.rows if (r["ticket"], r["level"]) == (0, 1)]
    assert row["untrained_acc"] == pytest.approx(expected, abs=1e-6)
    assert _same(saved["model_state"], fits[2]["out"].model_state)  # trained statistics saved
    assert bool(np.all(saved["mask"]["out"]["kernel"][...]))  # excluded: never pruned
    # Killed during level 2 (its rows lost): level 2 is recomputed from the checkpoints alone —
    # θ_5 and the statistics at 5 restored — and gives exactly the uninterrupted run's rows.
    (unit,) = (tmp_path / "run" / "rows").glob("*-level_002.jsonl")
    unit.unlink()
    fits.clear()
    again = _bn_run(tmp_path / "run", bn_setup)
    assert len(fits) == 1
    assert _same(fits[0]["state"].model_state, jax.tree.map(lambda a: a[seeds], state_k))
    assert _rows_by_key(again.rows) == _rows_by_key(first.rows)


def _recording(fn, calls):
    """``fn`` that records each call's starting state, mask, iterations and final state."""

    def wrapped(steps, state, mask, *args, **kwargs):
        out = fn(steps, state, mask, *args, **kwargs)
        calls.append(
            {"state": jax.device_get(state), "mask": mask, "iterations": kwargs["iterations"],
             "out": jax.device_get(out[0])}
        )  # fmt: skip
        return out

    return wrapped


def test_batch_norm_settings_are_refused_before_anything_is_written(tmp_path, bn_setup):
    with pytest.raises(ValueError, match=r"supermask_acc must be False with model_state"):
        _bn_run(tmp_path / "a", bn_setup, supermask_acc=True)
    one = jax.tree.map(lambda s: s[:1], bn_setup[3])
    with pytest.raises(ValueError, match=r"model_state must be stacked per seed like theta0 "):
        _bn_run(tmp_path / "b", bn_setup, model_state=one)
    assert not any((tmp_path / f).exists() for f in "ab")
