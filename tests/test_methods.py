"""The methods contract and the one-shot criteria on it: L1 scores and FPGM distances against hand
values, extraction equal to the teacher with the removed channels zeroed, FLOPs on target, and a
method registered here, in the test, run through search → extract → distill → results."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pipelines
import pytest
from test_arch import one_block_per_stage
from test_repvgg import TINY as TINY_REPVGG

from tas_jax import config as config_lib, main, methods, parallel, workdir as layout
from tas_jax.methods import extraction
from tas_jax.methods.oneshot import stages
from tas_jax.models import arch, channels, networks, repvgg, resnet
from tas_jax.ops import criteria, flops
from tas_jax.target import Target


def _variables(a, seed: int) -> tuple[jax.Array, dict]:
  """Random inputs and trained-looking variables: weights and BN statistics away from their init."""
  x = jax.random.normal(jax.random.key(seed), (4, a.input_size, a.input_size, a.input_channels))
  v = parallel.jit_once(networks.build(a).init)(jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  noisy = lambda t, lo, hi: rng.uniform(lo, hi, size=t.shape).astype(np.float32)
  params = jax.tree.map(lambda t: np.asarray(t) + 0.2 * noisy(t, -1, 1), v["params"])
  stats = jax.tree.map(lambda t: noisy(t, 0.5, 1.5), v["batch_stats"])
  return x, {"params": params, "batch_stats": stats}


# ------------------------------------------------------------------- the criteria by hand
def test_l1_scores_and_fpgm_distances_equal_hand_computed_values():
  """ResNet-8's first residual chain is produced by the stem (3x3x3 filters) and stage 1's conv_b
  (3x3x16): stem filter j is j everywhere (L1 27j; distance |j−k|·√27), conv_b filter j is
  ±0.5 everywhere, alternating (L1 72; distance 12 between opposite signs, 0 otherwise)."""
  a = arch.cifar_resnet(8, input_size=8)
  _, v = _variables(a, 0)
  v["params"]["stem"]["conv"]["kernel"] = np.broadcast_to(
    np.arange(16, dtype=np.float32), (3, 3, 3, 16)
  ).copy()
  v["params"]["stage1.block1"]["conv_b"]["conv"]["kernel"] = np.broadcast_to(
    0.5 * (-1.0) ** np.arange(16, dtype=np.float32), (3, 3, 16, 16)
  ).copy()
  kernels = channels.producer_kernels(a, v)
  assert [k.shape for k in kernels["stem"]] == [(3, 3, 3, 16), (3, 3, 16, 16)]
  l1 = criteria.l1(kernels["stem"])
  np.testing.assert_allclose(l1[[0, 1, 7, 15]], [72, 99, 261, 477])
  fpgm = criteria.fpgm(kernels["stem"])
  # Σ_k |j−k| over 16 filters: j=0 → 120, j=7 → 28 + 36 = 64, j=15 → 120; plus 8 opposite signs × 12
  np.testing.assert_allclose(
    fpgm[[0, 7, 8, 15]],
    [120 * 27**0.5 + 96, 64 * 27**0.5 + 96, 64 * 27**0.5 + 96, 120 * 27**0.5 + 96],
    rtol=1e-9,
  )
  # FPGM removes the filters nearest the geometric median (the middle j) first; L1 the smallest
  assert np.argsort(fpgm, kind="stable")[:2].tolist() == [7, 8]
  assert np.argsort(l1, kind="stable")[:2].tolist() == [0, 1]
  # an inner activation has one producer: conv_a alone
  assert len(kernels["stage1.block1.conv_a"]) == 1
  np.testing.assert_allclose(
    criteria.l1(kernels["stage1.block1.conv_a"]),
    np.abs(v["params"]["stage1.block1"]["conv_a"]["conv"]["kernel"]).sum((0, 1, 2)),
    rtol=1e-6,
  )
  np.testing.assert_allclose(criteria.relative(np.array([1.0, 2.0, 3.0])), [0.5, 1.0, 1.5])


# ------------------------------------------------------------------- extraction
NETWORKS = [
  arch.cifar_resnet(14, input_size=16),
  arch.cifar_resnet(11, "bottleneck", input_size=16),
  one_block_per_stage(
    arch.imagenet_resnet(18, num_classes=7, input_size=32, downsample="strided_conv")
  ),
  TINY_REPVGG,
]
RULES = [("l1", "global"), ("l1", "uniform"), ("fpgm", "uniform")]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(r))
@pytest.mark.parametrize("a", NETWORKS, ids=lambda a: getattr(a, "family", "repvgg"))
def test_extracted_network_equals_the_teacher_with_the_removed_channels_zeroed(a, rule):
  criterion, ranking = rule
  x, v = _variables(a, 3)
  scores = stages.score(criterion, a, v, ranking)
  kept, how = stages.choose(criterion, a, scores, Target.flops(a, 0.5), ranking)
  groups = channels.of(a)
  pruned, weights = channels.cut(a, v, kept)
  # FLOPs: the counter on the extracted network equals the count at the kept widths, at or below
  # the target and within target.tolerance (0.05) of it
  counts = channels.counts(kept)
  full = flops.count(a).flops
  assert flops.count(pruned).flops == flops.with_kept(groups, counts)
  assert 0.45 <= flops.count(pruned).flops / full <= 0.5
  assert any(n < g.size for n, g in zip(counts.values(), groups.groups))
  # the same function as the original with every removed channel zeroed after its ReLU
  masks = {
    g.name: np.isin(np.arange(g.size), kept[g.name]).astype(np.float32) for g in groups.groups
  }
  gates = groups.per_site({k: jnp.asarray(m) for k, m in masks.items()})
  model = repvgg.RepVGG(a, deploy=False) if isinstance(a, repvgg.RepVGGArch) else resnet.ResNet(a)
  want = parallel.jit_once(lambda v: model.apply(v, x, train=False, gates=gates))(v)
  got = parallel.jit_once(lambda w: networks.build(pruned).apply(w, x, train=False))(weights)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert np.max(np.abs(np.asarray(want))) > 0.05
  if criterion == "fpgm" or ranking == "uniform":  # one ratio for every group
    ratio = how["pruning_ratio"]
    assert counts == {g.name: max(1, round((1 - ratio) * g.size)) for g in groups.groups}


def test_global_l1_keeps_the_highest_relative_norms_and_stops_at_the_target():
  a = arch.cifar_resnet(14, input_size=16)
  _, v = _variables(a, 5)
  scores = stages.score("l1", a, v, "global")
  kept, _ = stages.choose("l1", a, scores, Target.flops(a, 0.5), "global")
  groups = channels.of(a)
  removed = [scores[g][j] for g in kept for j in range(len(scores[g])) if j not in kept[g]]
  survivors = [scores[g][j] for g in kept for j in kept[g] if scores[g][j] < max(scores[g])]
  assert max(removed) <= min(survivors)  # one threshold over the whole network
  # the smallest removal that reaches the target: putting back the last channel removed misses it
  last = max((scores[g][j], g, j) for g in kept for j in range(len(scores[g])) if j not in kept[g])
  back = channels.counts(kept)
  back[last[1]] += 1
  assert flops.with_kept(groups, back) > 0.5 * flops.count(a).flops


@pytest.mark.parametrize("ranking", ["global", "uniform"])
def test_l1_inner_scope_prunes_only_the_first_conv_of_each_block(ranking):
  """l1.scope=inner (Li et al.): the residual chains keep every channel, each block's inner
  activation loses the lowest-L1 ones, the FLOPs reach the target."""
  a = arch.named("resnet20")
  x, v = _variables(a, 7)
  scores = stages.score("l1", a, v, ranking)
  kept, how = stages.choose("l1", a, scores, Target.flops(a, 0.7), ranking, scope="inner")
  groups = channels.of(a)
  inner = [g for g in groups.groups if ".conv_a" in g.name]
  chains = [g for g in groups.groups if ".conv_" not in g.name]
  assert len(inner) == 9 and len(chains) == 3 and how["scope"] == "inner"
  assert all(kept[g.name] == list(range(g.size)) for g in chains)
  assert sum(len(kept[g.name]) < g.size for g in inner) >= 6
  ratio = flops.with_kept(groups, channels.counts(kept)) / flops.count(a).flops
  assert 0.65 <= ratio <= 0.7
  # within a block the removed channels are its lowest-scoring ones
  for g in inner:
    removed = [scores[g.name][j] for j in range(g.size) if j not in kept[g.name]]
    if removed:
      assert max(removed) <= min(scores[g.name][j] for j in kept[g.name])
  with pytest.raises(config_lib.ConfigError, match="l1.scope=inner .* has none"):
    stages.choose(
      "l1",
      TINY_REPVGG,
      stages.score("l1", TINY_REPVGG, _variables(TINY_REPVGG, 1)[1]),
      Target.flops(TINY_REPVGG, 0.5),
      "global",
      scope="inner",
    )


def test_each_one_shot_method_fine_tunes_with_its_papers_recipe():
  from tas_jax.methods.oneshot import settings
  from tas_jax.training import supervised

  c = config_lib.cifar_recipe("cifar10", 56)
  c.distill.student, c.distill.init = "l1", "searched"
  describe = lambda m: supervised.describe(methods.get(m).finetune(c))
  assert describe("l1") == (
    "40 epochs at batch 64, SGD momentum 0.9, weight decay 0.0001, constant lr 0.001"
  )
  assert describe("fpgm") == (
    "200 epochs at batch 128, SGD momentum 0.9 (Nesterov), weight decay 0.0005, lr 0.01, x0.2 "
    "after epochs 60, 120, 160"
  )
  c.fpgm.finetune_epochs = 20  # a shorter run keeps the decays at the same fractions
  assert methods.get("fpgm").finetune(c).decay_epochs == (6, 12, 16)
  c.data.name = "imagenet"
  assert describe("l1").startswith("20 epochs at batch 256") and "constant lr 0.001" in describe(
    "l1"
  )
  c.fpgm.finetune_epochs = None
  assert describe("fpgm").endswith("lr 0.1, x0.1 after epochs 30, 60, 90")
  c.l1.finetune = "distill"  # the TAS recipe, as an explicit choice
  assert describe("l1") == supervised.describe(c.distill)
  c.l1.finetune = "papers"
  with pytest.raises(config_lib.ConfigError, match="l1.finetune.*allowed: paper, distill"):
    settings.l1_validate(c)


# ------------------------------------------------------------------- a method from outside
def _first_channels_method() -> methods.Method:
  """A throw-away method written here: keeps the first channels of every group (a fraction set
  in its own config section), from the teacher's weights."""

  def defaults():
    s = ml_collections.ConfigDict()
    s.fraction = 0.7  # of every group's channels, the first ones
    return s

  def validate(c):
    if not 0 < c.firstk.fraction <= 1:
      raise config_lib.ConfigError(f"config.firstk.fraction={c.firstk.fraction}: in (0, 1]")

  def search(c, workdir):
    base = networks.load(os.path.join(layout.teacher_dir(workdir), layout.ARCH))
    kept = {
      g.name: list(range(max(1, round(c.firstk.fraction * g.size))))
      for g in channels.of(base).groups
    }
    d = layout.search_dir(workdir, "firstk")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "kept.json"), "w") as f:
      json.dump(kept, f)
    summary = {"stage": "search-firstk", "finished": True}
    layout.write_summary(d, summary)
    return summary

  def extract(c, workdir):
    base = networks.load(os.path.join(layout.teacher_dir(workdir), layout.ARCH))
    with open(os.path.join(layout.search_dir(workdir, "firstk"), "kept.json")) as f:
      kept = json.load(f)
    from tas_jax.training import checkpoint

    v, step = checkpoint.read_variables(
      layout.teacher_dir(workdir),
      base,
      "teacher",
      jax.sharding.SingleDeviceSharding(jax.devices()[0]),
    )
    return extraction.write(
      c, workdir, "firstk", "first-k", f"the teacher at step {step}", base, v, kept
    )

  return methods.Method(
    name="firstk",
    label="first channels",
    description="a test's method",
    search=search,
    extract=extract,
    section="firstk",
    defaults=defaults,
    validate=validate,
    keeps_weights=True,
  )


