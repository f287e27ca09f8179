"""Stage `teacher`: train the unpruned network of the config (TAS's released training recipe), or
evaluate an imported one.

Writes `WORKDIR/teacher/`: Orbax checkpoints (the distill stage reads the weights from them),
TensorBoard events, `arch.json` and `summary.json`. The training itself is
`tas_jax.training.supervised.train_network`, the same code the pruned network is trained with.
A teacher written by `python -m tas_jax.convert` (pretrained PyTorch weights) is not trained: this
stage evaluates it on the config's test set and writes its summary, and the stages after it read
it like a trained one. With `teacher.finetune_imported` it is fine-tuned instead: a fresh
classifier for the data's classes (the imported one is kept when the class count matches), every
weight trained with `config.finetune`'s recipe; the converted weights are set aside in
`teacher/imported_weights/` first, so the fine-tuning resumes like any training.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import ml_collections
from absl import logging

from tas_jax import config as config_lib, multihost, parallel, workdir as layout
from tas_jax.models import networks
from tas_jax.ops import flops
from tas_jax.stages import records
from tas_jax.training import checkpoint, steps, supervised


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the teacher stage; returns its summary."""
  mesh, ds = supervised.load_inputs(config, config.teacher.eval_batch_size)
  imported = layout.read_imported(layout.teacher_dir(workdir))
  finetuned = os.path.isdir(os.path.join(layout.teacher_dir(workdir), layout.IMPORTED_WEIGHTS))
  if imported is not None and (config.teacher.finetune_imported or finetuned):
    return finetune_imported(config, workdir, mesh, ds, imported)
  try:
    arch = supervised.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  except config_lib.ConfigError as e:
    if imported is None or "classes" not in str(e):
      raise
    raise config_lib.ConfigError(
      f"{e}. The teacher was imported by tas_jax.convert: add --config.teacher."
      f"finetune_imported=True to put a fresh {ds.num_classes}-class classifier on it and "
      "fine-tune it (recipe: config.finetune)"
    ) from None
  if imported is not None:
    return evaluate_imported(config, workdir, mesh, ds, arch, imported)
  return supervised.train_network(
    config, config.teacher, "teacher", "teacher", layout.teacher_dir(workdir), mesh, ds, arch
  )


def evaluate_imported(config, workdir: str, mesh, ds, arch, imported: dict) -> dict:
  """The summary of a converted teacher: its accuracy on the config's test set, no training."""
  t0 = time.time()
  teacher_dir = layout.teacher_dir(workdir)
  _, variables, _ = checkpoint.read_teacher(
    workdir,
    parallel.replicated(mesh),
    "teacher",
    expected=arch,
    mismatch=lambda teacher: (
      f"{teacher_dir} holds {teacher.name} converted from {imported['weights']}, but the "
      f"config describes {arch.name or 'another network'}: add --config.model.arch="
      f"{os.path.join(teacher_dir, layout.ARCH)}"
    ),
  )
  model = networks.build(arch)
  eval_step = steps.make_eval_step(
    lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False)
  )
  test_source = ds.eval_source()
  test = steps.evaluate(
    eval_step,
    (variables["params"], variables["batch_stats"]),
    test_source.batches(),
    test_source.num_examples,
  )
  counts = flops.count(arch)
  summary = {
    "stage": "teacher",
    "finished": True,
    "imported": imported,
    "dataset": ds.name,
    "data_source": ds.source,
    "architecture": arch.name,
    "flops_m": round(counts.flops_m, 4),
    "params_m": round(counts.params_m, 6),
    "epochs": 0,
    "steps": 0,
    "test_accuracy": test["accuracy"],
    "test_top5_accuracy": test["top5_accuracy"],
    "test_loss": test["loss"],
    "best_test_accuracy": test["accuracy"],
    "devices": mesh.shape[parallel.AXIS],
    "wall_time_s": round(time.time() - t0, 1),
    "history": [],
  }
  path = layout.write_summary(teacher_dir, summary)
  logging.info(
    "[teacher] %s converted from %s: not trained here; test accuracy on %s %.2f%% "
    "(top-5 %.2f%%); summary in %s",
    arch.name,
    imported["weights"],
    ds.name,
    100 * test["accuracy"],
    100 * test["top5_accuracy"],
    path,
  )
  return summary


