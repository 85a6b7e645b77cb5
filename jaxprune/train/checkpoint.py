"""Save and restore rewind points, trained weights and masks of a ticket batch (orbax-checkpoint).

A checkpoint is any pytree of arrays — typically ``{"theta0": ..., "theta_k": ..., "mask": ...,
"params": ...}`` stacked over tickets — written by ``orbax.checkpoint.StandardCheckpointer`` into
one folder. Restoring with ``like=`` returns exactly that structure, dtypes (bool masks stay bool)
and shapes.

A damaged checkpoint — a metadata file that is missing or not the JSON orbax wrote, an array file
that is missing or truncated — is refused with a ``ValueError`` naming the folder: delete it and
compute what it held again. A ``like`` whose leaves differ from the saved ones is refused too,
naming the differing paths.

Example:
  >>> import tempfile, pathlib, jax.numpy as jnp
  >>> from jaxprune.train import checkpoint
  >>> tree = {"theta0": {"w": jnp.ones((2, 3))}, "mask": {"w": jnp.ones((2, 3), bool)}}
  >>> folder = pathlib.Path(tempfile.mkdtemp()) / "level_0"
  >>> checkpoint.save(folder, tree)
  >>> back = checkpoint.restore(folder, like=tree)
  >>> back["mask"]["w"].dtype, bool((back["theta0"]["w"] == 1).all())
  (dtype('bool'), True)
"""

from __future__ import annotations

import gc
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxprune import _checks
from jaxprune._types import PyTree

__all__ = ["restore", "save"]


def save(directory: str | os.PathLike[str], tree: PyTree, *, overwrite: bool = False) -> None:
    """Write ``tree`` to ``directory`` (absolute or relative; created). Blocks until written.

    Refuses to replace an existing checkpoint unless ``overwrite=True``, so nothing already
    written is lost by mistake.
    """
    path = Path(directory).absolute()
    if path.exists() and not overwrite:
        raise ValueError(
            f"directory {str(path)!r} already holds a checkpoint; pass overwrite=True to replace it."
        )
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, jax.device_get(tree), force=overwrite)
        ckptr.wait_until_finished()


def restore(directory: str | os.PathLike[str], *, like: PyTree) -> PyTree:
    """Read a checkpoint written by :func:`save`, with the structure, shapes and dtypes of ``like``.

    Raises:
      ValueError: if ``directory`` does not exist, is damaged (a metadata or array file missing,
        truncated or garbled: delete it and compute it again), or holds other leaves or shapes
        than ``like``.
    """
    path = Path(directory).absolute()
    if not path.exists():
        raise ValueError(f"directory {str(path)!r} does not exist: no checkpoint to restore.")
    saved = _saved_leaves(path)
    _check_matches(saved, like, path)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            out = ckptr.restore(path, target)
    except (OSError, ValueError) as err:
        # Orbax stops at the first unreadable array and leaves the other reads' tasks unawaited;
        # collected (now or whenever the garbage collector runs), each would log "Task exception
        # was never retrieved" with a tensorstore dump. The damage is reported once, here: from
        # now on those reports — and only those — are dropped.
        _ASYNCIO.addFilter(_READ_NOISE)  # idempotent
        gc.collect()
        # The leaves and shapes match the metadata, so what fails is reading the arrays.
        raise _damaged(
            path, f"an array file is missing, truncated or garbled: {_short(err)}"
        ) from err
    _checks.check_like(out, like, name="restored checkpoint", ref_name="like")
    return out


class _ReadNoise(logging.Filter):
    """Drops asyncio's reports of the unawaited reads of a failed restore (tensorstore errors)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        unretrieved = text.startswith(("Future exception", "Task exception"))
        return not (unretrieved and "was never retrieved" in text and "tensorstore" in text)


_ASYNCIO = logging.getLogger("asyncio")
_READ_NOISE = _ReadNoise()


# Orbax's own files: _METADATA describes the saved tree (needed to restore), and
# _CHECKPOINT_METADATA the save (timestamps); both are JSON objects.
_METADATA_FILES = {"_METADATA": True, "_CHECKPOINT_METADATA": False}  # name: required


def _damaged(path: Path, what: str) -> ValueError:
    return ValueError(
        f"the checkpoint in {str(path)!r} is damaged ({what}); it cannot be restored. Delete that "
        "folder and compute what it held again."
    )


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= 300 else text[:300] + " …"


def _saved_leaves(path: Path) -> dict[tuple[str, ...], Any]:
    """The saved leaves' metadata by path, from the checkpoint's JSON metadata files (read as
    JSON, never unpickled); a file that is missing, unreadable or not a JSON object is damage."""
    for name, required in _METADATA_FILES.items():
        file = path / name
        if not file.exists():
            if required:
                raise _damaged(path, f"its metadata file {name} is missing")
            continue
        try:
            content = json.loads(file.read_bytes())
        except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError included
            raise _damaged(path, f"its metadata file {name} is not JSON: {_short(err)}") from err
        if not isinstance(content, dict):
            raise _damaged(
                path,
                f"its metadata file {name} holds a JSON {type(content).__name__}, not an object",
            )
    try:
        with ocp.StandardCheckpointer() as ckptr:
            item = ckptr.metadata(path).item_metadata
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as err:
        raise _damaged(path, f"its metadata file _METADATA is not orbax's: {_short(err)}") from err
    if item is None:  # orbax logs why and returns None: it could not read the arrays' metadata
        raise _damaged(
            path, "the saved arrays cannot be read: an array file is missing, truncated or garbled"
        )
    return ocp.tree.to_flat_dict(item.tree)


def _check_matches(saved: dict[tuple[str, ...], Any], like: PyTree, path: Path) -> None:
    """Raise unless ``like`` has exactly the saved leaves (by path), with the saved shapes."""
    wanted = ocp.tree.to_flat_dict(like)
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or extra:
        raise ValueError(
            f"like does not match the checkpoint in {str(path)!r}: "
            + (f"not saved there: {_paths(missing)}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"saved there but not in like: {_paths(extra)}" if extra else "")
            + ". Pass like= with the structure that was saved."
        )
    for key, leaf in wanted.items():
        shape = getattr(saved[key], "shape", None)
        if shape is not None and tuple(shape) != np.shape(leaf):
            raise ValueError(
                f"like/{'/'.join(key)} has shape {list(np.shape(leaf))} but the checkpoint in "
                f"{str(path)!r} saved shape {list(shape)}; pass like= with the saved shapes."
            )


def _paths(keys: list[tuple[str, ...]]) -> str:
    return ", ".join("/".join(k) for k in keys[:3]) + (" …" if len(keys) > 3 else "")
