"""Structured pruning: groups, scores, penalty, selection, masks and compaction (jaxprune.structured)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune import masks, metrics, models, structured


def _randomise(tree, seed: int, *, positive: bool = False):
    """Non-trivial values for every leaf (BN scales, biases, running stats)."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for leaf in leaves:
        a = rng.normal(size=np.shape(leaf)).astype(np.float32)
        out.append(jnp.asarray(np.abs(a) + 0.5 if positive else a * 0.5))
    return jax.tree.unflatten(treedef, out)


def _random_stats(model_state, seed: int):
    """Running means ~ N(0, 0.25), running variances in [0.5, ∞)."""

    def one(path, leaf):
        rng = np.random.default_rng(seed + hash(jax.tree_util.keystr(path)) % 1000)
        a = rng.normal(size=np.shape(leaf)).astype(np.float32)
        is_var = "var" in jax.tree_util.keystr(path)
        return jnp.asarray(np.abs(a) + 0.5 if is_var else 0.5 * a)

    return jax.tree_util.tree_map_with_path(one, model_state)


def _bn_params(params, seed: int):
    """Random BN scales and biases (not the init's constant 0.5 / 0)."""
    rng = np.random.default_rng(seed)

    def one(path, leaf):
        text = jax.tree_util.keystr(path)
        if "bn" in text and ("scale" in text or "bias" in text):
            return jnp.asarray(rng.normal(size=np.shape(leaf)).astype(np.float32))
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


