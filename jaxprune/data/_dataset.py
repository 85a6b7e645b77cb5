"""The :class:`Dataset` container and the seeded, exactly sized, stratified splitting it is made with."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "Split", "make_dataset", "stratified_take"]


class Split(NamedTuple):
    """One split: ``x`` float32 NHWC in [0, 1], ``y`` int32 labels. Unpacks as ``x, y = split``."""

    x: np.ndarray
    y: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in host memory as read-only numpy arrays.

    Attributes:
      name: the registry name (``"digits"``, ``"mnist"``, …).
      train, val, test: :class:`Split` pairs ``(x, y)``; ``x`` is float32 of shape
        ``(n, *input_shape)`` with pixels in [0, 1], ``y`` int32 in ``[0, num_classes)``.
        Each is the ``(x, y)`` tuple :func:`jaxprune.train.fit` takes.
      num_classes: number of classes.
      input_shape: shape of one example, NHWC without the batch axis, e.g. ``(28, 28, 1)``.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s).y)}" for s in ("train", "val", "test"))
        return (
            f"Dataset(name={self.name!r}, {sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )


def stratified_take(y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of exactly ``size`` rows of ``y``, each class represented in proportion.

    Class ``c`` with ``n_c`` of the ``n`` rows gets ``floor(size·n_c/n)`` rows, and the rows still
    missing go one each to the classes with the largest remainders (ties: the smaller label).
    Which rows of a class are taken is drawn from ``rng``; the result is in random order.

    Example:
      >>> import numpy as np
      >>> y = np.array([0] * 6 + [1] * 3 + [2] * 1)
      >>> idx = stratified_take(y, 5, np.random.default_rng(0))
      >>> np.bincount(y[idx], minlength=3).tolist()
      [3, 2, 0]
    """
    n = len(y)
    if not 0 <= size <= n:
        raise ValueError(f"size must be in [0, {n}] (the number of rows), got {size}.")
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(np.int64)
    missing = size - int(take.sum())
    # Stable sort on the negated remainder: largest remainder first, smaller label on ties.
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:missing]] += 1
    picked = [
        rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return rng.permutation(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def make_dataset(
    name: str,
    pools: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    val_size: int,
    val_from: str,
    num_classes: int,
    seed: int,
) -> Dataset:
    """Carve a stratified validation split of ``val_size`` rows out of ``pools[val_from]``.

    ``pools`` maps ``"train"`` and ``"test"`` to ``(x, y)``; ``x`` must already be float32 in
    [0, 1]. The validation rows are removed from the training split; the rest keep a seeded
    random order.
    """
    x_pool, y_pool = pools[val_from]
    n = len(y_pool)
    if not isinstance(val_size, int | np.integer) or not 0 < val_size < n:
        raise ValueError(
            f"val_size (--val-size) must be an int in [1, {n - 1}] for {name!r} ({n} training "
            f"examples to split), got {val_size!r}."
        )
    rng = np.random.default_rng(seed)
    val_idx = stratified_take(y_pool, int(val_size), rng)
    rest = np.ones(n, bool)
    rest[val_idx] = False
    train_idx = rng.permutation(np.flatnonzero(rest))

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(_frozen(x.astype(np.float32, copy=False)), _frozen(y.astype(np.int32)))

    x_test, y_test = pools["test"]
    return Dataset(
        name=name,
        train=split(x_pool[train_idx], y_pool[train_idx]),
        val=split(x_pool[val_idx], y_pool[val_idx]),
        test=split(x_test, y_test),
        num_classes=int(num_classes),
        input_shape=tuple(int(d) for d in x_pool.shape[1:]),
    )
