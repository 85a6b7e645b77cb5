"""Datasets by name: :func:`load` and :func:`names`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from jaxprune import _checks
from jaxprune.data import _dataset, _local, _text, _tfds

__all__ = ["REGISTRY", "load", "names"]

Loader = Callable[..., _dataset.Dataset]


def _local_loader(fn: Callable[..., _dataset.Dataset]) -> Loader:
    def loader(
        *, seed: int, val_size: int | None, data_dir: str | os.PathLike | None
    ) -> _dataset.Dataset:
        del data_dir  # nothing to read from disk
        return fn(seed=seed) if val_size is None else fn(seed=seed, val_size=val_size)

    return loader


def _text_loader(name: str) -> Loader:
    def loader(
        *,
        seed: int,
        val_size: int | None,
        data_dir: str | os.PathLike | None,
        context: int = DEFAULT_CONTEXT,
    ) -> _dataset.Dataset:
        del seed  # the splits of a text set are fixed contiguous pieces
        if val_size is not None:
            raise ValueError(
                f"val_size (--val-size) must be None for the text set {name!r}, whose splits "
                f"are fixed (90 / 5 / 5 % of the token stream), got {val_size!r}."
            )
        return _text.load_text(name, context=context, data_dir=data_dir)

    return loader


DEFAULT_CONTEXT = 64
"""Tokens per window of a text set loaded by :func:`load` without ``context=``."""

REGISTRY: dict[str, Loader] = {
    "digits": _local_loader(_local.digits),
    "synthetic": _local_loader(_local.synthetic),
    **{name: functools.partial(_tfds.load_tfds, name) for name in _tfds.TFDS_SETS},
    **{name: _text_loader(name) for name in _text.TEXT_SETS},
}
"""Loaders by name: ``loader(*, seed, val_size, data_dir) -> Dataset``; the loaders of the text
sets (:data:`~jaxprune.data.TEXT_SETS`) also take ``context=``."""


def names() -> tuple[str, ...]:
    """The registered dataset names, sorted.

    Example:
      >>> names()
      ('cifar10', 'cifar100', 'digits', 'fashion_mnist', 'mnist', 'pydoc', 'synthetic', 'tiny_shakespeare')
    """
    return tuple(sorted(REGISTRY))


def load(
    name: str,
    *,
    seed: int = 0,
    val_size: int | None = None,
    data_dir: str | os.PathLike | None = None,
    normalize: bool = False,
    context: int | None = None,
) -> _dataset.Dataset:
    """Load a dataset by name, whole, into host memory, with a seeded validation split.

    ========================  =======  =====  =====  ====================================
    name                      train    val    test   source
    ========================  =======  =====  =====  ====================================
    ``digits`` (default)      1,197    200    400    scikit-learn's bundled 8×8 digits
    ``synthetic``             384      128    256    random, linearly separable, 4 classes
    ``mnist``                 55,000   5,000  10,000 tensorflow-datasets, prepared offline
    ``fashion_mnist``         55,000   5,000  10,000 〃
    ``cifar10``               45,000   5,000  10,000 〃
    ``cifar100``              45,000   5,000  10,000 〃
    ``pydoc``                 90 %     5 %    5 %    the standard library's help topics (text)
    ``tiny_shakespeare``      90 %     5 %    5 %    tensorflow-datasets, prepared offline (text)
    ========================  =======  =====  =====  ====================================

    Validation examples are a stratified draw from the training pool chosen by ``seed``
    (``val_size`` of them; the same seed gives the same split); the test split never depends
    on the seed. The text sets are character-level next-token windows of ``context`` tokens
    (:func:`~jaxprune.data.load_text`, which also gives byte level): their splits are fixed
    contiguous pieces of the token stream, whatever the seed.

    Args:
      name: one of :func:`names`.
      seed: chooses the validation examples (and, for ``synthetic``, the data).
      val_size: validation examples taken out of the training pool; ``None``: the table's.
      data_dir: the tensorflow-datasets folder to read from (default: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``); ignored by ``digits`` and ``synthetic``.
      normalize: standardise the pixels per channel with the training split's mean and std
        (:func:`~jaxprune.data.normalize`; the statistics are in ``ds.normalization``); default:
        pixels in [0, 1]. Image sets only.
      context: tokens per window of a text set (default 64); only for text sets.

    Returns:
      A :class:`Dataset`.

    Raises:
      DatasetNotAvailableError: a tensorflow-datasets set is not prepared under ``data_dir``
        (the message says how to prepare it; nothing is ever downloaded).
      ValueError: an unknown name or a ``val_size`` out of range; ``context`` or ``normalize``
        for an image set, ``val_size`` for a text set.

    Example:
      >>> ds = load("digits", seed=0)
      >>> x, y = ds.train
      >>> x.shape, x.dtype, y.dtype, float(x.min()), float(x.max())
      ((1197, 8, 8, 1), dtype('float32'), dtype('int32'), 0.0, 1.0)
    """
    _checks.check_choice(name, REGISTRY, name="dataset name")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}.")
    text = name in _text.TEXT_SETS
    if context is not None and not text:
        raise ValueError(
            f"context is only for the text sets {_text.TEXT_SETS} (tokens per window), got "
            f"context={context!r} for the image set {name!r}."
        )
    if normalize and text:
        raise ValueError(
            f"normalize=True is only for image sets: {name!r} holds token ids, not pixels."
        )
    extra = {} if context is None else {"context": context}
    ds = REGISTRY[name](seed=seed, val_size=val_size, data_dir=data_dir, **extra)
    return _dataset.normalize(ds) if normalize else ds
