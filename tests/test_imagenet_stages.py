"""The ImageNet configs end to end on real JPEGs: ImageNet ResNet-18 (bf16, the configs' default)
through teacher, search (stopped and resumed), extract and distill, at 32×32 to keep it quick,
data parallel over 2 of the pass's 8 devices (the weight update of an 11 M-parameter network runs
on every device: on 8 forced devices sharing two cores it is most of each step; the 1-vs-8-device
equalities are the `devices` tests'). The same commands at 224 are in docs/guides/tpu-vm.md."""

import os

import pytest

from configs import imagenet_r18
from tas_jax.data import imagenet_samples
from tas_jax.main import run

pytestmark = pytest.mark.stage  # the shared tiny ImageNet pipeline


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("imagenet_run"))


def tiny(folder, stage):
  c = imagenet_r18.get_config()
  c.stage = stage
  c.data.dir, c.data.image_size, c.data.workers = folder, 32, 0
  c.num_devices = 2
  for recipe in (c.teacher, c.distill):
    recipe.warmup_epochs, recipe.cosine_epochs, recipe.batch_size, recipe.eval_batch_size = (
      0,
      1,
      8,
      10,
    )
  c.search.epochs, c.search.warmup_epochs, c.search.batch_size, c.search.eval_batch_size = (
    2,
    1,
    8,
    10,
  )
  c.log_every_steps = 100
  return c


def test_imagenet_r18_stages_run_resume_and_report_top5(workdir, tmp_path_factory):
  folder = imagenet_samples.build(str(tmp_path_factory.mktemp("samples")))
  assert imagenet_r18.get_config().model.dtype == "bfloat16"
  teacher = run(tiny(folder, "teacher"), workdir)
  assert teacher["finished"] and teacher["steps"] == 40 // 8
  assert 0 <= teacher["test_accuracy"] <= teacher["test_top5_accuracy"] <= 1
  assert teacher["data_source"].startswith("JPEG folder") and teacher["devices"] == 2
  c = tiny(folder, "search")
  c.max_steps_per_run = 3  # stops mid-epoch 2 (2 iterations per epoch)
  stopped = run(c, workdir)
  assert stopped == {"stage": "search", "finished": False, "step": 3}
  c.max_steps_per_run = 0
  search = run(c, workdir)  # the same command continues from step 3
  assert search["finished"] and search["steps"] == 4 and len(search["history"]) == 2
  assert 0 <= search["history"][-1]["argmax_test_top5_accuracy"] <= 1
  extract = run(tiny(folder, "extract"), workdir)
  assert os.path.isfile(os.path.join(workdir, "extract", "arch.json"))
  assert extract["flops_ratio"] == pytest.approx(search["flops_ratio"])
  distill = run(tiny(folder, "distill"), workdir)
  assert distill["finished"] and distill["kd"] and distill["flops_ratio"] < 1
