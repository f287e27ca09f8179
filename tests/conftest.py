"""Test-wide settings."""

import tempfile

import jax

# Several tests compile the same step twice (a run, then its resumed twin in a fresh call): a
# persistent compilation cache, fresh for every session, lets the second compile be a lookup.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="tas_jax_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
