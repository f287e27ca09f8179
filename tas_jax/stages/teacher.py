"""Stage `teacher`: train the unpruned network of the config (spec §6), or evaluate an imported one.

Writes `WORKDIR/teacher/`: Orbax checkpoints (the distill stage reads the weights from them),
TensorBoard events, `arch.json` and `summary.json`. The training itself is
`tas_jax.training.supervised.train_network`, the same code the pruned network is trained with.
A teacher written by `python -m tas_jax.convert` (pretrained PyTorch weights) is not trained: this
stage evaluates it on the config's test set and writes its summary, and the stages after it read
it like a trained one.
"""

from __future__ import annotations

import os
import time

import ml_collections
from absl import logging

from tas_jax import config as config_lib, parallel, workdir as layout
from tas_jax.models import networks
from tas_jax.ops import flops
from tas_jax.training import steps, supervised


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the teacher stage; returns its summary."""
  mesh, ds = supervised.load_inputs(config, config.teacher.eval_batch_size)
  arch = supervised.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  imported = layout.read_imported(layout.teacher_dir(workdir))
  if imported is not None:
    return evaluate_imported(config, workdir, mesh, ds, arch, imported)
  return supervised.train_network(config, config.teacher, "teacher", "teacher",
                                  layout.teacher_dir(workdir), mesh, ds, arch)


def evaluate_imported(config, workdir: str, mesh, ds, arch, imported: dict) -> dict:
  """The summary of a converted teacher: its accuracy on the config's test set, no training."""
  t0 = time.time()
  teacher_dir = layout.teacher_dir(workdir)
  teacher_arch = networks.load(os.path.join(teacher_dir, layout.ARCH))
  if teacher_arch.to_dict() | {"name": ""} != arch.to_dict() | {"name": ""}:
    raise config_lib.ConfigError(
        f"{teacher_dir} holds {teacher_arch.name} converted from {imported['weights']}, but the "
        f"config describes {arch.name or 'another network'}: add --config.model.arch="
        f"{os.path.join(teacher_dir, layout.ARCH)}")
  variables, _ = supervised.read_variables(teacher_dir, arch, "teacher", parallel.replicated(mesh))
  model = networks.build(arch)
  eval_step = steps.make_eval_step(
      lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False))
  test_source = ds.eval_source()
  test = steps.evaluate(eval_step, (variables["params"], variables["batch_stats"]),
                        test_source.batches(), test_source.num_examples)
  counts = flops.count(arch)
  summary = {"stage": "teacher", "finished": True, "imported": imported, "dataset": ds.name,
             "data_source": ds.source, "architecture": arch.name,
             "flops_m": round(counts.flops_m, 4), "params_m": round(counts.params_m, 6),
             "epochs": 0, "steps": 0, "test_accuracy": test["accuracy"],
             "test_top5_accuracy": test["top5_accuracy"], "test_loss": test["loss"],
             "best_test_accuracy": test["accuracy"], "devices": mesh.shape[parallel.AXIS],
             "wall_time_s": round(time.time() - t0, 1), "history": []}
  path = layout.write_summary(teacher_dir, summary)
  logging.info("[teacher] %s converted from %s: not trained here; test accuracy on %s %.2f%% "
               "(top-5 %.2f%%); summary in %s", arch.name, imported["weights"], ds.name,
               100 * test["accuracy"], 100 * test["top5_accuracy"], path)
  return summary
