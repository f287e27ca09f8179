"""Analytic FLOPs and parameters of an architecture, in the TAS convention (spec §1).

FLOPs are multiply-adds: k*k*Cin*Cout*Hout*Wout for every conv (groups = 1 throughout) plus
in*out + out for the classifier; BatchNorm, ReLU and pooling are free. Parameters are conv and
linear weights, linear bias and BatchNorm's two affine vectors (running statistics are not
parameters). The walk over the network mirrors `tas_jax.models.resnet` layer for layer; a test
checks the parameter count against the initialised Flax model and the FLOPs against XLA.
"""

from __future__ import annotations

import dataclasses

from tas_jax.models.arch import Architecture


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv or linear layer as the counter sees it."""
  name: str
  kernel: int
  in_width: int
  out_width: int
  out_size: int          # spatial side of the output map (1 for the classifier)
  has_bn: bool
  flops: int
  params: int


@dataclasses.dataclass(frozen=True)
class Counts:
  flops: int
  params: int
  layers: tuple[Layer, ...]

  @property
  def flops_m(self) -> float:
    return self.flops / 1e6

  @property
  def params_m(self) -> float:
    return self.params / 1e6


def conv_out_size(size: int, kernel: int, stride: int) -> int:
  """Output side of a conv padded by kernel//2 on each side, as the models build it."""
  pad = kernel // 2
  return (size + 2 * pad - kernel) // stride + 1


def _conv(name, size, kernel, stride, cin, cout, has_bn) -> tuple[Layer, int]:
  out = conv_out_size(size, kernel, stride)
  flops = kernel * kernel * cin * cout * out * out
  params = kernel * kernel * cin * cout + (2 * cout if has_bn else 0)
  return Layer(name, kernel, cin, cout, out, has_bn, flops, params), out


def layers(arch: Architecture) -> tuple[Layer, ...]:
  """Every conv and the classifier, in forward order, with its FLOPs and parameters."""
  out: list[Layer] = []
  size = arch.input_size
  if arch.dataset_kind == "cifar":
    layer, size = _conv("stem", size, 3, 1, arch.input_channels, arch.stem_width, True)
    out.append(layer)
  else:
    layer, size = _conv("stem", size, 7, 2, arch.input_channels, arch.stem_width, True)
    out.append(layer)
    size = conv_out_size(size, 3, 2)  # 3x3 stride-2 max-pool, padded by 1
  for s, b, cin, widths, stride in arch.blocks():
    prefix = f"stage{s + 1}.block{b + 1}"
    in_size = size
    if arch.block_kind == "basic":
      kernels, strides = (3, 3), (stride, 1)
    else:  # the stride sits on the 3x3 of a bottleneck
      kernels, strides = (1, 3, 1), (1, stride, 1)
    width = cin
    for i, (w, k, st) in enumerate(zip(widths, kernels, strides)):
      layer, size = _conv(f"{prefix}.conv_{'abc'[i]}", size, k, st, width, w, True)
      out.append(layer)
      width = w
    kind = arch.shortcut_kind(cin, widths[-1], stride)
    if kind != "identity":
      has_bn = kind == "conv_bn" or (kind == "pool_conv" and arch.dataset_kind == "imagenet")
      pooled = in_size // 2 if kind == "pool_conv" else in_size
      layer, _ = _conv(f"{prefix}.shortcut", pooled, 1, 1, cin, widths[-1], has_bn)
      out.append(layer)
  c = arch.output_width
  out.append(Layer("classifier", 1, c, arch.num_classes, 1, False,
                   c * arch.num_classes + arch.num_classes, c * arch.num_classes + arch.num_classes))
  return tuple(out)


def count(arch: Architecture) -> Counts:
  """FLOPs (multiply-adds) and parameters of `arch`."""
  ls = layers(arch)
  return Counts(sum(l.flops for l in ls), sum(l.params for l in ls), ls)
