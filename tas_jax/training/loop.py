"""The epoch loop every training stage shares: resume, steps, progress, evaluation, checkpoints.

A stage hands over a compiled `(state, batch)` step, a batch source and an end-of-epoch function;
this module owns what a user of a long run expects: automatic resume from the latest Orbax
checkpoint in the stage's folder (mid-epoch too: the source restarts at the checkpoint's step),
metrics in TensorBoard (clu's SummaryWriter: events from process 0 only) and one console line per
interval with images/s and ETA measured over the steps this run ran (`tas_jax.console`), the
compile time of the first step, an optional profiler trace (clu `Profile`), evaluation every epoch,
a stop on a NaN loss that names the step, and on SIGINT/SIGTERM a checkpoint at the current step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable

import jax
from absl import logging

from tas_jax import compilation, console, multihost, workdir
from tas_jax.data import sources
from tas_jax.training import checkpoint


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  stage: str  # name shown in logs ("teacher", "distill", ...)
  num_epochs: int
  steps_per_epoch: int
  global_batch: int
  log_every_steps: int
  checkpoint_every_steps: int  # 0: at epoch ends only
  keep_checkpoints: int
  max_steps_per_run: int = 0  # > 0: checkpoint and return after this many steps in this call
  profile_steps: int = 0  # > 0: a profiler trace of this many steps (TensorBoard's profile tab)
  log_every_secs: float = 60.0  # a progress line at least this often, whatever log_every_steps says
  starts_from: str = "scratch"  # what a first run starts from, for its first line ("scratch",
  # "the imported weights", ...)


class Interrupted(Exception):
  """SIGINT (Ctrl-C) or SIGTERM (a TPU VM's preemption) stopped a run; the message says where
  its checkpoint is. `exit_status` is the shell's convention, 128 + the signal's number."""

  def __init__(self, message: str, signal_name: str = "SIGINT"):
    super().__init__(message)
    self.exit_status = 128 + signal.Signals[signal_name].value


@contextlib.contextmanager
def _stop_requests():
  """While training: SIGINT/SIGTERM set a flag the loop reads after each step (it then saves a
  checkpoint at that step and stops); a second signal stops at once. Only the main thread can
  install handlers: elsewhere (a notebook's worker thread) signals keep their defaults."""
  requested: list[str] = []
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return

  def handler(signum, frame):
    name = signal.Signals(signum).name
    if requested:
      raise Interrupted(f"{name} again: stopped without saving", name)
    requested.append(name)
    logging.warning("%s: saving a checkpoint after this step (again to stop at once)", name)

  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield requested
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)


def _interrupted(stage: str, signal_name: str, step: int, total_steps: int, manager) -> Interrupted:
  """Once the checkpoint at `step` is on disk: the exception that ends the run with one line."""
  manager.wait_until_finished()
  return Interrupted(
    f"[{stage}] {signal_name}: stopped at step {step}/{total_steps} with a "
    f"checkpoint in {manager.directory}; run the same command again to continue",
    signal_name,
  )


def _signal_name(requested: list[str]) -> str:
  return requested[0] if requested else "SIGTERM"  # another process of the run was signalled


def _metric_writers():
  """clu's writers, imported when a run starts: they bring TensorFlow, 5 of the CLI's 8 s of
  start-up, which a command that stops at a config error should not wait for."""
  from clu import metric_writers

  return metric_writers


def _summary_writer(stage_dir: str):
  """TensorBoard events from process 0 (the console gets loop's own lines, not clu's)."""
  if not workdir.is_writer():
    return _metric_writers().MultiWriter([])
  return _metric_writers().AsyncMultiWriter([_metric_writers().SummaryWriter(stage_dir)])


def fit(
  cfg: LoopConfig,
  stage_dir: str,
  state,
  train_step: Callable,
  source: sources.BatchSource,
  step_args: tuple,
  epoch_args: Callable[[int], tuple],
  end_of_epoch: Callable[[Any, int, dict], dict],
  learning_rate: Callable[[int], float],
) -> tuple[Any, list[dict], bool]:
  """Trains `state` to `cfg.num_epochs`; returns the state, the per-epoch history and whether
  the run is finished (False when `cfg.max_steps_per_run` stopped it early, with a checkpoint).

  `train_step(state, batch, extras)` -> (state, clu metrics collection), extras the tuple
  `(*step_args, *epoch_args(epoch))` (`train_step(state, batch)` when that is empty),
  the batches from `source` (resumed at the step the checkpoint holds); `epoch_args(epoch)` gives
  the device values that change per epoch (τ); `end_of_epoch(state, epoch, train)` -> a JSON-able
  dict (evaluation, recorded architecture, …; `train` holds the epoch's averaged train metrics):
  its numbers are logged and written to TensorBoard, all of it goes into the history. It may
  return (state, dict) instead: the state then continues (and is checkpointed) as changed.

  SIGINT or SIGTERM saves a checkpoint at the current step and raises `Interrupted`; on any exit
  the input pipeline (and its worker processes), the checkpoint manager and the writer are closed.
  """
  manager = checkpoint.manager_for(stage_dir, cfg.keep_checkpoints)
  writer = _summary_writer(stage_dir)
  opened = []  # the batch iterator, once _fit made it
  try:
    with _stop_requests() as stop_requested:
      run = _Run(
        cfg,
        stage_dir,
        train_step,
        source,
        step_args,
        epoch_args,
        end_of_epoch,
        learning_rate,
        manager,
        writer,
        stop_requested,
        opened,
      )
      return _fit(run, state)
  finally:
    for batches in opened:
      batches.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()


@dataclasses.dataclass(frozen=True)
class _Run:
  """One call of `fit`: everything the loop reads besides the evolving state."""

  cfg: LoopConfig
  stage_dir: str
  train_step: Callable
  source: sources.BatchSource
  step_args: tuple
  epoch_args: Callable[[int], tuple]
  end_of_epoch: Callable
  learning_rate: Callable[[int], float]
  manager: Any  # the stage's Orbax checkpoint series
  writer: Any  # its TensorBoard writer
  stop_requested: list  # SIGINT/SIGTERM received while it runs
  opened: list  # the batch iterators it opened, closed by `fit`


def _fit(run: _Run, state):
  cfg, stage_dir, train_step, source = run.cfg, run.stage_dir, run.train_step, run.source
  step_args, epoch_args, end_of_epoch = run.step_args, run.epoch_args, run.end_of_epoch
  learning_rate, manager, writer = run.learning_rate, run.manager, run.writer
  stop_requested, opened = run.stop_requested, run.opened
  history: list[dict] = []
  restored = checkpoint.restore_latest(manager, checkpoint.abstract(state))
  if restored is not None:
    state, meta = restored
    history = meta.get("history", [])
  start = int(jax.device_get(state.step))  # the one host read of the step counter
  total_steps = cfg.num_epochs * cfg.steps_per_epoch
  if restored is not None:
    logging.info(
      "[%s] resumed from checkpoint at step %d (epoch %d, step %d of it) in %s; the "
      "data continues at that step",
      cfg.stage,
      start,
      start // cfg.steps_per_epoch + 1,
      start % cfg.steps_per_epoch,
      manager.directory,
    )
  else:
    logging.info(
      "[%s] starting from %s: %d epochs x %d steps, global batch %d, %d device(s)",
      cfg.stage,
      cfg.starts_from,
      cfg.num_epochs,
      cfg.steps_per_epoch,
      cfg.global_batch,
      len(state.step.sharding.device_set),
    )  # the mesh's (config.num_devices), not all
  progress = console.Progress(cfg.stage, total_steps, cfg.global_batch)
  from clu import periodic_actions

  profiler = (
    periodic_actions.Profile(
      logdir=stage_dir,
      num_profile_steps=cfg.profile_steps,
      first_profile=start + 5,
      every_secs=None,
    )
    if cfg.profile_steps and workdir.is_writer()
    else None
  )

  step = start
  stop_at = (
    min(total_steps, start + cfg.max_steps_per_run) if cfg.max_steps_per_run else total_steps
  )
  batches = source.iterate(start)
  opened.append(batches)
  t_start = time.time()
  stopped_early = False
  step_name = "search step" if cfg.stage.startswith("search") else "train step"
  if step < stop_at:
    logging.info("[%s] compiling the %s (the first step waits for it)…", cfg.stage, step_name)
  cache_before = compilation.counts()
  while step < stop_at:
    epoch = step // cfg.steps_per_epoch
    args = tuple(step_args) + tuple(epoch_args(epoch))
    accumulated = None
    t_log, step_log = time.time(), step
    progress.restart(step)  # the rate leaves out the evaluation between epochs
    while True:
      t_step = time.time()
      multihost.at(f"[{cfg.stage}] step {step + 1}")
      state, m = train_step(state, next(batches), *((args,) if args else ()))
      accumulated = m if accumulated is None else accumulated.merge(m)
      step += 1
      if step == start + 1:
        jax.block_until_ready(state.step)
        cache = {k: v - cache_before[k] for k, v in compilation.counts().items()}
        kept = getattr(train_step, "timings", None)  # a kept program (compilation.KeptStep)
        progress.compiled(step, time.time() - t_step, step_name, cache, kept)
      if profiler is not None:
        profiler(step)
      in_epoch = step - epoch * cfg.steps_per_epoch
      epoch_end = in_epoch == cfg.steps_per_epoch
      log_point = step % cfg.log_every_steps == 0 or epoch_end
      if jax.process_count() == 1:
        stop = bool(stop_requested)
        log_now = log_point or stop or time.time() - t_log >= cfg.log_every_secs
      else:  # every process decides alike: by the step count, a signal agreed at log points
        stop = log_point and multihost.any_process(bool(stop_requested))
        log_now = log_point
      if log_now:
        train = {k: float(v) for k, v in accumulated.compute().items()}  # host sync, per log only
        bad = [k for k, v in train.items() if not math.isfinite(v)]
        if bad:
          raise FloatingPointError(
            f"[{cfg.stage}] {bad[0]} is {train[bad[0]]} in steps {step_log + 1}-{step} (checked "
            f"every {cfg.log_every_steps} steps; the last checkpoint is before them): lower the "
            "learning rate or check the data"
          )
        # an epoch's end right after a line: its metrics, no second line
        near_last_line = (
          epoch_end
          and step_log > epoch * cfg.steps_per_epoch
          and step - step_log < max(1, cfg.log_every_steps // 2)
        )
        images_per_s = 0.0 if near_last_line else progress.report(step, train)
        writer.write_scalars(
          step,
          {
            **{f"train/{k}": v for k, v in train.items()},
            "train/epoch": epoch + in_epoch / cfg.steps_per_epoch,
            "train/learning_rate": learning_rate(step),
            **({"train/images_per_second": images_per_s} if images_per_s else {}),
          },
        )
        t_log, step_log = time.time(), step
      if epoch_end:
        break
      if step == stop_at or stop:
        stopped_early = True
        break
      if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0:
        checkpoint.save(manager, step, state, {"history": history})
    if stopped_early:
      multihost.at(f"[{cfg.stage}] saving the checkpoint at step {step}")
      checkpoint.save(manager, step, state, {"history": history})
      if stop:
        raise _interrupted(cfg.stage, _signal_name(stop_requested), step, total_steps, manager)
      logging.info(
        "[%s] stopping after %d steps in this run (max_steps_per_run); run the same "
        "command again to continue",
        cfg.stage,
        step - start,
      )
      break
    multihost.at(f"[{cfg.stage}] the evaluation after epoch {epoch + 1}")
    ended = end_of_epoch(state, epoch, train)
    if isinstance(ended, tuple):  # (a changed state, its record): FPGM's soft pruning
      state, ended = ended
    entry = {
      "epoch": epoch + 1,
      "step": step,
      **{f"train_{k}": v for k, v in train.items()},
      **ended,
      "elapsed_s": round(time.time() - t_start, 1),
    }
    history.append(entry)
    numbers = {
      k: v
      for k, v in entry.items()
      if isinstance(v, (int, float))
      and k not in ("epoch", "step", "elapsed_s")
      and not k.startswith("train_")
    }
    logging.info(
      "[%s] epoch %d/%d done: %s",
      cfg.stage,
      epoch + 1,
      cfg.num_epochs,
      console.format_metrics(numbers),
    )
    writer.write_scalars(step, {f"epoch/{k}": v for k, v in numbers.items()})
    writer.flush()
    multihost.at(f"[{cfg.stage}] saving the checkpoint at step {step}")
    checkpoint.save(manager, step, state, {"history": history})
    # a signal during the evaluation: the epoch is saved
    if multihost.any_process(bool(stop_requested)) and step < total_steps:
      raise _interrupted(cfg.stage, _signal_name(stop_requested), step, total_steps, manager)
  return state, history, not stopped_early and step >= total_steps
