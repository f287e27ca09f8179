"""Test-wide settings."""

import tempfile

import jax

# Several tests compile the same step twice (a run, then its resumed twin in a fresh call): a
# persistent compilation cache, fresh for every session, lets the second compile be a lookup.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="tas_jax_xla_cache_"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  config.addinivalue_line("markers", "one_pass: tests whose children choose their own devices; "
                          "launch/test.sh runs them in the 1-device pass only")


def pytest_collection_modifyitems(config, items):
  """The 8-device pass (TAS_JAX_SECOND_PASS=1, set by launch/test.sh) leaves out the `one_pass`
  tests: they start their own processes with their own device counts, so the second pass would
  repeat them exactly."""
  import os
  if os.environ.get("TAS_JAX_SECOND_PASS") == "1":
    kept = [i for i in items if i.get_closest_marker("one_pass") is None]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept
