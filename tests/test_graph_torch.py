"""Side by side with Torch-Pruning (DepGraph): torch twins of the zoo's VGG-11-BN and MobileNetV2
with the same weights. For the channels tas_jax's L1 plan removes, Torch-Pruning's
`DependencyGraph` groups — rooted at the same producer, given the same indices — cut the same
layers, and the two pruned models have equal parameter counts and logits."""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="launch/setup.sh installs torch for these tests")
tp = pytest.importorskip("torch_pruning", reason="launch/setup.sh installs torch-pruning")
from torch import nn  # noqa: E402

from tas_jax import graph, prune  # noqa: E402
from tests import graph_zoo as zoo  # noqa: E402
from tests.test_graph import randomised  # noqa: E402


class TorchVGG11(nn.Module):
  def __init__(self, m: zoo.VGG11) -> None:
    super().__init__()
    self.pools, c = m.pools, 3
    for i, w in enumerate(m.widths):
      setattr(self, f"Conv_{i}", nn.Conv2d(c, w, 3, padding=1, bias=False))
      setattr(self, f"BatchNorm_{i}", nn.BatchNorm2d(w))
      c = w
    self.n = len(m.widths)
    self.Dense_0, self.Dense_1 = nn.Linear(c * 4, 32), nn.Linear(32, 10)

  def forward(self, x):
    for i in range(self.n):
      x = torch.relu(getattr(self, f"BatchNorm_{i}")(getattr(self, f"Conv_{i}")(x)))
      if i in self.pools:
        x = nn.functional.max_pool2d(x, 2)
    return self.Dense_1(torch.relu(self.Dense_0(torch.flatten(x, 1))))


class TorchInvertedResidual(nn.Module):
  def __init__(self, inp, out, expand, stride) -> None:
    super().__init__()
    hidden = inp * expand
    self.Conv_0, self.BatchNorm_0 = nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
    self.Conv_1 = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
    self.BatchNorm_1 = nn.BatchNorm2d(hidden)
    self.Conv_2, self.BatchNorm_2 = nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)
    self.residual = stride == 1 and inp == out

  def forward(self, x):
    y = nn.functional.relu6(self.BatchNorm_0(self.Conv_0(x)))
    y = nn.functional.relu6(self.BatchNorm_1(self.Conv_1(y)))
    y = self.BatchNorm_2(self.Conv_2(y))
    return x + y if self.residual else y


class TorchMobileNetV2(nn.Module):
  def __init__(self) -> None:
    super().__init__()
    self.Conv_0, self.BatchNorm_0 = nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8)
    inp = 8
    for i, (out, expand, stride) in enumerate(
      ((8, 1, 1), (12, 4, 2), (12, 4, 1), (16, 4, 2), (16, 4, 1))
    ):
      setattr(self, f"InvertedResidual_{i}", TorchInvertedResidual(inp, out, expand, stride))
      inp = out
    self.Conv_1, self.BatchNorm_1 = nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32)
    self.Dense_0 = nn.Linear(32, 10)

  def forward(self, x):
    x = nn.functional.relu6(self.BatchNorm_0(self.Conv_0(x)))
    for i in range(5):
      x = getattr(self, f"InvertedResidual_{i}")(x)
    x = nn.functional.relu6(self.BatchNorm_1(self.Conv_1(x)))
    return self.Dense_0(x.mean((2, 3)))


def load(model: nn.Module, variables: dict, flatten=None) -> None:
  """Flax variables into the twin, module by module (`flatten`: (name, C, H, W) of a Dense that
  reads an NHWC flatten, whose rows become NCHW columns)."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  for name, mod in model.named_modules():
    path = name.split(".")
    p, s = _at(params, path), _at(stats, path)
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    if isinstance(mod, nn.Conv2d):
      mod.weight.data = t(np.transpose(p["kernel"], (3, 2, 0, 1)))
    elif isinstance(mod, nn.Linear):
      kernel = np.asarray(p["kernel"])
      if flatten and flatten[0] == name:
        _, c, h, w = flatten
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
      mod.weight.data = t(kernel.T)
    elif isinstance(mod, nn.BatchNorm2d):
      mod.weight.data, mod.running_mean.data = t(p["scale"]), t(s["mean"])
      mod.running_var.data = t(s["var"])
    else:
      continue
    if getattr(mod, "bias", None) is not None:
      mod.bias.data = t(p["bias"])


def _at(tree, path):
  for k in path:
    tree = tree.get(k, {}) if isinstance(tree, dict) else {}
  return tree


TWINS = {
  "vgg11_bn": (zoo.VGG11(), TorchVGG11(zoo.VGG11()), (2, 32, 32, 3), ("Dense_0", 24, 2, 2)),
  "mobilenet_v2": (zoo.MobileNetV2(), TorchMobileNetV2(), (2, 16, 16, 3), None),
}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_same_cut_as_torch_pruning(name):
  module, twin, shape, flatten = TWINS[name]
  x = jax.random.normal(jax.random.key(1), shape)
  variables = randomised(module.init(jax.random.key(0), x))
  load(twin, variables, flatten)
  twin.eval()
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    np.testing.assert_allclose(twin(xt).numpy(), module.apply(variables, x), rtol=1e-4, atol=1e-4)

  g = graph.trace(module, variables, x, train=False)
  plan = prune.plan(g, criterion="l1", flop_ratio=0.5)
  small_apply, small = plan.apply()
  dg = tp.DependencyGraph().build_dependency(twin, example_inputs=xt[:1], verbose=False)
  names = {m: n for n, m in twin.named_modules()}
  for group in g.groups:
    removed = [j for j in range(group.size) if j not in set(plan.kept[group.name])]
    if not removed:
      continue
    root = twin.get_submodule(group.name.replace("/", "."))
    linear = isinstance(root, nn.Linear)
    cut = tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels
    tp_group = dg.get_pruning_group(root, cut, idxs=removed)
    ours = {"/".join(m.path.split("/")[1:-1]).replace("/", ".") for m in group.members}
    theirs = {
      names[dep.target.module]
      for dep, _ in tp_group
      if isinstance(dep.target.module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
    }
    assert ours == theirs, (group.name, ours ^ theirs)
    tp_group.prune()
  for name_, mod in twin.named_modules():  # every layer cut to the same shape
    if isinstance(mod, (nn.Conv2d, nn.Linear)):
      kernel = _at(small["params"], name_.split("."))["kernel"]
      assert mod.weight.shape[0] == kernel.shape[-1]
  n_torch = sum(p.numel() for p in twin.parameters())
  assert n_torch == g.params(plan.kept) < g.params()
  with torch.no_grad():
    got = twin(xt).numpy()
  np.testing.assert_allclose(got, small_apply(small, x), rtol=1e-4, atol=1e-4)
