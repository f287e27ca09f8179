"""Search ops: CWI, the two-of-K Gumbel sampler, the search space and the FLOPs cost."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import cwi_numpy

from tas_jax.methods.tas import cost, cwi, gumbel, space as space_lib
from tas_jax.models import arch, candidates, topology
from tas_jax.ops import flops


# ---------------------------------------------------------------- CWI
def test_cwi_spec_example():
  out = cwi.cwi(jnp.array([1.0, 10.0, 100.0]), 5)
  np.testing.assert_allclose(out, [1, 5.5, 10, 55, 100], rtol=1e-6)


def test_cwi_by_hand_downsampling():
  # 5 -> 2: channel 0 = mean(x0..x2), channel 1 = mean(x2..x4)
  out = cwi.cwi(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
  np.testing.assert_allclose(out, [2.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("c_in, c_out", [(3, 5), (4, 16), (16, 4), (7, 7), (11, 16), (64, 19)])
def test_cwi_matches_the_definition(c_in, c_out):
  x = np.random.default_rng(c_in * 100 + c_out).normal(size=(2, c_in))
  np.testing.assert_allclose(
    cwi.cwi(jnp.asarray(x, jnp.float32), c_out), cwi_numpy(x, c_out), rtol=1e-5, atol=1e-6
  )


def test_cwi_matrix_with_traced_widths_inside_a_full_width_square():
  size = 16
  fn = jax.jit(lambda a, b: cwi.cwi_matrix(a, b, size))  # one compilation for every (a, b)
  x = np.random.default_rng(0).normal(size=size)
  for c_in, c_out in [(3, 5), (11, 16), (16, 9), (4, 4)]:
    m = np.asarray(fn(c_in, c_out))
    x_in = np.where(np.arange(size) < c_in, x, 0.0)
    y = m @ x_in
    np.testing.assert_allclose(y[:c_out], cwi_numpy(x[:c_in], c_out), rtol=1e-5, atol=1e-6)
    assert np.all(y[c_out:] == 0)
  assert fn._cache_size() == 1


def test_mix_matrix_weighted_sum_of_two_candidates():
  size = 8
  x = np.arange(1.0, 9.0)
  scale = jnp.stack([jnp.full(size, 2.0), jnp.ones(size)])
  m = cwi.mix_matrix(jnp.array([3, 5]), jnp.array([0.25, 0.75]), scale, size)
  want = 0.25 * cwi_numpy(2 * x[:3], 5) + 0.75 * x[:5]
  y = np.asarray(m) @ x
  np.testing.assert_allclose(y[:5], want, rtol=1e-6)
  assert np.all(y[5:] == 0)


# ---------------------------------------------------------------- sampler
def test_two_distinct_draws_follow_sampling_without_replacement():
  p = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
  n = 40000
  keys = jax.random.split(jax.random.key(0), n)
  idx = np.asarray(jax.jit(jax.vmap(gumbel.draw_two_distinct, (0, None)))(keys, jnp.log(p)))
  assert np.all(idx[:, 0] != idx[:, 1])
  counts = {}
  for a, b in idx:
    key = (min(a, b), max(a, b))
    counts[key] = counts.get(key, 0) + 1
  for i, j in itertools.combinations(range(len(p)), 2):
    prob = p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
    freq = counts.get((i, j), 0) / n
    # 4.5 binomial standard deviations: a false alarm in well under 1 of 10^4 runs per pair
    assert abs(freq - prob) < 4.5 * np.sqrt(prob * (1 - prob) / n) + 1e-4, (i, j, freq, prob)
  # the first draw alone is a draw from p
  first = np.bincount(idx[:, 0], minlength=len(p)) / n
  np.testing.assert_allclose(first, p, atol=4.5 * np.sqrt(0.25 / n))


def test_pair_weights_sum_to_one_and_gradient_only_reaches_the_pair():
  alpha = jnp.array([0.3, -0.2, 0.1, 0.5, 0.0, -0.4, 0.2, 0.05])
  for seed in range(5):
    key = jax.random.key(seed)
    idx, w = gumbel.sample_pair(key, alpha, 2.0)
    assert idx[0] != idx[1]
    np.testing.assert_allclose(float(w.sum()), 1.0, rtol=1e-6)
    grad = jax.grad(lambda a: gumbel.sample_pair(key, a, 2.0)[1][0])(alpha)
    others = np.setdiff1d(np.arange(8), np.asarray(idx))
    assert np.all(np.asarray(grad)[others] == 0)
    assert np.all(np.asarray(grad)[np.asarray(idx)] != 0)
    np.testing.assert_allclose(float(grad.sum()), 0.0, atol=1e-6)


def test_pair_weights_equal_an_independent_computation_from_the_same_gumbel_draw():
  """w = softmax over the pair of (log_softmax(α) + g) / τ, g the Gumbel draw of the key's first
  half (spec §3), computed here in numpy: a missing /τ or missing noise changes every value."""
  alpha = np.array([0.3, -0.2, 0.1, 0.5, 0.0, -0.4, 0.2, 0.05], np.float32)
  for seed, tau in [(0, 2.0), (1, 0.7), (2, 5.0), (3, 0.35)]:
    key = jax.random.key(seed)
    idx, w = jax.device_get(gumbel.sample_pair(key, jnp.asarray(alpha), tau))
    g = np.asarray(jax.random.gumbel(jax.random.split(key)[0], alpha.shape), np.float64)
    log_p = alpha - np.log(np.exp(alpha.astype(np.float64)).sum())
    ell = (log_p + g) / tau
    want = np.exp(ell[idx] - ell[idx].max()) / np.exp(ell[idx] - ell[idx].max()).sum()
    np.testing.assert_allclose(w, want, rtol=1e-5)
    # the depth mixture of a stage, the same way over all its candidates
    q = np.asarray(gumbel.soft_depth_weights(key, jnp.asarray(alpha[:3]), tau), np.float64)
    g3 = np.asarray(jax.random.gumbel(key, (3,)), np.float64)
    ell3 = (alpha[:3] + g3) / tau
    np.testing.assert_allclose(
      q, np.exp(ell3 - ell3.max()) / np.exp(ell3 - ell3.max()).sum(), rtol=1e-5
    )


def test_padded_candidates_are_never_drawn():
  alpha = jnp.array([0.0, 0.0, 0.0, -jnp.inf, -jnp.inf, -jnp.inf, -jnp.inf, -jnp.inf])
  keys = jax.random.split(jax.random.key(1), 500)
  idx, w = jax.vmap(gumbel.sample_pair, (0, None, None))(keys, alpha, 1.0)
  assert np.all(np.asarray(idx) < 3) and np.all(np.isfinite(np.asarray(w)))


# ---------------------------------------------------------------- search space
def test_width_candidates_from_the_spec():
  assert candidates.width_candidates(16) == (4, 6, 8, 9, 11, 12, 14, 16)
  assert candidates.width_candidates(64) == (19, 25, 32, 38, 44, 51, 57, 64)
  assert candidates.width_candidates(4) == (1, 2, 3, 4)  # deduplicated


@pytest.mark.parametrize(
  "name, depths",
  [
    ("resnet20", ((1, 2, 3),) * 3),
    ("resnet56", ((1, 3, 5, 7, 9),) * 3),
    ("resnet110", ((1, 3, 5, 7, 9, 11, 13, 15, 17, 18),) * 3),
    ("imagenet_resnet18", ((1, 2),) * 4),
    ("imagenet_resnet50", ((1, 2, 3), (1, 2, 4), (2, 4, 6), (1, 2, 3))),
  ],
)
def test_depth_candidates_from_the_spec(name, depths):
  assert space_lib.build(arch.named(name)).depths == depths


# ---------------------------------------------------------------- FLOPs cost
NETS = ["resnet20", "resnet56", "resnet164", "imagenet_resnet18", "imagenet_resnet50"]


def random_choice(space, rng):
  w = np.array([rng.integers(0, s.num_valid) for s in space.slots])
  d = np.array([rng.integers(0, len(c)) for c in space.depths])
  return w, d


def one_hot_logits(space, w, d, scale=1e4):
  return {
    "alpha": jnp.asarray(np.eye(8)[w] * scale, jnp.float32),
    "beta": jnp.asarray(np.eye(space.max_depth_candidates)[d] * scale, jnp.float32),
  }


@pytest.mark.parametrize("name", NETS)
def test_exact_flops_equal_the_counter_on_the_extracted_network(name):
  space = space_lib.build(arch.named(name))
  exact = jax.jit(lambda w, d: cost.exact_flops(space, w, d))
  full_w = np.array([s.num_valid - 1 for s in space.slots])
  full_d = np.array([len(c) - 1 for c in space.depths])
  assert float(exact(full_w, full_d)) == pytest.approx(flops.count(space.base).flops, rel=1e-6)
  rng = np.random.default_rng(0)
  truncated = 0
  for _ in range(12):
    w, d = random_choice(space, rng)
    a = space.architecture(w, d)
    truncated += a.depths != space.base.depths
    assert float(exact(w, d)) == pytest.approx(flops.count(a).flops, rel=1e-6)
  assert truncated > 0
  assert exact._cache_size() == 1


@pytest.mark.parametrize("name", NETS)
def test_exact_form_expected_flops_equal_exact_flops_when_one_hot(name):
  space = space_lib.build(arch.named(name))
  rng = np.random.default_rng(1)
  for _ in range(4):
    w, d = random_choice(space, rng)
    logits = one_hot_logits(space, w, d)
    assert float(cost.expected_flops(space, logits, "exact")) == pytest.approx(
      float(cost.exact_flops(space, w, d)), rel=1e-5
    )


def test_expected_flops_is_the_mean_over_sampled_architectures():
  """With soft logits, E[F] ("exact") is the average F(A) of independently drawn choices."""
  space = space_lib.build(arch.cifar_resnet(14, input_size=16))
  logits = space.init_logits(jax.random.key(3))
  logits = {k: v * 100 for k, v in logits.items()}  # spread out the distribution
  alpha, beta = space.masked_logits(logits)
  n = 20000
  kw, kd = jax.random.split(jax.random.key(4))
  w = jax.random.categorical(kw, alpha, shape=(n, space.num_slots))
  d = jax.random.categorical(kd, beta, shape=(n, len(space.depths)))
  sampled = jax.vmap(lambda wi, di: cost.exact_flops(space, wi, di))(w, d)
  mean, sem = float(sampled.mean()), float(sampled.std() / np.sqrt(n))
  assert float(cost.expected_flops(space, logits, "exact")) == pytest.approx(mean, abs=4.5 * sem)


def test_released_expected_flops_equal_exact_at_full_width_and_depth():
  space = space_lib.build(arch.named("resnet20"))
  w = np.array([s.num_valid - 1 for s in space.slots])
  d = np.array([len(c) - 1 for c in space.depths])
  logits = one_hot_logits(space, w, d)
  assert float(cost.expected_flops(space, logits, "released")) == pytest.approx(
    flops.count(space.base).flops, rel=1e-5
  )


@pytest.mark.parametrize(
  "band, exact, sign",
  [
    ("released", 0.52, 1),
    ("released", 0.50, 0),
    ("released", 0.46, 0),
    ("released", 0.44, -1),
    ("symmetric", 0.52, 0),
    ("symmetric", 0.53, 1),
    ("symmetric", 0.47, -1),
    ("symmetric", 0.48, 0),
  ],
)
def test_cost_loss_band(band, exact, sign):
  loss = cost.cost_loss(jnp.float32(200.0), jnp.float32(exact * 1000), 1000.0, 0.5, 0.05, band)
  assert float(loss) == pytest.approx(sign * np.log(200.0), rel=1e-6)


# F(A) decides outside the band [0.45, 0.50]; inside it, "centred" pushes an E[F] above the band's
# centre 0.475 down, "free" does nothing
@pytest.mark.parametrize(
  "exact, expected, signs",
  [
    (0.52, 0.40, (1, 1)),
    (0.44, 0.60, (-1, -1)),  # F(A) outside: E[F] does not matter
    (0.48, 0.53, (0, 1)),
    (0.48, 0.42, (0, 0)),
    (0.48, 0.49, (0, 1)),
    (0.48, 0.47, (0, 0)),
  ],
)
def test_cost_loss_inside_the_band(exact, expected, signs):
  e = jnp.float32(expected * 1000)
  for in_band, sign in zip(("free", "centred"), signs):
    loss = cost.cost_loss(e, jnp.float32(exact * 1000), 1000.0, 0.5, 0.05, "released", in_band)
    assert float(loss) == pytest.approx(sign * np.log(expected * 1000), rel=1e-6), in_band


# ---------------------------------------------------------------- TAS(W) and TAS(D)
@pytest.mark.parametrize("form", ["released", "exact"])
@pytest.mark.parametrize("variant", ["width", "depth"])
def test_a_variant_prices_and_extracts_its_unsearched_dimension_at_full_value(variant, form):
  space = space_lib.build(arch.named("resnet20"))
  rng = np.random.default_rng(7)
  logits = {
    "alpha": jnp.asarray(rng.normal(size=(space.num_slots, 8)), jnp.float32),
    "beta": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32),
  }
  full_w = np.array([s.num_valid - 1 for s in space.slots])
  full_d = np.array([len(c) - 1 for c in space.depths])
  w, d = (np.asarray(t) for t in space.argmax(logits, variant))
  raw_w, raw_d = (np.asarray(t) for t in space.argmax(logits))
  assert not np.array_equal(raw_d, full_d) and not np.array_equal(raw_w, full_w)
  if variant == "width":
    np.testing.assert_array_equal(d, full_d)
    np.testing.assert_array_equal(w, raw_w)
    pinned = {"alpha": logits["alpha"], "beta": one_hot_logits(space, full_w, full_d)["beta"]}
  else:
    np.testing.assert_array_equal(w, full_w)
    np.testing.assert_array_equal(d, raw_d)
    pinned = {"alpha": one_hot_logits(space, full_w, full_d)["alpha"], "beta": logits["beta"]}
  expected = cost.expected_flops(space, logits, form, variant)
  assert float(expected) == pytest.approx(float(cost.expected_flops(space, pinned, form)), rel=1e-5)
  # the unsearched logits get no gradient from the cost
  grads = jax.grad(lambda lg: cost.expected_flops(space, lg, form, variant))(logits)
  unsearched, searched = ("beta", "alpha") if variant == "width" else ("alpha", "beta")
  assert np.all(np.asarray(grads[unsearched]) == 0) and np.any(np.asarray(grads[searched]) != 0)
  # the extracted network: full depth for TAS(W), full widths for TAS(D)
  a = space.architecture(w, d)
  if variant == "width":
    assert a.depths == space.base.depths
  else:
    for stage, base_stage in zip(a.stages, space.base.stages):
      assert list(stage) == list(base_stage[: len(stage)])
    assert a.stem_width == space.base.stem_width


def released_genotype_flops(base, widths, depths):
  """A plain transcription of the released search's F(A) estimate (`get_flop('genotype')`): the
  chain of the unpruned network, a block counted when kept, each conv's input the width of the
  conv before it in the unpruned network (kept or not), the unpruned network's projections, the
  classifier without its bias."""
  topo = topology.of(base)
  slot = iter(range(len(widths)))
  stem = next(slot)
  total = topo.stem.kernel**2 * topo.stem.out_size**2 * base.input_channels * widths[stem]
  previous = widths[stem]
  for block in topo.blocks:
    kept = block.index < depths[block.stage]
    block_in, block_flops = previous, 0
    for conv in block.convs:
      w = widths[next(slot)]
      block_flops += conv.kernel**2 * conv.out_size**2 * previous * w
      previous = w
    if block.projection is not None:
      block_flops += block.projection.out_size**2 * block_in * previous
    total += block_flops if kept else 0
  return total + previous * base.num_classes


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet164"])
def test_released_branch_estimate_is_the_released_formula(name):
  space = space_lib.build(arch.named(name))
  target = type("FlopsTarget", (), {"by_table": False, "table": None})()
  rng = np.random.default_rng(5)
  errors = []
  for _ in range(12):
    w, d = random_choice(space, rng)
    widths = space.width_table()[np.arange(space.num_slots), w]
    depths = space.depth_table()[np.arange(len(space.depths)), d]
    by_hand = released_genotype_flops(space.base, widths.tolist(), depths.tolist())
    logits = one_hot_logits(space, w, d)
    _, estimate = cost.priced(space, logits, target, branch="released")
    assert float(estimate) == pytest.approx(by_hand, rel=1e-6)
    real = float(cost.exact_flops(space, w, d))
    errors.append(by_hand / real - 1)
  # the estimate misses what the network extraction builds has (the bias, inserted projections,
  # the true input of a truncated stage's successor)
  assert max(abs(e) for e in errors) > 1e-3
  _, exact = cost.priced(space, logits, target, branch="exact")
  assert float(exact) == pytest.approx(real, rel=1e-6)
