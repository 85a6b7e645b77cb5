"""Linear mode connectivity and instability (jaxprune.instability) and its study.

Checked against numbers computed another way: interpolation against numpy, the barrier by hand,
the vmapped path against a Python loop of ``train.evaluate`` calls, the trajectory against one
uninterrupted fit, and a network against itself (a flat path).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from experiments import instability as study
from jaxprune import data, instability, masks, models, results, train


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits")


@pytest.fixture(scope="module")
def mlp(digits: data.Dataset):
    apply_fn, params = models.functional(
        models.build("mlp", input_shape=digits.input_shape, num_classes=10, hidden=(16,))
    )[:2]
    steps = train.make_steps(apply_fn, optax.adam(1e-2))
    return apply_fn, params, steps


def _random_mask(params, key):
    leaves, tree = jax.tree.flatten(params)
    ks = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.uniform(k, p.shape) < 0.7 for k, p in zip(ks, leaves, strict=True)]
    )


@pytest.fixture(scope="module")
def copies(digits, mlp):
    """Two copies of one spawn point, trained 60 steps with different data orders."""
    _, params, steps = mlp
    mask = _random_mask(params, jax.random.key(3))
    spawn = train.stack([steps.init(masks.apply(params, mask))])
    a, b, _ = instability.train_copies(
        steps, spawn, train.stack([mask]), digits, iterations=60, batch_size=32,
        key=jax.random.key(4),
    )  # fmt: skip
    return train.unstack(a.params)[0], train.unstack(b.params)[0], mask


def test_interpolate_matches_numpy():
    rng = np.random.default_rng(0)
    a = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    b = {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    for alpha in (0.0, 0.3, 1.0):
        got = instability.interpolate(a, b, alpha)
        for name in a:
            want = (1 - alpha) * a[name].astype(np.float64) + alpha * b[name].astype(np.float64)
            np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-6, atol=1e-6)
            assert got[name].dtype == np.float32


def test_instability_by_hand_on_batched_errors():
    errors = np.array(
        [
            [[0.10, 0.40, 0.20, 0.12], [0.05, 0.05, 0.05, 0.05]],
            [[0.30, 0.20, 0.10, 0.10], [0.00, 0.02, 0.50, 0.10]],
        ]
    )
    # max − (first + last) / 2, by hand for each path:
    want = [[0.40 - 0.11, 0.0], [0.30 - 0.20, 0.50 - 0.05]]
    np.testing.assert_allclose(np.asarray(instability.instability(errors)), want, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        instability.instability(np.array([0.1]))


def test_a_network_and_itself_have_a_flat_path_and_zero_instability(digits, mlp, copies):
    apply_fn = mlp[0]
    params, _, mask = copies
    x, y = digits.test
    errors = instability.path_errors(apply_fn, params, params, mask, x, y, instability.alphas(7))
    steps = train.make_steps(apply_fn, optax.identity())
    _, acc = train.evaluate(steps, params, mask, None, x, y)
    # Every θ(α) is θ itself (up to (1 − α)·w + α·w rounding, far below any logit gap).
    np.testing.assert_allclose(np.asarray(errors), np.full(7, 1 - float(acc)), atol=1e-7)
    assert float(instability.instability(errors)) == pytest.approx(0.0, abs=1e-7)


def test_the_vmapped_path_equals_a_loop_of_evaluations(digits, mlp, copies):
    _, _, steps = mlp
    pa, pb, mask = copies
    x, y = digits.test
    alphas = instability.alphas(6)
    got = np.asarray(instability.path_errors(steps, pa, pb, mask, x, y, alphas))
    loop = [
        1 - float(train.evaluate(steps, instability.interpolate(pa, pb, a), mask, None, x, y)[1])
        for a in alphas
    ]
    # Two compiled programs: their float32 logits may differ by rounding, which can flip the
    # argmax of an example whose two top logits tie to ~1e-6 — at most one example of the test
    # split here, so a margin of 1.5 examples.
    np.testing.assert_allclose(got, loop, atol=1.5 / len(y))
    assert not np.allclose(got, got[0])  # the copies differ: the path is not flat
    # One path per ticket: the same numbers as ticket-by-ticket paths.
    two = instability.path_errors(
        steps, train.stack([pa, pb]), train.stack([pb, pa]), train.stack([mask, mask]), x, y,
        alphas, tickets=True,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(two[0]), got, atol=1.5 / len(y))
    np.testing.assert_allclose(np.asarray(two[1]), got[::-1], atol=1.5 / len(y))


def test_batch_norm_statistics_are_interpolated_with_the_weights():
    # A model whose state is a running mean of its inputs, as batch norm keeps one.
    def apply_fn(p, s, x, *, train):
        return (x - s["mean"][None]) @ p["w"], s

    steps = train.make_steps(apply_fn, optax.identity(), stateful=True)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(200, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=200))
    pa, pb = ({"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)} for _ in range(2))
    sa, sb = {"mean": jnp.array([1.0, -2.0, 0.5])}, {"mean": jnp.array([-1.0, 3.0, 0.0])}
    mask = {"w": jnp.ones((3, 2), bool)}
    alphas = instability.alphas(5)
    got = instability.path_errors(
        steps, pa, pb, mask, x, y, alphas, model_state_a=sa, model_state_b=sb
    )
    for a, e in zip(alphas, np.asarray(got), strict=True):
        p, s = instability.interpolate(pa, pb, a), instability.interpolate(sa, sb, a)
        logits = (np.asarray(x, np.float64) - np.asarray(s["mean"])) @ np.asarray(p["w"])
        # numpy in float64 against float32: a margin of one example of 200 for a near-tie.
        assert abs(e - np.mean(logits.argmax(1) != np.asarray(y))) <= 1.0 / 200
    with pytest.raises(ValueError, match="model_state_a and model_state_b must be given together"):
        instability.path_errors(steps, pa, pb, mask, x, y, alphas, model_state_a=sa)


@pytest.mark.parametrize(
    ("alphas", "says"),
    [
        ([0.5], "at least 2 interpolation points"),
        ([], "at least 2 interpolation points"),
        ([0.0, 1.5], "alphas must lie in [0, 1]"),
        ([-0.1, 1.0], "alphas must lie in [0, 1]"),
        ([0.0, float("nan")], "alphas must lie in [0, 1]"),
    ],
)
def test_bad_alphas_stop_before_anything_is_trained(alphas, says, mlp, copies):
    _, params, steps = mlp
    pa, pb, mask = copies
    x = jnp.zeros((4, 64))
    y = jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match=re.escape(says)):
        instability.path_errors(steps, pa, pb, mask, x, y, alphas)
    spawn = train.stack([steps.init(params)])
    # dataset=None: were anything trained first, the fit would fail on it another way.
    with pytest.raises(ValueError, match=re.escape(says)):
        instability.analyse(
            steps, spawn, train.stack([mask]), None, alphas=alphas, iterations=5, batch_size=2,
            key=jax.random.key(0),
        )  # fmt: skip


def test_analyse_wants_the_path_from_0_to_1_and_alphas_wants_two(mlp):
    _, params, steps = mlp
    spawn = train.stack([steps.init(params)])
    with pytest.raises(ValueError, match="must start at 0 and end at 1"):
        instability.analyse(
            steps, spawn, train.stack([masks.ones(params)]), None, alphas=[0.0, 0.5],
            iterations=5, batch_size=2, key=jax.random.key(0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="int ≥ 2"):
        instability.alphas(1)


def test_mismatched_trees_are_refused(mlp, copies):
    _, _, steps = mlp
    pa, pb, mask = copies
    x, y = jnp.zeros((4, 64)), jnp.zeros(4, jnp.int32)
    other = {"extra": jnp.zeros(3), **pb}
    with pytest.raises(ValueError, match="params_b must have exactly the structure of params_a"):
        instability.path_errors(steps, pa, other, mask, x, y, [0.0, 1.0])
    short = jax.tree.map(lambda m: m[:1], mask)
    with pytest.raises(ValueError, match="mask"):
        instability.path_errors(steps, pa, pb, short, x, y, [0.0, 1.0])
    with pytest.raises(ValueError, match="b must have exactly the structure of a"):
        instability.interpolate({"w": jnp.zeros(2)}, {"v": jnp.zeros(2)}, 0.5)


def test_the_trajectory_is_one_uninterrupted_run(digits, mlp):
    _, params, steps = mlp
    ones = masks.ones(params)
    key = jax.random.key(7)
    states = instability.trajectory(
        steps, steps.init(params), ones, digits.train, at=[0, 3, 10], batch_size=32, data_key=key
    )
    assert np.asarray(states.step).tolist() == [0, 3, 10]
    whole, _ = train.fit(
        steps, steps.init(params), ones, digits.train, digits.val, digits.test, iterations=10,
        batch_size=32, eval_every=10, data_key=key, progress=False,
    )  # fmt: skip
    # Pieces of 3 and 7 steps against one scan of 10: the same batches, float32 rounding apart.
    for got, want in zip(
        jax.tree.leaves(train.unstack(states.params)[2]), jax.tree.leaves(whole.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    first = train.unstack(states.params)[0]
    assert all(
        bool(jnp.all(a == b))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(params), strict=True)
    )
    with pytest.raises(ValueError, match="strictly increasing"):
        instability.trajectory(
            steps, steps.init(params), ones, digits.train, at=[3, 3], batch_size=32, data_key=key
        )


def test_copies_of_every_spawn_point_share_two_data_orders(digits, mlp):
    _, params, steps = mlp
    spawn = train.stack([steps.init(params)] * 2)  # two identical spawn points
    mask = train.stack([masks.ones(params)] * 2)
    a, b, _ = instability.train_copies(
        steps, spawn, mask, digits, iterations=5, batch_size=32, key=jax.random.key(0)
    )
    wa, wb = jax.tree.leaves(a.params)[0], jax.tree.leaves(b.params)[0]
    assert bool(jnp.all(wa[0] == wa[1]))  # one key: copy a has one data order for every spawn
    assert not bool(jnp.allclose(wa[0], wb[0]))  # copies a and b differ


def test_stop_after_freezes_the_weights_at_the_last_step(digits, mlp):
    _, params, _ = mlp
    steps = train.make_steps(mlp[0], instability.stop_after(optax.sgd(0.1), 4))
    ones = masks.ones(params)
    states = instability.trajectory(
        steps, steps.init(params), ones, digits.train, at=[3, 4, 9], batch_size=32,
        data_key=jax.random.key(1),
    )  # fmt: skip
    w = [np.asarray(jax.tree.leaves(p)[0]) for p in train.unstack(states.params)]
    assert not np.array_equal(w[0], w[1]) and np.array_equal(w[1], w[2])


TINY = [
    "--iterations", "8", "--rewind-iterations", "0,3", "--levels", "1", "--alphas", "3",
    "--pairs", "1", "--eval-every", "4", "--batch-size", "16", "--no-progress",
]  # fmt: skip


def _rows(folder: Path) -> list[dict]:
    config = json.loads((folder / "config.json").read_text())
    return results.Store(folder, config, readonly=True).rows()


def _folder(out: str) -> Path:
    line = next(x for x in out.splitlines() if "results in " in x)
    return Path(line.split("results in ")[1].strip())


# The whole study through its command line (IMP runs, copies, report, rerun): about 20 s.
@pytest.mark.slow
def test_quick_preset_end_to_end_then_a_rerun_trains_nothing(tmp_path, capsys, monkeypatch):
    argv = [*TINY, "--model", "mlp", "--out", str(tmp_path)]
    assert study.main(argv) == 0
    folder = _folder(capsys.readouterr().out)
    rows = _rows(folder)
    tops = [r for r in rows if r["kind"] == "summary"]
    # levels 0 and 1 × k ∈ {0, 3} × 1 pair, each with 3 path points.
    assert sorted((r["level"], r["rewind_iteration"]) for r in tops) == [
        (0, 0),
        (0, 3),
        (1, 0),
        (1, 3),
    ]
    assert len([r for r in rows if r["kind"] == "path"]) == 4 * 3
    for r in tops:
        path = [p["error"] for p in rows if p["kind"] == "path" and p["level"] == r["level"]
                and p["rewind_iteration"] == r["rewind_iteration"]]  # fmt: skip
        # float32 on the device, float64 here
        assert r["instability"] == pytest.approx(max(path) - (path[0] + path[-1]) / 2, abs=1e-6)
        assert (r["density"] == 1.0) == (r["level"] == 0)
    for name in ("summary.md", "instability.png", "path.png", "results.csv"):
        assert (folder / name).stat().st_size > 0
    # A finished run trains and restores nothing, and rewrites the report.
    (folder / "summary.md").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run trained or restored something")

    for name in ("trajectory", "train_copies", "analyse"):
        monkeypatch.setattr(instability, name, refuse)
    monkeypatch.setattr(train.checkpoint, "restore", refuse)
    monkeypatch.setattr(study.sweep, "run_levels", refuse)
    assert study.main(argv) == 0
    assert (folder / "summary.md").read_text().startswith("# Instability")


def test_one_alpha_stops_the_study_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--alphas", "1", "--out", str(tmp_path / "runs")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("instability: error: --alphas must be an integer ≥ 2")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "runs").exists()


# The whole study on mocked CIFAR-10 with the ResNet-20 preset (batch norm, augmentation, SGD
# with a step schedule): a slow check — many ResNet-20 programs to compile, minutes on 2 cores.
@pytest.mark.slow
def test_cifar10_resnet20_preset_on_mocked_data(tmp_path, capsys):
    argv = [
        "--preset", "cifar10_resnet20", "--out", str(tmp_path), "--iterations", "6",
        "--milestones", "3", "--rewind-iterations", "0,3", "--levels", "1", "--alphas", "2",
        "--batch-size", "8", "--val-size", "8", "--eval-every", "3", "--no-progress",
    ]  # fmt: skip
    with tfds.testing.mock_data(num_examples=40):
        assert study.main(argv) == 0
    folder = _folder(capsys.readouterr().out)
    summary = (folder / "summary.md").read_text()
    assert "resnet20" in summary and (folder / "path.png").exists()
    rows = _rows(folder)
    assert {r["level"] for r in rows if r.get("kind") == "summary"} == {0, 1}
