"""Hard kills and damaged checkpoints: a run killed with SIGKILL at a random step and rerun with the
same command ends with the same weights (teacher, streaming teacher) or the same architecture
(search) as an uninterrupted run; a damaged latest checkpoint falls back to the one before it with
a warning; a NaN loss stops the run with one line naming the steps."""

import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest

from tas_jax.data import imagenet_samples
from tas_jax.models import arch as arch_lib
from tas_jax.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.kills  # children on one device each: either pass can run them


def cli(workdir, *args, kill_after_step=None, timeout=900):
  """`python -m tas_jax.main` in a child; with kill_after_step, SIGKILL it as soon as a checkpoint
  at or past that step is on disk (a random point of the run). Returns (returncode, stderr)."""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "XLA_FLAGS": ""}
  p = subprocess.Popen(
    [sys.executable, "-m", "tas_jax.main", f"--workdir={workdir}", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    cwd=ROOT,
  )
  if kill_after_step is None:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err
  deadline = time.time() + timeout
  while p.poll() is None and time.time() < deadline:
    steps = [
      int(os.path.basename(d))
      for d in glob.glob(os.path.join(workdir, "*", "checkpoints", "*"))
      if os.path.basename(d).isdigit()
    ]
    if steps and max(steps) >= kill_after_step:
      p.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  p.wait(timeout=60)
  return p.returncode, p.stderr.read()


def in_process(workdir, *args):
  """The uninterrupted reference run: the command's config (parsed by the CLI's own flags) run by
  `tas_jax.main.run` in this process on one device, as the children run. Its programs land in
  the shared compilation cache, so the children that follow only look them up."""
  from absl import flags
  from ml_collections import config_flags

  from tas_jax import main

  argv = [
    "test",
    *(a.replace("--config=", f"--config={ROOT}/", 1) for a in args),
    "--config.num_devices=1",
  ]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  with warnings.catch_warnings():  # ml_collections loads the file with the deprecated load_module
    warnings.simplefilter("ignore", DeprecationWarning)
    values(argv)
  main.run(values.config, workdir)


def weights(stage_dir):
  a = arch_lib.load(os.path.join(stage_dir, "arch.json"))
  variables, step = checkpoint.read_variables(
    stage_dir, a, "teacher", jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  )
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(variables)]), step


TEACHER = [
  "--config=configs/demo.py",
  "--config.stage=teacher",
  "--config.model.depth=8",
  "--config.data.train_examples=512",
  "--config.teacher.batch_size=64",
  "--config.teacher.warmup_epochs=1",
  "--config.teacher.cosine_epochs=1",
  "--config.checkpoint_every_steps=1",
  "--config.keep_checkpoints=3",
]


def damage(checkpoint_dir, keep_bytes=None):
  """Truncates every file of one checkpoint (to half, or to `keep_bytes`)."""
  for path in glob.glob(os.path.join(checkpoint_dir, "**", "*"), recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 0:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if keep_bytes is None else keep_bytes)


def saved_steps(stage_dir):
  return sorted(int(d) for d in os.listdir(os.path.join(stage_dir, "checkpoints")) if d.isdigit())


