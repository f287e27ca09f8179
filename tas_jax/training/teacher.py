"""Stage `teacher`: train the unpruned network (spec §6).

SGD with Nesterov momentum and coupled weight decay, linear warm-up per iteration then cosine to
zero, data parallel over the mesh. Writes `WORKDIR/teacher/`: checkpoints (the distillation stage
reads them), TensorBoard events, `arch.json` and `summary.json`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tas_jax import config as config_lib
from tas_jax.data import datasets
from tas_jax.models import resnet
from tas_jax.ops import flops
from tas_jax.training import loop, parallel, steps


def sgd_with_warmup_cosine(t: ml_collections.ConfigDict, steps_per_epoch: int):
  """(optimizer, schedule) for a `teacher`-style section: warm-up, cosine, Nesterov SGD."""
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or skips when finished) the teacher stage; returns its summary."""
  config_lib.validate(config)
  stage_dir = os.path.join(workdir, "teacher")
  t0 = time.time()
  ds = load_data(config)
  arch = config_lib.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  mesh = parallel.make_mesh(config.num_devices)
  n_dev = mesh.shape[parallel.AXIS]
  t = config.teacher
  steps_per_epoch = check_batch("teacher.batch_size", t.batch_size, n_dev, len(ds.train_labels))
  counts = flops.count(arch)
  logging.info("[teacher] %s on %s (%s): %d train / %d test images, %dx%dx%d; %.2f M FLOPs, "
               "%.3f M params; %d device(s), parallel=%s", arch.name or "custom", ds.name, ds.source,
               len(ds.train_labels), len(ds.test_labels), ds.image_size, ds.image_size, ds.channels,
               counts.flops_m, counts.params_m, n_dev, config.parallel)

  model = resnet.build(arch, dtype=jnp.dtype(config.model.dtype))
  tx, schedule = sgd_with_warmup_cosine(t, steps_per_epoch)
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  state = steps.create_state(model, tx, resnet.dummy_input(arch), init_key, mesh)
  data = DeviceData(ds, mesh, t.eval_batch_size)
  spec = steps.BatchSpec(t.batch_size, steps_per_epoch, ds.mean, ds.std, config.data.crop_padding,
                         config.data.flip)
  train_step = steps.make_train_step(model, tx, spec, mesh, config.parallel)
  evaluate = steps.make_eval_fn(
      lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False),
      ds.mean, ds.std, mesh, data.num_test, data.eval_batch)

  permutation = epoch_permutation_fn(config.seed, data.num_train, mesh)
  os.makedirs(stage_dir, exist_ok=True)
  arch.save(os.path.join(stage_dir, "arch.json"))
  cfg = loop.LoopConfig("teacher", t.warmup_epochs + t.cosine_epochs, steps_per_epoch, t.batch_size,
                        config.log_every_steps, config.checkpoint_every_steps, config.keep_checkpoints,
                        config.max_steps_per_run)
  state, history, finished = loop.fit(
      cfg, stage_dir, state, train_step,
      (data.train_images, data.train_labels, aug_key),
      lambda epoch: (permutation(epoch),),
      lambda s, epoch: {f"test_{k}": float(v) for k, v in
                        evaluate((s.params, s.batch_stats), data.test_images, data.test_labels).items()},
      lambda step: float(schedule(step)))
  if not finished:
    return {"stage": "teacher", "finished": False, "step": int(jax.device_get(state.step))}
  last = history[-1]
  summary = {
      "stage": "teacher", "finished": True, "dataset": ds.name, "data_source": ds.source, "architecture": arch.name,
      "flops_m": round(counts.flops_m, 4), "params_m": round(counts.params_m, 4),
      "epochs": cfg.num_epochs, "steps": cfg.num_epochs * steps_per_epoch,
      "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"],
      "best_test_accuracy": max(h["test_accuracy"] for h in history),
      "train_accuracy": last["train_accuracy"], "train_loss": last["train_loss"],
      "devices": n_dev, "parallel": config.parallel, "wall_time_s": round(time.time() - t0, 1),
      "history": history,
  }
  path = loop.write_summary(stage_dir, summary)
  logging.info("[teacher] finished: test accuracy %.2f%% (best %.2f%%); summary in %s",
               100 * summary["test_accuracy"], 100 * summary["best_test_accuracy"], path)
  return summary
