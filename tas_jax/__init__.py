"""tas_jax: network pruning by architecture search (TAS, PaS) in JAX/Flax."""

from tas_jax import parallel as _parallel

# before any JAX backend starts: XLA:CPU's thread pool sized for forced CPU devices (parallel.py)
_parallel.size_cpu_thread_pool()


def load(workdir: str, run: str = "teacher"):
  """A finished run's network back in Python (`tas_jax.runs.load`): `.arch`, `.variables`, a jitted
  `.apply`, `.preprocess` for uint8 images, and the run called as `net(images)` -> logits."""
  from tas_jax import runs

  return runs.load(workdir, run)


def __getattr__(name: str):
  """`tas_jax.graph` (channel groups of any Flax model) and `tas_jax.prune` (plans on them),
  imported on first use."""
  if name in ("graph", "prune"):
    import importlib

    return importlib.import_module(f"tas_jax.{name}")
  raise AttributeError(f"module 'tas_jax' has no attribute {name!r}")
