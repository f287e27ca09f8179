"""Several processes, one run: `jax.distributed` set up before any other JAX call.

One process per host (a TPU VM pod slice, several GPU machines, or several processes on one box
for testing). Every process runs the same command; JAX joins their devices into one global mesh,
each streaming source reads its own shard, every process writes and restores the shared Orbax
checkpoints, and only process 0 logs progress and writes files (`tas_jax.workdir.is_writer`).

How to ask for it (flags of `python -m tas_jax.main`, or the environment):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
      (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)
  --distributed        no arguments: JAX detects the cluster (TPU pods, SLURM, …)
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Optional

import jax
from absl import logging

from tas_jax.errors import ConfigError


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False, timeout_s: int = 300) -> bool:
  """Starts jax.distributed when asked (arguments first, then the environment); returns whether
  it did. Must run before anything touches a device. Waits `timeout_s` for every process to join,
  saying what it waits for; then gives up with a ConfigError naming the address."""
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and os.environ.get("JAX_PROCESS_ID"):
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if address is None and not auto:
    if num_processes not in (None, 1) or process_id not in (None, 0):
      raise ConfigError("--num_processes/--process_id need --coordinator_address=HOST:PORT (or "
                        "JAX_COORDINATOR_ADDRESS), or --distributed on a TPU pod")
    return False
  if address is not None:
    if num_processes is None or process_id is None:
      raise ConfigError(f"--coordinator_address={address} needs --num_processes and --process_id "
                        "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id}: must be in [0, {num_processes})")
    logging.info("process %d of %d: waiting up to %ds for all %d processes to join at %s",
                 process_id, num_processes, timeout_s, num_processes, address)
    # XLA aborts the process when the deadline passes; a watchdog a little before it says why
    watchdog = threading.Timer(timeout_s, _give_up, (
        f"process {process_id}: not all {num_processes} processes joined at {address} within "
        f"{timeout_s}s: start the same command with each --process_id in 0..{num_processes - 1} "
        "(process 0 on the coordinator's host); --coordinator_timeout sets the wait",))
    watchdog.daemon = True
    watchdog.start()
    try:
      jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=timeout_s + 30)
    finally:
      watchdog.cancel()
  else:
    jax.distributed.initialize(initialization_timeout=timeout_s)
  if jax.process_index() > 0:   # one progress stream: the others only warn
    logging.set_verbosity(logging.WARNING)
  return True


def _give_up(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(2)
