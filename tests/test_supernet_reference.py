"""The supernet and E[F] against plain re-implementations of the official TAS search code.

The reference below is written the way the released PyTorch `search_forward` computes, in float64
numpy on tensors at their true channel counts: slice the conv weights to the input's channels,
per-candidate BN over the candidate's first C_k channels with batch statistics, CWI of both
candidates to the wider one, the weighted sum, the zero-padded residual add (the output has
max(residual, branch) channels), and per stage the depth mixture CWI'd to the widest *true*
channel count of the candidate depths. The supernet keeps everything at full width with zero tails
and folds the aggregation into channel-mixing matrices; on the same sample both must agree.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tas_jax import parallel
from tas_jax.methods.tas import cost, space as space_lib, supernet
from tas_jax.models import arch, topology

EPS = 1e-5


# ------------------------------------------------------------------ the plain reference forward
def conv(x, kernel, stride):
  """NHWC conv, padding k//2, float64 (kernel HWIO, already sliced to x's channels)."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h_out = (x.shape[1] + 2 * p - k) // stride + 1
  out = np.zeros((x.shape[0], h_out, h_out, kernel.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = xp[:, i : i + stride * h_out : stride, j : j + stride * h_out : stride, :]
      out += patch @ kernel[i, j]
  return out


def batch_norm(z, scale, bias):
  mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
  return (z - mean) / np.sqrt(var + EPS) * scale + bias


def channel_interpolate(x, c_out):
  """Output channel j = mean of input channels floor(j·C/C') … ceil((j+1)·C/C') − 1."""
  c_in = x.shape[-1]
  if c_in == c_out:
    return x
  return np.stack(
    [
      x[..., (j * c_in) // c_out : math.ceil((j + 1) * c_in / c_out)].mean(-1) for j in range(c_out)
    ],
    -1,
  )


def zero_padded_add(a, b):
  if a.shape[-1] < b.shape[-1]:
    a, b = b, a
  out = a.copy()
  out[..., : b.shape[-1]] += b
  return out


def avg_pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4))


def max_pool3s2(x):
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h = (x.shape[1] + 2 - 3) // 2 + 1
  return np.max(
    [xp[:, i : i + 2 * h : 2, j : j + 2 * h : 2] for i in range(3) for j in range(3)], 0
  )


def search_conv(x, p, stride, cand_idx, cand_widths, cand_weights, pool=False, bn=True):
  """ConvBNReLU.search_forward without the ReLU: conv at full width on x, the two candidates
  (bn=False: the depth search's BN-free projection, a plain conv)."""
  if pool:
    x = avg_pool2(x)
  kernel = np.asarray(p["conv"]["kernel"], np.float64)[:, :, : x.shape[-1], :]
  z = conv(x, kernel, stride)
  if not bn:
    return z
  scale, bias = (np.asarray(p["bn"][k], np.float64) for k in ("scale", "bias"))
  outs = [batch_norm(z[..., :c], scale[k, :c], bias[k, :c]) for k, c in zip(cand_idx, cand_widths)]
  c_star = max(cand_widths)
  return sum(w * channel_interpolate(o, c_star) for w, o in zip(cand_weights, outs))


def reference_forward(space, params, x, idx, widths, weights, q, variant="tas"):
  """variant "width": no depth mixture (every block runs, as SearchWidthCifarResNet); "depth":
  the caller's choices are the full widths, and a projection has BN only where the plain network
  has (SearchCifarResNet_depth: none on CIFAR's stride-2 projection)."""
  plain_bn = {b.name: b.projection.has_bn for b in topology.of(space.base).blocks if b.projection}
  relu = lambda t: np.maximum(t, 0)
  imagenet = space.base.dataset_kind == "imagenet"
  pick = lambda slot: (list(idx[slot]), [int(w) for w in widths[slot]], list(weights[slot]))
  stem = space.slots[0]
  h = relu(search_conv(x, params["stem"], stem.stride, *pick(0)))
  if imagenet:
    h = max_pool3s2(h)
  for s, depth_choices in enumerate(space.depths):
    feature_maps = []
    for blk in (b for b in space.blocks if b.stage == s):
      name = f"stage{s + 1}.block{blk.index + 1}"
      y = h
      for i, slot in enumerate(blk.slots):
        y = search_conv(y, params[f"{name}.conv_{'abc'[i]}"], space.slots[slot].stride, *pick(slot))
        if i < len(blk.slots) - 1:
          y = relu(y)
      if blk.shortcut == "identity":
        residual = h
      else:
        strided = blk.shortcut == "strided_conv"  # torchvision's form: no pool, stride 2
        residual = search_conv(
          h,
          params[f"{name}.shortcut"],
          blk.stride if strided else 1,
          *pick(blk.slots[-1]),
          pool=blk.shortcut == "pool_conv",
          bn=variant != "depth" or plain_bn[name],
        )
      h = relu(zero_padded_add(residual, y))
      feature_maps.append(h)
    if variant == "width":
      continue
    candidates = [feature_maps[d - 1] for d in depth_choices]
    max_c = max(f.shape[-1] for f in candidates)
    h = sum(qj * channel_interpolate(f, max_c) for qj, f in zip(q[s], candidates))
  features = h.mean((1, 2))
  kernel = np.asarray(params["classifier"]["kernel"], np.float64)
  return features @ kernel[: features.shape[-1]] + np.asarray(params["classifier"]["bias"])


# ------------------------------------------------------------------ networks
def custom(family, stages, stem=8, size=16, classes=5, downsample="pool_conv"):
  return arch.Architecture(
    family=family,
    num_classes=classes,
    input_size=size,
    input_channels=3,
    stem_width=stem,
    stages=stages,
    name=family + "_tiny",
    downsample=downsample,
  )


NETWORKS = [
  # CIFAR basic: identity blocks, stride-2 pool+conv projections; depth choices {1, 2, 3}
  custom("cifar_basic", [[[8, 8]] * 3, [[16, 16]] * 2, [[24, 24]] * 2]),
  # CIFAR bottleneck: the stride-1 projection of the first block (8 -> 16)
  custom("cifar_bottleneck", [[[4, 4, 16]] * 2, [[8, 8, 24]] * 2, [[8, 8, 32]] * 2]),
  # ImageNet basic / bottleneck: 7x7 stride-2 stem, max-pool, four stages, projections with BN;
  # the basic one in torchvision's form (stride-2 1x1 projections), the bottleneck in TAS's
  custom(
    "imagenet_basic",
    [[[8, 8]] * 2, [[12, 12]] * 2, [[16, 16]] * 2, [[20, 20]] * 2],
    size=64,
    downsample="strided_conv",
  ),
  custom(
    "imagenet_bottleneck",
    [[[4, 4, 12]] * 2, [[6, 6, 16]] * 2, [[8, 8, 20]] * 2, [[8, 8, 24]] * 2],
    size=64,
  ),
]


CASES = (
  [(a, "tas", False) for a in NETWORKS]
  + [(NETWORKS[0], "width", False), (NETWORKS[0], "depth", False), (NETWORKS[1], "depth", False)]
  # model.scan_blocks: the stage's later blocks as one lax.scan (stage 1 of cifar_basic
  # scans blocks 2-3; ImageNet: the second block of every stage on its own)
  + [(NETWORKS[0], "tas", True), (NETWORKS[0], "depth", True), (NETWORKS[3], "tas", True)]
)


@pytest.mark.parametrize(
  "a,variant,scan", CASES, ids=lambda c: getattr(c, "family", "scan" if c is True else c)
)
def test_supernet_equals_the_official_search_forward(a, variant, scan):
  """TAS, and the released width-only and depth-only search networks (TAS(W), TAS(D))."""
  space = space_lib.build(a)
  net = supernet.SuperNet(space, variant, scan_blocks=scan)
  x = jax.random.normal(jax.random.key(1), (6, a.input_size, a.input_size, 3))
  logits0 = space.init_logits(jax.random.key(2))
  v = parallel.jit_once(lambda: net.init(jax.random.key(0), x, logits0, jax.random.key(0), 1.0))()
  # every candidate's BN different, so that a wrong candidate, scale or bias would show
  # (numpy noise: jax.random per leaf shape would compile a program per shape)
  noise = np.random.default_rng(3)
  params = jax.tree.map(
    lambda t: jnp.asarray(np.asarray(t) + 0.3 * noise.standard_normal(t.shape, np.float32)),
    v["params"],
  )
  forward = parallel.jit_once(
    lambda lg, k, t: net.apply(
      {"params": params, "batch_stats": v["batch_stats"]},
      x,
      lg,
      k,
      t,
      train=True,
      mutable=["batch_stats"],
    )[0]
  )
  choices = parallel.jit_once(
    lambda lg, k, t: supernet.sample_choices(space, lg, k, t, True, variant)
  )
  rng = np.random.default_rng(0)
  seen_unequal_depth_widths = False
  for trial in range(3):
    logits = {
      "alpha": jnp.asarray(rng.normal(size=logits0["alpha"].shape), jnp.float32),
      "beta": jnp.asarray(rng.normal(size=logits0["beta"].shape), jnp.float32),
    }
    key, tau = jax.random.key(10 + trial), jnp.float32(rng.uniform(0.5, 3.0))
    idx, widths, weights, q = (
      np.asarray(t, np.float64 if t.dtype == jnp.float32 else np.int64)
      for t in choices(logits, key, tau)
    )
    if variant == "depth":  # one candidate, the full width; a soft depth mixture
      assert np.all(widths == [[s.full] * 2 for s in space.slots]) and np.all(weights[:, 0] == 1)
      assert np.all(q.max(-1) < 1)  # soft: no stage one-hot
    else:
      assert np.all(idx[:, 0] != idx[:, 1]) and np.all((weights > 0) & (weights < 1))
      seen_unequal_depth_widths |= len({tuple(widths[b.slots[-1]]) for b in space.blocks}) > 1
    got = np.asarray(forward(logits, key, tau), np.float64)
    want = reference_forward(
      space, params, np.asarray(x, np.float64), idx, widths, weights, q, variant
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  assert seen_unequal_depth_widths or variant == "depth"


def official_expected_flops(space, logits):
  """The released SearchCifarResNet/SearchImagenetResNet E[F], written as that code walks it:
  expected_inC flows along the unpruned layer list; layer i's FLOPs are scaled by
  flop_depth_probs[stage, choice] (reverse cumsum of softmax(β)) from `depth_at_i`; the
  downsample takes the block's input and the last conv's probabilities; head E[c]·classes."""
  alpha, beta = (np.asarray(t, np.float64) for t in space.masked_logits(logits))
  softmax = lambda t: (
    np.exp(t - t.max(-1, keepdims=True))
    / np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)
  )
  width_probs = softmax(alpha)
  depth_probs = np.flip(np.cumsum(np.flip(softmax(beta), 1), 1), 1)
  e_out = (width_probs * space.width_table()).sum(-1)
  conv_flops = lambda slot, e_in: (
    space.slots[slot].kernel ** 2 * space.slots[slot].out_size ** 2 * e_in * e_out[slot]
  )
  depth_at_i = {}
  for s, choices in enumerate(space.depths):
    for i in range(1, len(choices)):
      for block in range(choices[i - 1] + 1, choices[i] + 1):
        depth_at_i[(s, block - 1)] = (s, i)
  flops = [conv_flops(0, space.base.input_channels)]
  e_in = e_out[0]
  for blk in space.blocks:
    block_flops, e = 0.0, e_in
    for slot in blk.slots:
      block_flops += conv_flops(slot, e)
      e = e_out[slot]
    if blk.shortcut != "identity":
      size = blk.in_size // 2 if blk.stride == 2 else blk.in_size
      block_flops += size * size * e_in * e_out[blk.slots[-1]]
    where = depth_at_i.get((blk.stage, blk.index))
    flops.append(block_flops * (depth_probs[where] if where else 1.0))
    e_in = e
  flops.append(e_in * space.base.num_classes)
  return sum(flops)


@pytest.mark.parametrize(
  "name", ["resnet20", "resnet56", "resnet164", "imagenet_resnet18", "imagenet_resnet50"]
)
def test_released_expected_flops_equal_the_official_formula(name):
  space = space_lib.build(arch.named(name))
  rng = np.random.default_rng(4)
  fn = jax.jit(lambda lg: cost.expected_flops(space, lg, "released"))
  for _ in range(3):
    logits = {
      "alpha": jnp.asarray(rng.normal(size=(space.num_slots, 8)), jnp.float32),
      "beta": jnp.asarray(
        rng.normal(size=(len(space.depths), space.max_depth_candidates)), jnp.float32
      ),
    }
    assert float(fn(logits)) == pytest.approx(official_expected_flops(space, logits), rel=1e-5)
  assert cost.expected_flops.__defaults__[0] == "released"
