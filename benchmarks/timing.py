"""Timing helpers shared by the benchmarks (no flags here: each benchmark defines its own CLI)."""

from __future__ import annotations

import statistics
import time

import jax


def median_times(calls: dict, repeats: int, steps_per_repeat: int) -> dict:
  """{name: (median seconds per call, per-repeat seconds)}; the callables take turns repeat by
  repeat, so that the machine's noise falls on all of them alike."""
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      t = time.perf_counter()
      for _ in range(steps_per_repeat):
        out = call()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t) / steps_per_repeat)
  return {name: (statistics.median(v), v) for name, v in times.items()}


def median_time(call, repeats: int, steps_per_repeat: int) -> tuple[float, list[float]]:
  return median_times({"": call}, repeats, steps_per_repeat)[""]


def compile_stats(jitted, *args) -> tuple[float, dict]:
  """(seconds to lower and compile, memory figures) of `jitted` on `args`, ahead of time."""
  t = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - t
  out = {}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  analysis = compiled.memory_analysis()
  if analysis is not None:
    out["compiled_temp_bytes"] = int(analysis.temp_size_in_bytes)
    out["compiled_argument_bytes"] = int(analysis.argument_size_in_bytes)
  return seconds, out


class Stepper:
  """Holds the evolving state and the batch iterator so that timed calls look like the training
  loop's: next batch from the source, then the step."""

  def __init__(self, fn, state, batches, *args):
    self.fn, self.state, self.batches, self.args = fn, state, batches, args

  def close(self):
    """Closes the batch iterator (a suspended one would free its device arrays whenever the
    garbage collector gets to it)."""
    if hasattr(self.batches, "close"):
      self.batches.close()

  def __call__(self):
    self.state, metrics = self.fn(self.state, next(self.batches), *self.args)
    return self.state.step
