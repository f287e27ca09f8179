"""Channel groups traced from any Flax model (tas_jax.graph) and pruning plans on them
(tas_jax.prune): for every model of the zoo (tests/graph_zoo.py), the pruned model computes what
the original computes with the removed channels zeroed, or — for a group that crosses a
LayerNorm — the original on the kept channels only; its MACs agree with XLA's; it differentiates,
exports, and has fewer parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tas_jax import graph, prune
from tas_jax.graph.models import path_name
from tests import graph_zoo as zoo


def randomised(variables, seed=0):
  """Every variable random (running variances positive): zeroed channels then differ from kept
  ones everywhere, and running statistics matter."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    r = jax.random.normal(k, x.shape, x.dtype)
    if path_name(path).endswith("var"):
      r = 0.5 + jnp.abs(r)
    out.append(r * (0.3 if x.ndim > 1 else 1.0))
  return jax.tree_util.tree_unflatten(treedef, out)


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def site_flops(g: graph.Graph) -> float:
  """XLA's flops of every conv and matmul of the traced model, each compiled alone."""
  total = 0.0

  def walk(jaxpr, repeats):
    nonlocal total
    for e in jaxpr.eqns:
      if e.primitive.name in ("conv_general_dilated", "dot_general"):
        args = [jnp.zeros(v.aval.shape, v.aval.dtype) for v in e.invars]
        params = dict(e.params)
        plain = "padding" in params and set(params["lhs_dilation"]) == {1}
        if plain:  # XLA skips taps over padding; the MAC convention counts them
          spec = params["dimension_numbers"].lhs_spec
          widths = [(0, 0)] * args[0].ndim
          for axis, pad in zip(spec[2:], params["padding"]):
            widths[axis] = pad
          args[0] = jnp.pad(args[0], widths)
          params["padding"] = tuple((0, 0) for _ in params["padding"])
        total += repeats * xla_flops(lambda *a, p=params, e=e: e.primitive.bind(*a, **p), *args)
      for key in ("jaxpr", "call_jaxpr"):
        sub = e.params.get(key)
        if sub is not None:
          walk(getattr(sub, "jaxpr", sub), repeats * e.params.get("length", 1))

  walk(g.closed.jaxpr, 1)
  return total


LINEN = {
  "vgg11_bn": (zoo.VGG11(), (2, 32, 32, 3)),
  "mobilenet_v2": (zoo.MobileNetV2(), (2, 16, 16, 3)),
  "densenet_block": (zoo.DenseBlock(), (2, 8, 8, 3)),
  "se_resnet": (zoo.SEResNet(), (2, 8, 8, 3)),
  "convnext": (zoo.ConvNeXt(), (2, 16, 16, 3)),
  "unet": (zoo.UNet(), (2, 8, 8, 3)),
}


@pytest.fixture(scope="module", params=sorted(LINEN))
def pruned_linen(request):
  module, shape = LINEN[request.param]
  x = jax.random.normal(jax.random.key(1), shape)
  variables = randomised(module.init(jax.random.key(0), x))
  g = graph.trace(module, variables, x, train=False)
  plan = prune.plan(g, criterion="l1", flop_ratio=0.5)
  small_apply, small = plan.apply()
  return request.param, module, variables, x, g, plan, small_apply, small


def test_pruned_equals_masked_original(pruned_linen):
  name, module, variables, x, g, plan, small_apply, small = pruned_linen
  got = np.asarray(small_apply(small, x))
  if name == "convnext":  # the residual group crosses the LayerNorms: the kept-channel reference
    (chain,) = [grp for grp in g.groups if grp.normalized]
    assert chain.name == "stem"
    mask = np.zeros(chain.size, np.float32)
    mask[plan.kept["stem"]] = 1
    reference = zoo.ConvNeXt(ln_mask=jnp.asarray(mask))
    want = np.asarray(reference.apply(g.masked(variables, plan.kept), x))
  else:
    assert not any(grp.normalized for grp in g.groups)
    want = np.asarray(module.apply(g.masked(variables, plan.kept), x, train=False))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
  removed = sum(grp.size - len(plan.kept[grp.name]) for grp in g.groups)
  assert removed > 0


