"""PaS: the straight-through threshold, the mask groups and their MACs against the FLOP counter,
extraction to a smaller network that computes the masked network's function, the same numbers on
1 and 8 devices, and the stages of the shared pipeline (search, resume, extract, fine-tune)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pipelines
import pytest
from test_arch import one_block_per_stage
from test_train import run_on

from tas_jax import config as config_lib, parallel, workdir as layout
from tas_jax.methods import pas
from tas_jax.methods.pas import extract, masks, search, settings
from tas_jax.models import arch, channels, networks, resnet, topology
from tas_jax.ops import flops
from tas_jax.target import Target

FAMILIES = [
  arch.cifar_resnet(14, input_size=16),  # stage-1 chain: the stem and two blocks
  arch.cifar_resnet(11, "bottleneck", input_size=16),
  one_block_per_stage(
    arch.imagenet_resnet(18, num_classes=7, input_size=32, downsample="strided_conv")
  ),  # torchvision's form
  one_block_per_stage(arch.imagenet_resnet(50, num_classes=7, input_size=32)),
]


# ------------------------------------------------------------------- threshold and STE
def test_threshold_forward_is_exactly_zero_or_one_and_backward_the_identity():
  v = jnp.array([0.2, 0.5, 0.5000001, 1.3, -0.4, 0.9])
  m = masks.hard_mask(v)
  np.testing.assert_array_equal(np.asarray(m), [0, 0, 1, 1, 0, 1])  # 1[v > 0.5], not ≥
  w = jnp.array([3.0, -1.0, 2.0, 0.5, 7.0, -2.0])
  np.testing.assert_array_equal(
    np.asarray(jax.grad(lambda v: jnp.sum(w * masks.hard_mask(v)))(v)), np.asarray(w)
  )  # d/dv = upstream gradient
  # every group keeps at least its best channel
  np.testing.assert_array_equal(np.asarray(masks.hard_mask(jnp.array([0.1, 0.4, -1.0]))), [0, 1, 0])


def test_kept_count_is_an_integer_with_gradient_one_per_scalar():
  lay = channels.of(arch.cifar_resnet(8))
  scores = {g.name: jnp.linspace(0.0, 1.0, g.size) for g in lay.groups}
  counts = masks.kept_counts(lay, scores)
  for g in lay.groups:
    assert float(counts[g.name]) == np.sum(np.linspace(0.0, 1.0, g.size) > 0.5)
  grads = jax.grad(lambda s: sum(masks.kept_counts(lay, s).values()))(scores)
  for g in jax.tree.leaves(grads):
    np.testing.assert_array_equal(np.asarray(g), 1.0)


# ------------------------------------------------------------------- groups and MACs
def test_mask_groups_of_resnet20_follow_the_residual_chains():
  lay = channels.of(arch.named("resnet20"))
  chains = {g.name: g.sites for g in lay.groups if ".conv_" not in g.name}
  # stage 1 has no projection: the stem and its three blocks are one chain; stages 2 and 3 start at
  # their first block's projection
  assert chains == {
    "stem": ("stem", "stage1.block1", "stage1.block2", "stage1.block3"),
    "stage2.block1": ("stage2.block1", "stage2.block2", "stage2.block3"),
    "stage3.block1": ("stage3.block1", "stage3.block2", "stage3.block3"),
  }
  assert lay.num_channels == 16 + 32 + 64 + 3 * (16 + 32 + 64)
  assert lay.conv_groups["stage2.block1.shortcut"] == ("stem", "stage2.block1")
  assert lay.conv_groups["stage2.block2.conv_b"] == ("stage2.block2.conv_a", "stage2.block1")
  assert lay.head_group == "stage3.block1"


@pytest.mark.parametrize(
  "name, mflops",
  [
    ("resnet20", 40.81),
    ("resnet32", 69.12),
    ("resnet56", 125.75),
    ("resnet110", 253.15),
    ("resnet164", 247.65),
    ("imagenet_resnet50", 4089.19),
  ],
)
def test_unmasked_macs_are_the_spec_table(name, mflops):
  lay = channels.of(arch.named(name))
  assert flops.with_kept(lay, {g.name: g.size for g in lay.groups}) / 1e6 == pytest.approx(
    mflops, abs=0.005
  )


@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_masked_macs_equal_the_counter_on_the_extracted_network(a):
  lay = channels.of(a)
  rng = np.random.default_rng(11)
  for _ in range(5):
    kept = {
      g.name: sorted(rng.choice(g.size, size=rng.integers(1, g.size + 1), replace=False).tolist())
      for g in lay.groups
    }
    counts = {k: len(v) for k, v in kept.items()}
    pruned = channels.pruned_architecture(a, kept)
    assert flops.with_kept(lay, counts) == flops.count(pruned).flops
    # the shortcuts stay the original's, whatever the widths
    assert [b.shortcut for b in topology.of(pruned).blocks] == [
      b.shortcut for b in topology.of(a).blocks
    ]


def test_macs_gradient_is_the_cost_of_one_more_channel_by_the_counter():
  """MACs are linear in each group's count (no conv reads and writes one group), so the
  straight-through gradient w.r.t. any scalar of a group is exactly the counter's difference
  between keeping one more channel of that group and not."""
  a = arch.cifar_resnet(11, "bottleneck", input_size=16)
  lay = channels.of(a)
  rng = np.random.default_rng(2)
  scores = {g.name: jnp.asarray(rng.uniform(0, 1, g.size), jnp.float32) for g in lay.groups}
  grads = jax.grad(lambda s: flops.with_kept(lay, masks.kept_counts(lay, s)))(scores)
  kept = search.kept_channels(scores)
  counts = {k: len(v) for k, v in kept.items()}
  for g in lay.groups:
    if counts[g.name] == g.size:
      continue
    more = dict(counts, **{g.name: counts[g.name] + 1})
    by_counter = (
      flops.count(_with_counts(a, more)).flops - flops.count(_with_counts(a, counts)).flops
    )
    np.testing.assert_allclose(np.asarray(grads[g.name]), by_counter, rtol=1e-6)


def _with_counts(a, counts):
  return channels.pruned_architecture(a, {k: list(range(n)) for k, n in counts.items()})


# ------------------------------------------------------------------- extraction
def _random_masked_variables(a, seed):
  model = masks.MaskedNetwork(a)
  x = jax.random.normal(jax.random.key(seed), (4, a.input_size, a.input_size, a.input_channels))
  v = parallel.jit_once(model.init)(jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  noisy = lambda t, lo, hi: rng.uniform(lo, hi, size=t.shape).astype(np.float32)
  params = {
    "masks": {k: noisy(s, 0.0, 1.0) for k, s in v["params"]["masks"].items()},
    "network": jax.tree.map(
      lambda t: np.asarray(t) + 0.1 * noisy(t, -1, 1), v["params"]["network"]
    ),
  }
  stats = jax.tree.map(lambda t: noisy(t, 0.5, 1.5), v["batch_stats"])  # non-trivial BN statistics
  return model, x, {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("a", FAMILIES, ids=lambda a: a.family)
def test_extracted_network_computes_the_masked_networks_function(a):
  model, x, variables = _random_masked_variables(a, seed=3)
  want = parallel.jit_once(lambda v: model.apply(v, x, train=False))(variables)
  variables = jax.device_get(variables)
  kept = search.kept_channels(variables["params"]["masks"])
  pruned, weights = channels.cut(a, extract.network_variables(variables), kept)
  got = parallel.jit_once(lambda w: resnet.build(pruned).apply(w, x, train=False))(weights)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert flops.count(pruned).flops < flops.count(a).flops
  # the kept channels are the scalars above the threshold, not the first k
  v = np.asarray(variables["params"]["masks"]["stem"])
  assert kept["stem"] == np.flatnonzero(v > 0.5).tolist() != list(range(len(kept["stem"])))


# ------------------------------------------------------------------- data parallel
@pytest.mark.devices
def test_pas_step_same_numbers_on_1_and_8_devices_with_jit_and_pmap():
  ref = run_on(1, "jit", "pas")
  assert ref["compilations"] == 1
  assert 0.2 < ref["flops_ratios"][0] < 0.8  # about half the channels off
  for devices, mode in [(8, "jit"), (8, "pmap")]:
    got = run_on(devices, mode, "pas")
    assert got["devices"] == devices
    np.testing.assert_allclose(got["losses"], ref["losses"], atol=1e-5)
    assert got["flops_ratios"] == ref["flops_ratios"]
    np.testing.assert_allclose(got["masks"], ref["masks"], atol=1e-6)
    np.testing.assert_allclose(got["params_head"], ref["params_head"], atol=1e-5)
  # the scalars moved off their starting values (0.2 or 0.8)
  m = np.asarray(ref["masks"])
  assert np.max(np.minimum(np.abs(m - 0.2), np.abs(m - 0.8))) > 1e-3


# ------------------------------------------------------------------- the stages, tiny
def _read(workdir, *path):
  with open(os.path.join(workdir, *path)) as f:
    return json.load(f)


@pytest.mark.stage
def test_search_moves_the_macs_to_the_target_and_records_every_epoch(cifar_pipeline):
  """The shared pipeline's PaS search: 2 epochs of 31 steps from its teacher, target 50%."""
  workdir, _ = cifar_pipeline
  summary = _read(workdir, "search-pas", "summary.json")
  assert summary["finished"] and summary["epochs"] == 2 and len(summary["history"]) == 2
  assert summary["compilations"] == {"step": 1, "eval_step": 1}
  ratios = [h["flops_ratio"] for h in summary["history"]]
  assert ratios[0] < 0.95 and abs(ratios[-1] - 0.5) < 0.1, ratios  # from 100%
  assert summary["in_band"] == (abs(ratios[-1] - 0.5) <= 0.05)  # target.tolerance: the warning
  last = summary["history"][-1]
  assert set(last["kept"]) == {
    g.name for g in channels.of(arch.cifar_resnet(8, input_size=28, input_channels=1)).groups
  }
  assert 0 <= last["masked_test_accuracy"] <= 1


