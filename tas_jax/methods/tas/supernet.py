"""The TAS supernet (Dong & Yang 2019, as released): width and depth mixtures over a ResNet, at
static shapes.

`SuperNet` is a pure function of (weights, batch statistics, architecture logits, key, τ). The
architecture logits are an input, not a Flax variable, so the weight optimiser and the
architecture optimiser each see only their own parameters.

Every tensor stays at the unpruned width with zero tails. Each searched conv runs once at full
width; its 8 candidates share the batch statistics of a channel but have their own BN affine
parameters and running statistics. The two sampled candidates are combined by one channel-mixing
matrix (`tas_jax.ops.cwi.mix_matrix`): BN affine, candidate mask, CWI to C* = max(C_a, C_b) and
the weighted sum are all linear along channels. Every conv of the search has per-candidate BN, the
projection shortcuts included (the official `search_forward` applies it even where the pruned CIFAR
network has none), and no BN starts at zero (the official search network ignores
`zero_init_residual`). Depth: all blocks of a stage run; the stage output is
Σ_j q_j · CWI(F_{d_j} → widest), each F_d resized from its true channel count — after a zero-padded
residual add, max(input, last conv) channels. `tests/test_supernet_reference.py` checks all of it
against a plain re-implementation of the official forward. The layer names are the plain ResNet's,
so weights map across (`supernet_params_from_plain`).

Variants: "tas" (width + depth), "width" (full depth), "depth" (full widths, one BN, no CWI,
and BN on a projection only where the plain network has one, as the released depth search).
`argmax=True` runs the most likely width and depth everywhere. Its BN running statistics are
averages over many sampled upstream widths and do not fit one fixed network, so the search
evaluates the argmax network with batch statistics (`train=True, argmax=True`, immutable
`batch_stats`); `train=False` uses the running statistics.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tas_jax.methods.tas import cwi, gumbel
from tas_jax.methods.tas.space import SearchSpace
from tas_jax.models import resnet, scan, topology
from tas_jax.models.candidates import NUM_WIDTH_CANDIDATES

VARIANTS = ("tas", "width", "depth")
BN_MOMENTUM = 0.9
BN_EPS = 1e-5


class CandidateBatchNorm(nn.Module):
  """One BN per width candidate: affine parameters and running statistics of shape (K, C).

  Returns (mean, var, scales, biases): the statistics to normalise with and the two sampled
  candidates' affine parameters (2, C); the caller folds them into its channel mixing. Training
  uses the batch statistics (the same for every candidate of a channel) and, when `batch_stats`
  is mutable, updates the running statistics of the sampled candidates only. Evaluation uses the
  running statistics of `idx[0]`. Candidates are picked by one-hot products, not gathers and
  scatters: exact, and far cheaper for XLA to compile and differentiate.
  """

  width: int
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z, idx, train: bool):
    k = NUM_WIDTH_CANDIDATES
    scale = self.param("scale", nn.initializers.ones, (k, self.width))
    bias = self.param("bias", nn.initializers.zeros, (k, self.width))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((k, self.width)))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((k, self.width)))
    pick = jax.nn.one_hot(idx, k, dtype=jnp.float32)  # (2, K)
    select = lambda rows, table: jnp.sum(rows[..., None] * table, -2)
    if train:
      z32 = z.astype(jnp.float32)
      mean = jnp.mean(z32, (0, 1, 2))
      mean2 = jnp.mean(z32 * z32, (0, 1, 2))
      if self.axis_name is not None:
        mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)
      var = jnp.maximum(mean2 - mean * mean, 0.0)
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        moved = jnp.max(pick, 0)[:, None] > 0  # (K, 1): the sampled rows
        ra_mean.value = jnp.where(
          moved, BN_MOMENTUM * ra_mean.value + (1 - BN_MOMENTUM) * mean, ra_mean.value
        )
        ra_var.value = jnp.where(
          moved, BN_MOMENTUM * ra_var.value + (1 - BN_MOMENTUM) * var, ra_var.value
        )
    else:
      mean, var = select(pick[0], ra_mean.value), select(pick[0], ra_var.value)
    return mean, var, select(pick, scale), select(pick, bias)


class SearchConv(nn.Module):
  """A full-width conv whose output is the weighted CWI mixture of two width candidates."""

  width: int
  kernel: int = 3
  stride: int = 1
  mix: bool = True  # False: the "depth" variant (one candidate, the full width)
  bn: bool = True  # False: no BN (the depth variant's projections where the plain
  # network has none, as the released depth-search network)
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32  # of the conv and the mixing; weights and BN statistics float32

  @nn.compact
  def __call__(self, x, choice, train: bool):
    """choice = (idx (2,), widths (2,), weights (2,), pairs) of this conv's sampled candidates;
    pairs are their CWI matrices (2, width, width) (`cwi.pair_matrices`), None unmixed."""
    idx, _, weights, pairs = choice
    z = resnet.conv(self.width, self.kernel, self.stride, self.dtype)(x)
    if not self.bn:
      return z
    mean, var, scales, biases = CandidateBatchNorm(self.width, self.axis_name, name="bn")(
      z, idx, train
    )
    inv_std = jax.lax.rsqrt(var + BN_EPS)
    # centred first: the matmul's rounding then scales with the normalised values (bf16)
    centred = (z - mean).astype(self.dtype)
    if not self.mix:
      return centred * (scales[0] * inv_std).astype(self.dtype) + biases[0].astype(self.dtype)
    # normalisation, BN affine, candidate masks, CWI and the weighted sum: one matrix
    m = cwi.mix_from_pairs(pairs, weights, scales) * inv_std[None, :]
    bias = jnp.sum(weights[:, None, None] * pairs * biases[:, None, :], (0, 2))
    return centred @ m.T.astype(self.dtype) + bias.astype(self.dtype)


def sample_choices(space: SearchSpace, logits: dict, key, tau, sample: bool, variant: str):
  """The sampled (or argmax) architecture of one forward pass.

  Returns per slot idx (S, 2), widths (S, 2), weights (S, 2) of its two candidates, and per stage
  the depth weights q (stages, D). An unsearched dimension is at its full value (one candidate of
  weight 1, depth one-hot at the deepest): `space.masked_logits` pins it.
  """
  alpha, beta = space.masked_logits(logits, variant)
  table = jnp.asarray(space.width_table())
  n_slots, n_stages = space.num_slots, len(space.depths)
  one = jnp.tile(jnp.array([1.0, 0.0]), (n_slots, 1))
  if sample and variant != "depth":
    idx, weights = gumbel.sample_pairs(jax.random.fold_in(key, 0), alpha, tau)
  else:
    best = jnp.argmax(alpha, -1)
    idx, weights = jnp.stack([best, best], 1), one
  widths = table[jnp.arange(n_slots)[:, None], idx]
  if sample and variant != "width":
    keys = jax.random.split(jax.random.fold_in(key, 1), n_stages)
    q = jax.vmap(gumbel.soft_depth_weights, (0, 0, None))(keys, beta, tau)
  else:
    q = jax.nn.one_hot(jnp.argmax(beta, -1), beta.shape[1])
  return idx, widths, weights, q


class SuperNet(nn.Module):
  """The supernet of `space` (CIFAR or ImageNet ResNet, basic or bottleneck blocks)."""

  space: SearchSpace
  variant: str = "tas"
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32  # bfloat16: convs and activations in bf16 (mixed precision)
  scan_blocks: bool = False  # the blocks of a stage after its first as one lax.scan

  @nn.compact
  def __call__(self, x, logits: dict, key, tau, train: bool = True, argmax: bool = False):
    """train: BN with batch statistics; argmax: the most likely architecture instead of a sample
    (always so when not training)."""
    space, base = self.space, self.space.base
    mix = self.variant != "depth"
    sample = train and not argmax
    idx, widths, weights, q = sample_choices(space, logits, key, tau, sample, self.variant)
    pairs = _pair_matrices(space, widths) if mix else {}
    choice = lambda slot: (idx[slot], widths[slot], weights[slot], pairs.get(slot))
    c_star = lambda slot: jnp.max(widths[slot]) if mix else space.slots[slot].full
    # No zero-initialised last BN here, on ImageNet either: the official search network ignores
    # zero_init_residual (the pruned ImageNet networks keep it).
    conv = lambda width, kernel, stride, **kw: SearchConv(
      width, kernel, stride, mix=mix, dtype=self.dtype, axis_name=self.axis_name, **kw
    )

    plain_bn = {b.name: b.projection.has_bn for b in topology.of(base).blocks if b.projection}
    stem = space.slots[0]
    h = nn.relu(
      conv(stem.full, stem.kernel, stem.stride, name="stem")(x.astype(self.dtype), choice(0), train)
    )
    channels = c_star(0)  # true channel count of h; channels beyond it are zero
    if topology.of(base).stem_pool:
      h = nn.max_pool(h, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    dtab = space.depth_table()
    for s in range(len(space.depths)):
      outputs = []  # (F_d, its true channel count) after every block of the stage
      stage_blocks = [b for b in space.blocks if b.stage == s]
      layout_of = {b: _layout(space, b, mix, plain_bn) for b in stage_blocks}
      # blocks of one input size and one layout have one shape: a run of them can be scanned
      for run in scan.runs(stage_blocks, lambda b: (b.in_size, layout_of[b])):
        layouts = [layout_of[b] for b in run]
        if not self.scan_blocks or len(run) < 2 or self.is_initializing():
          for b, layout in zip(run, layouts):
            h, channels = search_block(
              lambda part, width, kernel, stride, bn=True, b=b: conv(
                width, kernel, stride, bn=bn, name=f"{_name(b)}.{part}"
              ),
              layout,
              h,
              channels,
              [choice(slot) for slot in _choice_slots(b)],
              train,
              mix,
            )
            outputs.append((h, channels))
          continue
        # one compiled block for the run: its choices per block are the scan's inputs
        body = ScannedSearchBlock(layouts[0], mix, self.axis_name, self.dtype, parent=None)
        choices = jax.tree.map(
          lambda *a: jnp.stack(a), *[[choice(slot) for slot in _choice_slots(b)] for b in run]
        )
        names = [[f"{_name(b)}.{part}" for part in layouts[0].parts] for b in run]
        variables = [
          {
            col: {part: tree[n] for part, n in zip(layouts[0].parts, ns) if n in tree}
            for col, tree in self.variables.items()
          }
          for ns in names
        ]
        mutable = train and self.is_mutable_collection("batch_stats")
        (h, channels), (hs, counts), stats = scan.stacked_apply(
          body,
          variables,
          (h, jnp.asarray(channels, jnp.int32)),
          choices,
          mutable,
          lambda m, carry, choice: m(carry, choice, train),
        )
        outputs += list(zip(scan.unstack(hs, len(run)), scan.unstack(counts, len(run))))
        for ns, block_stats in zip(names, stats or ()):
          for n, part in zip(ns, layouts[0].parts):
            if part in block_stats:
              self.put_variable("batch_stats", n, block_stats[part])
      h, channels = _depth_mixture(outputs, dtab[s], q[s], soft=sample and self.variant != "width")
    return resnet.classify(h, base.num_classes)  # the head and the loss in float32


def _pair_matrices(space: SearchSpace, widths) -> dict:
  """slot -> its `cwi.pair_matrices` (2, full, full): built for all slots of one full width by one
  vmapped computation, so the program holds one copy per width, not one per conv."""
  out = {}
  for full in sorted({slot.full for slot in space.slots}):
    members = [i for i, slot in enumerate(space.slots) if slot.full == full]
    stacked = jax.vmap(lambda w: cwi.pair_matrices(w, full))(widths[np.array(members)])
    out.update({i: stacked[j] for j, i in enumerate(members)})
  return out


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """What a searched block computes, its names aside: per main-path conv (full width, kernel,
  stride, slot), and the shortcut ("identity", or a projection: pooled or strided, with BN or
  not)."""

  convs: tuple[tuple[int, int, int], ...]
  shortcut: str
  projection: Optional[tuple[int, int, bool]]  # (width, stride, bn)

  @property
  def parts(self) -> tuple[str, ...]:
    """The block's conv names (suffixes of `stageS.blockB.`)."""
    return tuple(f"conv_{'abc'[i]}" for i in range(len(self.convs))) + (
      ("shortcut",) if self.projection else ()
    )


