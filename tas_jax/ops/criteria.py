"""Per-channel scores of a trained network, from the filters that produce each channel group.

A group's channel j is produced by filter j of every conv whose output is the group (one conv for
an inner activation; the stem or projection and every block's last conv for a residual chain, see
`tas_jax.models.channels`). A filter is `kernel[..., j]`, its (kh, kw, in) weights.

- `l1`: Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017): the L1 norm of the
  channel's filters, summed over the group's convs. Low = unimportant.
- `fpgm`: He et al., "Filter Pruning via Geometric Median" (CVPR 2019): for every conv, the sum of
  Euclidean distances from filter j to the conv's other filters, summed over the group's convs.
  The filter with the smallest sum is the one nearest the filters' geometric median — what the
  others can stand in for — so low = removed first.
"""

from __future__ import annotations

import numpy as np


def l1(kernels: list[np.ndarray]) -> np.ndarray:
  """(C,) L1 norms of the channels' filters, summed over the group's convs."""
  return sum(np.abs(k.astype(np.float64)).reshape(-1, k.shape[-1]).sum(0) for k in kernels)


def relative(scores: np.ndarray) -> np.ndarray:
  """Scores over their group's mean: what a global ranking compares. Raw L1 norms grow with a
  layer's fan-in and training scale, and a per-weight mean shrinks with it (He initialisation),
  so either would empty whole stages; relative to its group, a channel is judged against its
  neighbours."""
  return scores / scores.mean()


def fpgm(kernels: list[np.ndarray]) -> np.ndarray:
  """(C,) sum over the group's convs of Σ_k ‖F_j − F_k‖₂, F the conv's flattened filters."""
  total = 0.0
  for k in kernels:
    filters = k.astype(np.float64).reshape(-1, k.shape[-1]).T  # (C, fan-in)
    squared = (filters**2).sum(1)
    gram = filters @ filters.T
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0.0))
    total = total + distances.sum(1)
  return total
