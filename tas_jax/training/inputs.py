"""A config's data as the stages see it: what the dataset is, and batch sources over it.

`load(config, mesh)` picks the kind of source the dataset needs:
- in memory (`embedded`, `fashion_mnist`, `mnist`, `cifar10`, `cifar100`): the whole set resident
  on the device, batches gathered and augmented there (`tas_jax.data.sources.InMemorySource`);
- streaming (`imagenet`): JPEGs read per process through grain (`tas_jax.data.imagenet`).
Both give the stages the same thing: `(state, batch)` steps fed by a `BatchSource`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
import numpy as np

from tas_jax import parallel
from tas_jax.data import datasets, imagenet, sources

STREAMING = ("imagenet",)


@dataclasses.dataclass
class Inputs:
  """Facts about the dataset, and the sources the stages draw batches from."""

  name: str
  source: str  # where it was read from
  num_classes: int
  image_size: int
  channels: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_train: int
  num_test: int
  train_labels: np.ndarray  # the search splits the training set per class
  _train: Callable
  _eval: Callable
  _sample: Callable
  class_names: tuple[
    str, ...
  ] = ()  # label index -> name (ImageNet: the synset folders); () unknown
  preprocessing: str = ""  # how an evaluation image is made from a stored one, in words

  def train_source(
    self,
    indices: np.ndarray,
    batch: int,
    seed: int,
    epoch_key: Callable,
    step_key: Callable,
    steps_per_epoch: int = 0,
  ) -> sources.BatchSource:
    """Training batches over `indices` of the training set. In memory, `epoch_key(epoch)` and
    `step_key(step)` key the shuffle and augmentation; streaming, `seed` does."""
    return self._train(indices, batch, seed, epoch_key, step_key, steps_per_epoch)

  def eval_source(self) -> sources.EvalSource:
    """One pass over the test (validation) set in batches of the stage's evaluation batch."""
    return self._eval()

  def sample_images(self, n: int) -> np.ndarray:
    """The first n test images, uint8 NHWC (the results table's throughput batch)."""
    return self._sample(n)


def load(config: ml_collections.ConfigDict, mesh, eval_batch: int) -> Inputs:
  """The config's dataset; `eval_batch` is the stage's evaluation batch (global)."""
  if config.data.name in STREAMING:
    return _streaming(config, mesh, eval_batch)
  return _in_memory(config, mesh, eval_batch)


def _in_memory(config, mesh, eval_batch) -> Inputs:
  ds = datasets.load(config.data.name, config.data.dir or None, config.data.image_size)
  n = config.data.train_examples
  if n != -1:
    ds = dataclasses.replace(ds, train_images=ds.train_images[:n], train_labels=ds.train_labels[:n])
  augmentation = sources.Augmentation(ds.mean, ds.std, config.data.crop_padding, config.data.flip)
  data = None  # put on the device when a stage first asks for a source

  def resident() -> sources.DeviceDataset:
    nonlocal data
    if data is None:
      data = sources.DeviceDataset(ds, mesh, eval_batch)
    return data

  def train(indices, batch, seed, epoch_key, step_key, steps_per_epoch):
    return sources.InMemorySource(
      resident(), indices, batch, augmentation, epoch_key, step_key, steps_per_epoch
    )

  return Inputs(
    ds.name,
    ds.source,
    ds.num_classes,
    ds.image_size,
    ds.channels,
    ds.mean,
    ds.std,
    len(ds.train_labels),
    len(ds.test_labels),
    ds.train_labels,
    train,
    lambda: sources.InMemoryEvalSource(resident()),
    lambda n: ds.test_images[:n],
    datasets.CLASS_NAMES.get(ds.name, ()),
    (
      f"the {ds.image_size}x{ds.image_size} images as stored"
      + (" (zero-padded to that size)" if config.data.image_size > 0 else "")
      + ", no resize or crop"
    ),
  )


def _streaming(config, mesh, eval_batch) -> Inputs:
  d = config.data
  n_dev = mesh.shape[parallel.AXIS]
  eval_batch = -(-eval_batch // n_dev) * n_dev  # whole batches on every device, padding masked
  train_records = imagenet.open_split(d.dir, "train")
  val_records = imagenet.open_split(d.dir, "validation", classes=train_records.classes)
  size = 224 if d.image_size == -1 else d.image_size
  options = imagenet.StreamOptions(
    image_size=size, workers=d.workers, prefetch=d.prefetch, bad_images=d.bad_images
  )
  labels = train_records.labels
  n = d.train_examples
  if n != -1:
    labels = labels[:n]

  def train(indices, batch, seed, epoch_key, step_key, steps_per_epoch):
    src = imagenet.StreamingSource(train_records, indices, batch, mesh, seed, options)
    if steps_per_epoch and steps_per_epoch < src.steps_per_epoch:
      src.steps_per_epoch = steps_per_epoch
    return src

  def sample(n_images):
    return np.stack(
      [
        imagenet.eval_view(imagenet.read_decodable(val_records, i)[0], size)["image"]
        for i in range(min(n_images, len(val_records)))
      ]
    )

  kind = "JPEG folder" if isinstance(train_records, imagenet.ImageFolder) else "TFDS imagenet2012"
  return Inputs(
    "imagenet",
    f"{kind} in {d.dir}",
    len(train_records.classes),
    size,
    3,
    imagenet.MEAN,
    imagenet.STD,
    len(labels),
    len(val_records),
    labels,
    train,
    lambda: imagenet.StreamingEvalSource(val_records, eval_batch, mesh, options),
    sample,
    tuple(train_records.classes),
    f"decode as RGB, resize the shorter side to {imagenet.eval_resize(size)} (bilinear), "
    f"centre crop {size}x{size}",
  )
