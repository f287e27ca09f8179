"""Two-of-K Gumbel sampling of a width (Dong & Yang 2019, as released), under `jit` with
`jax.random`.

For one searched conv with candidate logits α (K,) and temperature τ:
  g ~ Gumbel(0, 1);  ℓ = (log_softmax(α) + g) / τ;  p = softmax(ℓ)
  a, b = two distinct candidates drawn from p (no gradient through the draw): the top-2 of
         log p + a second Gumbel draw, which is sampling without replacement;
  (w_a, w_b) = softmax(ℓ_a, ℓ_b), differentiable in α.
log_softmax only shifts every ℓ by the same constant, which neither softmax(ℓ) nor the pair's
softmax sees; we drop it, so α gets gradient only at a and b, exactly (not up to rounding).
Padded candidate slots carry α = -inf and are never drawn while two real ones exist.
"""

from __future__ import annotations

import jax


def perturbed_logits(key: jax.Array, alpha: jax.Array, tau) -> jax.Array:
  """ℓ = (α + g) / τ with fresh Gumbel noise g: the paper's (log_softmax(α) + g) / τ up to a
  constant shift, which no softmax of ℓ depends on."""
  g = jax.random.gumbel(key, alpha.shape, alpha.dtype)
  return (alpha + g) / tau


def draw_two_distinct(key: jax.Array, log_p: jax.Array) -> jax.Array:
  """Indices (2,) of two distinct draws without replacement from p = exp(log_p), first draw
  first."""
  g = jax.random.gumbel(key, log_p.shape, log_p.dtype)
  _, idx = jax.lax.top_k(jax.lax.stop_gradient(log_p) + g, 2)
  return idx


def sample_pair(key: jax.Array, alpha: jax.Array, tau) -> tuple[jax.Array, jax.Array]:
  """(indices (2,), weights (2,)) for one conv; weights sum to 1 and carry α's gradient."""
  k_noise, k_draw = jax.random.split(key)
  ell = perturbed_logits(k_noise, alpha, tau)
  idx = draw_two_distinct(k_draw, jax.nn.log_softmax(ell))
  weights = jax.nn.softmax(ell[idx])
  return idx, weights


def sample_pairs(key: jax.Array, alphas: jax.Array, tau) -> tuple[jax.Array, jax.Array]:
  """`sample_pair` for every row of α (S, K): indices (S, 2), weights (S, 2)."""
  keys = jax.random.split(key, alphas.shape[0])
  return jax.vmap(sample_pair, (0, 0, None))(keys, alphas, tau)


def soft_depth_weights(key: jax.Array, beta: jax.Array, tau) -> jax.Array:
  """Depth mixture of one stage: q = softmax((log_softmax(β) + g) / τ) over all candidates."""
  # (the shift-free form of perturbed_logits gives the same q)
  return jax.nn.softmax(perturbed_logits(key, beta, tau))
