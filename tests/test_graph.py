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
from tas_jax.models import channels, networks, repvgg
from tests import graph_zoo as zoo


def randomised(variables, seed=0):
  """Every variable random, kernels at 1/sqrt(fan-in) and running variances positive: zeroed
  channels then differ from kept ones everywhere, running statistics matter, and activations keep
  their scale through the network."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    r = jax.random.normal(k, x.shape, x.dtype)
    if path_name(path).endswith("var"):
      r = 0.5 + jnp.abs(r)
    elif x.ndim > 1:
      r = r / np.sqrt(np.prod(x.shape[:-1]))
    out.append(r)
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
  "unknown_op": (zoo.Unknown(), (2, 6, 6, 3)),
}
ZOO = sorted(LINEN) + ["transformer_mlp_nnx"]


@pytest.fixture(scope="module", params=ZOO)
def pruned(request):
  """(name, original(variables, x), variables, x, graph, L1 plan at 50% of the MACs, pruned apply,
  pruned variables) of every model of the zoo."""
  name = request.param
  if name == "transformer_mlp_nnx":
    model = zoo.TransformerMLP(16, 64, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    g = graph.trace(model, x)
    variables = g.adapter.variables
  else:
    module, shape = LINEN[name]
    x = jax.random.normal(jax.random.key(1), shape)
    variables = randomised(module.init(jax.random.key(0), x))
    g = graph.trace(module, variables, x, train=False)
  plan = prune.plan(g, criterion="l1", flop_ratio=0.5)
  small_apply, small = plan.apply()
  return name, g.adapter.apply, variables, x, g, plan, small_apply, small


def test_pruned_equals_masked_original(pruned):
  name, original, variables, x, g, plan, small_apply, small = pruned
  got = np.asarray(small_apply(small, x))
  if name == "convnext":  # the residual group crosses the LayerNorms: the kept-channel reference
    (chain,) = [grp for grp in g.groups if grp.normalized]
    assert chain.name == "stem"
    mask = np.zeros(chain.size, np.float32)
    mask[plan.kept["stem"]] = 1
    reference = zoo.ConvNeXt(ln_mask=jnp.asarray(mask))
    want = np.asarray(reference.apply(g.masked(variables, plan.kept), x))
  else:  # no reduction over channels sees a cut group: zeroing is exact
    assert not any(grp.normalized for grp in g.groups)
    want = np.asarray(original(g.masked(variables, plan.kept), x))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
  removed = sum(grp.size - len(plan.kept[grp.name]) for grp in g.groups)
  assert removed > 0


def test_pruned_macs_agree_with_xla(pruned):
  name, original, variables, x, g, plan, small_apply, small = pruned
  # every conv and matmul counted as XLA counts it: exactly (XLA: 2 flops per multiply-add)
  assert 2 * g.macs() == site_flops(g)
  # the whole compiled model: XLA leaves out the taps over padding and adds element-wise ops (BN,
  # activations, adds, pooling, LayerNorm), which the convention leaves out: within 35% here
  for fn, v, kept in ((original, variables, None), (small_apply, small, plan.kept)):
    assert 0.65 <= xla_flops(fn, v, x) / (2 * g.macs(kept)) <= 1.35
  assert g.macs(plan.kept) <= 0.5 * g.macs()
  assert g.params(plan.kept) < g.params()
  leaves = jax.tree.leaves(small)
  assert sum(int(np.size(a)) for a, p in zip(leaves, g.is_param) if p) == g.params(plan.kept)


def test_pruned_differentiates_and_exports(pruned):
  name, original, variables, x, g, plan, small_apply, small = pruned
  grads = jax.grad(lambda v: jnp.sum(small_apply(v, x) ** 2))(small)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(grads))
  exported = jax.export.export(jax.jit(small_apply))(small, x)
  want = np.asarray(jax.jit(small_apply)(small, x))
  np.testing.assert_allclose(exported.call(small, x), want, atol=1e-6 * np.abs(want).max())


def test_nnx_pruned_module_and_untouched_original():
  model = zoo.TransformerMLP(16, 64, nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  before = model(x)
  g = graph.trace(model, x)
  (hidden,) = g.groups  # the tokens' width is the model's input: only the hidden width is free
  assert hidden.name == "fc1" and hidden.size == 64
  plan = prune.plan(g, criterion="fpgm", flop_ratio=0.5)
  small_apply, small = plan.apply()
  assert plan.module.fc1.out_features == len(plan.kept["fc1"]) < 64
  np.testing.assert_allclose(plan.module(x), small_apply(small, x), atol=1e-6)
  np.testing.assert_array_equal(model(x), before)  # the original is untouched


def test_unknown_op_is_named_and_its_channels_kept():
  module = zoo.Unknown()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  g = graph.trace(module, module.init(jax.random.key(0), x), x)
  assert [grp.name for grp in g.groups] == ["a", "c"]  # b's channels reach the sort
  (message,) = g.messages
  line = 1 + open(zoo.__file__).read().split("\n").index(
    '    y = jnp.sort(nn.Conv(8, (3, 3), name="b")(x), axis=-1)  # no rule for `sort`'
  )
  assert message == (
    f"tas_jax.graph: no rule for `sort` ({zoo.__file__}:{line}); the "
    "channels it touches are not cut: params/b/bias, params/b/kernel, params/head/kernel"
  )
  small = g.cut(g.adapter.variables, prune.plan(g, flop_ratio=0.5).kept)
  assert small["params"]["b"]["kernel"].shape[-1] == 8


def test_ignore_keeps_a_layers_outputs_and_cuts_its_inputs():
  module, shape = LINEN["vgg11_bn"]
  x = jnp.ones(shape)
  variables = module.init(jax.random.key(0), x)
  g = graph.trace(module, variables, x, ignore=["Conv_7"])
  assert "Conv_7" not in [grp.name for grp in g.groups]
  assert "Conv_6" in [grp.name for grp in g.groups]
  with pytest.raises(ValueError, match="no variable of the model is under"):
    graph.trace(module, variables, x, ignore=["Conv_70"])


@pytest.mark.parametrize("name", ["resnet20", "imagenet_resnet50", "resnet18_tv", "repvgg_a0"])
def test_builtin_networks_traced_groups_equal_the_topologys(name):
  """The groups traced from the Flax module equal the groups models/channels.py derives from the
  topology, channel for channel. A RepVGG is compared in deploy form, the form it is cut in: in
  training form its identity branches add a block's input to its output, which couples each
  stage's blocks into one chain (checked below)."""
  arch = networks.resolve(name)
  lay = channels.of(arch)
  g, names = channels.traced(arch)
  assert len(g.groups) == len(lay.groups)
  assert sorted(names.values()) == sorted(t.name for t in g.groups)
  for group in lay.groups:
    t = g.group(names[group.name])
    assert t.size == group.size
    assert set(t.producer_paths) == {
      channels.producer_path(arch, c) for c in lay.producers(group.name)
    }
    for m in t.members:  # channel j is index j of every member (conv, BN, classifier)
      assert m.indices == tuple((j,) for j in range(group.size)), (group.name, m.path)
    consumers = {m.path for m in t.members} - set(t.producer_paths)
    readers = [c for c in channels.convs(arch) if lay.conv_groups[c.name][0] == group.name]
    for c in readers:
      assert channels.producer_path(arch, c) in consumers
    assert ("params/classifier/kernel" in consumers) == (group.name == lay.head_group)
  if isinstance(arch, repvgg.RepVGGArch):
    module = networks.build(arch)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, False))
    chains = graph.trace(module, variables, x, train=False).groups
    assert [c.name for c in chains] == [f"stage{s}.block1/dense/conv" for s in range(1, 6)]
    assert [c.size for c in chains] == [stage[0] for stage in arch.stages]


