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

from tas_jax import config as config_lib, prune
from tas_jax.errors import ConfigError
from tas_jax.methods import extraction
from tas_jax.methods.pas import extract as pas_extract, masks
from tas_jax.methods.tas import cwi, extract as tas_extract, spaces, traced
from tas_jax.models import arch as arch_lib, channels, networks, user
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


def test_traced_supernet_is_cwi_of_two_candidates_on_one_conv(tmp_path, monkeypatch):
  """The supernet on traced groups against a hand-written reference: one conv of 10 channels
  read by the classifier, two sampled candidates C_a, C_b, each conv output cut to its first C_i
  channels, resized by CWI to C* = max(C_a, C_b) (`cwi.cwi`, static sizes), weighted, zero-padded
  to 10 and classified."""
  _module_file(
    tmp_path,
    monkeypatch,
    """
    import flax.linen as nn

    class OneConv(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Conv(10, (3, 3), padding=1)(x))
        return nn.Dense(3)(h.mean((1, 2)))
    """,
  )
  net = user.UserNetwork("bad_models:OneConv", "{}", 3, 6, 2)
  space = spaces.of(net)
  assert [(s.name, s.full, s.candidates) for s in space.slots] == [
    ("Conv_0", 10, (3, 4, 5, 6, 7, 8, 9, 10))
  ]
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 2))
  logits = {"alpha": jax.random.normal(jax.random.key(1), (1, 8))}
  sup = space.supernet("width")
  variables = sup.init(jax.random.key(2), x, logits, jax.random.key(3), 1.0)
  p = variables["params"]
  key, tau = jax.random.key(4), 0.7
  got = sup.apply(variables, x, logits, key, tau)
  idx, widths, weights = traced.sample_widths(space, logits, key, tau, True, "width")
  a, b = (int(w) for w in widths[0])
  assert idx[0, 0] != idx[0, 1] and a != b
  h = jax.nn.relu(
    jax.lax.conv_general_dilated(
      x, p["Conv_0"]["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    + p["Conv_0"]["bias"]
  )
  c_star = max(a, b)
  mixed = sum(w * cwi.cwi(h[..., :c], c_star) for w, c in zip(weights[0], (a, b)))
  mixed = jnp.pad(mixed, ((0, 0),) * 3 + ((0, 10 - c_star),))
  want = mixed.mean((1, 2)) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # α's gradient flows through the pair's weights only: the two drawn candidates
  grad = jax.grad(lambda lg: sup.apply(variables, x, lg, key, tau).sum())(logits)["alpha"]
  assert set(np.nonzero(np.asarray(grad[0]))[0]) == {int(i) for i in idx[0]}


@pytest.mark.parametrize("cls", ["VGG", "MobileNetV2"])
def test_argmax_supernet_on_traced_groups_is_the_extracted_model(cls):
  """At the argmax the supernet computes the extracted model (first C_i channels of every group)
  with the cut weights; F(A) is the extracted model's MAC count and E[F] equals it at one-hot
  logits."""
  net = user.UserNetwork(f"examples.models:{cls}", "{}", 10, 16, 1)
  space = spaces.of(net)
  assert {s.name for s in space.slots} == {g.name for g in user.traced(net).groups}
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  logits = {"alpha": jax.random.normal(jax.random.key(2), (space.num_slots, 8))}
  sup = space.supernet("tas")
  variables = randomised(sup.init(jax.random.key(0), x, logits, jax.random.key(0), 1.0))
  got = sup.apply(variables, x, logits, jax.random.key(3), 1.0, train=False)
  w_idx, d_idx = space.argmax(logits)
  pruned = space.named_architecture(w_idx, d_idx)
  small, cut = channels.cut(net, variables, dict(pruned.kept))
  want = networks.build(small).apply(cut, x, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
  assert float(space.exact_flops(w_idx)) == flops.count(pruned).flops < flops.count(net).flops
  one_hot = {"alpha": 100.0 * jax.nn.one_hot(w_idx, 8)}
  assert float(space.expected_flops(one_hot)) == pytest.approx(flops.count(pruned).flops, 1e-5)


def test_project_resnet_as_a_module_has_the_builtin_channel_groups():
  """tas_jax's ResNet-14 handed over as a user's module (`examples.models:ProjectResNet`): its
  traced space has a slot per channel group of the built-in network (the stage chains each one
  group, every inner conv one), of the same sizes, and the same MAC count."""
  a = arch_lib.cifar_resnet(14, input_size=16, input_channels=1)
  net = user.UserNetwork("examples.models:ProjectResNet", "{}", 10, 16, 1)
  space = spaces.of(net)
  builtin = channels.of(a).groups
  assert sorted(s.full for s in space.slots) == sorted(g.size for g in builtin)
  assert len(space.slots) == len(builtin) == 9
  convs = [layer for layer in flops.layers(a) if layer.name != "classifier"]
  conv_flops = sum(layer.flops for layer in convs)
  assert flops.count(net).flops == conv_flops + 64 * 10  # MACs: the classifier without its bias


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("search.variant", "depth", "config.search.variant='depth': a model given by model.module has"),
    ("target.cost", "latency", "config.target.cost='latency': the latency table covers ResNets"),
  ],
)
def test_what_tas_cannot_search_on_a_module_is_refused(field, value, message):
  c = config_lib.base_config()
  c.model.module, c.method, c.stage = "examples.models:VGG", "tas", "search"
  section, _, name = field.rpartition(".")
  c[section][name] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value).startswith(message)
  c[section][name] = config_lib.base_config()[section][name]
  config_lib.validate(c)  # the defaults search a module's widths


@pytest.mark.stage
def test_user_model_through_the_pipeline(tmp_path):
  """`--config.model.module=examples.models:VGG` with `stage=all` and the runs pas-ce, l1-ce,
  fpgm-ce, tas-kd: the results table has their rows, each extraction is within the target's band,
  and the extracted network computes its search form: L1/FPGM's teacher with the removed channels
  zeroed, PaS's masked network at the search's last masks, TAS's argmax of its last logits."""
  workdir = str(tmp_path / "vgg")
  c = pipelines.config(
    model__module="examples.models:VGG",
    model__kwargs='{"widths": [8, 16, 16], "pools": [0, 1, 2]}',
    pipeline__runs="pas-ce,l1-ce,fpgm-ce,tas-kd",
    l1__finetune_epochs=1,
    fpgm__finetune_epochs=1,
    pas__penalty="scaled",  # the default (the shared pipeline uses the released form)
    pas__macs_unit=None,
    pas__cost_weight=None,
  )
  pipeline.run_all(c, workdir)
  rows = {r["run"]: r for r in json.load(open(os.path.join(workdir, "results.json")))["rows"]}
  assert set(rows) == {"teacher", "pas-ce", "l1-ce", "fpgm-ce", "tas-kd"}
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
  # TAS: the argmax of the search's last logits, as a model keeping each group's first channels
  space, logits, history, _ = tas_extract.read_search(workdir)
  pruned = networks.load(os.path.join(workdir, "extract", "arch.json"))
  assert pruned == space.named_architecture(*space.argmax(logits, c.search.variant))
  assert all(idx == tuple(range(len(idx))) for _, idx in pruned.kept)
  assert len(history) == c.search.epochs and history[-1]["widths"] == [
    len(idx) for _, idx in pruned.kept
  ]
  assert rows["tas-kd"]["flops_m"] == pytest.approx(flops.count(pruned).flops_m, abs=1e-4)


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
