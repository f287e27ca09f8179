"""Channel groups of a network, and the surgery that cuts channels out of it with their weights.

A weight-keeping pruning method (PaS, L1-norm, FPGM) decides which channels survive; this module
says which channels can be removed together and builds the smaller network. A *group* is one
tensor's channels that can be cut physically:

- every inner activation of a ResNet block (conv_a of a basic block; conv_a and conv_b of a
  bottleneck) is a group of its own;
- a residual chain — the stem or a projection's output, and every block joined to it by an
  identity shortcut — is one group: the identity adds the chain's channels position by position,
  so a channel can go only from every block of the chain at once. The pruned network is then again
  a plain ResNet. The classifier reads the last chain and is trimmed with it;
- a RepVGG has one group per block (no add joins two blocks' outputs); its last block's group
  trims the classifier.

`cut(arch, variables, kept)` is the surgery: from `kept[group]`, sorted channel indices, it returns
the smaller architecture and its variables — every conv's kernel gathered on its input and output
axes, BN vectors and statistics to the kept outputs, the classifier to the kept inputs. In
evaluation mode the result computes what the original computes with the removed channels zeroed
after their ReLU (the "gate sites" of `tas_jax.models.resnet` and `repvgg`). A RepVGG is
reparameterised to its deploy form (one 3x3 conv with bias per block) first. The arrays are cut by
`tas_jax.graph` — the surgery any Flax model gets — on the network's traced groups, which a test
checks equal to the groups derived here, channel for channel.

`Gated` is the other way to run a pruned network: the original in training form with the removed
channels zeroed by fixed 0/1 gates — frozen masks. A RepVGG is fine-tuned so (its BN-carrying
branches exist only there), then cut.

The FLOPs of the network at kept counts come from the FLOP counter on the original topology
(`tas_jax.ops.flops.with_kept`): the extracted network has exactly those layers, so the two agree.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tas_jax import graph
from tas_jax.models import networks, repvgg, resnet, topology, user
from tas_jax.models.arch import Architecture

Network = Union[Architecture, repvgg.RepVGGArch]


@dataclasses.dataclass(frozen=True)
class Group:
  name: str  # its first gate site: "stem", "stage2.block1", "stage1.block1.conv_a"
  size: int  # channels in the unpruned network
  sites: tuple[str, ...]  # the gate sites (after a ReLU) whose activations are its channels


@dataclasses.dataclass(frozen=True)
class ChannelGroups:
  """The groups of a network and, for every conv, which group its input and output are."""

  arch: Network
  groups: tuple[Group, ...]
  conv_groups: dict  # conv name -> (input group, or None for the image; output group)
  head_group: str  # the group the classifier reads

  @property
  def num_channels(self) -> int:
    return sum(g.size for g in self.groups)

  def producers(self, group: str) -> tuple[topology.Conv, ...]:
    """The convs whose output channels are `group`'s (a residual chain has several)."""
    return tuple(c for c in convs(self.arch) if self.conv_groups[c.name][1] == group)

  def per_site(self, values: dict) -> dict:
    """{gate site: values[group]}: a per-group vector (a mask) at every site of its group."""
    return {site: values[g.name] for g in self.groups for site in g.sites}

  def per_conv(self, kept: dict) -> dict:
    """{conv name: kept output channels} and {"classifier.inputs": ...}: kept_channels.json."""
    out = {c.name: kept[self.conv_groups[c.name][1]] for c in convs(self.arch)}
    out["classifier.inputs"] = kept[self.head_group]
    return out


def convs(arch: Network) -> tuple[topology.Conv, ...]:
  """Every conv in forward order: a ResNet's topology, or a RepVGG's blocks in deploy form (one
  3x3 conv with bias each: the form its FLOPs are quoted in)."""
  return repvgg.blocks(arch) if isinstance(arch, repvgg.RepVGGArch) else topology.of(arch).convs()


def main_convs(arch: Network) -> tuple[topology.Conv, ...]:
  """The convs a group's width sets: a ResNet's stem and main paths, a RepVGG's blocks."""
  return (
    repvgg.blocks(arch) if isinstance(arch, repvgg.RepVGGArch) else topology.of(arch).main_convs()
  )


