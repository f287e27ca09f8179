"""Supervised training of one ResNet with the spec's recipe (§6): shared by `teacher` and `distill`.

SGD with Nesterov momentum and coupled weight decay, linear warm-up per iteration then cosine to
zero, data parallel over the mesh, the dataset resident on the device, evaluation every epoch,
resumable through `tas_jax.training.loop`. The stage decides the network, the loss (cross-entropy
or distillation) and the initial weights.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tas_jax import config as config_lib
from tas_jax.data import datasets
from tas_jax.models import arch as arch_lib, resnet
from tas_jax.ops import flops
from tas_jax.training import loop, parallel, steps


def sgd_with_warmup_cosine(t: ml_collections.ConfigDict, steps_per_epoch: int):
  """(optimizer, schedule) for a recipe section (`teacher`, `distill`): warm-up, cosine, SGD."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=t.warmup_epochs * steps_per_epoch,
      decay_steps=(t.warmup_epochs + t.cosine_epochs) * steps_per_epoch, end_value=0.0)
  tx = optax.chain(optax.add_decayed_weights(t.weight_decay),
                   optax.sgd(schedule, momentum=t.momentum, nesterov=t.nesterov))
  return tx, schedule


def load_data(config: ml_collections.ConfigDict) -> datasets.ImageDataset:
  ds = datasets.load(config.data.name, config.data.dir or None, config.data.image_size)
  n = config.data.train_examples
  if n != -1:
    ds = dataclasses.replace(ds, train_images=ds.train_images[:n], train_labels=ds.train_labels[:n])
  return ds


class DeviceData:
  """A dataset resident on the device: uint8 images, labels, and a padded test set."""

  def __init__(self, ds: datasets.ImageDataset, mesh, eval_batch: int):
    n_dev = mesh.shape[parallel.AXIS]
    self.eval_batch = -(-min(eval_batch, len(ds.test_labels)) // n_dev) * n_dev
    n_test = len(ds.test_labels)
    padded = -(-n_test // self.eval_batch) * self.eval_batch
    pad = padded - n_test
    self.num_train, self.num_test = len(ds.train_labels), n_test
    self.train_images, self.train_labels = parallel.put_replicated(
        (ds.train_images, ds.train_labels), mesh)
    self.test_images, self.test_labels = parallel.put_replicated(
        (np.pad(ds.test_images, ((0, pad), (0, 0), (0, 0), (0, 0))), np.pad(ds.test_labels, (0, pad))),
        mesh)


def epoch_permutation_fn(seed: int, num_examples: int, mesh):
  """epoch -> a permutation of the training set, computed on the device, replicated."""
  key = jax.random.fold_in(jax.random.key(seed), 1)
  fn = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_examples),
               out_shardings=parallel.replicated(mesh))
  return lambda epoch: fn(np.int32(epoch))


def check_batch(field: str, batch: int, num_devices: int, num_examples: int) -> int:
  """Steps per epoch (the last partial batch is dropped: static shapes)."""
  if batch % num_devices:
    raise config_lib.ConfigError(f"config.{field}={batch}: must be a multiple of the {num_devices} "
                                 "devices in use (or set config.num_devices)")
  if batch > num_examples:
    raise config_lib.ConfigError(f"config.{field}={batch}: larger than the {num_examples} "
                                 "training examples")
  return num_examples // batch


def check_fits(a: arch_lib.Architecture, ds: datasets.ImageDataset, what: str) -> None:
  if (a.num_classes, a.input_size, a.input_channels) != (ds.num_classes, ds.image_size, ds.channels):
    raise config_lib.ConfigError(
        f"{what} ({a.name or 'custom'}) expects {a.num_classes} classes and {a.input_size}x"
        f"{a.input_size}x{a.input_channels} inputs, but {ds.name} gives {ds.num_classes} classes "
        f"and {ds.image_size}x{ds.image_size}x{ds.channels}")


def read_variables(stage_dir: str, arch: arch_lib.Architecture, stage: str,
                   sharding) -> tuple[dict, int]:
  """({'params', 'batch_stats'}, step) of a trained network's latest checkpoint, placed with
  `sharding`; the optimiser state is not read (Orbax partial restore)."""
  model = resnet.build(arch)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), resnet.dummy_input(arch), train=False))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          {"params": shapes["params"], "batch_stats": shapes["batch_stats"]})
  variables, _, step = loop.read_checkpoint(stage_dir, abstract, stage)
  return variables, step


def read_teacher(workdir: str, mesh, reader: str) -> tuple[arch_lib.Architecture, dict, int]:
  """The teacher's architecture and {'params', 'batch_stats'} (replicated), from its latest
  checkpoint in WORKDIR/teacher; optimiser state is not read. `reader` names the stage asking."""
  teacher_dir = os.path.join(workdir, "teacher")
  arch_path = os.path.join(teacher_dir, "arch.json")
  if not os.path.exists(arch_path):
    raise loop.CheckpointNotFoundError(
        f"{arch_path} is missing: run --config.stage=teacher with this --workdir first")
  arch = arch_lib.load(arch_path)
  variables, step = read_variables(teacher_dir, arch, "teacher", parallel.replicated(mesh))
  if not os.path.exists(os.path.join(teacher_dir, "summary.json")):
    logging.warning("[%s] the teacher in %s has not finished; using its checkpoint at step %d",
                    reader, teacher_dir, step)
  return arch, variables, step


