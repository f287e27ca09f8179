"""A PyTorch reference for `python -m benchmarks.bench`: the same CIFAR ResNet's training step.

Used only when PyTorch is installed (`pip install torch`); nothing else in tas_jax imports it.
The network mirrors `tas_jax.models.resnet.ResNet` (CIFAR family) at full width (3x3 stem, basic or
bottleneck blocks, shortcut = 2x2 average pool + 1x1 conv without BN on stride-2 blocks, a 1x1
conv + BN where widths change at stride 1), so the two steps do the same arithmetic: forward in
train mode, cross-entropy, backward, SGD with Nesterov momentum and weight decay. The batch is a
prepared float tensor (NCHW, PyTorch's native layout); the JAX step also gathers and augments
its batch on the device, a small part of its time.
"""

from __future__ import annotations

import os
import torch
from torch import nn

from tas_jax.models import arch as arch_lib, topology


class _Block(nn.Module):
  def __init__(self, cin: int, widths, stride: int, shortcut: str):
    super().__init__()
    kernels = (3, 3) if len(widths) == 2 else (1, 3, 1)
    strides = (stride, 1) if len(widths) == 2 else (1, stride, 1)
    layers, c = [], cin
    for i, (w, k, s) in enumerate(zip(widths, kernels, strides)):
      layers += [nn.Conv2d(c, w, k, s, k // 2, bias=False), nn.BatchNorm2d(w)]
      if i < len(widths) - 1:
        layers.append(nn.ReLU(inplace=True))
      c = w
    self.body = nn.Sequential(*layers)
    if shortcut == "identity":
      self.shortcut = nn.Identity()
    elif shortcut == "pool_conv":
      self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(cin, widths[-1], 1, bias=False))
    else:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, widths[-1], 1, bias=False),
                                    nn.BatchNorm2d(widths[-1]))

  def forward(self, x):
    return torch.relu(self.body(x) + self.shortcut(x))


class CifarResNet(nn.Module):
  def __init__(self, a: arch_lib.Architecture):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(a.input_channels, a.stem_width, 3, 1, 1, bias=False),
                              nn.BatchNorm2d(a.stem_width), nn.ReLU(inplace=True))
    self.blocks = nn.Sequential(*[
        _Block(b.in_width, [c.out_width for c in b.convs], b.stride, b.shortcut)
        for b in topology.of(a).blocks])
    self.classifier = nn.Linear(topology.of(a).output_width, a.num_classes)

  def forward(self, x):
    x = self.blocks(self.stem(x))
    return self.classifier(x.mean((2, 3)))


def make_step(depth: int, batch: int):
  """(step, info): `step()` runs one training step of the CIFAR ResNet-`depth` at `batch` on the
  CPU, with all cores; `info` names the PyTorch version and thread count."""
  torch.manual_seed(0)
  a = arch_lib.cifar_resnet(depth, "bottleneck" if depth in arch_lib.CIFAR_DEPTHS_BOTTLENECK
                            else "basic")
  torch.set_num_threads(os.cpu_count() or 1)
  model = CifarResNet(a).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
  x = torch.randn(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))
  loss_fn = nn.CrossEntropyLoss()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss

  step(), step()  # warm-up
  return step, {"torch_version": torch.__version__, "threads": torch.get_num_threads()}
