"""Test-wide settings: the tiers of the suite and one compilation cache.

Tiers (markers; an unmarked test is a unit test):
  unit      pure functions, shapes, counters, parsers, configs, numerics against hand values: what a
            developer runs while working (`bash launch/test.sh --fast`)
  stage     trains a stage or reads one of the shared tiny pipelines (tests/pipelines.py): data
            parallel, so it runs in the 8-device pass
  devices   compares 1 and 8 devices inside this process (or two processes x 4 devices against
            this process's 1 x 8), and the data-parallel benchmark harness: the 8-device pass
  children  starts processes that choose their own devices (hard kills, several processes, the
            notebook, the CLI): the 1-device pass
  kills     hard-kills child runs and resumes them (tests/test_kill.py); the children run on one
            device each whatever the pass, so the tier sits in the 8-device pass to balance the two
  guides    runs the guides' runnable shell blocks (tests/test_docs.py) in child processes on one
            device each: in the 8-device pass to balance the two (the Quickstart's are `children`)
  accelerator  bf16 numerics and the search step on the local devices: the tier
            benchmarks/accelerator_check.sh runs on a GPU; here the 8-device pass
launch/test.sh runs two passes side by side and sets TAS_JAX_PASS=1 or 8 in each; a pass runs only
its tiers, so every test runs once. Without TAS_JAX_PASS (plain `pytest tests/...`) everything
selected runs.

The compilation cache: launch/test.sh exports JAX_COMPILATION_CACHE_DIR for both passes, which
this process and every child read (the children's compilations of the same programs become
lookups); without it a session uses a folder of its own, removed at the end with every other
temporary file of the session. Reads and writes take a file lock
(`jax_compilation_cache_max_size` > 0 turns jax's locking on): two processes share the folder.
"""

import os
import shutil
import tempfile

import jax
import pytest

from tas_jax import console

console.quiet_environment()  # no TensorFlow banners in the test log

# marker -> its pass; unit: 1
TIERS = {"stage": 8, "devices": 8, "children": 1, "kills": 8, "guides": 8, "accelerator": 8}
CACHE_SETTINGS = {  # exported: child processes inherit them
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30),
}
# Every temporary file of the session (pytest's tmp_path, tfds' mock folders, the children's)
# goes under one folder, removed at the end: nothing is left in /tmp.
SESSION_TMP = tempfile.mkdtemp(prefix="tas_jax_tests_")
tempfile.tempdir = SESSION_TMP
os.environ["TMPDIR"] = SESSION_TMP
if os.environ.get("TAS_JAX_NO_CACHE") == "1":
  os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # config.compilation_cache="auto": off
else:
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(SESSION_TMP, "xla_cache"))
  for name, value in CACHE_SETTINGS.items():
    os.environ.setdefault(name, value)
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
  )
  jax.config.update(
    "jax_persistent_cache_min_entry_size_bytes",
    int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
  )
  jax.config.update(
    "jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
  )


def pytest_configure(config):
  config.addinivalue_line(
    "markers",
    "stage: trains a stage or reads a shared tiny pipeline; runs in "
    "the 8-device pass of launch/test.sh",
  )
  config.addinivalue_line(
    "markers", "devices: compares 1 and 8 devices in this process; runs in the 8-device pass"
  )
  config.addinivalue_line(
    "markers", "children: starts processes with their own devices; runs in the 1-device pass"
  )
  config.addinivalue_line(
    "markers", "kills: hard-kills and resumes child runs on one device; runs in the 8-device pass"
  )
  config.addinivalue_line(
    "markers", "guides: the guides' runnable commands in child processes; the 8-device pass"
  )
  config.addinivalue_line(
    "markers",
    "accelerator: bf16 numerics and the search step on the local devices, the tier "
    "benchmarks/accelerator_check.sh runs on a GPU; runs in the 8-device pass",
  )


def pytest_unconfigure(config):
  shutil.rmtree(SESSION_TMP, ignore_errors=True)


def tier(item) -> str:
  found = [name for name in TIERS if item.get_closest_marker(name) is not None]
  assert len(found) <= 1, f"{item.nodeid} has two tiers: {found}"
  return found[0] if found else "unit"


def pytest_collection_modifyitems(config, items):
  """In a pass of launch/test.sh (TAS_JAX_PASS=1 or 8), keeps the tests of that pass's tiers."""
  this_pass = os.environ.get("TAS_JAX_PASS")
  if not this_pass:
    return
  kept, dropped = [], []
  for item in items:
    (kept if TIERS.get(tier(item), 1) == int(this_pass) else dropped).append(item)
  if dropped:
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """A test of an 8-device tier that fails in a plain `pytest` run on fewer devices says how to
  run it where it belongs (its own assertion, e.g. `assert 1 > 1`, would not)."""
  outcome = yield
  report = outcome.get_result()
  if (
    report.failed
    and not os.environ.get("TAS_JAX_PASS")
    and TIERS.get(tier(item), 1) == 8
    and jax.device_count() < 8
  ):
    report.sections.append(
      (
        "tas_jax",
        f"{item.nodeid} is in the {tier(item)} tier, which runs on 8 devices, and this process "
        f"has {jax.device_count()}: run it with `bash launch/test.sh {item.nodeid}` or "
        "XLA_FLAGS=--xla_force_host_platform_device_count=8",
      )
    )


@pytest.fixture(scope="session")
def cifar_pipeline(tmp_path_factory):
  """The shared tiny CIFAR-ResNet pipeline (TAS and PaS): tests/pipelines.py."""
  import pipelines

  return pipelines.cifar(str(tmp_path_factory.mktemp("cifar_pipeline")))
