"""Data parallelism: one `('data',)` mesh, and two ways to run the same step on it.

`jit` (default) is the global view JAX recommends: arrays carry a `NamedSharding`, the batch is
split along 'data', parameters are replicated, and XLA inserts the collectives (BatchNorm statistics
then cover the global batch without any axis name).

`pmap` is explicit per-device code with pmap's semantics: each device sees its slice of the batch,
gradients and metrics are averaged with `lax.pmean` over 'data', and BatchNorm averages its
statistics over 'data'. `jax.pmap` itself is now implemented on `jit` + `shard_map`; we call
`jax.shard_map` directly so that the train state keeps one layout (replicated global arrays) in both
modes and checkpoints do not care which mode wrote them.

Every network program (train steps, evaluation, inference) is compiled with `compiler_options()`,
which on CPU changes how XLA fuses element-wise ops (see there); programs that run once (weight
initialisation) are compiled with `jit_once`, which on CPU skips LLVM's optimisation.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tas_jax import compilation
from tas_jax.errors import ConfigError

AXIS = "data"

# XLA:CPU with several devices in one process (--xla_force_host_platform_device_count=N in
# XLA_FLAGS, or JAX_NUM_CPU_DEVICES) runs the devices' programs on one pool of threads, by default
# as many as the machine has cores. A device whose convolution or dot ran on a pool thread goes on
# there, and blocks that thread in the step's all-reduce until all N devices arrive; once the pool's
# threads are all blocked so, the devices still waiting for a thread never arrive, and after 60 s
# XLA aborts the process ("Termination timeout for `all reduce …` … only 3 of them arrived on time",
# SIGABRT). tests/repro/cpu_collective_abort.py shows it without tas_jax: on the 2-core machine
# with 8 devices and load beside it, pools of 2, 9 and 12 threads abort within a minute, 16 and 32
# run 2,000 steps. The pool's size is read from PJRT_NPROC when the backend starts:
# `size_cpu_thread_pool` (run when tas_jax is imported) sets it to CPU_THREADS_PER_DEVICE threads
# per device unless the user set it.
CPU_THREADS_PER_DEVICE = 4


def requested_cpu_devices() -> int:
  """The CPU device count this process asks for (1 unless forced)."""
  count = os.environ.get("JAX_NUM_CPU_DEVICES", "")
  for flag in os.environ.get("XLA_FLAGS", "").split():
    if flag.startswith("--xla_force_host_platform_device_count="):
      count = count or flag.split("=", 1)[1]
  try:
    return max(1, int(count))
  except ValueError:
    return 1


def size_cpu_thread_pool() -> None:
  """Gives XLA:CPU's thread pool enough threads for the devices of this process (see above)."""
  if "PJRT_NPROC" in os.environ or "NPROC" in os.environ:
    return
  devices = requested_cpu_devices()
  if devices > 1:
    os.environ["PJRT_NPROC"] = str(max(os.cpu_count() or 1, CPU_THREADS_PER_DEVICE * devices))


def make_mesh(num_devices: int = -1) -> Mesh:
  """A ('data',) mesh over all devices of all processes (ordered by process), or the first
  `num_devices` of a single process's."""
  devices = jax.devices()
  if num_devices != -1 and jax.process_count() > 1 and num_devices != len(devices):
    raise ConfigError(
      f"config.num_devices={num_devices}: in a {jax.process_count()}-process run "
      f"the mesh spans all {len(devices)} devices (a subset would leave processes "
      "without devices); use -1"
    )
  if num_devices != -1:
    if num_devices > len(devices):
      raise ConfigError(
        f"config.num_devices={num_devices}: only {len(devices)} devices are visible "
        "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)"
      )
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_replicated(tree, mesh: Mesh):
  """Host arrays -> device arrays replicated over the mesh (datasets, state)."""
  return jax.device_put(tree, replicated(mesh))


# XLA:CPU by default fuses element-wise ops into loop fusions, and it fuses the recomputation of
# BatchNorm, ReLU and the residual adds into the transposes that feed every weight-gradient
# convolution, so each saved activation is recomputed under a strided transpose. Handing
# element-wise ops and reductions to YNNPACK materialises them once instead: the plain ResNet-20
# training step on the 2-core CPU goes from about 1.6 s to 1.0 s (BENCHMARKS.md).
CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"
}
_xla_defaults = False


