"""Blocks of equal shapes run as one `jax.lax.scan`: XLA compiles one block per run, not one per
block, so compile time no longer grows with depth (ResNet-56/110/164, ResNet-50).

The parameters keep their per-block layout (`stage1.block2`, … in the tree): a scanned run stacks
its blocks' variables at call time, applies the block module once per step of the scan, and writes
each block's updated batch statistics back under its own name. Checkpoints, extraction, surgery
and exports see the same trees whether blocks are scanned or not. Initialisation always runs the
blocks unrolled, so the initial weights are the same bit for bit.

The scanned body is rematerialised (`jax.checkpoint`): the backward pass recomputes a block's
forward from its input instead of reading activations the forward stacked per block. On the CPU,
writing those stacks and reading them back cost more than the recomputation (ResNet-56 training
step at batch 256: 2.48 s saved, 2.02 s recomputed, 1.82 s unrolled), and the compiled
temporaries fall about 5x (2.6 GB unrolled, 0.5 GB scanned). BENCHMARKS.md has the figures.
Convolutions in a loop body need `tas_jax.models.conv` for their gradients on the CPU.
"""

from __future__ import annotations

import itertools
from typing import Callable, Hashable, Sequence, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp

T = TypeVar("T")


def runs(blocks: Sequence[T], signature: Callable[[T], Hashable]) -> list[list[T]]:
  """Consecutive blocks with equal `signature` (everything that fixes their shapes), in order."""
  return [list(group) for _, group in itertools.groupby(blocks, signature)]


def stacked_apply(
  module: nn.Module, variables: Sequence[dict], carry, per_block, mutable: bool, method: Callable
):
  """Runs `method(module, carry, x_i) -> (carry, y_i)` once per block in a `lax.scan`.

  `module` is unbound (`parent=None`); block i gets `variables[i]` ({"params", "batch_stats"}) and
  the i-th slice of `per_block` (a pytree with a leading block axis, or None). Returns (carry, the
  ys stacked, each block's updated batch statistics when `mutable`, else None).
  """
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *variables)

  def body(carry, inputs):
    v, x = inputs
    if mutable:
      (carry, y), updated = module.apply(v, carry, x, mutable=["batch_stats"], method=method)
      return carry, (y, updated["batch_stats"])
    carry, y = module.apply(v, carry, x, method=method)
    return carry, (y, None)

  carry, (ys, stats) = jax.lax.scan(jax.checkpoint(body), carry, (stacked, per_block))
  if stats is None:
    return carry, ys, None
  return carry, ys, unstack(stats, len(variables))


def unstack(tree, n: int) -> list:
  """The n slices of a pytree whose leaves have a leading axis of n."""
  return [jax.tree.map(lambda a, i=i: a[i], tree) for i in range(n)]
