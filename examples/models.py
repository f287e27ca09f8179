"""Models written as any Flax user would write them, pruned from the command line by tas_jax:

  python -m tas_jax.main --config=configs/demo.py --config.model.module=examples.models:VGG \\
    --config.stage=all --config.pipeline.runs=l1-ce,fpgm-ce

Each follows the call convention tas_jax expects: `__call__(self, x, train: bool)` returning
(batch, num_classes) logits, BatchNorm with `use_running_average=not train`.
"""

import flax.linen as nn

# BatchNorm's running statistics follow the weights at 0.9 (PyTorch's 0.1, tas_jax's ResNets):
# flax's default 0.99 lags behind a short run's last weights — measured on the demo's MobileNetV2
# teacher (225 steps): 63% test accuracy on its running statistics, 80% on the test batch's own
MOMENTUM = 0.9


class VGG(nn.Module):
  """A VGG-style network: 3x3 conv-BN-ReLU stages with max-pools, then an NHWC flatten into a
  two-layer classifier."""

  num_classes: int = 10
  widths: tuple = (16, 32, 32, 64, 64)
  pools: tuple = (0, 2, 4)  # a 2x2 max-pool after these convs
  hidden: int = 64  # the classifier's hidden Dense

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), padding=1, use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(x))
      if i in self.pools:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


class InvertedResidual(nn.Module):
  inp: int
  out: int
  expand: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)
    hidden = self.inp * self.expand
    y = nn.relu6(bn()(nn.Conv(hidden, (1, 1), use_bias=False)(x)))
    y = nn.Conv(hidden, (3, 3), self.stride, padding=1, feature_group_count=hidden, use_bias=False)(
      y
    )
    y = nn.relu6(bn()(y))
    y = bn()(nn.Conv(self.out, (1, 1), use_bias=False)(y))
    return x + y if self.stride == 1 and self.inp == self.out else y


class MobileNetV2(nn.Module):
  """A MobileNetV2-style network: inverted residual blocks with depthwise 3x3 convs."""

  num_classes: int = 10
  blocks: tuple = ((16, 1, 1), (24, 4, 2), (24, 4, 1), (32, 4, 2), (32, 4, 1))

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False)(x)
    x = nn.relu6(nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(x))
    inp = 16
    for out, expand, stride in self.blocks:
      x = InvertedResidual(inp, out, expand, stride)(x, train)
      inp = out
    x = nn.Conv(64, (1, 1))(x)
    x = nn.relu6(nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(x))
    return nn.Dense(self.num_classes)(x.mean((1, 2)))


class ProjectResNet(nn.Module):
  """tas_jax's own CIFAR ResNet (`tas_jax.models.resnet`) handed over as if it were a user's
  model: TAS on its traced channel groups can then be set against TAS on the built-in topology
  (`tests/test_user_model.py`)."""

  depth: int = 14
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    from tas_jax.models import arch, resnet

    a = arch.cifar_resnet(self.depth, num_classes=self.num_classes)
    return resnet.ResNet(a, name="resnet")(x, train)
