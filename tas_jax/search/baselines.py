"""Architectures to compare a search against, at the FLOPs of its result (the paper's baselines).

- `uniform`: every conv scaled by one width multiplier, full depth: the pre-defined pruning that
  TAS is compared with. The multiplier is found by bisection on the exact FLOP count.
- `random`: widths and depths drawn uniformly from the search space's candidates, redrawn until
  the FLOPs fall within a tolerance of the target.
"""

from __future__ import annotations

import numpy as np

from tas_jax.models.arch import Architecture, ArchError
from tas_jax.ops import flops
from tas_jax.search.space import SearchSpace


def uniform(space: SearchSpace, target_flops: float, name: str = "") -> Architecture:
  """Full depth, widths max(1, round(m·C)) with m chosen so the FLOPs are closest to the target."""
  full_depths = [max(d) for d in space.depths]

  def at(m: float) -> Architecture:
    return space.architecture_of_widths(
        [max(1, round(m * s.full)) for s in space.slots], full_depths, name)

  lo, hi = 0.0, 1.0
  for _ in range(40):  # FLOPs grow with m; 40 halvings are far below one channel
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if flops.count(at(mid)).flops < target_flops else (lo, mid)
  return min((at(lo), at(hi)), key=lambda a: abs(flops.count(a).flops - target_flops))


def random(space: SearchSpace, target_flops: float, tolerance: float, seed: int,
           name: str = "", max_draws: int = 100_000) -> Architecture:
  """A uniform draw of one candidate per slot and per stage depth with |F - target| <= tol·target."""
  rng = np.random.default_rng(seed)
  for _ in range(max_draws):
    w_idx = [rng.integers(s.num_valid) for s in space.slots]
    d_idx = [rng.integers(len(d)) for d in space.depths]
    a = space.architecture(w_idx, d_idx, name)
    if abs(flops.count(a).flops - target_flops) <= tolerance * target_flops:
      return a
  raise ArchError(f"no random architecture within {100 * tolerance:g}% of {target_flops / 1e6:.2f} M "
                  f"FLOPs in {max_draws} draws: raise config.distill.flops_tolerance")