def train_network(config: ml_collections.ConfigDict, recipe: ml_collections.ConfigDict,
                  recipe_field: str, stage: str, stage_dir: str, ds: datasets.ImageDataset,
                  arch: arch_lib.Architecture, loss_fn: Optional[Callable] = None,
                  loss_args: tuple = (), init_variables: Optional[Callable[[Any, Any], tuple]] = None,
                  summary_extra: Optional[dict] = None) -> dict:
  """Trains `arch` on `ds` with `recipe` (a section like `config.teacher`) into `stage_dir`.

  Resumes from the stage's latest checkpoint, or returns at once when it is finished.
  `loss_fn(logits, labels, x, *loss_args)` replaces cross-entropy (distillation; `loss_args` are
  device arrays such as the teacher's weights). `init_variables(params, batch_stats)` replaces the
  random initial weights (inheriting a teacher's channels). Writes `arch.json`, checkpoints,
  TensorBoard events and `summary.json` (returned) in `stage_dir`.
  """
  t0 = time.time()
  mesh = parallel.make_mesh(config.num_devices)
  n_dev = mesh.shape[parallel.AXIS]
  steps_per_epoch = check_batch(f"{recipe_field}.batch_size", recipe.batch_size, n_dev,
                                len(ds.train_labels))
  counts = flops.count(arch)
  logging.info("[%s] %s on %s (%s): %d train / %d test images, %dx%dx%d; %.2f M FLOPs, "
               "%.3f M params; %d device(s), parallel=%s", stage, arch.name or "custom", ds.name,
               ds.source, len(ds.train_labels), len(ds.test_labels), ds.image_size, ds.image_size,
               ds.channels, counts.flops_m, counts.params_m, n_dev, config.parallel)

  model = resnet.build(arch, dtype=jnp.dtype(config.model.dtype))
  tx, schedule = sgd_with_warmup_cosine(recipe, steps_per_epoch)
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  state = steps.create_state(model, tx, resnet.dummy_input(arch), init_key, mesh)
  if init_variables is not None:
    params, batch_stats = init_variables(state.params, state.batch_stats)
    state = state.replace(params=params, batch_stats=batch_stats)
  data = DeviceData(ds, mesh, recipe.eval_batch_size)
  spec = steps.BatchSpec(recipe.batch_size, steps_per_epoch, ds.mean, ds.std,
                         config.data.crop_padding, config.data.flip)
  train_step = steps.make_train_step(model, tx, spec, mesh, config.parallel, loss_fn,
                                     num_loss_args=len(loss_args))
  evaluate = steps.make_eval_fn(
      lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False),
      ds.mean, ds.std, mesh, data.num_test, data.eval_batch)

  permutation = epoch_permutation_fn(config.seed, data.num_train, mesh)
  os.makedirs(stage_dir, exist_ok=True)
  arch.save(os.path.join(stage_dir, "arch.json"))
  cfg = loop.LoopConfig(stage, recipe.warmup_epochs + recipe.cosine_epochs, steps_per_epoch,
                        recipe.batch_size, config.log_every_steps, config.checkpoint_every_steps,
                        config.keep_checkpoints, config.max_steps_per_run)
  state, history, finished = loop.fit(
      cfg, stage_dir, state, train_step,
      (data.train_images, data.train_labels, aug_key, *loss_args),
      lambda epoch: (permutation(epoch),),
      lambda s, epoch, train: {f"test_{k}": float(v) for k, v in
                        evaluate((s.params, s.batch_stats), data.test_images, data.test_labels).items()},
      lambda step: float(schedule(step)))
  if not finished:
    return {"stage": stage, "finished": False, "step": int(jax.device_get(state.step))}
  last = history[-1]
  summary = {
      "stage": stage, "finished": True, **(summary_extra or {}), "dataset": ds.name,
      "data_source": ds.source, "architecture": arch.name,
      "flops_m": round(counts.flops_m, 4), "params_m": round(counts.params_m, 6),
      "epochs": cfg.num_epochs, "steps": cfg.num_epochs * steps_per_epoch,
      "batch_size": recipe.batch_size,
      "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
      "best_test_accuracy": max(h["test_accuracy"] for h in history),
      "train_accuracy": last["train_accuracy"], "train_loss": last["train_loss"],
      "devices": n_dev, "parallel": config.parallel, "wall_time_s": round(time.time() - t0, 1),
      "compilations": {"train_step": train_step._cache_size(), "evaluate": evaluate._cache_size()},
      "history": history,
  }
  path = loop.write_summary(stage_dir, summary)
  logging.info("[%s] finished: test accuracy %.2f%% (best %.2f%%); summary in %s", stage,
               100 * summary["test_accuracy"], 100 * summary["best_test_accuracy"], path)
  return summary
