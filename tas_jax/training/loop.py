"""The epoch loop every training stage shares: resume, steps, progress, evaluation, checkpoints.

A stage hands over a compiled `(state, batch)` step, a batch source and an end-of-epoch function;
this module owns what a user of a long run expects: automatic resume from the latest Orbax
checkpoint in the stage's folder (mid-epoch too: the source restarts at the checkpoint's step),
metrics on the console and in TensorBoard (clu's default writer: events from process 0 only),
progress with steps/s and ETA (clu `ReportProgress`), an optional profiler trace (clu `Profile`),
evaluation every epoch, and a stop on a NaN loss that names the step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers, periodic_actions

from tas_jax import workdir
from tas_jax.data import sources
from tas_jax.errors import CheckpointNotFoundError


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  stage: str                     # name shown in logs ("teacher", "distill", ...)
  num_epochs: int
  steps_per_epoch: int
  global_batch: int
  log_every_steps: int
  checkpoint_every_steps: int    # 0: at epoch ends only
  keep_checkpoints: int
  max_steps_per_run: int = 0     # > 0: checkpoint and return after this many steps in this call
  profile_steps: int = 0         # > 0: a profiler trace of this many steps (TensorBoard's profile tab)


def checkpoint_manager(stage_dir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir.checkpoint_dir(stage_dir),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> Optional[tuple[Any, dict]]:
  """(state, meta) of the latest readable checkpoint, or None when there is none.

  An interrupted save is never 'latest': Orbax finalises a step only once all of it is on disk. A
  finalised checkpoint that cannot be read (a damaged file) is skipped with a warning for the one
  before it (and removed, since the run writes that step again); when none can be read the run
  stops with one line saying what to do — never silently from scratch.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint: fall back, say so
      reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      failures.append(f"step {step}: {reason}")
      logging.warning("checkpoint at step %d in %s cannot be read (%s); trying the one before it",
                      step, manager.directory, reason)
      continue
    for bad in (b for b in steps if b > step):   # the run will write these steps again
      manager.delete(bad)
      logging.warning("removed the unreadable checkpoint at step %d; continuing from step %d",
                      bad, step)
    return restored["state"], restored["meta"]
  if failures:
    raise CheckpointNotFoundError(
        f"no readable checkpoint in {manager.directory} ({'; '.join(failures)}): delete that folder "
        "to start this stage over")
  return None


def read_checkpoint(stage_dir: str, abstract_subtrees: dict, stage: str) -> tuple[dict, dict, int]:
  """(the requested subtrees of the state, the meta JSON, step) of the latest checkpoint in
  `stage_dir`, read in a fresh manager with Orbax partial restore: a later stage reads only what
  it needs (the architecture logits of a search, the weights of a teacher), never optimiser state.

  `abstract_subtrees` maps top-level state fields to trees of `jax.ShapeDtypeStruct` (with the
  sharding to restore onto).
  """
  directory = workdir.checkpoint_dir(stage_dir)
  manager = ocp.CheckpointManager(directory) if os.path.isdir(directory) else None
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise CheckpointNotFoundError(
        f"no {stage} checkpoint in {directory}: run --config.stage={stage} with this --workdir first")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=abstract_subtrees, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtrees)),
      meta=ocp.args.JsonRestore()))
  manager.close()
  return dict(restored["state"]), restored["meta"], step


def _save(manager, step: int, state, meta: dict) -> None:
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             meta=ocp.args.JsonSave(meta)), force=True)


def _fmt_metrics(values: dict) -> str:
  """'loss 0.4321 accuracy 85.20% …': accuracies and ratios as percentages."""
  parts = []
  for k, v in values.items():
    if "accuracy" in k or k.endswith("ratio"):
      parts.append(f"{k} {100 * v:.2f}%")
    elif isinstance(v, float):
      parts.append(f"{k} {v:.4g}")
    else:
      parts.append(f"{k} {v}")
  return " ".join(parts)