@pytest.mark.parametrize("stage", ["teacher", "search"])
def test_sigkill_at_a_random_step_then_the_same_command_gives_the_same_result(stage, tmp_path):
  """The teacher run also meets a damaged latest checkpoint after the kill: the rerun warns, falls
  back to the one before and still ends with the uninterrupted run's weights; a folder whose
  checkpoints are all damaged stops with one line. (The streamed ImageNet teacher's kill is in
  test_sigint_and_sigterm_….)"""
  if stage == "teacher":
    args, total = TEACHER, 16
  else:
    args = [
      "--config=configs/demo.py",
      "--config.stage=search",
      "--config.model.depth=8",
      "--config.search.init=scratch",
      "--config.data.train_examples=512",
      "--config.search.epochs=2",
      "--config.search.batch_size=64",
      "--config.checkpoint_every_steps=1",
      "--config.keep_checkpoints=3",
    ]
    total = 6  # halves of about 256: 3 iterations per epoch
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  in_process(whole, *args)
  at = random.Random(os.getpid()).randint(2, total - 2)
  rc, _ = cli(killed, *args, kill_after_step=at)
  assert rc == -signal.SIGKILL, "the run finished before it could be killed"
  if stage == "teacher":
    stage_dir = os.path.join(killed, "teacher")
    unreadable = str(tmp_path / "unreadable")  # every checkpoint damaged: one line
    shutil.copytree(killed, unreadable)
    for step in saved_steps(os.path.join(unreadable, "teacher")):
      damage(os.path.join(unreadable, "teacher", "checkpoints", str(step)), keep_bytes=1)
    rc, err = cli(unreadable, *args)
    assert rc == 2 and "Traceback" not in err
    assert "error: no readable checkpoint in" in err and "delete that folder" in err
    steps = saved_steps(stage_dir)  # the latest damaged: the one before
    assert len(steps) >= 2 and steps[-1] >= at
    damage(os.path.join(stage_dir, "checkpoints", str(steps[-1])))
  rc, err = cli(killed, *args)  # the same command again
  assert rc == 0, err[-3000:]
  if stage == "teacher":
    assert f"checkpoint at step {steps[-1]}" in err and "cannot be read" in err
    assert f"resumed from checkpoint at step {steps[-2]}" in err
  else:
    assert "resumed from checkpoint at step" in err
  if stage == "search":
    a = json.load(open(os.path.join(whole, stage, "summary.json")))
    b = json.load(open(os.path.join(killed, stage, "summary.json")))
    assert a["finished"] and b["finished"]
    last_a, last_b = a["history"][-1], b["history"][-1]
    assert a["architecture"] == b["architecture"]
    assert last_a["expected_flops_ratio"] == pytest.approx(last_b["expected_flops_ratio"], abs=1e-6)
    assert last_a["flops_ratio"] == last_b["flops_ratio"]
    # the same weights: the same test accuracy of the argmax network
    assert last_a["argmax_test_accuracy"] == pytest.approx(last_b["argmax_test_accuracy"], abs=1e-6)
  else:
    same_weights(whole, killed, "teacher", total)


def same_weights(whole, resumed, folder, total):
  """The two runs' final checkpoints and summaries are the same."""
  (wa, sa), (wb, sb) = weights(os.path.join(whole, folder)), weights(os.path.join(resumed, folder))
  a = json.load(open(os.path.join(whole, folder, "summary.json")))
  b = json.load(open(os.path.join(resumed, folder, "summary.json")))
  assert a["finished"] and b["finished"]
  assert sa == sb == total == a["steps"] == b["steps"]
  np.testing.assert_allclose(wa, wb, atol=1e-6)
  assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
  assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-4)


def test_nan_loss_stops_the_run_naming_the_steps(tmp_path):
  rc, err = cli(str(tmp_path), *TEACHER, "--config.teacher.lr=1e30", "--config.log_every_steps=2")
  errors = [l for l in err.splitlines() if l.startswith("error:")]
  assert rc == 2 and "Traceback" not in err and len(errors) == 1, err[-2000:]
  assert "is nan in steps" in errors[0] or "is inf in steps" in errors[0]
  assert "lower the learning rate" in errors[0]


