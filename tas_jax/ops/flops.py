"""Analytic FLOPs and parameters of an architecture, in the TAS convention (Dong & Yang 2019's
networks, as released).

FLOPs are multiply-adds: k*k*Cin*Cout*Hout*Wout for every conv (groups = 1 throughout) plus
in*out + out for the classifier; BatchNorm, ReLU and pooling are free. Parameters are conv and
linear weights, linear bias and BatchNorm's two affine vectors (running statistics are not
parameters). The layers are `tas_jax.models.topology`'s, the ones the model builds; a test checks
the parameter count against the initialised Flax model and the FLOPs against XLA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from tas_jax.models import channels, repvgg, topology, user


@dataclasses.dataclass(frozen=True)
class Layer:
  """One conv or linear layer as the counter sees it."""

  name: str
  kernel: int
  in_width: int
  out_width: int
  out_size: int  # spatial side of the output map (1 for the classifier)
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


def conv_flops(kernel, in_width, out_width, out_size):
  """Multiply-adds of one conv; the widths may be traced values (the search's cost)."""
  return kernel * kernel * in_width * out_width * out_size**2


def flops_at_widths(arch, widths: Callable[[topology.Conv], tuple[Any, Any]], head_width) -> Any:
  """FLOPs of `arch`'s layers with every conv's (in, out) width given by `widths(conv)` and the
  classifier reading `head_width` channels: the widths may be traced values (PaS's cost counts
  the masked network with it). With the layers' own widths it is `count(arch).flops`."""
  total = sum(conv_flops(c.kernel, *widths(c), c.out_size) for c in channels.convs(arch))
  return total + head_width * arch.num_classes + arch.num_classes


def with_kept(groups: channels.ChannelGroups, kept: dict) -> Any:
  """FLOPs of a network with `kept[group]` channels in each of its channel groups (traced or
  concrete counts): the network a weight-keeping method extracts, counted on the original."""

  if isinstance(groups, channels.TracedGroups):  # a user's model: its traced graph's MACs
    return groups.graph.macs_at_counts(kept)

  def width(group):
    return groups.arch.input_channels if group is None else kept[group]

  return flops_at_widths(
    groups.arch, lambda c: tuple(map(width, groups.conv_groups[c.name])), kept[groups.head_group]
  )


def output_width(arch) -> int:
  return (
    arch.output_width if isinstance(arch, repvgg.RepVGGArch) else topology.of(arch).output_width
  )


def layers(arch) -> tuple[Layer, ...]:
  """Every conv and the classifier, in forward order, with its FLOPs and parameters."""
  out = []
  bias = isinstance(arch, repvgg.RepVGGArch)
  for c in channels.convs(arch):
    params = (
      c.kernel * c.kernel * c.in_width * c.out_width
      + (2 * c.out_width if c.has_bn else 0)
      + (c.out_width if bias else 0)
    )
    out.append(
      Layer(
        c.name,
        c.kernel,
        c.in_width,
        c.out_width,
        c.out_size,
        c.has_bn,
        conv_flops(c.kernel, c.in_width, c.out_width, c.out_size),
        params,
      )
    )
  width, classes = output_width(arch), arch.num_classes
  out.append(
    Layer(
      "classifier",
      1,
      width,
      classes,
      1,
      False,
      width * classes + classes,
      width * classes + classes,
    )
  )
  return tuple(out)


def count(arch) -> Counts:
  """FLOPs (multiply-adds) and parameters of `arch` (a user's model: its traced graph's, per
  image, conv and matmul multiply-adds without bias adds)."""
  if isinstance(arch, user.UserNetwork):
    g, kept = user.traced(arch), dict(arch.kept) or None
    return Counts(g.macs(kept), g.params(kept), ())
  ls = layers(arch)
  return Counts(sum(l.flops for l in ls), sum(l.params for l in ls), ls)
