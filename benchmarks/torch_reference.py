"""A PyTorch reference for `python -m benchmarks.bench`: the same CIFAR ResNet's training step.

Used only when PyTorch is installed (`pip install torch`). The network is tas_jax's own PyTorch
form of the CIFAR ResNet (`tas_jax.interop.torch_net`, built from the same architecture
description and checked against the Flax model by tests/test_export.py), so the two steps do the
same arithmetic: forward in train mode, cross-entropy, backward, SGD with Nesterov momentum and
weight decay. The batch is a
prepared float tensor (NCHW, PyTorch's native layout); the JAX step also gathers and augments
its batch on the device, a small part of its time.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tas_jax.interop import torch_net
from tas_jax.models import arch as arch_lib


def make_step(depth: int, batch: int):
  """(step, info): `step()` runs one training step of the CIFAR ResNet-`depth` at `batch` on the
  CPU, with all cores; `info` names the PyTorch version and thread count."""
  torch.manual_seed(0)
  a = arch_lib.cifar_resnet(
    depth, "bottleneck" if depth in arch_lib.CIFAR_DEPTHS_BOTTLENECK else "basic"
  )
  torch.set_num_threads(os.cpu_count() or 1)
  model = torch_net.module(a).train()
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