def test_pruned_macs_agree_with_xla(pruned_linen):
  name, module, variables, x, g, plan, small_apply, small = pruned_linen
  # every conv and matmul counted as XLA counts it: exactly (XLA: 2 flops per multiply-add)
  assert 2 * g.macs() == site_flops(g)
  # the whole compiled model: XLA leaves out the taps over padding and adds element-wise ops (BN,
  # activations, adds, pooling), which the convention leaves out: within 35% on these tiny maps
  for fn, v, kept in (
    (lambda v, x: module.apply(v, x, train=False), variables, None),
    (small_apply, small, plan.kept),
  ):
    assert 0.65 <= xla_flops(fn, v, x) / (2 * g.macs(kept)) <= 1.35
  assert g.macs(plan.kept) <= 0.5 * g.macs()
  assert g.params(plan.kept) < g.params()
  assert sum(int(np.size(a)) for a in jax.tree.leaves(small["params"])) == g.params(plan.kept)


def test_pruned_differentiates_and_exports(pruned_linen):
  name, module, variables, x, g, plan, small_apply, small = pruned_linen
  grads = jax.grad(lambda v: jnp.sum(small_apply(v, x) ** 2))(small)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(grads))
  exported = jax.export.export(jax.jit(small_apply))(small, x)
  want = np.asarray(jax.jit(small_apply)(small, x))
  np.testing.assert_allclose(exported.call(small, x), want, atol=1e-6 * np.abs(want).max())


def test_nnx_transformer_mlp():
  model = zoo.TransformerMLP(16, 64, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  before = model(x)
  g = graph.trace(model, x)
  (hidden,) = g.groups  # the tokens' width is the model's input: only the hidden width is free
  assert hidden.name == "fc1" and hidden.size == 64
  plan = prune.plan(g, criterion="fpgm", flop_ratio=0.5)
  small_apply, small = plan.apply()
  _, state = nnx.split(model)
  want = g.adapter.apply(g.masked(state, plan.kept), x)
  np.testing.assert_allclose(small_apply(small, x), want, atol=1e-5 * np.abs(want).max())
  assert plan.module.fc1.out_features == len(plan.kept["fc1"]) < 64
  np.testing.assert_allclose(plan.module(x), small_apply(small, x), atol=1e-6)
  np.testing.assert_array_equal(model(x), before)  # the original is untouched
  jax.export.export(jax.jit(small_apply))(small, x)


def test_unknown_op_is_named_and_its_channels_kept(caplog):
  module = zoo.Unknown()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  variables = randomised(module.init(jax.random.key(0), x))
  g = graph.trace(module, variables, x)
  assert [grp.name for grp in g.groups] == ["a", "c"]  # b's channels reach the sort
  (message,) = g.messages
  assert "`sort`" in message and "graph_zoo.py" in message and "params/b/kernel" in message
  plan = prune.plan(g, criterion="l1", flop_ratio=0.7)
  small_apply, small = plan.apply()
  assert small["params"]["b"]["kernel"].shape[-1] == 8
  want = module.apply(g.masked(variables, plan.kept), x)
  np.testing.assert_allclose(small_apply(small, x), want, atol=1e-5 * np.abs(want).max())


def test_ignore_keeps_a_layers_outputs_and_cuts_its_inputs():
  module, shape = LINEN["vgg11_bn"]
  x = jnp.ones(shape)
  variables = module.init(jax.random.key(0), x)
  g = graph.trace(module, variables, x, ignore=["Conv_7"])
  assert "Conv_7" not in [grp.name for grp in g.groups]
  assert "Conv_6" in [grp.name for grp in g.groups]
  with pytest.raises(ValueError, match="no variable of the model is under"):
    graph.trace(module, variables, x, ignore=["Conv_70"])
