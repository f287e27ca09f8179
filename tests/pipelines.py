"""The shared tiny CIFAR-ResNet pipeline that the stage tests read (conftest's `cifar_pipeline`):
built once per session, in the 8-device pass, instead of a teacher, a search and a fine-tuning
in each test file.

ResNet-8 on 2,000 embedded Fashion-MNIST images: a teacher that learns (3 epochs), the TAS search
with the released recipe (2 epochs from scratch), extraction, PaS (2 epochs from the teacher),
and three fine-tuning runs (TAS + KD, the uniform baseline with CE "w/ Init", PaS + KD), then the
results table. The same settings reach the CLI (`cli_args`) so that a child process's stage
records match this run's.
"""

import os
import subprocess
import sys

from configs import demo
from tas_jax.stages import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
  "data.train_examples": 2000,
  "model.depth": 8,
  "teacher.warmup_epochs": 1,
  "teacher.cosine_epochs": 2,
  "teacher.batch_size": 32,
  "search.epochs": 2,
  "search.batch_size": 64,
  # the released search recipe (configs/demo.py departs from it for its longer budget)
  "search.init": "scratch",
  "search.lr": 0.1,
  "search.arch_lr": 0.001,
  "search.tau_min": 0.1,
  "search.expected_flops": "released",
  "distill.warmup_epochs": 0,
  "distill.cosine_epochs": 1,
  "distill.batch_size": 64,
  "pas.epochs": 2,
  "pas.batch_size": 64,
  "pas.lr": 0.05,
  "pas.cost_weight": 20.0,
  "pas.penalty": "released",
  "pas.macs_unit": 0.0,
  "pas.finetune_epochs": 1,
  "pipeline.runs": "tas-kd,uniform-ce-init,pas-kd",
  "pipeline.throughput_batch": 32,
  "pipeline.throughput_repeats": 2,
  "log_every_steps": 100,
}
RUNS = ["teacher", "tas-kd", "uniform-ce-init", "pas-kd"]  # the rows of its results table


def config(**changes):
  """configs/demo.py with OVERRIDES (and `changes`, dotted names with `__` for the dot)."""
  c = demo.get_config()
  for field, value in {
    **OVERRIDES,
    **{k.replace("__", "."): v for k, v in changes.items()},
  }.items():
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
  return c


def cli_args(overrides=None) -> list[str]:
  return [f"--config.{k}={v}" for k, v in (overrides or OVERRIDES).items()]


def cli(workdir, *extra, overrides=None, environ=None):
  """`python -m tas_jax.main` with this pipeline's settings (or `overrides`), in a child process
  on 1 device, with `environ` (default: this process's)."""
  env = {**(os.environ if environ is None else environ), "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "tas_jax.main",
      "--config=configs/demo.py",
      f"--workdir={workdir}",
      *cli_args(overrides),
      *extra,
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env=env,
    timeout=900,
  )


def cifar(workdir: str) -> tuple[str, dict]:
  """Runs the pipeline into `workdir`; returns (workdir, run_all's result)."""
  return workdir, pipeline.run_all(config(), workdir)
