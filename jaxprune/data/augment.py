r"""On-device data augmentation: random crops after zero padding, and random horizontal flips.

The standard CIFAR recipe (He et al. 2016; open_lth's CIFAR-10 datasets): pad every image by
:math:`p` pixels on each side of its height and width, take a random :math:`H \times W` crop of
the padded image, and mirror it left–right with probability 1/2. One training step augments its
batch with :func:`augment_batch`; :func:`jaxprune.train.fit` does it inside its scanned step
(``fit(..., augment=Augment())``), with draws that depend only on a key and the global step, so a
resumed run sees exactly the batches of an uninterrupted one.

Per example :math:`b` of an NHWC batch the draws are the crop offsets
:math:`d^y_b, d^x_b \sim \mathcal U\{0, \dots, 2p\}` and the flip :math:`f_b \sim
\mathrm{Bernoulli}(1/2)` (:func:`draws`), and the output is

.. math::

   \tilde x_b[i, j, c] = \mathrm{pad}_p(x_b)[d^y_b + i,\; d^x_b + j'_b,\; c], \qquad
   j'_b = \begin{cases} W - 1 - j & f_b \\ j & \text{otherwise,} \end{cases}

where :math:`\mathrm{pad}_p` adds :math:`p` rows and columns of ``fill`` on every side (zero by
default). Cropping and then flipping is the same map as flipping the padded image and cropping at
:math:`2p - d^x_b`; here it is one gather with the out-of-image positions set to ``fill``, with
no padded copy of the batch (the cheapest of the formulations measured in
``benchmarks/augment.py``: a ``vmap`` of ``dynamic_slice`` crops is an order of magnitude slower
inside ``lax.scan`` on a CPU).

Example:
  >>> import jax, jax.numpy as jnp
  >>> from jaxprune import data
  >>> x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  >>> out = data.augment_batch(data.Augment(crop_padding=1), jax.random.key(0), x)
  >>> out.shape, out.dtype
  ((2, 4, 4, 1), dtype('float32'))
  >>> data.augment_batch(data.Augment(0, flip=False), jax.random.key(0), x) is x  # identity
  True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune._types import Array, Key

__all__ = ["Augment", "augment_batch", "draws"]


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random crop after padding, and random horizontal flip: a static (hashable) setting.

    ``Augment(0, flip=False)`` is the identity (:attr:`is_identity`): the training engine then
    adds nothing to its step.

    Attributes:
      crop_padding: :math:`p`, the pixels of ``fill`` added on each side of the height and width
        before a random crop of the original size (offsets uniform in ``[0, 2p]``); 0: no crop.
        Must be smaller than the image's height and width (checked where the images are seen).
      flip: mirror each example left–right (along the width axis) with probability 1/2.
      fill: the value of the padded pixels, one number or one per channel. Zero is black for
        pixels in [0, 1]; for a dataset standardised with :func:`jaxprune.data.normalize`, the
        padding torchvision applies *before* normalising (open_lth's order) is black, i.e.
        ``ds.normalization.black`` (:math:`-\\mu_c/\\sigma_c` per channel).

    Example:
      >>> Augment()
      Augment(crop_padding=4, flip=True, fill=0.0)
      >>> Augment(0, False).is_identity, hash(Augment()) == hash(Augment(4, True))
      (True, True)
      >>> Augment(crop_padding=-1)
      Traceback (most recent call last):
      ...
      ValueError: crop_padding must be a non-negative int (pixels added on each side), got -1.
    """

    crop_padding: int = 4
    flip: bool = True
    fill: float | tuple[float, ...] = 0.0

    def __post_init__(self) -> None:
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 0:
            raise ValueError(
                f"crop_padding must be a non-negative int (pixels added on each side), got {p!r}."
            )
        if not isinstance(self.flip, bool | np.bool_):
            raise ValueError(f"flip must be a bool, got {self.flip!r}.")
        fill = self.fill
        many = isinstance(fill, Sequence | np.ndarray) and not isinstance(fill, str)
        values: list[Any] = list(np.ravel(np.asarray(fill, dtype=object))) if many else [fill]
        if not values or not all(
            isinstance(v, int | float | np.integer | np.floating)
            and not isinstance(v, bool)
            and np.isfinite(v)
            for v in values
        ):
            raise ValueError(
                "fill must be a finite number or a non-empty sequence of them (one per channel), "
                f"got {fill!r}."
            )
        # Plain Python values: the setting is hashed as a static jit argument.
        object.__setattr__(self, "crop_padding", int(p))
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(
            self, "fill", tuple(float(v) for v in values) if many else float(values[0])
        )

    @property
    def is_identity(self) -> bool:
        """Whether the setting leaves every batch unchanged (no padding, no flip)."""
        return self.crop_padding == 0 and not self.flip

    def check_images(self, shape: Sequence[int], *, name: str = "x") -> None:
        """Raise a ``ValueError`` unless ``shape`` is an NHWC batch this setting can augment.

        The padding must be smaller than the height and the width, and a per-channel ``fill``
        must have one value per channel.
        """
        shape = tuple(int(d) for d in shape)
        if len(shape) != 4:
            raise ValueError(
                f"augmentation needs {name} to be an NHWC batch of images (batch, height, width, "
                f"channels), got shape {list(shape)}; reshape flat inputs to images, or pass "
                "augment=None."
            )
        _, h, w, c = shape
        if self.crop_padding >= min(h, w):
            raise ValueError(
                f"crop_padding must be smaller than the image's height and width ({h}×{w} for "
                f"{name} of shape {list(shape)}), got {self.crop_padding}: a padding that large "
                "would crop out windows with no pixel of the image left in some rows or columns."
            )
        if isinstance(self.fill, tuple) and len(self.fill) not in (1, c):
            raise ValueError(
                f"fill must hold one value or one per channel ({c} for {name} of shape "
                f"{list(shape)}), got {len(self.fill)} values."
            )