def test_builtin_cut_equals_masked_network():
  """The built-in surgery is the graph's cut: a ResNet-20 with random channels removed computes
  what the original computes with them zeroed."""
  arch = networks.resolve("resnet20")
  module = networks.build(arch)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = randomised(module.init(jax.random.key(0), x, False))
  rng = np.random.default_rng(0)
  kept = {
    g.name: sorted(rng.choice(g.size, g.size // 2, replace=False).tolist())
    for g in channels.of(arch).groups
  }
  pruned, small = channels.cut(arch, variables, kept)
  g, names = channels.traced(arch)
  masked = g.masked(variables, {names[k]: v for k, v in kept.items()})
  want = module.apply(masked, x, train=False)
  got = networks.build(pruned).apply(small, x, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_the_docs_example_runs_as_written(capsys):
  """The "Pruning your own Flax model" guide's example, executed as written: it prints what the
  guide says."""
  import os
  import re

  root = os.path.dirname(os.path.dirname(__file__))
  page = open(os.path.join(root, "docs", "guides", "own-model.md")).read()
  blocks = re.findall(r"```python\n((?:(?!```).)*?)```\n\nprints\n\n```\n(.*?)```", page, re.S)
  (code, printed), *_ = [b for b in blocks if "tas_jax.graph.trace(" in b[0]]
  exec(code, {})  # noqa: S102 — the guide's own lines
  assert capsys.readouterr().out == printed


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1,) * (x.ndim - 2), "SAME", dimension_numbers=None)


def _nhwc(x, k):
  spec = ("NHWC", "HWIO", "NHWC") if x.ndim == 4 else ("NWC", "WIO", "NWC")
  return jax.lax.conv_general_dilated(x, k, (1,) * (x.ndim - 2), "SAME", dimension_numbers=spec)


def _concat_twice(v, x):  # Torch-Pruning #146: the same value concatenated twice
  h = jax.nn.relu(_nhwc(x, v["a"]))
  return _nhwc(jnp.concatenate([h, h], -1), v["b"]).mean((1, 2))


def _chunks(v, x):  # #147: a conv's output split in two halves, swapped and concatenated
  first, second = jnp.split(jax.nn.relu(_nhwc(x, v["a"])), 2, axis=-1)
  return _nhwc(jnp.concatenate([second, first * 2], -1), v["b"]).mean((1, 2))


def _conv1d_flatten(v, x):  # #451: Conv1d, then a flatten into a Dense
  h = jax.nn.relu(_nhwc(x, v["a"]))
  return h.reshape(h.shape[0], -1) @ v["dense"]


def _dense_reshape_conv(v, x):  # #125: Dense → reshape to a map → conv
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ v["dense"]).reshape(x.shape[0], 4, 4, -1)
  return _nhwc(h, v["b"]).mean((1, 2))


