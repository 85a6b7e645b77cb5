"""On-device augmentation (crops after padding, flips) against numpy, inside the training engine
(per step, per ticket, resumed runs), and per-channel normalisation against numpy."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from jaxprune import data, masks, train
from jaxprune.data import augment as augment_lib
from jaxprune.train import loop

SHAPE = (6, 5, 2)  # H ≠ W, two channels: a swapped axis or channel would show
N_OUT = 3


def reference(aug: data.Augment, key: jax.Array, x: np.ndarray) -> np.ndarray:
    """The crop and flip by numpy: pad with the fill, slice at the drawn offsets, mirror."""
    dy, dx, flip = map(np.asarray, augment_lib.draws(aug, key, x.shape[0]))
    p, (_, h, w, c) = aug.crop_padding, x.shape
    fill = np.broadcast_to(np.asarray(aug.fill, x.dtype), (c,))
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        padded = np.stack(
            [np.pad(x[b, ..., ch], p, constant_values=fill[ch]) for ch in range(c)], axis=-1
        )
        crop = padded[dy[b] : dy[b] + h, dx[b] : dx[b] + w]
        out[b] = np.flip(crop, axis=1) if flip[b] else crop
    return out


@pytest.mark.parametrize(
    "aug",
    [
        data.Augment(),
        data.Augment(1, flip=False),
        data.Augment(0, flip=True),
        data.Augment(2, fill=(-1.5, 0.25)),
        data.Augment(3, fill=7.0),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_crops_and_flips_equal_numpy(aug: data.Augment, seed: int) -> None:
    h, w = (9, 7) if aug.crop_padding >= 4 else SHAPE[:2]  # padding 4 needs an image above 4
    x = np.random.default_rng(seed).normal(size=(64, h, w, 2)).astype(np.float32)
    key = jax.random.key(seed)
    got = jax.jit(data.augment_batch, static_argnums=0)(aug, key, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got), reference(aug, key, x))
    dy, dx, flip = map(np.asarray, augment_lib.draws(aug, key, 64))
    # The draws vary (so the comparison above covers several offsets and both flips) ...
    if aug.crop_padding:
        assert len(set(dy.tolist())) > 1 and len(set(dx.tolist())) > 1
    assert flip.any() == aug.flip and (not flip.all())


def test_identity_returns_the_batch_itself() -> None:
    x = jnp.ones((2, 4, 4, 1))
    assert data.augment_batch(data.Augment(0, False), jax.random.key(0), x) is x


def test_per_ticket_keys_draw_different_augmentations_under_jit_vmap() -> None:
    aug = data.Augment(2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, *SHAPE)).astype(np.float32))
    many = jax.jit(jax.vmap(lambda k: data.augment_batch(aug, k, x)))
    keys = jax.random.split(jax.random.key(1), 3)
    out = np.asarray(many(keys))
    for i in range(3):  # each ticket's batch is its own key's, as numpy computes it
        np.testing.assert_array_equal(out[i], reference(aug, keys[i], np.asarray(x)))
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
    same = np.asarray(many(jnp.stack([keys[0], keys[0], keys[0]])))
    np.testing.assert_array_equal(same[1], same[0])
    np.testing.assert_array_equal(same[2], same[0])


def test_offsets_are_uniform_and_flips_fair() -> None:
    p, n = 4, 36_000
    dy, dx, flip = map(np.asarray, augment_lib.draws(data.Augment(p), jax.random.key(7), n))
    # Each of the 2p + 1 = 9 offsets has probability 1/9: its count is binomial with sd
    # sqrt(n/9·8/9) ≈ 59.6; 5 sd (≈ 298) is exceeded with probability < 1e-6 per count.
    for offsets in (dy, dx):
        assert offsets.min() == 0 and offsets.max() == 2 * p
        counts = np.bincount(offsets, minlength=2 * p + 1)
        np.testing.assert_allclose(counts, n / 9, atol=5 * np.sqrt(n / 9 * 8 / 9))
    # Rows and columns are drawn independently: each of the 81 pairs has probability 1/81
    # (sd ≈ 20.9; 5 sd).
    joint = np.bincount(dy * 9 + dx, minlength=81)
    np.testing.assert_allclose(joint, n / 81, atol=5 * np.sqrt(n / 81 * 80 / 81))
    # Flips: binomial(n, 1/2), sd 0.5·sqrt(n) = 94.9; 5 sd.
    assert abs(flip.sum() - n / 2) < 5 * 0.5 * np.sqrt(n)
    # ... and the flip is drawn apart from the offsets: the mean offset is the same either way.
    assert abs(dx[flip].mean() - dx[~flip].mean()) < 0.1  # sd of each mean ≈ 2.58/sqrt(n/2)


# ---- inside the training engine ------------------------------------------------------------------


def init_mlp(seed: int) -> dict:
    k1, k2 = jax.random.split(jax.random.key(seed))
    g = jax.nn.initializers.glorot_normal()
    n_in = int(np.prod(SHAPE))
    return {
        "fc": {"kernel": g(k1, (n_in, 8)), "bias": jnp.zeros(8)},
        "out": {"kernel": g(k2, (8, N_OUT)), "bias": jnp.zeros(N_OUT)},
    }


def apply_mlp(p: dict, x: jax.Array) -> jax.Array:
    # tanh, not ReLU: the runs compared below are compiled differently (a Python loop of steps
    # against a scan; chunks of other lengths), and ReLU's kink would turn a rounding difference
    # in a pre-activation into a different gradient (a discrete decision).
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["fc"]["kernel"] + p["fc"]["bias"][None])
    return h @ p["out"]["kernel"] + p["out"]["bias"][None]


def image_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    return x, rng.integers(0, N_OUT, n).astype(np.int32)


OPT = optax.sgd(optax.linear_schedule(0.1, 0.02, 12), momentum=0.9)  # counts in the opt state
STEPS = train.make_steps(apply_mlp, OPT)


def _setup(seed: int = 0) -> tuple[train.TrainState, dict]:
    params = init_mlp(seed)
    return STEPS.init(params), masks.ones(params)


def _fit(state, mask, x, y, **kw):
    kw = {"batch_size": 8, "eval_every": 4, "data_key": jax.random.key(3), "progress": False} | kw
    return train.fit(STEPS, state, mask, (x, y), (x[:8], y[:8]), (x[:8], y[:8]), **kw)


def test_fit_augments_step_t_with_fold_in_of_t_like_a_python_loop() -> None:
    """The engine's batches are the documented ones: ``perm_e`` slices, augmented with the draws
    of ``fold_in(augment_key, t)``; checked by a Python loop of single jitted steps."""
    x, y = image_data(40, 0)  # 5 batches an epoch: 12 steps cross two epoch boundaries
    aug, data_key, aug_key = data.Augment(2), jax.random.key(3), jax.random.key(9)
    state, mask = _setup()
    got, hist = _fit(state, mask, x, y, iterations=12, augment=aug, augment_key=aug_key)
    np.testing.assert_array_equal(hist.iteration, [4, 8, 12])
    step = jax.jit(STEPS.train_step)
    ref = state
    for t in range(12):
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(data_key, t // 5), 40))
        idx = perm[(t % 5) * 8 : (t % 5 + 1) * 8]
        xb = reference(aug, jax.random.fold_in(aug_key, t), x[idx])
        ref, _ = step(ref, mask, (jnp.asarray(xb), jnp.asarray(y[idx])))
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The default key is fold_in(data_key, AUGMENT_STREAM).
    default, _ = _fit(state, mask, x, y, iterations=12, augment=aug)
    derived = jax.random.fold_in(data_key, loop.AUGMENT_STREAM)
    explicit, _ = _fit(state, mask, x, y, iterations=12, augment=aug, augment_key=derived)
    for a, b in zip(jax.tree.leaves(default.params), jax.tree.leaves(explicit.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(default.params["fc"]["kernel"], got.params["fc"]["kernel"], atol=1e-4)


@pytest.mark.parametrize("tickets", [False, True])
def test_resumed_fit_equals_uninterrupted_fit_with_augmentation(tickets: bool) -> None:
    x, y = image_data(40, 1)
    aug = data.Augment(2)
    state, mask = _setup(1)
    kw: dict = {"augment": aug}
    if tickets:  # two tickets with their own data order and a shared augmentation
        state, mask = train.stack([state, _setup(2)[0]]), train.stack([mask, mask])
        kw |= {"tickets": True, "data_key": jax.random.split(jax.random.key(4), 2)}
        kw["augment_key"] = jax.random.key(10)
    whole, hist_whole = _fit(state, mask, x, y, iterations=12, **kw)
    half, _ = _fit(state, mask, x, y, iterations=8, **kw)
    rest, hist_rest = _fit(half, mask, x, y, iterations=4, start=8, **kw)
    # The same compiled chunks (eval_every 4 divides 8) on the same inputs: equal up to rounding
    # at most (in practice bit for bit).
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(rest), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(hist_rest.iteration, [12])
    np.testing.assert_allclose(hist_rest.val_loss[..., 0], hist_whole.val_loss[..., -1], rtol=1e-6)
    # Resuming from the same state with start=0 repeats steps 0..3's batches: not the same run.
    wrong, _ = _fit(half, mask, x, y, iterations=4, **kw)
    assert not np.allclose(wrong.params["fc"]["kernel"], whole.params["fc"]["kernel"], atol=1e-4)


def test_per_ticket_augment_keys_give_different_tickets_and_a_shared_key_equal_ones() -> None:
    x, y = map(jnp.asarray, image_data(40, 2))
    state, mask = _setup(0)
    stacked, masks2 = train.stack([state] * 3), train.stack([mask] * 3)

    def kernels(data_key: jax.Array, augment_key: jax.Array | None) -> np.ndarray:
        out, _ = train.train_chunk(
            STEPS,
            stacked,
            masks2,
            None,
            x,
            y,
            data_key,
            jnp.int32(0),
            length=6,
            batch_size=8,
            tickets=True,
            augment=data.Augment(2),
            augment_key=augment_key,
        )
        return np.asarray(out.params["fc"]["kernel"])

    k, dk = jax.random.key(5), jax.random.key(6)
    own = kernels(dk, jnp.stack([k, k, jax.random.key(7)]))
    np.testing.assert_array_equal(own[1], own[0])  # the same key, the same batches
    assert not np.allclose(own[2], own[0], atol=1e-4)
    # Default keys follow per-ticket data keys: equal data keys, equal tickets; else different.
    default = kernels(jnp.stack([dk, dk, jax.random.key(8)]), None)
    np.testing.assert_array_equal(default[1], default[0])
    assert not np.allclose(default[2], default[0], atol=1e-4)


def test_no_augmentation_and_the_identity_give_todays_results_exactly() -> None:
    x, y = image_data(40, 3)
    state, mask = _setup(3)
    plain, hist = _fit(state, mask, x, y, iterations=8)
    for aug in (None, data.Augment(0, flip=False)):
        again, hist2 = _fit(state, mask, x, y, iterations=8, augment=aug)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(again), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(hist.val_loss, hist2.val_loss)
    # ... and today's engine called as before (no augment arguments) computes the same chunk.
    chunk, _ = train.train_chunk(
        STEPS, state, mask, None, x, y, jax.random.key(3), jnp.int32(0), length=4, batch_size=8
    )
    first, _ = _fit(state, mask, x, y, iterations=4, augment=data.Augment(0, False))
    for a, b in zip(jax.tree.leaves(chunk), jax.tree.leaves(first), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: data.Augment(-1), r"crop_padding must be a non-negative int .*got -1"),
        (lambda: data.Augment(1.5), r"crop_padding must be a non-negative int .*got 1.5"),  # type: ignore[arg-type]
        (lambda: data.Augment(True), r"crop_padding must be a non-negative int .*got True"),
        (lambda: data.Augment(2, flip="yes"), r"flip must be a bool, got 'yes'"),  # type: ignore[arg-type]
        (lambda: data.Augment(2, fill=float("nan")), r"fill must be a finite number"),
        (lambda: data.Augment(2, fill=()), r"fill must be a finite number"),
    ],
)
def test_bad_settings_are_refused(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = image_data(40, 4)
    state, mask = _setup()

    def never(*args, **kwargs):
        raise AssertionError("trained before checking its inputs")

    monkeypatch.setattr(loop, "train_chunk", never)
    cases = [
        # padding 5 on a 6×5 image: not smaller than the width
        ({"augment": data.Augment(5)}, x, r"crop_padding must be smaller than .* \(6×5"),
        ({"augment": data.Augment(6)}, x, r"crop_padding must be smaller"),
        ({"augment": data.Augment(1)}, x.reshape(40, -1), r"NHWC batch of images .*\[40, 60\]"),
        ({"augment": data.Augment(1, fill=(0.0, 1.0, 2.0))}, x, r"fill must hold .* \(2 for"),
        ({"augment": "crop"}, x, r"augment must be a jaxprune.data.Augment or None, got str"),
        ({"augment_key": jax.random.key(0)}, x, r"augment_key was given but augment is None"),
        (
            {"augment": data.Augment(1), "augment_key": jax.random.split(jax.random.key(0), 2)},
            x,
            r"augment_key must have shape \[\], got \[2\]",
        ),
        ({"start": -1}, x, r"start must be a non-negative int"),
    ]
    for kw, xx, match in cases:
        with pytest.raises(ValueError, match=match):
            _fit(state, mask, xx, y, iterations=4, **kw)
    with pytest.raises(ValueError, match=r"NHWC batch of images .*got shape \[4, 4, 4\]"):
        data.augment_batch(data.Augment(1), jax.random.key(0), jnp.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match=r"crop_padding must be smaller .* \(4×4"):
        data.augment_batch(data.Augment(4), jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


# ---- normalisation -------------------------------------------------------------------------------


def test_normalize_uses_the_training_statistics_for_every_split() -> None:
    raw = data.synthetic(seed=0, input_shape=(4, 4, 3))
    ds = data.normalize(raw)
    x64 = np.asarray(raw.train.x, np.float64)
    mean, std = x64.mean(axis=(0, 1, 2)), x64.std(axis=(0, 1, 2))  # numpy, in one go
    np.testing.assert_allclose(ds.normalization.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(ds.normalization.std, std, rtol=1e-6)
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    for split in ("train", "val", "test"):
        got, before = getattr(ds, split), getattr(raw, split)
        assert got.x.dtype == np.float32 and not got.x.flags.writeable
        np.testing.assert_allclose(got.x, (before.x - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.y, before.y)
    # val/test are not standardised by their own statistics (they differ from the train ones).
    assert np.abs(ds.val.x.mean(axis=(0, 1, 2))).max() > 1e-3
    assert (ds.name, ds.num_classes, ds.input_shape) == (raw.name, 4, (4, 4, 3))
    assert raw.normalization is None and repr(ds).endswith("normalized)")
    np.testing.assert_allclose(ds.normalization.black, -mean / std, rtol=1e-6)
    # The channel statistics accumulated in blocks equal numpy's over the whole array.
    m, s = data._dataset._channel_stats(raw.train.x, rows=7)
    np.testing.assert_allclose(m, mean, rtol=1e-12)
    np.testing.assert_allclose(s, std, rtol=1e-12)


def test_normalize_refusals_and_load_option() -> None:
    ds = data.load("digits", normalize=True)
    again = data.normalize(data.load("digits"))
    np.testing.assert_array_equal(ds.train.x, again.train.x)
    np.testing.assert_array_equal(ds.test.x, again.test.x)
    with pytest.raises(ValueError, match="already normalised"):
        data.normalize(ds)
    with pytest.raises(ValueError, match="normalize must be a bool, got 'yes'"):
        data.load("digits", normalize="yes")  # type: ignore[arg-type]
    flat = data.synthetic(seed=0, input_shape=(2, 2, 2))
    x = np.array(flat.train.x)
    x[..., 1] = 0.5
    const = dataclasses.replace(flat, train=data.Split(x, flat.train.y))
    with pytest.raises(ValueError, match=r"channel\(s\) \[1\] are constant"):
        data.normalize(const)


def test_load_cifar10_normalized_under_mock_data() -> None:
    with tfds.testing.mock_data(num_examples=24):
        raw = data.load("cifar10", seed=0, val_size=4)
        ds = data.load("cifar10", seed=0, val_size=4, normalize=True)
    assert ds.input_shape == (32, 32, 3) and ds.normalization.mean.shape == (3,)
    mean = raw.train.x.astype(np.float64).mean(axis=(0, 1, 2))
    std = raw.train.x.astype(np.float64).std(axis=(0, 1, 2))
    np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(ds.test.x, (raw.test.x - mean) / std, rtol=1e-5, atol=1e-5)
    # And the normalised images train with augmentation padded in black.
    aug = data.Augment(4, fill=ds.normalization.black)
    out = data.augment_batch(aug, jax.random.key(0), jnp.asarray(ds.train.x[:8]))
    np.testing.assert_array_equal(
        np.asarray(out), reference(aug, jax.random.key(0), ds.train.x[:8])
    )


# ---- the benchmark -------------------------------------------------------------------------------


@pytest.mark.slow  # compiles eight training programs (~1 min on 2 cores)
def test_benchmark_reports_every_figure() -> None:
    from benchmarks import augment as bench

    out = json.loads(json.dumps(bench.run(bench.TINY)))  # plain JSON
    assert out["machine"]["load_average"] is not None and out["target"]["bar"] == 0.9
    for name in ("cifar", "mnist"):
        fig = out[name]
        assert set(fig["ticket_steps_per_s"]) == {
            "shared_off",
            "shared_on",
            "per_ticket_off",
            "per_ticket_on",
        }
        assert all(v > 0 for v in fig["ticket_steps_per_s"].values())
        for order in ("shared", "per_ticket"):  # each ratio is the quotient of its two rates
            rates = fig["ticket_steps_per_s"]
            ratio = rates[f"{order}_on"] / rates[f"{order}_off"]
            assert fig["ratio_on_over_off"][order] == pytest.approx(ratio)
        assert 0 < fig["ratio_on_over_off_from_parts"] <= 1
