"""Hard kills and damaged checkpoints: a run killed with SIGKILL at a random step and rerun with the
same command ends with the same weights (teacher, streaming teacher) or the same architecture
(search) as an uninterrupted run; a damaged latest checkpoint falls back to the one before it with
a warning; a NaN loss stops the run with one line naming the steps."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tas_jax.data import imagenet_samples
from tas_jax.models import arch as arch_lib
from tas_jax.training import supervised

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.one_pass(1)   # children set their own devices: one of the two passes runs them


def cli(workdir, *args, kill_after_step=None, timeout=900):
  """`python -m tas_jax.main` in a child; with kill_after_step, SIGKILL it as soon as a checkpoint
  at or past that step is on disk (a random point of the run). Returns (returncode, stderr)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}
  p = subprocess.Popen([sys.executable, "-m", "tas_jax.main", f"--workdir={workdir}", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
  if kill_after_step is None:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err
  deadline = time.time() + timeout
  while p.poll() is None and time.time() < deadline:
    steps = [int(os.path.basename(d)) for d in glob.glob(os.path.join(workdir, "*", "checkpoints", "*"))
             if os.path.basename(d).isdigit()]
    if steps and max(steps) >= kill_after_step:
      p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  p.wait(timeout=60)
  return p.returncode, p.stderr.read()


def weights(stage_dir):
  a = arch_lib.load(os.path.join(stage_dir, "arch.json"))
  variables, step = supervised.read_variables(stage_dir, a, "teacher",
                                              jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)]), step


TEACHER = ["--config=configs/demo.py", "--config.stage=teacher", "--config.model.depth=8",
           "--config.data.train_examples=512", "--config.teacher.batch_size=64",
           "--config.teacher.warmup_epochs=1", "--config.teacher.cosine_epochs=1",
           "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]


@pytest.mark.parametrize("stage", ["teacher", "search", "streaming"])
def test_sigkill_at_a_random_step_then_the_same_command_gives_the_same_result(stage, tmp_path):
  if stage == "teacher":
    args, total = TEACHER, 16
  elif stage == "search":
    args = ["--config=configs/demo.py", "--config.stage=search", "--config.model.depth=8",
            "--config.search.init=scratch", "--config.data.train_examples=512",
            "--config.search.epochs=2", "--config.search.batch_size=64",
            "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]
    total = 6   # halves of about 256: 3 iterations per epoch
  else:
    folder = imagenet_samples.build(str(tmp_path / "samples"))
    args = ["--config=configs/imagenet_r18.py", "--config.stage=teacher",
            f"--config.data.dir={folder}", "--config.data.image_size=32", "--config.data.workers=0",
            "--config.teacher.warmup_epochs=0", "--config.teacher.cosine_epochs=2",
            "--config.teacher.batch_size=8", "--config.teacher.eval_batch_size=10",
            "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=3"]
    total = 10
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  rc, err = cli(whole, *args)
  assert rc == 0, err[-3000:]
  at = random.Random(os.getpid()).randint(1, total - 2)
  rc, _ = cli(killed, *args, kill_after_step=at)
  assert rc == -signal.SIGKILL, "the run finished before it could be killed"
  rc, err = cli(killed, *args)                      # the same command again
  assert rc == 0, err[-3000:]
  assert "resumed from checkpoint at step" in err
  folder = "search" if stage == "search" else "teacher"
  a = json.load(open(os.path.join(whole, folder, "summary.json")))
  b = json.load(open(os.path.join(killed, folder, "summary.json")))
  assert a["finished"] and b["finished"]
  if stage == "search":
    assert a["architecture"] == b["architecture"]
    assert a["history"][-1]["expected_flops_ratio"] == pytest.approx(
        b["history"][-1]["expected_flops_ratio"], abs=1e-6)
  else:
    (wa, sa), (wb, sb) = weights(os.path.join(whole, folder)), weights(os.path.join(killed, folder))
    assert sa == sb == total
    np.testing.assert_allclose(wa, wb, atol=1e-6)


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
  workdir = str(tmp_path)
  rc, err = cli(workdir, *TEACHER, "--config.max_steps_per_run=5")
  assert rc == 0, err[-3000:]
  ckpt = os.path.join(workdir, "teacher", "checkpoints")
  latest = os.path.join(ckpt, "5")
  for path in glob.glob(os.path.join(latest, "**", "*"), recursive=True):   # damage every file
    if os.path.isfile(path) and os.path.getsize(path) > 0:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  rc, err = cli(workdir, *TEACHER, "--config.max_steps_per_run=1")
  assert rc == 0, err[-3000:]
  assert "checkpoint at step 5" in err and "cannot be read" in err
  assert "resumed from checkpoint at step 4" in err
  # nothing readable at all: one line, no traceback, nothing started from scratch
  for d in os.listdir(ckpt):
    if d.isdigit():
      for path in glob.glob(os.path.join(ckpt, d, "**", "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 0:
          with open(path, "r+b") as f:
            f.truncate(1)
  rc, err = cli(workdir, *TEACHER)
  assert rc == 2 and "Traceback" not in err
  assert "error: no readable checkpoint in" in err and "delete that folder" in err


def test_nan_loss_stops_the_run_naming_the_steps(tmp_path):
  rc, err = cli(str(tmp_path), *TEACHER, "--config.teacher.lr=1e30", "--config.log_every_steps=2")
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert rc == 2 and "Traceback" not in err and len(errors) == 1, err[-2000:]
  assert "is nan in steps" in errors[0] or "is inf in steps" in errors[0]
  assert "lower the learning rate" in errors[0]
