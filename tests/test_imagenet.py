"""The streaming ImageNet input on real files: ImageNet photographs shipped in the foolbox wheel
laid out as train/<class>/*.JPEG, and TFDS `mock_data` for imagenet2012 through
`tfds.data_source`."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tas_jax import parallel
from tas_jax.data import check, datasets, imagenet, imagenet_samples


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return imagenet_samples.build(str(tmp_path_factory.mktemp("imagenet_samples")))


def test_folder_layout_classes_and_labels(folder):
  train = imagenet.open_split(folder, "train")
  val = imagenet.open_split(folder, "validation", classes=train.classes)
  assert isinstance(train, imagenet.ImageFolder) and len(train) == 40 and len(val) == 20
  assert train.classes == sorted(train.classes) and len(train.classes) == 19  # label 609 twice
  assert train.classes[int(train.labels[0])] == train.files[0].split("/")[-2]
  np.testing.assert_array_equal(np.bincount(train.labels), 2 * np.bincount(val.labels))
  r = train[0]
  assert isinstance(r["jpeg"], bytes) and r["jpeg"][:2] == b"\xff\xd8"  # a JPEG


def test_missing_dataset_is_one_line_saying_where_and_how(tmp_path):
  with pytest.raises(datasets.DataNotFoundError) as e:
    imagenet.open_split(str(tmp_path), "train")
  msg = str(e.value)
  assert "\n" not in msg and str(tmp_path) in msg and "tfds build imagenet2012" in msg


def test_train_and_eval_views_shapes_and_ranges(folder):
  train = imagenet.open_split(folder, "train")
  rng = np.random.default_rng(0)
  for i in range(4):
    v = imagenet.train_view(train[i], rng)
    assert v["image"].shape == (224, 224, 3) and v["image"].dtype == np.uint8
    assert v["image"].std() > 5  # a photograph, not a blank
    assert v["label"] == train.labels[i]
  e = imagenet.eval_view(train[0])
  assert e["image"].shape == (224, 224, 3)
  # evaluation is deterministic: resize the shorter side to 256, centre crop 224
  img = Image.open(io.BytesIO(train[0]["jpeg"])).convert("RGB")
  w, h = img.size
  s = 256 / min(w, h)
  resized = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
  left, top = (resized.size[0] - 224) // 2, (resized.size[1] - 224) // 2
  np.testing.assert_array_equal(
    e["image"], np.asarray(resized.crop((left, top, left + 224, top + 224)))
  )


def _covered_fraction(size: int, width: int = 480, height: int = 360) -> tuple[float, float]:
  """(horizontal, vertical) share of a photo's shorter side that the evaluation view of `size`
  shows, read off an image whose red channel is its column and green channel its row."""
  cols = np.linspace(0, 255, width)[None, :].repeat(height, 0)
  rows = np.linspace(0, 255 * height / width, height)[:, None].repeat(width, 1)  # same scale
  img = Image.fromarray(np.stack([cols, rows, np.zeros_like(cols)], -1).round().astype(np.uint8))
  view = imagenet.eval_view({"decoded": img, "label": 0}, size)["image"].astype(np.float64)
  assert view.shape == (size, size, 3)
  shorter = 255 * height / width  # the shorter side in the channels' units
  # pixel centres: the first and last column of the crop sit half a pixel inside its edges
  span = lambda c: (view[..., c].max() - view[..., c].min()) * size / (size - 1) / shorter
  return span(0), span(1)


def test_eval_view_covers_the_same_part_of_the_photo_at_every_size():
  # the shorter side is resized to round(size * 256 / 224) before the centre crop of `size`, so the
  # crop shows 224/256 = 87.5% of the shorter side at 64, 128 and 224 alike (not 25% at 64)
  assert [imagenet.eval_resize(s) for s in (64, 128, 224)] == [73, 146, 256]
  covered = {size: _covered_fraction(size) for size in (64, 128, 224)}
  for size, (horizontal, vertical) in covered.items():
    assert abs(horizontal - vertical) < 0.01, (size, covered)  # a square view of the photo
    assert abs(vertical - 224 / 256) < 0.01, (size, covered)
  assert max(v for _, v in covered.values()) - min(v for _, v in covered.values()) < 0.01
  # an explicit resize is still honoured: 256 at 64 px shows a quarter of the shorter side
  img = Image.fromarray(np.zeros((360, 480, 3), np.uint8))
  assert imagenet.eval_view({"decoded": img, "label": 0}, 64, resize=256)["image"].shape == (
    64,
    64,
    3,
  )


def test_random_resized_crop_box_and_lighting_by_hand():
  rng = np.random.default_rng(1)
  for _ in range(200):
    left, top, w, h = imagenet.random_resized_crop_box(rng, 500, 375)
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
  # an image too thin for any draw: the centre crop at the nearest allowed ratio
  assert imagenet.random_resized_crop_box(np.random.default_rng(0), 400, 10, scale=(0.99, 1.0)) == (
    (400 - 13) // 2,
    0,
    13,
    10,
  )
  x = np.full((2, 2, 3), 0.5, np.float32)
  alpha = np.random.default_rng(7).normal(0.0, 0.1, 3).astype(np.float32)
  want = x + imagenet.EIGVEC @ (alpha * imagenet.EIGVAL)
  np.testing.assert_allclose(imagenet.lighting(np.random.default_rng(7), x), want, rtol=1e-6)


def _id_records(folder, n):
  """n records of one real photo whose label is the record's index: batches name their examples."""
  jpeg = imagenet.open_split(folder, "train")[0]["jpeg"]
  return [{"jpeg": jpeg, "label": i} for i in range(n)]


