"""Architectures to compare a search against, at the FLOPs of its result (the paper's baselines).

- `uniform`: every conv scaled by one width multiplier, full depth: the pre-defined pruning that
  a search is compared with. The multiplier is found by bisection on the exact FLOP count.
- `random`: widths and depths drawn uniformly from the pruning candidates (`tas_jax.models.
  candidates`), redrawn until the FLOPs fall within a tolerance of the target.
Both are method-independent: they read the unpruned network's topology, not a method's space.
"""

from __future__ import annotations

import numpy as np

from tas_jax.models import candidates, topology
from tas_jax.models.arch import ArchError, Architecture
from tas_jax.ops import flops


def uniform(base: Architecture, target_flops: float, name: str = "") -> Architecture:
  """Full depth, widths max(1, round(m·C)) with m chosen so the FLOPs are closest to the target."""
  convs = topology.of(base).main_convs()

  def at(m: float) -> Architecture:
    return topology.pruned(base, [max(1, round(m * c.out_width)) for c in convs], base.depths, name)

  lo, hi = 0.0, 1.0
  for _ in range(40):  # FLOPs grow with m; 40 halvings are far below one channel
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if flops.count(at(mid)).flops < target_flops else (lo, mid)
  return min((at(lo), at(hi)), key=lambda a: abs(flops.count(a).flops - target_flops))


def random(
  base: Architecture,
  target_flops: float,
  tolerance: float,
  seed: int,
  name: str = "",
  max_draws: int = 100_000,
) -> Architecture:
  """A uniform draw of one candidate width per conv and one depth per stage with
  |F - target| <= tol·target."""
  widths = [candidates.width_candidates(c.out_width) for c in topology.of(base).main_convs()]
  depths = candidates.depth_candidates(base)
  rng = np.random.default_rng(seed)
  for _ in range(max_draws):
    w = [cands[rng.integers(len(cands))] for cands in widths]
    d = [choices[rng.integers(len(choices))] for choices in depths]
    a = topology.pruned(base, w, d, name)
    if abs(flops.count(a).flops - target_flops) <= tolerance * target_flops:
      return a
  raise ArchError(
    f"no random architecture within {100 * tolerance:g}% of {target_flops / 1e6:.2f} M "
    f"FLOPs in {max_draws} draws: raise config.distill.flops_tolerance"
  )
