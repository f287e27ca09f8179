"""The one walk over a ResNet: every conv, block, stride, spatial size and shortcut of an
architecture.

An `Architecture` lists widths; what they mean — which conv carries a block's stride, the stem,
the max-pool, which shortcut a block gets and whether it has BN — is decided here and nowhere
else. The Flax model (`tas_jax.models.resnet`), the FLOP counter (`tas_jax.ops.flops`), the
baselines and every method's search space read a `Topology`; nothing else walks the network.

Rules (Dong & Yang 2019's networks, as released):
- CIFAR: 3x3 stem, stride 1. ImageNet: 7x7 stem, stride 2, then a 3x3 stride-2 max-pool.
- Basic block: conv_a 3x3 (carries the stride), conv_b 3x3. Bottleneck: conv_a 1x1, conv_b 3x3
  (carries the stride), conv_c 1x1. Every conv is padded by kernel//2 and followed by BN.
- The first block of every stage but the first has stride 2 and a projection shortcut: a 2x2
  average pool, then a 1x1 conv to the block's output width (BN on ImageNet only); or, for an
  architecture with `downsample="strided_conv"` (torchvision's ResNets), a 1x1 conv with stride 2
  and BN. Both see the same input pixels' worth of work: one 1x1 conv at the output resolution.
- A stride-1 block whose input width differs from its output width (a pruned block, or the first
  bottleneck of a stage), or one the architecture lists in `projections`, gets a 1x1 projection,
  with BN when the architecture's `projection_bn`.
- ImageNet networks zero-initialise the last BN of each block's main path.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence

from tas_jax.models.arch import Architecture

SHORTCUTS = ("identity", "pool_conv", "strided_conv", "conv_bn", "conv")


def conv_out_size(size: int, kernel: int, stride: int) -> int:
  """Output side of a conv padded by kernel//2 on each side, as the models build it."""
  pad = kernel // 2
  return (size + 2 * pad - kernel) // stride + 1


@dataclasses.dataclass(frozen=True)
class Conv:
  """One conv of the network (bias-free; BN after it where `has_bn`)."""

  name: str  # layer name shared by the model and the counter: "stage2.block1.conv_a"
  kernel: int
  stride: int
  in_width: int
  out_width: int
  in_size: int  # spatial side of its input (after the 2x2 pool for a pooled projection)
  out_size: int
  has_bn: bool


@dataclasses.dataclass(frozen=True)
class Block:
  """A post-activation residual block: ReLU(main path(x) + shortcut(x))."""

  name: str  # "stage2.block1"
  stage: int
  index: int  # within the stage
  stride: int
  in_width: int
  in_size: int
  convs: tuple[Conv, ...]  # the main path, in order
  shortcut: str  # one of SHORTCUTS
  projection: Optional[Conv]  # the shortcut's 1x1 conv (None for identity)

  @property
  def out_width(self) -> int:
    return self.convs[-1].out_width


@dataclasses.dataclass(frozen=True)
class Topology:
  arch: Architecture
  stem: Conv
  stem_pool: bool  # ImageNet: 3x3 stride-2 max-pool after the stem
  blocks: tuple[Block, ...]
  zero_init_last_bn: bool  # ImageNet: the last BN of each main path starts at zero

  @property
  def output_width(self) -> int:
    """Width of the feature map the classifier reads."""
    return self.blocks[-1].out_width

  def main_convs(self) -> tuple[Conv, ...]:
    """The stem and every main-path conv, in forward order: the convs a pruning method prunes
    (a projection follows its block's last conv)."""
    return (self.stem,) + tuple(c for b in self.blocks for c in b.convs)

  def convs(self) -> tuple[Conv, ...]:
    """Every conv in forward order, projections after their block's main path."""
    out = [self.stem]
    for b in self.blocks:
      out += list(b.convs) + ([b.projection] if b.projection else [])
    return tuple(out)

  def stage_blocks(self, stage: int) -> tuple[Block, ...]:
    return tuple(b for b in self.blocks if b.stage == stage)


