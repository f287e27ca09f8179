"""JAX's persistent compilation cache for every command (`config.compilation_cache`): a second
process running the same stage compiles nothing and traces no step, and a folder that cannot be
written costs one warning line, never the run. The counts come from JAX's own monitoring events
(`tas_jax.compilation.counts`), as the run's last log line reports them. Steps kept with
compiled (`compilation.KeptStep`) give what `jax.jit` gives, traced or loaded."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging

from tas_jax import compilation, parallel
from tests import pipelines

TINY = {
  "data.train_examples": 200,
  "model.depth": 8,
  "teacher.warmup_epochs": 0,
  "teacher.cosine_epochs": 1,
  "teacher.batch_size": 50,
  "search.init": "scratch",
  "search.epochs": 1,
  "search.batch_size": 50,
}


def _stage(workdir, cache: str, stage: str = "teacher"):
  """A one-epoch stage in a child process that sees none of the suite's cache settings."""
  suite = ("JAX_COMPILATION", "JAX_PERSIST")
  environ = {k: v for k, v in os.environ.items() if not k.startswith(suite)}
  return pipelines.cli(
    workdir,
    f"--config.stage={stage}",
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
def test_a_second_launch_compiles_nothing_and_traces_no_step(tmp_path):
  cache = str(tmp_path / "cache")
  first = _stage(tmp_path / "a", cache, "search")
  assert first.returncode == 0, first.stderr[-3000:]
  loaded, compiled, written = _cache_line(first.stderr, cache)
  assert loaded == 0 and compiled == written > 0
  assert "compiled and ran the search step" in first.stderr
  kept = os.listdir(os.path.join(cache, compilation.KEPT))
  assert sorted(name.split("-")[0] for name in kept) == [
    "tas_search_iteration",
    "tas_supernet_init",
  ]
  second = _stage(tmp_path / "b", cache, "search")
  assert second.returncode == 0, second.stderr[-3000:]
  loaded, compiled, written = _cache_line(second.stderr, cache)
  assert (compiled, written) == (0, 0) and loaded > 0
  assert "loaded the search step an earlier launch kept (no tracing)" in second.stderr
  summaries = [json.loads((tmp_path / w / "search" / "summary.json").read_text()) for w in "ab"]
  # the same search, loaded or traced
  for key in ("architecture", "flops_ratio", "expected_flops_ratio", "supernet_train_accuracy"):
    assert summaries[0][key] == summaries[1][key], key


@pytest.mark.children
def test_an_unwritable_cache_is_one_warning_line(tmp_path):
  (tmp_path / "file").write_text("not a folder")
  cache = str(tmp_path / "file" / "cache")
  run = _stage(tmp_path / "w", cache)
  assert run.returncode == 0, run.stderr[-3000:]
  warnings = [line for line in run.stderr.splitlines() if "cannot be written" in line]
  assert len(warnings) == 1 and " warning: " in warnings[0], warnings
  assert f"compilation cache {cache} cannot be written (Not a directory)" in warnings[0]
  assert os.path.isfile(tmp_path / "w" / "teacher" / "summary.json")


def _step(state, batch):
  """A least-squares step: the kept program must compute exactly what jax.jit's does."""
  grad = jax.grad(lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2))(state["w"])
  new = {"w": state["w"] - 0.1 * grad, "n": state["n"] + 1}
  return new, {"loss": jnp.mean((batch["x"] @ state["w"] - batch["y"]) ** 2)}


def _inputs():
  rng = np.random.default_rng(0)
  state = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "n": jnp.int32(0)}
  batch = {"x": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), "y": jnp.ones((8, 2))}
  return state, batch


def _kept(folder, fingerprint="v1"):
  return compilation.KeptStep(
    _step,
    "least_squares",
    fingerprint,
    parallel.make_mesh(1),
    lambda state, batch: (state, {"loss": 0}),
    folder=str(folder),
  )


