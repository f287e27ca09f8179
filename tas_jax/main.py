"""Command-line entry point: `python -m tas_jax.main --config=configs/NAME.py --workdir=DIR`.

Any config field can be overridden (`--config.teacher.lr=0.05`). The stages live in
`tas_jax.stages` (method-independent) and in the method's folder (`config.method`, found through the
registry in `tas_jax.methods`), so a notebook runs the same code with `run(get_config(), workdir)`.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from tas_jax import console

console.quiet_environment()   # before TensorFlow (clu, tfds) loads

from tas_jax import config as config_lib, errors, methods, multihost, workdir as layout  # noqa: E402
from tas_jax.data import datasets  # noqa: E402
from tas_jax.models import arch as arch_lib  # noqa: E402
from tas_jax.stages import records  # noqa: E402
from tas_jax.training import loop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results (created if needed).")
config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/demo.py.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT of process 0 "
                    "(or JAX_COORDINATOR_ADDRESS); with --num_processes and --process_id.")
flags.DEFINE_integer("num_processes", None, "Several processes: how many (or JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index (or JAX_PROCESS_ID).")
flags.DEFINE_integer("coordinator_timeout", 300, "Several processes: seconds to wait for all of "
                     "them to join before giving up with one line.")
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


# The errors a user causes and fixes: each is printed as one line ("error: …"), exit status 2.
USER_ERRORS = (errors.ConfigError, arch_lib.ArchError, datasets.DataNotFoundError,
               datasets.BadDataError, errors.CheckpointNotFoundError, FloatingPointError)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config: ml_collections.ConfigDict, workdir: str, overrides=None) -> dict:
  """Runs the stage the config selects; returns its summary.

  `overrides`: the fields set for this command (the `--config.X=` flags; in a notebook, the names
  of the fields you changed from the config file's). The finished stages a stage only reads are
  then taken as recorded, except where one of these fields contradicts them; None compares every
  field of the config with them (`tas_jax.stages.records.adopt_recorded`)."""
  console.setup()
  config_lib.validate(config)
  method = methods.get(config.method)
  if config.stage != "results":   # which only reads (and prints its table if it cannot write)
    check_writable(workdir)
  if config.stage in ("all", "results"):   # `all` checks and logs each of its stages itself
    module, function = STAGE_FUNCTIONS[config.stage]
    return getattr(importlib.import_module(module), function)(config, workdir)
  stage = records.stage_of(config)
  multihost.at(f"[{stage}] setting up (data, model, checkpoint)")
  config = records.check(config, workdir, stage, overrides)
  with console.stage_log(layout.stage_dir(workdir, stage), layout.is_writer()):
    if config.stage in METHOD_STAGES:
      return getattr(method, config.stage)(config, workdir)
    module, function = STAGE_FUNCTIONS[config.stage]
    return getattr(importlib.import_module(module), function)(config, workdir)


def check_writable(workdir: str) -> None:
  """A workdir that cannot be written stops before any work, with one line."""
  if not layout.is_writer():
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise errors.ConfigError(f"--workdir={workdir} cannot be written ({e.strerror}): choose a "
                             "folder you can write to") from None


def _config_path(argv: list[str]) -> list[str]:
  """`--config=configs/x.py` run from outside the repository: the repository's file, said once."""
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
      file = path.split(":", 1)[0]
      if not os.path.exists(file):
        beside = os.path.join(REPO_ROOT, file)
        if not os.path.isabs(file) and os.path.exists(beside):
          print(f"--config={path}: not in {os.getcwd()}; using {beside}", file=sys.stderr)
          arg = f"--config={os.path.join(REPO_ROOT, path)}"
        else:
          _die(f"--config={path}: no such file (the shipped configs are in {REPO_ROOT}/configs; "
               f"list their fields with python -m tas_jax.config --config=FILE)")
    out.append(arg)
  return out


def _die(message: str, status: int = 2):
  multihost.report_failure(message)   # the other processes of the run stop too
  print(f"error: {message}", file=sys.stderr)
  multihost.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a wrong flag, config file or config field said in one line."""
  argv = _config_path(argv)
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config   # noqa: B018 — config_flags loads the file and applies overrides lazily
  except flags.Error as e:
    _die(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
      chain.append(chain[-1].__cause__ or chain[-1].__context__)
    texts = [" ".join(str(c).replace("\\n", " ").split()).strip("'\"") for c in chain]
    if any(isinstance(c, (AttributeError, KeyError)) for c in chain):
      hint = next((t[t.index("Did you mean"):] for t in texts if "Did you mean" in t), "")
      key = str(next(c for c in chain if isinstance(c, (AttributeError, KeyError)))).strip("'\"")
      key = key.split("\\n")[0].strip("'\"\\ ")
      flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                   and key in a.split("=", 1)[0].split(".")), "--config")
      _die(f"{flag}: no such config field {key!r}{'; ' + hint if hint else ''} (all fields: "
           "python -m tas_jax.config --config=FILE)")
    _die(f"--config: {type(chain[-1]).__name__}: {texts[-1]}")
  return rest


def main(argv):
  if len(argv) > 1:
    _die(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  if FLAGS.config is None or FLAGS.workdir is None:
    _die("both --config=configs/NAME.py and --workdir=DIR are needed")
  console.setup()
  try:  # before any other JAX call
    multihost.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         FLAGS.distributed, FLAGS.coordinator_timeout)
  except errors.ConfigError as e:
    _die(str(e))
  logging.info("JAX %s, process %d/%d, %d local device(s): %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.devices()[0].device_kind)
  try:
    multihost.check_same_settings({**records.flat_fields(FLAGS.config.to_dict()), "--workdir": FLAGS.workdir})
    multihost.watch_peers()
    run(FLAGS.config, FLAGS.workdir, overrides=config_flags.get_override_values(FLAGS["config"]))
  except USER_ERRORS as e:
    _die(str(e))
  except loop.Interrupted as e:
    _die(str(e), e.exit_status)
  except KeyboardInterrupt:
    _die("interrupted (outside a training loop: nothing to save; the same command starts the "
         "stage again)", 130)
  except PermissionError as e:
    _die(f"cannot write {e.filename}: {e.strerror}")
  except multihost.BarrierError as e:
    _die(str(e))
  except BaseException as e:   # a bug: its traceback follows; the other processes stop now
    multihost.report_failure(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise



def _sigterm_as_interrupt(signum, frame):
  """Outside a training loop (whose own handler saves a checkpoint), SIGTERM stops like Ctrl-C:
  files are closed and input workers shut down on the way out."""
  raise KeyboardInterrupt


if __name__ == "__main__":
  signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
  app.run(main, flags_parser=parse_flags)
