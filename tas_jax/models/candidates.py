"""The pruned widths and depths a ResNet can take (TAS's search space, Dong & Yang 2019): TAS
searches over them, and the random baseline draws from them, so both live apart from any method.

Width: every main conv of full width C keeps floor(C·r) channels, r ∈ {0.3, 0.4, …, 1.0}.
Depth: CIFAR stages of n ≤ 3 blocks keep 1 … n; longer ones the odd counts 1, 3, 5, … (and n);
ImageNet stages of d blocks keep d·j // m for j = 1 … m, m the fewest blocks of any stage.
"""

from __future__ import annotations

from tas_jax.models.arch import Architecture

WIDTH_RATIOS_TENTHS = tuple(range(3, 11))  # r = 0.3, 0.4, …, 1.0
NUM_WIDTH_CANDIDATES = len(WIDTH_RATIOS_TENTHS)


def width_candidates(full: int) -> tuple[int, ...]:
  """floor(C·r) for r ∈ {0.3, …, 1.0}, deduplicated and sorted (zeros dropped)."""
  return tuple(sorted({full * t // 10 for t in WIDTH_RATIOS_TENTHS} - {0}))


def depth_candidates(arch: Architecture) -> tuple[tuple[int, ...], ...]:
  """Per stage, the numbers of kept blocks to choose between."""
  blocks = arch.depths
  if arch.dataset_kind == "imagenet":
    m = min(blocks)
    return tuple(tuple(sorted({d * j // m for j in range(1, m + 1)})) for d in blocks)
  out = []
  for n in blocks:
    if n <= 3:
      out.append(tuple(range(1, n + 1)))
    else:
      out.append(tuple(sorted(set(range(1, n + 1, 2)) | ({n} if n % 2 == 0 else set()))))
  return tuple(out)