def block_layout(block_kind: str, stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(kernels, strides) of a block's main-path convs."""
  if block_kind == "basic":
    return (3, 3), (stride, 1)
  return (1, 3, 1), (1, stride, 1)  # the stride sits on the 3x3 of a bottleneck


def shortcut_kind(
  arch: Architecture, in_width: int, out_width: int, stride: int, block_name: str = ""
) -> str:
  """'identity', 'pool_conv' or 'strided_conv' (stride 2, as `arch.downsample` says), 'conv_bn' or
  'conv' (stride-1 projection)."""
  if stride == 2:
    return arch.downsample
  if in_width != out_width or block_name in arch.projections:
    return "conv_bn" if arch.projection_bn else "conv"
  return "identity"


@functools.cache
def of(arch: Architecture) -> Topology:
  """The topology of `arch` (cached: architectures are frozen and hashable)."""
  imagenet = arch.dataset_kind == "imagenet"
  kernel, stride = (7, 2) if imagenet else (3, 1)
  size = arch.input_size
  stem = Conv(
    "stem",
    kernel,
    stride,
    arch.input_channels,
    arch.stem_width,
    size,
    conv_out_size(size, kernel, stride),
    True,
  )
  size = conv_out_size(stem.out_size, 3, 2) if imagenet else stem.out_size
  blocks, width = [], arch.stem_width
  for s, stage in enumerate(arch.stages):
    for b, widths in enumerate(stage):
      name, block_stride = f"stage{s + 1}.block{b + 1}", (2 if (s > 0 and b == 0) else 1)
      kernels, strides = block_layout(arch.block_kind, block_stride)
      convs, cin, in_size = [], width, size
      for i, (w, k, st) in enumerate(zip(widths, kernels, strides)):
        out = conv_out_size(size, k, st)
        convs.append(Conv(f"{name}.conv_{'abc'[i]}", k, st, cin, w, size, out, True))
        cin, size = w, out
      kind = shortcut_kind(arch, width, widths[-1], block_stride, name)
      projection = None
      if kind == "strided_conv":
        projection = Conv(
          f"{name}.shortcut", 1, 2, width, widths[-1], in_size, conv_out_size(in_size, 1, 2), True
        )
      elif kind != "identity":
        pooled = in_size // 2 if kind == "pool_conv" else in_size
        has_bn = kind == "conv_bn" or (kind == "pool_conv" and imagenet)
        projection = Conv(f"{name}.shortcut", 1, 1, width, widths[-1], pooled, pooled, has_bn)
      blocks.append(Block(name, s, b, block_stride, width, in_size, tuple(convs), kind, projection))
      width = widths[-1]
  return Topology(arch, stem, imagenet, tuple(blocks), zero_init_last_bn=imagenet)


def pruned(
  base: Architecture,
  widths: Sequence[int],
  depths: Sequence[int],
  name: str = "",
  inherits: bool = False,
) -> Architecture:
  """The network of `base` with `widths[i]` channels in its i-th main conv (`main_convs` order)
  and the first `depths[s]` blocks of stage s: what a search extracts and a baseline builds.

  Pruned CIFAR bottleneck networks keep no BN on a stride-1 projection (as released); the others
  do.
  `inherits`: the pruned network takes over the base's weights (PaS), so every shortcut stays what
  it was — the base's projections, with the base's BN flag — whatever the pruned widths.
  """
  topo = of(base)
  convs = topo.main_convs()
  if len(widths) != len(convs):
    raise ValueError(
      f"{len(widths)} widths for the {len(convs)} main convs of {base.name or 'the network'}"
    )
  index = {c.name: i for i, c in enumerate(convs)}
  stages = [[] for _ in base.stages]
  for b in topo.blocks:
    if b.index < depths[b.stage]:
      stages[b.stage].append(tuple(int(widths[index[c.name]]) for c in b.convs))
  projection_bn = not (base.dataset_kind == "cifar" and base.block_kind == "bottleneck")
  projections = ()
  if inherits:
    projection_bn = base.projection_bn
    projections = tuple(
      b.name
      for b in topo.blocks
      if b.stride == 1 and b.projection is not None and b.index < depths[b.stage]
    )
  return Architecture(
    family=base.family,
    num_classes=base.num_classes,
    input_size=base.input_size,
    input_channels=base.input_channels,
    stem_width=int(widths[0]),
    stages=tuple(tuple(s) for s in stages),
    projection_bn=projection_bn,
    name=name,
    projections=projections,
    downsample=base.downsample,
  )
