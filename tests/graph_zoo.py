"""Small Flax models of the architectures people prune, for the traced-graph tests: each exercises
one kind of channel coupling (tests/test_graph.py). Widths are tiny; structure is what matters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from examples.models import VGG, InvertedResidual  # what a user writes


class VGG11(VGG):
  """VGG-11 with BN: 8 convs in 5 stages, max-pools, then NHWC flatten → Dense → Dense (the
  example's VGG at VGG-11's depth; convs padded by 1 as torchvision's, so the Torch-Pruning twin
  computes the same)."""

  widths: tuple = (8, 16, 16, 16, 24, 24, 24, 24)
  pools: tuple = (0, 1, 3, 5)  # 32x32 in, a 2x2x24 map flattened
  hidden: int = 32


class MobileNetV2(nn.Module):
  """MobileNetV2: depthwise 3x3 convs in inverted residual blocks, linear bottlenecks."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu6(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3), 2, padding=1)(x)))
    inp = 8
    for out, expand, stride in ((8, 1, 1), (12, 4, 2), (12, 4, 1), (16, 4, 2), (16, 4, 1)):
      x = InvertedResidual(inp, out, expand, stride)(x, train)
      inp = out
    x = nn.relu6(nn.BatchNorm(use_running_average=not train)(nn.Conv(32, (1, 1))(x)))
    return nn.Dense(10)(x.mean((1, 2)))


class DenseBlock(nn.Module):
  """A DenseNet block: every layer's output concatenated to its input."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3))(x)
    for _ in range(3):
      y = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
      y = nn.Conv(6, (3, 3))(y)
      x = jnp.concatenate([x, y], axis=-1)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(10)(x.mean((1, 2)))


class SEResNet(nn.Module):
  """Two SE-ResNet basic blocks: squeeze-and-excitation gates (a sigmoid per channel, multiplied
  into the residual branch), identity shortcuts."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = lambda: nn.BatchNorm(use_running_average=not train)
    x = nn.relu(bn()(nn.Conv(16, (3, 3), use_bias=False)(x)))
    for _ in range(2):
      y = nn.relu(bn()(nn.Conv(16, (3, 3), use_bias=False)(x)))
      y = bn()(nn.Conv(16, (3, 3), use_bias=False)(y))
      s = nn.relu(nn.Dense(4)(y.mean((1, 2))))
      s = nn.sigmoid(nn.Dense(16)(s))
      x = nn.relu(x + y * s[:, None, None, :])
    return nn.Dense(10)(x.mean((1, 2)))


class MaskedLayerNorm(nn.Module):
  """LayerNorm whose statistics are over the channels `mask` keeps: the original model computed on
  the kept channels only (the reference for a group that crosses a LayerNorm)."""

  mask: jnp.ndarray
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    n = self.mask.sum()
    mean = (x * self.mask).sum(-1, keepdims=True) / n
    var = (((x - mean) * self.mask) ** 2).sum(-1, keepdims=True) / n
    return ((x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias) * self.mask


class ConvNeXt(nn.Module):
  """A stem and two ConvNeXt blocks: depthwise 7x7, LayerNorm, a 4x MLP with GELU, layer scale,
  residual. `ln_mask` swaps in the masked LayerNorm (the reference)."""

  width: int = 16
  ln_mask: object = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.width, (2, 2), 2, name="stem")(x)
    for b in range(2):
      y = nn.Conv(self.width, (7, 7), feature_group_count=self.width, name=f"dw{b}")(x)
      if self.ln_mask is None:
        y = nn.LayerNorm(epsilon=1e-6, name=f"ln{b}")(y)
      else:
        y = MaskedLayerNorm(self.ln_mask, name=f"ln{b}")(y)
      y = nn.gelu(nn.Dense(4 * self.width, name=f"pw{b}a")(y))
      y = nn.Dense(self.width, name=f"pw{b}b")(y)
      gamma = self.param(f"gamma{b}", nn.initializers.constant(0.5), (self.width,))
      x = x + gamma * y
    return nn.Dense(10, name="head")(x.mean((1, 2)))


class UNet(nn.Module):
  """A two-level U-Net: encoder, bottleneck, transposed-conv upsampling, skip concatenation."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    def block(x, w):
      x = nn.relu(nn.GroupNorm(num_groups=2)(nn.Conv(w, (3, 3))(x)))
      return nn.relu(nn.Conv(w, (3, 3))(x))

    e1 = block(x, 8)
    e2 = block(nn.max_pool(e1, (2, 2), (2, 2)), 16)
    b = block(nn.max_pool(e2, (2, 2), (2, 2)), 24)
    u2 = nn.ConvTranspose(16, (2, 2), (2, 2))(b)
    d2 = block(jnp.concatenate([e2, u2], -1), 16)
    u1 = nn.ConvTranspose(8, (2, 2), (2, 2))(d2)
    d1 = block(jnp.concatenate([e1, u1], -1), 8)
    return nn.Conv(3, (1, 1))(d1)


class TransformerMLP(nnx.Module):
  """A pre-LN Transformer MLP block in Flax NNX: tokens (B, N, D) → D + MLP(LN(x)), then a head
  on the mean token. The hidden width is the group."""

  def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs) -> None:
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.fc1 = nnx.Linear(dim, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, dim, rngs=rngs)
    self.head = nnx.Linear(dim, 10, rngs=rngs)

  def __call__(self, x):
    x = x + self.fc2(nnx.gelu(self.fc1(self.norm(x))))
    return self.head(x.mean(1))


class Unknown(nn.Module):
  """A model with an op the tracer has no rule for (a sort over the channels of one branch)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(8, (3, 3), name="a")(x))
    y = jnp.sort(nn.Conv(8, (3, 3), name="b")(x), axis=-1)  # no rule for `sort`
    z = nn.relu(nn.Conv(8, (3, 3), name="c")(x))
    return nn.Dense(10, name="head")(jnp.concatenate([y, z], -1).mean((1, 2)))
