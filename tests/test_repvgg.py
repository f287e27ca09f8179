"""RepVGG for PaS: the published sizes, reparameterisation (training form = deploy form), masks per
block, and the cut network = the masked one; a PaS step on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tas_jax import parallel
from tas_jax.config import base_config
from tas_jax.methods.pas import masks, search
from tas_jax.models import channels, repvgg
from tas_jax.ops import flops
from tas_jax.target import Target
from tas_jax.training import steps

TINY = repvgg.RepVGGArch(
  num_classes=7,
  input_size=32,
  input_channels=3,
  stages=((8,), (8, 8), (16, 16, 16), (24,)),
  name="tiny",
)


@pytest.mark.parametrize("variant, gflops, mparams", [("a0", 1.36, 8.31), ("b1", 11.82, 51.83)])
def test_named_networks_have_the_published_size(variant, gflops, mparams):
  """RepVGG paper, Table 2 (deploy form): A0 1.4 G FLOPs, 8.30 M params; B1 11.8 G, 51.82 M."""
  counts = flops.count(repvgg.named_repvgg(variant))
  assert counts.flops / 1e9 == pytest.approx(gflops, abs=0.005)
  assert counts.params / 1e6 == pytest.approx(mparams, abs=0.005)


def _random_training_variables(arch, seed):
  x = jax.random.normal(jax.random.key(seed), (4, arch.input_size, arch.input_size, 3))
  variables = parallel.jit_once(repvgg.RepVGG(arch).init)(jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  noisy = lambda t, lo, hi: jnp.asarray(rng.uniform(lo, hi, size=t.shape), jnp.float32)
  params = jax.tree.map(
    lambda t: jnp.asarray(np.asarray(t) + 0.2 * noisy(t, -1, 1)), variables["params"]
  )
  stats = jax.tree.map(lambda t: noisy(t, 0.5, 1.5), variables["batch_stats"])
  return x, {"params": params, "batch_stats": stats}


def test_identity_branch_only_where_width_and_resolution_agree():
  x, v = _random_training_variables(TINY, 0)
  with_identity = [name for name, p in v["params"].items() if "identity" in p]
  assert with_identity == ["stage2.block2", "stage3.block2", "stage3.block3"]


def test_reparameterised_network_computes_the_training_form_function():
  x, v = _random_training_variables(TINY, 1)
  want = repvgg.RepVGG(TINY).apply(v, x, train=False)
  deploy = repvgg.reparameterize(TINY, jax.device_get(v))
  got = repvgg.RepVGG(TINY, deploy=True).apply(deploy, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert np.max(np.abs(np.asarray(want))) > 0.1  # not a trivially small output
  # one 3x3 conv with bias per block, nothing else
  assert set(deploy["params"]["stage3.block2"]) == {"kernel", "bias"}
  assert deploy["params"]["stage3.block2"]["kernel"].shape == (3, 3, 16, 16)


def test_squeezed_network_computes_the_masked_function_and_its_flops_are_the_masked_macs():
  x, v = _random_training_variables(TINY, 2)
  lay = channels.of(TINY)
  assert [g.name for g in lay.groups] == [c.name for c in repvgg.blocks(TINY)]
  rng = np.random.default_rng(4)
  scores = {g.name: jnp.asarray(rng.uniform(0, 1, g.size), jnp.float32) for g in lay.groups}
  masked = masks.MaskedNetwork(TINY)
  want = masked.apply(
    {
      "params": {"masks": scores, "network": v["params"]},
      "batch_stats": {"network": v["batch_stats"]},
    },
    x,
    train=False,
  )
  kept = search.kept_channels(scores)
  pruned, weights = channels.cut(TINY, jax.device_get(v), kept, name="tiny_pas")
  got = repvgg.RepVGG(pruned, deploy=True).apply(weights, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  # the last block's mask trims the classifier's inputs
  assert weights["params"]["classifier"]["kernel"].shape == (len(kept["stage4.block1"]), 7)
  assert flops.count(pruned).flops == flops.with_kept(lay, {k: len(i) for k, i in kept.items()})
  assert flops.count(pruned).flops < flops.count(TINY).flops


def test_pas_steps_on_repvgg_switch_channels_off():
  mesh = parallel.make_mesh(1)
  model = masks.MaskedNetwork(TINY)
  p = base_config().pas
  p.lr, p.penalty, p.macs_unit, p.cost_weight = 0.02, "released", 0.0, 50.0
  tx = search.optimizer(p)
  state = steps.create_state(model, tx, jnp.zeros((1, 32, 32, 3)), jax.random.key(0), mesh)
  step = search.make_search_step(model, p, Target.flops(model.arch, 0.4), mesh, "jit")
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 7, 16), jnp.int32),
  }
  ratios = []
  for _ in range(12):
    state, m = step(state, batch)
    ratios.append(float(m.compute()["flops_ratio"]))
  # from the full network, the penalty switches channels off (on random data whole blocks' scalars
  # move together: the cost's gradient is the same for every channel of a block)
  assert ratios[0] == pytest.approx(1.0) and min(ratios) < 0.8, ratios
  assert step._cache_size() == 1


@pytest.mark.stage  # its own tiny pipeline: RepVGG
def test_repvgg_pipeline_teacher_pas_search_extract_fine_tune_results(tmp_path):
  """A RepVGG written as JSON (`model.arch`), through `all` with a pas-ce run: the teacher in
  training form, the search on it, the extracted network in deploy form, the fine-tuning in
  training form with the masks frozen and cut at the end (as released), and the results table."""
  from tas_jax import config as config_lib
  from tas_jax.stages import pipeline

  tiny = repvgg.RepVGGArch(
    num_classes=10,
    input_size=32,
    input_channels=1,
    stages=((8,), (8, 8), (16, 16), (16,)),
    name="tiny",
  )
  tiny.save(str(tmp_path / "tiny.json"))
  c = config_lib.base_config()
  c.stage, c.method, c.data.name = "all", "pas", "embedded"
  c.data.train_examples, c.data.image_size, c.model.arch = 128, 32, str(tmp_path / "tiny.json")
  c.teacher.warmup_epochs, c.teacher.cosine_epochs, c.teacher.batch_size = 1, 1, 64
  c.pas.epochs, c.pas.batch_size, c.pas.cost_weight = 1, 32, 50.0
  c.pas.penalty, c.pas.macs_unit = "released", 0.0
  c.pas.lr = 0.05
  c.distill.warmup_epochs, c.distill.cosine_epochs, c.distill.batch_size = 0, 1, 64
  c.pas.finetune_epochs, c.pas.finetune_lr = 2, 0.05  # in training form, then cut
  c.pipeline.runs, c.pipeline.throughput_batch, c.pipeline.throughput_repeats = "pas-ce", 16, 2
  c.log_every_steps = 100
  with pytest.raises(config_lib.ConfigError, match="needs a ResNet"):
    bad = config_lib.base_config()
    bad.model.arch, bad.stage = str(tmp_path / "tiny.json"), "all"
    config_lib.validate(bad)
  out = pipeline.run_all(c, str(tmp_path / "w"))
  import json

  assert out["finished"] and [r["run"] for r in out["rows"]] == ["teacher", "pas-ce"]
  # fine-tuned in training form (BN, three branches, masks frozen), then cut: the deploy form's
  # accuracy is the training form's, both measured on the test set
  run = json.load(open(tmp_path / "w" / "distill" / "pas-ce" / "summary.json"))
  assert run["epochs"] == 2 and run["deployed_from"] == "training form, masks frozen"
  assert run["test_accuracy"] == pytest.approx(run["training_form_test_accuracy"], abs=1e-9)
  assert run["test_loss"] == pytest.approx(run["training_form_test_loss"], rel=1e-4)
  assert out["rows"][1]["test_accuracy"] == run["test_accuracy"]
  from tas_jax.models import networks

  pruned = networks.load(str(tmp_path / "w" / "extract-pas" / "arch.json"))
  assert isinstance(pruned, repvgg.RepVGGArch) and pruned.deploy
  # the table's FLOPs are the counter's on the deploy network: the search's figure
  s = json.load(open(tmp_path / "w" / "search-pas" / "summary.json"))
  assert out["rows"][1]["flops_m"] == pytest.approx(s["flops_m"], abs=1e-4)
  assert s["flops_ratio"] < 1.0  # the masks moved
  # the teacher is timed in deploy form like the pruned network: the speed-up is the pruning's
  from tas_jax.stages import results

  teacher = networks.load(str(tmp_path / "w" / "teacher" / "arch.json"))
  timed, variables = results.teacher_to_measure(str(tmp_path / "w" / "teacher"), teacher)
  assert timed.deploy and set(variables) == {"params"}
  assert "timed in deploy form" in (tmp_path / "w" / "results.md").read_text()