CASES = {
    "mlp": (lambda: models.mlp((8, 8, 1), 10, hidden=(16, 12)), (8, 8, 1)),
    "conv4": (lambda: models.conv4((8, 8, 1), 10, width=0.125), (8, 8, 1)),
    "vgg16": (lambda: models.vgg16((8, 8, 3), 10, width=0.0625), (8, 8, 3)),
    "resnet20": (lambda: models.resnet20((8, 8, 3), 10, width=0.5), (8, 8, 3)),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    make, shape = CASES[request.param]
    net = make()
    apply_fn, params, model_state = models.stateful(net)
    params = _bn_params(params, 1)
    model_state = _random_stats(model_state, 2)
    groups = structured.channel_groups(net)
    scores = structured.channel_scores(params, groups, "l1")
    keep = structured.select_channels(scores, 0.5)
    x = jax.random.normal(jax.random.key(3), (6, *shape))
    small = structured.compact(net, keep, params=params, model_state=model_state)
    return request.param, net, apply_fn, params, model_state, groups, keep, x, small, shape


def test_compacted_outputs_equal_masked_outputs(case) -> None:
    name, _, apply_fn, params, state, groups, keep, x, small, _ = case
    mask = structured.element_mask(params, groups, keep)
    masked = masks.apply(params, mask)
    small_fn = jax.jit(models.stateful(small.model)[0], static_argnames="train")
    apply_fn = jax.jit(apply_fn, static_argnames="train")
    for train in (False, True):
        want, _ = apply_fn(masked, state, x, train=train)
        got, _ = small_fn(small.params, small.model_state, x, train=train)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{name} {train=}")
    # the pruning did something, and the compacted model is really smaller
    assert models.param_count(small.params) < models.param_count(params)
    dense, _ = apply_fn(params, state, x, train=False)
    assert not np.allclose(dense, want)


def test_masked_channel_outputs_exactly_zero_with_bn() -> None:
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    apply_fn, params, _ = models.stateful(net)
    params = _bn_params(params, 0)
    groups = structured.channel_groups(net)
    keep = {g.name: jnp.arange(g.size) != 0 for g in groups}  # drop channel 0 everywhere
    mask = structured.element_mask(params, groups, keep)
    assert not bool(mask["bn1"]["scale"][...][0]) and not bool(mask["bn1"]["bias"][...][0])
    assert not bool(mask["conv2"]["kernel"][...][:, :, 0].any())
    w = masks.apply(params, mask)
    graphdef, _, rest = nnx.split(net, nnx.Param, ...)
    masked_net = nnx.merge(graphdef, w, _random_stats(rest, 1))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    for train in (True, False):
        layer = nnx.view(masked_net, use_running_average=not train)
        h = layer.bn1(layer.conv1(x))
        assert float(jnp.abs(h[..., 0]).max()) == 0.0
        assert float(jnp.abs(h[..., 1:]).max()) > 0.0
    del apply_fn


def test_param_count_predicted_equals_compacted_and_metrics(case) -> None:
    _, _, _, params, _, groups, keep, _, small, _ = case
    predicted = structured.compacted_param_count(params, groups, keep)
    assert predicted == models.param_count(small.params)
    assert predicted == sum(metrics.layer_params(small.params).values())


def test_param_count_by_hand_mlp() -> None:
    net = models.mlp((8, 8, 1), 10, hidden=(16, 12))
    params = models.functional(net)[1]
    groups = structured.channel_groups(net)
    keep = {"fc1": jnp.arange(16) < 5, "fc2": jnp.arange(12) % 4 == 0}  # 5 and 3 kept
    hand = 64 * 5 + 5 + 5 * 3 + 3 + 3 * 10 + 10
    assert structured.compacted_param_count(params, groups, keep) == hand
    assert models.param_count(structured.compact(net, keep).params) == hand


def test_flops_of_compacted_equal_masked_count(case) -> None:
    _, _, apply_fn, params, state, groups, keep, _, small, shape = case
    small_fn = models.stateful(small.model)[0]
    got = metrics.layer_flops(
        lambda p, x: small_fn(p, small.model_state, x, train=False)[0], small.params, shape
    )
    mask = structured.element_mask(params, groups, keep)
    want = metrics.layer_flops(
        lambda p, x: apply_fn(p, state, x, train=False)[0], params, shape, mask=mask
    )
    assert sum(got.values()) == pytest.approx(sum(want.values()), rel=1e-9)


def test_flops_by_hand_conv4() -> None:
    net = models.conv4((8, 8, 1), 10, width=0.125)  # convs 8, 8, pool, 16, 16, pool; fc 32, 32
    groups = structured.channel_groups(net)
    kept = {"conv1": 3, "conv2": 5, "conv3": 7, "conv4": 2, "fc1": 9, "fc2": 4}
    keep = {g.name: jnp.arange(g.size) < kept[g.name] for g in groups}
    small = structured.compact(net, keep)
    fn, p, _ = models.functional(small.model)
    k = kept
    macs = (
        64 * 9 * (1 * k["conv1"] + k["conv1"] * k["conv2"])
        + 16 * 9 * (k["conv2"] * k["conv3"] + k["conv3"] * k["conv4"])
        + 2 * 2 * k["conv4"] * k["fc1"] + k["fc1"] * k["fc2"] + k["fc2"] * 10
    )  # fmt: skip
    assert sum(metrics.layer_flops(fn, p, (8, 8, 1)).values()) == 2 * macs
    assert small.model.fc1.kernel.shape == (2 * 2 * k["conv4"], k["fc1"])


def test_group_scores_match_numpy() -> None:
    net = models.conv2((8, 8, 1), 10, width=0.125)
    params = _randomise(models.functional(net)[1], 0)
    groups = structured.channel_groups(net)
    w = np.asarray(params["conv2"]["kernel"][...])
    l1 = structured.channel_scores(params, groups, "l1")["conv2"]
    l2 = structured.channel_scores(params, groups, "l2")["conv2"]
    for k in range(w.shape[-1]):
        np.testing.assert_allclose(l1[k], np.abs(w[..., k]).sum(), rtol=1e-5)
        np.testing.assert_allclose(l2[k], np.sqrt((w[..., k] ** 2).sum()), rtol=1e-5)
    with pytest.raises(ValueError, match="criterion='bn'"):
        structured.channel_scores(params, groups, "bn")


def test_bn_scores_are_abs_gamma() -> None:
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    params = _bn_params(models.stateful(net)[1], 4)
    s = structured.channel_scores(params, structured.channel_groups(net), "bn")
    np.testing.assert_array_equal(s["conv3"], np.abs(np.asarray(params["bn3"]["scale"][...])))


def test_slimming_penalty_in_optax_chain() -> None:
    s, lr, beta = 1e-4, 0.1, 0.9
    opt = optax.chain(structured.slimming_penalty(s), optax.sgd(lr, momentum=beta))
    params = {"bn1": {"scale": jnp.array([0.5, -2.0, 0.0]), "bias": jnp.array([1.0, -1.0, 0.0])},
              "conv1": {"kernel": jnp.array([[1.0, -1.0]])}}  # fmt: skip
    grads = [
        jax.tree.map(lambda a, i=i: jnp.full_like(a, 0.01 * (i + 1)), params) for i in range(2)
    ]
    state = opt.init(params)
    momentum = {"scale": np.zeros(3), "bias": np.zeros(3), "kernel": np.zeros((1, 2))}
    for g in grads:
        updates, state = opt.update(g, state, params)
        gamma = np.asarray(params["bn1"]["scale"])
        hand_g = {"scale": np.asarray(g["bn1"]["scale"]) + s * np.sign(gamma),
                  "bias": np.asarray(g["bn1"]["bias"]), "kernel": np.asarray(g["conv1"]["kernel"])}  # fmt: skip
        momentum = {k: beta * momentum[k] + hand_g[k] for k in momentum}
        np.testing.assert_allclose(updates["bn1"]["scale"], -lr * momentum["scale"], rtol=1e-6)
        np.testing.assert_allclose(updates["bn1"]["bias"], -lr * momentum["bias"], rtol=1e-6)
        np.testing.assert_allclose(updates["conv1"]["kernel"], -lr * momentum["kernel"], rtol=1e-6)
        params = optax.apply_updates(params, updates)
    with pytest.raises(ValueError, match="needs params"):
        opt.update(grads[0], opt.init(params))


def test_global_selection_keeps_min_keep_per_layer() -> None:
    scores = {"big": jnp.arange(10.0) + 100.0, "tiny": jnp.array([0.3, 0.1, 0.2, 0.4])}
    keep = structured.select_channels(scores, 0.7, scope="global", min_keep=2)
    # 14 channels, 70% pruned → 4 kept in all; a threshold alone would keep 4 of "big" and
    # empty "tiny": its best 2 are reserved first, and "big" fills the rest with its best 2
    np.testing.assert_array_equal(keep["tiny"], [True, False, False, True])
    np.testing.assert_array_equal(keep["big"], np.arange(10) >= 8)
    lw = structured.select_channels(scores, {"big": 0.5, "tiny": 0.99}, min_keep=1)
    assert int(lw["big"].sum()) == 5 and int(lw["tiny"].sum()) == 1
    with pytest.raises(ValueError, match="min_keep"):
        structured.select_channels(scores, 0.5, min_keep=0)


def test_emptying_a_layer_is_refused() -> None:
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    groups = structured.channel_groups(net)
    keep = {g.name: jnp.ones(g.size, bool) for g in groups}
    keep["conv4"] = jnp.zeros(groups[3].size, bool)
    with pytest.raises(ValueError, match=r"empties layer\(s\) \['conv4'\]"):
        structured.compact(net, keep)
    with pytest.raises(ValueError, match="conv4"):
        structured.compacted_param_count(models.stateful(net)[1], groups, keep)
    with pytest.raises(ValueError, match=r"keep\['conv1'\] must have shape"):
        structured.compact(net, {**keep, "conv1": jnp.ones(3, bool)})


def test_scoring_and_selection_under_jit() -> None:
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    params = _bn_params(models.stateful(net)[1], 5)
    groups = structured.channel_groups(net)
    traces = []

    @jax.jit
    def pick(p, rate):
        traces.append(1)
        keep = structured.select_channels(
            structured.channel_scores(p, groups, "bn"), rate, scope="global"
        )
        return keep, structured.element_mask(p, groups, keep)

    eager = structured.select_channels(structured.channel_scores(params, groups, "bn"), 0.7,
                                       scope="global")  # fmt: skip
    for rate in (0.7, 0.5):
        keep, mask = pick(params, jnp.float32(rate))
        if rate == 0.7:
            for n in eager:
                np.testing.assert_array_equal(keep[n], eager[n])
        total = sum(g.size for g in groups)
        assert int(sum(k.sum() for k in keep.values())) == max(
            total - int(np.floor(rate * total + 0.5)), len(groups)
        )
        masks.validate(mask, params)
    assert len(traces) == 1


def test_scratch_is_the_pruned_architecture_drawn_like_a_model_built_by_hand() -> None:
    """Li et al.'s VGG-16-A is VGG-16 with conv1 and conv8-13 halved: pruning VGG-16 to it and
    re-initialising (Scratch-E/B) must give exactly ``models.build("vgg16_a")`` at the same seed,
    with He fan-out kernels at the *smaller* shapes and fresh BN statistics."""
    net = models.build("vgg16", input_shape=(32, 32, 3), num_classes=10, width=0.25, seed=0)
    groups = structured.channel_groups(net)
    half = {"conv1"} | {f"conv{i}" for i in range(8, 14)}
    keep = {
        g.name: jnp.arange(g.size) < (g.size // 2 if g.name in half else g.size) for g in groups
    }
    fresh = models.stateful(structured.scratch(net, keep, seed=3))
    ref = models.stateful(
        models.build("vgg16_a", input_shape=(32, 32, 3), num_classes=10, width=0.25, seed=3)
    )
    assert jax.tree.structure(fresh[1]) == jax.tree.structure(ref[1])
    for a, b in zip(jax.tree.leaves(fresh[1:]), jax.tree.leaves(ref[1:]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    compacted = structured.compact(net, keep)
    assert models.param_count(fresh[1]) == models.param_count(compacted.params)
    # A different seed draws different weights of the same shapes.
    other = models.stateful(structured.scratch(net, keep, seed=4))[1]
    k3, k4 = fresh[1]["conv9"]["kernel"][...], other["conv9"]["kernel"][...]
    assert k3.shape == k4.shape == (3, 3, 64, 64) and not np.allclose(k3, k4)


@pytest.mark.parametrize("criterion", structured.CRITERIA)
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_every_criterion_and_scope_under_jit_vmap_over_tickets(criterion, scope) -> None:
    """Channel scores and selection of 3 stacked tickets in one jit∘vmap equal each ticket alone."""
    net = models.vgg11((8, 8, 3), 10, width=0.0625)
    groups = structured.channel_groups(net)
    tickets = [_bn_params(_randomise(models.stateful(net)[1], 10 + t), 20 + t) for t in range(3)]

    def pick(p):
        # taylor reads gradients: the params themselves stand in for them (any tree of that shape)
        grads = p if criterion == "taylor" else None
        scores = structured.channel_scores(p, groups, criterion, grads=grads)
        keep = structured.select_channels(scores, 0.6, scope=scope)
        return scores, keep, structured.element_mask(p, groups, keep)

    stacked = jax.jit(jax.vmap(pick))(jax.tree.map(lambda *a: jnp.stack(a), *tickets))
    for t, p in enumerate(tickets):
        alone = pick(p)
        for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(alone), strict=True):
            # Scores: float sums reassociate under jit; keep vectors and masks: exactly equal.
            np.testing.assert_allclose(np.asarray(got)[t], np.asarray(want), rtol=1e-6)
