"""Every command-line entry point of tas_jax, and the one way they report a user's error.

`python -m tas_jax.main | convert | export | flops | latency | config | data.check |
data.imagenet_samples` each run a module of this folder (the modules at those paths hold only the
line that calls it). A command's user errors — a wrong config value, a missing file or dataset, an
optional package not installed — are printed as one line `error: …` with exit status 2 by
`fail` / `guarded`; anything else is a bug and keeps its traceback. Library modules hold no
command code: this folder is the top layer, nothing below imports it.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from tas_jax import errors
from tas_jax.data import datasets
from tas_jax.models import arch as arch_lib

# The errors a user causes and fixes: each is printed as one line ("error: …"), exit status 2.
USER_ERRORS = (
  errors.ConfigError,
  arch_lib.ArchError,
  datasets.DataNotFoundError,
  datasets.BadDataError,
  errors.CheckpointNotFoundError,
  FloatingPointError,
)


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints `error: message` on stderr and exits with `status` (in a run of several processes the
  others are told to stop too)."""
  from tas_jax import multihost

  multihost.report_failure(message)
  print(f"error: {message}", file=sys.stderr)
  multihost.exit(status)


def guarded(fn: Callable, *args, **kwargs):
  """fn(*args, **kwargs), with a user error (USER_ERRORS) said in one line and exit status 2."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    fail(str(e))
