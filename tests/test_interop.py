"""PyTorch in and out: torchvision's ResNet topology (FLOPs and parameters against torchvision's own
figures), pretrained weights imported (torchvision ResNet-18/50, a released-layout RepVGG-A0) with
equal logits, the torch form of a network loading into torchvision, one-line errors."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="launch/setup.sh installs torch for these tests")

from tas_jax import convert, errors, interop, parallel, workdir as layout  # noqa: E402
from tas_jax.interop import torch_layout, torch_net  # noqa: E402
from tas_jax.interop.torchvision import models as torchvision_models  # noqa: E402
from tas_jax.models import arch, networks, repvgg, topology  # noqa: E402
from tas_jax.ops import flops  # noqa: E402
from tas_jax.training import checkpoint  # noqa: E402

TOLERANCE = 1e-4  # of the issue: logits equal to 1e-4 (relative to max(1, |logit|))


def randomise_batch_norm(module: "torch.nn.Module", seed: int = 0) -> "torch.nn.Module":
  """Every BN's affine and running statistics away from their initial 1/0 values (a freshly built
  network's BN is the identity in eval mode, which would hide a transposed or swapped vector)."""
  g = torch.Generator().manual_seed(seed)
  u = lambda t, lo, hi: t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        u(m.weight, 0.5, 1.5), u(m.bias, -0.2, 0.2)
        u(m.running_mean, -0.3, 0.3), u(m.running_var, 0.5, 2.0)
  return module.eval()


def relative_difference(ours, theirs) -> float:
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  return float(np.max(np.abs(ours - theirs)) / max(1.0, np.max(np.abs(theirs))))


def jax_logits(a, variables, x_nhwc):
  return parallel.jit_once(lambda v, x: networks.build(a).apply(v, x, train=False))(
    variables, x_nhwc
  )


def torch_logits(module, x_nhwc):
  with torch.no_grad():
    return module(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize(
  "name, weights", [("resnet18_tv", "ResNet18_Weights"), ("resnet50_tv", "ResNet50_Weights")]
)
def test_torchvision_topology_counts_torchvisions_flops_and_parameters(name, weights):
  """torchvision's own figures (its weights' meta: GFLOPS of multiply-adds, parameter count) and
  its model's parameter tensors against the counter; every stride-2 shortcut is a strided 1x1
  conv with BN, so the FLOPs equal those of TAS's pooled form."""
  tv = torchvision_models()
  meta = getattr(tv, weights).IMAGENET1K_V1.meta
  counts = flops.count(arch.named(name))
  assert round(counts.flops / 1e9, 3) == meta["_ops"]  # 1.814 / 4.089
  assert counts.params == meta["num_params"]  # 11689512 / 25557032
  model = getattr(tv, name.removesuffix("_tv"))()
  assert counts.params == sum(p.numel() for p in model.parameters())
  strided = [b for b in topology.of(arch.named(name)).blocks if b.stride == 2]
  assert len(strided) == 3 and all(
    b.shortcut == "strided_conv" and b.projection.stride == 2 and b.projection.has_bn
    for b in strided
  )
  tas_form = arch.named(name.replace("resnet", "imagenet_resnet").removesuffix("_tv"))
  assert flops.count(tas_form).flops == counts.flops
  assert [b.shortcut for b in topology.of(tas_form).blocks if b.stride == 2] == ["pool_conv"] * 3


@pytest.mark.parametrize("name, size", [("resnet18_tv", 64), ("resnet50_tv", 32)])
def test_torchvision_weights_import_with_equal_logits(name, size):
  tv = torchvision_models()
  torch.manual_seed(1)
  model = randomise_batch_norm(getattr(tv, name.removesuffix("_tv"))(num_classes=10))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  a = dataclasses.replace(arch.named(name), num_classes=10, input_size=size)
  variables = torch_layout.from_state_dict(a, state)
  x = np.random.default_rng(0).standard_normal((4, size, size, 3)).astype(np.float32)
  theirs = torch_logits(model, x)
  assert np.std(theirs) > 0.1  # logits that can differ
  assert relative_difference(jax_logits(a, variables, x), theirs) < TOLERANCE


# names of the released RepVGG training-form state dict (RepVGG-A0-train.pth)
RELEASED_REPVGG_KEYS = [
  "stage0.rbr_dense.conv.weight",
  "stage0.rbr_dense.bn.running_var",
  "stage0.rbr_1x1.conv.weight",
  "stage1.0.rbr_dense.bn.weight",
  "stage1.1.rbr_identity.running_mean",
  "stage4.0.rbr_1x1.bn.bias",
  "linear.weight",
  "linear.bias",
]


def test_released_repvgg_a0_training_form_imports_with_equal_logits():
  a = dataclasses.replace(repvgg.named_repvgg("a0", num_classes=10), input_size=32)
  torch.manual_seed(2)
  model = randomise_batch_norm(torch_net.module(a))
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert set(RELEASED_REPVGG_KEYS) <= set(state)
  assert "stage1.0.rbr_identity.weight" not in state  # stride 2: no identity branch
  variables = torch_layout.from_state_dict(a, state)
  x = np.random.default_rng(3).standard_normal((4, 32, 32, 3)).astype(np.float32)
  theirs = torch_logits(model, x)
  assert np.std(theirs) > 0.1
  assert relative_difference(jax_logits(a, variables, x), theirs) < TOLERANCE
  # and its deploy form (reparameterised in tas_jax) in the released deploy names
  deploy = repvgg.reparameterize(a, variables)
  deployed = torch_net.load(dataclasses.replace(a, deploy=True), deploy)
  assert "stage2.3.rbr_reparam.bias" in deployed.state_dict()
  assert relative_difference(torch_logits(deployed, x), theirs) < TOLERANCE


def test_every_variable_has_exactly_one_state_dict_key():
  """The table covers the model: as many entries as variables, paths all distinct, for both
  shortcut forms, a pruned network with PaS-kept projections, and RepVGG in both forms."""
  pruned = topology.pruned(
    arch.named("resnet50_tv"),
    [7] * len(topology.of(arch.named("resnet50_tv")).main_convs()),
    (1, 2, 1, 1),
    inherits=True,
  )
  for a, deploy in [
    (arch.named("resnet18_tv"), None),
    (arch.named("imagenet_resnet18"), None),
    (arch.named("resnet56"), None),
    (pruned, None),
    (repvgg.named_repvgg("a0"), False),
    (repvgg.named_repvgg("a0"), True),
    (repvgg.named_repvgg("b1"), False),
  ]:
    model = repvgg.RepVGG(a, deploy=deploy) if deploy is not None else networks.build(a)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), networks.dummy_input(a)))
    leaves = sum(len(jax.tree.leaves(shapes.get(c, {}))) for c in ("params", "batch_stats"))
    table = torch_layout.entries(a, deploy)
    assert len(table) == leaves == len({(e.collection, e.path) for e in table})
    assert len({e.key for e in table}) == len(table)