@pytest.fixture
def firstk():
  method = methods.register(_first_channels_method())
  yield method
  methods.unregister(method.name)


@pytest.mark.stage  # trains a fine-tuning run from the shared pipeline's teacher
def test_a_method_registered_outside_the_package_runs_through_every_stage(
  cifar_pipeline, tmp_path, firstk
):
  source, _ = cifar_pipeline
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  shutil.copytree(os.path.join(source, "teacher"), os.path.join(workdir, "teacher"))
  c = pipelines.config(method="firstk", pipeline__runs="firstk-kd", distill__cosine_epochs=1)
  c.stage = "all"
  c.firstk.fraction = 0.75
  assert (
    "firstk" in config_lib.students() and config_lib.parse_run("firstk-kd")["init"] == "searched"
  )
  with pytest.raises(config_lib.ConfigError, match="firstk.fraction=0"):
    bad = pipelines.config(method="firstk")
    bad.firstk.fraction = 0.0
    config_lib.validate(bad)
  out = main.run(c, workdir)
  assert out["finished"]
  rows = {r["run"]: r for r in out["rows"]}
  assert list(rows) == ["teacher", "firstk-kd"]
  assert rows["firstk-kd"]["network"] == "first channels + KD"
  summary = layout.read_summary(layout.distill_dir(workdir, "firstk-kd"))
  assert summary["init"] == "searched" and summary["student"] == "firstk"
  ex = layout.read_summary(layout.extract_dir(workdir, "firstk"))
  assert rows["firstk-kd"]["flops_m"] == pytest.approx(ex["after"]["flops_m"])
  # its section is part of its search's record; the distill run reads its extraction
  record = json.load(open(os.path.join(layout.search_dir(workdir, "firstk"), "config.json")))
  assert record["fields"]["firstk.fraction"] == 0.75 and "target.flop_ratio" in record["fields"]
  record = json.load(open(os.path.join(layout.distill_dir(workdir, "firstk-kd"), "config.json")))
  assert record["reads"] == ["teacher", "search-firstk", "extract-firstk"]

  # L1 and FPGM on the same teacher: their search and extract stages, on target
  for name in ("l1", "fpgm"):
    for stage in ("search", "extract"):
      c.method, c.stage = name, stage
      main.run(c, workdir)
    ex = layout.read_summary(layout.extract_dir(workdir, name))
    assert ex["in_band"] and 0.45 <= ex["flops_ratio"] <= 0.5, (name, ex["flops_ratio"])
    kept = json.load(open(os.path.join(layout.extract_dir(workdir, name), layout.KEPT_CHANNELS)))
    pruned = networks.load(os.path.join(layout.extract_dir(workdir, name), layout.ARCH))
    assert len(kept["classifier.inputs"]) == flops.output_width(pruned)
    searched = json.load(open(os.path.join(layout.search_dir(workdir, name), stages.CHANNELS)))
    assert {g: v["kept"] for g, v in searched.items()}["stem"] == kept["stem"]