def test_a_kept_step_gives_what_jit_gives_traced_then_loaded(tmp_path):
  state, batch = _inputs()
  expected = jax.jit(_step)(state, batch)
  first = _kept(tmp_path)
  assert not first.prefetch()  # nothing kept yet
  out = first(*_inputs())
  assert first.timings["source"] == "traced" and os.path.isfile(first.path)
  again = _kept(tmp_path)
  assert again.path == first.path and again.prefetch()
  loaded = again(*_inputs())
  assert again.timings["source"] == "loaded" and again._cache_size() == 1
  for got in (out, loaded):
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    np.testing.assert_array_equal(got[0]["w"], expected[0]["w"])
    assert int(got[0]["n"]) == 1 and float(got[1]["loss"]) == float(expected[1]["loss"])
  # a second step of the loaded program from its own (donated) output, with no host transfer
  reference = jax.jit(_step)(expected[0], batch)[0]["w"]
  with jax.transfer_guard("disallow"):
    second = again(loaded[0], batch)
  np.testing.assert_array_equal(second[0]["w"], reference)
  assert _kept(tmp_path, "v2").path != first.path  # another fingerprint, another program


def test_a_damaged_kept_step_is_traced_again_with_one_warning(tmp_path, monkeypatch):
  first = _kept(tmp_path)
  first(*_inputs())
  with open(first.path, "rb") as f:
    header = f.read().split(b"\n")[:2]  # the magic line and the header: a program cut short
  with open(first.path, "wb") as f:
    f.write(b"\n".join(header) + b"\nnot a program")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  again = _kept(tmp_path)
  out = again(*_inputs())
  assert again.timings["source"] == "traced" and len(warnings) == 1, warnings
  assert "is not usable" in warnings[0] and "tracing the step again" in warnings[0]
  np.testing.assert_array_equal(out[0]["w"], jax.jit(_step)(*_inputs())[0]["w"])
  assert _kept(tmp_path).prefetch()  # and it was written again


def test_outputs_like_must_match_the_step(tmp_path):
  wrong = compilation.KeptStep(
    _step, "wrong", "v1", parallel.make_mesh(1), lambda s, b: (s,), folder=str(tmp_path)
  )
  with pytest.raises(ValueError, match="outputs_like gives"):
    wrong(*_inputs())


def test_kept_variables_come_back_as_the_same_nested_dicts(tmp_path):
  def init(key_data):
    k = jax.random.wrap_key_data(key_data)
    return {
      "params": {"dense": {"kernel": jax.random.normal(k, (2, 3)), "bias": jnp.zeros(3)}},
      "arch": {"alpha": jnp.ones((4, 8))},
    }

  key = jax.random.key_data(jax.random.key(3))
  made = [
    compilation.KeptStep(
      init, "init", "v1", parallel.make_mesh(1), None, folder=str(tmp_path), donate_first=False
    )
    for _ in range(2)
  ]
  traced, loaded = made[0](key), made[1](key)
  assert made[0].timings["source"] == "traced" and made[1].timings["source"] == "loaded"
  assert jax.tree.structure(traced) == jax.tree.structure(loaded) == jax.tree.structure(init(key))
  np.testing.assert_array_equal(
    loaded["params"]["dense"]["kernel"], init(key)["params"]["dense"]["kernel"]
  )


def test_a_step_traced_ahead_from_abstract_arguments_is_the_one_called(tmp_path, monkeypatch):
  state, batch = _inputs()
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  ahead = _kept(tmp_path)
  abstract = parallel.abstract((state, batch))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert ahead.prefetch(abstract)  # nothing kept: traced and compiled in a thread
  out = ahead(*_inputs())
  assert ahead.timings["source"] == "traced" and os.path.isfile(ahead.path) and not warnings
  np.testing.assert_array_equal(out[0]["w"], jax.jit(_step)(*_inputs())[0]["w"])
  # made for other shapes: one warning, traced again for the arguments the step is called with
  other = _kept(tmp_path, "v3")
  other.prefetch(parallel.abstract((state, {"x": jnp.zeros((16, 3)), "y": jnp.zeros((16, 2))})))
  assert float(other(*_inputs())[1]["loss"]) == float(out[1]["loss"])
  assert len(warnings) == 1 and "made for other inputs" in warnings[0], warnings


