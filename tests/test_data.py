"""Datasets (IDX, CIFAR archives, TFDS, embedded), the per-class split and on-device
augmentation."""

import gzip
import io
import logging
import os
import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tas_jax import parallel
from tas_jax.data import augment, datasets, sources


def write_idx(path, array):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
  data = header + np.ascontiguousarray(array, np.uint8).tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)


def fake_idx_dir(d, n_train=20, n_test=10, gz=True):
  rng = np.random.default_rng(0)
  arrays = (
    rng.integers(0, 256, (n_train, 28, 28)),
    rng.integers(0, 10, n_train),
    rng.integers(0, 256, (n_test, 28, 28)),
    rng.integers(0, 10, n_test),
  )
  for stem, a in zip(datasets._IDX_FILES, arrays):
    write_idx(os.path.join(d, stem + (".gz" if gz else "")), a)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path, gz):
  xtr, ytr, xte, yte = fake_idx_dir(str(tmp_path), gz=gz)
  ds = datasets.load("mnist", str(tmp_path))
  assert ds.train_images.shape == (20, 28, 28, 1) and ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_images[..., 0], xtr)
  np.testing.assert_array_equal(ds.test_labels, yte)
  assert ds.mean == (0.1307,) and ds.num_classes == 10


def test_read_idx_rejects_truncated_file(tmp_path):
  p = tmp_path / "x-idx1-ubyte"
  p.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x01\x02")
  with pytest.raises(ValueError, match="header says"):
    datasets.read_idx(str(p))


def cifar_records(n, label_bytes, rng):
  images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
  labels = rng.integers(0, 10, (n, label_bytes), dtype=np.uint8)
  return images, labels, np.concatenate([labels, images.reshape(n, -1)], 1).tobytes()


