"""Data parallelism: one `('data',)` mesh, and two ways to run the same step on it.

`jit` (default) is the global view JAX recommends: arrays carry a `NamedSharding`, the batch is
split along 'data', parameters are replicated, and XLA inserts the collectives (BatchNorm statistics
then cover the global batch without any axis name).

`pmap` is explicit per-device code with pmap's semantics: each device sees its slice of the batch,
gradients and metrics are averaged with `lax.pmean` over 'data', and BatchNorm averages its
statistics over 'data'. `jax.pmap` itself is now implemented on `jit` + `shard_map`; we call
`jax.shard_map` directly so that the train state keeps one layout (replicated global arrays) in both
modes and checkpoints do not care which mode wrote them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
  devices = jax.devices()
  if num_devices != -1:
    if num_devices > len(devices):
      raise ValueError(f"config.num_devices={num_devices}: only {len(devices)} devices are visible "
                       "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def put_replicated(tree, mesh: Mesh):
  """Host arrays -> device arrays replicated over the mesh (datasets, state)."""
  return jax.device_put(tree, replicated(mesh))


def compile_step(per_shard: Callable, mesh: Mesh, mode: str, num_args: int,
                 donate: Sequence[int] = (0,)) -> Callable:
  """Compiles `per_shard(shard_index, shard_count, *args)` as a data-parallel step.

  Every argument and output is replicated; `per_shard` picks its own slice of the global batch
  from `shard_index` (see `tas_jax.training.steps`). Under `jit` it runs once, as shard 0 of 1, on
  the global batch; under `pmap` it runs on every device as shard i of n.
  """
  if mode == "jit":
    fn = lambda *args: per_shard(0, 1, *args)
  elif mode == "pmap":
    n = mesh.shape[AXIS]

    def per_device(*args):
      return per_shard(jax.lax.axis_index(AXIS), n, *args)

    # check_vma=False gives pmap's semantics: gradients of replicated inputs are per-device and
    # the step averages them itself with lax.pmean.
    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) * num_args, out_specs=P(),
                       check_vma=False)
  else:
    raise ValueError(f"parallel={mode!r}; allowed: jit, pmap")
  return jax.jit(fn, donate_argnums=tuple(donate))
