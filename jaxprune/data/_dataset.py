"""The :class:`Dataset` container and the seeded, exactly sized, stratified splitting it is made with."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "Normalization", "Split", "make_dataset", "normalize", "stratified_take"]


class Split(NamedTuple):
    """One split: ``x`` float32 NHWC in [0, 1] (standardised per channel after
    :func:`normalize`), ``y`` int32 labels; for text sets (:func:`~jaxprune.data.load_text`)
    ``x`` int32 token windows ``(n, T)`` and ``y`` their next tokens ``(n, T)``. Unpacks as
    ``x, y = split``."""

    x: np.ndarray
    y: np.ndarray


class Normalization(NamedTuple):
    r"""The per-channel statistics :func:`normalize` applied: :math:`x' = (x - \mu_c)/\sigma_c`.

    ``mean`` and ``std`` are float32 arrays of shape ``[channels]``, computed on the training
    split; :attr:`black` is the value a pixel of 0 (black) takes after normalising.
    """

    mean: np.ndarray
    std: np.ndarray

    @property
    def black(self) -> tuple[float, ...]:
        r""":math:`-\mu_c/\sigma_c` per channel: the ``fill`` of
        :class:`~jaxprune.data.Augment` that pads with black, as torchvision does when it pads
        before normalising."""
        return tuple(float(v) for v in -self.mean / self.std)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification (or next-token) dataset held in host memory as read-only numpy arrays.

    Attributes:
      name: the registry name (``"digits"``, ``"mnist"``, …).
      train, val, test: :class:`Split` pairs ``(x, y)``; ``x`` is float32 of shape
        ``(n, *input_shape)`` with pixels in [0, 1] (standardised when
        ``normalization`` is set), ``y`` int32 in ``[0, num_classes)``.
        Each is the ``(x, y)`` tuple :func:`jaxprune.train.fit` takes. Text sets
        (:func:`~jaxprune.data.load_text`) hold int32 token windows instead: ``x`` of shape
        ``(n, T)`` and ``y`` the same windows shifted by one token.
      num_classes: number of classes (text: the vocabulary size).
      input_shape: shape of one example, NHWC without the batch axis, e.g. ``(28, 28, 1)``
        (text: ``(T,)``, the context).
      normalization: the per-channel statistics the pixels were standardised with
        (:func:`normalize`), or ``None`` for pixels in [0, 1].
      vocab: the characters of a character-level text set, token ``i`` being ``vocab[i]``;
        ``None`` otherwise (images, and byte-level text whose tokens are UTF-8 bytes).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    normalization: Normalization | None = None
    vocab: str | None = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s).y)}" for s in ("train", "val", "test"))
        normalized = "" if self.normalization is None else ", normalized"
        return (
            f"Dataset(name={self.name!r}, {sizes}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}{normalized})"
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


def normalize(ds: Dataset) -> Dataset:
    r"""Standardise every split per channel with the *training* split's mean and std.

    .. math:: x' = (x - \mu_c) / \sigma_c, \qquad \mu_c, \sigma_c = \text{mean, std of channel
       } c \text{ over all training pixels}

    (the population std, computed in float64); validation and test use the training statistics,
    so nothing is learnt from them. The result is float32, keeps the name, and records the
    statistics in ``normalization`` (a :class:`Normalization`).

    Raises:
      ValueError: ``ds`` is already normalised, or a channel is constant over the training split
        (its std is 0).

    Example:
      >>> from jaxprune import data
      >>> ds = data.normalize(data.load("digits"))
      >>> ds
      Dataset(name='digits', train=1197, val=200, test=400, num_classes=10, input_shape=(8, 8, 1), normalized)
      >>> x = ds.train.x
      >>> round(float(x.mean()), 6) + 0.0, round(float(x.std()), 4), x.dtype.name
      (0.0, 1.0, 'float32')
    """
    if not np.issubdtype(ds.train.x.dtype, np.floating):
        raise ValueError(
            f"ds ({ds.name!r}) holds {ds.train.x.dtype.name} inputs (token ids?), not float "
            "pixels: only image datasets can be normalised."
        )
    if ds.normalization is not None:
        raise ValueError(
            f"ds ({ds.name!r}) is already normalised (per-channel mean "
            f"{ds.normalization.mean.tolist()}, std {ds.normalization.std.tolist()}); normalising "
            "twice would lose the statistics of the original pixels."
        )
    mean, std = _channel_stats(np.asarray(ds.train.x))
    if not np.all(std > 0):
        raise ValueError(
            f"cannot normalise {ds.name!r}: channel(s) {np.flatnonzero(~(std > 0)).tolist()} are "
            "constant over the training split (std 0), and dividing by 0 gives inf or NaN."
        )

    mean32, std32 = _frozen(mean.astype(np.float32)), _frozen(std.astype(np.float32))

    def scaled(split: Split) -> Split:
        out = np.subtract(split.x, mean32, dtype=np.float32)
        out /= std32  # in place: CIFAR-sized splits are hundreds of MB
        return Split(_frozen(out), split.y)

    return dataclasses.replace(
        ds,
        train=scaled(ds.train),
        val=scaled(ds.val),
        test=scaled(ds.test),
        normalization=Normalization(mean32, std32),
    )


def _channel_stats(x: np.ndarray, rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) mean and population std of ``x``, accumulated in float64 over
    blocks of ``rows`` examples (two passes), so no float64 copy of the whole split is made."""
    flat = x.reshape(len(x), -1, x.shape[-1])
    count = flat.shape[0] * flat.shape[1]
    total = sum(
        flat[i : i + rows].sum(axis=(0, 1), dtype=np.float64) for i in range(0, len(x), rows)
    )
    mean = np.asarray(total) / count
    squares = sum(
        np.square(flat[i : i + rows] - mean).sum(axis=(0, 1)) for i in range(0, len(x), rows)
    )
    return mean, np.sqrt(np.asarray(squares) / count)
