"""`model.scan_blocks`: equal blocks as one lax.scan give the numbers of the unrolled network, and
the convolution gradients written for the CPU's loop bodies equal JAX's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tas_jax import parallel
from tas_jax.methods.pas import masks
from tas_jax.methods.tas import space as space_lib, supernet
from tas_jax.models import arch, conv, resnet, scan


@pytest.mark.parametrize(
  "size,k,stride,pad",
  [(9, 3, 1, 1), (8, 3, 2, 1), (9, 3, 2, 1), (8, 1, 2, 0), (16, 7, 2, 3), (5, 1, 1, 0)],
)
def test_conv_gradients_equal_jax_own(size, k, stride, pad):
  """Odd sizes with stride 2 leave input rows no window reaches: their gradient must be zero."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 4))
  padding = ((pad, pad), (pad, pad))
  loss = lambda fn: (
    lambda x, w: jnp.sum(jnp.sin(fn(x, w, (stride, stride), padding, dimension_numbers=conv.NHWC)))
  )
  want = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
  got = jax.grad(loss(conv.conv_general_dilated), (0, 1))(x, w)
  for g, r in zip(got, want):
    assert g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
  assert "custom_vjp" in str(jax.make_jaxpr(loss(conv.conv_general_dilated))(x, w))


def test_runs_group_consecutive_equal_blocks():
  topo_blocks = resnet.topology.of(arch.cifar_resnet(20)).blocks
  runs = scan.runs(topo_blocks, resnet.shape_signature)
  assert [[b.name for b in r] for r in runs] == [
    ["stage1.block1", "stage1.block2", "stage1.block3"],
    ["stage2.block1"],
    ["stage2.block2", "stage2.block3"],
    ["stage3.block1"],
    ["stage3.block2", "stage3.block3"],
  ]


def _assert_same(a, b, rtol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = float(np.max(np.abs(np.asarray(u)))) or 1.0
    np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=0, atol=rtol * scale)


def _train_outputs(model, variables, x, *args):
  """(loss, gradients, updated batch statistics) of one training forward, and the eval output."""

  def loss(params):
    y, updated = model.apply(
      {**variables, "params": params}, x, *args, train=True, mutable=["batch_stats"]
    )
    return jnp.sum(jnp.tanh(y)), updated

  (value, updated), grads = parallel.jit_once(jax.value_and_grad(loss, has_aux=True))(
    variables["params"]
  )
  evaluated = parallel.jit_once(lambda v: model.apply(v, x, *args, train=False))(variables)
  return value, grads, updated, evaluated


@pytest.mark.parametrize("network", ["resnet", "pas"])
def test_scanned_resnet_equals_the_unrolled_one(network):
  """Same initial weights bit for bit, the same loss, gradients and BN updates to float32
  rounding, in the same trees (checkpoints do not care which form wrote them); PaS's masked
  network stacks its per-block masks as scan inputs."""
  a = arch.cifar_resnet(20, input_size=8)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  build = (
    (lambda s: resnet.ResNet(a, scan_blocks=s))
    if network == "resnet"
    else (lambda s: masks.MaskedNetwork(a, scan_blocks=s))
  )
  init = lambda m: parallel.jit_once(lambda: m.init(jax.random.key(0), x))()
  v0, v1 = init(build(False)), init(build(True))
  _assert_same(v0, v1, 0)
  if network == "pas":  # masks with some channels off in every group
    v0 = {
      **v0,
      "params": {
        **v0["params"],
        "masks": jax.tree.map(
          lambda m: jnp.where(jnp.arange(m.shape[0]) % 3 == 0, -1.0, 1.0), v0["params"]["masks"]
        ),
      },
    }
  unrolled, scanned = _train_outputs(build(False), v0, x), _train_outputs(build(True), v0, x)
  assert float(unrolled[0]) != 0
  loops = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, train=False))(v0)).count(" scan[")
  assert loops(build(False)) == 0 and loops(build(True)) == 3  # one per stage
  for u, s in zip(unrolled, scanned):
    _assert_same(u, s, 1e-5)


@pytest.mark.parametrize("variant", supernet.VARIANTS)
def test_scanned_supernet_equals_the_unrolled_one(variant):
  a = arch.cifar_resnet(20, input_size=8)
  space = space_lib.build(a)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  logits = space.init_logits(jax.random.key(2))
  logits = jax.tree.map(lambda t: t + jax.random.normal(jax.random.key(3), t.shape), logits)
  args = (logits, jax.random.key(4), jnp.float32(2.0))
  nets = [supernet.SuperNet(space, variant, scan_blocks=s) for s in (False, True)]
  v = parallel.jit_once(lambda: nets[0].init(jax.random.key(0), x, *args))()
  loops = lambda m: str(jax.make_jaxpr(lambda v: m.apply(v, x, *args, train=False))(v)).count(
    " scan["
  )
  assert loops(nets[0]) == 0 and loops(nets[1]) == 3
  unrolled, scanned = (_train_outputs(n, v, x, *args) for n in nets)
  for u, s in zip(unrolled, scanned):
    _assert_same(u, s, 1e-5)