@dataclasses.dataclass(frozen=True)
class TracedGroups:
  """The channel groups of a user's model (`tas_jax.models.user`), from its traced graph."""

  arch: user.UserNetwork
  groups: tuple[Group, ...]

  @property
  def graph(self):
    return user.traced(self.arch)

  @property
  def num_channels(self) -> int:
    return sum(g.size for g in self.groups)

  def per_conv(self, kept: dict) -> dict:
    return {g: [int(i) for i in idx] for g, idx in kept.items()}

  def per_site(self, values: dict) -> dict:
    """A traced model's gates are per group (`tas_jax.models.user.Model`)."""
    return dict(values)


@functools.cache
def of(arch: Network) -> ChannelGroups:
  """The channel groups of `arch`, read off its topology (a user's model: its trace)."""
  if isinstance(arch, user.UserNetwork):
    g = user.traced(arch)
    return TracedGroups(arch.unpruned, tuple(Group(t.name, t.size, ()) for t in g.groups))
  if isinstance(arch, repvgg.RepVGGArch):
    convs = repvgg.blocks(arch)
    groups = tuple(Group(c.name, c.out_width, (c.name,)) for c in convs)
    conv_groups = {
      c.name: (prev.name if prev else None, c.name) for prev, c in zip((None,) + convs[:-1], convs)
    }
    return ChannelGroups(arch, groups, conv_groups, convs[-1].name)
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
    if b.projection is not None:  # a new chain starts at this block's output
      conv_groups[b.projection.name] = (chain, b.name)
      chain = b.name
      sites[chain], sizes[chain] = [], b.out_width
    sites[chain].append(b.name)
    conv_groups[b.convs[-1].name] = (inner_in, chain)
  groups = tuple(Group(name, sizes[name], tuple(s)) for name, s in sites.items())
  return ChannelGroups(arch, groups, conv_groups, chain)


def counts(kept: dict) -> dict:
  return {g: len(i) for g, i in kept.items()}


def producer_kernels(arch: Network, variables: dict) -> dict:
  """{group: [(kh, kw, in, out) kernel of every conv producing it]} of a trained network: what a
  filter criterion (L1 norm, geometric median) scores. A RepVGG's are its deploy-form kernels
  (branches and BN folded in), the convs that remain after reparameterisation."""
  if isinstance(arch, user.UserNetwork):
    return user.traced(arch).producer_filters(variables)
  lay = of(arch)
  if isinstance(arch, repvgg.RepVGGArch):
    params = repvgg.reparameterize(arch, variables)["params"]
    kernel = lambda c: np.asarray(params[c.name]["kernel"])
  else:
    kernel = lambda c: np.asarray(
      _get(variables["params"], resnet.variable_scope(c.name))["conv"]["kernel"]
    )
  return {g.name: [kernel(c) for c in lay.producers(g.name)] for g in lay.groups}


def pruned_architecture(arch: Network, kept: dict, name: str = "") -> Network:
  """`arch` with every main conv as wide as its output group's kept channels (full depth); the
  shortcuts stay what they were, so the original's weights fit."""
  if isinstance(arch, user.UserNetwork):
    return arch.keep(kept, name)
  lay = of(arch)
  widths = [len(kept[lay.conv_groups[c.name][1]]) for c in main_convs(arch)]
  if isinstance(arch, repvgg.RepVGGArch):
    widths = iter(widths)
    stages = tuple(tuple(next(widths) for _ in stage) for stage in arch.stages)
    return dataclasses.replace(arch, stages=stages, name=name, deploy=True)
  return topology.pruned(arch, widths, arch.depths, name=name, inherits=True)


def _get(tree: dict, path: tuple[str, ...]) -> dict:
  for key in path:
    tree = tree[key]
  return tree


def producer_path(arch: Network, conv: topology.Conv) -> str:
  """Where a conv's kernel lives in the variables `cut` reads (a RepVGG's: deploy form)."""
  if isinstance(arch, repvgg.RepVGGArch):
    return f"params/{conv.name}/kernel"
  return "/".join(("params", *resnet.variable_scope(conv.name), "conv", "kernel"))


