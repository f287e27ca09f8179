"""Distillation loss, "w/ Init" inheritance, baselines at a FLOP target, partial checkpoint
reads."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import run_on

from tas_jax import config as config_lib, parallel
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.methods.tas import space as space_lib
from tas_jax.models import arch, resnet, topology
from tas_jax.ops import flops
from tas_jax.stages import baselines, distill
from tas_jax.training import checkpoint


def test_kd_loss_against_hand_computed_values():
  z = jnp.array([[2.0, 0.0, -1.0]])  # student
  zt = jnp.array([[1.0, 1.0, 0.0]])  # teacher
  y = jnp.array([0])
  a, t = 0.9, 4.0
  ps = np.exp(np.array([2.0, 0.0, -1.0]) / t)
  ps /= ps.sum()
  pt = np.exp(np.array([1.0, 1.0, 0.0]) / t)
  pt /= pt.sum()
  ce = -np.log(np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum())  # = 0.16984
  kl = float(np.sum(pt * np.log(pt / ps)))  # KL(teacher ‖ student)
  want = (1 - a) * ce + a * t * t * kl
  assert float(distill.kd_loss(z, zt, y, a, t)) == pytest.approx(want, rel=1e-5)
  # by hand: p_s = (0.48103, 0.29176, 0.22722), p_t = (0.35986, 0.35986, 0.28026)
  assert ce == pytest.approx(0.16985, abs=1e-5) and kl == pytest.approx(0.029884, abs=2e-5)
  # a = 0 is cross-entropy; a student equal to its teacher pays only the CE part
  assert float(distill.kd_loss(z, zt, y, 0.0, t)) == pytest.approx(ce, rel=1e-6)
  assert float(distill.kd_loss(z, z, y, a, t)) == pytest.approx((1 - a) * ce, rel=1e-5)


def test_kd_gradient_pulls_the_student_towards_the_teacher():
  zt = jnp.array([[3.0, 0.0, 0.0]])
  g = jax.grad(lambda z: distill.kd_loss(z, zt, jnp.array([1]), 1.0, 4.0))(jnp.zeros((1, 3)))
  assert g[0, 0] < 0 < g[0, 1] and g[0, 2] > 0  # raise the teacher's class, lower the others


def _init(a):
  return parallel.jit_once(resnet.build(a).init)(jax.random.key(0), resnet.dummy_input(a))


def test_inherit_first_channels_slices_the_teacher():
  teacher = arch.cifar_resnet(14, input_size=16)
  space = space_lib.build(teacher)
  w_idx = np.array([i % s.num_valid for i, s in enumerate(space.slots)])
  student = space.architecture(w_idx, [0, 1, 0])  # stages 1 and 3 keep one block of two
  tv, sv = _init(teacher), _init(student)
  params, n = resnet.inherit_first_channels(sv["params"], tv["params"])
  kernel = params["stage2.block1"]["conv_a"]["conv"]["kernel"]
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  np.testing.assert_array_equal(
    kernel, tv["params"]["stage2.block1"]["conv_a"]["conv"]["kernel"][:, :, :c_in, :c_out]
  )
  np.testing.assert_array_equal(
    params["classifier"]["kernel"],
    tv["params"]["classifier"]["kernel"][: topology.of(student).output_width],
  )
  assert "stage1.block2" not in params  # the dropped block stays dropped
  # every student array with a counterpart in the teacher is inherited; the others (projections
  # that width mismatches introduce) keep their initial values
  teacher_paths = {p for p, _ in jax.tree_util.tree_flatten_with_path(tv["params"])[0]}
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  assert n == sum(p in teacher_paths for p, _ in flat) and n < len(flat)
  init_flat = dict(jax.tree_util.tree_flatten_with_path(sv["params"])[0])
  for p, v in flat:
    if p not in teacher_paths:
      np.testing.assert_array_equal(v, init_flat[p])
  # the teacher's own architecture inherits everything: the same function
  same, n_all = resnet.inherit_first_channels(_init(teacher)["params"] | {}, tv["params"])
  assert n_all == len(jax.tree.leaves(tv["params"]))
  x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
  forward = jax.jit(lambda v: resnet.build(teacher).apply(v, x))
  np.testing.assert_allclose(
    forward({"params": same, "batch_stats": tv["batch_stats"]}), forward(tv), atol=1e-6
  )


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet164"])
def test_uniform_and_random_baselines_hit_the_flop_target(name):
  base = arch.named(name)
  f_max = flops.count(base).flops
  for ratio in (0.5, 0.7):
    u = baselines.uniform(base, ratio * f_max)
    assert abs(flops.count(u).flops / f_max - ratio) < 0.01
    assert u.depths == base.depths
    # one multiplier for every conv: widths in the same proportion as the original's (±1 rounding)
    widest = base.stages[-1][0][-1]
    m = u.stages[-1][0][-1] / widest  # the multiplier, to within 1/widest
    assert abs(u.stem_width - m * base.stem_width) <= 0.5 + base.stem_width / widest
    for ub, bb in zip(u.stages, base.stages):
      for uw, bw in zip(ub, bb):
        assert all(abs(a - m * b) <= 0.5 + b / widest for a, b in zip(uw, bw))
  r1 = baselines.random(base, 0.5 * f_max, 0.02, seed=1)
  r2 = baselines.random(base, 0.5 * f_max, 0.02, seed=2)
  assert abs(flops.count(r1).flops / f_max - 0.5) <= 0.01 and r1 != r2
  assert baselines.random(base, 0.5 * f_max, 0.02, seed=1) == r1  # seeded


def test_random_baseline_says_what_to_do_when_the_target_is_unreachable():
  base = arch.named("resnet20")
  with pytest.raises(arch.ArchError, match="flops_tolerance"):
    baselines.random(base, 0.01 * flops.count(base).flops, 0.02, seed=0, max_draws=50)


def test_read_checkpoint_restores_only_the_requested_subtrees(tmp_path):
  state = {
    "step": jnp.int32(7),
    "params": {"w": jnp.ones((64, 64))},
    "arch": {"alpha": jnp.arange(8.0).reshape(1, 8), "beta": jnp.zeros((3, 2))},
  }
  manager = checkpoint.manager_for(str(tmp_path), keep=1)
  checkpoint.save(manager, 7, state, {"history": [{"epoch": 1}]})
  manager.wait_until_finished()
  manager.close()
  abstract = {"arch": checkpoint.abstract(state["arch"], checkpoint.host_sharding())}
  got, meta, step = checkpoint.read_checkpoint(str(tmp_path), abstract, "search")
  assert set(got) == {"arch"} and step == 7 and meta == {"history": [{"epoch": 1}]}
  np.testing.assert_array_equal(got["arch"]["alpha"], state["arch"]["alpha"])
  with pytest.raises(CheckpointNotFoundError, match="--config.stage=search"):
    checkpoint.read_checkpoint(str(tmp_path / "nothing"), abstract, "search")


@pytest.mark.devices  # replicas need several devices
def test_a_replicated_checkpoint_is_written_from_one_device(tmp_path, caplog):
  """In one process every replica is local: the save compiles nothing (Orbax's replica-parallel
  default sliced each array on every device first, a program per device and shape) and reads
  back the same values."""
  mesh = parallel.make_mesh(-1)
  state = parallel.put_replicated(
    {
      "w": np.arange(8 * 16, dtype=np.float32).reshape(8, 16),
      "b": np.linspace(0, 1, 16, dtype=np.float32),
    },
    mesh,
  )
  assert len(state["w"].sharding.device_set) == jax.device_count() > 1
  manager = checkpoint.manager_for(str(tmp_path), keep=1)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    checkpoint.save(manager, 1, state, {})
    manager.wait_until_finished()
  compiled = [
    r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()
  ]
  assert compiled == []
  manager.close()
  got, _, step = checkpoint.read_checkpoint(
    str(tmp_path),
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state),
    "teacher",
  )
  assert step == 1
  for k in state:
    np.testing.assert_array_equal(got[k], state[k])


def test_run_names_and_distill_validation():
  assert config_lib.parse_run("uniform-kd") == {"student": "uniform", "kd": True, "init": "scratch"}
  assert config_lib.parse_run("tas-ce-init") == {"student": "tas", "kd": False, "init": "teacher"}
  c = config_lib.base_config()
  assert config_lib.run_name(c.distill) == "tas-kd"
  c.distill.student, c.distill.kd, c.distill.init = "runs/x/my_arch.json", False, "teacher"
  assert config_lib.run_name(c.distill) == "my_arch-ce-init"
  for field, value, message in [
    ("pipeline.runs", "tas-kd,tas-xx", "STUDENT-kd"),
    ("distill.init", "imagenet", "scratch, teacher"),
    ("distill.student", "nonsense", "not one of tas"),
    ("distill.kd_alpha", 1.5, r"\[0, 1\]"),
  ]:
    c = config_lib.base_config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.validate(c)


@pytest.mark.devices
def test_distill_step_same_numbers_on_1_and_8_devices_with_jit_and_pmap():
  """Two KD steps; the teacher's variables are an input of the compiled step."""
  ref = run_on(1, "jit", "distill")
  for devices, mode in [(8, "jit"), (8, "pmap")]:
    got = run_on(devices, mode, "distill")
    assert got["devices"] == devices
    np.testing.assert_allclose(
      got["losses"], ref["losses"], atol=1e-5, rtol=0, err_msg=f"{devices} {mode}"
    )
    np.testing.assert_allclose(got["params_head"], ref["params_head"], atol=1e-5)
    assert abs(got["params_norm"] - ref["params_norm"]) < 1e-4 * ref["params_norm"]
  assert all(0 < l < 10 for l in ref["losses"])


def test_a_method_student_from_scratch_says_how_to_fine_tune_instead(tmp_path, caplog):
  from configs import demo

  c = demo.get_config()
  c.distill.student, c.distill.kd = "l1", False  # init stays "scratch"
  # the absl logger itself: an earlier test or command may have lowered its verbosity
  with caplog.at_level(logging.INFO, logger="absl"), pytest.raises(CheckpointNotFoundError):
    distill.distill(c, str(tmp_path))  # nothing extracted here: stops after the recipe lines
  assert "l1-ce-scratch: the distill recipe" in caplog.text
  assert "--config.distill.init=searched fine-tunes its extracted weights" in caplog.text