def _name(b) -> str:
  return f"stage{b.stage + 1}.block{b.index + 1}"


def _layout(space: SearchSpace, b, mix: bool, plain_bn: dict) -> BlockLayout:
  convs = tuple(
    (space.slots[i].full, space.slots[i].kernel, space.slots[i].stride) for i in b.slots
  )
  projection = None
  if b.shortcut != "identity":
    # every projection shortcut has per-candidate BN during the width search, as the official
    # search_forward (CIFAR's stride-2 projection included; its pruned network keeps none); the
    # depth search's has BN only where the plain network has (the released
    # SearchCifarResNet_depth: none on CIFAR's stride-2 projection)
    pooled = b.shortcut == "pool_conv"  # TAS's form; torchvision's strides the conv
    projection = (
      space.slots[b.slots[-1]].full,
      1 if pooled else b.stride,
      mix or plain_bn[_name(b)],
    )
  return BlockLayout(convs, b.shortcut, projection)


def _choice_slots(b) -> tuple[int, ...]:
  """The slots whose sampled choice a block reads: its convs', then its projection's (the same
  slot as its last conv: they share the block's output width)."""
  return tuple(b.slots) + ((b.slots[-1],) if b.shortcut != "identity" else ())


def search_block(conv, layout: BlockLayout, h, channels, choices, train: bool, mix: bool):
  """One residual block of the supernet: (input, its true channel count) -> the same of its
  output. `conv(part, width, kernel, stride, bn=)` makes the named SearchConv; `choices` are the
  (idx, widths, weights, CWI pair matrices) of its convs, then of its projection. The unrolled and
  the scanned supernet both run this."""
  # the true width of a conv's output: the wider sampled candidate, or the full width unmixed
  c_star = lambda choice: jnp.max(choice[1]) if mix else layout.convs[-1][0]
  y, last = h, len(layout.convs) - 1
  for i, (width, kernel, stride) in enumerate(layout.convs):
    y = conv(layout.parts[i], width, kernel, stride)(y, choices[i], train)
    if i < last:
      y = nn.relu(y)
  if layout.projection is None:
    # zero-padded add: the block's output has max(input, last conv) channels
    residual, channels = h, jnp.maximum(channels, c_star(choices[last]))
  else:
    width, stride, bn = layout.projection
    pooled = layout.shortcut == "pool_conv"
    hp = nn.avg_pool(h, (2, 2), (2, 2)) if pooled else h
    residual = conv("shortcut", width, 1, stride, bn=bn)(hp, choices[-1], train)
    channels = c_star(choices[-1])
  return nn.relu(y + residual), channels


