"""`python -m tas_jax.main --config=configs/NAME.py --workdir=DIR`: run the stage a config selects.

Any config field can be overridden (`--config.teacher.lr=0.05`); those flags are the fields this
command sets explicitly (`tas_jax.main.run`'s `overrides`). Several processes (hosts) join with
--coordinator_address/--num_processes/--process_id or --distributed.
"""

from __future__ import annotations

import os
import signal
import sys

from tas_jax import console

console.quiet_environment()  # before TensorFlow (clu, tfds) loads

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tas_jax import errors, main as stages, multihost  # noqa: E402
from tas_jax.commands import USER_ERRORS, fail  # noqa: E402
from tas_jax.stages import records  # noqa: E402
from tas_jax.training import loop  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Folder for checkpoints, logs and results (created if needed)."
)
config_flags.DEFINE_config_file(
  "config", None, "A config file, e.g. configs/demo.py.", lock_config=True
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Several processes: HOST:PORT of process 0 "
  "(or JAX_COORDINATOR_ADDRESS); with --num_processes and --process_id.",
)
flags.DEFINE_integer("num_processes", None, "Several processes: how many (or JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index (or JAX_PROCESS_ID).")
flags.DEFINE_integer(
  "coordinator_timeout",
  300,
  "Several processes: seconds to wait for all of them to join before giving up with one line.",
)
flags.DEFINE_bool(
  "distributed",
  False,
  "Several processes, detected by JAX (TPU pods): jax.distributed.initialize() without arguments.",
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
          fail(
            f"--config={path}: no such file (the shipped configs are in {REPO_ROOT}/configs; "
            f"list their fields with python -m tas_jax.config --config=FILE)"
          )
    out.append(arg)
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a wrong flag, config file or config field said in one line."""
  argv = _config_path(argv)
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config  # noqa: B018 — config_flags loads the file and applies overrides lazily
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
      chain.append(chain[-1].__cause__ or chain[-1].__context__)
    texts = [" ".join(str(c).replace("\\n", " ").split()).strip("'\"") for c in chain]
    if any(isinstance(c, (AttributeError, KeyError)) for c in chain):
      hint = next((t[t.index("Did you mean") :] for t in texts if "Did you mean" in t), "")
      key = str(next(c for c in chain if isinstance(c, (AttributeError, KeyError)))).strip("'\"")
      key = key.split("\\n")[0].strip("'\"\\ ")
      flag = next(
        (
          a.split("=", 1)[0]
          for a in argv
          if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")
        ),
        "--config",
      )
      fail(
        f"{flag}: no such config field {key!r}{'; ' + hint if hint else ''} (all fields: "
        "python -m tas_jax.config --config=FILE)"
      )
    fail(f"--config: {type(chain[-1]).__name__}: {texts[-1]}")
  return rest


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
  if FLAGS.config is None or FLAGS.workdir is None:
    fail("both --config=configs/NAME.py and --workdir=DIR are needed")
  console.setup()
  try:  # before any other JAX call
    multihost.initialize(
      FLAGS.coordinator_address,
      FLAGS.num_processes,
      FLAGS.process_id,
      FLAGS.distributed,
      FLAGS.coordinator_timeout,
    )
  except errors.ConfigError as e:
    fail(str(e))
  logging.info(
    "JAX %s, process %d/%d, %d local device(s): %s",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.devices()[0].device_kind,
  )
  try:
    multihost.check_same_settings(
      {**records.flat_fields(FLAGS.config.to_dict()), "--workdir": FLAGS.workdir}
    )
    multihost.watch_peers()
    stages.run(
      FLAGS.config, FLAGS.workdir, overrides=config_flags.get_override_values(FLAGS["config"])
    )
  except USER_ERRORS as e:
    fail(str(e))
  except loop.Interrupted as e:
    fail(str(e), e.exit_status)
  except KeyboardInterrupt:
    fail(
      "interrupted (outside a training loop: nothing to save; the same command starts the "
      "stage again)",
      130,
    )
  except PermissionError as e:
    fail(f"cannot write {e.filename}: {e.strerror}")
  except multihost.BarrierError as e:
    fail(str(e))
  except BaseException as e:  # a bug: its traceback follows; the other processes stop now
    multihost.report_failure(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    raise


def _sigterm_as_interrupt(signum, frame):
  """Outside a training loop (whose own handler saves a checkpoint), SIGTERM stops like Ctrl-C:
  files are closed and input workers shut down on the way out."""
  raise KeyboardInterrupt


def cli() -> None:
  signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
  app.run(main, flags_parser=parse_flags)
