"""Batch sources: where a stage's batches come from, behind one interface.

Every train and evaluation step takes `(state, batch)` with a batch dict of global arrays sharded
along the mesh's 'data' axis:

    {"image": float32 (B, H, W, C), normalised;  "label": int32 (B,)}     (training)
    ... plus "mask": float32 (B,), 1 for real examples, 0 for padding         (evaluation)

A `BatchSource` yields the training batches of step s, s+1, … from any step (a resumed run asks
for the step it stopped at); an `EvalSource` yields one pass over the test set.

`InMemorySource` is the source of datasets that fit on the device (CIFAR, Fashion-MNIST, the
embedded set): the uint8 images stay resident on the device, and one jitted function per step
gathers the batch from the epoch's permutation and crops, flips and normalises it there, so the
host sends a step number and never waits. A streaming per-host source (ImageNet) implements the
same interface.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tas_jax import parallel
from tas_jax.data import augment
from tas_jax.data.datasets import ImageDataset
from tas_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The training view of an image: random crop with zero padding, flip, normalisation."""

  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int = 4
  flip: bool = True


class BatchSource(abc.ABC):
  """Training batches of a fixed global size, `steps_per_epoch` of them per epoch."""

  global_batch: int
  steps_per_epoch: int

  @abc.abstractmethod
  def iterate(self, start_step: int) -> Iterator[dict]:
    """The batches of steps start_step, start_step + 1, …"""

  def abstract_batch(self) -> Optional[dict]:
    """A batch's shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s), for compiling a step
    before the first batch is there; None when the source cannot tell ahead."""
    return None


class EvalSource(abc.ABC):
  num_examples: int

  @abc.abstractmethod
  def batches(self) -> Iterator[dict]:
    """One pass over the evaluation set, padded batches with a "mask"."""


def check_batch(field: str, batch: int, num_devices: int, num_examples: int) -> int:
  """Steps per epoch of a global batch over `num_examples` (the last partial batch is dropped:
  static shapes); a batch that does not split over the devices is refused with one line."""
  if batch % num_devices:
    raise ConfigError(
      f"config.{field}={batch}: must be a multiple of the {num_devices} "
      "devices in use (or set config.num_devices)"
    )
  if batch > num_examples:
    raise ConfigError(f"config.{field}={batch}: larger than the {num_examples} training examples")
  return num_examples // batch