class ScannedSearchBlock(nn.Module):
  """`search_block` as a module of its own, applied once per block of a scanned run: the carry is
  (features, true channel count), the per-block input its choices; emits the carry for the depth
  mixture."""

  layout: BlockLayout
  mix: bool
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, choices, train: bool):
    h, channels = carry
    conv = lambda part, width, kernel, stride, bn=True: SearchConv(
      width,
      kernel,
      stride,
      mix=self.mix,
      bn=bn,
      axis_name=self.axis_name,
      dtype=self.dtype,
      name=part,
    )
    h, channels = search_block(conv, self.layout, h, channels, choices, train, self.mix)
    out = (h, jnp.asarray(channels, jnp.int32))
    return out, out


def _depth_mixture(outputs, depths: np.ndarray, q, soft: bool):
  """(Σ_j q_j · CWI(F_{d_j} → widest), widest): every candidate depth's output is resized from its
  true channel count. For a one-hot q (argmax, TAS(W)) it is the chosen F_d, no CWI applied.
  The mixture keeps the activations' dtype."""
  feats = [outputs[int(d) - 1] for d in depths]
  counts = jnp.stack([jnp.asarray(c) for _, c in feats])
  dtype = feats[0][0].dtype
  if not soft:
    mixed = sum(q[j] * f for j, (f, _) in enumerate(feats))
    return mixed.astype(dtype), jnp.sum(q * counts).astype(jnp.int32)
  size = feats[0][0].shape[-1]
  widest = jnp.max(counts)
  mixed = sum(q[j] * (f @ cwi.cwi_matrix(c, widest, size).T) for j, (f, c) in enumerate(feats))
  return mixed.astype(dtype), widest


