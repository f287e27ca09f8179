"""The FLOPs cost of the search (as TAS's released code prices it): expected FLOPs E[F], the
argmax network's F(A), the loss.

Both are traced functions of the architecture logits, so the architecture step computes them
inside `jit`. F(A) is the exact count of the network extraction builds (truncated stages and the
inserted stride-1 projections included) and equals `tas_jax.ops.flops.count` of
`space.architecture(argmax)` — a test checks this on random architectures.

E[F] comes in two forms (`config.search.expected_flops`):
  "released" (default, the released TAS code): the official code's chain form — each conv's
      expected input width is the previous conv's expected width along the unpruned network (the
      previous stage's last block, whatever the depths), each block's FLOPs are weighted by
      P(stage depth ≥ its position), only the unpruned network's projections are priced, and the
      head is E[c_last]·classes.
  "exact" (an option, a deviation from the released code): the expectation of F(A) when every
      slot's width and every stage's depth are drawn independently from softmax(α), softmax(β).
      It follows the real input of every block (the last kept block of the previous stage) and
      prices the projections that width mismatches insert, so it equals F(A) when the logits are
      one-hot.
Both read the distributions of the search variant: a dimension TAS(W) or TAS(D) does not search
is at its full value (`SearchSpace.masked_logits`).

`target.cost=latency` prices the same walk with a latency table (`tas_jax.latency`) instead of
conv FLOPs: one walk over the network (`expected_cost`), two pricers. Conv FLOPs are bilinear in
the two widths, so the FLOPs pricer multiplies expected widths; a table is not, so the latency
pricer takes the expectation over the pair, p_in · T · p_out, which is the same thing for a table
of FLOPs. F(A)'s latency is the exact form at one-hot distributions: the table latency of the
network extraction builds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tas_jax import latency, target as target_lib
from tas_jax.methods.tas.space import SearchSpace
from tas_jax.models import topology
from tas_jax.ops.flops import conv_flops

MEASURES = ("flops", "latency")
EXPECTED_FORMS = ("released", "exact")
BRANCH_FORMS = ("exact", "released")
BANDS = ("released", "symmetric")
IN_BAND = ("free", "centred")


def _stem_term(space: SearchSpace, width):
  s = space.slots[0]
  return conv_flops(s.kernel, space.base.input_channels, width, s.out_size)


def exact_flops(space: SearchSpace, width_idx, depth_idx) -> jax.Array:
  """F(A) of the network with these candidate indices (float32, traced)."""
  widths = jnp.asarray(space.width_table())[jnp.arange(space.num_slots), width_idx].astype(
    jnp.float32
  )
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


INPUT = -1  # the "slot" of the image's channels in a width mixture


class FlopsPricer:
  """Prices convs in FLOPs at expected widths. Conv FLOPs are bilinear in the two widths, so with
  independent choices this is their expected FLOPs, the released code's formula."""

  def __init__(self, space: SearchSpace, pa):
    self.space = space
    self.e_width = jnp.sum(pa * jnp.asarray(space.width_table(), jnp.float32), -1)  # E[c_out]
    self.table, self.pa = jnp.asarray(space.width_table(), jnp.float32), pa

  def width(self, mixture):
    return sum(
      p * (self.space.base.input_channels if m == INPUT else self.e_width[m]) for p, m in mixture
    )

  def conv(self, conv: topology.Conv, mixture_in, slot_out):
    return conv_flops(conv.kernel, self.width(mixture_in), self.e_width[slot_out], conv.out_size)

  def mismatch(self, size: int, mixture_in, slot_out):
    """E[1[c_in ≠ c_out]·F(1x1 projection)] for independent slots (the exact form only)."""

    def product(slot_in):
      w_in, w_out = self.table[slot_in][:, None], self.table[slot_out][None, :]
      joint = self.pa[slot_in][:, None] * self.pa[slot_out][None, :]
      return jnp.sum(joint * jnp.where(w_in != w_out, w_in * w_out, 0.0))

    return sum(p * product(m) for p, m in mixture_in) * size**2

  def head(self, mixture, bias: bool):
    classes = self.space.base.num_classes
    return self.width(mixture) * classes + (classes if bias else 0)


