"""Classification datasets as host numpy arrays, with seeded stratified validation splits.

``load(name, seed=..., val_size=..., data_dir=...)`` returns a :class:`Dataset` whose ``train``,
``val`` and ``test`` are ``(x, y)`` pairs: ``x`` float32 NHWC with pixels in [0, 1], ``y`` int32.

* ``"digits"`` — the default and fully offline: scikit-learn's 1,797 8×8 digits, split
  1,197 / 200 / 400 (train / validation / test), all splits stratified by class.
* ``"synthetic"`` — a tiny, seeded, linearly separable problem for fast tests.
* ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` — read with
  ``tfds.data_source`` (no TensorFlow) from a tensorflow-datasets folder prepared beforehand;
  5,000 training images become the validation split. jaxprune never downloads: a missing dataset
  raises :class:`DatasetNotAvailableError` with the commands that prepare it.

* ``"pydoc"`` (offline: the standard library's help topics) and ``"tiny_shakespeare"``
  (tensorflow-datasets) — text as int32 next-token windows (``load(name, context=64)``, or
  :func:`load_text` for byte level), split 90 / 5 / 5 contiguously; :func:`decode` reads tokens
  back as text.

Views for transfer studies: :func:`class_subset` (some classes, relabelled from 0),
:func:`permute_pixels` (one fixed pixel permutation) and :func:`task`, a dataset by spec string
(``"digits:0-4"``, ``"digits:permuted"``, ``"mnist"``, …).

``load(..., normalize=True)`` (or :func:`normalize`) standardises the pixels per channel with the
training split's mean and std. :class:`Augment` and :func:`augment_batch` (module
:mod:`jaxprune.data.augment`) are the random crops and flips that :func:`jaxprune.train.fit`
applies on the device inside its scanned step (``fit(..., augment=Augment())``).

Example:
  >>> from jaxprune import data
  >>> ds = data.load("synthetic", seed=1)
  >>> ds.name, ds.num_classes, ds.input_shape, len(ds.train.y), len(ds.val.y), len(ds.test.y)
  ('synthetic', 4, (8, 8, 1), 384, 128, 256)
"""

from jaxprune.data._dataset import Dataset as Dataset
from jaxprune.data._dataset import Normalization as Normalization
from jaxprune.data._dataset import Split as Split
from jaxprune.data._dataset import normalize as normalize
from jaxprune.data._dataset import stratified_take as stratified_take
from jaxprune.data._local import digits as digits
from jaxprune.data._local import synthetic as synthetic
from jaxprune.data._registry import REGISTRY as REGISTRY
from jaxprune.data._registry import load as load
from jaxprune.data._registry import names as names
from jaxprune.data._text import TEXT_SETS as TEXT_SETS
from jaxprune.data._text import decode as decode
from jaxprune.data._text import load_text as load_text
from jaxprune.data._text import text_corpus as text_corpus
from jaxprune.data._tfds import TFDS_SETS as TFDS_SETS
from jaxprune.data._tfds import DatasetNotAvailableError as DatasetNotAvailableError
from jaxprune.data._views import class_subset as class_subset
from jaxprune.data._views import permute_pixels as permute_pixels
from jaxprune.data._views import task as task
from jaxprune.data.augment import Augment as Augment
from jaxprune.data.augment import augment_batch as augment_batch

__all__ = [
    "REGISTRY",
    "TEXT_SETS",
    "TFDS_SETS",
    "Augment",
    "Dataset",
    "DatasetNotAvailableError",
    "Normalization",
    "Split",
    "augment_batch",
    "class_subset",
    "decode",
    "digits",
    "load",
    "load_text",
    "names",
    "normalize",
    "permute_pixels",
    "stratified_take",
    "synthetic",
    "task",
    "text_corpus",
]
