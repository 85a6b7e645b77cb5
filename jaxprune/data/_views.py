"""Views of a dataset for transfer studies: class subsets, permuted pixels, tasks by spec string."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxprune.data import _dataset, _registry, _text, _tfds

__all__ = ["class_subset", "permute_pixels", "task"]


def _check_image(ds: _dataset.Dataset, what: str) -> None:
    if ds.train.y.ndim != 1:
        raise ValueError(
            f"ds must be a classification dataset (one label per example) for {what}, got "
            f"{ds.name!r} with labels of shape {list(ds.train.y.shape)} (a text set?)."
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _subset_name(name: str, classes: list[int]) -> str:
    if len(classes) > 1 and classes == list(range(classes[0], classes[-1] + 1)):
        return f"{name}[{classes[0]}-{classes[-1]}]"
    return f"{name}[{','.join(map(str, classes))}]"


def class_subset(ds: _dataset.Dataset, classes: Sequence[int]) -> _dataset.Dataset:
    """Only the examples of ``classes``, relabelled ``0 … k-1`` in the order given, in every split.

    Example ``i`` of a split is kept iff ``y_i ∈ classes``, and then gets the label
    ``classes.index(y_i)``; kept examples keep their order. The name records the classes
    (``"digits[5-9]"`` for a contiguous ascending range, else ``"digits[7,2]"``);
    ``normalization`` (statistics of the whole training split) is kept as it was.

    Raises:
      ValueError: ``classes`` empty, repeated, not ints, or outside ``[0, num_classes)``; a text
        set.

    Example:
      >>> from jaxprune import data
      >>> ds = data.class_subset(data.load("digits"), range(5, 10))
      >>> ds.name, ds.num_classes, sorted(set(ds.test.y.tolist()))
      ('digits[5-9]', 5, [0, 1, 2, 3, 4])
    """
    _check_image(ds, "class_subset")
    wanted = list(classes)
    if not wanted or any(
        isinstance(c, bool) or not isinstance(c, int | np.integer) for c in wanted
    ):
        raise ValueError(f"classes must be a non-empty sequence of ints, got {classes!r}.")
    wanted = [int(c) for c in wanted]
    if len(set(wanted)) != len(wanted) or not all(0 <= c < ds.num_classes for c in wanted):
        raise ValueError(
            f"classes must be distinct labels in [0, {ds.num_classes}) (the classes of "
            f"{ds.name!r}), got {wanted}."
        )
    relabel = np.full(ds.num_classes, -1, np.int32)
    relabel[wanted] = np.arange(len(wanted), dtype=np.int32)

    def subset(split: _dataset.Split) -> _dataset.Split:
        new = relabel[split.y]
        keep = new >= 0
        return _dataset.Split(_frozen(split.x[keep]), _frozen(new[keep]))

    return dataclasses.replace(
        ds,
        name=_subset_name(ds.name, wanted),
        train=subset(ds.train),
        val=subset(ds.val),
        test=subset(ds.test),
        num_classes=len(wanted),
    )


def permute_pixels(ds: _dataset.Dataset, seed: int) -> _dataset.Dataset:
    """Every split with its pixel positions shuffled by one fixed permutation drawn from ``seed``.

    With ``x`` of shape ``(n, H, W, C)``, ``π = np.random.default_rng(seed).permutation(H·W)`` and
    ``x'[:, p] = x[:, π[p]]`` over the flattened positions ``p`` (a pixel's channels move
    together); the same ``π`` for train, val and test, labels unchanged. The name becomes
    ``"digits[permuted:0]"`` (with the seed). Per-channel ``normalization`` still holds.

    Raises:
      ValueError: ``seed`` not a non-negative int; a text set.

    Example:
      >>> from jaxprune import data
      >>> ds = data.load("digits")
      >>> p = data.permute_pixels(ds, 0)
      >>> p.name, float(p.train.x.sum()) == float(ds.train.x.sum()), bool((p.train.x == ds.train.x).all())
      ('digits[permuted:0]', True, False)
    """
    _check_image(ds, "permute_pixels")
    _checks_seed(seed)
    shape = ds.train.x.shape[1:]
    channels = shape[-1] if len(shape) == 3 else 1
    positions = int(np.prod(shape)) // channels
    perm = np.random.default_rng(int(seed)).permutation(positions)

    def permuted(split: _dataset.Split) -> _dataset.Split:
        flat = split.x.reshape(len(split.x), positions, channels)
        return _dataset.Split(_frozen(flat[:, perm].reshape(split.x.shape)), split.y)

    return dataclasses.replace(
        ds,
        name=f"{ds.name}[permuted:{int(seed)}]",
        train=permuted(ds.train),
        val=permuted(ds.val),
        test=permuted(ds.test),
    )


def _checks_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")


_RANGE = re.compile(r"(\d+)-(\d+)")


def task(
    spec: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> _dataset.Dataset:
    """A dataset by spec string: ``name[:view]…`` — an image set of :func:`~jaxprune.data.load`
    and views applied left to right.

    Views: ``a-b`` — :func:`class_subset` of classes ``a … b`` (inclusive), relabelled from 0;
    ``permuted`` — :func:`permute_pixels` with seed 0. E.g. ``"digits"``, ``"digits:0-4"``,
    ``"digits:5-9"``, ``"digits:permuted"``, ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
    ``"cifar100:0-9"``. The syntax (and a class range of a tensorflow-datasets set) is checked
    before anything is read; a set that is not prepared raises
    :class:`~jaxprune.data.DatasetNotAvailableError` as :func:`~jaxprune.data.load` does.

    Args:
      spec: the task.
      data_dir: the tensorflow-datasets folder (:func:`~jaxprune.data.load`).
      seed: the validation split's seed (:func:`~jaxprune.data.load`).

    Raises:
      ValueError: an unknown or text dataset, an unknown view, or a class range that is empty
        or outside the dataset's classes.

    Example:
      >>> from jaxprune import data
      >>> [data.task(s).name for s in ("digits", "digits:0-4", "digits:permuted")]
      ['digits', 'digits[0-4]', 'digits[permuted:0]']
      >>> data.task("digits:4-2")
      Traceback (most recent call last):
      ...
      ValueError: task spec 'digits:4-2': class range '4-2' must be a-b with a ≤ b...
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"spec must be a task string such as 'digits:0-4', got {spec!r}.")
    name, *views = spec.split(":")
    images = sorted(n for n in _registry.REGISTRY if n not in _text.TEXT_SETS)
    if name not in images:
        raise ValueError(
            f"task spec {spec!r}: unknown image dataset {name!r}; expected one of "
            f"{', '.join(images)}, optionally followed by ':a-b' (classes) or ':permuted'."
        )
    known_classes = _tfds.TFDS_SETS[name].num_classes if name in _tfds.TFDS_SETS else None
    ranges: list[list[int] | None] = []
    for view in views:
        if view == "permuted":
            ranges.append(None)
            continue
        match = _RANGE.fullmatch(view)
        where = f"task spec {spec!r}: "
        if match is None:
            raise ValueError(
                f"{where}view {view!r} is neither a class range 'a-b' nor 'permuted' (e.g. "
                "'digits:0-4', 'digits:permuted')."
            )
        lo, hi = int(match[1]), int(match[2])
        if lo > hi:
            raise ValueError(f"{where}class range {view!r} must be a-b with a ≤ b, e.g. '0-4'.")
        if known_classes is not None and hi >= known_classes:
            raise ValueError(
                f"{where}class range {view!r} must lie within [0, {known_classes}) (the classes "
                f"of {name!r})."
            )
        known_classes = hi - lo + 1
        ranges.append(list(range(lo, hi + 1)))
    ds = _registry.load(name, seed=seed, data_dir=data_dir)
    for classes in ranges:
        if classes is None:
            ds = permute_pixels(ds, 0)
            continue
        if classes[-1] >= ds.num_classes:
            raise ValueError(
                f"task spec {spec!r}: class range {classes[0]}-{classes[-1]} must lie within "
                f"[0, {ds.num_classes}) (the classes of {ds.name!r})."
            )
        ds = class_subset(ds, classes)
    return ds
