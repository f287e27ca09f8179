"""JAX's persistent compilation cache for every command (`config.compilation_cache`), counts of
what it served (so the log can say whether a step was compiled or loaded), and the train and
search steps kept compiled (`KeptStep`), so that a relaunch skips Python's part too.

XLA's compiled programs are written to a folder and looked up by a key that holds the program, the
jax/jaxlib versions and the device kind, so a cache from another version or another accelerator is
simply not used. Every program is kept, however quick to compile (a relaunch then compiles
nothing); a `gs://` folder works as JAX supports it, which lets the hosts of a pod share one
cache. A local folder that cannot be written costs one warning line and the run goes on without a
cache.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.util
import json
import os
import threading
import time
from typing import Any, Callable, Optional

import jax
from absl import logging

from tas_jax import workdir as layout

AUTO = "auto"  # $JAX_COMPILATION_CACHE_DIR when set ("" = off), else the per-user folder below
MIN_COMPILE_SECONDS = 0.0  # every program: a relaunch then compiles nothing at all

_counts = {"requests": 0, "hits": 0, "written": 0}
_lock = threading.Lock()
_listening = False
_folder = ""  # the cache folder `setup` chose ("" = none)


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
    _set_folder("")
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
    _set_folder("")
    return ""
  _set_folder(folder)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  # JAX's own variables, when set, keep their thresholds (the test suite's)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder


def _set_folder(folder: str) -> None:
  global _folder
  _folder = folder


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


# --- steps kept compiled ----------------------------------------------------------------------
# XLA's cache skips compiling, not what comes before it: tracing a supernet's step to a jaxpr and
# lowering it to StableHLO is Python, seconds per launch (ResNet-20's search iteration: 1.7 s of
# a 6.8 s relaunch), and even a cache hit hashes the lowered program for its key. So a step's
# compiled executable is kept whole (`jax.experimental.serialize_executable`), and a relaunch
# only deserialises it: no tracing, no lowering, no key to compute (ResNet-20's iteration:
# 0.85 s, against 1.25 s for a `jax.export`ed program lowered again and served by XLA's cache).
# A step's Python is not looked at again, so the file's key must hold everything that shapes the
# step: the caller's `fingerprint` (its config, architecture, step counts), tas_jax's source code,
# the user's module's source, the jax/jaxlib versions, the devices, XLA_FLAGS and, on a CPU, the
# instruction set the program was compiled for.

KEPT = "kept"  # the cache folder's subfolder for kept steps

_sources: dict = {}


def source_digest(module: str = "") -> str:
  """A digest of tas_jax's Python sources and, given `module` ("pkg.mod" or "pkg.mod:Class"),
  of that module's file: a change in either is a different step."""
  if module not in _sources:
    digest = hashlib.sha256()
    root = os.path.dirname(os.path.abspath(__file__))
    files = sorted(
      os.path.join(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(".py")
    )
    if module:
      spec = importlib.util.find_spec(module.split(":")[0])
      files.append(spec.origin if spec and spec.origin else module)
    for f in files:
      digest.update(f.encode())
      if os.path.exists(f):
        with open(f, "rb") as fh:
          digest.update(fh.read())
    _sources[module] = digest.hexdigest()
  return _sources[module]


def can_keep() -> bool:
  """Whether steps can be kept here: a local (or mounted) cache folder and one process (a pod's
  hosts share XLA's cache only). Otherwise steps compile as `jax.jit` does, and XLA's cache
  alone serves relaunches."""
  return bool(_folder and "://" not in _folder and jax.process_count() == 1)


def _cpu_features() -> str:
  """The host CPU's feature flags (Linux), which XLA:CPU compiles for: a folder shared by
  machines with other instruction sets must not hand one of them a program it cannot run."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return hashlib.sha256(line.encode()).hexdigest()[:16]
  except OSError:
    pass
  import platform

  return platform.machine() + platform.processor()


def _platform_key(mesh) -> dict:
  import jaxlib

  devices = list(mesh.devices.flat)
  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "platform": devices[0].platform,
    "platform_version": devices[0].client.platform_version,
    "device_kind": devices[0].device_kind,
    "devices": [d.id for d in devices],
    "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
    "x64": bool(jax.config.jax_enable_x64),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "cpu": _cpu_features() if devices[0].platform == "cpu" else "",
  }


class KeptStep:
  """A step compiled as `jax.jit(fn, donate_argnums=(0,), …)` would be, whose compiled program
  is kept in the cache folder under a key of `fingerprint`, the sources and the platform.

  The first call traces and compiles the step (and writes it), or, when the file is there, loads
  it; `prefetch()` starts the load in a thread so that it overlaps the state's initialisation, or,
  given the arguments' shapes, compiles ahead of the first call. `outputs_like(*args)` gives a
  tree shaped like the step's outputs (a loaded program has no Python to tell); None: the outputs
  are nested dicts with string keys (a model's variables), whose keys are kept with the program.
  `timings` says which path ran and its seconds. A step that cannot be serialised (it closes
  over constants XLA keeps beside the program) still runs, and is compiled again next launch.
  """

  _MAGIC = b"tas_jax-kept-1\n"

  def __init__(
    self,
    fn: Callable,
    name: str,
    fingerprint: Any,
    mesh,
    outputs_like: Optional[Callable],
    compiler_options: Optional[dict] = None,
    folder: str = "",
    out_shardings: Any = None,
    donate_first: bool = True,
  ):
    self._fn, self.name, self._mesh = fn, name, mesh
    self._outputs_like = outputs_like
    self._options = dict(compiler_options or {})
    self._out_shardings = out_shardings
    self._donate_first = donate_first
    blob = json.dumps(
      {
        "name": name,
        "fingerprint": fingerprint,
        "sources": source_digest(),
        "platform": _platform_key(mesh),
        "options": self._options,
      },
      sort_keys=True,
      default=str,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    self.path = os.path.join(folder or _folder, KEPT, f"{name}-{key}.xla")
    self._compiled = None
    self._out_tree = None
    self._future: Optional[concurrent.futures.Future] = None
    self._loading = False  # what the future does: load a kept program, or compile ahead of time
    self.timings: dict = {}

  def _jit(self, fn: Callable, donated: int):
    """The flat program: the state's `donated` leaves first, donated as `jax.jit` would."""
    extra = {} if self._out_shardings is None else {"out_shardings": self._out_shardings}
    return jax.jit(
      fn, donate_argnums=tuple(range(donated)), compiler_options=self._options, **extra
    )

  # -- a kept program, or one compiled ahead of time
  def prefetch(self, abstract_args: Optional[tuple] = None) -> bool:
    """Starts making the program in a thread: loading the kept one, or, when there is none and
    `abstract_args` (`jax.ShapeDtypeStruct`s with shardings, shaped as the step's arguments) are
    given, tracing and compiling it ahead of the first call. False when nothing started."""
    if self._future is not None or self._compiled is not None:
      return self._future is not None
    if os.path.exists(self.path):
      work, self._loading = self._load, True
    elif abstract_args is not None:
      work = functools.partial(self._trace, abstract_args, self._donated(abstract_args))
      self._loading = False
    else:
      return False
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"compile-{self.name}")
    self._future = pool.submit(work)
    pool.shutdown(wait=False)
    return True

  def _donated(self, args) -> int:
    return len(jax.tree.leaves(args[0])) if args and self._donate_first else 0

  def _load(self):
    from jax.experimental import serialize_executable

    t = time.perf_counter()
    with open(self.path, "rb") as f:
      data = f.read()
    if not data.startswith(self._MAGIC):
      raise ValueError("not a tas_jax kept step")
    header, body = data[len(self._MAGIC) :].split(b"\n", 1)
    header = json.loads(header)
    avals = [(tuple(shape), dtype) for shape, dtype in header["avals"]]
    compiled = serialize_executable.deserialize_and_load(
      body,
      jax.tree.structure((tuple(range(len(avals))), {})),  # called as compiled(*leaves)
      jax.tree.structure([0] * header["outputs"]),  # `flat` returns a list
      execution_devices=list(self._mesh.devices.flat),
    )
    timings = {"source": "loaded", "load_s": round(time.perf_counter() - t, 3)}
    out_tree = _nested_tree(header["keys"]) if header["keys"] is not None else None
    return compiled, avals, header["donated"], out_tree, timings

  def _trace(self, args, donated: int):
    """Traces and compiles the step (on arrays or abstract values alike), and keeps it."""
    from jax.experimental import serialize_executable

    leaves, in_tree = jax.tree.flatten(args)
    box = {}

    def flat(*xs):
      out = self._fn(*jax.tree.unflatten(in_tree, xs))
      result, box["out_tree"] = jax.tree.flatten(out)
      return result

    t = time.perf_counter()
    traced = self._jit(flat, donated).trace(*leaves)
    t_traced = time.perf_counter()
    lowered = traced.lower()
    t_lowered = time.perf_counter()
    compiled = lowered.compile()
    timings = {
      "source": "traced",
      "trace_s": round(t_traced - t, 3),
      "lower_s": round(t_lowered - t_traced, 3),
      "compile_s": round(time.perf_counter() - t_lowered, 3),
    }
    keys = _dict_keys(box["out_tree"], self.name) if self._outputs_like is None else None
    try:
      body, _, _ = serialize_executable.serialize(compiled)
    except Exception as e:  # a backend or a program that cannot be serialised: not kept
      logging.info("%s: not kept (%s): it compiles again next launch", self.name, e)
    else:
      header = {
        "donated": donated,
        "keys": keys,
        "avals": _avals(leaves),
        "outputs": box["out_tree"].num_leaves,
      }
      self._write(self._MAGIC + json.dumps(header).encode() + b"\n" + body)
    return compiled, _avals(leaves), donated, box["out_tree"], timings

  def _write(self, data: bytes) -> None:
    folder = os.path.dirname(self.path)
    try:
      os.makedirs(folder, exist_ok=True)
      partial = f"{self.path}.{os.getpid()}.partial"
      with open(partial, "wb") as f:
        f.write(data)
      os.replace(partial, self.path)  # two processes writing the same step: either wins
    except OSError as e:
      logging.warning("%s: not kept in %s (%s): compiled again next launch", self.name, folder, e)

  def ready(self, *args) -> None:
    """Makes the compiled program for arguments like `args`: waits for what `prefetch` started,
    else loads the kept program or traces the step."""
    if self._compiled is not None:
      return
    expected = jax.tree.structure(self._outputs_like(*args)) if self._outputs_like else None
    donated = self._donated(args)
    self.prefetch()
    made = None
    if self._future is not None:
      t = time.perf_counter()
      try:
        made = self._future.result()
      except Exception as e:  # a damaged or foreign file: traced again (and replaced)
        if not self._loading:
          raise  # the step itself failed to trace or compile
        logging.warning(
          "%s: the program %s is not usable (%s): tracing the step again", self.name, self.path, e
        )
      finally:
        self._future = None
      waited = round(time.perf_counter() - t, 3)
      if made is not None and (made[1] != _avals(jax.tree.leaves(args)) or made[2] != donated):
        logging.warning(
          "%s: the program %s was made for other inputs than this run's: tracing the step again",
          self.name,
          self.path if self._loading else "traced ahead",
        )
        made = None
    if made is None:
      t = time.perf_counter()
      made = self._trace(args, donated)
      waited = round(time.perf_counter() - t, 3)
    compiled, _, _, out_tree, timings = made
    if expected is not None and out_tree is not None and out_tree != expected:
      raise ValueError(f"{self.name}: outputs_like gives {expected}, the step returns {out_tree}")
    self._out_tree = expected if expected is not None else out_tree
    self._compiled, self.timings = compiled, {**timings, "waited_s": waited}

  @property
  def compiled(self):
    """The compiled program (`jax.stages.Compiled`) once `ready` made it, else None."""
    return self._compiled

  def _cache_size(self) -> int:
    """Programs compiled for this step, as `jax.jit`'s (a kept step has one: a call with other
    shapes is an error, not a recompilation)."""
    return int(self._compiled is not None)

  def __call__(self, *args):
    if self._compiled is None:
      self.ready(*args)
    return jax.tree.unflatten(self._out_tree, self._compiled(*jax.tree.leaves(args)))


def _dict_keys(treedef, name: str) -> list:
  """The key paths of nested dicts with string keys, [["params", "conv", "kernel"], …] in leaf
  order; a ValueError for any other tree (its structure could not be rebuilt)."""
  paths = []
  tree = jax.tree.unflatten(treedef, [0] * treedef.num_leaves)
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(k, "key", None) for k in path]
    if not all(isinstance(k, str) for k in keys):
      raise ValueError(f"{name}: outputs_like=None needs nested dicts with string keys")
    paths.append(keys)
  if not paths or jax.tree.structure(_nested(paths)) != treedef:
    raise ValueError(f"{name}: outputs_like=None needs nested dicts with string keys")
  return paths


def _avals(leaves) -> list:
  return [(tuple(x.shape), str(x.dtype)) for x in leaves]


def _nested_tree(paths: list):
  return jax.tree.structure(_nested(paths))


def _nested(paths: list) -> dict:
  """Nested dicts with the key paths `paths` (a 0 at each leaf): the tree `_dict_keys` read."""
  root: dict = {}
  for keys in paths:
    node = root
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = 0
  return root