class LatencyPricer:
  """Prices convs by a latency table (`tas_jax.latency`): E[T(c_in, c_out)] = p_in · T · p_out
  over the candidates of the feeding and the priced slot, independent as for FLOPs. The
  classifier is not in the table and costs nothing."""

  def __init__(self, space: SearchSpace, pa, table):
    self.space, self.pa, self.table = space, pa, table

  def _matrix(self, key_of, slot_in, slot_out, off_diagonal=False):
    """T over (input candidates, output candidates), padded as the width table (numpy)."""
    ins = (
      (self.space.base.input_channels,)
      if slot_in == INPUT
      else self.space.slots[slot_in].candidates
    )
    outs = self.space.slots[slot_out].candidates
    return np.array(
      [[0.0 if off_diagonal and a == b else self.table[key_of(a, b)] for b in outs] for a in ins],
      np.float32,
    )

  def _priced(self, key_of, mixture_in, slot_out, off_diagonal=False):
    total = 0.0
    for p, m in mixture_in:
      p_in = jnp.ones(1) if m == INPUT else self.pa[m]
      t = jnp.asarray(self._matrix(key_of, m, slot_out, off_diagonal))
      total = total + p * (p_in @ t @ self.pa[slot_out])
    return total

  def conv(self, conv: topology.Conv, mixture_in, slot_out):
    return self._priced(lambda a, b: latency.ConvKey.of(conv, a, b), mixture_in, slot_out)

  def mismatch(self, size: int, mixture_in, slot_out):
    return self._priced(
      lambda a, b: latency.ConvKey(1, 1, size, a, b), mixture_in, slot_out, off_diagonal=True
    )

  def head(self, mixture, bias: bool):
    return 0.0


def expected_flops(
  space: SearchSpace, logits: dict, form: str = "released", variant: str = "tas"
) -> jax.Array:
  """E[F], differentiable in α and β (plain softmax: no Gumbel noise, no τ)."""
  pa, pb = space.probabilities(logits, variant)  # (S, 8), (stages, D)
  return expected_cost(space, pa, pb, FlopsPricer(space, pa), form)


def expected_latency(
  space: SearchSpace, logits: dict, table, form: str = "released", variant: str = "tas"
) -> jax.Array:
  """E[latency] from a latency table, in the same chain (or exact) form as E[F]."""
  pa, pb = space.probabilities(logits, variant)
  return expected_cost(space, pa, pb, LatencyPricer(space, pa, table), form)


def priced(
  space: SearchSpace,
  logits: dict,
  target,
  form: str = "released",
  variant: str = "tas",
  branch: str = "exact",
) -> tuple[jax.Array, jax.Array]:
  """(E[cost], the argmax network's cost that picks the loss's branch) in the target's measure:
  one walk, priced in FLOPs or by the target's latency table. `branch`: "exact" (tas_jax) is the
  cost of the network extraction builds; "released" is the released code's estimate
  (`released_argmax_cost`)."""
  argmax = space.argmax(logits, variant)
  if branch == "released":
    chosen = released_argmax_cost(space, *argmax, target)
  elif target.by_table:
    chosen = exact_latency(space, target.table, *argmax)
  else:
    chosen = exact_flops(space, *argmax)
  if target.by_table:
    return expected_latency(space, logits, target.table, form, variant), chosen
  return expected_flops(space, logits, form, variant), chosen


def released_argmax_cost(space: SearchSpace, width_idx, depth_idx, target=None) -> jax.Array:
  """The released search's estimate of F(A) (its `get_flop('genotype')`): the chain form of E[F]
  at one-hot distributions. Where a stage is truncated, the next stage's first conv is priced
  with the dropped last block's width; only the unpruned network's projections are priced (not
  those a width mismatch inserts); the classifier has no bias. With a latency target, the same walk
  priced by its table."""
  pa = jax.nn.one_hot(width_idx, space.width_table().shape[1])
  pb = jax.nn.one_hot(depth_idx, space.depth_table().shape[1])
  by_table = target is not None and target.by_table
  pricer = LatencyPricer(space, pa, target.table) if by_table else FlopsPricer(space, pa)
  return expected_cost(space, pa, pb, pricer, "released")


