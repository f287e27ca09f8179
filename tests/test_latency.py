"""The latency table (tas_jax.latency) and TAS's latency cost (target.cost=latency)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_search_ops import one_hot_logits, random_choice

from tas_jax import latency
from tas_jax.methods.tas import cost, space as space_lib
from tas_jax.models import arch, topology
from tas_jax.ops import flops


def fake_table(base, seconds) -> latency.Table:
  """A table of the space of `base` with `seconds(key)` in place of measurements."""
  return latency.Table("cpu", "test", 8, {k: float(seconds(k)) for k in latency.space_keys(base)})


def conv_flops_of(k: latency.ConvKey) -> float:
  out = topology.conv_out_size(k.in_size, k.kernel, k.stride)
  return flops.conv_flops(k.kernel, k.in_width, k.out_width, out)


def monotone_with_overhead(k: latency.ConvKey) -> float:
  """Grows with both widths, not in proportion to FLOPs (a fixed cost per conv, a kernel term)."""
  return 2e-4 + 1e-9 * conv_flops_of(k) + 3e-6 * k.kernel * (k.in_width + 2 * k.out_width)


def test_the_table_covers_exactly_the_convs_and_width_pairs_of_resnet20s_space():
  base = arch.named("resnet20")
  keys = latency.space_keys(base)
  assert len(keys) == len(set(keys))
  # counted by hand from the topology: 8 candidate widths per full width (16, 32, 64)
  stem = 1 * 8  # 3 image channels (one input width) x 8 output widths
  later_stage = 64 + 64 + 64  # stride-2 conv_a, conv_b (shared by the stage), projection
  inserted = 8 * 8 - 8  # 1x1 stride-1 projection where widths differ, per stage
  # a later stage's projection (1x1 at the pooled side, C/2 -> C) and its inserted projections
  # (C -> C) are the same conv where the input widths coincide: 3 of them ({9, 12, 16} for 32,
  # {19, 25, 32} for 64), each against 8 outputs less the one equal width
  shared = 3 * 8 - 3
  assert len(keys) == stem + 64 + inserted + 2 * (later_stage + inserted - shared) == 582
  # every conv of every pruned network of the space has its entry
  space = space_lib.build(base)
  rng = np.random.default_rng(0)
  used = set()
  for _ in range(300):
    a = space.architecture(*random_choice(space, rng))
    for c in topology.of(a).convs():
      assert latency.ConvKey.of(c) in set(keys), c
      used.add(latency.ConvKey.of(c))
  # ... and the entries are all reachable: random networks use almost all of them
  assert len(used) > 0.9 * len(keys)
  # the 3x3 convs at 32x32: the stem (3 image channels) and stage 1's (16's candidates)
  assert {k.in_width for k in keys if k.in_size == 32 and k.kernel == 3 and k.stride == 1} == {
    3,
    4,
    6,
    8,
    9,
    11,
    12,
    14,
    16,
  }


def test_key_text_round_trip():
  k = latency.ConvKey(3, 2, 32, 11, 25)
  assert str(k) == "k3s2i32:11x25" and latency.ConvKey.parse(str(k)) == k
  with pytest.raises(ValueError, match="not a latency-table key"):
    latency.ConvKey.parse("k3:11")


@pytest.mark.parametrize("name", ["resnet20", "imagenet_resnet18"])
def test_expected_latency_at_one_hot_equals_the_table_latency_of_that_architecture(name):
  base = arch.named(name)
  space = space_lib.build(base)
  table = fake_table(base, monotone_with_overhead)
  exact = jax.jit(lambda w, d: cost.exact_latency(space, table, w, d))
  rng = np.random.default_rng(1)
  truncated = 0
  for _ in range(6):
    w, d = random_choice(space, rng)
    a = space.architecture(w, d)
    truncated += a.depths != base.depths
    want = table.network(a)
    assert float(exact(w, d)) == pytest.approx(want, rel=1e-5)
    assert float(
      cost.expected_latency(space, one_hot_logits(space, w, d), table, "exact")
    ) == pytest.approx(want, rel=1e-5)
  assert truncated > 0 and exact._cache_size() == 1


def test_a_flops_table_gives_the_released_expected_flops_without_the_head():
  """The latency form is the FLOPs chain form with table entries in place of conv FLOPs."""
  base = arch.named("resnet20")
  space = space_lib.build(base)
  table = fake_table(base, conv_flops_of)
  logits = space.init_logits(jax.random.key(2))
  logits = {k: v * 100 for k, v in logits.items()}
  pa, _ = space.probabilities(logits)
  head = float(jnp.sum(pa[-1] * space.width_table()[-1])) * base.num_classes
  e_f = float(cost.expected_flops(space, logits, "released")) - head
  assert float(cost.expected_latency(space, logits, table, "released")) == pytest.approx(
    e_f, rel=1e-4
  )


@pytest.mark.parametrize("exact_ratio, sign", [(0.6, 1), (0.48, 0), (0.3, -1)])
def test_latency_cost_gradient_pushes_widths_towards_the_band(exact_ratio, sign):
  """Above the band [0.45, 0.5] the cost's gradient favours the narrowest candidate of every conv
  (d/dα < 0 there, > 0 at the widest), below it the widest; inside it, no gradient."""
  base = arch.named("resnet20")
  space = space_lib.build(base)
  table = fake_table(base, monotone_with_overhead)
  full = table.network(base)
  logits = space.init_logits(jax.random.key(0))

  def loss(lg):
    e = cost.expected_latency(space, lg, table, "released")
    return cost.cost_loss(e, jnp.float32(exact_ratio * full), full, 0.5, 0.05)

  g = jax.grad(loss)(logits)["alpha"]
  narrow, wide = (
    np.asarray(g[:, 0]),
    np.asarray(g[np.arange(space.num_slots), [s.num_valid - 1 for s in space.slots]]),
  )
  if sign == 0:
    assert np.all(np.asarray(g) == 0)
  else:
    assert np.all(sign * narrow < 0) and np.all(sign * wide > 0)


TINY = arch.Architecture(
  family="cifar_basic",
  num_classes=10,
  input_size=8,
  input_channels=1,
  stem_width=2,
  stages=(((2, 2),), ((2, 2),), ((2, 2),)),
  name="tiny",
)


def test_build_measures_writes_the_cache_and_a_second_call_measures_nothing(tmp_path, monkeypatch):
  lines = []
  table = latency.build(TINY, str(tmp_path), 2, repeats=1, progress=False, log=lines.append)
  keys = latency.space_keys(TINY)
  # width candidates {1, 2}: stage 1's 3x3 convs 2x2 (the stem's two, from 1 image channel, are
  # among them), the inserted projection 2x2 minus the diagonal; stages 2 and 3: the stride-2
  # conv, the stride-1 conv, the projection, 2x2 each
  assert len(keys) == 4 + 2 + 2 * 3 * 4 and set(table.seconds) == set(keys)
  assert all(0 < s < 1 for s in table.seconds.values())
  path = latency.cache_path(str(tmp_path), 2)
  assert path.endswith("_b2.json") and os.path.basename(path).startswith("cpu_")
  with open(path) as f:
    on_disk = json.load(f)
  assert on_disk["backend"] == "cpu" and len(on_disk["entries"]) == len(keys)
  assert "measuring 30 of 30" in lines[0]

  def no_measuring(*a, **k):
    raise AssertionError("measured although cached")

  monkeypatch.setattr(latency, "conv_seconds", no_measuring)
  again = latency.build(TINY, str(tmp_path), 2, repeats=1, progress=False, log=lines.append)
  assert again.seconds == table.seconds and "all cached" in lines[-1]
  # the network's table latency is the sum over its convs
  assert table.network(TINY) == pytest.approx(
    sum(table.seconds[latency.ConvKey.of(c)] for c in topology.of(TINY).convs())
  )
  with pytest.raises(KeyError, match="no latency-table entry"):
    table[latency.ConvKey(5, 1, 8, 4, 4)]


def test_interpolated_latency_hits_the_table_on_its_widths_and_is_linear_between():
  base = arch.named("resnet20")
  table = fake_table(base, monotone_with_overhead)
  conv = next(c for c in topology.of(base).convs() if c.name == "stage2.block2.conv_a")
  for a, b in [(9, 12), (32, 32), (19, 28)]:
    assert float(latency.conv_latency(table, base, conv, a, b)) == pytest.approx(
      table[latency.ConvKey.of(conv, a, b)], rel=1e-6
    )
  # halfway between the candidates 12 and 16 of the input: the mean of the two entries; the
  # derivative is the latency of one more channel along that edge
  mid = float(latency.conv_latency(table, base, conv, 14.0, 25))
  lo, hi = (table[latency.ConvKey.of(conv, c, 25)] for c in (12, 16))
  assert mid == pytest.approx((lo + hi) / 2, rel=1e-6)
  slope = jax.grad(lambda c: latency.conv_latency(table, base, conv, c, 25.0))(14.0)
  assert float(slope) == pytest.approx((hi - lo) / 4, rel=1e-4)
  # below the narrowest candidate (PaS may keep fewer): the narrowest entry's price, clamped,
  # never extrapolated towards zero or below
  narrowest = table[latency.ConvKey.of(conv, 32, 9)]
  for c in (8.0, 3.0, 1.0, 0.0):
    assert float(latency.conv_latency(table, base, conv, 32.0, c)) == pytest.approx(narrowest)
  assert float(jax.grad(lambda c: latency.conv_latency(table, base, conv, 32.0, c))(3.0)) == 0
  assert float(latency.conv_latency(table, base, conv, 1.0, 1.0)) == pytest.approx(
    table[latency.ConvKey.of(conv, 9, 9)]
  )
  assert narrowest > 0


def test_a_chosen_network_is_priced_on_entries_measured_at_its_own_widths(tmp_path):
  """PaS, L1 and FPGM keep widths the table does not have: `predicted` measures those entries on
  this device, caches them, and sums entries only; a second pricing measures nothing."""
  wide = dataclasses.replace(TINY, stem_width=7, stages=(((7, 7),), ((7, 7),), ((7, 7),)))
  path = latency.cache_path(str(tmp_path), 2)
  table = dataclasses.replace(fake_table(wide, monotone_with_overhead), path=path, repeats=1)
  table.batch_size = 2
  # 7 channels: candidates 2..7, so a conv kept at 1 channel is off the table's widths
  pruned = dataclasses.replace(wide, stem_width=1, stages=(((1, 7),), ((7, 1),), ((4, 7),)))
  off_grid = {latency.ConvKey.of(c) for c in topology.of(pruned).convs()} - set(table.seconds)
  assert len(off_grid) >= 3
  interpolated = sum(
    float(latency.conv_latency(table, wide, b, c.in_width, c.out_width))
    for b, c in zip(topology.of(wide).convs(), topology.of(pruned).convs())
  )
  value = latency.predicted(table, wide, pruned)
  assert off_grid <= set(table.seconds)
  assert all(0 < table.seconds[k] < 1 for k in off_grid)
  assert value == pytest.approx(
    sum(table.seconds[latency.ConvKey.of(c)] for c in topology.of(pruned).convs())
  )
  assert value != pytest.approx(interpolated)  # real entries, not the clamped interpolation
  with open(path) as f:
    on_disk = {latency.ConvKey.parse(k) for k in json.load(f)["entries"]}
  assert off_grid <= on_disk
  before = dict(table.seconds)
  assert latency.predicted(table, wide, pruned) == value and table.seconds == before


def test_kept_count_latency_equals_the_table_latency_of_the_network_at_those_widths():
  from tas_jax.models import channels

  base = arch.named("resnet20")
  table = fake_table(base, monotone_with_overhead)
  groups = channels.of(base)
  full = {g.name: g.size for g in groups.groups}
  assert float(latency.with_kept(table, groups, full)) == pytest.approx(
    table.network(base), rel=1e-5
  )
  # every group at its 50% candidate: the uniform network of the space, priced by the table
  half = {g.name: g.size // 2 for g in groups.groups}
  widths = [half[groups.conv_groups[c.name][1]] for c in topology.of(base).main_convs()]
  uniform = topology.pruned(base, widths, base.depths, inherits=True)
  assert float(latency.with_kept(table, groups, half)) == pytest.approx(
    table.network(uniform), rel=1e-5
  )
  # any widths (PaS, L1, FPGM): what extraction's report predicts is the same interpolation
  odd = {g.name: max(1, g.size // 3 + 1) for g in groups.groups}
  widths = [odd[groups.conv_groups[c.name][1]] for c in topology.of(base).main_convs()]
  cut = topology.pruned(base, widths, base.depths, inherits=True)
  assert latency.predicted(table, base, cut) == pytest.approx(
    float(latency.with_kept(table, groups, odd)), rel=1e-5
  )
  assert latency.predicted(table, base, uniform) == pytest.approx(table.network(uniform), rel=1e-6)


def test_global_l1_ranking_stops_at_the_latency_target():
  from tas_jax.models import channels
  from tas_jax.ops import select

  base = arch.named("resnet20")
  table = fake_table(base, monotone_with_overhead)
  groups = channels.of(base)
  rng = np.random.default_rng(0)
  scores = {g.name: rng.random(g.size) for g in groups.groups}
  target = 0.6 * table.network(base)
  cost = lambda counts: float(latency.with_kept(table, groups, counts))
  kept = select.global_ranking(groups, scores, target, cost)
  counts = {g: len(k) for g, k in kept.items()}
  assert cost(counts) <= target
  # one channel fewer removed (the last one that went back) is above the target
  removed = sorted(
    (float(scores[g][j]), g, j) for g in scores for j in range(len(scores[g])) if j not in kept[g]
  )
  _, g, _ = removed[-1]
  assert cost({**counts, g: counts[g] + 1}) > target


def test_the_cost_measure_is_a_shared_target_field_and_search_cost_is_read_as_its_old_name():
  from tas_jax import config as config_lib
  from tas_jax.errors import ConfigError

  c = config_lib.base_config()
  assert c.target.cost == "flops"
  c.search.cost = "latency"
  config_lib.validate(c)
  assert c.target.cost == "latency" and c.search.cost is None
  c.target.cost = "time"
  with pytest.raises(ConfigError, match=r"target.cost.*allowed: flops, latency"):
    config_lib.validate(c)
  c = config_lib.base_config()
  c.method, c.model.family, c.target.cost = "pas", "repvgg", "latency"
  with pytest.raises(ConfigError, match="ResNets"):
    config_lib.validate(c)


def test_the_reading_of_a_table_says_what_is_reachable_and_what_a_key_means():
  """With every conv priced by its FLOPs, the reading's percentages are FLOP ratios computed here
  from the counter: narrowest widths, fewest blocks, both (the smallest reachable target)."""
  base = arch.cifar_resnet(14, input_size=28, input_channels=1)
  table = fake_table(base, conv_flops_of)
  lines = latency.reading(table, base, "/x/table.json")
  convs = topology.of(base).main_convs()
  narrow = [min(space_lib.width_candidates(c.out_width)) for c in convs]
  conv_flops = lambda a: table.network(a)
  full = conv_flops(base)
  both = conv_flops(topology.pruned(base, narrow, [1, 1, 1])) / full
  assert lines[1] == f"  unpruned network (sum of its convs): {1e3 * full:.2f} ms"
  assert "the fewest blocks per stage [1, 1, 1], full widths: " in lines[3]
  assert lines[4].startswith(f"  both: {100 * both:.0f}%:") and "cannot be reached" in lines[4]
  assert "3x3 conv, stride 1, on 28x28 inputs" in lines[5]
  key = latency.ConvKey.parse("k3s2i32:16x32")
  assert key.describe() == "3x3 conv, stride 2, on 32x32 inputs, 16 -> 32 channels"
