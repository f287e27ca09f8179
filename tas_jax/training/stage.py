"""The shell every trained stage runs in (teacher, distill, TAS search, PaS search): what comes
before and after the epoch loop, written once.

    stage = Stage.open(config, "search", stage_dir, mesh, files={layout.BASE_ARCH: base})
    state, history = stage.fit(state, step, source, end_of_epoch, epochs=..., ...)
    if history is None:                       # stopped by max_steps_per_run: resumable
      return stage.unfinished(state)
    return stage.finish({...its own fields...}, "[search] finished: ...", args)

`open` writes the architecture files later stages read (process 0 only) and starts the clock;
`fit` builds the loop's settings from the config (`tas_jax.training.loop.LoopConfig`) and runs it
(resuming from the stage's checkpoints); `finish` adds what every summary holds (devices, the
parallel mode, the wall time), writes `summary.json` and logs the stage's closing line.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

import jax
import ml_collections
from absl import logging

from tas_jax import compilation, parallel, workdir as layout
from tas_jax.data import sources
from tas_jax.training import loop

# run control: fields that change how a run is driven, never what a step computes
_RUN_CONTROL = (
  "stage",
  "overwrite",
  "compilation_cache",
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "max_steps_per_run",
  "profile_steps",
  "pipeline",
)


def step_fingerprint(config: ml_collections.ConfigDict, **parts) -> dict:
  """What a stage's compiled step is keyed by when it is kept (`parallel.compile_step(kept=…)`):
  the whole config but its run-control fields, the user's module's source, and `parts` (the
  architecture, the step counts, the target). Anything else the step's Python reads belongs in
  `parts`; too much costs only a retrace, too little would load a wrong program."""
  settings = {k: v for k, v in config.to_dict().items() if k not in _RUN_CONTROL}
  module = config.model.get("module", "") or ""
  return {
    "config": settings,
    "module_source": compilation.source_digest(module) if module else "",
    **{k: repr(v) for k, v in parts.items()},
  }


@dataclasses.dataclass
class Stage:
  config: ml_collections.ConfigDict
  name: str  # as the logs say it: "teacher", "search", "search-pas", "distill/tas-kd"
  directory: str
  mesh: jax.sharding.Mesh
  started: float

  @classmethod
  def open(cls, config, name: str, directory: str, mesh, files: Optional[dict] = None) -> "Stage":
    """The stage `name` writing into `directory`; `files` ({file name: architecture}) are saved
    there first (the network a later stage rebuilds)."""
    if layout.is_writer():
      os.makedirs(directory, exist_ok=True)
      for file, arch in (files or {}).items():
        arch.save(os.path.join(directory, file))
    return cls(config, name, directory, mesh, time.time())

  @property
  def devices(self) -> int:
    return self.mesh.shape[parallel.AXIS]

  def fit(
    self,
    state,
    step: Callable,
    source: sources.BatchSource,
    end_of_epoch: Callable,
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    learning_rate: Callable[[int], float],
    step_args: tuple = (),
    epoch_args: Callable[[int], tuple] = lambda epoch: (),
    starts_from: str = "scratch",
  ) -> tuple:
    """(state, history) after the loop (`loop.fit`) ran to the end; (state, None) when it stopped
    early (`max_steps_per_run`), with a checkpoint to resume from."""
    c = self.config
    cfg = loop.LoopConfig(
      self.name,
      epochs,
      steps_per_epoch,
      batch_size,
      c.log_every_steps,
      c.checkpoint_every_steps,
      c.keep_checkpoints,
      c.max_steps_per_run,
      c.profile_steps,
      starts_from=starts_from,
    )
    state, history, finished = loop.fit(
      cfg, self.directory, state, step, source, step_args, epoch_args, end_of_epoch, learning_rate
    )
    return state, (history if finished else None)

  def unfinished(self, state) -> dict:
    """The summary of a run that stopped before its end (nothing written: it resumes)."""
    return {"stage": self.name, "finished": False, "step": int(jax.device_get(state.step))}

  def finish(self, summary: dict, message: str, *args) -> dict:
    """`summary` with the devices, parallel mode and wall time, written to summary.json; logs
    `message % args` followed by where the summary is. Returns the summary."""
    summary = {
      **summary,
      "devices": self.devices,
      "parallel": self.config.parallel,
      "wall_time_s": round(time.time() - self.started, 1),
    }
    path = layout.write_summary(self.directory, summary)
    logging.info(message + "; summary in %s", *args, path)
    return summary