@functools.cache
def traced(arch: Network) -> tuple:
  """(the network's `tas_jax.graph.Graph`, {group: traced group name}): the groups of this module
  found again in the network's own computation (a RepVGG's deploy form). The surgery of every
  network, built-in or a user's, is the graph's cut."""
  form = dataclasses.replace(arch, deploy=True) if isinstance(arch, repvgg.RepVGGArch) else arch
  module = networks.build(form)
  size = min(arch.input_size, 64)  # the groups do not depend on the image size
  x = jax.ShapeDtypeStruct((1, size, size, arch.input_channels), jnp.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(x.shape), False))
  traced_graph = graph.trace(module, variables, x, train=False)
  by_producers = {frozenset(t.producer_paths): t.name for t in traced_graph.groups}
  lay = of(arch)
  names = {}
  for g in lay.groups:
    producers = frozenset(producer_path(arch, c) for c in lay.producers(g.name))
    if producers not in by_producers:
      raise AssertionError(f"{arch.name}: group {g.name} ({sorted(producers)}) not in the trace")
    names[g.name] = by_producers[producers]
  return traced_graph, names


def cut(arch: Network, variables: dict, kept: dict, name: str = "") -> tuple[Network, dict]:
  """(the pruned architecture, its {"params", "batch_stats"}) keeping `kept[group]` of every group
  of a trained network's {"params", "batch_stats"}: the traced graph's cut (`traced`). A RepVGG
  is reparameterised first and comes out in deploy form (no BN statistics)."""
  lay = of(arch)
  for g in lay.groups:
    chosen = np.asarray(kept[g.name])
    if len(chosen) == 0 or np.any(np.diff(chosen) <= 0) or chosen[0] < 0 or chosen[-1] >= g.size:
      raise ValueError(
        f"kept channels of {g.name}: sorted distinct indices in [0, {g.size}), at "
        f"least one; got {chosen.tolist()}"
      )
  variables = jax.device_get(variables)
  if isinstance(arch, user.UserNetwork):
    small = user.traced(arch).cut(variables, kept)
    return arch.keep(kept, name), {
      "params": small["params"],
      "batch_stats": small.get("batch_stats", {}),
    }
  traced_graph, names = traced(arch)
  pruned = pruned_architecture(arch, kept, name)
  if isinstance(arch, repvgg.RepVGGArch):
    variables = repvgg.reparameterize(arch, variables)
  got = traced_graph.cut(variables, {names[g]: idx for g, idx in kept.items()})
  got = {"params": got["params"], "batch_stats": got.get("batch_stats", {})}
  expected = jax.eval_shape(
    lambda: networks.build(pruned).init(jax.random.key(0), networks.dummy_input(pruned))
  )
  mismatch = jax.tree.map(
    lambda e, g: e.shape != g.shape,
    {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})},
    got,
  )
  if any(jax.tree.leaves(mismatch)):
    raise AssertionError(f"gathered variables do not fit {pruned.name}: {mismatch}")
  return pruned, got


def as_static(kept: dict) -> tuple:
  """`kept` as a hashable module attribute: ((group, (indices, ...)), ...)."""
  return tuple((g, tuple(int(i) for i in idx)) for g, idx in kept.items())


class Gated(nn.Module):
  """`arch` in training form, every channel a pruning removed zeroed after its ReLU by a fixed
  gate (the masks frozen, as PaS fine-tunes): it computes what `cut(arch, ..., kept)` computes,
  and trains the kept weights as the cut network would while keeping every branch and BN. Its
  variables are the plain network's under "network"."""

  arch: Network
  kept: tuple  # as_static(kept)
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kept = dict(self.kept)
    gates = {}
    for g in of(self.arch).groups:
      gate = np.zeros(g.size, np.float32)
      gate[list(kept[g.name])] = 1.0
      gates[g.name] = jnp.asarray(gate, self.dtype)
    network = networks.build(self.arch, self.bn_axis_name, self.dtype, name="network")
    return network(x, train, of(self.arch).per_site(gates))
