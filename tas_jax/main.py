"""Run the stage a config selects: `run(config, workdir)`, what `python -m tas_jax.main` calls
(the command itself: `tas_jax.commands.main`) and what a notebook calls.

The method-independent stages live in `tas_jax.stages`, each method's search and extraction in its
folder (`config.method`, found through the registry in `tas_jax.methods`).
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from tas_jax import console

console.quiet_environment()  # before TensorFlow (clu, tfds) loads

from tas_jax import compilation, config as config_lib, errors, methods, multihost, workdir as layout  # noqa: E402
from tas_jax.stages import distill, pipeline, records, results, teacher  # noqa: E402

# method-independent stage -> function(config, workdir) -> summary
STAGE_FUNCTIONS: dict[str, Callable] = {
  "teacher": teacher.train_and_evaluate,
  "distill": distill.distill,
  "results": results.results,
  "all": pipeline.run_all,
}


def stage_function(config: ml_collections.ConfigDict) -> Callable:
  """The function of `config.stage`: a method's own for search and extract."""
  method = methods.get(config.method)
  return {"search": method.search, "extract": method.extract}.get(config.stage) or STAGE_FUNCTIONS[
    config.stage
  ]


def run(config: ml_collections.ConfigDict, workdir: str, overrides=None) -> dict:
  """Runs the stage the config selects; returns its summary.

  `overrides`: the fields set for this command (the `--config.X=` flags; in a notebook, the names
  of the fields you changed from the config file's). The finished stages a stage only reads are
  then taken as recorded, except where one of these fields contradicts them; None compares every
  field of the config with them (`tas_jax.stages.records.adopt_recorded`)."""
  console.setup()
  config_lib.validate(config)
  folder = compilation.setup(config.compilation_cache)
  if config.stage != "results":  # which only reads (and prints its table if it cannot write)
    check_writable(workdir)
  if config.stage in ("all", "results"):  # `all` checks and logs each of its stages itself
    summary = STAGE_FUNCTIONS[config.stage](config, workdir)
  else:
    stage = records.stage_of(config)
    multihost.at(f"[{stage}] setting up (data, model, checkpoint)")
    config = records.check(config, workdir, stage, overrides)
    with console.stage_log(layout.stage_dir(workdir, stage), layout.is_writer()):
      summary = stage_function(config)(config, workdir)
  compilation.report(folder)
  return summary


def check_writable(workdir: str) -> None:
  """A workdir that cannot be written stops before any work, with one line."""
  if not layout.is_writer():
    return
  problem = layout.write_problem(workdir)
  if problem:
    raise errors.ConfigError(
      f"--workdir={workdir} cannot be written ({problem}): choose a folder you can write to"
    )


if __name__ == "__main__":
  from tas_jax.commands import main as command

  command.cli()