@pytest.mark.stage
def test_search_resumes_where_it_stopped(cifar_pipeline, tmp_path):
  """Stopped after 5 steps and continued in a new call: the shared pipeline's PaS search."""
  workdir, _ = cifar_pipeline
  summary = _read(workdir, "search-pas", "summary.json")
  c = pipelines.config(max_steps_per_run=5)
  os.symlink(os.path.join(workdir, "teacher"), tmp_path / "teacher")
  first = pas.METHOD.search(c, str(tmp_path))
  assert first == {"stage": "search-pas", "finished": False, "step": 5}
  c.max_steps_per_run = 0
  resumed = pas.METHOD.search(c, str(tmp_path))
  assert [h["kept"] for h in resumed["history"]] == [h["kept"] for h in summary["history"]]
  assert resumed["history"][-1]["flops_ratio"] == summary["history"][-1]["flops_ratio"]


@pytest.mark.stage
def test_extract_and_fine_tune_from_the_kept_weights(cifar_pipeline):
  workdir, _ = cifar_pipeline
  summary = _read(workdir, "search-pas", "summary.json")
  out = _read(workdir, "extract-pas", "summary.json")
  assert out["flops_ratio"] == pytest.approx(summary["flops_ratio"], abs=1e-12)  # same count
  ex = layout.extract_dir(workdir, "pas")
  for f in ("arch.json", "kept_channels.json", "report.md", "widths.png", "widths_over_epochs.png"):
    assert os.path.isfile(os.path.join(ex, f)), f
  kept = _read(ex, "kept_channels.json")
  pruned = arch.load(os.path.join(ex, "arch.json"))
  assert len(kept["stem"]) == pruned.stem_width
  assert pruned.name == f"resnet8_pas{round(100 * out['flops_ratio'])}"  # named by what it kept
  # the fine-tuning started from the extracted weights
  tuned = _read(workdir, "distill", "pas-kd", "summary.json")
  assert tuned["finished"] and tuned["init"] == "searched" and tuned["student"] == "pas"
  assert tuned["run"] == "pas-kd" and tuned["flops_m"] == pytest.approx(out["after"]["flops_m"])
  # with PaS's own recipe: pas.finetune_epochs (1 here) at pas.batch_size, not config.distill's
  assert tuned["epochs"] == 1 and tuned["batch_size"] == 64


