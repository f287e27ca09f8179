"""The FLOPs cost of the search (spec §4): expected FLOPs E[F], the argmax network's F(A), the loss.

Both are traced functions of the architecture logits, so the architecture step computes them
inside `jit`. F(A) is the exact count of the network extraction builds (truncated stages and the
inserted stride-1 projections included) and equals `tas_jax.ops.flops.count` of
`space.architecture(argmax)` — a test checks this on random architectures.

E[F] comes in two forms (`config.search.expected_flops`):
  "released" (default, spec §4): the official code's chain form — each conv's expected input width
      is the previous conv's expected width along the unpruned network (the previous stage's last
      block, whatever the depths), each block's FLOPs are weighted by P(stage depth ≥ its
      position), only the unpruned network's projections are priced, and the head is
      E[c_last]·classes.
  "exact" (an option, a deviation from the released code): the expectation of F(A) when every
      slot's width and every stage's depth are drawn independently from softmax(α), softmax(β).
      It follows the real input of every block (the last kept block of the previous stage) and
      prices the projections that width mismatches insert, so it equals F(A) when the logits are
      one-hot.
Both read the distributions of the search variant: a dimension TAS(W) or TAS(D) does not search
is at its full value (`SearchSpace.masked_logits`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tas_jax.methods.tas.space import SearchSpace
from tas_jax.ops.flops import conv_flops

EXPECTED_FORMS = ("released", "exact")
BANDS = ("released", "symmetric")
IN_BAND = ("free", "centred")


def _stem_term(space: SearchSpace, width):
  s = space.slots[0]
  return conv_flops(s.kernel, space.base.input_channels, width, s.out_size)


def exact_flops(space: SearchSpace, width_idx, depth_idx) -> jax.Array:
  """F(A) of the network with these candidate indices (float32, traced)."""
  widths = jnp.asarray(space.width_table())[jnp.arange(space.num_slots), width_idx].astype(jnp.float32)
  depths = jnp.asarray(space.depth_table())[jnp.arange(len(space.depths)), depth_idx]
  total = _stem_term(space, widths[0])
  current = widths[0]
  for blk in space.blocks:
    cin = prev = current
    f = 0.0
    for i in blk.slots:
      s = space.slots[i]
      f = f + conv_flops(s.kernel, prev, widths[i], s.out_size)
      prev = widths[i]
    if blk.stride == 2:
      f = f + conv_flops(1, cin, prev, blk.in_size // 2)
    else:
      f = f + jnp.where(cin != prev, conv_flops(1, cin, prev, blk.in_size), 0.0)
    kept = blk.index < depths[blk.stage]
    total = total + jnp.where(kept, f, 0.0)
    current = jnp.where(kept, prev, current)
  classes = space.base.num_classes
  return total + current * classes + classes


def expected_flops(space: SearchSpace, logits: dict, form: str = "released",
                   variant: str = "tas") -> jax.Array:
  """E[F], differentiable in α and β (plain softmax: no Gumbel noise, no τ)."""
  if form not in EXPECTED_FORMS:
    raise ValueError(f"expected-FLOPs form {form!r}: allowed {', '.join(EXPECTED_FORMS)}")
  pa, pb = space.probabilities(logits, variant)                   # (S, 8), (stages, D)
  table = jnp.asarray(space.width_table(), jnp.float32)
  e_width = jnp.sum(pa * table, -1)                               # E[c_out] per slot
  dtab = space.depth_table()
  # P(stage depth ≥ k) for k = 1 … max blocks
  keep = {(s, k): jnp.sum(pb[s] * jnp.asarray(dtab[s] >= k)) for s in range(len(space.depths))
          for k in range(1, len(space.base.stages[s]) + 1)}
  last_slot = {(b.stage, b.index): b.slots[-1] for b in space.blocks}

  def stage_output_mixture(s):
    """[(probability, slot)] of the width leaving stage s (its last kept block's last conv)."""
    return [(pb[s, j], last_slot[(s, int(dtab[s, j]) - 1)]) for j in range(len(space.depths[s]))]

  def mismatch_product(slot_in, slot_out):
    """E[1[c_in ≠ c_out]·c_in·c_out] for independent slots."""
    w_in, w_out = table[slot_in][:, None], table[slot_out][None, :]
    joint = pa[slot_in][:, None] * pa[slot_out][None, :]
    return jnp.sum(joint * jnp.where(w_in != w_out, w_in * w_out, 0.0))

  total = _stem_term(space, e_width[0])
  chain_prev = 0  # "released": the previous conv of the unpruned chain
  for blk in space.blocks:
    if form == "exact":
      if blk.index > 0:
        mixture = [(1.0, last_slot[(blk.stage, blk.index - 1)])]
      elif blk.stage == 0:
        mixture = [(1.0, 0)]
      else:
        mixture = stage_output_mixture(blk.stage - 1)
      e_in = sum(p * e_width[m] for p, m in mixture)
    else:
      e_in = e_width[chain_prev]
    f, prev = 0.0, e_in
    for i in blk.slots:
      s = space.slots[i]
      f = f + conv_flops(s.kernel, prev, e_width[i], s.out_size)
      prev = e_width[i]
    out_slot = blk.slots[-1]
    if blk.stride == 2:
      f = f + conv_flops(1, e_in, e_width[out_slot], blk.in_size // 2)
    elif form == "exact":
      f = f + sum(p * mismatch_product(m, out_slot) for p, m in mixture) * blk.in_size ** 2
    elif blk.shortcut != "identity":
      f = f + conv_flops(1, e_in, e_width[out_slot], blk.in_size)
    total = total + keep[(blk.stage, blk.index + 1)] * f
    chain_prev = out_slot
  classes = space.base.num_classes
  if form == "exact":
    e_last = sum(p * e_width[m] for p, m in stage_output_mixture(len(space.depths) - 1))
    return total + e_last * classes + classes
  return total + e_width[chain_prev] * classes  # the released head term has no bias


def cost_loss(expected, exact, flops_max: float, ratio: float, tolerance: float = 0.05,
              band: str = "released", in_band: str = "free") -> jax.Array:
  """±log E[F] outside the target band, 0 inside; the band's position decides the sign only.

  released: push down if F(A) > R, up if F(A) < R − t·F_max (R = ratio·F_max).
  symmetric (the paper's text): push down above (1+t)·R, up below (1−t)·R.
  in_band: what happens while F(A) is inside the band. "free" (released): no cost. "centred" (a
  deviation): E[F] above the band's centre is pushed down (+log E[F]), below it left alone: the
  cost switches where E[F] crosses the centre, so E[F] settles there, and an argmax that stays near
  E[F] stays in the band instead of sliding along its top edge and flipping across it. (Holding
  E[F] to the whole band, or capping it at the band's top, did not settle: RESULTS.md, "Targets
  0.3 and 0.7".)
  """
  target = ratio * flops_max
  if band == "released":
    high, low = target, target - tolerance * flops_max
  else:
    high, low = (1 + tolerance) * target, (1 - tolerance) * target
  log_e = jnp.log(expected)

  def signed(value, inside):
    return jnp.where(value > high, log_e, jnp.where(value < low, -log_e, inside))

  if in_band not in IN_BAND:
    raise ValueError(f"in_band={in_band!r}: allowed {', '.join(IN_BAND)}")
  inside = jnp.where(expected > (high + low) / 2, log_e, 0.0) if in_band == "centred" else 0.0
  return signed(exact, inside)
