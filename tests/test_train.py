"""The teacher stage: data-parallel equivalence, the CPU compiler options, a short run that learns
(the shared pipeline's teacher; resuming after a kill is tests/test_kill.py)."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import parallel_check
import pytest

from tas_jax import config as config_lib, parallel
from tas_jax.models import arch as arch_lib, resnet

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def run_on(num_devices, mode, what="step"):
  """parallel_check's result for `num_devices`, in a child process when this one has fewer
  (cached: several tests compare against the same reference run)."""
  if jax.device_count() >= num_devices:
    return parallel_check.CHECKS[what](num_devices, mode)
  root = os.path.dirname(HERE)
  env = {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}",
    "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
  }
  out = subprocess.run(
    [sys.executable, os.path.join(HERE, "parallel_check.py"), str(num_devices), mode, what],
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(HERE),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.devices
def test_same_numbers_on_1_and_8_devices_with_jit_and_pmap():
  """Two steps (so the second sees updated weights and BN statistics) of the same global batch."""
  ref = run_on(1, "jit")
  assert ref["devices"] == 1
  for devices, mode in [(1, "pmap"), (8, "jit"), (8, "pmap")]:
    got = run_on(devices, mode)
    assert got["devices"] == devices
    np.testing.assert_allclose(
      got["losses"], ref["losses"], atol=1e-5, rtol=0, err_msg=f"{devices} {mode}"
    )
    np.testing.assert_allclose(
      got["params_head"], ref["params_head"], atol=1e-5, err_msg=f"{devices} {mode}"
    )
    assert abs(got["params_norm"] - ref["params_norm"]) < 1e-4 * ref["params_norm"]
  assert ref["losses"][0] > 2.0  # untrained 10-class net: about ln 10


def test_cpu_compiler_options_change_speed_not_numbers(monkeypatch):
  """The CPU fusion options apply on CPU, yield to the user's XLA_FLAGS and to xla_defaults(),
  and a ResNet's loss and gradients compiled with them match XLA's defaults; initialisation
  compiled without LLVM's optimisation gives the same weights (to float rounding)."""
  assert jax.default_backend() == "cpu"
  assert parallel.compiler_options() == parallel.CPU_COMPILER_OPTIONS
  with parallel.xla_defaults():
    assert parallel.compiler_options() == {}
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT")
  assert parallel.compiler_options() == {}
  monkeypatch.undo()

  model = resnet.build(arch_lib.cifar_resnet(8, "basic"))
  x = jax.random.normal(jax.random.key(0), (16, 32, 32, 3))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 10)
  # initialisation without LLVM's optimisation (parallel.jit_once): the same random bits; the
  # normal distribution's float math may round differently in the last place
  variables = parallel.jit_once(model.init)(jax.random.key(2), x[:1])
  for a, b in zip(
    jax.tree.leaves(variables), jax.tree.leaves(jax.jit(model.init)(jax.random.key(2), x[:1]))
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(16), y])

  grad = jax.value_and_grad(loss)
  tuned = jax.jit(grad, compiler_options=parallel.CPU_COMPILER_OPTIONS)(variables["params"])
  default = jax.jit(grad)(variables["params"])
  np.testing.assert_allclose(tuned[0], default[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(tuned[1]), jax.tree.leaves(default[1])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-3)


def demo_like_config(**teacher_overrides):
  c = config_lib.base_config()
  c.data.name = "embedded"
  c.model.depth = 8
  c.teacher.warmup_epochs = 1
  c.teacher.cosine_epochs = 2
  c.teacher.batch_size = 128
  c.log_every_steps = 100
  for k, v in teacher_overrides.items():
    setattr(c.teacher, k, v)
  return c


@pytest.mark.stage
def test_short_teacher_run_learns(cifar_pipeline):
  """The shared pipeline's teacher: ResNet-8, 3 epochs on 2,000 images."""
  workdir, _ = cifar_pipeline
  summary = json.load(open(os.path.join(workdir, "teacher", "summary.json")))
  hist = summary["history"]
  assert len(hist) == 3 and summary["finished"]
  assert summary["test_accuracy"] > 0.6  # chance is 0.1
  assert hist[-1]["train_loss"] < 0.6 * hist[0]["train_loss"] + 0.5
  assert os.path.isfile(os.path.join(workdir, "teacher", "arch.json"))
  assert any(
    f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "teacher"))
  )


def test_forced_cpu_devices_get_a_thread_pool_that_cannot_deadlock(monkeypatch):
  """XLA:CPU's pool sized for the devices (tests/repro/cpu_collective_abort.py: with one thread
  per core, 8 devices abort in an all-reduce's rendezvous); the user's own setting wins."""
  for name in ("PJRT_NPROC", "NPROC", "JAX_NUM_CPU_DEVICES"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8")
  assert parallel.requested_cpu_devices() == 8
  parallel.size_cpu_thread_pool()
  assert os.environ["PJRT_NPROC"] == str(max(os.cpu_count(), 32))
  monkeypatch.setenv("PJRT_NPROC", "3")
  parallel.size_cpu_thread_pool()
  assert os.environ["PJRT_NPROC"] == "3"
  monkeypatch.delenv("PJRT_NPROC")
  monkeypatch.setenv("XLA_FLAGS", "")
  parallel.size_cpu_thread_pool()  # one device: XLA's own default
  assert "PJRT_NPROC" not in os.environ and parallel.requested_cpu_devices() == 1
  monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "4")
  assert parallel.requested_cpu_devices() == 4