def test_fine_tuning_recipe_is_the_released_one_per_family():
  """The tail of the released 90-epoch step schedule (x0.1 at 30, 60, 80): ResNet-50 from epoch
  52, RepVGG-B1 from 42; α per family; lr at the step boundaries by hand."""
  from tas_jax.methods.pas import settings
  from tas_jax.training import supervised

  c = config_lib.base_config()
  r = settings.finetune(c)
  assert (r.epochs, r.decay_epochs, r.lr, r.batch_size, r.momentum, r.nesterov, r.weight_decay) == (
    38,
    (8, 28),
    0.0256,
    512,
    0.9,
    False,
    1e-4,
  )
  assert supervised.describe(r) == (
    "38 epochs at batch 512, SGD momentum 0.9, weight decay "
    "0.0001, lr 0.0256, x0.1 after epochs 8, 28"
  )
  _, schedule = supervised.sgd_with_step_decay(r, steps_per_epoch=10)
  lrs = [float(schedule(step)) for step in (0, 79, 80, 279, 280, 379)]
  np.testing.assert_allclose(lrs, [0.0256, 0.0256, 0.00256, 0.00256, 0.000256, 0.000256], rtol=1e-6)
  assert settings.cost_weight(c.pas, arch.named("resnet20")) == 5.0
  c.model.family = "repvgg"
  r = settings.finetune(c)
  assert (r.epochs, r.decay_epochs) == (48, (18, 38))
  from tas_jax.models import repvgg

  assert settings.cost_weight(c.pas, repvgg.named_repvgg("a0")) == 0.1
  c.pas.cost_weight, c.pas.finetune_epochs, c.pas.finetune_decay_epochs = 2.0, 20, (5, 15)
  assert settings.cost_weight(c.pas, repvgg.named_repvgg("a0")) == 2.0
  assert settings.finetune(c).decay_epochs == (5, 15)
  c.pas.finetune_decay_epochs = (15, 5)
  with pytest.raises(
    config_lib.ConfigError, match=r"pas\.finetune_decay_epochs=\(15, 5\): increasing"
  ):
    config_lib.validate(c)
  c.pas.finetune_decay_epochs = ()
  c.pas.finetune = "distill"  # the common recipe, for comparing methods on one recipe
  assert supervised.describe(settings.finetune(c)) == supervised.describe(c.distill)
  c.pas.macs_unit = 1e6  # the released form's unit, with the scaled form: refused
  with pytest.raises(config_lib.ConfigError, match=r"pas\.macs_unit=1000000.0: applies to "):
    config_lib.validate(c)
  c.pas.penalty = "released"
  config_lib.validate(c)