def test_the_torch_form_of_resnet18_tv_loads_into_torchvision():
  a = dataclasses.replace(arch.named("resnet18_tv"), input_size=32)
  tv_model = randomise_batch_norm(torchvision_models().resnet18())
  variables = torch_layout.from_state_dict(
    a, {k: v.numpy() for k, v in tv_model.state_dict().items()}
  )
  exported = torch_net.load(a, variables).state_dict()
  fresh = torchvision_models().resnet18().eval()
  fresh.load_state_dict(exported, strict=True)
  x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(np.float32)
  assert np.array_equal(torch_logits(fresh, x), torch_logits(tv_model, x))


def test_wrong_weights_are_one_line_naming_the_key():
  a = dataclasses.replace(arch.named("resnet18_tv"), input_size=32)
  state = {k: v.numpy() for k, v in torchvision_models().resnet18().state_dict().items()}
  with pytest.raises(
    torch_layout.WeightsError, match=r"missing \['layer2.0.downsample.0.weight'\]"
  ):
    torch_layout.from_state_dict(
      a, {k: v for k, v in state.items() if "layer2.0.downsample.0" not in k}
    )
  with pytest.raises(
    torch_layout.WeightsError,
    match=r"layer1.0.conv1.weight has shape \[64, 64, 3, 3\], .* needs \[32, 64, 3, 3\]",
  ):
    narrow = a.stages[0][0]
    torch_layout.from_state_dict(
      dataclasses.replace(a, stages=(((32, narrow[1]),) + a.stages[0][1:],) + a.stages[1:]), state
    )
  wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}  # DataParallel checkpoint
  assert jax.tree.leaves(torch_layout.from_state_dict(a, wrapped))


