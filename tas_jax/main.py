"""Command-line entry point: `python -m tas_jax.main --config=configs/NAME.py --workdir=DIR`.

Any config field can be overridden (`--config.teacher.lr=0.05`). The stages live in
`tas_jax.stages` (method-independent) and in the method's folder (`config.method`, found through the
registry in `tas_jax.methods`), so a notebook runs the same code with `run(get_config(), workdir)`.
"""

from __future__ import annotations

import importlib
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from tas_jax import config as config_lib, errors, methods, multihost
from tas_jax.data import datasets
from tas_jax.models import arch as arch_lib
from tas_jax.stages import records

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results (created if needed).")
config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/demo.py.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process 0 "
                    "(or JAX_COORDINATOR_ADDRESS); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Several processes: how many (or JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index (or JAX_PROCESS_ID).")
flags.DEFINE_bool("distributed", False, "Several processes, detected by JAX (TPU pods): "
                  "jax.distributed.initialize() without arguments.")


# method-independent stage -> (module, function(config, workdir) -> summary); imported when it runs
STAGE_FUNCTIONS = {
    "teacher": ("tas_jax.stages.teacher", "train_and_evaluate"),
    "distill": ("tas_jax.stages.distill", "distill"),
    "results": ("tas_jax.stages.results", "results"),
    "all": ("tas_jax.stages.pipeline", "run_all"),
}
METHOD_STAGES = ("search", "extract")  # the method's own


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stage the config selects; returns its summary."""
  config_lib.validate(config)
  method = methods.get(config.method)
  if config.stage not in ("all", "results"):   # `all` checks each of its stages itself
    records.check(config, workdir, records.stage_of(config))
  if config.stage in METHOD_STAGES:
    return getattr(method, config.stage)(config, workdir)
  if config.stage not in STAGE_FUNCTIONS:
    raise config_lib.ConfigError(f"config.stage={config.stage!r}: allowed: {config_lib.STAGES}")
  module, function = STAGE_FUNCTIONS[config.stage]
  return getattr(importlib.import_module(module), function)(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("both --config=configs/NAME.py and --workdir=DIR are needed")
  # Orbax narrates every save at INFO; keep the console for progress and results.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  try:  # before any other JAX call
    multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.distributed)
  except errors.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("JAX %s, process %d/%d, %d local device(s): %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.devices()[0].device_kind)
  try:
    run(FLAGS.config, FLAGS.workdir)
  except (errors.ConfigError, arch_lib.ArchError, datasets.DataNotFoundError,
          errors.CheckpointNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