def test_config_errors_for_weight_keeping_runs():
  for name in ("pas", "l1", "fpgm"):  # the methods that keep weights (the registry says so)
    assert config_lib.parse_run(f"{name}-kd") == {"student": name, "kd": True, "init": "searched"}
  assert config_lib.parse_run("tas-kd-init")["init"] == "teacher"
  with pytest.raises(
    config_lib.ConfigError, match="pas, l1, fpgm runs fine-tune the extracted weights, no -init"
  ):
    config_lib.parse_run("pas-kd-init")
  c = config_lib.base_config()
  c.distill.init = "searched"
  with pytest.raises(config_lib.ConfigError, match="only for distill.student in pas, l1, fpgm"):
    config_lib.validate(c)
  c.distill.student = "pas"
  assert config_lib.run_name(c.distill) == "pas-kd"
  c.distill.init = "scratch"
  assert config_lib.run_name(c.distill) == "pas-kd-scratch"  # not the fine-tuned run's folder
  assert config_lib.run_methods("tas-kd,pas-kd,uniform-kd", "tas") == ["tas", "pas"]
  assert config_lib.run_methods("pas-kd", "tas") == ["pas"]
  assert config_lib.run_methods("uniform-kd,pas-ce", "pas") == ["pas"]


def test_scaled_penalty_is_the_released_one_at_resnet50():
  """The default (scaled) penalty gives every mask scalar of ResNet-50 at 224 px the gradient of
  the released α·((MACs − R·MACs_full)/G)², α = 5; on a CIFAR ResNet it is the same relative
  gap with the same weight, (4.089)²·5 ≈ 83.6, where the released form gives ~0.008."""
  r50 = networks.resolve("imagenet_resnet50")
  groups = channels.of(r50)
  rng = np.random.default_rng(0)
  scores = {g.name: jnp.asarray(rng.uniform(0.2, 1.2, g.size), jnp.float32) for g in groups.groups}
  target = Target.flops(r50, 0.5)
  grads = {}
  for form in ("scaled", "released"):
    p = config_lib.base_config().pas
    p.penalty = form
    penalty = search.make_penalty(p, target)
    value, grads[form] = jax.value_and_grad(lambda s: penalty(s)[0])(scores)
    assert float(value) > 0
  for g in groups.groups:
    np.testing.assert_allclose(grads["scaled"][g.name], grads["released"][g.name], rtol=1e-6)
  assert any(float(jnp.abs(v).max()) > 0 for v in grads["released"].values())
  # by hand on ResNet-20: weight 5·(M_R50/G)², gap relative to its own MACs
  r20 = networks.resolve("resnet20")
  p = config_lib.base_config().pas
  weight, unit = settings.penalty_scale(p, r20, 40.813194e6, by_table=False)
  assert weight == pytest.approx(5 * 4.089185256**2, rel=1e-9) and unit == 40.813194e6
  # a latency target: the same weight on the relative latency gap
  assert settings.penalty_scale(p, r20, 0.0123, by_table=True) == (weight, 0.0123)
  p.penalty = "released"
  assert settings.penalty_scale(p, r20, 40.813194e6, by_table=False) == (5.0, 1e9)
  p.macs_unit = 0.0
  assert settings.penalty_scale(p, r20, 40.813194e6, by_table=False) == (5.0, 40.813194e6)


