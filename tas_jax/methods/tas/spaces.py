"""The two search spaces TAS searches, behind the one interface the search and extract stages call:
a ResNet's (`space.py`: a width per conv, a depth per stage; its supernet in `supernet.py`, its
costs in `cost.py`) and a user's model's (`traced.py`: a width per traced channel group).

Besides the space's data (slots, init_logits, probabilities, argmax, architecture), the stages call
`supernet`, `supernet_weights` (from the unpruned model's), `priced`, `expected_flops` and
`exact_flops`; `ResNetSpace` forwards them to the ResNet modules."""

from __future__ import annotations

import dataclasses
from typing import Union

import jax.numpy as jnp

from tas_jax.methods.tas import cost, space as space_lib, supernet as supernet_lib, traced
from tas_jax.models import user


@dataclasses.dataclass(frozen=True)
class ResNetSpace(space_lib.SearchSpace):
  def describe(self) -> str:
    return f"{self.num_slots} searched convs, depth choices {[list(d) for d in self.depths]}"

  def supernet(self, variant: str, dtype=jnp.float32, scan_blocks: bool = False):
    return supernet_lib.SuperNet(self, variant, dtype=dtype, scan_blocks=scan_blocks)

  def supernet_weights(self, params: dict, batch_stats: dict, variant: str):
    return supernet_lib.supernet_params_from_plain(params, batch_stats, variant)

  def priced(self, logits, target, form="released", variant="tas", branch="exact"):
    return cost.priced(self, logits, target, form, variant, branch)

  def expected_flops(self, logits, form="released", variant="tas"):
    return cost.expected_flops(self, logits, form, variant)

  def exact_flops(self, width_idx, depth_idx):
    return cost.exact_flops(self, width_idx, depth_idx)


Space = Union[ResNetSpace, traced.TracedSpace]


def of(base) -> Space:
  """The search space of an unpruned network: a ResNet's topology, or a user's model's trace."""
  if isinstance(base, user.UserNetwork):
    return traced.build(base)
  s = space_lib.build(base)
  return ResNetSpace(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)})