def _labels(dataset, steps):
  return [np.asarray(dataset[k]["label"]).tolist() for k in range(steps)]


def test_process_shards_are_disjoint_and_complete(folder):
  """Two processes of a 24-image epoch, 3 images each per step: 4 steps cover every image once."""
  records = _id_records(folder, 24)
  shards = []
  for p in range(2):
    ds, steps = imagenet.train_dataset(
      records,
      np.arange(24),
      3,
      seed=5,
      options=imagenet.StreamOptions(image_size=32, shard_index=p, shard_count=2),
    )
    assert steps == 4
    shards.append(sum(_labels(ds, steps), []))
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == list(range(24))


def test_order_is_seeded_reshuffled_per_epoch_and_resumes_mid_epoch(folder):
  records = _id_records(folder, 12)
  opts = imagenet.StreamOptions(image_size=32, shard_index=0, shard_count=1)
  a, steps = imagenet.train_dataset(records, np.arange(12), 4, seed=3, options=opts)
  b, _ = imagenet.train_dataset(records, np.arange(12), 4, seed=3, options=opts)
  c, _ = imagenet.train_dataset(records, np.arange(12), 4, seed=4, options=opts)
  assert _labels(a, 6) == _labels(b, 6) != _labels(c, 6)
  epoch1, epoch2 = sum(_labels(a, 6)[:3], []), sum(_labels(a, 6)[3:], [])
  assert sorted(epoch1) == sorted(epoch2) == list(range(12)) and epoch1 != epoch2
  np.testing.assert_array_equal(np.asarray(a[1]["image"]), np.asarray(b[1]["image"]))  # same crops


@pytest.mark.devices  # global batches sharded over the mesh's devices
def test_streaming_source_global_batches_and_resume(folder):
  """Through the source the stages use: normalised global batches sharded along 'data', the
  batch of step k identical whether the run started at 0 or resumed at k, and an evaluation pass
  whose mask covers every validation image once."""
  train = imagenet.open_split(folder, "train")
  mesh = parallel.make_mesh()
  batch = 8 if jax.device_count() <= 8 else jax.device_count()
  src = imagenet.StreamingSource(
    train,
    np.arange(len(train)),
    batch,
    mesh,
    seed=0,
    options=imagenet.StreamOptions(image_size=64, prefetch=2),
  )
  assert src.steps_per_epoch == 40 // batch
  it = src.iterate(0)
  first = [next(it) for _ in range(3)]
  it.close()
  x = first[0]["image"]
  assert x.shape == (batch, 64, 64, 3) and x.dtype == np.float32
  assert x.sharding.spec == parallel.batch_sharded(mesh).spec
  assert -2.2 < float(x.min()) < 0 < float(x.max()) < 2.7  # (x/255 − mean) / std
  resumed = src.iterate(2)
  np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), np.asarray(first[2]["image"]))
  resumed.close()
  val = imagenet.open_split(folder, "validation", classes=train.classes)
  ev = list(
    imagenet.StreamingEvalSource(val, 8, mesh, imagenet.StreamOptions(image_size=64)).batches()
  )
  assert len(ev) == 3 and sum(float(b["mask"].sum()) for b in ev) == 20
  labels = np.concatenate([np.asarray(b["label"])[np.asarray(b["mask"]) > 0] for b in ev])
  np.testing.assert_array_equal(labels, val.labels)


