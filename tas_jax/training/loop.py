"""The epoch loop every training stage shares: resume, steps, progress, evaluation, checkpoints.

A stage hands over a compiled step, an evaluation function and the data; this module owns what a
user of a long run expects: automatic resume from the latest Orbax checkpoint in the stage's folder
(mid-epoch too: the batch order is a function of the epoch, and the step knows where it is),
console progress with images/s and ETA, TensorBoard scalars, evaluation every epoch, and a stop on
a NaN loss.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers


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


def checkpoint_manager(stage_dir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(stage_dir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> Optional[tuple[Any, dict]]:
  """(state, meta) of the latest finished checkpoint, or None. An interrupted save is never
  'latest': Orbax finalises a step only once all of it is on disk."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


class CheckpointNotFoundError(FileNotFoundError):
  """A later stage needs an earlier stage's checkpoint that is not there."""


def read_checkpoint(stage_dir: str, abstract_subtrees: dict, stage: str) -> tuple[dict, dict, int]:
  """(the requested subtrees of the state, the meta JSON, step) of the latest checkpoint in
  `stage_dir`, read in a fresh manager with Orbax partial restore: a later stage reads only what
  it needs (the architecture logits of a search, the weights of a teacher), never optimiser state.

  `abstract_subtrees` maps top-level state fields to trees of `jax.ShapeDtypeStruct` (with the
  sharding to restore onto).
  """
  directory = os.path.abspath(os.path.join(stage_dir, "checkpoints"))
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


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


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


def fit(cfg: LoopConfig, stage_dir: str, state, train_step: Callable, step_args: tuple,
        epoch_inputs: Callable[[int], tuple], end_of_epoch: Callable[[Any, int, dict], dict],
        learning_rate: Callable[[int], float]) -> tuple[Any, list[dict], bool]:
  """Trains `state` to `cfg.num_epochs`; returns the state, the per-epoch history and whether
  the run is finished (False when `cfg.max_steps_per_run` stopped it early, with a checkpoint).

  `train_step(state, *step_args, *epoch_inputs(epoch))` -> (state, clu metrics collection);
  `epoch_inputs(epoch)` gives the device arrays that change per epoch (permutations, τ);
  `end_of_epoch(state, epoch, train)` -> a JSON-able dict (evaluation, recorded architecture, …;
  `train` holds the epoch's averaged train metrics): its
  numbers are logged and written to TensorBoard, all of it goes into the history.
  """
  os.makedirs(stage_dir, exist_ok=True)
  manager = checkpoint_manager(stage_dir, cfg.keep_checkpoints)
  # TensorBoard events from the first process only; the others write nowhere.
  writer = (metric_writers.SummaryWriter(stage_dir) if jax.process_index() == 0
            else metric_writers.MultiWriter([]))
  history: list[dict] = []
  restored = restore_latest(manager, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))
  if restored is not None:
    state, meta = restored
    history = meta.get("history", [])
  start = int(jax.device_get(state.step))  # the one host read of the step counter
  total_steps = cfg.num_epochs * cfg.steps_per_epoch
  if restored is not None:
    logging.info("[%s] resumed from checkpoint at step %d (epoch %d, step %d of it) in %s",
                 cfg.stage, start, start // cfg.steps_per_epoch + 1, start % cfg.steps_per_epoch,
                 manager.directory)
  else:
    logging.info("[%s] starting from scratch: %d epochs x %d steps, global batch %d, %d device(s)",
                 cfg.stage, cfg.num_epochs, cfg.steps_per_epoch, cfg.global_batch, jax.device_count())

  step = start
  stop_at = min(total_steps, start + cfg.max_steps_per_run) if cfg.max_steps_per_run else total_steps
  t_start = time.time()
  while step < stop_at:
    epoch = step // cfg.steps_per_epoch
    inputs = tuple(epoch_inputs(epoch))
    accumulated = None
    t_log, step_log = time.time(), step
    while True:
      state, m = train_step(state, *step_args, *inputs)
      accumulated = m if accumulated is None else accumulated.merge(m)
      step += 1
      in_epoch = step - epoch * cfg.steps_per_epoch
      epoch_end = in_epoch == cfg.steps_per_epoch
      if step % cfg.log_every_steps == 0 or epoch_end:
        train = {k: float(v) for k, v in accumulated.compute().items()}  # host sync, per log only
        bad = [k for k, v in train.items() if not math.isfinite(v)]
        if bad:
          raise FloatingPointError(f"[{cfg.stage}] {bad[0]} is {train[bad[0]]} at step {step}: "
                                   "lower the learning rate or check the data")
        now = time.time()
        rate = (step - step_log) * cfg.global_batch / max(now - t_log, 1e-9)
        eta = (total_steps - step) * (now - t_log) / max(step - step_log, 1)
        logging.info("[%s] epoch %d/%d step %d/%d %s lr %.4g %.0f img/s ETA %s", cfg.stage,
                     epoch + 1, cfg.num_epochs, in_epoch, cfg.steps_per_epoch, _fmt_metrics(train),
                     learning_rate(step), rate, _fmt_time(eta))
        writer.write_scalars(step, {**{f"train/{k}": v for k, v in train.items()},
                                    "train/learning_rate": learning_rate(step),
                                    "train/images_per_second": rate})
        t_log, step_log = now, step
      if epoch_end:
        break
      if step == stop_at:
        _save(manager, step, state, {"history": history})
        logging.info("[%s] stopping after %d steps in this run (max_steps_per_run); run the same "
                     "command again to continue", cfg.stage, step - start)
        manager.wait_until_finished()
        manager.close()
        writer.close()
        return state, history, False
      if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
        _save(manager, step, state, {"history": history})
    entry = {"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in train.items()},
             **end_of_epoch(state, epoch, train), "elapsed_s": round(time.time() - t_start, 1)}
    history.append(entry)
    numbers = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and
               k not in ("epoch", "step", "elapsed_s") and not k.startswith("train_")}
    logging.info("[%s] epoch %d/%d done: %s", cfg.stage, epoch + 1, cfg.num_epochs,
                 _fmt_metrics(numbers))
    writer.write_scalars(step, {f"epoch/{k}": v for k, v in numbers.items()})
    writer.flush()
    _save(manager, step, state, {"history": history})
  manager.wait_until_finished()
  manager.close()
  writer.close()
  return state, history, step >= total_steps


def write_summary(stage_dir: str, summary: dict) -> str:
  path = os.path.join(stage_dir, "summary.json")
  with open(path, "w") as f:
    json.dump(summary, f, indent=2)
  return path
