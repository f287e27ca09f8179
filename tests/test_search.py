"""The supernet and the search stage (the shared pipeline's search; resuming after a kill is
tests/test_kill.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_arch import one_block_per_stage
from test_train import run_on

from tas_jax import config as config_lib, parallel
from tas_jax.methods.tas import extract, search, space as space_lib, supernet
from tas_jax.models import arch, resnet


@pytest.mark.parametrize(
  "a",
  [
    arch.cifar_resnet(14, input_size=16),
    arch.cifar_resnet(11, "bottleneck", input_size=16),
    one_block_per_stage(
      arch.imagenet_resnet(18, num_classes=5, input_size=32, downsample="strided_conv")
    ),  # torchvision's form
    one_block_per_stage(arch.imagenet_resnet(50, num_classes=5, input_size=32)),
  ],
  ids=lambda a: a.name,
)
def test_peaked_supernet_is_the_plain_network(a):
  """Every distribution peaked on the full width and depth: in evaluation mode (running
  statistics) the supernet computes the plain network's function with the same weights; the
  search-only BN of a CIFAR stride-2 projection starts as the identity."""
  space = space_lib.build(a)
  plain = resnet.build(a)
  x = jax.random.normal(jax.random.key(1), (4, a.input_size, a.input_size, a.input_channels))
  v = parallel.jit_once(plain.init)(jax.random.key(0), x)
  # perturb BN parameters and statistics so that a wrong candidate or a missed affine would show
  # (numpy noise: jax.random per leaf shape would compile a program per shape)
  rng = np.random.default_rng(2)
  perturb = lambda tree, f: jax.tree.map(
    lambda t: jnp.asarray(f(np.asarray(t) + 0.1 * rng.standard_normal(t.shape, np.float32))), tree
  )
  v = {
    "params": perturb(v["params"], lambda t: t),
    "batch_stats": perturb(v["batch_stats"], np.abs),
  }
  want = parallel.jit_once(lambda v: plain.apply(v, x, train=False))(v)
  params, stats = supernet.supernet_params_from_plain(v["params"], v["batch_stats"])
  full_w = np.array([s.num_valid - 1 for s in space.slots])
  full_d = np.array([len(c) - 1 for c in space.depths])
  logits = {
    "alpha": jnp.asarray(np.eye(8)[full_w] * 1e3, jnp.float32),
    "beta": jnp.asarray(np.eye(space.max_depth_candidates)[full_d] * 1e3, jnp.float32),
  }
  net = supernet.SuperNet(space)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), x, logits, jax.random.key(0), 1.0))
  assert jax.tree.structure(shapes["params"]) == jax.tree.structure(params)
  assert jax.tree.structure(shapes["batch_stats"]) == jax.tree.structure(stats)
  got = parallel.jit_once(
    lambda p, s, k: net.apply({"params": p, "batch_stats": s}, x, logits, k, 1.0, train=False)
  )(params, stats, jax.random.key(5))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
  # the depth search's supernet: BN on a projection only where the plain network has one
  params_d, stats_d = supernet.supernet_params_from_plain(v["params"], v["batch_stats"], "depth")
  shapes_d = jax.eval_shape(
    lambda: supernet.SuperNet(space, "depth").init(
      jax.random.key(0), x, logits, jax.random.key(0), 1.0
    )
  )
  assert jax.tree.structure(shapes_d["params"]) == jax.tree.structure(params_d)
  assert jax.tree.structure(shapes_d["batch_stats"]) == jax.tree.structure(stats_d)


def test_imagenet_supernet_has_no_zero_initialised_bn():
  """The official search network ignores zero_init_residual; the plain ImageNet ResNet keeps it."""
  a = one_block_per_stage(arch.imagenet_resnet(18, num_classes=5, input_size=32))
  space = space_lib.build(a)
  x = jnp.ones((2, 32, 32, 3))
  logits = space.init_logits(jax.random.key(0))
  params = parallel.jit_once(
    lambda: supernet.SuperNet(space).init(jax.random.key(0), x, logits, jax.random.key(0), 1.0)
  )()["params"]
  scales = {
    jax.tree_util.keystr(p): v
    for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
    if jax.tree_util.keystr(p).endswith("['scale']")
  }
  assert any("conv_b" in k for k in scales) and all(
    np.all(np.asarray(v) == 1) for v in scales.values()
  )
  plain = parallel.jit_once(lambda: resnet.build(a).init(jax.random.key(0), x))()["params"]
  assert np.all(np.asarray(plain["stage1.block1"]["conv_b"]["bn"]["scale"]) == 0)


def test_supernet_static_shapes_and_one_compilation_for_any_tau_and_sample():
  space = space_lib.build(arch.cifar_resnet(14, input_size=16))
  net = supernet.SuperNet(space)
  x = jnp.ones((2, 16, 16, 3))
  logits = space.init_logits(jax.random.key(0))
  v = parallel.jit_once(lambda: net.init(jax.random.key(0), x, logits, jax.random.key(0), 1.0))()
  fwd = parallel.jit_once(
    lambda v, lg, k, t: net.apply(v, x, lg, k, t, train=True, mutable=["batch_stats"])[0]
  )
  outs = [fwd(v, logits, jax.random.key(i), jnp.float32(t)) for i, t in enumerate([5.0, 2.0, 0.1])]
  assert all(o.shape == (2, 10) for o in outs) and fwd._cache_size() == 1
  assert not np.allclose(outs[0], outs[1])  # different samples, different functions


def test_only_the_sampled_candidates_running_statistics_move():
  bn = supernet.CandidateBatchNorm(6)
  z = jax.random.normal(jax.random.key(0), (4, 3, 3, 6)) * 3 + 1
  v = bn.init(jax.random.key(0), z, jnp.array([1, 4]), True)
  _, upd = bn.apply(v, z, jnp.array([1, 4]), True, mutable=["batch_stats"])
  moved = np.any(np.asarray(upd["batch_stats"]["mean"]) != 0, axis=1)
  np.testing.assert_array_equal(moved, [False, True, False, False, True, False, False, False])
  np.testing.assert_allclose(upd["batch_stats"]["mean"][1], 0.1 * z.mean((0, 1, 2)), rtol=1e-5)


@pytest.mark.devices
def test_search_iteration_same_numbers_on_1_and_8_devices_with_jit_and_pmap():
  ref = run_on(1, "jit", "search")
  assert ref["compilations"] == 1
  # (1, pmap) is left to the teacher step's check: a search iteration compiles slowly, and (8, pmap)
  # covers the per-device path
  for devices, mode in [(8, "jit"), (8, "pmap")]:
    got = run_on(devices, mode, "search")
    assert got["devices"] == devices
    for m_ref, m_got in zip(ref["metrics"], got["metrics"]):
      for k in m_ref:
        assert m_got[k] == pytest.approx(m_ref[k], abs=1e-5), (devices, mode, k)
    # after one iteration: weights, BN statistics and architecture logits
    np.testing.assert_allclose(got["alpha"], ref["alpha"], atol=1e-5)  # Adam: 1% of a step
    np.testing.assert_allclose(got["beta"], ref["beta"], atol=1e-5)
    np.testing.assert_allclose(got["params_head"], ref["params_head"], atol=1e-5)
  # the architecture moved: Adam's first step changes every logit the pair touched
  assert np.any(np.abs(np.asarray(ref["alpha"])) > 1e-4)


def test_tau_schedules():
  s = config_lib.base_config().search
  s.epochs = 11
  taus = [search.tau_at(s, e) for e in range(11)]
  assert taus[0] == pytest.approx(5.0) and taus[-1] == pytest.approx(0.1)
  assert taus[5] == pytest.approx(2.55)  # cosine midpoint
  assert all(a > b for a, b in zip(taus, taus[1:]))
  s.tau_schedule, s.tau_max = "linear", 10.0
  assert [search.tau_at(s, e) for e in (0, 5, 10)] == pytest.approx([10.0, 5.05, 0.1])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "cooldown"])
def test_architecture_learning_rate_schedules(schedule):
  """Adam's step on a steady gradient is the learning rate: constant (released), cosine to 0, or
  constant then cosine to 0 over the last epochs (arch_cooldown_epochs)."""
  s = config_lib.base_config().search
  s.epochs, s.arch_lr, s.arch_weight_decay = 4, 0.5, 0.0
  s.arch_lr_schedule = "cosine" if schedule == "cosine" else "constant"
  s.arch_cooldown_epochs = 2 if schedule == "cooldown" else 0
  _, _, arch_tx = search.optimizers(s, steps_per_epoch=5)
  params = {"alpha": jnp.zeros(3)}
  state = arch_tx.init(params)
  steps = []
  for _ in range(20):
    updates, state = arch_tx.update({"alpha": jnp.ones(3)}, state, params)
    steps.append(float(-updates["alpha"][0]))
  want = {
    "constant": [0.5] * 20,
    "cosine": [0.25 * (1 + np.cos(np.pi * t / 20)) for t in range(20)],
    # 2 epochs x 5 steps held, then the last 2 epochs (10 steps) from 0.5 towards 0
    "cooldown": [0.5] * 10 + [0.25 * (1 + np.cos(np.pi * t / 10)) for t in range(10)],
  }[schedule]
  np.testing.assert_allclose(steps, want, rtol=1e-4, atol=1e-6)


def short_search_config():
  """ResNet-14 (two depth choices per stage) on 1,000 embedded images: epochs of 5 iterations."""
  c = config_lib.base_config()
  c.stage = "search"
  c.data.name = "embedded"
  c.data.train_examples = 1000
  c.model.depth = 14
  c.search.epochs = 2
  c.search.batch_size = 96
  c.target.flop_ratio = 0.5
  c.log_every_steps = 100
  return c


@pytest.mark.stage
def test_short_search_records_every_epoch_and_compiles_once(cifar_pipeline):
  """The shared pipeline's search: ResNet-8, 2 epochs, τ from 5 to 0.1."""
  workdir, _ = cifar_pipeline
  with open(os.path.join(workdir, "search", "summary.json")) as f:
    summary = json.load(f)
  assert summary["finished"]
  assert summary["compilations"] == {
    "iteration": 1,
    "eval_step": 1,
    "gather_a": 1,
    "gather_b": 1,
    "shuffle_a": 1,
    "shuffle_b": 1,
  }  # τ and permutations changed
  hist = summary["history"]
  assert [h["epoch"] for h in hist] == [1, 2] and hist[0]["tau"] == 5.0 and hist[1]["tau"] == 0.1
  space = space_lib.build(arch.cifar_resnet(8, input_size=28, input_channels=1))
  for h in hist:
    assert len(h["widths"]) == space.num_slots and len(h["depths"]) == 3
    for w, slot in zip(h["widths"], space.slots):
      assert w in slot.candidates
    assert 0 < h["flops_ratio"] <= 1 and 0 < h["expected_flops_ratio"] <= 1
    assert np.isfinite(h["train_loss"]) and np.isfinite(h["train_arch_loss"])
  final = arch.Architecture.from_dict(summary["architecture"])
  assert list(final.depths) == hist[-1]["depths"]
  assert summary["flops_ratio"] == pytest.approx(hist[-1]["flops_ratio"])


