"""The kept channels of every group for a FLOPs target, from per-channel scores (low = removed
first).

The cost is FLOPs unless a `cost(counts)` is given: `target.cost=latency` passes the table latency
of the network at those counts (`tas_jax.latency.with_kept`), and the same bisection finds the
smallest removal under a latency target (the interpolated table falls with every removed channel
up to measurement noise).

Both rules remove channels until the FLOP counter, on the network at the kept widths
(`tas_jax.ops.flops.with_kept`), is at or below the target: the smallest removal that reaches it.
Every group keeps at least its best channel. Removing a channel never adds FLOPs, so the FLOPs fall
monotonically with the amount removed and a bisection finds that point exactly.

- `global_ranking`: one ranking of all channels of all groups; the lowest go first (L1-norm, its
  scores relative to their group's mean).
- `uniform_ratio`: one pruning ratio r for every group, each keeping its max(1, round((1-r)·size))
  best channels (FPGM, and L1 with `l1.ranking=uniform`); r found by bisection.

Both take `prunable`, the groups that may lose channels (default all): `l1.scope=inner` passes the
blocks' inner activations, and every residual chain keeps all its channels.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from tas_jax.models import channels
from tas_jax.ops import flops


def _cost(groups: channels.ChannelGroups, cost: Optional[Callable]) -> Callable:
  return cost if cost is not None else (lambda counts: flops.with_kept(groups, counts))


def _kept(groups: channels.ChannelGroups, scores: dict, counts: dict) -> dict:
  """The `counts[g]` best channels of every group, as sorted indices (ties: the lower index)."""
  out = {}
  for g in groups.groups:
    order = np.argsort(-np.asarray(scores[g.name]), kind="stable")
    out[g.name] = sorted(int(i) for i in order[: counts[g.name]])
  return out


def inner_groups(groups: channels.ChannelGroups) -> frozenset:
  """The groups inside residual blocks (a block's activations before its last conv), not the
  residual chains: what Li et al. prune in a ResNet."""
  return frozenset(g.name for g in groups.groups if ".conv_" in g.name)


def _prunable(groups: channels.ChannelGroups, prunable: Optional[frozenset]) -> frozenset:
  return frozenset(g.name for g in groups.groups) if prunable is None else prunable


def global_ranking(
  groups: channels.ChannelGroups,
  scores: dict,
  target_flops: float,
  cost: Optional[Callable] = None,
  prunable: Optional[frozenset] = None,
) -> dict:
  """{group: kept indices}: the lowest-scoring channels of the `prunable` groups removed, fewest
  first, until the FLOPs (or `cost`) are at most `target_flops` (or every such group is down to
  one channel)."""
  cost = _cost(groups, cost)
  prunable = _prunable(groups, prunable)
  candidates = []  # (score, group position, channel) of every channel that may go
  for position, g in enumerate(groups.groups):
    if g.name not in prunable:
      continue
    s = np.asarray(scores[g.name])
    best = int(np.argmax(s))
    candidates += [(float(s[j]), position, j) for j in range(g.size) if j != best]
  candidates.sort()

  def counts_after(k: int) -> dict:
    counts = {g.name: g.size for g in groups.groups}
    for _, position, _ in candidates[:k]:
      counts[groups.groups[position].name] -= 1
    return counts

  lo, hi = 0, len(candidates)  # FLOPs(hi) <= target unless nothing reaches it
  if cost(counts_after(hi)) > target_flops:
    lo = hi
  while lo < hi:
    mid = (lo + hi) // 2
    if cost(counts_after(mid)) <= target_flops:
      hi = mid
    else:
      lo = mid + 1
  removed = {}
  for _, position, j in candidates[:hi]:
    removed.setdefault(groups.groups[position].name, set()).add(j)
  return {
    g.name: [j for j in range(g.size) if j not in removed.get(g.name, ())] for g in groups.groups
  }


def counts_at_ratio(
  groups: channels.ChannelGroups, ratio: float, prunable: Optional[frozenset] = None
) -> dict:
  prunable = _prunable(groups, prunable)
  return {
    g.name: max(1, int(round((1 - ratio) * g.size))) if g.name in prunable else g.size
    for g in groups.groups
  }


def uniform_ratio(
  groups: channels.ChannelGroups,
  scores: dict,
  target_flops: float,
  cost: Optional[Callable] = None,
  prunable: Optional[frozenset] = None,
) -> tuple[dict, float]:
  """({group: kept indices}, r): the smallest ratio r (to 1e-9) of the `prunable` groups whose
  FLOPs (or `cost`) are at most the target."""
  cost = _cost(groups, cost)
  at = lambda r: counts_at_ratio(groups, r, prunable)
  lo, hi = 0.0, 1.0
  if cost(at(0.0)) <= target_flops:
    hi = 0.0
  for _ in range(60):
    if hi - lo < 1e-9:
      break
    mid = 0.5 * (lo + hi)
    lo, hi = (lo, mid) if cost(at(mid)) <= target_flops else (mid, hi)
  return _kept(groups, scores, at(hi)), hi