@functools.cache
def _cpu_options_accepted() -> bool:
  """Whether this jaxlib knows the option (it is marked experimental in XLA)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
  except jax.errors.JaxRuntimeError:
    return False
  return True


def compiler_options() -> dict:
  """XLA options for tas_jax's jitted programs: `CPU_COMPILER_OPTIONS` on the CPU backend, none
  elsewhere. A user's own `xla_cpu_experimental_ynn_fusion_type` in `XLA_FLAGS` wins, and an
  XLA that rejects the option gets none."""
  if (
    _xla_defaults
    or jax.default_backend() != "cpu"
    or "xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")
    or not _cpu_options_accepted()
  ):
    return {}
  return dict(CPU_COMPILER_OPTIONS)


@contextlib.contextmanager
def xla_defaults() -> Iterator[None]:
  """Programs built inside compile with XLA's own options (the benchmark's "before" row)."""
  global _xla_defaults
  _xla_defaults = True
  try:
    yield
  finally:
    _xla_defaults = False


# Weight initialisation is one program that runs once, mostly threefry: hundreds of unrolled 32-bit
# integer ops per parameter, which LLVM's optimisation takes seconds to chew. Without it the
# ResNet initialisers compile 3-7x faster on CPU (a pruned CIFAR ResNet-20: 12.1 s -> 2.2 s,
# BENCHMARKS.md) and give the same weights but for the last bit of a few (float rounding in the
# normal distribution's math); the saved seconds come back on every run, the slower machine code
# runs once.
ONCE_CPU_OPTIONS = {"xla_backend_optimization_level": 0}


def jit_once(fn: Callable, **jit_kwargs) -> Callable:
  """`jax.jit` for a program that runs once (initialisation): on CPU compiled without LLVM's
  optimisation (`ONCE_CPU_OPTIONS`); elsewhere a plain `jax.jit`."""
  options = dict(ONCE_CPU_OPTIONS) if jax.default_backend() == "cpu" else {}
  return jax.jit(fn, compiler_options=options, **jit_kwargs)


def abstract(tree):
  """`jax.ShapeDtypeStruct`s of a tree of arrays, each with its array's sharding (none for an
  uncommitted array, which a step may place where it likes): what compiling ahead needs."""

  def one(x):
    sharding = x.sharding if getattr(x, "committed", True) else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


def kept_once(fn: Callable, mesh: Mesh, name: str, fingerprint: Optional[dict]) -> Callable:
  """`jit_once(fn, out_shardings=replicated(mesh))` for an initialisation whose outputs are a
  model's variables (nested dicts): with a compilation cache and a `fingerprint`, its compiled
  program is kept there, so that a relaunch skips tracing the model's `init`."""
  if fingerprint is None or not compilation.can_keep():
    return jit_once(fn, out_shardings=replicated(mesh))
  options = dict(ONCE_CPU_OPTIONS) if jax.default_backend() == "cpu" else {}
  return compilation.KeptStep(
    fn, name, fingerprint, mesh, None, options, out_shardings=replicated(mesh), donate_first=False
  )


def mean(tree, axis: Optional[str]):
  """The average over the devices of a per-device step (`pmap` mode: `lax.pmean` over `axis`);
  under `jit` (axis None) the step already sees the global batch: the tree as it is."""
  return jax.lax.pmean(tree, axis) if axis is not None else tree


def step_axis(mode: str) -> Optional[str]:
  """The mesh axis a step averages over itself: `AXIS` in pmap mode, None under jit."""
  return AXIS if mode == "pmap" else None


def compile_step(
  step: Callable,
  mesh: Mesh,
  mode: str,
  extras: bool = False,
  donate: Sequence[int] = (0,),
  kept: Optional[tuple] = None,
) -> Callable:
  """Compiles `step(state, batch)` (or, with `extras`, `step(state, batch, extras)`: one tree of
  everything else the step reads, e.g. keys, τ, a teacher's weights) as a data-parallel step.

  The batch is a dict of global arrays sharded along 'data'; the state, the extras and every
  output are replicated. Under `jit` the step runs once on the global batch; under `pmap` it runs
  on every device with that device's slice of the batch, and does its own averaging over `AXIS`
  (`mean`).

  `kept=(name, fingerprint, outputs_like)`: with a compilation cache, the compiled step is kept
  there (`tas_jax.compilation.KeptStep`), so that a relaunch skips tracing too; `fingerprint`
  must hold everything the step's Python reads (config, architecture, step counts).
  """
  if mode == "jit":
    fn = step
  elif mode == "pmap":
    in_specs = (P(), P(AXIS)) + ((P(),) if extras else ())
    # check_vma=False gives pmap's semantics: gradients of replicated inputs are per-device and
    # the step averages them itself with lax.pmean.
    fn = jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
  else:
    raise ValueError(f"parallel={mode!r}; allowed: jit, pmap")
  if kept and tuple(donate) == (0,) and compilation.can_keep():
    name, fingerprint, outputs_like = kept
    return compilation.KeptStep(
      fn, name, {"fingerprint": fingerprint, "mode": mode}, mesh, outputs_like, compiler_options()
    )
  return jax.jit(fn, donate_argnums=tuple(donate), compiler_options=compiler_options())