def draws(augment: Augment, key: Key, batch: int) -> tuple[Array, Array, Array]:
    """The random choices of :func:`augment_batch` for ``batch`` examples drawn from ``key``.

    Returns ``(dy, dx, flip)``: int32 crop offsets in ``[0, 2p]`` (rows, columns of the padded
    image; all 0 when ``p = 0``) and bool flips (all ``False`` when ``augment.flip`` is off),
    each of shape ``[batch]``.

    Example:
      >>> import jax
      >>> dy, dx, flip = draws(Augment(2), jax.random.key(0), 1000)
      >>> int(dy.min()), int(dy.max()), flip.dtype.name
      (0, 4, 'bool')
    """
    k_offset, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_offset, (batch, 2), 0, 2 * augment.crop_padding + 1)
    if augment.flip:
        flip = jax.random.bernoulli(k_flip, 0.5, (batch,))
    else:
        flip = jnp.zeros((batch,), bool)
    return offsets[:, 0], offsets[:, 1], flip


def augment_batch(augment: Augment, key: Key, x: Array) -> Array:
    """Randomly crop (after padding) and flip each example of the NHWC batch ``x``.

    The formula is in the module docstring; the draws are :func:`draws` ``(augment, key,
    x.shape[0])``. Pure and cheap (one gather): use it inside a jitted or scanned step, under
    ``vmap`` for per-ticket keys. ``augment.is_identity`` returns ``x`` itself.

    Args:
      augment: the setting (static).
      key: a typed PRNG key; one draw per example.
      x: an NHWC batch ``(batch, height, width, channels)``, any dtype; the padding must be
        smaller than the height and the width.

    Returns:
      The augmented batch, of ``x``'s shape and dtype.

    Raises:
      ValueError: ``x`` is not 4-D, or the padding is not smaller than the image.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
      >>> aug = Augment(crop_padding=1, flip=True)
      >>> key = jax.random.key(3)
      >>> dy, dx, flip = draws(aug, key, 1)
      >>> ref = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
      >>> ref = ref[:, int(dy[0]) : int(dy[0]) + 3, int(dx[0]) : int(dx[0]) + 3]
      >>> ref = ref[:, :, ::-1] if bool(flip[0]) else ref
      >>> bool(np.array_equal(augment_batch(aug, key, x), ref))
      True
    """
    augment.check_images(np.shape(x))
    if augment.is_identity:
        return x
    b, h, w, _ = x.shape
    p = augment.crop_padding
    dy, dx, flip = draws(augment, key, b)
    cols = jnp.arange(w)[None]
    # Positions in the unpadded image; those outside it read the fill value.
    rows = dy[:, None] + jnp.arange(h)[None] - p
    cols = dx[:, None] + jnp.where(flip[:, None], w - 1 - cols, cols) - p
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    picked = x[
        jnp.arange(b)[:, None, None],
        jnp.clip(rows, 0, h - 1)[:, :, None],
        jnp.clip(cols, 0, w - 1)[:, None, :],
    ]
    fill = jnp.asarray(augment.fill, x.dtype).reshape(1, 1, 1, -1)
    return jnp.where(inside[..., None], picked, fill)