def fit(cfg: LoopConfig, stage_dir: str, state, train_step: Callable, source: sources.BatchSource,
        step_args: tuple, epoch_args: Callable[[int], tuple],
        end_of_epoch: Callable[[Any, int, dict], dict],
        learning_rate: Callable[[int], float]) -> tuple[Any, list[dict], bool]:
  """Trains `state` to `cfg.num_epochs`; returns the state, the per-epoch history and whether
  the run is finished (False when `cfg.max_steps_per_run` stopped it early, with a checkpoint).

  `train_step(state, batch, *step_args, *epoch_args(epoch))` -> (state, clu metrics collection),
  the batches from `source` (resumed at the step the checkpoint holds); `epoch_args(epoch)` gives
  the device values that change per epoch (τ); `end_of_epoch(state, epoch, train)` -> a JSON-able
  dict (evaluation, recorded architecture, …; `train` holds the epoch's averaged train metrics):
  its numbers are logged and written to TensorBoard, all of it goes into the history.
  """
  manager = checkpoint_manager(stage_dir, cfg.keep_checkpoints)
  # TensorBoard events from process 0; every process logs to its own console.
  writer = metric_writers.create_default_writer(stage_dir, just_logging=not workdir.is_writer())
  history: list[dict] = []
  restored = restore_latest(manager, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  if restored is not None:
    state, meta = restored
    history = meta.get("history", [])
    data_state = meta.get("data") or {}
  start = int(jax.device_get(state.step))  # the one host read of the step counter
  total_steps = cfg.num_epochs * cfg.steps_per_epoch
  if restored is not None:
    logging.info("[%s] resumed from checkpoint at step %d (epoch %d, step %d of it) in %s; the "
                 "data continues at that step%s", cfg.stage, start, start // cfg.steps_per_epoch + 1,
                 start % cfg.steps_per_epoch, manager.directory,
                 f" (saved input state: {data_state})" if data_state else "")
  else:
    logging.info("[%s] starting from scratch: %d epochs x %d steps, global batch %d, %d device(s)",
                 cfg.stage, cfg.num_epochs, cfg.steps_per_epoch, cfg.global_batch, jax.device_count())
  hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=cfg.log_every_steps, every_secs=None)]
  if cfg.profile_steps and workdir.is_writer():
    hooks.append(periodic_actions.Profile(logdir=stage_dir, num_profile_steps=cfg.profile_steps,
                                          first_profile=start + 5, every_secs=None))

  step = start
  stop_at = min(total_steps, start + cfg.max_steps_per_run) if cfg.max_steps_per_run else total_steps
  batches = source.iterate(start)
  t_start = time.time()
  finished_early = False
  while step < stop_at:
    epoch = step // cfg.steps_per_epoch
    args = tuple(step_args) + tuple(epoch_args(epoch))
    accumulated = None
    t_log, step_log = time.time(), step
    while True:
      state, m = train_step(state, next(batches), *args)
      accumulated = m if accumulated is None else accumulated.merge(m)
      step += 1
      for hook in hooks:
        hook(step)
      in_epoch = step - epoch * cfg.steps_per_epoch
      epoch_end = in_epoch == cfg.steps_per_epoch
      if step % cfg.log_every_steps == 0 or epoch_end:
        train = {k: float(v) for k, v in accumulated.compute().items()}  # host sync, per log only
        bad = [k for k, v in train.items() if not math.isfinite(v)]
        if bad:
          raise FloatingPointError(
              f"[{cfg.stage}] {bad[0]} is {train[bad[0]]} in steps {step_log + 1}-{step} (checked "
              f"every {cfg.log_every_steps} steps; the last checkpoint is before them): lower the "
              "learning rate or check the data")
        now = time.time()
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in train.items()},
                                    "train/epoch": epoch + in_epoch / cfg.steps_per_epoch,
                                    "train/learning_rate": learning_rate(step),
                                    "train/images_per_second":
                                        (step - step_log) * cfg.global_batch / max(now - t_log, 1e-9)})
        t_log, step_log = now, step
      if epoch_end:
        break
      if step == stop_at:
        finished_early = True
        break
      if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
        _save(manager, step, state, {"history": history, "data": source.state()})
    if finished_early:
      _save(manager, step, state, {"history": history, "data": source.state()})
      logging.info("[%s] stopping after %d steps in this run (max_steps_per_run); run the same "
                   "command again to continue", cfg.stage, step - start)
      break
    entry = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in train.items()},
             **end_of_epoch(state, epoch, train), "elapsed_s": round(time.time() - t_start, 1)}
    history.append(entry)
    numbers = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and
               k not in ("epoch", "step", "elapsed_s") and not k.startswith("train_")}
    logging.info("[%s] epoch %d/%d done: %s", cfg.stage, epoch + 1, cfg.num_epochs,
                 _fmt_metrics(numbers))
    writer.write_scalars(step, {f"epoch/{k}": v for k, v in numbers.items()})
    writer.flush()
    _save(manager, step, state, {"history": history, "data": source.state()})
  batches.close()
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state, history, not finished_early and step >= total_steps
