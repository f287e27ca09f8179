"""PaS's channel masks (spec `shared/spec/PAS.md`): where they sit, the threshold, the MACs they leave.

One real scalar v per channel, initialised to 1; forward m = 1[v > 0.5], backward the identity
(straight-through). A mask sits after a ReLU (`tas_jax.models.resnet`'s gate sites): after the
stem, after every ReLU inside a block, and after a block's output ReLU. Masks are kept in *groups*,
one per tensor that can be cut physically:

- every inner activation of a block (conv_a of a basic block; conv_a and conv_b of a bottleneck)
  is a group of its own;
- a residual chain — the stem or a projection's output, and every block joined to it by an
  identity shortcut — is one group shared by all its sites. The identity adds the chain's
  channels position by position, so a channel can be removed only where every block of the chain
  agrees; sharing the mask makes them agree by construction, and the pruned network is again a
  plain ResNet (released PaS masks each block output on its own and cannot cut such chains).

RepVGG (`tas_jax.models.repvgg`): one group per block, after its ReLU; no chains (no add joins
two blocks' outputs).

Every group keeps at least its highest-scoring channel, so no layer is ever empty. The MACs of the
masked network are counted by `tas_jax.ops.flops.flops_at_widths` on the original topology with
the kept counts as widths: the extracted network has exactly those layers, so its FLOPs by the
counter equal the search's final MACs.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from tas_jax.models import repvgg, resnet, topology
from tas_jax.models.arch import Architecture
from tas_jax.ops import flops

THRESHOLD = 0.5


def hard_mask(v: jax.Array) -> jax.Array:
  """1[v > 0.5] (and the argmax channel), forward; gradient 1 per scalar (identity STE).

  Written as hard + (v − stop_gradient(v)) so that the forward value is exactly 0 or 1."""
  hard = (v > THRESHOLD) | (jnp.arange(v.shape[0]) == jnp.argmax(v))
  return hard.astype(v.dtype) + (v - jax.lax.stop_gradient(v))


@dataclasses.dataclass(frozen=True)
class Group:
  name: str              # the first site of the group: "stem", "stage2.block1", "stage1.block1.conv_a"
  size: int              # channels in the unpruned network
  sites: tuple[str, ...]  # the gate sites (`tas_jax.models.resnet`) that share it


@dataclasses.dataclass(frozen=True)
class MaskLayout:
  """The mask groups of a network and, for every conv, which group its input and output are."""
  arch: Architecture
  groups: tuple[Group, ...]
  conv_groups: dict           # conv name -> (input group or None for the image, output group)
  head_group: str             # the group the classifier reads

  @property
  def num_channels(self) -> int:
    return sum(g.size for g in self.groups)

  def site_gates(self, masks: dict) -> dict:
    """{gate site: 0/1 vector} for the network, from {group: 0/1 vector}."""
    return {site: masks[g.name] for g in self.groups for site in g.sites}

  def flops(self, kept: dict):
    """FLOPs of the network with `kept[group]` channels in each group (traced or concrete)."""
    width = lambda group: self.arch.input_channels if group is None else kept[group]
    return flops.flops_at_widths(self.arch, lambda c: tuple(map(width, self.conv_groups[c.name])),
                                 kept[self.head_group])


@functools.cache
def layout(arch) -> MaskLayout:
  """The mask groups of `arch` (a ResNet `Architecture` or a `RepVGGArch`), read off its layers."""
  if isinstance(arch, repvgg.RepVGGArch):
    return _repvgg_layout(arch)
  topo = topology.of(arch)
  sites = {"stem": ["stem"]}
  sizes = {"stem": topo.stem.out_width}
  conv_groups = {"stem": (None, "stem")}
  chain = "stem"
  for b in topo.blocks:
    inner_in = chain
    for c in b.convs[:-1]:
      sites[c.name], sizes[c.name] = [c.name], c.out_width
      conv_groups[c.name] = (inner_in, c.name)
      inner_in = c.name
    if b.projection is not None:      # a new chain starts at this block's output
      conv_groups[b.projection.name] = (chain, b.name)
      chain = b.name
      sites[chain], sizes[chain] = [], b.out_width
    sites[chain].append(b.name)
    conv_groups[b.convs[-1].name] = (inner_in, chain)
  groups = tuple(Group(name, sizes[name], tuple(s)) for name, s in sites.items())
  return MaskLayout(arch, groups, conv_groups, chain)


def _repvgg_layout(arch: repvgg.RepVGGArch) -> MaskLayout:
  """RepVGG: one mask per block, after its ReLU (no residual add joins two blocks' outputs); the
  last block's mask is searched too, and the classifier is trimmed with it."""
  convs = repvgg.blocks(arch)
  groups = tuple(Group(c.name, c.out_width, (c.name,)) for c in convs)
  conv_groups = {c.name: (prev.name if prev else None, c.name)
                 for prev, c in zip((None,) + convs[:-1], convs)}
  return MaskLayout(arch, groups, conv_groups, convs[-1].name)


def kept_counts(layout_: MaskLayout, scores: dict) -> dict:
  """{group: kept channels} (traced; straight-through gradient 1 per scalar)."""
  return {g.name: jnp.sum(hard_mask(scores[g.name])) for g in layout_.groups}


class MaskScores(nn.Module):
  """The scalars v of every group, initialised to 1."""
  groups: tuple[Group, ...]

  @nn.compact
  def __call__(self):
    return {g.name: self.param(g.name, nn.initializers.ones, (g.size,), jnp.float32)
            for g in self.groups}


class MaskedNetwork(nn.Module):
  """The network of `arch` (ResNet, or RepVGG in training form) with PaS masks: params
  {"masks": {group: (C,)}, "network": the plain network's params}, so a teacher's checkpoint
  drops into "network" unchanged."""
  arch: Architecture | repvgg.RepVGGArch
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    lay = layout(self.arch)
    scores = MaskScores(lay.groups, name="masks")()
    gates = lay.site_gates({k: hard_mask(v) for k, v in scores.items()})
    if isinstance(self.arch, repvgg.RepVGGArch):
      network = repvgg.RepVGG(self.arch, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                              name="network")
    else:
      network = resnet.ResNet(self.arch, self.bn_axis_name, self.dtype, name="network")
    return network(x, train, gates)
