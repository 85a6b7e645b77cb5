"""The rethinking study: channel choice, Scratch-B budget, compaction, resume, CLI errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _channels, rethinking
from jaxprune import data, masks, models, results, structured, train


def test_scratch_b_budget_is_the_flops_ratio_to_a_whole_evaluation() -> None:
    for iterations, speedup, every in [(800, 3.96, 100), (800, 1.0, 100), (300, 15.5, 20)]:
        want = round(iterations * speedup / every) * every
        assert rethinking.scratch_b_iterations(iterations, speedup, every) == want
    assert rethinking.scratch_b_iterations(100, 0.01, 50) == 50  # never less than one evaluation


@pytest.mark.parametrize("iterations", [1000, 300, 7, 3])
def test_schedule_divides_by_ten_at_half_and_three_quarters(iterations: int) -> None:
    sched = _channels.schedule(iterations, 0.1)
    got = np.asarray(sched(jnp.arange(iterations)))
    # By hand: step t (from 0) runs at 0.1 before ⌊0.5 n⌋, 0.01 before ⌊0.75 n⌋, then 0.001.
    t = np.arange(iterations)
    want = np.where(t < iterations // 2, 0.1, np.where(t < (3 * iterations) // 4, 0.01, 0.001))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 rounding of 0.1·0.1^i
    constant = _channels.constant(iterations, 0.5)
    np.testing.assert_allclose(constant(jnp.arange(iterations)), 0.5, rtol=0)
    with pytest.raises(ValueError, match="milestones"):
        _channels.schedule(2, 0.1)  # too short for two milestones inside the run


def _vgg(seed: int = 0):
    return models.build("vgg11", input_shape=(8, 8, 1), num_classes=10, width=0.125, seed=seed)


def _random_params(params, seed: int):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), params)


def test_l1_keeps_the_largest_filters_of_each_layer_at_its_rate() -> None:
    net = _vgg()
    params = _random_params(models.stateful(net)[1], 1)
    cfg = dataclasses.replace(rethinking.quick(), l1_rates=((r"^conv[2-4]$", 0.0),))
    keep = rethinking.keep_vectors(cfg, "l1", 0.5, net, params)
    for g in structured.channel_groups(net):
        kernel = np.asarray(params[g.kernel[0]][g.kernel[1]][...])
        norms = np.abs(kernel).reshape(-1, g.size).sum(axis=0)
        n_keep = g.size if g.name in ("conv2", "conv3", "conv4") else g.size - round(0.5 * g.size)
        want = np.zeros(g.size, bool)
        want[np.argsort(-norms, kind="stable")[:n_keep]] = True
        np.testing.assert_array_equal(keep[g.name], want, err_msg=g.name)


def test_slimming_prunes_the_smallest_gammas_globally_keeping_one_per_layer() -> None:
    net = _vgg()
    params = models.stateful(net)[1]
    groups = structured.channel_groups(net)
    rng = np.random.default_rng(2)
    gammas = {g.name: rng.normal(size=g.size) for g in groups}
    gammas["conv5"] = gammas["conv5"] * 1e-3  # a layer that a global threshold would empty
    for g in groups:
        params[g.bn_scale[0]][g.bn_scale[1]][...] = jnp.asarray(gammas[g.name], jnp.float32)
    keep = rethinking.keep_vectors(rethinking.quick(), "slimming", 0.7, net, params)
    # Brute force: reserve each layer's largest |γ|, then keep the largest of the rest until
    # 30% of all channels are kept.
    total = sum(g.size for g in groups)
    n_keep = total - round(0.7 * total)
    flat = [(abs(gammas[n][k]), n, k) for n in gammas for k in range(len(gammas[n]))]
    reserved = {(n, int(np.argmax(np.abs(v)))) for n, v in gammas.items()}
    rest = sorted((x for x in flat if (x[1], x[2]) not in reserved), reverse=True)
    kept = reserved | {(n, k) for _, n, k in rest[: n_keep - len(reserved)]}
    for g in groups:
        want = np.array([(g.name, k) in kept for k in range(g.size)])
        np.testing.assert_array_equal(keep[g.name], want, err_msg=g.name)
    assert keep["conv5"].sum() == 1


def _tiny(**overrides) -> rethinking.Config:
    settings = {"width": 0.0625, "methods": ("l1",), "ratios": (0.5,), "iterations": 40,
                "finetune_iterations": 20, "eval_every": 20, "batch_size": 32}  # fmt: skip
    return dataclasses.replace(rethinking.quick(), **(settings | overrides))


# Every arm of two methods, twice (40-80 s on 2 cores): a `make test-slow` check.
@pytest.mark.slow
def test_end_to_end_pruned_arm_equals_the_masked_dense_model_and_resumes(tmp_path, monkeypatch):
    cfg = _tiny()
    folder = rethinking.run(cfg, out=str(tmp_path), progress=False)
    rows = results.Store(folder, cfg.to_json()).rows()
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in rethinking.ARMS}
    assert all(len(v) == cfg.seeds for v in by_arm.values())

    # Recompute the l1 channels from the saved dense weights, independently of the study.
    ds = data.load("digits")
    nets = _channels.build(cfg.model, ds, range(cfg.seeds), width=cfg.width)
    like = {"params": nets.params, "model_state": nets.model_state}
    dense = train.checkpoint.restore(folder / "state" / "dense_l1", like=like)
    net = nets.modules[0]
    groups = structured.channel_groups(net)
    dense_flops = _channels.flops(net, ds.input_shape)
    for i in range(cfg.seeds):
        params = _channels.ticket(dense["params"], i)
        state = _channels.ticket(dense["model_state"], i)
        keep = {}
        for g in groups:
            kernel = np.asarray(params[g.kernel[0]][g.kernel[1]][...])
            norms = np.abs(kernel).reshape(-1, g.size).sum(axis=0)
            keep[g.name] = np.zeros(g.size, bool)
            keep[g.name][np.argsort(-norms, kind="stable")[: g.size - round(0.5 * g.size)]] = True
        # "pruned" = the dense model under the element mask, evaluated with its running stats.
        masked = masks.apply(params, structured.element_mask(params, groups, keep))
        logits = nets.apply_fn(masked, state, jnp.asarray(ds.test.x), train=False)[0]
        acc = float(np.mean(np.argmax(np.asarray(logits), -1) == ds.test.y))
        assert by_arm["pruned"][i]["final_test_acc"] == pytest.approx(acc, abs=1e-6)
        small = structured.compact(net, keep)
        assert by_arm["fine_tune"][i]["params"] == structured.compacted_param_count(
            models.stateful(net)[1], groups, keep
        )
        speedup = dense_flops / _channels.flops(small.model, ds.input_shape)
        assert by_arm["scratch_b"][i]["speedup"] == pytest.approx(speedup)
        assert by_arm["scratch_b"][i]["iterations"] == rethinking.scratch_b_iterations(
            cfg.iterations, speedup, cfg.eval_every
        )
    assert {r["iterations"] for r in by_arm["fine_tune"]} == {cfg.finetune_iterations}
    assert {r["iterations"] for r in by_arm["scratch_e"]} == {cfg.iterations}
    assert all(r["final_test_acc"] > 0.2 for r in by_arm["unpruned"])  # it did learn

    # Started again: nothing is trained, and the rows are the same.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run trained again")

    monkeypatch.setattr(_channels, "fit", no_training)
    assert rethinking.run(cfg, out=str(tmp_path), progress=False) == folder
    assert results.Store(folder, cfg.to_json()).rows() == rows
    paths = rethinking.report(folder, cfg)
    assert paths["accuracy_l1"].exists()
    text = paths["summary"].read_text()
    assert "| l1 | 50% |" in text and "scratch-b" in text


@pytest.mark.slow
def test_slimming_seeds_with_different_widths_train_as_separate_programs(tmp_path) -> None:
    cfg = _tiny(methods=("slimming",), ratios=(0.6,), penalty=1e-2, seeds=2)
    folder = rethinking.run(cfg, out=str(tmp_path), progress=False)
    rows = results.Store(folder, cfg.to_json()).rows()
    for arm in ("fine_tune", "scratch_e", "scratch_b"):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        assert [r["seed"] for r in mine] == [0, 1]
    for r in rows:
        if r["arm"] != "unpruned":
            # 60% of all channels pruned globally: 40% kept, as counted over the groups.
            assert r["channels_kept"] == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--model", "lenet300_100"], "--model must be a model with batch norm"),
        (["--ratios", "0.5,1.0"], "--ratios must be numbers in (0, 1), got 1.0"),
        (["--ratios", "0.5,0.75,0.5"],
         "--ratios must be distinct numbers, each given once, got '0.5,0.75,0.5'."),
        (["--l1-rates", "conv(=0.5"],
         "--l1-rates pattern 'conv(' is not a valid regular expression (Python re): missing )"),
        (["--l1-rates", "conv1"], "argument --l1-rates: expected 'pattern=rate,...'"),
        (["--l1-rates", "^conv1$=0.5,^fc1$=0"], "--l1-rates pattern '^fc1$' matches no channel "
         "group; the channel groups are: conv1, conv2, conv3, conv4, conv5, conv6, conv7, conv8."),
        (["--min-keep", "9"], "--min-keep must be at most 8, the channels of the narrowest group "
         "(conv1 of vgg11 at width 0.125), got 9."),
        (["--iterations", "150"], "--iterations must be a multiple of --eval-every (100)"),
        (["--methods", "taylor"], "--methods must be a comma list from"),
        (["--momentum", "1.0"], "--momentum must be in [0, 1)"),
        (["--width", "inf"], "--width must be a finite number, got inf."),
        (["--data-dir", "/tmp"], "'digits' is built into jaxprune and reads no folder"),
    ],
)  # fmt: skip
def test_bad_settings_stop_before_training(argv, says, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        rethinking.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rethinking: error: ") and err.count("\n") == 1, err
    assert says in err
    assert not list(tmp_path.iterdir())
