"""PyTorch modules of tas_jax networks, built from the same architecture description.

`module(arch)` is the network of `tas_jax.models.networks.build(arch)` in PyTorch, in evaluation
mode the same function (NCHW input, as PyTorch's convs take it), with parameter names from
`tas_jax.interop.torch_layout`: torchvision's for a ResNet, the released RepVGG code's for a RepVGG.
`load(arch, variables)` gives it a tas_jax network's weights. Imports torch: only the export and the
tests reach this module (and `benchmarks/torch_reference.py`).
"""

from __future__ import annotations

from typing import Mapping

from tas_jax.interop import require, torch_layout
from tas_jax.models import repvgg, topology

torch = require("torch", "a PyTorch form of a network")
nn = torch.nn


def _conv(c: topology.Conv, bias: bool = False) -> "nn.Conv2d":
  return nn.Conv2d(c.in_width, c.out_width, c.kernel, c.stride, c.kernel // 2, bias=bias)


class Bottleneck(nn.Module):
  """A basic or bottleneck block with torchvision's attribute names (conv1, bn1, …, downsample);
  `downsample` is TAS's AvgPool2d + conv (+ BN) where the topology says pool_conv."""

  def __init__(self, b: topology.Block):
    super().__init__()
    self.depth = len(b.convs)
    for i, c in enumerate(b.convs, 1):
      setattr(self, f"conv{i}", _conv(c))
      setattr(self, f"bn{i}", nn.BatchNorm2d(c.out_width))
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    p = b.projection
    if p is not None:
      layers = ([nn.AvgPool2d(2)] if b.shortcut == "pool_conv" else []) + [_conv(p)]
      self.downsample = nn.Sequential(*layers, *([nn.BatchNorm2d(p.out_width)] if p.has_bn else []))

  def forward(self, x):
    y = x
    for i in range(1, self.depth + 1):
      y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
      if i < self.depth:
        y = self.relu(y)
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """Stem (+ max-pool on ImageNet), layer1..layerN, global average pool, fc."""

  def __init__(self, a):
    super().__init__()
    topo = topology.of(a)
    self.conv1, self.bn1 = _conv(topo.stem), nn.BatchNorm2d(topo.stem.out_width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1) if topo.stem_pool else nn.Identity()
    for s in range(len(a.stages)):
      setattr(self, f"layer{s + 1}", nn.Sequential(*[Bottleneck(b) for b in topo.stage_blocks(s)]))
    self.num_stages = len(a.stages)
    self.fc = nn.Linear(topo.output_width, a.num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for s in range(1, self.num_stages + 1):
      x = getattr(self, f"layer{s}")(x)
    return self.fc(x.mean((2, 3)))


class _ConvBN(nn.Sequential):
  def __init__(self, c: topology.Conv, kernel: int):
    super().__init__()
    self.add_module(
      "conv", nn.Conv2d(c.in_width, c.out_width, kernel, c.stride, kernel // 2, bias=False)
    )
    self.add_module("bn", nn.BatchNorm2d(c.out_width))


class RepVGGBlock(nn.Module):
  """The released RepVGGBlock's names: rbr_dense, rbr_1x1, rbr_identity (training form) or
  rbr_reparam (deploy form)."""

  def __init__(self, c: topology.Conv, deploy: bool):
    super().__init__()
    self.deploy = deploy
    if deploy:
      self.rbr_reparam = _conv(c, bias=True)
    else:
      self.rbr_dense, self.rbr_1x1 = _ConvBN(c, 3), _ConvBN(c, 1)
      self.rbr_identity = nn.BatchNorm2d(c.out_width) if repvgg.has_identity(c) else None

  def forward(self, x):
    if self.deploy:
      return torch.relu(self.rbr_reparam(x))
    y = self.rbr_dense(x) + self.rbr_1x1(x)
    return torch.relu(y if self.rbr_identity is None else y + self.rbr_identity(x))


class RepVGG(nn.Module):
  """stage0 (one block), stage1..stageN (Sequential), global average pool, linear."""

  def __init__(self, a: repvgg.RepVGGArch, deploy: bool):
    super().__init__()
    convs = repvgg.blocks(a)
    self.num_stages = len(a.stages)
    for s in range(self.num_stages):
      mine = [RepVGGBlock(c, deploy) for c in convs if c.name.startswith(f"stage{s + 1}.")]
      setattr(self, f"stage{s}", mine[0] if s == 0 else nn.Sequential(*mine))
    self.linear = nn.Linear(a.output_width, a.num_classes)

  def forward(self, x):
    for s in range(self.num_stages):
      x = getattr(self, f"stage{s}")(x)
    return self.linear(x.mean((2, 3)))


def module(a, deploy: bool | None = None) -> "nn.Module":
  """The PyTorch module of network `a` (random weights, evaluation mode)."""
  if isinstance(a, repvgg.RepVGGArch):
    return RepVGG(a, a.deploy if deploy is None else deploy).eval()
  return ResNet(a).eval()


def load(a, variables: Mapping, deploy: bool | None = None) -> "nn.Module":
  """The PyTorch module of `a` carrying `variables` ({"params", "batch_stats"} of tas_jax)."""
  m = module(a, deploy)
  state = {k: torch.tensor(v) for k, v in torch_layout.to_state_dict(a, variables, deploy).items()}
  missing, unexpected = m.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith(torch_layout.IGNORED_SUFFIXES)]
  assert not missing and not unexpected, (missing, unexpected)  # the two tables agree
  return m
