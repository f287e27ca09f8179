"""tas_jax: network pruning by architecture search (TAS, PaS) in JAX/Flax."""

from tas_jax import parallel as _parallel

# before any JAX backend starts: XLA:CPU's thread pool sized for forced CPU devices (parallel.py)
_parallel.size_cpu_thread_pool()
