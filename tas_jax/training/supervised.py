"""Supervised training of one network with a recipe section (`config.teacher`, `config.distill`,
`config.finetune`, a method's fine-tuning): shared by `teacher` and `distill`.

SGD with Nesterov momentum and coupled weight decay, a linear warm-up per iteration then cosine to
zero (TAS's recipe, Dong & Yang 2019) or a step decay (PaS's released fine-tuning), data parallel
over the mesh, evaluation every epoch, resumable, in the stage shell of
`tas_jax.training.stage`. Batches come from the config's data (`tas_jax.training.inputs`: resident
on the device, or streamed). The stage decides the network, the loss (cross-entropy or
distillation) and the initial weights.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from tas_jax import parallel, workdir as layout
from tas_jax.data import sources
from tas_jax.errors import ConfigError
from tas_jax.models import arch as arch_lib, networks, repvgg, user
from tas_jax.ops import flops
from tas_jax.training import checkpoint, inputs as inputs_lib, stage as stage_lib, steps


def sgd_with_warmup_cosine(t: ml_collections.ConfigDict, steps_per_epoch: int):
  """(optimizer, schedule) for a recipe section (`teacher`, `distill`): warm-up, cosine, SGD."""
  if t.warmup_epochs:
    schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=t.lr,
      warmup_steps=t.warmup_epochs * steps_per_epoch,
      decay_steps=(t.warmup_epochs + t.cosine_epochs) * steps_per_epoch,
      end_value=0.0,
    )
  else:  # the same values; optax warns about a warm-up of zero steps
    schedule = optax.cosine_decay_schedule(t.lr, t.cosine_epochs * steps_per_epoch)
  return _sgd(t, schedule), schedule


def _sgd(t: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
  return optax.chain(
    optax.add_decayed_weights(t.weight_decay),
    optax.sgd(schedule, momentum=t.momentum, nesterov=t.nesterov),
  )


def sgd_with_step_decay(t: ml_collections.ConfigDict, steps_per_epoch: int):
  """(optimizer, schedule) of a step-decay recipe (`schedule="step"`, e.g. PaS's fine-tuning as
  released): lr `t.lr`, multiplied by `t.decay_factor` after each epoch of `t.decay_epochs`."""
  schedule = optax.piecewise_constant_schedule(
    t.lr, {int(e) * steps_per_epoch: t.decay_factor for e in t.decay_epochs}
  )
  return _sgd(t, schedule), schedule


def is_step_decay(t: ml_collections.ConfigDict) -> bool:
  return t.get("schedule", "cosine") == "step"


def recipe_epochs(t: ml_collections.ConfigDict) -> int:
  return t.epochs if is_step_decay(t) else t.warmup_epochs + t.cosine_epochs


def describe(t: ml_collections.ConfigDict) -> str:
  """One line: the recipe's schedule and optimiser, for the log."""
  if is_step_decay(t):
    decays = ", ".join(str(e) for e in t.decay_epochs if e < t.epochs)
    lr = (
      f"lr {t.lr:g}, x{t.decay_factor:g} after epochs {decays}"
      if decays
      else f"constant lr {t.lr:g}"
    )
  else:
    lr = f"lr {t.lr:g}, {t.warmup_epochs} warm-up epochs then cosine to 0"
  return (
    f"{recipe_epochs(t)} epochs at batch {t.batch_size}, SGD momentum {t.momentum:g}"
    f"{' (Nesterov)' if t.nesterov else ''}, weight decay {t.weight_decay:g}, {lr}"
  )


def load_inputs(
  config: ml_collections.ConfigDict, eval_batch: int
) -> tuple[Any, inputs_lib.Inputs]:
  """(the device mesh, the config's data on it)."""
  mesh = parallel.make_mesh(config.num_devices)
  return mesh, inputs_lib.load(config, mesh, eval_batch)


def permutation_key(seed: int) -> Callable[[jax.Array], jax.Array]:
  """epoch -> the key of that epoch's shuffle of the training set."""
  key = jax.random.fold_in(jax.random.key(seed), 1)
  return lambda epoch: jax.random.fold_in(key, epoch)


