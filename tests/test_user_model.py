"""A user's own Flax model as a tas_jax network (`--config.model.module`): built at pruned widths
from its description, pruned by L1/FPGM on its traced groups through the whole pipeline, and the
one-line errors of models tas_jax cannot take."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tas_jax import prune
from tas_jax.errors import ConfigError
from tas_jax.methods import extraction
from tas_jax.methods.pas import extract as pas_extract, masks
from tas_jax.models import networks, user
from tas_jax.ops import flops
from tas_jax.stages import pipeline
from tas_jax.training import checkpoint
from tests import pipelines
from tests.test_graph import randomised


@pytest.mark.parametrize("cls", ["VGG", "MobileNetV2"])
def test_user_network_runs_at_its_pruned_widths(cls):
  """The description's module, initialised at the kept widths, has the cut's shapes, and with the
  cut weights computes the unpruned model with the removed channels zeroed; the description
  survives its JSON."""
  net = user.UserNetwork(f"examples.models:{cls}", "{}", 10, 16, 1, name=cls.lower())
  module = networks.build(net)
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  variables = randomised(module.init(jax.random.key(0), x, train=False))
  g = user.traced(net)
  plan = prune.plan(g, variables, criterion="l1", flop_ratio=0.5)
  small_net = net.keep(plan.kept, f"{cls.lower()}_l1")
  fresh = networks.build(small_net).init(jax.random.key(0), x, train=False)
  cut = g.cut(variables, plan.kept)
  assert jax.tree.map(np.shape, fresh) == jax.tree.map(np.shape, cut)
  got = networks.build(small_net).apply(cut, x, train=False)
  want = module.apply(g.masked(variables, plan.kept), x, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
  assert networks.from_dict(json.loads(small_net.to_json())) == small_net
  assert flops.count(small_net).flops == g.macs(plan.kept) <= 0.5 * flops.count(net).flops
  # PaS's gates: 0/1 per traced group on the unpruned model compute the cut model
  gates = {
    grp.name: jnp.zeros(grp.size).at[jnp.asarray(plan.kept[grp.name])].set(1.0) for grp in g.groups
  }
  gated = module.apply(variables, x, train=False, gates=gates)
  np.testing.assert_allclose(gated, got, atol=1e-5 * np.abs(want).max())
  # the MACs as a function of kept counts (what PaS differentiates) are the cut's MACs
  counts = {k: len(v) for k, v in plan.kept.items()}
  assert g.macs_at_counts(counts) == pytest.approx(g.macs(plan.kept), rel=1e-9)


def _module_file(tmp_path, monkeypatch, source: str) -> None:
  (tmp_path / "bad_models.py").write_text(textwrap.dedent(source))
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  sys.modules.pop("bad_models", None)


def test_models_tas_jax_cannot_take_fail_in_one_line(tmp_path, monkeypatch):
  _module_file(
    tmp_path,
    monkeypatch,
    """
    import flax.linen as nn
    import jax.numpy as jnp

    class NoTrain(nn.Module):
      @nn.compact
      def __call__(self, x, deterministic: bool):
        return nn.Dense(10)(x.mean((1, 2)))

    class Sorted(nn.Module):  # every channel reaches a sort
      @nn.compact
      def __call__(self, x, train: bool = False):
        return nn.Dense(10)(jnp.sort(nn.Conv(8, (3, 3))(x), axis=-1).mean((1, 2)))

    class Pixels(nn.Module):  # per-pixel outputs, not (batch, classes)
      @nn.compact
      def __call__(self, x, train: bool = False):
        return nn.Conv(10, (1, 1))(nn.Conv(8, (3, 3))(x))

    NotAModule = 3
    """,
  )
  net = lambda cls: user.UserNetwork(f"bad_models:{cls}", "{}", 10, 8, 1)
  cases = {
    "nowhere.models:Net": r"cannot import 'nowhere.models'",
    "bad_models:Missing": r"bad_models has no 'Missing'",
    "bad_models:NotAModule": r"NotAModule is not a flax.linen Module",
    "bad_models": r"expected 'package.module:Class'",
  }
  for path, message in cases.items():
    with pytest.raises(ConfigError, match=message):
      user.load_class(path)
  with pytest.raises(ConfigError, match=r"calls a model as model\(x, train=\.\.\.\)"):
    user.traced(net("NoTrain"))
  with pytest.raises(ConfigError, match=r"no channel of the model can be cut.*no rule for `sort`"):
    user.traced(net("Sorted"))
  with pytest.raises(ConfigError, match=r"expected \(batch, 10\) logits .* got \(1, 8, 8, 10\)"):
    user.traced(net("Pixels"))
  with pytest.raises(ConfigError, match="does not take them"):
    user.instantiate(user.UserNetwork("bad_models:Sorted", '{"width": 3}', 10, 8, 1))


@pytest.mark.stage
def test_user_model_through_the_pipeline(tmp_path):
  """`--config.model.module=examples.models:VGG` with `stage=all` and the runs pas-ce, l1-ce,
  fpgm-ce: the results table has their rows, each extraction is within the target's band, and the
  extracted network computes its search form: L1/FPGM's teacher with the removed channels
  zeroed, PaS's masked network at the search's last masks."""
  workdir = str(tmp_path / "vgg")
  c = pipelines.config(
    model__module="examples.models:VGG",
    model__kwargs='{"widths": [8, 16, 16], "pools": [0, 1, 2]}',
    pipeline__runs="pas-ce,l1-ce,fpgm-ce",
    l1__finetune_epochs=1,
    fpgm__finetune_epochs=1,
    pas__penalty="scaled",  # the default (the shared pipeline uses the released form)
    pas__macs_unit=None,
    pas__cost_weight=None,
  )
  pipeline.run_all(c, workdir)
  rows = {r["run"]: r for r in json.load(open(os.path.join(workdir, "results.json")))["rows"]}
  assert set(rows) == {"teacher", "pas-ce", "l1-ce", "fpgm-ce"}
  base = networks.load(os.path.join(workdir, "teacher", "arch.json"))
  assert isinstance(base, user.UserNetwork) and base.module == "examples.models:VGG"
  _, teacher, _ = checkpoint.read_teacher(workdir, checkpoint.host_sharding(), "test")
  teacher = jax.device_get(teacher)
  x = jax.random.normal(jax.random.key(0), (4, base.input_size, base.input_size, 1))
  _, searched, _, _ = pas_extract.read_search(workdir)
  for method in ("pas", "l1", "fpgm"):
    summary = json.load(open(os.path.join(workdir, f"extract-{method}", "summary.json")))
    if method != "pas":  # two PaS epochs on this tiny model flip whole groups (issue 41 notes)
      assert summary["in_band"] and abs(summary["flops_ratio"] - 0.5) <= c.target.tolerance
    pruned = networks.load(os.path.join(workdir, f"extract-{method}", "arch.json"))
    abstract = jax.eval_shape(
      lambda p=pruned: networks.build(p).init(jax.random.key(0), x, train=False)
    )
    weights = extraction.read_weights(workdir, method, abstract)
    got = networks.build(pruned).apply(weights, x, train=False)
    if method == "pas":
      want = masks.MaskedNetwork(base).apply(searched, x, train=False)
    else:
      masked = user.traced(base).masked(teacher, dict(pruned.kept))
      want = networks.build(base).apply(masked, x, train=False)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    assert rows[f"{method}-ce"]["flops_m"] < rows["teacher"]["flops_m"]


def test_a_users_variables_become_the_teacher(tmp_path):
  """`python -m tas_jax.convert flax --arch=examples.models:VGG --weights=F.msgpack|F.npz`: the
  user's own variables as WORKDIR/teacher, described as the config would describe the model;
  variables that do not fit the class are one line."""
  from flax import serialization

  from tas_jax import convert

  kwargs = '{"pools": [0, 1, 2], "widths": [8, 16, 16]}'
  net = user.UserNetwork(
    "examples.models:VGG", json.dumps(json.loads(kwargs), sort_keys=True), 10, 16, 1, name="vgg"
  )
  x = jnp.zeros((1, 16, 16, 1))
  variables = jax.device_get(randomised(networks.build(net).init(jax.random.key(0), x)))
  (tmp_path / "vgg.msgpack").write_bytes(serialization.msgpack_serialize(variables))
  flat = {
    jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(v)
    for p, v in jax.tree_util.tree_flatten_with_path(variables)[0]
  }
  np.savez(tmp_path / "vgg.npz", **flat)
  for i, name in enumerate(("vgg.msgpack", "vgg.npz")):
    workdir = str(tmp_path / f"w{i}")
    record = convert.convert(
      "flax", net.module, str(tmp_path / name), workdir, 16, kwargs, input_channels=1
    )
    assert record["num_classes"] == 10 and record["max_abs_logit_difference"] is None
    teacher, restored, _ = checkpoint.read_teacher(workdir, checkpoint.host_sharding(), "test")
    assert teacher == net
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match=r"--weights do not fit examples.models:VGG at 32x32x1"):
    convert.convert(
      "flax", net.module, str(tmp_path / "vgg.npz"), str(tmp_path / "w9"), 32, kwargs, 1
    )
