"""The TAS search space of a ResNet (Dong & Yang 2019, as released): width candidates per conv,
depth candidates per stage.

A `SearchSpace` is derived from the unpruned `Architecture` and is static (hashable): the supernet,
the FLOPs cost and extraction all read their shapes and geometry from it. Every main-path conv
(stem included) is a searched "slot" with up to 8 width candidates floor(C·r), r = 0.3 … 1.0;
projection shortcuts are not searched, they follow their block's last conv.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tas_jax.models import topology
from tas_jax.models.arch import Architecture
from tas_jax.models.candidates import NUM_WIDTH_CANDIDATES, depth_candidates, width_candidates
from tas_jax.ops import flops


@dataclasses.dataclass(frozen=True)
class Slot:
  """One searched conv."""

  name: str  # model layer name, e.g. "stage2.block1.conv_a"
  kernel: int
  stride: int
  out_size: int  # spatial side of its output
  full: int  # unpruned width
  candidates: tuple[int, ...]  # padded to 8 by repeating the widest
  num_valid: int


@dataclasses.dataclass(frozen=True)
class BlockInfo:
  stage: int
  index: int  # within the stage
  stride: int
  in_size: int  # spatial side of the block's input
  slots: tuple[int, ...]  # its main-path conv slots, in order
  shortcut: str  # "identity" or a projection kind of the unpruned network


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  base: Architecture
  slots: tuple[Slot, ...]
  blocks: tuple[BlockInfo, ...]
  depths: tuple[tuple[int, ...], ...]

  @property
  def num_slots(self) -> int:
    return len(self.slots)

  @property
  def max_depth_candidates(self) -> int:
    return max(len(d) for d in self.depths)

  # --- constant tables, as numpy (they become jit constants) ---
  def width_table(self) -> np.ndarray:
    """(S, 8) candidate widths, padded with the widest."""
    return np.array([s.candidates for s in self.slots], np.int32)

  def width_mask(self) -> np.ndarray:
    return np.array([[k < s.num_valid for k in range(NUM_WIDTH_CANDIDATES)] for s in self.slots])

  def depth_table(self) -> np.ndarray:
    """(stages, D) candidate depths, padded with the deepest."""
    d = self.max_depth_candidates
    return np.array([c + (c[-1],) * (d - len(c)) for c in self.depths], np.int32)

  def depth_mask(self) -> np.ndarray:
    d = self.max_depth_candidates
    return np.array([[j < len(c) for j in range(d)] for c in self.depths])

  def init_logits(self, key: jax.Array) -> dict:
    """Architecture parameters: α (S, 8) and β (stages, D), N(0, 0.01) (as released)."""
    ka, kb = jax.random.split(key)
    return {
      "alpha": 0.01 * jax.random.normal(ka, (self.num_slots, NUM_WIDTH_CANDIDATES)),
      "beta": 0.01 * jax.random.normal(kb, (len(self.depths), self.max_depth_candidates)),
    }

  def masked_logits(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    """α and β with padded candidates at -inf, and the dimension a variant does not search pinned
    to its full value (one-hot): TAS(W) keeps every stage at full depth, TAS(D) every conv at full
    width. Whatever reads the distributions (sampling, E[F], F(A), records, extraction) reads
    these."""
    alpha = jnp.where(self.width_mask(), logits["alpha"], -jnp.inf)
    beta = jnp.where(self.depth_mask(), logits["beta"], -jnp.inf)
    if variant == "depth":
      full = np.array([s.num_valid - 1 for s in self.slots])
      alpha = jnp.where(np.arange(NUM_WIDTH_CANDIDATES)[None, :] == full[:, None], 0.0, -jnp.inf)
    if variant == "width":
      full = np.array([len(d) - 1 for d in self.depths])
      beta = jnp.where(
        np.arange(self.max_depth_candidates)[None, :] == full[:, None], 0.0, -jnp.inf
      )
    return alpha, beta

  def probabilities(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    """softmax(α) per conv (S, 8) and softmax(β) per stage (stages, D), of the variant."""
    alpha, beta = self.masked_logits(logits, variant)
    return jax.nn.softmax(alpha, -1), jax.nn.softmax(beta, -1)

  def argmax(self, logits: dict, variant: str = "tas") -> tuple[jax.Array, jax.Array]:
    """Indices of the most likely width per slot and depth per stage."""
    alpha, beta = self.masked_logits(logits, variant)
    return jnp.argmax(alpha, -1), jnp.argmax(beta, -1)

  def architecture(self, width_idx, depth_idx, name: str = "") -> Architecture:
    """The pruned network of a choice of candidates (host side)."""
    width_idx, depth_idx = np.asarray(width_idx), np.asarray(depth_idx)
    return self.architecture_of_widths(
      [s.candidates[int(i)] for s, i in zip(self.slots, width_idx)],
      [self.depths[s][int(j)] for s, j in enumerate(depth_idx)],
      name,
    )

  def named_architecture(self, width_idx, depth_idx) -> Architecture:
    """`architecture`, named by the share of the FLOPs it keeps: resnet20_tas48."""
    a = self.architecture(width_idx, depth_idx)
    kept = flops.count(a).flops / flops.count(self.base).flops
    return self.architecture(
      width_idx, depth_idx, f"{self.base.name or 'custom'}_tas{round(100 * kept)}"
    )

  def architecture_of_widths(self, widths, depths, name: str = "") -> Architecture:
    """The network with `widths[i]` channels in slot i and `depths[s]` blocks in stage s."""
    return topology.pruned(self.base, widths, depths, name)


def build(base: Architecture) -> SearchSpace:
  """The search space of an unpruned architecture: a slot per main conv of its topology."""
  topo = topology.of(base)
  index = {c.name: i for i, c in enumerate(topo.main_convs())}
  slots = []
  for c in topo.main_convs():
    cands = width_candidates(c.out_width)
    slots.append(
      Slot(
        c.name,
        c.kernel,
        c.stride,
        c.out_size,
        c.out_width,
        cands + (cands[-1],) * (NUM_WIDTH_CANDIDATES - len(cands)),
        len(cands),
      )
    )
  blocks = tuple(
    BlockInfo(
      b.stage, b.index, b.stride, b.in_size, tuple(index[c.name] for c in b.convs), b.shortcut
    )
    for b in topo.blocks
  )
  return SearchSpace(base, tuple(slots), blocks, depth_candidates(base))
