r"""Offline text corpora as next-token windows: :func:`text_corpus`, :func:`load_text`, :func:`decode`.

A corpus is one string, tokenised as a whole into a stream :math:`t_0, t_1, \dots, t_{n-1}`:

* ``level="byte"``: its UTF-8 bytes, vocabulary 256;
* ``level="char"``: each character's index in the sorted set of the corpus's characters.

The stream is cut into three contiguous pieces, the same for every seed: the first
:math:`n_{train} = \lfloor 0.9\,n \rfloor` tokens train, the next
:math:`n_{val} = \lfloor (n - n_{train})/2 \rfloor` validate, the rest test (for
``tiny_shakespeare`` these are exactly tensorflow-datasets' own splits). Each piece :math:`s` is cut
into non-overlapping windows of ``context`` tokens :math:`T` whose targets are the next tokens,

.. math:: x_i = s[iT : iT + T], \qquad y_i = s[iT + 1 : iT + T + 1],
   \qquad i = 0, \dots, \lfloor (|s| - 1)/T \rfloor - 1,

so a partial last window is dropped and no target crosses into another split.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from jaxprune import _checks
from jaxprune.data import _dataset, _tfds

__all__ = ["LEVELS", "TEXT_SETS", "decode", "load_text", "text_corpus"]

TEXT_SETS = ("pydoc", "tiny_shakespeare")
"""The text corpora by name: ``pydoc`` (offline, in the standard library) and
``tiny_shakespeare`` (tensorflow-datasets, prepared beforehand)."""

LEVELS = ("char", "byte")
BYTES = 256  # the vocabulary of byte-level tokens


def text_corpus(name: str = "pydoc", *, data_dir: str | os.PathLike | None = None) -> str:
    """The whole text of a corpus, as one string.

    * ``"pydoc"``: the help topics of the standard library (``pydoc_data.topics.topics``), their
      values joined with ``"\\n\\n"`` in sorted-key order; offline and fixed for a Python
      version (about 465,000 characters on Python 3.11).
    * ``"tiny_shakespeare"``: tensorflow-datasets' ``train``, ``validation`` and ``test`` texts,
      in that order and joined without separator (the original file), read with
      ``tfds.data_source`` from ``data_dir`` (default ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``); never downloaded.

    Raises:
      DatasetNotAvailableError: ``tiny_shakespeare`` is not prepared under ``data_dir`` (the
        message says how to prepare it).
      ValueError: an unknown name.

    Example:
      >>> text = text_corpus("pydoc")
      >>> text == text_corpus("pydoc"), len(text) > 100_000
      (True, True)
    """
    _checks.check_choice(name, TEXT_SETS, name="text corpus name")
    if name == "pydoc":
        from pydoc_data import topics

        return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    sources = _tfds.open_splits(name, data_dir, ("train", "validation", "test"))
    return "".join(_record_text(source[i]) for source in sources for i in range(len(source)))


def _record_text(record: Any) -> str:
    """A tfds ``Text`` feature: ``str`` from mocks, ``bytes`` when read from array_record."""
    text = record["text"]
    if isinstance(text, np.ndarray):
        text = text.item()
    return text.decode("utf-8") if isinstance(text, bytes) else str(text)


def _tokens(text: str, level: str) -> tuple[np.ndarray, str | None]:
    """The token stream (int32) and the vocabulary (``None`` for bytes)."""
    if level == "byte":
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32), None
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    chars = np.unique(codes)  # sorted code points: the order of sorted(set(text))
    vocab = "".join(map(chr, chars.tolist()))
    return np.searchsorted(chars, codes).astype(np.int32), vocab


def _windows(name: str, split: str, stream: np.ndarray, context: int) -> _dataset.Split:
    n = (len(stream) - 1) // context
    if n < 1:
        raise ValueError(
            f"context must be at most {len(stream) - 1} for {name!r}: its {split} split has "
            f"{len(stream)} tokens, and one window needs context + 1 (the targets are shifted by "
            f"one), got context={context}."
        )
    x = stream[: n * context].reshape(n, context)
    y = stream[1 : n * context + 1].reshape(n, context)
    return _dataset.Split(_dataset._frozen(x), _dataset._frozen(y))


def load_text(
    name: str = "pydoc",
    *,
    context: int = 64,
    level: str = "char",
    data_dir: str | os.PathLike | None = None,
) -> _dataset.Dataset:
    r"""A text corpus as next-token windows, split 90 / 5 / 5 (module docstring).

    Args:
      name: one of :data:`TEXT_SETS` (see :func:`text_corpus`).
      context: tokens per window :math:`T`.
      level: ``"char"`` (ids into the sorted characters of the corpus, in ``ds.vocab``) or
        ``"byte"`` (UTF-8 bytes, ``ds.vocab`` is ``None``).
      data_dir: where tensorflow-datasets corpora are prepared (``tiny_shakespeare``).

    Returns:
      A :class:`~jaxprune.data.Dataset` whose splits are ``(x, y)`` int32 arrays of shape
      ``(windows, context)``, ``y`` being ``x`` shifted by one token; ``num_classes`` is the
      vocabulary size and ``input_shape`` ``(context,)``. :func:`decode` turns tokens back into
      text.

    Raises:
      ValueError: ``context`` not a positive int, or longer than a split allows (a split needs
        ``context + 1`` tokens); an unknown ``level`` or ``name``.
      DatasetNotAvailableError: see :func:`text_corpus`.

    Example:
      >>> ds = load_text("pydoc", context=32)
      >>> x, y = ds.train
      >>> x.shape[1], x.dtype.name, ds.input_shape, ds.num_classes == len(ds.vocab)
      (32, 'int32', (32,), True)
      >>> bool((x[0, 1:] == y[0, :-1]).all())
      True
    """
    _checks.check_choice(name, TEXT_SETS, name="text corpus name")
    _checks.check_positive_int(context, name="context")
    _checks.check_choice(level, LEVELS, name="level")
    stream, vocab = _tokens(text_corpus(name, data_dir=data_dir), level)
    n = len(stream)
    n_train = n * 9 // 10
    n_val = (n - n_train) // 2
    pieces = {
        "train": stream[:n_train],
        "val": stream[n_train : n_train + n_val],
        "test": stream[n_train + n_val :],
    }
    splits = {s: _windows(name, s, piece, int(context)) for s, piece in pieces.items()}
    return _dataset.Dataset(
        name=name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=BYTES if vocab is None else len(vocab),
        input_shape=(int(context),),
        vocab=vocab,
    )


def decode(ds: _dataset.Dataset, tokens: ArrayLike) -> str:
    """The text of ``tokens`` (a 1-D sequence, or one token), the inverse of :func:`load_text`'s
    tokenisation: characters of ``ds.vocab`` (char level) or UTF-8 bytes (byte level; a
    character cut at a window's edge decodes to ``"\\ufffd"``).

    Raises:
      ValueError: ``ds`` is not a text dataset, ``tokens`` is not 1-D integer, or a token is out
        of ``[0, ds.num_classes)``.

    Example:
      >>> ds = load_text("pydoc", context=16)
      >>> text = decode(ds, ds.train.x[0])
      >>> len(text), text == text_corpus("pydoc")[:16]
      (16, True)
      >>> decode(load_text("pydoc", context=16, level="byte"), [104, 105])
      'hi'
    """
    byte_level = (
        ds.vocab is None
        and ds.num_classes == BYTES
        and len(ds.input_shape) == 1
        and np.issubdtype(ds.train.x.dtype, np.integer)
    )
    if ds.vocab is None and not byte_level:
        raise ValueError(
            f"ds must be a text dataset (from load_text: token windows with a vocab, or bytes), "
            f"got {ds!r}."
        )
    ids = np.asarray(tokens)
    if ids.ndim > 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"tokens must be one integer token or a 1-D sequence of them, got "
            f"{ids.dtype.name}{list(ids.shape)}; decode one window at a time (ds.train.x[i])."
        )
    ids = ids.reshape(-1).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= ds.num_classes):
        raise ValueError(
            f"tokens must be in [0, {ds.num_classes}) (the vocabulary of {ds.name!r}), got "
            f"tokens from {ids.min()} to {ids.max()}."
        )
    if byte_level:
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
    assert ds.vocab is not None  # for the type checker
    return "".join(ds.vocab[i] for i in ids.tolist())