def exact_latency(space: SearchSpace, table, width_idx, depth_idx) -> jax.Array:
  """The table latency of the network with these candidate indices (traced): the exact form at
  one-hot distributions, which follows the network's real convs."""
  pa = jax.nn.one_hot(width_idx, space.width_table().shape[1])
  pb = jax.nn.one_hot(depth_idx, space.depth_table().shape[1])
  return expected_cost(space, pa, pb, LatencyPricer(space, pa, table), "exact")


def expected_cost(space: SearchSpace, pa, pb, pricer, form: str) -> jax.Array:
  """The expected cost of the network under width distributions pa (S, 8) and depth
  distributions pb (stages, D), each conv priced by `pricer` (see the module docstring for the
  two forms)."""
  if form not in EXPECTED_FORMS:
    raise ValueError(f"expected-cost form {form!r}: allowed {', '.join(EXPECTED_FORMS)}")
  dtab = space.depth_table()
  topo = topology.of(space.base)
  # P(stage depth ≥ k) for k = 1 … max blocks
  keep = {
    (s, k): jnp.sum(pb[s] * jnp.asarray(dtab[s] >= k))
    for s in range(len(space.depths))
    for k in range(1, len(space.base.stages[s]) + 1)
  }
  last_slot = {(b.stage, b.index): b.slots[-1] for b in space.blocks}

  def stage_output_mixture(s):
    """[(probability, slot)] of the width leaving stage s (its last kept block's last conv)."""
    return [(pb[s, j], last_slot[(s, int(dtab[s, j]) - 1)]) for j in range(len(space.depths[s]))]

  total = pricer.conv(topo.stem, [(1.0, INPUT)], 0)
  chain_prev = 0  # "released": the previous conv of the unpruned chain
  for blk, tblk in zip(space.blocks, topo.blocks):
    if form == "exact":
      if blk.index > 0:
        mixture = [(1.0, last_slot[(blk.stage, blk.index - 1)])]
      elif blk.stage == 0:
        mixture = [(1.0, 0)]
      else:
        mixture = stage_output_mixture(blk.stage - 1)
    else:
      mixture = [(1.0, chain_prev)]
    f, prev = 0.0, mixture
    for i, conv in zip(blk.slots, tblk.convs):
      f = f + pricer.conv(conv, prev, i)
      prev = [(1.0, i)]
    out_slot = blk.slots[-1]
    if blk.stride == 2 or (form == "released" and blk.shortcut != "identity"):
      f = f + pricer.conv(tblk.projection, mixture, out_slot)
    elif form == "exact":
      f = f + pricer.mismatch(blk.in_size, mixture, out_slot)
    total = total + keep[(blk.stage, blk.index + 1)] * f
    chain_prev = out_slot
  if form == "exact":
    return total + pricer.head(stage_output_mixture(len(space.depths) - 1), bias=True)
  return total + pricer.head([(1.0, chain_prev)], bias=False)  # the released head has no bias


def cost_loss(
  expected,
  exact,
  flops_max: float,
  ratio: float,
  tolerance: float = 0.05,
  band: str = "released",
  in_band: str = "free",
) -> jax.Array:
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
  low, high = (flops_max * b for b in target_lib.band_bounds(band, ratio, tolerance))
  log_e = jnp.log(expected)

  def signed(value, inside):
    return jnp.where(value > high, log_e, jnp.where(value < low, -log_e, inside))

  if in_band not in IN_BAND:
    raise ValueError(f"in_band={in_band!r}: allowed {', '.join(IN_BAND)}")
  inside = jnp.where(expected > (high + low) / 2, log_e, 0.0) if in_band == "centred" else 0.0
  return signed(exact, inside)
