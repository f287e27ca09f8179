"""A finished run of a workdir back in Python: `tas_jax.load(workdir, run)`.

    import tas_jax
    net = tas_jax.load("runs/demo", "tas-kd")          # or "teacher", "pas-kd", ...
    logits = net(net.preprocess(uint8_images))         # uint8 NHWC as stored -> logits
    net.arch, net.variables, net.summary               # what it is, its weights, how it trained

RUN is `teacher` or a distill run of the results table. The weights are read from the run's last
checkpoint (a RepVGG fine-tuned in training form: the deploy network it was cut to) onto the
host; `apply` is the network in evaluation mode, jitted.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from tas_jax import errors, workdir as layout


def run_dir(workdir: str, run: str) -> str:
  return layout.teacher_dir(workdir) if run == "teacher" else layout.distill_dir(workdir, run)


def trained_runs(workdir: str) -> list[str]:
  """The runs of `workdir` with a trained network: teacher first, then the distill runs."""
  distill = layout.distill_dir(workdir)
  runs = sorted(os.listdir(distill)) if os.path.isdir(distill) else []
  return [
    r for r in ["teacher"] + runs if os.path.exists(os.path.join(run_dir(workdir, r), layout.ARCH))
  ]


def read_run(workdir: str, run: str):
  """(architecture, {"params", "batch_stats"} on the host, the config it was made with or None)."""
  from tas_jax.stages import records
  from tas_jax.training import checkpoint

  if not os.path.isdir(workdir):
    raise errors.CheckpointNotFoundError(f"--workdir={workdir}: no such folder")
  directory = run_dir(workdir, run)
  if not os.path.exists(os.path.join(directory, layout.ARCH)):
    found = trained_runs(workdir)
    raise errors.CheckpointNotFoundError(
      f"--run={run}: no trained network in {directory} (runs here: "
      f"{', '.join(found) if found else 'none yet'})"
    )
  a, variables, _ = checkpoint.read_trained(
    directory, "teacher" if run == "teacher" else "distill", checkpoint.host_sharding()
  )
  record = records.read_record(directory) or {}
  if "config" not in record:  # an imported teacher: the config of a stage that read it
    record = (
      next(
        (
          records.read_record(layout.stage_dir(workdir, s))
          for s in records.readers(workdir, "teacher")
        ),
        None,
      )
      or {}
    )
  config = ml_collections.ConfigDict(record["config"]) if "config" in record else None
  return a, jax.device_get(variables), config


def normalisation(config: Optional[ml_collections.ConfigDict]) -> tuple[tuple, tuple]:
  """(mean, std) per channel, in [0, 1] pixel units, of the dataset a run was trained on."""
  from tas_jax.data import datasets, imagenet

  if config is None:
    raise errors.CheckpointNotFoundError(
      "the run has no record of its data (config.json): run a stage on it first"
    )
  if config.data.name in datasets.STREAMED:
    return imagenet.MEAN, imagenet.STD
  return datasets.normalisation(config.data.name)


def apply_function(a) -> Callable:
  """(variables, images NHWC float32) -> logits: network `a` in evaluation mode, float32."""
  from tas_jax.models import networks

  model = networks.build(a)
  return lambda v, x: model.apply(
    {"params": v["params"], **({"batch_stats": v["batch_stats"]} if v.get("batch_stats") else {})},
    x,
    train=False,
  )


@dataclasses.dataclass(frozen=True)
class FinishedRun:
  """A trained network of a workdir: call it on normalised float32 NHWC images for logits."""

  run: str
  arch: Any  # the architecture description (tas_jax.models.arch)
  variables: dict  # {"params", "batch_stats"} as numpy arrays
  apply: Callable  # jitted (variables, images) -> logits, evaluation mode
  mean: tuple  # the normalisation the network was trained with
  std: tuple
  summary: dict  # the run's summary.json (accuracy, FLOPs, training)

  def __call__(self, images) -> jax.Array:
    return self.apply(self.variables, images)

  def preprocess(self, images_uint8) -> jax.Array:
    """uint8 NHWC images as the dataset stores them (ImageNet: resized and cropped as
    `tas_jax.data.imagenet.eval_view` does) -> the normalised float32 input."""
    from tas_jax.data import augment

    return augment.normalize(jnp.asarray(images_uint8), self.mean, self.std)


def load(workdir: str, run: str = "teacher") -> FinishedRun:
  """The network `run` of `workdir` trained (teacher, tas-kd, pas-kd, ...), ready to call."""
  a, variables, config = read_run(workdir, run)
  mean, std = normalisation(config)
  apply = jax.jit(apply_function(a))
  summary = layout.read_summary(run_dir(workdir, run)) or {}
  return FinishedRun(run, a, variables, apply, tuple(mean), tuple(std), summary)
