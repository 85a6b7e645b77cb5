"""Data: split sizes and stratification, determinism, tfds loading (mocked and from real
array_record files written here), and the offline error that never touches the network."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits

from jaxprune import data

TFDS_NAMES = ["mnist", "fashion_mnist", "cifar10", "cifar100"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs offline: opening a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _rows(x: np.ndarray, y: np.ndarray) -> list[bytes]:
    """Each example as bytes (image, then label), sorted: a multiset to compare splits by."""
    x = np.ascontiguousarray(x, np.float32).reshape(len(x), -1)
    return sorted(xi.tobytes() + int(yi).to_bytes(2, "little") for xi, yi in zip(x, y, strict=True))


# ---- digits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits", seed=0)


def test_digits_sizes_dtypes_and_range(digits: data.Dataset) -> None:
    assert (digits.name, digits.num_classes, digits.input_shape) == ("digits", 10, (8, 8, 1))
    for split, n in [(digits.train, 1197), (digits.val, 200), (digits.test, 400)]:
        x, y = split
        assert x.shape == (n, 8, 8, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int32
        assert x.min() == 0.0 and x.max() == 1.0  # 0..16 / 16
        assert set(np.unique(x * 16)) <= set(range(17))
        assert set(np.unique(y)) == set(range(10))
    assert repr(digits) == (
        "Dataset(name='digits', train=1197, val=200, test=400, num_classes=10, input_shape=(8, 8, 1))"
    )


def test_digits_splits_partition_the_bundled_set(digits: data.Dataset) -> None:
    bunch = load_digits()
    x_all = np.concatenate([digits.train.x, digits.val.x, digits.test.x])
    y_all = np.concatenate([digits.train.y, digits.val.y, digits.test.y])
    assert _rows(x_all, y_all) == _rows(bunch.images[..., None] / 16.0, bunch.target)


def test_digits_splits_are_stratified(digits: data.Dataset) -> None:
    totals = np.bincount(load_digits().target, minlength=10)
    test = np.bincount(digits.test.y, minlength=10)
    # Exactly proportional up to rounding: each class within one example of its share.
    assert np.all(np.abs(test - 400 * totals / 1797) < 1)
    rest = totals - test
    val = np.bincount(digits.val.y, minlength=10)
    assert np.all(np.abs(val - 200 * rest / rest.sum()) < 1)
    np.testing.assert_array_equal(np.bincount(digits.train.y, minlength=10), rest - val)


def test_same_seed_same_split_other_seed_other_validation(digits: data.Dataset) -> None:
    again = data.load("digits", seed=0)
    other = data.load("digits", seed=1)
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(digits, split), getattr(again, split), strict=True):
            np.testing.assert_array_equal(a, b)
    # The test set is fixed for every seed (like a published test set); validation is the seed's.
    np.testing.assert_array_equal(other.test.x, digits.test.x)
    assert _rows(*other.val) != _rows(*digits.val)
    assert _rows(*other.train) != _rows(*digits.train)

    def pool(ds: data.Dataset) -> list[bytes]:  # train + validation: the same images either way
        return _rows(np.concatenate([ds.train.x, ds.val.x]), np.concatenate([ds.train.y, ds.val.y]))

    assert pool(other) == pool(digits)


def test_val_size_is_honoured_and_checked() -> None:
    ds = data.load("digits", val_size=397)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (1000, 397, 400)
    for bad in (0, 1397, -3, 2.5):
        with pytest.raises(
            ValueError, match=r"val_size \(--val-size\) must be an int in \[1, 1396\] for 'digits'"
        ):
            data.load("digits", val_size=bad)  # type: ignore[arg-type]


def test_arrays_are_read_only(digits: data.Dataset) -> None:
    with pytest.raises(ValueError, match="read-only"):
        digits.train.x[0, 0, 0, 0] = 1.0
    with pytest.raises(AttributeError):
        digits.name = "other"  # type: ignore[misc]


# ---- stratified_take -----------------------------------------------------------------------------


@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    frac=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_stratified_take_is_exact_and_proportional(
    labels: list[int], frac: float, seed: int
) -> None:
    y = np.array(labels)
    size = round(frac * len(y))
    idx = data.stratified_take(y, size, np.random.default_rng(seed))
    assert len(idx) == size and len(set(idx.tolist())) == size
    classes, counts = np.unique(y, return_counts=True)
    got = np.array([np.sum(y[idx] == c) for c in classes])
    quota = size * counts / len(y)
    assert np.all((got >= np.floor(quota)) & (got <= np.ceil(quota)))
    np.testing.assert_array_equal(idx, data.stratified_take(y, size, np.random.default_rng(seed)))


def test_stratified_take_breaks_remainder_ties_by_label() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])  # quota 1/3·2 each: the single extra goes to class 0
    assert np.bincount(
        y[data.stratified_take(y, 1, np.random.default_rng(0))], minlength=3
    ).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"size must be in \[0, 6\]"):
        data.stratified_take(y, 7, np.random.default_rng(0))


# ---- synthetic -----------------------------------------------------------------------------------


def test_synthetic_is_seeded_balanced_and_linearly_learnable() -> None:
    from sklearn.linear_model import LogisticRegression

    ds = data.load("synthetic", seed=3)
    assert (ds.train.x.shape, ds.val.x.shape, ds.test.x.shape) == (
        (384, 8, 8, 1),
        (128, 8, 8, 1),
        (256, 8, 8, 1),
    )
    assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int32
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
    np.testing.assert_array_equal(ds.test.x, data.load("synthetic", seed=3).test.x)
    assert not np.array_equal(ds.test.x, data.load("synthetic", seed=4).test.x)
    shares = np.bincount(ds.train.y, minlength=4) / 384
    assert shares.min() > 0.1
    clf = LogisticRegression(C=100.0, max_iter=5000).fit(ds.train.x.reshape(384, -1), ds.train.y)
    assert clf.score(ds.train.x.reshape(384, -1), ds.train.y) == 1.0  # separable by construction
    assert clf.score(ds.test.x.reshape(256, -1), ds.test.y) > 0.75


def test_synthetic_options() -> None:
    ds = data.synthetic(seed=0, n_train=50, val_size=10, n_test=20, num_classes=3, input_shape=(5,))
    assert (ds.train.x.shape, ds.val.x.shape, ds.test.x.shape, ds.num_classes) == (
        (40, 5),
        (10, 5),
        (20, 5),
        3,
    )
    with pytest.raises(ValueError, match="num_classes >= 2"):
        data.synthetic(num_classes=1)


# ---- registry ------------------------------------------------------------------------------------


def test_names_and_unknown_name() -> None:
    assert data.names() == (
        "cifar10",
        "cifar100",
        "digits",
        "fashion_mnist",
        "mnist",
        "pydoc",
        "synthetic",
        "tiny_shakespeare",
    )
    with pytest.raises(
        ValueError, match=r"unknown dataset name 'svhn'; expected one of: cifar10, cifar100, digits"
    ):
        data.load("svhn")


# ---- tensorflow-datasets, mocked -----------------------------------------------------------------


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_sets_under_mock_data(name: str) -> None:
    spec = data.TFDS_SETS[name]
    with tfds.testing.mock_data(num_examples=24):  # policy AUTO falls back to the builder's code
        ds = data.load(name, seed=0, val_size=4)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (20, 4, 24)
    assert ds.input_shape == spec.input_shape and ds.num_classes == spec.num_classes
    for x, y in (ds.train, ds.val, ds.test):
        assert x.shape[1:] == spec.input_shape and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # random uint8 pixels / 255
        np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)
        assert 0 <= y.min() and y.max() < spec.num_classes


def test_mock_default_validation_size_is_checked() -> None:
    with (
        tfds.testing.mock_data(num_examples=24),
        pytest.raises(
            ValueError, match=r"val_size \(--val-size\) must be an int in \[1, 23\] for 'mnist'"
        ),
    ):
        data.load("mnist")  # the default 5,000 does not fit in 24 mocked examples


# ---- tensorflow-datasets, real array_record files ------------------------------------------------

_BUILDERS = {"mnist": tfds.image_classification.MNIST, "cifar10": tfds.image_classification.Cifar10}


def _images(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = data.TFDS_SETS[name].input_shape
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n)


def _prepare(name: str, root: Path, n_train: int = 30, n_test: int = 12) -> dict[str, tuple]:
    """Write a real ``name`` dataset of known images in the array_record format, without TF."""
    splits = {"train": _images(name, n_train, 0), "test": _images(name, n_test, 1)}

    def examples(split: str):
        for i, (img, label) in enumerate(zip(*splits[split], strict=True)):
            pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)  # PIL encodes PNG
            yield (
                i,
                {"image": pil, "label": int(label)}
                | ({"id": f"{split}_{i}"} if name == "cifar10" else {}),
            )

    class Fake(_BUILDERS[name], skip_registration=True):  # type: ignore[misc, valid-type]
        def _split_generators(self, dl_manager):
            return {split: examples(split) for split in splits}

    Fake.name = name
    Fake(data_dir=str(root), file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return splits


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_prepared_array_record_dataset_is_read_exactly(name: str, tmp_path: Path) -> None:
    splits = _prepare(name, tmp_path)
    ds = data.load(name, seed=5, val_size=6, data_dir=tmp_path)
    assert (len(ds.train.y), len(ds.val.y), len(ds.test.y)) == (24, 6, 12)
    x_pool = np.concatenate([ds.train.x, ds.val.x])
    y_pool = np.concatenate([ds.train.y, ds.val.y])
    want_x, want_y = splits["train"]
    assert _rows(x_pool, y_pool) == _rows(want_x / np.float32(255.0), want_y)
    assert _rows(*ds.test) == _rows(splits["test"][0] / np.float32(255.0), splits["test"][1])
    again = data.load(name, seed=5, val_size=6, data_dir=str(tmp_path))
    np.testing.assert_array_equal(again.val.x, ds.val.x)


def test_tfrecord_copy_gets_a_rebuild_hint(tmp_path: Path) -> None:
    _prepare("mnist", tmp_path)
    info = next(tmp_path.glob("mnist/*/dataset_info.json"))
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"  # what a default `tfds build mnist` writes
    info.write_text(json.dumps(meta))
    with pytest.raises(
        data.DatasetNotAvailableError, match=r"exists but tfds\.data_source could not open it"
    ) as err:
        data.load("mnist", data_dir=tmp_path)
    assert "tfds build mnist --file_format=array_record" in str(err.value)


# ---- not available -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_absent_dataset_fails_fast_with_instructions(name: str, tmp_path: Path) -> None:
    with pytest.raises(data.DatasetNotAvailableError) as caught:  # offline: see no_network
        data.load(name, data_dir=tmp_path)
    err = caught.value
    msg = str(err)
    assert isinstance(err, ValueError)
    assert f"dataset {name!r} is not prepared on this machine" in msg
    assert f"{tmp_path / name}" in msg and "does not exist" in msg and "from data_dir" in msg
    assert f"tfds.data_source('{name}', download=True)" in msg
    assert f"tfds build {name} --file_format=array_record" in msg
    assert "--data-dir" in msg and "never downloads" in msg
    # Our message only: no tfds traceback chained under it.
    assert err.__cause__ is None and err.__context__ is None
    assert list(tmp_path.iterdir()) == []  # and nothing written


def test_absent_dataset_names_tfds_data_dir_from_the_environment(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DatasetNotAvailableError, match=r"from \$TFDS_DATA_DIR") as err:
        data.load("mnist")
    assert str(tmp_path / "mnist") in str(err.value)
