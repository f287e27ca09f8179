"""TAS's width search on a user's model (`--config.model.module`): one width distribution per
traced channel group (`tas_jax.graph`) instead of one per ResNet conv.

A group of C channels has the 8 candidates floor(C·r), r = 0.3 … 1.0 (`models.candidates`). Each
forward draws two per group by Gumbel sampling (`gumbel.sample_pairs`) and mixes them by CWI into
one (C, C) matrix, M = Σ_i w_i · CWI(C_i → C*) (`cwi.mix_from_pairs`, no BN scales). M acts where
the group is *read*: on the input of every layer that contracts its channels (`Graph.input_sites`:
the next conv, a Dense after a flatten, the classifier), so the supernet is the user's own model,
its own variables, with nothing assumed about the order of its layers. Two departures from the
released ResNet supernet follow: the released code mixes right after each conv's BN, before the
ReLU, and gives every candidate its own BN; here BN is the model's own and the mixing comes after
whatever per-channel layers follow the producer. At one candidate (the argmax) M keeps the first
C_i channels, so the argmax supernet computes exactly what the extracted model computes.

E[F] is the graph's MAC count at each group's expected width (`Graph.macs_at_counts`, bilinear per
layer: the expectation over independent groups, the released code's formula); F(A) the same
count at the argmax widths, which is the extracted model's. There is no depth to search: a user's
model marks no blocks TAS may drop, so variant "tas" searches widths (as "width") and "depth" is
refused by the config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tas_jax.errors import ConfigError
from tas_jax.methods.tas import cwi, gumbel
from tas_jax.models import user
from tas_jax.models.candidates import NUM_WIDTH_CANDIDATES, width_candidates
from tas_jax.ops import flops


@dataclasses.dataclass(frozen=True)
class GroupSlot:
  """One searched channel group."""

  name: str  # the traced group's name (its first producer's layer)
  full: int
  candidates: tuple[int, ...]  # padded to 8 by repeating the widest
  num_valid: int


@dataclasses.dataclass(frozen=True)
class TracedSpace:
  """The width search space of a user's model: a slot per traced group that some layer reads."""

  base: user.UserNetwork
  slots: tuple[GroupSlot, ...]
  blocks: tuple = ()  # no blocks, no depths: the ResNet space's fields, empty
  depths: tuple = ()
  max_depth_candidates: int = 0

  @property
  def graph(self):
    return user.traced(self.base)

  @property
  def num_slots(self) -> int:
    return len(self.slots)

  def describe(self) -> str:
    return f"{self.num_slots} searched channel groups (width only: no depth choices)"

  def width_table(self) -> np.ndarray:
    return np.array([s.candidates for s in self.slots], np.int32)

  def width_mask(self) -> np.ndarray:
    return np.array([[k < s.num_valid for k in range(NUM_WIDTH_CANDIDATES)] for s in self.slots])

  def init_logits(self, key: jax.Array) -> dict:
    """α (groups, 8), N(0, 0.01) as the released code initialises it."""
    return {"alpha": 0.01 * jax.random.normal(key, (self.num_slots, NUM_WIDTH_CANDIDATES))}

  def masked_logits(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    del variant  # widths are all there is
    return jnp.where(self.width_mask(), logits["alpha"], -jnp.inf), jnp.zeros((0, 1))

  def probabilities(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    alpha, beta = self.masked_logits(logits, variant)
    return jax.nn.softmax(alpha, -1), beta

  def argmax(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    alpha, _ = self.masked_logits(logits, variant)
    return jnp.argmax(alpha, -1), jnp.zeros((0,), jnp.int32)

  def kept_widths(self, width_idx) -> dict:
    return {s.name: s.candidates[int(i)] for s, i in zip(self.slots, np.asarray(width_idx))}

  def architecture(self, width_idx, depth_idx=(), name: str = "") -> user.UserNetwork:
    """The user's model keeping the first candidate width of every searched group."""
    del depth_idx
    kept = {g: tuple(range(w)) for g, w in self.kept_widths(width_idx).items()}
    return self.base.keep(kept, name)

  def named_architecture(self, width_idx, depth_idx=()) -> user.UserNetwork:
    kept = self.exact_flops(width_idx) / flops.count(self.base).flops
    label = self.base.name or self.base.module.split(":")[-1].lower()
    return self.architecture(width_idx, depth_idx, f"{label}_tas{round(100 * float(kept))}")

  # --- the search stage's interface (the ResNet space's: tas_jax.methods.tas.spaces) ---------
  def expected_flops(self, logits: dict, form: str = "released", variant: str = "tas"):
    """E[F]: the MACs at every group's expected width (one form: the graph prices each layer by
    the product of its groups' widths, which independence makes the expectation)."""
    del form
    pa, _ = self.probabilities(logits, variant)
    widths = jnp.sum(pa * jnp.asarray(self.width_table(), jnp.float32), -1)
    return self.graph.macs_at_counts({s.name: widths[i] for i, s in enumerate(self.slots)})

  def exact_flops(self, width_idx, depth_idx=()):
    """F(A): the MACs of the model keeping these candidates (traced or concrete indices)."""
    del depth_idx
    table = jnp.asarray(self.width_table(), jnp.float32)
    widths = table[jnp.arange(self.num_slots), jnp.asarray(width_idx)]
    return self.graph.macs_at_counts({s.name: widths[i] for i, s in enumerate(self.slots)})

  def priced(self, logits, target, form="released", variant="tas", branch="exact"):
    """(E[F], F(A)): a traced model is priced in MACs (the config refuses a latency target)."""
    del target, branch
    return self.expected_flops(logits, form, variant), self.exact_flops(
      self.argmax(logits, variant)[0]
    )

  def supernet(self, variant: str, dtype=jnp.float32, scan_blocks: bool = False) -> nn.Module:
    del scan_blocks
    return TracedSuperNet(self, variant, dtype=dtype)

  def supernet_weights(self, params: dict, batch_stats: dict, variant: str) -> tuple[dict, dict]:
    """The supernet's variables are the user's model's: a trained model's drop in as they are."""
    del variant
    return params, batch_stats


def build(base: user.UserNetwork) -> TracedSpace:
  """A slot per group that a layer reads (a group only reductions see has no mixing site: it stays
  whole, and the log says so)."""
  g = user.traced(base)
  read = {group for entries in g.input_sites.values() for group, *_ in entries}
  slots = []
  for group in g.groups:
    if group.name not in read:
      continue
    cands = width_candidates(group.size)
    slots.append(
      GroupSlot(
        group.name,
        group.size,
        cands + (cands[-1],) * (NUM_WIDTH_CANDIDATES - len(cands)),
        len(cands),
      )
    )
  if not slots:
    raise ConfigError(f"{base.module}: no channel group is read by a conv or Dense layer")
  return TracedSpace(base.unpruned, tuple(slots))


def sample_widths(space: TracedSpace, logits: dict, key, tau, sample: bool, variant: str):
  """(idx (S, 2), widths (S, 2), weights (S, 2)) of one forward: two Gumbel-drawn candidates per
  group, or the argmax twice with weights (1, 0)."""
  alpha, _ = space.masked_logits(logits, variant)
  if sample:
    idx, weights = gumbel.sample_pairs(jax.random.fold_in(key, 0), alpha, tau)
  else:
    best = jnp.argmax(alpha, -1)
    idx = jnp.stack([best, best], 1)
    weights = jnp.tile(jnp.array([1.0, 0.0]), (space.num_slots, 1))
  widths = jnp.asarray(space.width_table())[jnp.arange(space.num_slots)[:, None], idx]
  return idx, widths, weights


def mix_matrices(space: TracedSpace, widths, weights) -> dict:
  """{group: (C, C) CWI mixture} of every slot, one vmapped computation per group size."""
  out = {}
  for full in sorted({s.full for s in space.slots}):
    members = [i for i, s in enumerate(space.slots) if s.full == full]
    rows = np.array(members)

    def one(w, p):
      return cwi.mix_from_pairs(cwi.pair_matrices(w, full), p, jnp.ones((2, full)))

    stacked = jax.vmap(one)(widths[rows], weights[rows])
    out.update({space.slots[i].name: stacked[j] for j, i in enumerate(members)})
  return out


class TracedSuperNet(nn.Module):
  """The user's model with every searched group's readers mixed by its sampled CWI matrix; same
  call as the ResNet supernet: (x, logits, key, τ, train, argmax). Its variables are the user's
  model's own tree. `train` with immutable `batch_stats` runs the model's BatchNorm on its running
  statistics."""

  space: TracedSpace
  variant: str = "tas"
  axis_name: Optional[str] = None  # the user's BatchNorm decides (jit: global statistics)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, logits: dict, key, tau, train: bool = True, argmax: bool = False):
    _, widths, weights = sample_widths(
      self.space, logits, key, tau, train and not argmax, self.variant
    )
    model = user.Model(self.space.base, dtype=self.dtype)
    nn.share_scope(self, model)
    # a user's BatchNorm in training mode updates its running statistics: with them immutable
    # it runs on them instead (the search's evaluation makes them mutable and drops the update)
    stats_free = self.is_initializing() or self.is_mutable_collection("batch_stats")
    return model(x, train and stats_free, mixes=mix_matrices(self.space, widths, weights))
