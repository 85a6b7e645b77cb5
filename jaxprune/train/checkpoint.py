"""Save and restore rewind points, trained weights and masks of a ticket batch (orbax-checkpoint).

A checkpoint is any pytree of arrays — typically ``{"theta0": ..., "theta_k": ..., "mask": ...,
"params": ...}`` stacked over tickets — written by ``orbax.checkpoint.StandardCheckpointer`` into
one folder. Restoring with ``like=`` returns exactly that structure, dtypes (bool masks stay bool)
and shapes.

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

import os
from pathlib import Path

import jax
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
    """Read a checkpoint written by :func:`save`, with the structure, shapes and dtypes of ``like``."""
    path = Path(directory).absolute()
    if not path.exists():
        raise ValueError(f"directory {str(path)!r} does not exist: no checkpoint to restore.")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.StandardCheckpointer() as ckptr:
        out = ckptr.restore(path, target)
    _checks.check_like(out, like, name="restored checkpoint", ref_name="like")
    return out
