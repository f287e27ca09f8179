"""Test-wide settings."""

import tempfile

import jax

from tas_jax import console

console.quiet_environment()   # no TensorFlow banners in the test log

# Several tests compile the same step twice (a run, then its resumed twin in a fresh call): a
# persistent compilation cache, fresh for every session, lets the second compile be a lookup.
import os  # noqa: E402
if os.environ.get("TAS_JAX_NO_CACHE") != "1":
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="tas_jax_xla_cache_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  config.addinivalue_line("markers", "one_pass(devices): tests whose children choose their own "
                          "devices, or that compare 1 and 8 devices themselves, or heavy stage "
                          "tests another test also runs in both passes; launch/test.sh runs them "
                          "only in the pass with that many devices (1 or 8)")


def pytest_collection_modifyitems(config, items):
  """launch/test.sh's two passes run side by side; a `one_pass(N)` test (it starts its own
  processes with their own device counts, so the other pass would repeat it exactly) runs only in
  the pass with N devices — the 8-device pass is TAS_JAX_SECOND_PASS=1. The heavy ones are shared
  between the passes so that neither runs much longer than the other."""
  import os
  this_pass = 8 if os.environ.get("TAS_JAX_SECOND_PASS") == "1" else 1
  kept, dropped = [], []
  for item in items:
    marker = item.get_closest_marker("one_pass")
    (dropped if marker is not None and marker.args[0] != this_pass else kept).append(item)
  if dropped:
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