def _set_aside_imported(teacher_dir: str) -> tuple:
  """(architecture, {'params', 'batch_stats'} on the host) of the converted network, moved out of
  the teacher's checkpoint series into `imported_weights/` the first time (the fine-tuning then
  writes its own checkpoints there). Safe to interrupt anywhere: the weights are copied before the
  checkpoint is removed."""
  host = checkpoint.host_sharding()
  kept = os.path.join(teacher_dir, layout.IMPORTED_WEIGHTS)
  arch_path = os.path.join(teacher_dir, layout.IMPORTED_ARCH)
  if not os.path.isdir(kept):
    if layout.is_writer():
      if not os.path.exists(arch_path):
        shutil.copyfile(os.path.join(teacher_dir, layout.ARCH), arch_path)
      arch = networks.load(arch_path)
      variables, _ = checkpoint.read_variables(teacher_dir, arch, "teacher", host)
      checkpoint.save_tree(kept + ".partial", variables)
      shutil.rmtree(layout.checkpoint_dir(teacher_dir), ignore_errors=True)
      os.replace(kept + ".partial", kept)
    multihost.barrier("imported weights set aside")
  arch = networks.load(arch_path)
  return arch, checkpoint.restore_tree(kept, checkpoint.abstract_variables(arch, host))


def finetune_imported(config, workdir: str, mesh, ds, imported: dict) -> dict:
  """The teacher stage for `teacher.finetune_imported`: the converted network with a classifier
  for `ds`'s classes, fine-tuned with `config.finetune`; its summary says what it started from."""
  teacher_dir = layout.teacher_dir(workdir)
  source, variables = _set_aside_imported(teacher_dir)
  if "config" not in (records.read_record(teacher_dir) or {}):  # convert's: no training settings
    records.write(config, workdir, "teacher", replace=True, extra={"imported": imported})
  arch = dataclasses.replace(
    source,
    num_classes=ds.num_classes,
    input_size=ds.image_size,
    name=f"{source.name}-{ds.num_classes}cls"
    if source.num_classes != ds.num_classes
    else source.name,
  )
  supervised.check_fits(arch, ds, "the imported teacher")
  new_head = source.num_classes != ds.num_classes
  logging.info(
    "[teacher] fine-tuning %s converted from %s on %s: %s; %s",
    source.name,
    imported["weights"],
    ds.name,
    f"a fresh {ds.num_classes}-class classifier replaces its {source.num_classes}-class one"
    if new_head
    else "its own classifier kept",
    supervised.describe(config.finetune),
  )

  def init_variables(params, batch_stats):
    """The imported weights everywhere but a replaced classifier (fresh, as initialised)."""

    def take(fresh, old, path):
      if new_head and path and path[0].key == "classifier":
        return fresh
      return jax.device_put(old, fresh.sharding)

    params = jax.tree_util.tree_map_with_path(
      lambda p, f, o: take(f, o, p), params, variables["params"]
    )
    batch_stats = jax.tree.map(
      lambda f, o: jax.device_put(o, f.sharding), batch_stats, variables["batch_stats"]
    )
    return params, batch_stats

  extra = {"imported": imported, "finetuned_from": source.name, "new_classifier": new_head}
  return supervised.train_network(
    config,
    config.finetune,
    "finetune",
    "teacher",
    teacher_dir,
    mesh,
    ds,
    arch,
    init_variables=init_variables,
    summary_extra=extra,
    starts_from=f"the weights imported from {os.path.basename(imported['weights'])}",
  )