def supernet_params_from_plain(
  plain_params: dict, plain_stats: dict, variant: str = "tas"
) -> tuple[dict, dict]:
  """Supernet weights whose every candidate carries the plain network's BN (same conv kernels).
  A projection the plain network has without BN gets an identity BN, except in the depth
  variant, whose supernet has none there either."""
  k = NUM_WIDTH_CANDIDATES

  def convert(tree):
    out = {}
    for name, sub in tree.items():
      if name == "bn":
        out[name] = {key: jnp.broadcast_to(v, (k,) + v.shape) for key, v in sub.items()}
      elif isinstance(sub, dict):
        out[name] = convert(sub)
      else:
        out[name] = sub
    return out

  def flatten_shortcut(tree):
    """The plain model nests the projection one level deeper (shortcut/proj/conv)."""
    return (
      {
        name: (
          flatten_shortcut(sub["proj"])
          if name == "shortcut"
          else flatten_shortcut(sub)
          if isinstance(sub, dict)
          else sub
        )
        for name, sub in tree.items()
      }
      if isinstance(tree, dict)
      else tree
    )

  def to_super(tree):
    out = {}
    for name, sub in flatten_shortcut(tree).items():
      if name.startswith("stage"):
        for conv_name, conv in sub.items():
          out[f"{name}.{conv_name}"] = conv
      else:
        out[name] = sub
    return out

  params, stats = to_super(plain_params), to_super(plain_stats)
  bn_free = [n for n in params if n.endswith(".shortcut") and "bn" not in params[n]]
  for name in bn_free if variant != "depth" else ():
    # a plain projection without BN (CIFAR stride 2): the search's BN starts as the identity in
    # evaluation mode
    width = params[name]["conv"]["kernel"].shape[-1]
    params[name] = {**params[name], "bn": {"scale": jnp.ones(width), "bias": jnp.zeros(width)}}
    stats[name] = {"bn": {"mean": jnp.zeros(width), "var": jnp.full(width, 1 - BN_EPS)}}
  return convert(params), convert(stats)
