"""ImageNet-scale input: JPEGs streamed per process through grain, augmented in worker processes.

Two ways to hold the data, found in `config.data.dir`:
- a folder of JPEGs, `train/<class>/*.JPEG` and `val/<class>/*.JPEG` (classes: the sorted folder
  names of train/, the usual layout of an extracted ILSVRC-2012);
- TFDS `imagenet2012` prepared as ArrayRecord in that folder, read with `tfds.data_source`
  (random access, no TensorFlow input pipeline); images are kept as JPEG bytes until the workers
  decode them.

Each process reads only its own shard (grain's `ShardByJaxProcess`): its slice of the shuffled
record order, `global_batch / process_count` examples per step, which
`jax.make_array_from_process_local_data` joins into one global batch sharded along 'data'.
Decoding and augmentation run in grain worker processes (`config.data.workers`), and batches are
prefetched to the devices so the accelerator does not wait on the host.

The order is a pure function of (seed, step): the dataset is a grain `MapDataset`, so batch k of
the run is `dataset[k]`, and a resumed run starts at the checkpoint's step with exactly the batch
an uninterrupted run would have drawn next. The step is all a checkpoint needs: no iterator state
is saved.

Augmentation (the official ImageNet recipe, as TAS's released code uses it): random-resized crop to
224 (scale 0.08–1, aspect 3/4–4/3), horizontal flip, colour jitter 0.4 (brightness, contrast,
saturation), PCA lighting 0.1; evaluation: resize the shorter side to 256, centre crop 224 — at
another `data.image_size` S the shorter side goes to round(S·256/224), so the crop always covers the
same central 87.5% of the shorter side. Workers send uint8 images; normalisation runs on the device.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import threading
import time
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import jax
import numpy as np
from absl import flags, logging

from tas_jax import parallel
from tas_jax.data import augment
from tas_jax.data.datasets import BadDataError, DataNotFoundError
from tas_jax.data.sources import BatchSource, EvalSource

if TYPE_CHECKING:
  import grain


def _grain():
  """grain, imported when an ImageNet stream is built: the in-memory datasets (and an image
  without grain, such as the accelerator check's) do without it."""
  try:
    import grain
  except ImportError:
    raise ImportError("streaming ImageNet needs grain: pip install grain") from None
  return grain


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# PCA of ImageNet's RGB pixels (values in [0, 1]), as the official ImageNet recipe uses them
EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
EIGVEC = np.array(
  [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32
)
JPEG_SUFFIXES = (".jpeg", ".jpg", ".png")


def die_with_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 0) -> None:
  """In a grain worker: exits when the training process dies, even by `kill -9`. Without it a
  killed run leaves its decoding workers, a few hundred MB each, running. A daemon thread watches
  the parent's pid (an orphan is given another parent). Linux's PR_SET_PDEATHSIG would not do:
  it fires when the *thread* that started the worker ends, and grain starts workers from threads
  that end, so a worker was killed mid-run, once while holding the lock of grain's stop event,
  which then hung the training process at `close()`."""
  del worker_index, worker_count
  if os.getppid() != parent_pid:  # the parent died before the worker started
    os._exit(1)

  def watch() -> None:
    while os.getppid() == parent_pid:
      time.sleep(0.5)
    os._exit(1)

  threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# ------------------------------------------------------------------------------------------
# Where the records come from
# ------------------------------------------------------------------------------------------


class ImageFolder:
  """A random-access source over `root/<split>/<class>/*.JPEG`: record i -> {"jpeg", "label"}."""

  def __init__(self, root: str, split: str, classes: Optional[Sequence[str]] = None):
    folder = os.path.join(root, split)
    found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    self.classes = list(classes) if classes is not None else found
    if classes is None and len(found) < 2:
      raise BadDataError(
        f"{folder} has {len(found)} class folder ({', '.join(found)}): a "
        "classifier needs at least two (train/<class>/*.JPEG, one folder per class)"
      )
    index = {c: i for i, c in enumerate(self.classes)}
    self.files, labels = [], []
    for c in found:
      names = sorted(
        n for n in os.listdir(os.path.join(folder, c)) if n.lower().endswith(JPEG_SUFFIXES)
      )
      if not names:
        raise BadDataError(
          f"{os.path.join(folder, c)} holds no images ({', '.join(JPEG_SUFFIXES)}): "
          "every class folder is an output class; remove it or add its images"
        )
      if c not in index:
        raise BadDataError(
          f"{os.path.join(folder, c)}: class {c!r} is not among the training classes"
        )
      for name in names:
        self.files.append(os.path.join(folder, c, name))
        labels.append(index[c])
    self.labels = np.asarray(labels, np.int32)

  def name(self, i: int) -> str:
    return self.files[i]

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> dict:
    with open(self.files[i], "rb") as f:
      return {"jpeg": f.read(), "label": int(self.labels[i])}


class TfdsImageNet:
  """TFDS `imagenet2012` (prepared ArrayRecord) through `tfds.data_source`, images undecoded."""

  def __init__(self, data_dir: Optional[str], split: str):
    import tensorflow_datasets as tfds

    self._split = split
    self._source = tfds.data_source(
      "imagenet2012", split=split, data_dir=data_dir, decoders={"image": tfds.decode.SkipDecoding()}
    )
    self.classes = list(self._source.dataset_info.features["label"].names)
    self._labels = None

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict:
    r = self._source[i]
    return {"jpeg": r["image"], "label": int(r["label"])}

  def name(self, i: int) -> str:
    return f"imagenet2012 {self._split} record {i}"

  @property
  def labels(self) -> np.ndarray:
    """Every record's label (read once: the search's per-class split needs them)."""
    if self._labels is None:
      self._labels = np.asarray([int(self._source[i]["label"]) for i in range(len(self))], np.int32)
    return self._labels


def _has_split(root: str, split: str) -> bool:
  folder = os.path.join(root, split)
  return os.path.isdir(folder) and any(
    os.path.isdir(os.path.join(folder, d)) for d in os.listdir(folder)
  )


def open_split(data_dir: str, split: str, classes: Optional[Sequence[str]] = None):
  """The records of `split` ('train' or 'validation') in `data_dir`: a JPEG folder first, then
  TFDS imagenet2012 prepared there. A missing dataset stops with one line naming where it looked
  and how to prepare it."""
  folder_split = {"validation": "val"}.get(split, split)
  if data_dir and _has_split(data_dir, folder_split):
    return ImageFolder(data_dir, folder_split, classes)
  tfds_dir = os.path.join(data_dir, "imagenet2012") if data_dir else ""
  if data_dir and os.path.isdir(tfds_dir):
    return TfdsImageNet(data_dir, split)
  raise DataNotFoundError(
    f"ImageNet not found: looked for {os.path.join(data_dir or '<config.data.dir>', folder_split)}/"
    f"<class>/*.JPEG and for TFDS imagenet2012 in {tfds_dir or '<config.data.dir>/imagenet2012'}; "
    "extract ILSVRC-2012 into train/<class>/ and val/<class>/ folders there, or prepare it with "
    "`tfds build imagenet2012 --data_dir=DIR --manual_dir=<the ILSVRC tar files>` "
    "(ArrayRecord is the default file format), and pass --config.data.dir=DIR"
  )


# ------------------------------------------------------------------------------------------
# Decoding and augmentation (numpy + Pillow, in the worker processes)
# ------------------------------------------------------------------------------------------

BAD_IMAGES = ("skip", "fail")


def decode(jpeg: bytes):
  """JPEG (or PNG) bytes -> an RGB PIL image (fully loaded: a truncated file fails here)."""
  from PIL import Image

  return Image.open(io.BytesIO(jpeg)).convert("RGB")


def _image(record: dict):
  return record["decoded"] if "decoded" in record else decode(record["jpeg"])


def why_unreadable(e: Exception) -> str:
  """One short reason for a failed read or decode."""
  from PIL import UnidentifiedImageError

  if isinstance(e, UnidentifiedImageError):
    return "not an image file Pillow can read"
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_decodable(records, i: int, bad_images: str = "skip") -> tuple[dict, str]:
  """(record i with its image decoded, '' or the names of the records skipped for it).

  A record that cannot be read or decoded (a truncated or non-image file) stops the run with one
  line naming it (`bad_images='fail'`), or is replaced by the next readable record (`'skip'`): the
  batch keeps its shape and the order stays a function of (seed, step)."""
  skipped = []
  for k in range(len(records)):
    j = (i + k) % len(records)
    try:
      record = records[j]
      return {**record, "decoded": decode(record["jpeg"])}, ";".join(skipped)
    except Exception as e:  # noqa: BLE001 — PIL raises OSError, SyntaxError, ValueError, …
      name = records.name(j) if hasattr(records, "name") else f"record {j}"
      reason = why_unreadable(e)
      if bad_images == "fail":
        raise BadDataError(
          f"{name} cannot be decoded ({reason}): remove it, or skip such files "
          "with --config.data.bad_images=skip (python -m tas_jax.data.check "
          "lists them all)"
        ) from None
      skipped.append(name)
  raise BadDataError(f"no record of {len(records)} can be decoded (first: {skipped[0]})")


def random_resized_crop_box(
  rng: np.random.Generator, width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """(left, top, w, h) of a crop covering a random fraction of the area at a random aspect ratio;
  after 10 failed draws, the centre crop of the image clamped to the ratio range."""
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def colour_jitter(rng: np.random.Generator, x: np.ndarray, strength: float = 0.4) -> np.ndarray:
  """Brightness, contrast and saturation each scaled by a factor in [1 − s, 1 + s], in a random
  order (x: float32 HWC in [0, 1])."""
  grey = lambda im: im @ np.array([0.299, 0.587, 0.114], np.float32)
  for op in rng.permutation(3):
    f = np.float32(rng.uniform(1 - strength, 1 + strength))
    if op == 0:
      x = x * f
    elif op == 1:
      x = (x - grey(x).mean()) * f + grey(x).mean()
    else:
      g = grey(x)[..., None]
      x = (x - g) * f + g
    x = np.clip(x, 0.0, 1.0)
  return x


def lighting(rng: np.random.Generator, x: np.ndarray, alphastd: float = 0.1) -> np.ndarray:
  """AlexNet-style PCA lighting noise: add EIGVEC · (α ⊙ EIGVAL), α ~ N(0, alphastd²)."""
  alpha = rng.normal(0.0, alphastd, 3).astype(np.float32)
  return x + EIGVEC @ (alpha * EIGVAL)


def train_view(record: dict, rng: np.random.Generator, size: int = 224) -> dict:
  """The training view of one record: uint8 HWC `size`×`size` and its label."""
  from PIL import Image

  img = _image(record)
  left, top, w, h = random_resized_crop_box(rng, *img.size)
  img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
  x = np.asarray(img, np.float32) / 255.0
  if rng.uniform() < 0.5:
    x = x[:, ::-1]
  x = lighting(rng, colour_jitter(rng, x))
  return {
    "image": np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8),
    "label": np.int32(record["label"]),
  }


EVAL_CROP_FRACTION = 224 / 256  # the centre crop's share of the resized shorter side


def eval_resize(size: int) -> int:
  """The shorter side an evaluation view is resized to before its centre `size` crop: 256 at 224,
  round(size / 0.875) at any size, so every size evaluates the same part of the photo."""
  return round(size / EVAL_CROP_FRACTION)


def eval_view(record: dict, size: int = 224, resize: Optional[int] = None) -> dict:
  """Resize the shorter side to `resize` (default `eval_resize(size)`), centre crop `size`: uint8
  HWC and the label."""
  from PIL import Image

  resize = resize or eval_resize(size)
  img = _image(record)
  w, h = img.size
  s = resize / min(w, h)
  img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
  w, h = img.size
  left, top = (w - size) // 2, (h - size) // 2
  return {
    "image": np.asarray(img.crop((left, top, left + size, top + size)), np.uint8),
    "label": np.int32(record["label"]),
  }


# ------------------------------------------------------------------------------------------
# Batch sources
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamOptions:
  image_size: int = 224
  workers: int = 0  # grain worker processes (0: decode in this process)
  prefetch: int = 2  # global batches put on the devices ahead of the step
  shard_index: int = -1  # -1: this JAX process's (tests pass their own)
  shard_count: int = -1
  bad_images: str = "skip"  # an unreadable image: skip (warn, next record) | fail


def _shard(options: StreamOptions) -> tuple[int, int]:
  """(this process's shard, shard count): grain's ShardByJaxProcess unless a test names one."""
  if options.shard_index >= 0:
    return options.shard_index, options.shard_count
  by_process = _grain().sharding.ShardByJaxProcess(drop_remainder=True)
  return by_process.shard_index, by_process.shard_count


def train_dataset(
  records, indices: np.ndarray, process_batch: int, seed: int, options: StreamOptions
) -> grain.MapDataset:
  """(batches of this process's shard, steps per epoch): every pass a fresh seeded order of
  `indices`, process p of n taking every n-th example of the endless stream of passes, cut into
  full per-process batches; an epoch is len(indices) // global batch steps (the stream runs on
  across epoch boundaries, so no example is dropped). Random access: element k is step k's batch."""
  shard, count = _shard(options)
  per_epoch = len(indices) // (process_batch * count) * process_batch
  if per_epoch == 0:
    raise ValueError(
      f"{len(indices)} examples cannot fill one batch of {process_batch} on each of "
      f"{count} processes"
    )
  ds = _grain().MapDataset.source(np.asarray(indices, np.int64)).shuffle(seed=seed).repeat(None)
  ds = ds[shard::count]  # this process's examples
  ds = ds.random_map(
    functools.partial(
      _train_item, records=records, size=options.image_size, bad_images=options.bad_images
    ),
    seed=seed + 1,
  )
  ds = ds.batch(process_batch, drop_remainder=True)
  return ds, per_epoch // process_batch


def _quiet_resource_tracker() -> None:
  """The batches grain's workers had in flight when the iterator closes stay in shared memory
  until Python's resource tracker (a process of its own, started with this environment) frees
  them at exit, warning about each "leak"; that warning says nothing a user can act on."""
  rule = "ignore:resource_tracker:UserWarning"
  current = os.environ.get("PYTHONWARNINGS", "")
  if rule not in current:
    os.environ["PYTHONWARNINGS"] = f"{current},{rule}" if current else rule


def _train_item(i, rng, records, size: int, bad_images: str) -> dict:
  record, skipped = read_decodable(records, int(i), bad_images)
  return {**train_view(record, rng, size), "skipped": skipped}


class _SkipReport:
  """Warns once per skipped file, in the training process, and counts them."""

  def __init__(self):
    self.files: set = set()

  def add(self, names) -> None:
    for joined in names:
      for name in filter(None, str(joined).split(";")):
        if name not in self.files:
          self.files.add(name)
          logging.warning("skipped an image that cannot be decoded: %s", name)


class StreamingSource(BatchSource):
  """Global training batches from per-process grain pipelines (see the module docstring)."""

  def __init__(
    self,
    records,
    indices,
    global_batch: int,
    mesh,
    seed: int,
    options: StreamOptions = StreamOptions(),
    mean=MEAN,
    std=STD,
  ):
    _, count = _shard(options)
    if global_batch % count:
      raise ValueError(f"global batch {global_batch} does not split over {count} processes")
    self.global_batch = global_batch
    self._dataset, self.steps_per_epoch = train_dataset(
      records, indices, global_batch // count, seed, options
    )
    self._options = options
    self.skipped = _SkipReport()
    self._sharding = parallel.batch_sharded(mesh)
    self._normalise = jax.jit(
      lambda b: {"image": augment.normalize(b["image"], mean, std), "label": b["label"]},
      out_shardings=self._sharding,
    )

  def iterate(self, start_step: int) -> Iterator[dict]:
    it = self._dataset[start_step:].to_iter_dataset(
      _grain().ReadOptions(num_threads=4, prefetch_buffer_size=4)
    )
    if self._options.workers > 0:
      if (
        not flags.FLAGS.is_parsed()
      ):  # grain reads absl flags; a notebook or test never parsed them
        flags.FLAGS.mark_as_parsed()
      _quiet_resource_tracker()
      it = it.mp_prefetch(
        _grain().MultiprocessingOptions(num_workers=self._options.workers),
        worker_init_fn=functools.partial(die_with_parent, os.getpid()),
      )
    host = iter(it)
    queue: collections.deque = collections.deque()
    try:
      while True:
        while len(queue) < max(1, self._options.prefetch):
          local = dict(next(host))
          self.skipped.add(local.pop("skipped"))
          batch = {
            k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in local.items()
          }
          queue.append(self._normalise(batch))
        yield queue.popleft()
    finally:  # the loop closes the generator: stop the worker processes, free their memory
      if hasattr(host, "close"):
        host.close()


class StreamingEvalSource(EvalSource):
  """The validation split, resized and centre-cropped, in global batches padded with a mask."""

  def __init__(
    self,
    records,
    global_batch: int,
    mesh,
    options: StreamOptions = StreamOptions(),
    mean=MEAN,
    std=STD,
  ):
    shard, count = _shard(options)
    if global_batch % count:
      raise ValueError(f"eval batch {global_batch} does not split over {count} processes")
    self.num_examples = len(records)
    self._records, self._options = records, options
    self.skipped = _SkipReport()
    self._local = global_batch // count
    self._shard, self._count = shard, count
    self._sharding = parallel.batch_sharded(mesh)
    self._normalise = jax.jit(
      lambda b: {
        "image": augment.normalize(b["image"], mean, std),
        "label": b["label"],
        "mask": b["mask"],
      },
      out_shardings=self._sharding,
    )

  def batches(self) -> Iterator[dict]:
    n, local, count = self.num_examples, self._local, self._count
    num_batches = -(-n // (local * count))
    size = self._options.image_size
    blank = {"image": np.zeros((size, size, 3), np.uint8), "label": np.int32(0)}
    for b in range(num_batches):
      rows = []
      for j in range(local):
        i = b * local * count + self._shard * local + j
        if i < n:  # an unreadable validation image is left out of the accuracy (mask 0)
          record, skipped = read_decodable(self._records, i, self._options.bad_images)
          self.skipped.add([skipped])
          rows.append((eval_view(record, size), float(not skipped)))
        else:
          rows.append((blank, 0.0))
      batch = {
        "image": np.stack([r["image"] for r, _ in rows]),
        "label": np.stack([r["label"] for r, _ in rows]),
        "mask": np.asarray([m for _, m in rows], np.float32),
      }
      yield self._normalise(
        {k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in batch.items()}
      )
