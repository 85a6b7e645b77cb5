"""Training FLOPs of the sparse-training methods against counts made by hand and by a step loop.

The per-layer forward FLOPs of LeNet-300-100 on 8×8 digits are 2·(64·300), 2·(300·100),
2·(100·10); every total is recomputed here step by step with the method's update rule written out
again (not the module's helpers), or by hand for small cases.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from jaxprune import metrics, models
from jaxprune.sparse_training import flops

FC1, FC2, OUT = "['fc1']['kernel'].value", "['fc2']['kernel'].value", "['out']['kernel'].value"
HAND = {FC1: 2 * 64 * 300, FC2: 2 * 300 * 100, OUT: 2 * 100 * 10}
DENS = {FC1: 0.05, FC2: 0.2, OUT: 1.0}
F_D = sum(HAND.values())
F_S = 2 * (64 * 300 * 0.05 + 300 * 100 * 0.2 + 100 * 10)


@pytest.fixture(scope="module")
def lenet_flops() -> dict[str, float]:
    net = models.build("lenet300_100", input_shape=(8, 8, 1), num_classes=10)
    apply_fn, params, _ = models.functional(net)
    return metrics.layer_flops(apply_fn, params, (8, 8, 1))


def test_lenet_layer_flops_are_the_hand_counts(lenet_flops):
    assert lenet_flops == HAND


def test_sparse_flops_weights_each_layer_by_its_density(lenet_flops):
    assert flops.sparse_flops(lenet_flops, DENS) == pytest.approx(F_S)
    # A params-shaped pytree of densities gives the same (biases are not in layer_flops).
    tree = {
        "fc1": {"kernel": 0.05, "bias": 1.0},
        "fc2": {"kernel": 0.2, "bias": 1.0},
        "out": {"kernel": 1.0, "bias": 1.0},
    }
    keys = {"['fc1']['kernel']": 2 * 64 * 300, "['fc2']['kernel']": 2 * 300 * 100,
            "['out']['kernel']": 2 * 100 * 10}  # fmt: skip
    assert flops.sparse_flops(keys, tree) == pytest.approx(F_S)
    # The no-param ops stay dense.
    assert flops.sparse_flops({**HAND, metrics.NO_PARAM: 7}, DENS) == pytest.approx(F_S + 7)


@pytest.mark.parametrize(
    ("name", "per_step"),
    [("dense", 3 * F_D), ("static", 3 * F_S), ("set", 3 * F_S), ("ste", F_S + 2 * F_D),
     ("sr_ste", F_S + 2 * F_D)],
)  # fmt: skip
def test_constant_cost_methods(name, per_step):
    assert flops.training_flops(name, HAND, DENS, iterations=37) == pytest.approx(37 * per_step)


def _rigl_by_loop(iterations: int, delta_t: int, begin: int, end: int) -> float:
    total = 0.0
    for t in range(iterations):
        update = 0 < t < end and t >= begin and t % delta_t == 0
        total += (2 * F_S + F_D) if update else 3 * F_S
    return total


@pytest.mark.parametrize(
    ("iterations", "delta_t", "begin", "end"),
    [(1000, 100, 0, 750), (1000, 100, 0, 1000), (999, 7, 30, 501), (50, 100, 0, 50), (10, 1, 3, 9)],
)
def test_rigl_pays_a_dense_weight_gradient_at_each_update_step(iterations, delta_t, begin, end):
    got = flops.training_flops(
        "rigl", HAND, DENS, iterations=iterations, delta_t=delta_t, begin=begin, end=end
    )
    assert got == pytest.approx(_rigl_by_loop(iterations, delta_t, begin, end))


def test_rigl_paper_setting_by_hand():
    # T = 1000, ΔT = 100, T_end = 750: updates at 100, …, 700 (7 of them).
    got = flops.training_flops("rigl", HAND, DENS, iterations=1000, delta_t=100, end=750)
    assert got == pytest.approx(993 * 3 * F_S + 7 * (2 * F_S + F_D))
    # end defaults to the whole run: updates at 100, …, 900.
    assert flops.training_flops("rigl", HAND, DENS, iterations=1000) == pytest.approx(
        991 * 3 * F_S + 9 * (2 * F_S + F_D)
    )


def _erk_like(s: float) -> dict[str, float]:
    """A non-uniform allocation, dense at s = 0: the output layer denser, the first sparser."""
    d = 1.0 - s
    return {FC1: d**1.5, FC2: d, OUT: min(1.0, 3 * d)}


@pytest.mark.parametrize(
    ("iterations", "delta_t", "begin", "end"),
    [(100, 10, 0, 60), (100, 7, 13, 80), (40, 5, 10, 39), (30, 100, 0, 20)],
)
def test_gradual_follows_the_cubic_schedule_step_by_step(iterations, delta_t, begin, end):
    s_f = 0.9
    total, density_now = 0.0, dict.fromkeys(HAND, 1.0)
    for t in range(iterations):
        total += 3 * sum(HAND[p] * density_now[p] for p in HAND)
        # The update after step t: on the ΔT grid from t0, and at t1 itself.
        if begin <= t <= end and ((t - begin) % delta_t == 0 or t == end):
            progress = min(max((t - begin) / (end - begin), 0.0), 1.0)
            density_now = _erk_like(s_f * (1 - (1 - progress) ** 3))
    got = flops.training_flops(
        "gradual", HAND, _erk_like, iterations=iterations, delta_t=delta_t, begin=begin,
        end=end, sparsity=s_f,
    )  # fmt: skip
    assert got == pytest.approx(total, rel=1e-6)  # the schedule is float32 in jnp


def test_gradual_costs_between_static_and_dense():
    kw = {"iterations": 1000, "delta_t": 100, "end": 500}
    uniform = lambda s: dict.fromkeys(HAND, 1.0 - s)  # noqa: E731
    gradual = flops.training_flops("gradual", HAND, uniform, sparsity=0.9, **kw)
    static = flops.training_flops("static", HAND, uniform(0.9), **kw)
    dense = flops.training_flops("dense", HAND, {}, **kw)
    assert static < gradual < dense


def test_a_method_object_is_read_by_its_name():
    m = types.SimpleNamespace(name="set")
    assert flops.training_flops(m, HAND, DENS, iterations=3) == pytest.approx(9 * F_S)


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: flops.training_flops("lottery", HAND, DENS, iterations=3), "method"),
        (lambda: flops.training_flops("static", HAND, DENS, iterations=0), "iterations"),
        (lambda: flops.training_flops("rigl", HAND, DENS, iterations=9, delta_t=0), "delta_t"),
        (lambda: flops.training_flops("gradual", HAND, _erk_like, iterations=9, sparsity=0.5),
         "end"),
        (lambda: flops.training_flops("gradual", HAND, DENS, iterations=9, end=5, sparsity=0.5),
         "densities"),
        (lambda: flops.training_flops("gradual", HAND, _erk_like, iterations=9, end=5,
                                      sparsity=1.0), "sparsity"),
        (lambda: flops.training_flops("static", HAND, _erk_like, iterations=9), "densities"),
        (lambda: flops.sparse_flops(HAND, {FC1: 0.5}), "densities"),
        (lambda: flops.sparse_flops(HAND, {**DENS, FC1: 1.5}), "densities"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(call, says):
    with pytest.raises(ValueError, match=says):
        call()


def test_by_path_of_a_dict_of_paths_and_of_a_pytree_agree():
    tree = {"a": {"kernel": np.float32(0.5)}, "b": {"kernel": 0.25}}
    assert flops.by_path(tree) == {"['a']['kernel']": 0.5, "['b']['kernel']": 0.25}
    assert flops.by_path(flops.by_path(tree)) == flops.by_path(tree)