@pytest.mark.stage
@pytest.mark.parametrize("variant", ["width", "depth"])
def test_width_and_depth_searches_extract_what_their_variant_allows(variant, tmp_path, caplog):
  """TAS(W) keeps every stage at full depth, TAS(D) every conv at full width: in the records, the
  summary and the extracted arch.json. A target one epoch cannot reach (99%, band 98.5–99%) ends
  the search with one warning naming the settings that move it."""
  c = short_search_config()
  c.search.variant = variant
  c.search.epochs = 1
  c.search.evaluate_every_epoch = False  # the argmax network's test accuracy: the pipeline's search
  c.target.flop_ratio, c.target.tolerance = 0.99, 0.005
  with caplog.at_level("WARNING"):
    summary = search.search(c, str(tmp_path))
  assert not summary["in_band"] and not 0.985 <= summary["flops_ratio"] <= 0.99
  warnings = [r.getMessage() for r in caplog.records if "outside the band" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert "outside the band 98%–99%" in warnings[0] and "search.cost_weight (now 2)" in warnings[0]
  assert "search.epochs (now 1)" in warnings[0]
  base = space_lib.build(arch.cifar_resnet(14, input_size=28, input_channels=1)).base
  c.stage = "extract"
  extract.extract(c, str(tmp_path))
  extracted = arch.load(str(tmp_path / "extract" / "arch.json"))
  for a in (arch.Architecture.from_dict(summary["architecture"]), extracted):
    if variant == "width":
      assert a.depths == base.depths
    else:
      assert a.stem_width == base.stem_width
      assert all(
        list(stage) == list(full[: len(stage)]) for stage, full in zip(a.stages, base.stages)
      )
  record = summary["history"][-1]
  assert record["depth_max_prob" if variant == "width" else "width_max_prob"] == 1.0
  assert 0 < record["width_max_prob" if variant == "width" else "depth_max_prob"] < 1
  assert summary["architecture"] == extracted.to_dict()