@pytest.mark.children  # forks grain worker processes
def test_worker_processes_give_the_same_batches(folder):
  train = imagenet.open_split(folder, "train")
  mesh = parallel.make_mesh()
  batches = []
  for workers in (0, 2):
    src = imagenet.StreamingSource(
      train,
      np.arange(len(train)),
      8,
      mesh,
      seed=1,
      options=imagenet.StreamOptions(image_size=48, workers=workers),
    )
    it = src.iterate(0)
    batches.append([np.asarray(next(it)["image"]) for _ in range(2)])
    it.close()
  for a, b in zip(*batches):
    np.testing.assert_array_equal(a, b)


def _alive(pid: int) -> bool:
  """Running (a zombie, re-parented to an init that has not reaped it yet, counts as ended)."""
  if not os.path.isdir("/proc"):  # no procfs: a signal 0 tells whether the pid exists
    try:
      os.kill(pid, 0)
      return True
    except ProcessLookupError:
      return False
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.children  # starts processes
def test_a_worker_outlives_the_thread_that_started_it_and_ends_with_its_process(tmp_path):
  """A grain worker (`die_with_parent`) started from a thread that then ends keeps running (with
  PR_SET_PDEATHSIG it was killed then: it fires when the starting *thread* ends), and it ends
  within seconds of its training process being killed by SIGKILL."""
  parent = textwrap.dedent(
    """
    import multiprocessing, os, threading, time
    from tas_jax.data.imagenet import die_with_parent

    def worker(parent_pid, ready):
      die_with_parent(parent_pid)
      open(ready, "w").close()
      time.sleep(120)

    def start():
      ready = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ready")
      p = multiprocessing.get_context("spawn").Process(target=worker, args=(os.getpid(), ready))
      p.start()
      print(p.pid, flush=True)
      while not os.path.exists(ready):  # the worker has called die_with_parent
        time.sleep(0.05)

    if __name__ == "__main__":
      starter = threading.Thread(target=start)
      starter.start()
      starter.join()  # the thread that started the worker has ended
      time.sleep(120)
    """
  )
  script = tmp_path / "parent.py"  # a file: the spawned worker imports its `worker`
  script.write_text(parent)
  proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
  try:
    worker = int(proc.stdout.readline())
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists() and time.time() < deadline:
      time.sleep(0.1)
    time.sleep(1)  # the thread that started the worker ends once the worker is ready
    assert _alive(worker), "the worker died with the thread that started it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
      time.sleep(0.2)
    assert not _alive(worker), "the worker outlived its killed parent"
  finally:
    proc.kill()


def test_tfds_imagenet2012_through_data_source():
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    src = imagenet.TfdsImageNet(None, "train")
    assert len(src) == 6 and len(src.classes) == 1000
    r = src[0]
    assert isinstance(r["jpeg"], bytes) and 0 <= r["label"] < 1000
    assert src.labels.shape == (6,) and src.labels[0] == r["label"]
    v = imagenet.train_view(r, np.random.default_rng(0), size=32)
    assert v["image"].shape == (32, 32, 3)