def architecture(
  c: ml_collections.ConfigDict, num_classes: int, image_size: int, channels: int
) -> arch_lib.Architecture:
  """The network the config describes, fitted to a dataset's classes, image size and channels."""
  if c.model.module:
    kwargs = json.dumps(json.loads(c.model.kwargs), sort_keys=True)
    name = c.model.module.split(":")[-1].lower()
    net = user.UserNetwork(c.model.module, kwargs, num_classes, image_size, channels, name=name)
    user.traced(net)  # the call convention, the output and the groups, checked before training
    return net
  if c.model.arch:
    a = networks.resolve(c.model.arch)
    if (a.num_classes, a.input_size, a.input_channels) != (num_classes, image_size, channels):
      raise ConfigError(
        f"config.model.arch={c.model.arch!r} expects {a.num_classes} classes and "
        f"{a.input_size}x{a.input_size}x{a.input_channels} inputs, but config.data.name="
        f"{c.data.name!r} gives {num_classes} classes and {image_size}x{image_size}x{channels}"
      )
    return a
  try:
    if c.model.family == "cifar":
      return arch_lib.cifar_resnet(c.model.depth, c.model.block, num_classes, image_size, channels)
    if c.model.family == "repvgg":
      return repvgg.named_repvgg(c.model.repvgg, num_classes, image_size, channels)
    return arch_lib.imagenet_resnet(c.model.depth, num_classes, image_size, channels)
  except arch_lib.ArchError as e:
    hint = ""
    if "multiple of" in str(e):  # e.g. RepVGG (5 stride-2 stages) on 28x28 Fashion-MNIST
      multiple = int(str(e).split("multiple of ")[1].split()[0])
      hint = (
        f"; pad the images with --config.data.image_size={-(-image_size // multiple) * multiple}"
      )
    raise ConfigError(f"model for {c.data.name}: {e}{hint}") from None


def check_fits(a: arch_lib.Architecture, ds: inputs_lib.Inputs, what: str) -> None:
  if (a.num_classes, a.input_size, a.input_channels) != (
    ds.num_classes,
    ds.image_size,
    ds.channels,
  ):
    raise ConfigError(
      f"{what} ({a.name or 'custom'}) expects {a.num_classes} classes and {a.input_size}x"
      f"{a.input_size}x{a.input_channels} inputs, but {ds.name} gives {ds.num_classes} classes "
      f"and {ds.image_size}x{ds.image_size}x{ds.channels}"
    )


