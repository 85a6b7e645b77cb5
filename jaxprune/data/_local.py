"""Datasets that need no download: scikit-learn's bundled digits and a synthetic set for tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxprune.data import _dataset

__all__ = ["DIGITS_TEST_SIZE", "DIGITS_VAL_SIZE", "digits", "synthetic"]

DIGITS_TEST_SIZE = 400
DIGITS_VAL_SIZE = 200
_DIGITS_TEST_SEED = 20_190_506  # fixed: the test images are the same whatever the seed


def digits(*, seed: int = 0, val_size: int = DIGITS_VAL_SIZE) -> _dataset.Dataset:
    """The 1,797 8×8 handwritten digits bundled with scikit-learn (UCI optdigits test set).

    Pixels are the original 0..16 counts divided by 16, shaped ``(8, 8, 1)``; 10 classes.
    The 400 test images are a stratified draw fixed once for all seeds (like a published test
    set); ``seed`` chooses the ``val_size`` (default 200) stratified validation images among the
    other 1,397, and the remaining 1,197 are the training set.

    Example:
      >>> ds = digits(seed=0)
      >>> ds
      Dataset(name='digits', train=1197, val=200, test=400, num_classes=10, input_shape=(8, 8, 1))
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    x = (np.asarray(bunch.images, np.float32) / 16.0)[..., None]
    y = np.asarray(bunch.target, np.int32)
    test_idx = _dataset.stratified_take(
        y, DIGITS_TEST_SIZE, np.random.default_rng(_DIGITS_TEST_SEED)
    )
    rest = np.setdiff1d(np.arange(len(y)), test_idx)
    pools = {"train": (x[rest], y[rest]), "test": (x[test_idx], y[test_idx])}
    return _dataset.make_dataset(
        "digits", pools, val_size=val_size, val_from="train", num_classes=10, seed=seed
    )


def synthetic(
    *,
    seed: int = 0,
    val_size: int = 128,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    input_shape: Sequence[int] = (8, 8, 1),
) -> _dataset.Dataset:
    """A small random problem that a linear model solves exactly: quick to load, quick to learn.

    Pixels are uniform in [0, 1]; the label is the argmax of a random linear "teacher"
    ``(x - 0.5) · W`` with ``W`` standard normal, drawn from ``seed``, so the classes are linearly
    separable (and roughly balanced). ``n_train`` examples are split into ``n_train - val_size``
    training and ``val_size`` validation examples; ``n_test`` more form the test set.

    Example:
      >>> ds = synthetic(seed=0)
      >>> ds.train.x.shape, ds.val.x.shape, ds.test.x.shape, ds.num_classes
      ((384, 8, 8, 1), (128, 8, 8, 1), (256, 8, 8, 1), 4)
    """
    shape = tuple(int(d) for d in input_shape)
    if not shape or min(shape) < 1 or n_train < 2 or n_test < 1 or num_classes < 2:
        raise ValueError(
            "synthetic needs a non-empty input_shape of positive ints, n_train >= 2, n_test >= 1 "
            f"and num_classes >= 2, got input_shape={shape}, n_train={n_train}, n_test={n_test}, "
            f"num_classes={num_classes}."
        )
    rng = np.random.default_rng([seed, 7])  # a stream of its own, apart from the split's
    teacher = rng.standard_normal((int(np.prod(shape)), num_classes))
    x = rng.random((n_train + n_test, *shape), dtype=np.float32)
    y = np.argmax((x.reshape(len(x), -1) - 0.5) @ teacher, axis=1).astype(np.int32)
    pools = {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}
    return _dataset.make_dataset(
        "synthetic", pools, val_size=val_size, val_from="train", num_classes=num_classes, seed=seed
    )
