"""ResNets built from an `Architecture` (spec §1): one module per network family.

`CifarResNet` (3x3 stem, 3 stages, shortcut = pool + 1x1 conv without BN) and `ImageNetResNet`
(7x7 stem + max-pool, 4 stages, shortcut with BN, zero-initialised last BN of each branch) share the
block modules. Every width comes from the architecture, so the same code builds the unpruned teacher,
the network extracted from a search and any user-written description. Layer names follow the FLOP
counter's (`stage2.block1.conv_a`, ...), which lets a test compare them layer by layer.

`bn_axis_name` is for explicit per-device code (the `pmap` mode): BatchNorm then averages its batch
statistics over that mesh axis so that they cover the global batch, as they do under plain `jit`.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tas_jax.models.arch import Architecture

# kaiming-normal, fan_out, gain sqrt(2) (PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'))
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
linear_init = nn.initializers.normal(stddev=0.01)


class ConvBN(nn.Module):
  """k x k conv (no bias, padded by k//2 on each side) with an optional BatchNorm."""
  width: int
  kernel: int = 3
  stride: int = 1
  use_bn: bool = True
  zero_init_bn: bool = False
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    p = self.kernel // 2
    x = nn.Conv(self.width, (self.kernel, self.kernel), (self.stride, self.stride),
                padding=((p, p), (p, p)), use_bias=False, kernel_init=conv_init,
                dtype=self.dtype, name="conv")(x)
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       scale_init=nn.initializers.zeros if self.zero_init_bn else nn.initializers.ones,
                       axis_name=self.bn_axis_name, dtype=self.dtype, name="bn")(x)
    return x


class Shortcut(nn.Module):
  """Projection shortcut: 2x2 average pool (stride 2 only), 1x1 conv, BN where asked."""
  width: int
  pool: bool
  use_bn: bool
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pool:
      x = nn.avg_pool(x, (2, 2), (2, 2))
    return ConvBN(self.width, 1, 1, self.use_bn, bn_axis_name=self.bn_axis_name,
                  dtype=self.dtype, name="proj")(x, train)


class Block(nn.Module):
  """A post-activation residual block: ReLU(branch(x) + shortcut(x)).

  Basic: conv_a (3x3, carries the stride), conv_b (3x3). Bottleneck: conv_a (1x1), conv_b (3x3,
  carries the stride), conv_c (1x1). ReLU after every BN of the branch but the last.
  """
  widths: tuple[int, ...]
  stride: int
  shortcut: str              # Architecture.shortcut_kind(...)
  shortcut_bn_on_pool: bool  # ImageNet: the stride-2 projection has BN
  zero_init_last_bn: bool
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    kernels = (3, 3) if len(self.widths) == 2 else (1, 3, 1)
    strides = (self.stride, 1) if len(self.widths) == 2 else (1, self.stride, 1)
    y = x
    last = len(self.widths) - 1
    for i, (w, k, s) in enumerate(zip(self.widths, kernels, strides)):
      y = ConvBN(w, k, s, zero_init_bn=self.zero_init_last_bn and i == last,
                 bn_axis_name=self.bn_axis_name, dtype=self.dtype, name=f"conv_{'abc'[i]}")(y, train)
      if i < last:
        y = nn.relu(y)
    if self.shortcut == "identity":
      residual = x
    else:
      use_bn = self.shortcut == "conv_bn" or (self.shortcut == "pool_conv" and self.shortcut_bn_on_pool)
      residual = Shortcut(self.widths[-1], pool=self.shortcut == "pool_conv", use_bn=use_bn,
                          bn_axis_name=self.bn_axis_name, dtype=self.dtype, name="shortcut")(x, train)
    return nn.relu(y + residual)


def _stages(arch: Architecture, x, train, bn_axis_name, dtype, imagenet: bool):
  for s, b, cin, widths, stride in arch.blocks():
    x = Block(widths, stride, arch.shortcut_kind(cin, widths[-1], stride),
              shortcut_bn_on_pool=imagenet, zero_init_last_bn=imagenet,
              bn_axis_name=bn_axis_name, dtype=dtype, name=f"stage{s + 1}.block{b + 1}")(x, train)
  return x


def _head(arch: Architecture, x):
  x = jnp.mean(x, axis=(1, 2))
  return nn.Dense(arch.num_classes, kernel_init=linear_init, bias_init=nn.initializers.zeros,
                  dtype=jnp.float32, name="classifier")(x.astype(jnp.float32))


class _ResNet(nn.Module):
  """Stem, stages, head; the family's subclass says which stem and shortcut rules apply."""
  arch: Architecture
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  imagenet: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel, stride = (7, 2) if self.imagenet else (3, 1)
    x = nn.relu(ConvBN(self.arch.stem_width, kernel, stride, bn_axis_name=self.bn_axis_name,
                       dtype=self.dtype, name="stem")(x.astype(self.dtype), train))
    if self.imagenet:
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = _stages(self.arch, x, train, self.bn_axis_name, self.dtype, imagenet=self.imagenet)
    return _head(self.arch, x)


class CifarResNet(_ResNet):
  """CIFAR ResNet (basic or bottleneck blocks) of any widths and kept depths."""
  imagenet: ClassVar[bool] = False


class ImageNetResNet(_ResNet):
  """ImageNet ResNet-18/50 (and any pruned version of them)."""
  imagenet: ClassVar[bool] = True


def build(arch: Architecture, bn_axis_name: Optional[str] = None,
          dtype: jnp.dtype = jnp.float32) -> nn.Module:
  """The Flax module for `arch`'s family."""
  cls = CifarResNet if arch.dataset_kind == "cifar" else ImageNetResNet
  return cls(arch, bn_axis_name=bn_axis_name, dtype=dtype)


def dummy_input(arch: Architecture, batch: int = 1) -> jax.ShapeDtypeStruct:
  """The NHWC input shape the network expects."""
  return jnp.zeros((batch, arch.input_size, arch.input_size, arch.input_channels), jnp.float32)


def inherit_first_channels(student, teacher):
  """The paper's "w/ Init": every student array takes the leading block of the teacher's array at
  the same path (the first k filters, the first k input channels, BN vectors, classifier rows).

  Works for `params` and `batch_stats` trees of two networks of one family: layer names are shared
  (a dropped block is simply absent from the student). A student array without a counterpart of at
  least its size (a projection the pruning introduced) keeps its own initial value. Returns
  (tree, number of arrays inherited).
  """
  flat_teacher = dict(jax.tree_util.tree_flatten_with_path(teacher)[0])
  inherited = 0

  def take(path, value):
    nonlocal inherited
    source = flat_teacher.get(path)
    if source is None or source.ndim != value.ndim or any(
        s < v for s, v in zip(source.shape, value.shape)):
      return value
    inherited += 1
    # a copy: the train step donates the student's buffers, the teacher's must survive
    return jnp.array(source[tuple(slice(0, n) for n in value.shape)], dtype=value.dtype, copy=True)

  tree = jax.tree_util.tree_map_with_path(take, student)
  return tree, inherited
