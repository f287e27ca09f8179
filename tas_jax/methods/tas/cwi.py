"""Channel-wise interpolation (CWI) and the fused per-conv aggregation (Dong & Yang 2019, as
released).

CWI resizes a C-channel map to C' channels by adaptive average pooling along channels: output
channel j is the mean of input channels floor(j·C/C') … ceil((j+1)·C/C')−1. Example, C=3 → C'=5:
[1, 10, 100] → [1, 5.5, 10, 55, 100]. CWI is linear along channels, so it is a C'×C matrix.

In the search every tensor is kept at the full width with zero tails, and the sampled widths are
traced values: `cwi_matrix` builds the pooling matrix for traced (c_in, c_out) inside a fixed
full-width square, so the shapes — and the compiled program — never change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cwi_matrix(c_in, c_out, size: int) -> jax.Array:
  """(size, size) matrix P with y = P @ x resizing the first c_in channels of x to the first c_out
  channels of y; rows ≥ c_out are zero. c_in, c_out may be traced integers (1 ≤ c ≤ size)."""
  j = jnp.arange(size)[:, None]
  c = jnp.arange(size)[None, :]
  start = (j * c_in) // c_out
  end = ((j + 1) * c_in + c_out - 1) // c_out  # exclusive: ceil((j+1)·c_in / c_out)
  inside = (c >= start) & (c < end) & (j < c_out)
  count = jnp.maximum(end - start, 1)
  return jnp.where(inside, 1.0 / count, 0.0).astype(jnp.float32)


def cwi(x: jax.Array, c_out: int) -> jax.Array:
  """CWI of the last axis of x (static sizes): (..., C) → (..., c_out)."""
  c_in = x.shape[-1]
  size = max(c_in, c_out)
  p = cwi_matrix(c_in, c_out, size)[:c_out, :c_in]
  return x @ p.T.astype(x.dtype)


def pair_matrices(widths_ab, size: int) -> jax.Array:
  """(2, size, size): CWI(C_i → C*) for the two sampled candidates i of one conv,
  C* = max(C_a, C_b). They depend on the sampled integer widths only (no gradient), so the
  supernet builds them for all of its convs at once, outside the network."""
  c_star = jnp.maximum(widths_ab[0], widths_ab[1])
  return jnp.stack([cwi_matrix(widths_ab[i], c_star, size) for i in range(2)])


def mix_matrix(widths_ab, weights_ab, scale_ab, size: int) -> jax.Array:
  """The aggregation of one conv as one (size, size) channel-mixing matrix M (out = M @ in):

      M = Σ_{i∈{a,b}} w_i · CWI(C_i → C*) · diag(s_i),   C* = max(C_a, C_b)

  where s_i is candidate i's per-channel scale (its BN γ, or ones without BN) and CWI only reads
  the first C_i channels, so candidate i's mask is built in. Channels ≥ C* come out zero.
  """
  return mix_from_pairs(pair_matrices(widths_ab, size), weights_ab, scale_ab)


def mix_from_pairs(pairs: jax.Array, weights_ab, scale_ab: jax.Array) -> jax.Array:
  """`mix_matrix` from the conv's `pair_matrices`, its candidates' weights (2,) and scales
  (2, size)."""
  return (
    weights_ab[0] * pairs[0] * scale_ab[0][None, :]
    + weights_ab[1] * pairs[1] * scale_ab[1][None, :]
  )