def test_sigint_sigterm_and_sigkill_then_the_same_command_gives_the_uninterrupted_result(tmp_path):
  """Ctrl-C, then a TPU VM's preemption (SIGTERM), then kill -9, each mid-epoch, on an ImageNet
  folder streamed by two grain worker processes that holds a truncated JPEG and a text file: one
  line each, a checkpoint at the signalled step that the rerun continues from, no worker left;
  the last rerun ends with the weights of an uninterrupted run (in one process, no workers)."""
  folder = imagenet_samples.build(str(tmp_path / "samples"))
  cls = sorted(os.listdir(os.path.join(folder, "train")))[0]
  good = sorted(os.listdir(os.path.join(folder, "train", cls)))[0]
  with open(os.path.join(folder, "train", cls, good), "rb") as f:
    (tmp_path / "samples" / "train" / cls / "truncated.JPEG").write_bytes(f.read()[:3000])
  (tmp_path / "samples" / "train" / cls / "notes.jpg").write_text("not an image")
  workdir, whole = str(tmp_path / "run"), str(tmp_path / "whole")
  args = [
    "--config=configs/imagenet_r18.py",
    f"--config.data.dir={folder}",
    "--config.data.image_size=32",
    "--config.teacher.batch_size=8",
    "--config.teacher.eval_batch_size=10",
    "--config.teacher.warmup_epochs=0",
    "--config.teacher.cosine_epochs=4",
    "--config.log_every_steps=1",
  ]
  in_process(whole, *args, "--config.data.workers=0")
  total = json.load(open(os.path.join(whole, "teacher", "summary.json")))["steps"]
  args += [f"--workdir={workdir}", "--config.data.workers=2"]
  env = {**os.environ, "XLA_FLAGS": ""}

  def start_and_signal(sig, after_step):
    p = subprocess.Popen(
      [sys.executable, "-m", "tas_jax.main", *args],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
      cwd=ROOT,
    )
    lines, children = [], []
    for line in p.stdout:
      lines.append(line.rstrip("\n"))
      reported = re.search(r"\] step (\d+)/", line)
      if reported and int(reported.group(1)) >= after_step:  # lines come every step, or later
        children = subprocess.run(
          ["pgrep", "-P", str(p.pid)], capture_output=True, text=True
        ).stdout.split()
        p.send_signal(sig)
        break
    lines += p.stdout.read().splitlines()
    p.wait(timeout=120)
    time.sleep(1)
    ps = subprocess.run(
      ["ps", "-o", "pid=,stat=", "-p", ",".join(children)], capture_output=True, text=True
    ).stdout.splitlines()
    left = [l.split()[0] for l in ps if not l.split()[1].startswith("Z")]  # not exited zombies
    return p.returncode, lines, children, left

  rc, lines, children, left = start_and_signal(signal.SIGINT, 3)
  assert len(children) >= 2 and left == []  # the grain workers are gone too
  assert rc == 130 and lines[-1].startswith("error: [teacher] SIGINT: stopped at step ")
  assert not any("Traceback" in line for line in lines)
  skipped = [l for l in lines if "skipped an image that cannot be decoded" in l]
  assert sorted(l.rsplit("/", 1)[1] for l in skipped) == ["notes.jpg", "truncated.JPEG"]
  step = int(lines[-1].split("stopped at step ")[1].split("/")[0])
  assert saved_steps(os.path.join(workdir, "teacher"))[-1] == step

  rc, lines, children, left = start_and_signal(signal.SIGTERM, step + 2)
  assert any(f"resumed from checkpoint at step {step} " in l for l in lines)
  assert rc == 128 + signal.SIGTERM and lines[-1].startswith(
    "error: [teacher] SIGTERM: stopped at step "
  )
  assert left == []
  step = int(lines[-1].split("stopped at step ")[1].split("/")[0])

  rc, lines, children, left = start_and_signal(signal.SIGKILL, step + 2)
  assert rc == -signal.SIGKILL and len(children) >= 2 and left == []  # workers die with it
  assert step + 2 < total - 2, "the run is too short to be signalled three times mid-run"

  rc, err = cli(
    workdir, *args, "--config.data.workers=0"
  )  # again, to the end (workers: the same batches)
  assert rc == 0, err[-3000:]
  assert "resumed from checkpoint at step" in err
  same_weights(whole, workdir, "teacher", total)