def add_member(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_cifar10_binary_archive(tmp_path):
  rng = np.random.default_rng(1)
  parts = [cifar_records(4, 1, rng) for _ in range(6)]
  with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
    for i, (_, _, data) in enumerate(parts[:5]):
      add_member(tar, f"cifar-10-batches-bin/data_batch_{i + 1}.bin", data)
    add_member(tar, "cifar-10-batches-bin/test_batch.bin", parts[5][2])
  ds = datasets.load("cifar10", str(tmp_path))
  assert ds.train_images.shape == (20, 32, 32, 3)
  # CHW records become HWC images
  np.testing.assert_array_equal(ds.train_images[4], parts[1][0][0].transpose(1, 2, 0))
  np.testing.assert_array_equal(ds.test_labels, parts[5][1][:, 0])
  assert "cifar-10-binary.tar.gz" in ds.source


def test_cifar100_binary_takes_fine_label(tmp_path):
  rng = np.random.default_rng(2)
  train, test = cifar_records(6, 2, rng), cifar_records(3, 2, rng)
  folder = tmp_path / "cifar100" / "cifar-100-binary"
  folder.mkdir(parents=True)
  (folder / "train.bin").write_bytes(train[2])
  (folder / "test.bin").write_bytes(test[2])
  ds = datasets.load("cifar100", str(tmp_path))
  np.testing.assert_array_equal(ds.train_labels, train[1][:, 1])
  assert ds.num_classes == 100 and ds.mean[0] == pytest.approx(129.3 / 255)


def test_cifar10_python_archive(tmp_path):
  rng = np.random.default_rng(3)
  batches = [
    {
      b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
      b"labels": list(rng.integers(0, 10, 3)),
    }
    for _ in range(6)
  ]
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
    for name, b in zip(names, batches):
      add_member(tar, f"cifar-10-batches-py/{name}", pickle.dumps(b))
  ds = datasets.load("cifar10", str(tmp_path))
  assert ds.train_images.shape == (15, 32, 32, 3)
  np.testing.assert_array_equal(
    ds.test_images[2], batches[5][b"data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
  )


def test_missing_data_says_where_it_looked(tmp_path):
  from absl import logging as absl_logging

  absl_logger = absl_logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(logging.NOTSET)  # as in a notebook: absl follows the root logger
  try:
    with pytest.raises(datasets.DataNotFoundError) as e:
      datasets.load("cifar10", str(tmp_path))
    # TFDS was asked and its notes silenced; the logger's level is back unset, not pinned at
    # the root's WARNING (which hid every INFO line after it from a notebook's or test's handler)
    assert absl_logger.level == logging.NOTSET
  finally:
    absl_logger.setLevel(level)
  msg = str(e.value)
  assert str(tmp_path / "cifar-10-binary.tar.gz") in msg and "TFDS" in msg
  assert "--config.data.dir" in msg and "\n" not in msg


def test_tfds_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")  # TensorFlow is in requirements.txt
  with tfds.testing.mock_data(num_examples=12):
    ds = datasets.load("cifar10", str(tmp_path / "empty"))
  assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.source.startswith("TFDS cifar10")


def test_embedded_subset_is_real_and_balanced():
  ds = datasets.load("embedded")
  assert ds.train_images.shape == (5000, 28, 28, 1) and ds.test_images.shape == (1000, 28, 28, 1)
  assert np.all(np.bincount(ds.train_labels) == 500) and np.all(np.bincount(ds.test_labels) == 100)
  # real Fashion-MNIST statistics, not noise
  assert abs(ds.train_images.mean() / 255 - 0.286) < 0.01
  assert os.path.isfile(os.path.join(os.path.dirname(datasets.EMBEDDED_PATH), "LICENSE"))


def test_pad_to_32():
  ds = datasets.load("embedded", image_size=32)
  assert ds.train_images.shape[1:] == (32, 32, 1)
  assert np.all(ds.train_images[:, :2] == 0) and np.all(ds.train_images[:, :, -2:] == 0)
  with pytest.raises(ValueError, match="only zero-padding"):
    datasets.load("embedded", image_size=20)


def test_split_per_class_is_balanced_disjoint_and_seeded():
  labels = np.repeat(np.arange(5), [10, 11, 12, 13, 14])
  a, b = datasets.split_per_class(labels, seed=3)
  assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(labels)
  for c in range(5):
    n = np.sum(labels == c)
    assert np.sum(labels[a] == c) == n // 2 and np.sum(labels[b] == c) == n - n // 2
  a2, _ = datasets.split_per_class(labels, seed=3)
  a3, _ = datasets.split_per_class(labels, seed=4)
  np.testing.assert_array_equal(a, a2)
  assert not np.array_equal(a, a3)


def test_normalize_by_hand():
  x = jnp.array([[[[0, 255]]]], jnp.uint8).reshape(1, 1, 2, 1)
  out = augment.normalize(x, (0.5,), (0.25,))
  np.testing.assert_allclose(out.ravel(), [-2.0, 2.0])


def test_crop_is_a_shift_of_the_zero_padded_image():
  img = jnp.arange(1, 37, dtype=jnp.uint8).reshape(1, 6, 6, 1)
  keys = augment.example_keys(jax.random.key(0), jnp.arange(64))
  out = np.asarray(augment.random_crop_flip(keys, jnp.repeat(img, 64, 0), padding=2, flip=False))
  padded = np.pad(np.asarray(img[0, ..., 0]), 2)
  seen = set()
  for o in out[..., 0]:
    matches = [
      (i, j) for i in range(5) for j in range(5) if np.array_equal(padded[i : i + 6, j : j + 6], o)
    ]
    assert len(matches) == 1
    seen.add(matches[0])
  assert len(seen) > 10  # offsets vary over the batch
  flipped = np.asarray(augment.random_crop_flip(keys, jnp.repeat(img, 64, 0), padding=0, flip=True))
  n_flipped = sum(np.array_equal(f[..., 0], np.asarray(img[0, :, ::-1, 0])) for f in flipped)
  assert 16 < n_flipped < 48


def test_augmentation_depends_on_position_not_on_batch_layout():
  images = jax.random.randint(jax.random.key(1), (8, 6, 6, 1), 0, 255).astype(jnp.uint8)
  key = jax.random.key(5)
  whole = augment.random_crop_flip(augment.example_keys(key, jnp.arange(8)), images)
  second_half = augment.random_crop_flip(augment.example_keys(key, jnp.arange(4, 8)), images[4:])
  np.testing.assert_array_equal(whole[4:], second_half)


def test_in_memory_source_batches_resume_and_cover_each_epoch():
  """The batch boundary: global batches sharded along 'data', resumable at any step, every
  example once per epoch, a fresh order per epoch, and an evaluation pass with a padding mask."""
  n, batch = 96, 16
  rng = np.random.default_rng(0)
  # each image carries its index in its pixels, so a batch says which examples it holds
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 8, 1)).copy()
  ds = datasets.ImageDataset(
    "ids",
    images,
    rng.integers(0, 3, n).astype(np.int32),
    images[:20],
    np.zeros(20, np.int32),
    3,
    (0.0,),
    (1.0,),
    "test",
  )
  mesh = parallel.make_mesh()
  data = sources.DeviceDataset(ds, mesh, eval_batch=8)
  no_augmentation = sources.Augmentation((0.0,), (1.0,), 0, False)
  src = sources.InMemorySource(
    data,
    np.arange(n),
    batch,
    no_augmentation,
    epoch_key=lambda e: jax.random.fold_in(jax.random.key(3), e),
    step_key=lambda s: jax.random.fold_in(jax.random.key(4), s),
  )
  assert src.steps_per_epoch == n // batch
  it = src.iterate(0)
  seen = [next(it) for _ in range(2 * src.steps_per_epoch)]
  b = seen[0]
  assert b["image"].shape == (batch, 8, 8, 1) and b["image"].dtype == jnp.float32
  assert (
    b["label"].shape == (batch,) and b["image"].sharding.spec == parallel.batch_sharded(mesh).spec
  )
  ids = [np.rint(np.asarray(x["image"])[:, 0, 0, 0] * 255).astype(int) for x in seen]
  first, second = np.concatenate(ids[:6]), np.concatenate(ids[6:])
  assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
  assert list(first) != list(second)  # reshuffled per epoch
  np.testing.assert_array_equal(np.asarray(seen[0]["label"]), ds.train_labels[ids[0]])
  resumed = src.iterate(7)  # mid-epoch 2
  np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), np.asarray(seen[7]["image"]))
  # close the suspended iterators here, as the loop does, rather than leave their device arrays
  # to a garbage collection in the middle of a later test (on 8 forced CPU devices that aborted
  # the process inside an unrelated eager op)
  it.close()
  resumed.close()
  del seen, b, it, resumed
  evaluation = list(sources.InMemoryEvalSource(data).batches())
  assert len(evaluation) == 3 and sum(float(e["mask"].sum()) for e in evaluation) == 20
  with pytest.raises(ValueError, match="one epoch length"):
    sources.Zipped(
      a=src,
      b=sources.InMemorySource(
        data,
        np.arange(n // 2),
        batch,
        no_augmentation,
        lambda e: jax.random.key(0),
        lambda s: jax.random.key(0),
      ),
    )
