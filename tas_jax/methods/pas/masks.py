"""PaS's channel masks (Li et al., IJCAI 2022): where they sit, the threshold, the MACs they
leave.

One real scalar v per channel, initialised to 1; forward m = 1[v > 0.5], backward the identity
(straight-through). A mask sits after a ReLU (`tas_jax.models.resnet`'s gate sites): after the
stem, after every ReLU inside a block, and after a block's output ReLU. Masks are kept per
*channel group* (`tas_jax.models.channels`): every inner activation of a block is a group, every
residual chain one group shared by all its sites (the identity adds the chain's channels position
by position, so a channel can be removed only where every block of the chain agrees; sharing the
mask makes them agree by construction, and the pruned network is again a plain ResNet — released
PaS masks each block output on its own and cannot cut such chains). A RepVGG has one group per
block.

Every group keeps at least its highest-scoring channel, so no layer is ever empty. The MACs of the
masked network are counted by `tas_jax.ops.flops.with_kept`, the FLOP counter on the original
topology with the kept counts as widths: the extracted network has exactly those layers, so its
FLOPs by the counter equal the search's final MACs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tas_jax.models import channels, repvgg, resnet, user
from tas_jax.models.arch import Architecture

THRESHOLD = 0.5


def hard_mask(v: jax.Array) -> jax.Array:
  """1[v > 0.5] (and the argmax channel), forward; gradient 1 per scalar (identity STE).

  Written as hard + (v − stop_gradient(v)) so that the forward value is exactly 0 or 1."""
  hard = (v > THRESHOLD) | (jnp.arange(v.shape[0]) == jnp.argmax(v))
  return hard.astype(v.dtype) + (v - jax.lax.stop_gradient(v))


def kept_counts(groups: channels.ChannelGroups, scores: dict) -> dict:
  """{group: kept channels} (traced; straight-through gradient 1 per scalar)."""
  return {g.name: jnp.sum(hard_mask(scores[g.name])) for g in groups.groups}


class MaskScores(nn.Module):
  """The scalars v of every group, initialised to 1."""

  groups: tuple[channels.Group, ...]

  @nn.compact
  def __call__(self):
    return {
      g.name: self.param(g.name, nn.initializers.ones, (g.size,), jnp.float32) for g in self.groups
    }


class MaskedNetwork(nn.Module):
  """The network of `arch` (ResNet, or RepVGG in training form) with PaS masks: params
  {"masks": {group: (C,)}, "network": the plain network's params}, so a teacher's checkpoint
  drops into "network" unchanged."""

  arch: Architecture | repvgg.RepVGGArch | user.UserNetwork
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32
  scan_blocks: bool = False  # a ResNet's equal blocks as one lax.scan (model.scan_blocks)

  @nn.compact
  def __call__(self, x, train: bool = False):
    groups = channels.of(self.arch)
    scores = MaskScores(groups.groups, name="masks")()
    gates = groups.per_site({k: hard_mask(v) for k, v in scores.items()})
    if isinstance(self.arch, user.UserNetwork):  # gates at the traced groups' layers
      network = user.Model(self.arch, name="network")
    elif isinstance(self.arch, repvgg.RepVGGArch):
      network = repvgg.RepVGG(
        self.arch, bn_axis_name=self.bn_axis_name, dtype=self.dtype, name="network"
      )
    else:
      network = resnet.ResNet(
        self.arch, self.bn_axis_name, self.dtype, self.scan_blocks, name="network"
      )
    return network(x, train, gates)
