"""Datasets prepared by tensorflow-datasets, read without TensorFlow and never downloaded.

``tfds.data_source(name, download=False)`` opens a dataset that was prepared beforehand in the
``array_record`` (or ``parquet``) format and decodes records with NumPy and PIL, so TensorFlow is
not needed. Nothing here touches the network: a dataset that is not on disk is a
:class:`DatasetNotAvailableError` that says how to prepare it elsewhere and copy it here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxprune.data import _dataset

__all__ = ["TFDS_SETS", "DatasetNotAvailableError", "TfdsSpec", "load_tfds", "open_splits"]

_CHUNK = 4096  # records per batched read: batched reads decode about twice as fast as single ones


class TfdsSpec(NamedTuple):
    """What jaxprune expects of a tensorflow-datasets image dataset."""

    tfds_name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    val_size: int  # default validation split carved from train


TFDS_SETS: dict[str, TfdsSpec] = {
    # The lottery-ticket papers hold out 5,000 training images (MNIST: 55k train / 5k val).
    "mnist": TfdsSpec("mnist", 10, (28, 28, 1), 5000),
    "fashion_mnist": TfdsSpec("fashion_mnist", 10, (28, 28, 1), 5000),
    "cifar10": TfdsSpec("cifar10", 10, (32, 32, 3), 5000),
    "cifar100": TfdsSpec("cifar100", 100, (32, 32, 3), 5000),
}


class DatasetNotAvailableError(ValueError):
    """A dataset is not prepared on this machine (jaxprune never downloads at run time)."""


def resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[str, str]:
    """``(folder, where it came from)``: ``data_dir``, else ``$TFDS_DATA_DIR``, else the tfds default.

    Resolved at call time (tfds itself reads the variable once, at import).
    """
    if data_dir is not None:
        return os.fspath(data_dir), "data_dir"
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"], "$TFDS_DATA_DIR"
    return os.path.join(os.path.expanduser("~"), "tensorflow_datasets"), "the tfds default"


def _not_available(
    name: str, root: str, where: str, err: BaseException
) -> DatasetNotAvailableError:
    variant = Path(root) / name
    try:
        import tensorflow_datasets as tfds

        variant = Path(root) / name / str(tfds.builder_cls(name).VERSION)
    except Exception:  # only for the message: the folder name without the version will do
        pass
    if (variant / "dataset_info.json").exists():
        said = (str(err).strip().splitlines() or [""])[0]
        what = (
            f"{variant} exists but tfds.data_source could not open it ({type(err).__name__}: "
            f"{said}). Without TensorFlow it reads only the array_record and parquet formats, "
            "and `tfds build` writes tfrecord by default: rebuild it with "
            f"`tfds build {name} --file_format=array_record`."
        )
    else:
        what = f"{variant} does not exist (looked under {root}, from {where})."
    return DatasetNotAvailableError(
        f"dataset {name!r} is not prepared on this machine: {what} jaxprune never downloads at run "
        "time. On a machine with internet access run\n"
        f"    python -c \"import tensorflow_datasets as tfds; tfds.data_source('{name}', download=True)\"\n"
        f"(or `tfds build {name} --file_format=array_record`), then copy ~/tensorflow_datasets/{name} "
        f"into {root}, or pass data_dir= (--data-dir) pointing at the copied tensorflow_datasets "
        "folder."
    )


def _open(name: str, data_dir: str | os.PathLike | None) -> Sequence[Any]:
    return open_splits(name, data_dir, ("train", "test"))


def open_splits(
    name: str, data_dir: str | os.PathLike | None, splits: Sequence[str]
) -> Sequence[Any]:
    """``tfds.data_source(name, split=splits)`` from disk, one data source per split, or
    :class:`DatasetNotAvailableError` saying how to prepare the dataset."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise DatasetNotAvailableError(
            f"dataset {name!r} needs the tensorflow-datasets package: pip install tensorflow-datasets"
        ) from err
    root, where = resolve_data_dir(data_dir)
    try:
        return tfds.data_source(name, split=list(splits), data_dir=root, download=False)
    except Exception as err:  # tfds raises many kinds here; they all mean "not usable from disk"
        failure = err
    # Raised outside the handler so that the user sees our message, not tfds' internals.
    raise _not_available(name, root, where, failure)


def _batched_getter(source: Any) -> Callable[[list[int]], Sequence[Any]]:
    """``source.__getitems__`` when it works, else one ``source[i]`` per key.

    Data sources that implement only ``__getitem__`` (e.g. ``tfds.testing.mock_data``'s) fall back
    to single reads after the first failed batched call.
    """
    state = {"batched": hasattr(source, "__getitems__")}

    def get(keys: list[int]) -> Sequence[Any]:
        if state["batched"]:
            try:
                return source.__getitems__(keys)
            except (TypeError, NotImplementedError, AttributeError):
                state["batched"] = False
        return [source[k] for k in keys]

    return get


def _read_split(
    source: Sequence[Any], spec: TfdsSpec, name: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    images = np.empty((n, *spec.input_shape), np.uint8)
    labels = np.empty(n, np.int64)
    get = _batched_getter(source)
    for start in range(0, n, _CHUNK):
        for i, record in enumerate(get(list(range(start, min(start + _CHUNK, n)))), start):
            image = np.asarray(record["image"])
            if image.shape != spec.input_shape:
                raise ValueError(
                    f"{name} {split} record {i} has an image of shape {image.shape}, expected "
                    f"{spec.input_shape}: is the data in {split!r} really {name}?"
                )
            images[i] = image
            labels[i] = record["label"]
    if n and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(
            f"{name} {split} labels must be in [0, {spec.num_classes}), got "
            f"[{labels.min()}, {labels.max()}]."
        )
    pixels = images.astype(np.float32)
    pixels /= np.float32(255.0)  # in place: CIFAR-sized arrays are hundreds of MB
    return pixels, labels.astype(np.int32)


def load_tfds(
    name: str,
    *,
    seed: int = 0,
    val_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> _dataset.Dataset:
    """Read a prepared tfds image dataset whole into memory; carve validation out of train.

    Pixels are divided by 255; ``val_size`` (default 5,000) stratified training images drawn
    with ``seed`` become the validation split, the test split is tfds' ``test``.
    """
    spec = TFDS_SETS[name]
    train_source, test_source = _open(spec.tfds_name, data_dir)
    pools = {
        "train": _read_split(train_source, spec, name, "train"),
        "test": _read_split(test_source, spec, name, "test"),
    }
    return _dataset.make_dataset(
        name,
        pools,
        val_size=spec.val_size if val_size is None else val_size,
        val_from="train",
        num_classes=spec.num_classes,
        seed=seed,
    )
