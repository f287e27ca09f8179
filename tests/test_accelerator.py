"""The accelerator tier (`pytest -m accelerator`, run by benchmarks/accelerator_check.sh on a GPU):
what must hold on whatever devices the process has — bfloat16 numerics that follow float32, and a
TAS search iteration compiled once that gives the same numbers on one device and on all local
ones (on one GPU: under jit and under pmap). On this CPU machine the tier runs in the 8-device pass
of launch/test.sh, so the comparison there is 1 against 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tas_jax.methods.tas import spaces
from tas_jax.models import arch, resnet
from tests import parallel_check


@pytest.mark.accelerator
def test_bfloat16_logits_follow_float32():
  """The plain ResNet and the TAS supernet with the same weights, convs in bf16 against float32:
  the logits agree to a few percent of their scale (bf16 keeps 8 bits of mantissa)."""
  a = arch.cifar_resnet(8, num_classes=10, input_size=16)
  x = jax.random.normal(jax.random.key(0), (16, 16, 16, 3))
  logits = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = resnet.build(a, dtype=dtype)
    v = resnet.build(a).init(jax.random.key(1), x)
    out, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    space = spaces.of(a)
    net = space.supernet("tas", dtype)
    arch_logits = space.init_logits(jax.random.key(2))
    sv = space.supernet("tas").init(jax.random.key(3), x, arch_logits, jax.random.key(4), 1.0)
    sup, _ = net.apply(
      sv, x, arch_logits, jax.random.key(5), 1.0, train=True, mutable=["batch_stats"]
    )
    logits[dtype] = (out, sup)
  for f32, bf16 in zip(logits[jnp.float32], logits[jnp.bfloat16]):
    assert bf16.dtype == jnp.float32  # the head stays float32
    scale = float(jnp.max(jnp.abs(f32)))
    assert scale > 1e-3
    assert float(jnp.max(jnp.abs(bf16 - f32))) <= 0.05 * scale
    assert float(jnp.max(jnp.abs(bf16 - f32))) > 0  # bf16 did compute in bf16


@pytest.mark.accelerator
def test_search_iteration_on_one_and_all_local_devices():
  ref = parallel_check.one_search_iteration(1, "jit")
  n = jax.local_device_count()
  got = parallel_check.one_search_iteration(n, "jit" if n > 1 else "pmap")
  assert ref["compilations"] == got["compilations"] == 1
  assert got["devices"] == n
  for m_ref, m_got in zip(ref["metrics"], got["metrics"]):
    for k in m_ref:
      assert np.isfinite(m_got[k])
      assert m_got[k] == pytest.approx(m_ref[k], abs=1e-4), k
  np.testing.assert_allclose(got["alpha"], ref["alpha"], atol=1e-4)
  np.testing.assert_allclose(got["params_head"], ref["params_head"], atol=1e-4)
