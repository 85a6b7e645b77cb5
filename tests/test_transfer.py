"""Ticket transfer: data views against numpy, transplant / random_like counts, load_level vs rows."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune import data, masks, models, sweep, tickets, train, transfer

# --- data views ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_class_subset_equals_a_numpy_filter_in_every_split(digits):
    classes = [7, 2, 5]  # not sorted: the labels follow the order given
    sub = data.class_subset(digits, classes)
    assert sub.name == "digits[7,2,5]" and sub.num_classes == 3
    assert sub.input_shape == digits.input_shape
    for split in ("train", "val", "test"):
        x, y = getattr(digits, split)
        keep = np.isin(y, classes)
        want_y = np.array([classes.index(int(v)) for v in y[keep]], np.int32)
        got = getattr(sub, split)
        np.testing.assert_array_equal(got.x, x[keep])
        np.testing.assert_array_equal(got.y, want_y)
        assert got.y.dtype == np.int32 and len(got.y) == int(keep.sum()) > 0
    assert data.class_subset(digits, range(5, 10)).name == "digits[5-9]"


@pytest.mark.parametrize("classes", [[], [1, 1], [3, 10], [-1], ["1"], [True]])
def test_class_subset_refuses_bad_classes(digits, classes):
    with pytest.raises(ValueError, match="classes must"):
        data.class_subset(digits, classes)


def test_permute_pixels_is_one_fixed_invertible_permutation_of_every_split():
    ds = data.load("synthetic")  # continuous random pixels: every column is unique
    out = data.permute_pixels(ds, 3)
    n = int(np.prod(ds.input_shape))
    flat = ds.train.x.reshape(len(ds.train.x), n)
    got = out.train.x.reshape(len(flat), n)
    # Recover the permutation from the data: output column p is input column perm[p].
    match = (got[:, :, None] == flat[:, None, :]).all(axis=0)
    assert (match.sum(axis=1) == 1).all()
    perm = match.argmax(axis=1)
    assert sorted(perm.tolist()) == list(range(n)) and (perm != np.arange(n)).any()
    np.testing.assert_array_equal(perm, np.random.default_rng(3).permutation(n))  # as documented
    inverse = np.argsort(perm)
    for split in ("train", "val", "test"):
        x, y = getattr(ds, split)
        px = getattr(out, split).x.reshape(len(x), n)
        np.testing.assert_array_equal(px, x.reshape(len(x), n)[:, perm])
        np.testing.assert_array_equal(px[:, inverse], x.reshape(len(x), n))
        np.testing.assert_array_equal(getattr(out, split).y, y)
    assert out.name == "synthetic[permuted:3]" and out.input_shape == ds.input_shape
    other = data.permute_pixels(ds, 4).train.x
    assert not np.array_equal(other, out.train.x)
    np.testing.assert_array_equal(data.permute_pixels(ds, 3).train.x, out.train.x)


def test_permute_pixels_moves_the_channels_of_a_pixel_together():
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3)
    split = data.Split(x, np.zeros(2, np.int32))
    ds = data.Dataset("toy", split, split, split, num_classes=1, input_shape=(2, 3, 3))
    px = data.permute_pixels(ds, 0).train.x.reshape(2, 6, 3)
    perm = np.random.default_rng(0).permutation(6)
    np.testing.assert_array_equal(px, x.reshape(2, 6, 3)[:, perm])


def test_task_specs_compose_the_views(digits):
    low = data.task("digits:0-4")
    want = data.class_subset(digits, range(5))
    assert low.name == "digits[0-4]" and low.num_classes == 5
    np.testing.assert_array_equal(low.train.x, want.train.x)
    np.testing.assert_array_equal(low.test.y, want.test.y)
    perm = data.task("digits:permuted")
    np.testing.assert_array_equal(perm.val.x, data.permute_pixels(digits, 0).val.x)
    assert data.task("digits").name == "digits"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "spec must"),
        ("imagenet", "unknown image dataset"),
        ("pydoc", "unknown image dataset"),
        ("digits:5-3", "a ≤ b"),
        ("digits:0-10", "within"),
        ("digits:odd", "neither"),
        ("cifar100:0-100", "within"),  # checked before the (unprepared) set is read
    ],
)
def test_task_refuses_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        data.task(spec)


def test_task_keeps_the_not_prepared_error_of_tfds_sets(tmp_path):
    with pytest.raises(data.DatasetNotAvailableError, match="not prepared"):
        data.task("mnist:0-4", data_dir=tmp_path)


# --- transplant and random_like --------------------------------------------------------------


def _tree(seed, out_classes, *, n_in=6):
    # numpy, not jax: eager jax would compile a program per operation and shape.
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.normal(size=shape).astype(np.float32)

    return {
        "fc": {"kernel": draw(n_in, 5), "bias": draw(5)},
        "out": {"kernel": draw(5, out_classes), "bias": draw(out_classes)},
    }


def _mask(seed, params, density=0.4):
    rng = np.random.default_rng(seed + 1000)
    return jax.tree.map(
        lambda p: rng.uniform(size=p.shape) < density if p.ndim >= 2 else np.ones(p.shape, bool),
        params,
    )


def _stack(trees):
    return jax.tree.map(lambda *a: np.stack(a), *trees)


def _carried(kept: int, n_source: int, n_target: int) -> int:
    """The count at the source density, rounded half up as select.keep_count, in exact rationals."""
    pruned = (n_source - kept) * n_target
    return n_target - math.floor(pruned / n_source + 0.5)


def _check_transplant(mask, src, tgt, params, new):
    np.testing.assert_array_equal(params["fc"]["kernel"], src["fc"]["kernel"])
    np.testing.assert_array_equal(params["fc"]["bias"], src["fc"]["bias"])
    np.testing.assert_array_equal(new["fc"]["kernel"], mask["fc"]["kernel"])
    np.testing.assert_array_equal(params["out"]["kernel"], tgt["out"]["kernel"])
    np.testing.assert_array_equal(params["out"]["bias"], tgt["out"]["bias"])
    kept = int(np.sum(mask["out"]["kernel"]))
    assert int(np.sum(new["out"]["kernel"])) == _carried(kept, 5 * 10, 5 * 3)
    assert bool(np.all(new["out"]["bias"]))  # density 1 carries to density 1


def test_transplant_keeps_the_source_and_refreshes_the_fresh_leaves():
    src, tgt = _tree(0, 10), _tree(1, 3)
    mask = _mask(2, src)
    params, new = transfer.transplant(mask, src, tgt, fresh=r"\['out'\]", key=jax.random.key(3))
    _check_transplant(mask, src, tgt, params, new)
    # Different keys draw different fresh masks (of the same count).
    _, again = transfer.transplant(mask, src, tgt, fresh="out", key=jax.random.key(4))
    assert int(again["out"]["kernel"].sum()) == int(new["out"]["kernel"].sum())
    assert not np.array_equal(again["out"]["kernel"], new["out"]["kernel"])


def test_transplant_under_jit_and_jit_vmap_over_tickets():
    src = _stack([_tree(i, 10) for i in range(3)])
    tgt = _stack([_tree(10 + i, 3) for i in range(3)])
    mask = _stack([_mask(i, _tree(i, 10), density=0.5) for i in range(3)])
    step = jax.jit(jax.vmap(functools.partial(transfer.transplant, fresh="out")))
    params, new = step(mask, src, tgt, key=jax.random.split(jax.random.key(7), 3))
    one = jax.jit(functools.partial(transfer.transplant, fresh="out"))
    for i in range(3):
        row = functools.partial(jax.tree.map, lambda a, i=i: a[i])
        _check_transplant(row(mask), row(src), row(tgt), row(params), row(new))
        p1, m1 = one(row(mask), row(src), row(tgt), key=jax.random.key(i))
        _check_transplant(row(mask), row(src), row(tgt), p1, m1)


def test_transplant_of_a_same_shape_fresh_leaf_keeps_the_exact_count():
    src, tgt = _tree(0, 10), _tree(1, 10)
    mask = _mask(2, src, density=0.37)
    params, new = transfer.transplant(mask, src, tgt, fresh=["fc", "out"], key=jax.random.key(3))
    for layer in ("fc", "out"):
        assert int(new[layer]["kernel"].sum()) == int(mask[layer]["kernel"].sum())
        np.testing.assert_array_equal(params[layer]["kernel"], tgt[layer]["kernel"])


def test_transplant_refuses_a_changed_input_shape_and_bad_arguments():
    src, tgt = _tree(0, 10), _tree(1, 10, n_in=9)
    mask = masks.ones(src)
    with pytest.raises(ValueError, match=r"\['fc'\]\['bias'\]|\['fc'\]\['kernel'\]") as err:
        transfer.transplant(mask, src, tgt, fresh="out", key=jax.random.key(0))
    assert "[6, 5]" in str(err.value) and "[9, 5]" in str(err.value)
    assert "adapter" in str(err.value)
    same = _tree(1, 10)
    with pytest.raises(ValueError, match="matches no leaf"):
        transfer.transplant(mask, src, same, fresh="head", key=jax.random.key(0))
    with pytest.raises(ValueError, match="structure"):
        transfer.transplant(mask, src, {"fc": same["fc"]}, fresh=None, key=jax.random.key(0))
    with pytest.raises(ValueError, match="bool"):
        transfer.transplant(
            jax.tree.map(lambda m: m.astype(jnp.float32), mask), src, same, fresh=None,
            key=jax.random.key(0),
        )  # fmt: skip


def test_random_like_keeps_every_layer_count_under_jit_vmap():
    mask = _stack([_mask(i, _tree(i, 10), density=0.3) for i in range(4)])
    out = jax.jit(jax.vmap(transfer.random_like))(mask, jax.random.split(jax.random.key(9), 4))
    for layer in ("fc", "out"):
        got = np.asarray(out[layer]["kernel"]).reshape(4, -1).sum(1)
        np.testing.assert_array_equal(got, np.asarray(mask[layer]["kernel"]).reshape(4, -1).sum(1))
        assert not np.array_equal(out[layer]["kernel"], mask[layer]["kernel"])
        np.testing.assert_array_equal(out[layer]["bias"], mask[layer]["bias"])


def test_random_like_follows_the_prunable_spec_and_draws_positions_uniformly():
    mask = _mask(0, _tree(0, 10), density=0.5)
    only_out = transfer.random_like(mask, jax.random.key(1), prunable="out")
    np.testing.assert_array_equal(only_out["fc"]["kernel"], mask["fc"]["kernel"])
    assert int(only_out["out"]["kernel"].sum()) == int(mask["out"]["kernel"].sum())
    # 3 kept of 10, 4000 draws: each position kept with frequency 0.3, std sqrt(.21/4000) ≈ 0.007;
    # a margin of 0.04 is over 5 standard deviations.
    leaf = {"w": jnp.arange(10).reshape(2, 5) < 3}
    draws = jax.jit(jax.vmap(transfer.random_like, in_axes=(None, 0)))(
        leaf, jax.random.split(jax.random.key(2), 4000)
    )["w"]
    freq = np.asarray(draws).reshape(4000, 10).mean(0)
    assert np.all(np.abs(freq - 0.3) < 0.04), freq


# --- load_level ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    nets = [
        models.functional(models.build("mlp", input_shape=digits.input_shape, num_classes=10,
                                       seed=s, hidden=(8,)))
        for s in range(2)
    ]  # fmt: skip
    theta0 = train.stack([n[1] for n in nets])
    # Three tickets on two seeds: per-ticket results differ in length from the per-seed stack.
    table = tickets.table(
        [tickets.Ticket(1), tickets.Ticket(0), tickets.Ticket(1, "random")], key=jax.random.key(0)
    )
    out = sweep.run_levels(
        tmp_path_factory.mktemp("run"), table, nets[0][0], theta0, digits,
        optimizer=optax.adam(1e-2), levels=2, rates=0.5, iterations=10, batch_size=64,
        eval_every=10, key=jax.random.key(1), progress=False,
    )  # fmt: skip
    return out, nets, theta0


def _rows(out, level):
    return sorted((r for r in out.rows if r["level"] == level), key=lambda r: r["ticket"])


def test_load_level_returns_what_the_rows_say(run, digits):
    out, nets, theta0 = run
    apply_fn, params = nets[0][0], nets[0][1]
    seeds = [1, 0, 1]
    dense = sweep.load_level(out.path, 0, params)
    assert sorted(dense) == ["final", "theta_k"]
    for i, s in enumerate(seeds):  # rewind_iteration=0: θ_k is the dense init of the seed
        for a, b in zip(jax.tree.leaves(dense["theta_k"]), jax.tree.leaves(theta0), strict=True):
            np.testing.assert_array_equal(a[i], b[s])
    previous = None
    steps = train.make_steps(apply_fn, optax.adam(1e-2))
    for level in (1, 2):
        got = sweep.load_level(out.path, level, params)
        rows = _rows(out, level)
        np.testing.assert_allclose(
            sweep.prunable_density(got["mask"]), [r["density"] for r in rows], rtol=0, atol=1e-12
        )
        for a, b in zip(jax.tree.leaves(got["theta_k"]), jax.tree.leaves(dense["theta_k"]),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, b)
        for w, m in zip(jax.tree.leaves(got["final"]), jax.tree.leaves(got["mask"]), strict=True):
            assert not np.any(np.asarray(w)[~np.asarray(m)])  # zero mode: pruned weights are 0
        if previous is not None:  # IMP masks only shrink
            for new, old in zip(jax.tree.leaves(got["mask"]), jax.tree.leaves(previous),
                                strict=True):  # fmt: skip
                assert not np.any(np.asarray(new) & ~np.asarray(old))
        previous = got["mask"]
        # The trained weights reproduce the rows' final test accuracy. Another program evaluates
        # them (argmax over logits): allow one example of the 400 to fall on the other side of a
        # near tie.
        acc = np.asarray(
            train.evaluate(steps, got["final"], got["mask"], None, *digits.test, tickets=True)[1]
        )
        np.testing.assert_allclose(acc, [r["final_test_acc"] for r in rows], atol=1.01 / 400)
    stacked = sweep.load_level(out.path, 2, theta0)  # the stack run_levels took works as like
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_level_refuses_an_unfinished_level_and_a_wrong_like(run, tmp_path):
    out, nets, _ = run
    with pytest.raises(
        ValueError, match=r"level 3 .* not finished \(finished levels: \[0, 1, 2\]\)"
    ):
        sweep.load_level(out.path, 3, nets[0][1])
    with pytest.raises(ValueError, match="holds no run"):
        sweep.load_level(tmp_path, 0, nets[0][1])
    with pytest.raises(ValueError, match="level must be"):
        sweep.load_level(out.path, -1, nets[0][1])
    wrong = jax.tree.map(lambda a: np.zeros((*a.shape[:-1], a.shape[-1] + 1), a.dtype), nets[0][1])
    with pytest.raises(ValueError, match="shape"):
        sweep.load_level(out.path, 1, wrong)