def _one_channel(v, x):  # #179: a conv with a single output channel
  h = jax.nn.relu(_nhwc(x, v["a"]))
  return _nhwc(jax.nn.relu(_nhwc(h, v["one"])), v["b"]).mean((1, 2))


def _scanned(v, x):  # stacked layers under lax.scan: a hidden width shared by every iteration
  def layer(h, w):
    return h + jax.nn.relu(h @ w["up"]) @ w["down"], None

  h, _ = jax.lax.scan(layer, jax.nn.relu(x @ v["in"]), v["layers"])
  return h @ v["out"]


def _transpose_slices(v, x):  # NCHW via a transpose, the two halves sliced and added
  h = jnp.transpose(jax.nn.relu(_nhwc(x, v["a"])), (0, 3, 1, 2))
  c = h.shape[1] // 2
  h = jnp.transpose(h[:, :c] + h[:, c:], (0, 2, 3, 1))
  return _nhwc(h, v["b"]).mean((1, 2))


def _param(key, shape):
  return jax.random.normal(key, shape) / np.sqrt(np.prod(shape[:-1]))


REGRESSIONS = {
  "concat_twice": (_concat_twice, {"a": (3, 3, 3, 6), "b": (3, 3, 12, 4)}, (2, 6, 6, 3)),
  "chunks": (_chunks, {"a": (3, 3, 3, 8), "b": (3, 3, 8, 4)}, (2, 6, 6, 3)),
  "conv1d_flatten": (_conv1d_flatten, {"a": (3, 2, 6), "dense": (30, 4)}, (2, 5, 2)),
  "dense_reshape_conv": (_dense_reshape_conv, {"dense": (12, 48), "b": (3, 3, 3, 4)}, (2, 12)),
  "one_channel": (
    _one_channel,
    {"a": (3, 3, 3, 6), "one": (3, 3, 6, 1), "b": (3, 3, 1, 4)},
    (2, 6, 6, 3),
  ),
  "transpose_slices": (_transpose_slices, {"a": (3, 3, 3, 8), "b": (3, 3, 4, 4)}, (2, 6, 6, 3)),
  "scan": (
    _scanned,
    {"in": (5, 8), "layers": {"up": (3, 8, 16), "down": (3, 16, 8)}, "out": (8, 4)},
    (2, 5),
  ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions_from_torch_pruning_issues(name):
  fn, shapes, x_shape = REGRESSIONS[name]
  leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  keys = jax.random.split(jax.random.key(0), len(leaves) + 1)
  v = jax.tree_util.tree_unflatten(treedef, [_param(k, s) for k, s in zip(keys, leaves)])
  x = jax.random.normal(keys[-1], x_shape)
  g = graph.trace(fn, v, x)
  sizes = {grp.name: grp.size for grp in g.groups}
  rng = np.random.default_rng(1)
  kept = {
    grp.name: sorted(rng.choice(grp.size, max(1, grp.size // 2), replace=False).tolist())
    for grp in g.groups
  }
  small_apply, small, _ = g.prune(kept)
  want = fn(g.masked(v, kept), x)
  np.testing.assert_allclose(small_apply(small, x), want, atol=1e-5 * np.abs(want).max())
  if name == "concat_twice":  # channel j is rows j and 6 + j of the consumer
    assert sizes == {"a": 6}
    (consumer,) = [m for m in g.group("a").members if m.path == "b"]
    assert consumer.indices == tuple((j, 6 + j) for j in range(6))
  elif name == "chunks":  # the halves keep the same positions: 4 channels of 2 rows each
    assert sizes == {"a": 4} and small["b"].shape[2] == 2 * len(kept["a"])
  elif name == "conv1d_flatten":  # NWC flatten: channel c is rows 6p + c
    (rows,) = [m for m in g.group("a").members if m.path == "dense"]
    assert rows.indices[1] == (1, 7, 13, 19, 25)
  elif name == "dense_reshape_conv":  # a Dense reshaped into a map: its columns are pixels and
    assert sizes == {}  # channels at once, which the trace does not split: left alone
  elif name == "one_channel":  # a 1-channel conv has nothing to cut: no group, its shape stays
    assert sizes == {"a": 6} and small["one"].shape == (3, 3, 3, 1)
  elif name == "transpose_slices":  # channel j of the sum is a's outputs j and 4 + j
    (a,) = [m for m in g.group("a").members if m.path == "a"]
    assert sizes == {"a": 4} and a.indices == tuple((j, 4 + j) for j in range(4))
  elif name == "scan":  # the hidden width and the carried width, each cut in every layer alike
    assert sizes == {"in": 8, "layers": 16}
    assert small["layers"]["up"].shape == (3, 4, 8) and small["layers"]["down"].shape == (3, 8, 4)


def test_plan_to_a_parameter_target_with_a_uniform_ratio():
  module, shape = LINEN["se_resnet"]
  x = jnp.ones(shape)
  g = graph.trace(module, randomised(module.init(jax.random.key(0), x)), x)
  plan = prune.plan(g, criterion="random", param_ratio=0.4, ranking="uniform")
  assert g.params(plan.kept) <= 0.4 * g.params()
  fractions = {round(len(plan.kept[grp.name]) / grp.size, 1) for grp in g.groups if grp.size >= 8}
  assert len(fractions) == 1, fractions  # the same share of every group
  with pytest.raises(ValueError, match="one of flop_ratio= or param_ratio="):
    prune.plan(g, flop_ratio=0.5, param_ratio=0.5)
  with pytest.raises(ValueError, match="criterion must be one of"):
    prune.plan(g, criterion="taylor", flop_ratio=0.5)


def test_grouped_conv_loses_whole_groups_and_remat_is_followed():
  """ResNeXt's grouped 3x3 (4 groups of 4 channels): a channel of the trace is a whole feature
  group — its 4 inputs, the producing conv's 4 outputs and the grouped conv's 4 outputs — so a cut
  leaves fewer groups of the same size. The block runs under `nn.remat` (a `remat2` jaxpr)."""
  import flax.linen as nn

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Conv(16, (1, 1), name="reduce")(x))
      h = nn.relu(nn.Conv(16, (3, 3), feature_group_count=4, name="grouped")(h))
      return nn.Dense(5, name="head")(nn.Conv(8, (1, 1), name="expand")(h).mean((1, 2)))

  module = nn.remat(Block)()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  variables = randomised(module.init(jax.random.key(0), x))
  g = graph.trace(module, variables, x)
  assert {grp.name: grp.size for grp in g.groups} == {"reduce": 4, "expand": 8}
  (reduce,) = [m for m in g.group("reduce").members if m.path == "params/reduce/kernel"]
  assert reduce.indices[1] == (4, 5, 6, 7)
  kept = {"reduce": [0, 2], "expand": [1, 3, 5, 7]}
  small_apply, small, _ = g.prune(kept)
  assert small["params"]["grouped"]["kernel"].shape == (3, 3, 4, 8)  # 2 groups of 4
  want = module.apply(g.masked(variables, kept), x)
  np.testing.assert_allclose(small_apply(small, x), want, atol=1e-5 * np.abs(want).max())