@pytest.mark.stage  # a 1-epoch teacher and a 1-epoch search on 128 images
def test_a_search_whose_masks_do_not_move_says_which_setting_to_change(tmp_path, caplog):
  """The released penalty (MACs in G) on an 11 M-FLOP network cannot move a mask: after the
  first epoch the search warns in one line and names pas.cost_weight and the scaled penalty."""
  from tas_jax import main

  a = arch.cifar_resnet(8, input_size=32, input_channels=1)
  a.save(str(tmp_path / "r8.json"))
  c = config_lib.base_config()
  c.stage, c.method, c.data.name = "teacher", "pas", "embedded"
  c.data.train_examples, c.data.image_size, c.model.arch = 128, 32, str(tmp_path / "r8.json")
  c.teacher.warmup_epochs, c.teacher.cosine_epochs, c.teacher.batch_size = 0, 1, 64
  c.pas.epochs, c.pas.batch_size, c.pas.penalty = 1, 64, "released"
  c.log_every_steps = 100
  main.run(c, str(tmp_path / "w"))
  c.stage = "search"
  with caplog.at_level("WARNING"):
    summary = main.run(c, str(tmp_path / "w"))
  assert summary["flops_ratio"] > 0.99 and summary["penalty"] == "released"
  lines = [r.getMessage() for r in caplog.records if "have not moved" in r.getMessage()]
  assert len(lines) == 1 and "raise pas.cost_weight (now 5)" in lines[0]
  assert "pas.penalty=scaled" in lines[0] and "\n" not in lines[0]