def test_bfloat16_computes_in_bf16_and_keeps_weights_statistics_and_logits_in_float32():
  """config.model.dtype=bfloat16 (the ImageNet configs' default): every convolution of the plain
  network and of the supernet takes bf16 operands; weights, BN statistics and logits are float32."""
  from tas_jax.methods.tas import space as space_lib, supernet
  from tas_jax.models import arch, resnet

  a = arch.imagenet_resnet(18, num_classes=10, input_size=32)
  a = arch.Architecture(**{**a.to_dict(), "stages": [s[:1] for s in a.stages]})
  x = np.zeros((2, 32, 32, 3), np.float32)

  def conv_dtypes(jaxpr):
    out = set()
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        out |= {str(v.aval.dtype) for v in eqn.invars}
      for p in eqn.params.values():
        if hasattr(p, "jaxpr"):
          out |= conv_dtypes(p.jaxpr)
    return out

  # dtypes only: abstract evaluation, nothing compiled
  model = resnet.build(a, dtype=jax.numpy.bfloat16)
  v = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {str(t.dtype) for t in jax.tree.leaves(v)} == {"float32"}
  apply = lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])
  logits, updates = jax.eval_shape(apply, v)
  assert logits.dtype == np.float32
  assert {str(t.dtype) for t in jax.tree.leaves(updates)} == {"float32"}
  assert conv_dtypes(jax.make_jaxpr(apply)(v).jaxpr) == {"bfloat16"}

  space = space_lib.build(a)
  net = supernet.SuperNet(space, dtype=jax.numpy.bfloat16)
  logits_arch = space.init_logits(jax.random.key(1))
  sv = jax.eval_shape(net.init, jax.random.key(0), x, logits_arch, jax.random.key(2), 1.0)
  assert {str(t.dtype) for t in jax.tree.leaves(sv)} == {"float32"}
  run = lambda v: net.apply(
    v, x, logits_arch, jax.random.key(3), 1.0, train=True, mutable=["batch_stats"]
  )
  out, _ = jax.eval_shape(run, sv)
  assert out.dtype == np.float32
  assert conv_dtypes(jax.make_jaxpr(run)(sv).jaxpr) == {"bfloat16"}


@pytest.fixture
def bad_folder(folder, tmp_path):
  """The sample folder with a truncated JPEG and a text file named .jpg in its first class."""
  import shutil

  root = tmp_path / "bad"
  shutil.copytree(folder, root)
  cls = sorted(os.listdir(root / "train"))[0]
  good = sorted(os.listdir(root / "train" / cls))[0]
  (root / "train" / cls / "a_truncated.JPEG").write_bytes(
    (root / "train" / cls / good).read_bytes()[:3000]
  )
  (root / "train" / cls / "b_notes.jpg").write_text("not an image")
  return str(root), cls


def test_unreadable_images_are_skipped_named_or_refused(bad_folder):
  root, cls = bad_folder
  train = imagenet.open_split(root, "train")
  first = train.files.index(os.path.join(root, "train", cls, "a_truncated.JPEG"))
  record, skipped = imagenet.read_decodable(train, first)
  assert skipped.split(";") == [train.files[first], train.files[first + 1]]  # both bad, in a row
  assert record["jpeg"] == train[first + 2]["jpeg"] and record["decoded"].size[0] > 0
  with pytest.raises(datasets.BadDataError) as e:
    imagenet.read_decodable(train, first, "fail")
  assert "\n" not in str(e.value) and str(e.value).startswith(
    f"{train.files[first]} cannot be decoded (image file is truncated"
  )
  bad = check.unreadable(train, threads=2, progress=False)
  assert [name for name, _ in bad] == [train.files[first], train.files[first + 1]]
  assert bad[1][1] == "not an image file Pillow can read"


def test_the_stream_skips_unreadable_images_and_counts_them(bad_folder):
  root, _ = bad_folder
  train = imagenet.open_split(root, "train")
  mesh = parallel.make_mesh(1)
  src = imagenet.StreamingSource(
    train, np.arange(len(train)), 42, mesh, seed=0, options=imagenet.StreamOptions(image_size=32)
  )
  batches = src.iterate(0)
  batch = next(batches)
  batches.close()
  assert batch["image"].shape == (42, 32, 32, 3)  # the shape is kept: the next image stands in
  assert len(src.skipped.files) == 2


def test_one_class_and_empty_class_folders_are_refused(tmp_path, folder):
  import shutil

  one = tmp_path / "one" / "train"
  cls = sorted(os.listdir(os.path.join(folder, "train")))[0]
  shutil.copytree(os.path.join(folder, "train", cls), one / cls)
  with pytest.raises(datasets.BadDataError, match="has 1 class folder .*at least two"):
    imagenet.open_split(str(tmp_path / "one"), "train")
  shutil.copytree(os.path.join(folder, "train"), tmp_path / "empty" / "train")
  (tmp_path / "empty" / "train" / "n99999999").mkdir()
  with pytest.raises(datasets.BadDataError, match="n99999999 holds no images"):
    imagenet.open_split(str(tmp_path / "empty"), "train")
