"""JAX's persistent compilation cache for every command (`config.compilation_cache`): a second
process running the same stage compiles nothing, and a folder that cannot be written costs one
warning line, never the run. The counts come from JAX's own monitoring events
(`tas_jax.compilation.counts`), as the run's last log line reports them."""

import os
import re

import pytest

from tests import pipelines

TINY = {
  "data.train_examples": 200,
  "model.depth": 8,
  "teacher.warmup_epochs": 0,
  "teacher.cosine_epochs": 1,
  "teacher.batch_size": 50,
}


def _teacher(workdir, cache: str):
  """A one-epoch teacher in a child process that sees none of the suite's cache settings."""
  suite = ("JAX_COMPILATION", "JAX_PERSIST")
  environ = {k: v for k, v in os.environ.items() if not k.startswith(suite)}
  return pipelines.cli(
    workdir,
    "--config.stage=teacher",
    f"--config.compilation_cache={cache}",
    overrides=TINY,
    environ=environ,
  )


def _cache_line(log: str, cache: str) -> tuple[int, int, int]:
  found = re.search(
    rf"compilation cache {re.escape(cache)}: (\d+) programs loaded, (\d+) compiled \((\d+) "
    r"written\)",
    log,
  )
  assert found, log[-3000:]
  return tuple(int(n) for n in found.groups())


@pytest.mark.children  # python -m tas_jax.main in child processes
def test_a_second_launch_compiles_nothing(tmp_path):
  cache = str(tmp_path / "cache")
  first = _teacher(tmp_path / "a", cache)
  assert first.returncode == 0, first.stderr[-3000:]
  loaded, compiled, written = _cache_line(first.stderr, cache)
  assert loaded == 0 and compiled == written > 0
  assert "compiled and ran the train step" in first.stderr
  second = _teacher(tmp_path / "b", cache)
  assert second.returncode == 0, second.stderr[-3000:]
  loaded, compiled, written = _cache_line(second.stderr, cache)
  assert (compiled, written) == (0, 0) and loaded > 0
  assert "loaded the train step from the compilation cache" in second.stderr


@pytest.mark.children
def test_an_unwritable_cache_is_one_warning_line(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  cache = str(tmp_path / "file" / "cache")
  run = _teacher(tmp_path / "w", cache)
  assert run.returncode == 0, run.stderr[-3000:]
  warnings = [line for line in run.stderr.splitlines() if "cannot be written" in line]
  assert len(warnings) == 1 and " warning: " in warnings[0], warnings
  assert f"compilation cache {cache} cannot be written (Not a directory)" in warnings[0]
  assert os.path.isfile(tmp_path / "w" / "teacher" / "summary.json")