class DeviceDataset:
  """A dataset resident on the device: uint8 train images and labels, and the test set padded
  to whole evaluation batches (a multiple of the device count)."""

  def __init__(self, ds: ImageDataset, mesh, eval_batch: int):
    n_dev = mesh.shape[parallel.AXIS]
    self.mean, self.std = ds.mean, ds.std
    self.eval_batch = -(-min(eval_batch, len(ds.test_labels)) // n_dev) * n_dev
    n_test = len(ds.test_labels)
    pad = -(-n_test // self.eval_batch) * self.eval_batch - n_test
    self.num_train, self.num_test = len(ds.train_labels), n_test
    self.mesh = mesh
    self.train_images, self.train_labels = parallel.put_replicated(
      (ds.train_images, ds.train_labels), mesh
    )
    self.test_images, self.test_labels = parallel.put_replicated(
      (
        np.pad(ds.test_images, ((0, pad), (0, 0), (0, 0), (0, 0))),
        np.pad(ds.test_labels, (0, pad)),
      ),
      mesh,
    )


class InMemorySource(BatchSource):
  """Batches gathered and augmented on the device from a resident dataset.

  `indices` are the examples this source draws from (the whole training set, or one half of it for
  the search); `epoch_key(epoch)` keys the epoch's shuffle and `step_key(step)` the step's
  augmentation (both traced). An epoch is `steps_per_epoch` batches (default: as many whole batches
  as the indices hold; sources stepped together share one count). Every example's augmentation is
  keyed by its position in the global batch, so the batch is the same on any number of devices.
  """

  def __init__(
    self,
    data: DeviceDataset,
    indices: np.ndarray,
    global_batch: int,
    augmentation: Augmentation,
    epoch_key: Callable[[jax.Array], jax.Array],
    step_key: Callable[[jax.Array], jax.Array],
    steps_per_epoch: int = 0,
  ):
    self.global_batch = global_batch
    self.steps_per_epoch = steps_per_epoch or len(indices) // global_batch
    if self.steps_per_epoch * global_batch > len(indices):
      raise ValueError(
        f"{self.steps_per_epoch} steps of {global_batch} need "
        f"{self.steps_per_epoch * global_batch} examples, the source has {len(indices)}"
      )
    self._data = data
    self._indices = parallel.put_replicated(np.asarray(indices, np.int32), data.mesh)
    sharding = parallel.batch_sharded(data.mesh)
    spe, a = self.steps_per_epoch, augmentation

    def shuffle(indices, epoch):
      return indices[jax.random.permutation(epoch_key(epoch), indices.shape[0])]

    def gather(images, labels, perm, step):
      """(the batch of `step`, step + 1): the step counter lives on the device."""
      idx = jax.lax.dynamic_slice(perm, ((step % spe) * global_batch,), (global_batch,))
      idx = jax.lax.with_sharding_constraint(idx, sharding)
      positions = jax.lax.with_sharding_constraint(jnp.arange(global_batch), sharding)
      keys = augment.example_keys(step_key(step), positions)
      x = augment.train_batch(keys, images[idx], a.mean, a.std, a.crop_padding, a.flip)
      return {"image": x, "label": labels[idx]}, step + 1

    self._replicated = parallel.replicated(data.mesh)
    self._shuffle = jax.jit(shuffle, out_shardings=self._replicated)
    self._gather = jax.jit(
      gather,
      out_shardings=(sharding, self._replicated),
      compiler_options=parallel.compiler_options(),
    )

  def permutation(self, epoch: int) -> jax.Array:
    """The order in which epoch `epoch` visits this source's examples (dataset indices)."""
    return self._shuffle(self._indices, jax.device_put(np.int32(epoch), self._replicated))

  def iterate(self, start_step: int) -> Iterator[dict]:
    """Sends the host's step number once (and an epoch number per epoch), never per step."""
    step, epoch, perm = start_step, None, None
    step_on_device = jax.device_put(np.int32(start_step), self._replicated)
    while True:
      if step // self.steps_per_epoch != epoch:
        epoch = step // self.steps_per_epoch
        perm = self.permutation(epoch)
      batch, step_on_device = self._gather(
        self._data.train_images, self._data.train_labels, perm, step_on_device
      )
      yield batch
      step += 1

  def abstract_batch(self) -> dict:
    d = self._data
    step = jax.ShapeDtypeStruct((), np.int32, sharding=self._replicated)
    batch, _ = self._gather.eval_shape(d.train_images, d.train_labels, self._indices, step)
    sharding = parallel.batch_sharded(d.mesh)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), batch)

  def compilations(self) -> dict:
    return {"gather": self._gather._cache_size(), "shuffle": self._shuffle._cache_size()}


class Zipped(BatchSource):
  """Several sources stepped together: batch = {name: that source's batch} (the search's halves)."""

  def __init__(self, **sources: BatchSource):
    counts = {s.steps_per_epoch for s in sources.values()}
    if len(counts) != 1:
      raise ValueError(f"sources stepped together need one epoch length, got {sorted(counts)}")
    self.steps_per_epoch = counts.pop()
    self.global_batch = sum(s.global_batch for s in sources.values())
    self._sources = sources

  def source(self, name: str) -> BatchSource:
    return self._sources[name]

  def abstract_batch(self) -> Optional[dict]:
    batches = {name: s.abstract_batch() for name, s in self._sources.items()}
    return None if any(b is None for b in batches.values()) else batches

  def iterate(self, start_step: int) -> Iterator[dict]:
    iterators = {name: s.iterate(start_step) for name, s in self._sources.items()}
    try:
      while True:
        yield {name: next(it) for name, it in iterators.items()}
    finally:  # closing this closes every source's iterator (streaming ones stop their workers)
      for it in iterators.values():
        it.close()


class InMemoryEvalSource(EvalSource):
  """The resident test set in padded batches, normalised on the device."""

  def __init__(self, data: DeviceDataset):
    self.num_examples = data.num_test
    self._data = data
    b, n = data.eval_batch, data.num_test
    sharding = parallel.batch_sharded(data.mesh)
    self._num_batches = data.test_labels.shape[0] // b

    def batch(images, labels, i):
      x = jax.lax.dynamic_slice_in_dim(images, i * b, b)
      y = jax.lax.dynamic_slice_in_dim(labels, i * b, b)
      mask = (i * b + jnp.arange(b) < n).astype(jnp.float32)
      return {"image": augment.normalize(x, data.mean, data.std), "label": y, "mask": mask}

    self._batch = jax.jit(batch, out_shardings=sharding)

  def batches(self) -> Iterator[dict]:
    for i in range(self._num_batches):
      yield self._batch(self._data.test_images, self._data.test_labels, np.int32(i))