def test_convert_writes_a_teacher_the_stages_read(tmp_path):
  """The CLI's work: arch.json, a checkpoint `read_teacher` reads, imported.json with the check, a
  record with no training settings; a second conversion into the same workdir is refused."""
  torch.manual_seed(5)
  model = randomise_batch_norm(torchvision_models().resnet18(num_classes=19))
  path = str(tmp_path / "r18.pth")
  torch.save({"state_dict": model.state_dict()}, path)
  record = convert.convert("torchvision", "resnet18_tv", path, str(tmp_path / "W"), input_size=32)
  assert record["max_abs_logit_difference"] < 1e-4 and record["num_classes"] == 19
  teacher_dir = layout.teacher_dir(str(tmp_path / "W"))
  assert layout.read_imported(teacher_dir)["sha256"] == convert.sha256(path)
  assert json.load(open(os.path.join(teacher_dir, "config.json")))["fields"] == {}
  a, variables, step = checkpoint.read_teacher(
    str(tmp_path / "W"), checkpoint.host_sharding(), "test"
  )
  assert (a.name, a.num_classes, a.input_size, step) == ("resnet18_tv", 19, 32, 0)
  x = np.random.default_rng(6).standard_normal((2, 32, 32, 3)).astype(np.float32)
  assert relative_difference(jax_logits(a, variables, x), torch_logits(model, x)) < TOLERANCE
  with pytest.raises(errors.ConfigError, match="already holds a teacher"):
    convert.convert("torchvision", "resnet18_tv", path, str(tmp_path / "W"))


def test_a_missing_optional_package_is_one_line_naming_the_install(monkeypatch, capsys):
  monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
  with pytest.raises(
    interop.MissingDependencyError,
    match=r"needs onnxruntime, which is not "
    r"installed: pip install onnxruntime$",
  ):
    interop.require("onnxruntime", "checking --format=onnx")
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  from tas_jax.commands import convert as convert_command

  with pytest.raises(SystemExit) as e:
    convert_command.cli("torchvision", "resnet18_tv", "x.pth", "/tmp/unused")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "pip install torch" in err


@pytest.mark.stage
def test_an_imported_teacher_gets_a_fresh_head_and_is_fine_tuned_as_the_teacher(tmp_path):
  """teacher.finetune_imported: a 7-class network in torchvision's layout, converted, then
  fine-tuned on the 10-class embedded data: its classifier is new, every other weight starts from
  the file (a learning rate of 1e-9 leaves them as imported), and the summary and results say so."""
  from tas_jax import config as config_lib, main

  a = dataclasses.replace(
    arch.cifar_resnet(8, "basic", 7, 28, 1), downsample="strided_conv", name="tiny_tv"
  )
  spec = str(tmp_path / "tiny_tv.json")
  a.save(spec)
  torch.manual_seed(3)
  path = str(tmp_path / "tiny.pth")
  torch.save(randomise_batch_norm(torch_net.module(a)).state_dict(), path)
  workdir = str(tmp_path / "W")
  convert.convert("torchvision", spec, path, workdir)
  imported = torch_layout.from_state_dict(a, {k: v.numpy() for k, v in torch.load(path).items()})

  c = config_lib.base_config()
  c.data.name, c.data.train_examples = "embedded", 256
  c.model.arch = os.path.join(layout.teacher_dir(workdir), layout.ARCH)
  with pytest.raises(errors.ConfigError, match=r"finetune_imported=True to put a fresh 10-class"):
    main.run(c, workdir)
  c.teacher.finetune_imported = True
  c.finetune.batch_size, c.finetune.cosine_epochs = 64, 1
  c.finetune.lr, c.finetune.weight_decay = 1e-9, 0.0
  summary = main.run(c, workdir)
  assert (
    summary["finished"] and summary["new_classifier"] and summary["finetuned_from"] == "tiny_tv"
  )
  assert summary["architecture"] == "tiny_tv-10cls" and summary["steps"] == 4
  teacher_dir = layout.teacher_dir(workdir)
  assert os.path.isdir(os.path.join(teacher_dir, layout.IMPORTED_WEIGHTS))
  tuned, variables, _ = checkpoint.read_teacher(workdir, checkpoint.host_sharding(), "test")
  assert tuned.num_classes == 10 and variables["params"]["classifier"]["kernel"].shape[-1] == 10
  body = lambda tree: {k: v for k, v in tree.items() if k != "classifier"}
  for ours, theirs in zip(
    jax.tree.leaves(body(variables["params"])), jax.tree.leaves(body(imported["params"]))
  ):
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-6)
  # the record now holds the fine-tuning's settings (an export reads its data from it)
  record = json.load(open(os.path.join(teacher_dir, "config.json")))
  assert record["fields"]["finetune.cosine_epochs"] == 1 and record["imported"]["sha256"]
  assert record["config"]["data"]["name"] == "embedded"
  # the same command again finds it finished; the table names the teacher's origin
  assert main.run(c, workdir)["finished"]
  c.stage = "results"
  assert main.run(c, workdir)["rows"][0]["network"] == "teacher (imported, fine-tuned)"