def train_network(
  config: ml_collections.ConfigDict,
  recipe: ml_collections.ConfigDict,
  recipe_field: str,
  stage: str,
  stage_dir: str,
  mesh,
  ds: inputs_lib.Inputs,
  arch: arch_lib.Architecture,
  loss_fn: Optional[Callable] = None,
  loss_args: tuple = (),
  init_variables: Optional[Callable[[Any, Any], tuple]] = None,
  summary_extra: Optional[dict] = None,
  model: Any = None,
  finish: Optional[Callable[[Any, Callable], dict]] = None,
  starts_from: str = "",
  between_epochs: Optional[Callable[[Any, int], tuple]] = None,
  optimizer_wrapper: Optional[Callable] = None,
) -> dict:
  """Trains `arch` on `ds` with `recipe` (a section like `config.teacher`) into `stage_dir`.

  Resumes from the stage's latest checkpoint, or returns at once when it is finished.
  `loss_fn(logits, labels, x, *loss_args)` replaces cross-entropy (distillation; `loss_args` are
  device arrays such as the teacher's weights). `init_variables(params, batch_stats)` replaces the
  random initial weights (inheriting a teacher's channels). `model` replaces `arch`'s own module
  (a training-form network with frozen masks whose result is `arch`); `finish(state,
  evaluate)` turns the trained state into that result at the end and returns what it changes
  in the summary, `evaluate(apply_fn, variables)` giving its test metrics. `starts_from` names
  the initial weights in the log (default: scratch, or "the given weights" with
  `init_variables`). `between_epochs(state, epoch)` -> (state, record) changes the state after
  every epoch, before its evaluation (FPGM's soft pruning zeroes filters);
  `optimizer_wrapper(tx)` extends the recipe's optimizer (soft FPGM freezes those filters at zero
  through the next epoch). A recipe of 0 epochs
  only evaluates the initial weights. Writes `arch.json`,
  checkpoints, TensorBoard events and `summary.json` (returned) in `stage_dir`.
  """
  run = stage_lib.Stage.open(config, stage, stage_dir, mesh, files={layout.ARCH: arch})
  n_dev = run.devices
  steps_per_epoch = sources.check_batch(
    f"{recipe_field}.batch_size", recipe.batch_size, n_dev, ds.num_train
  )
  counts = flops.count(arch)
  logging.info(
    "[%s] %s on %s (%s): %d train / %d test images, %dx%dx%d; %.2f M FLOPs, "
    "%.3f M params; %d device(s), parallel=%s",
    stage,
    arch.name or "custom",
    ds.name,
    ds.source,
    ds.num_train,
    ds.num_test,
    ds.image_size,
    ds.image_size,
    ds.channels,
    counts.flops_m,
    counts.params_m,
    n_dev,
    config.parallel,
  )

  model = model or networks.build(
    arch, dtype=jnp.dtype(config.model.dtype), scan_blocks=config.model.scan_blocks
  )
  tx, schedule = (sgd_with_step_decay if is_step_decay(recipe) else sgd_with_warmup_cosine)(
    recipe, steps_per_epoch
  )
  if optimizer_wrapper is not None:
    tx = optimizer_wrapper(tx)
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  state = steps.create_state(model, tx, networks.dummy_input(arch), init_key, mesh)
  if init_variables is not None:
    params, batch_stats = init_variables(state.params, state.batch_stats)
    state = state.replace(params=params, batch_stats=batch_stats)
  train_source = ds.train_source(
    np.arange(ds.num_train),
    recipe.batch_size,
    seed=config.seed,
    epoch_key=permutation_key(config.seed),
    step_key=lambda step: jax.random.fold_in(aug_key, step),
  )
  test_source = ds.eval_source()
  train_step = steps.make_train_step(model, mesh, config.parallel, loss_fn)
  eval_step = steps.make_eval_step(
    lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False)
  )

  def evaluation(state):
    test = steps.evaluate(
      eval_step, (state.params, state.batch_stats), test_source.batches(), test_source.num_examples
    )
    return {f"test_{k}": v for k, v in test.items()}

  def end_of_epoch(state, epoch, train):
    if between_epochs is None:
      return evaluation(state)
    state, record = between_epochs(state, epoch)
    return state, {**record, **evaluation(state)}

  epochs = recipe_epochs(recipe)
  if epochs == 0:  # nothing to train: the initial weights, evaluated and kept as the result
    history = [{"epoch": 0, "step": 0, **evaluation(state)}]
    manager = checkpoint.manager_for(stage_dir, config.keep_checkpoints)
    checkpoint.save(manager, 0, state, {"history": history})
    manager.wait_until_finished()
    manager.close()
  else:
    state, history = run.fit(
      state,
      train_step,
      train_source,
      end_of_epoch,
      epochs=epochs,
      steps_per_epoch=steps_per_epoch,
      batch_size=recipe.batch_size,
      learning_rate=lambda step: float(schedule(step)),
      step_args=loss_args,
      starts_from=starts_from or ("scratch" if init_variables is None else "the given weights"),
    )
  if history is None:
    return run.unfinished(state)
  last = history[-1]
  finished_as = {}
  if finish is not None:

    def evaluate(apply_fn, variables):
      return steps.evaluate(
        steps.make_eval_step(apply_fn), variables, test_source.batches(), test_source.num_examples
      )

    finished_as = finish(state, evaluate)
  summary = {
    "stage": stage,
    "finished": True,
    **(summary_extra or {}),
    "dataset": ds.name,
    "data_source": ds.source,
    "architecture": arch.name,
    "flops_m": round(counts.flops_m, 4),
    "params_m": round(counts.params_m, 6),
    "epochs": epochs,
    "steps": epochs * steps_per_epoch,
    "batch_size": recipe.batch_size,
    "test_accuracy": last["test_accuracy"],
    "test_top5_accuracy": last["test_top5_accuracy"],
    "test_loss": last["test_loss"],
    "best_test_accuracy": max(h["test_accuracy"] for h in history),
    "train_accuracy": last.get("train_accuracy"),
    "train_loss": last.get("train_loss"),
    "compilations": {
      "train_step": train_step._cache_size(),
      "eval_step": eval_step._cache_size(),
      **(train_source.compilations() if hasattr(train_source, "compilations") else {}),
    },
    "history": history,
    **finished_as,
  }
  skipped = getattr(train_source, "skipped", None)
  if skipped is not None:  # streamed data: images that could not be decoded (data.bad_images)
    summary["skipped_images"] = len(skipped.files)
    if skipped.files:
      logging.warning(
        "[%s] %d training image(s) could not be decoded and were skipped (names in "
        "the warnings above and in %s)",
        stage,
        len(skipped.files),
        os.path.join(stage_dir, "log.txt"),
      )
  return run.finish(
    summary,
    "[%s] finished: test accuracy %.2f%% (best %.2f%%)",
    stage,
    100 * summary["test_accuracy"],
    100 * summary["best_test_accuracy"],
  )