@pytest.mark.stage  # teacher, a 2-epoch soft search, extraction and the run, on 128 images
def test_soft_fpgm_zeroes_reselects_each_epoch_and_cuts_what_it_fine_tuned(tmp_path):
  """fpgm.soft (He et al.'s procedure): the search fine-tunes the whole teacher, zeroing the
  selected filters after every epoch (the kept sets are recorded per epoch); extraction cuts the
  last selection out of those weights; the run fpgm-ce trains no more and evaluates the cut
  network, whose accuracy is the search's `cut_test_accuracy`."""
  from tas_jax.methods.oneshot import soft
  from tas_jax.stages import pipeline
  from tas_jax.training import checkpoint

  a = arch.cifar_resnet(8, input_size=32, input_channels=1)
  a.save(str(tmp_path / "r8.json"))
  c = config_lib.base_config()
  c.stage, c.method, c.data.name = "all", "fpgm", "embedded"
  c.data.train_examples, c.data.image_size, c.model.arch = 128, 32, str(tmp_path / "r8.json")
  c.teacher.warmup_epochs, c.teacher.cosine_epochs, c.teacher.batch_size = 0, 1, 64
  c.fpgm.soft, c.fpgm.finetune_epochs, c.fpgm.finetune_batch_size = True, 2, 64
  c.distill.batch_size = 64
  c.pipeline.runs, c.pipeline.throughput_batch, c.pipeline.throughput_repeats = "fpgm-ce", 16, 2
  c.log_every_steps = 100
  w = tmp_path / "w"
  out = pipeline.run_all(c, str(w))
  search = json.load(open(w / "search-fpgm" / "summary.json"))
  assert search["soft"] and search["epochs"] == 2 and len(search["history"]) == 2
  first, last = (h["kept_indices"] for h in search["history"])
  assert isinstance(search["history"][0]["channels_swapped"], int)  # against the first cut
  assert (
    search["history"][1]["channels_swapped"]
    == sum(len(set(first[g]) ^ set(last[g])) for g in first) // 2
  )
  assert 0.45 <= search["flops_ratio"] <= 0.5
  # the checkpoint holds the zeroed filters of the last selection, and nothing else is zero
  variables, _ = checkpoint.read_variables(
    str(w / "search-fpgm"), a, "t", checkpoint.host_sharding()
  )
  assert soft.kept_of_zeros(a, jax.device_get(variables)["params"]) == last
  kept = json.load(open(w / "search-fpgm" / stages.CHANNELS))
  assert {g: v["kept"] for g, v in kept.items()} == last
  # the run trains nothing and evaluates the cut network: the search's figure
  run = json.load(open(w / "distill" / "fpgm-ce" / "summary.json"))
  assert run["epochs"] == 0 and run["test_accuracy"] == pytest.approx(
    search["cut_test_accuracy"], abs=1e-9
  )
  assert [r["run"] for r in out["rows"]] == ["teacher", "fpgm-ce"]
  assert "soft FPGM" in (w / "extract-fpgm" / "report.md").read_text()


def test_soft_fpgm_holds_zeroed_filters_through_the_epoch():
  """The held filters get no update — not from the gradient, the momentum built before, nor
  weight decay — while the others train; the mask is optimizer state, swapped without a new
  optimizer."""
  import optax

  from tas_jax.methods.oneshot import soft

  a = arch.cifar_resnet(8, input_size=8, input_channels=1)
  _, v = _variables(a, 2)
  params = jax.tree.map(jnp.asarray, v["params"])
  tx = optax.chain(
    optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9), soft.frozen_where_zeroed()
  )
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):  # momentum builds up everywhere
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  groups = channels.of(a)
  kept = {g.name: list(range(1, g.size)) for g in groups.groups}  # channel 0 of every group held
  params = jax.tree.map(jnp.asarray, soft.zero_removed(a, jax.device_get(params), kept))
  *links, _ = state
  state = (
    *links,
    soft.FrozenState(jax.tree.map(jnp.asarray, soft.trainable_mask(a, params, kept))),
  )
  before = params
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert soft.kept_of_zeros(a, jax.device_get(params)) == kept
  moved = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), params, before)
  assert max(jax.tree.leaves(moved)) > 0.1  # the rest trained
