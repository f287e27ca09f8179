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

import json
import os
import sys
import threading
import time
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tas_jax.errors import ConfigError


def initialize(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  auto: bool = False,
  timeout_s: int = 300,
) -> bool:
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
      raise ConfigError(
        "--num_processes/--process_id need --coordinator_address=HOST:PORT (or "
        "JAX_COORDINATOR_ADDRESS), or --distributed on a TPU pod"
      )
    return False
  if address is not None:
    if num_processes is None or process_id is None:
      raise ConfigError(
        f"--coordinator_address={address} needs --num_processes and --process_id "
        "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
      )
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id}: must be in [0, {num_processes})")
    logging.info(
      "process %d of %d: waiting up to %ds for all %d processes to join at %s",
      process_id,
      num_processes,
      timeout_s,
      num_processes,
      address,
    )
    # XLA aborts the process when the deadline passes; a watchdog a little before it says why
    watchdog = threading.Timer(
      timeout_s,
      _give_up,
      (
        f"process {process_id}: not all {num_processes} processes joined at {address} within "
        f"{timeout_s}s: start the same command with each --process_id in 0..{num_processes - 1} "
        "(process 0 on the coordinator's host); --coordinator_timeout sets the wait",
      ),
    )
    watchdog.daemon = True
    watchdog.start()
    try:
      jax.distributed.initialize(
        address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s + 30,
      )
    finally:
      watchdog.cancel()
  else:
    jax.distributed.initialize(initialization_timeout=timeout_s)
  if jax.process_index() > 0:  # one progress stream: the others only warn
    logging.set_verbosity(logging.WARNING)
  global _started
  _started = True
  return True


def exit(status: int) -> None:
  """Ends the process with `status`. In a run of several processes, without JAX's shutdown
  barrier at exit: the others are stopping (or gone), and the barrier would abort this one."""
  if _started:
    _leave(status)
  sys.exit(status)


def _leave(status: int, message: str = "") -> None:
  """Exits a process of a multi-process run after the others that are exiting too: process 0
  hosts the coordination service, and a process whose service vanishes aborts (SIGABRT) instead
  of printing its last line."""
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    _client().wait_at_barrier("tas_jax/exit", 5000)
    if jax.process_index() == 0:
      time.sleep(1.0)  # the others' os._exit lands first
  except Exception:  # a process that is not exiting (stuck elsewhere): leave anyway
    pass
  if message:  # after the wait: the last line, whatever the main thread logged meanwhile
    print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(status)


def _give_up(message: str) -> None:
  if _started:
    _leave(2, message)
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(2)


# ------------------------------------------------------------------ when one process stops
# Every process of a run reaches the same collectives and barriers in the same order, or the ones
# that arrive wait for the others. A process that stops with an error leaves the others waiting in
# a collective (gloo has no deadline) until the coordination service gives up minutes later; so a
# failing process says so in the coordination service's key-value store, and a thread in every
# process stops it at once, naming where it was. Settings that differ between processes (a
# different command on one host) would make them take different paths: `check_same_settings`
# refuses them before any work.
FAILED_KEY = "tas_jax/failed"
_started = False  # jax.distributed runs: several processes
_where = "starting"  # what this process does now: the message names it when another one fails
_stopping = False  # this process is stopping with its own error: the watcher stays quiet
_lock = threading.Lock()


def at(where: str) -> None:
  """Records what this process does now (a step, a checkpoint, a barrier, an evaluation)."""
  global _where
  _where = where


def _client():
  from jax._src import distributed

  return distributed.global_state.client


def report_failure(message: str) -> None:
  """Tells the other processes that this one stops with `message` (a no-op in a single process)."""
  global _stopping
  with _lock:
    _stopping = True
  if not _started:  # also: no JAX call before initialize()
    return
  try:
    _client().key_value_set(FAILED_KEY, f"{jax.process_index()}\t{message}")
  except Exception:  # another process reported first: it names the cause
    pass


def watch_peers(poll_s: float = 1.0) -> None:
  """Starts the thread that stops this process when another one reported a failure (after
  `check_same_settings`, whose mismatch every process reports itself)."""
  if not _started:
    return
  me = jax.process_index()

  def watch():
    while True:
      time.sleep(poll_s)
      try:
        value = _client().key_value_try_get(FAILED_KEY)
      except Exception:  # not there yet (NOT_FOUND), or the service is shutting down
        continue
      who, message = value.split("\t", 1)
      with _lock:
        if _stopping or int(who) == me:
          return
        _give_up(
          f"process {me}: process {who} stopped ({message}) while this process was at "
          f"{_where}; stopping too"
        )
      return

  threading.Thread(target=watch, name="tas_jax-peers", daemon=True).start()


class BarrierError(RuntimeError):
  """A barrier that not every process reached in time (one line)."""


def barrier(name: str, timeout_s: int = 600) -> None:
  """All processes meet here (a no-op in a single process); a process that waits longer than
  `timeout_s` stops with a one-line error naming the barrier."""
  if jax.process_count() <= 1:
    return
  at(f"barrier {name!r}")
  try:
    _client().wait_at_barrier(name, timeout_s * 1000)
  except Exception as e:  # DEADLINE_EXCEEDED, or the service saw another process fail
    raise BarrierError(
      f"process {jax.process_index()} waited at barrier {name!r} and not every "
      f"process arrived within {timeout_s}s ({str(e).splitlines()[0][:200]}): "
      "the processes took different paths; run the same command on every host"
    ) from None


def check_same_settings(settings: dict, timeout_s: int = 600) -> None:
  """Stops every process with the same one line if their settings differ from process 0's."""
  if jax.process_count() <= 1:
    return
  client, me = _client(), jax.process_index()
  client.key_value_set(f"tas_jax/settings/{me}", json.dumps(settings, sort_keys=True, default=str))
  barrier("settings", timeout_s)
  lead = json.loads(client.blocking_key_value_get("tas_jax/settings/0", timeout_s * 1000))
  for other in range(1, jax.process_count()):
    theirs = json.loads(
      client.blocking_key_value_get(f"tas_jax/settings/{other}", timeout_s * 1000)
    )
    differ = sorted(k for k in set(lead) | set(theirs) if lead.get(k) != theirs.get(k))
    if differ:
      shown = ", ".join(f"{k}={theirs.get(k)!r} (process 0: {lead.get(k)!r})" for k in differ[:4])
      raise ConfigError(
        f"process {other} runs other settings than process 0: {shown}"
        f"{' …' if len(differ) > 4 else ''}: every process must run the same "
        "command"
      )


def any_process(flag: bool) -> bool:
  """Whether `flag` is set in any process (every process gets the same answer; a collective, so
  every process must call it at the same point)."""
  if jax.process_count() <= 1:
    return flag
  at("agreeing on a stop request")
  return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


def as_process_0(flag: bool) -> bool:
  """Process 0's `flag` in every process: for decisions read from files that process 0 writes
  (is a stage finished?), which another process could read a moment before the write lands."""
  if jax.process_count() <= 1:
    return flag
  at("agreeing with process 0")
  return bool(multihost_utils.broadcast_one_to_all(np.array(flag, np.int32)))
