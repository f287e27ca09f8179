"""JAX's persistent compilation cache for every command (`config.compilation_cache`), and counts of
what it served, so the log can say whether a step was compiled or loaded.

XLA's compiled programs are written to a folder and looked up by a key that holds the program, the
jax/jaxlib versions and the device kind, so a cache from another version or another accelerator is
simply not used. Every program is kept, however quick to compile (a relaunch then compiles
nothing); a `gs://` folder works as JAX supports it, which lets the hosts of a pod share one
cache. A local folder that cannot be written costs one warning line and the run goes on without a
cache.
"""

from __future__ import annotations

import os
import threading

import jax
from absl import logging

from tas_jax import workdir as layout

AUTO = "auto"  # $JAX_COMPILATION_CACHE_DIR when set ("" = off), else the per-user folder below
MIN_COMPILE_SECONDS = 0.0  # every program: a relaunch then compiles nothing at all

_counts = {"requests": 0, "hits": 0, "written": 0}
_lock = threading.Lock()
_listening = False


def user_folder() -> str:
  """The per-user default: $XDG_CACHE_HOME/tas_jax/xla (~/.cache/tas_jax/xla)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "tas_jax", "xla")


def resolve(setting: str) -> str:
  """The folder a `compilation_cache` setting names ("" for none)."""
  if setting == AUTO:  # JAX's own variable, when set, decides ("" = off)
    return os.environ.get("JAX_COMPILATION_CACHE_DIR", user_folder())
  return setting if "://" in setting else os.path.expanduser(setting)


def setup(setting: str) -> str:
  """Points JAX's persistent cache at the folder `setting` names; returns it ("" when off or
  unusable). Call before the first compilation of the process."""
  _listen()
  folder = resolve(setting)
  if not folder:
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  problem = None if "://" in folder else layout.write_problem(folder)  # a bucket: JAX reports
  if problem:
    logging.warning(
      "compilation cache %s cannot be written (%s): compiling without it (set "
      "--config.compilation_cache to a writable folder, or '' to turn it off)",
      folder,
      problem,
    )
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  # JAX's own variables, when set, keep their thresholds (the test suite's)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def _listen() -> None:
  global _listening
  with _lock:
    if _listening:
      return
    _listening = True

  def count(event: str, **kwargs) -> None:
    del kwargs
    name = {
      "/jax/compilation_cache/compile_requests_use_cache": "requests",
      "/jax/compilation_cache/cache_hits": "hits",
      "/jax/compilation_cache/cache_misses": "written",  # JAX names a write a miss
    }.get(event)
    if name:
      with _lock:
        _counts[name] += 1

  jax.monitoring.register_event_listener(count)


def counts() -> dict:
  """{"requests", "hits", "written", "compiled"} so far in this process: programs looked up in
  the cache, loaded from it, written to it, and compiled (looked up but not found)."""
  with _lock:
    return {**_counts, "compiled": _counts["requests"] - _counts["hits"]}


def report(folder: str) -> None:
  """One line: what the cache served this process (nothing when nothing was compiled)."""
  c = counts()
  if folder and c["requests"]:
    logging.info(
      "compilation cache %s: %d programs loaded, %d compiled (%d written)",
      folder,
      c["hits"],
      c["compiled"],
      c["written"],
    )