def test_steps_are_plain_jit_where_they_cannot_be_kept(monkeypatch):
  """A bucket (`gs://`) or several processes: XLA's cache alone serves relaunches, and the step
  is compiled as jax.jit does, never a failed run."""
  kept = ("least_squares", "v1", lambda state, batch: (state, {"loss": 0}))
  mesh = parallel.make_mesh(1)
  monkeypatch.setattr(compilation, "_folder", "/tmp/any-cache")
  assert isinstance(parallel.compile_step(_step, mesh, "jit", kept=kept), compilation.KeptStep)
  monkeypatch.setattr(compilation, "_folder", "gs://bucket/cache")
  plain = parallel.compile_step(_step, mesh, "jit", kept=kept)
  assert not isinstance(plain, compilation.KeptStep) and hasattr(plain, "lower")
  np.testing.assert_array_equal(plain(*_inputs())[0]["w"], jax.jit(_step)(*_inputs())[0]["w"])
  monkeypatch.setattr(compilation, "_folder", "/tmp/any-cache")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert not isinstance(parallel.compile_step(_step, mesh, "jit", kept=kept), compilation.KeptStep)


def test_a_step_that_cannot_be_serialised_runs_and_is_compiled_again(tmp_path, monkeypatch):
  """A backend whose executables cannot be serialised: the step runs, nothing is written, and
  the next launch compiles it again."""
  from jax.experimental import serialize_executable

  def refuse(compiled):
    raise jax.errors.JaxRuntimeError("UNIMPLEMENTED: serialisation")

  monkeypatch.setattr(serialize_executable, "serialize", refuse)
  step = _kept(tmp_path)
  out = step(*_inputs())
  np.testing.assert_array_equal(out[0]["w"], jax.jit(_step)(*_inputs())[0]["w"])
  assert step.timings["source"] == "traced" and not os.path.exists(step.path)
  assert not _kept(tmp_path).prefetch()  # nothing to load


@pytest.mark.devices  # a data-parallel step on every device (8 in launch/test.sh's second pass)
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_a_kept_data_parallel_step_loads_onto_its_mesh(tmp_path, monkeypatch, mode):
  """The batch sharded along 'data', the state replicated: a relaunch's loaded program gives
  the traced one's numbers on the same mesh, and its outputs stay replicated on every device."""
  mesh = parallel.make_mesh(-1)
  monkeypatch.setattr(compilation, "_folder", str(tmp_path))

  def step(state, batch):  # `_step`, each device's gradient and loss averaged in pmap mode
    axis = parallel.step_axis(mode)

    def loss(w):
      return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

    grad = parallel.mean(jax.grad(loss)(state["w"]), axis)
    new = {"w": state["w"] - 0.1 * grad, "n": state["n"] + 1}
    return new, {"loss": parallel.mean(loss(state["w"]), axis)}

  def place():
    state, batch = _inputs()
    rng = np.random.default_rng(1)  # 8 rows per device, all different
    n = 8 * len(mesh.devices.flat)
    batch = {"x": rng.normal(size=(n, 3)).astype(np.float32), "y": np.ones((n, 2), np.float32)}
    return parallel.put_replicated(state, mesh), jax.device_put(batch, parallel.batch_sharded(mesh))

  kept = ("least_squares_dp", "v1", lambda state, batch: (state, {"loss": 0}))
  made = [parallel.compile_step(step, mesh, mode, kept=kept) for _ in range(2)]
  traced, loaded = made[0](*place()), made[1](*place())
  assert [m.timings["source"] for m in made] == ["traced", "loaded"]
  expected = jax.jit(_step)(*place())
  for got in (traced, loaded):
    np.testing.assert_allclose(got[0]["w"], expected[0]["w"], rtol=1e-5)
    np.testing.assert_allclose(got[1]["loss"], expected[1]["loss"], rtol=1e-5)
    assert got[0]["w"].sharding.is_fully_replicated
    assert len(got[0]["w"].sharding.device_set) == len(mesh.devices.flat)
