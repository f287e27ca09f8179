"""Architecture descriptions: the JSON format, named networks, validation errors."""

import json

import pytest

from tas_jax.models import arch, topology


def one_block_per_stage(a: arch.Architecture) -> arch.Architecture:
  """The family's code paths (stem, shortcuts, blocks, chains) at a fraction of the compile time."""
  return arch.Architecture(
    **{**a.to_dict(), "stages": [s[:1] for s in a.stages], "name": a.name + "_short"}
  )


def pruned_cifar():
  """A pruned ResNet-20: odd widths, a truncated stage, width mismatches on stride-1 blocks."""
  return arch.Architecture(
    family="cifar_basic",
    num_classes=10,
    input_size=32,
    input_channels=3,
    stem_width=9,
    stages=(((6, 11), (4, 9)), ((19, 25),), ((38, 51), (44, 51), (25, 64))),
    name="pruned",
  )


def test_named_resnet20_structure():
  a = arch.named("resnet20")
  assert a.family == "cifar_basic" and a.depths == (3, 3, 3) and a.stem_width == 16
  assert a.stages[2][0] == (64, 64) and topology.of(a).output_width == 64


def test_resnet164_is_bottleneck_with_expansion_four():
  a = arch.named("resnet164")
  assert a.family == "cifar_bottleneck" and a.depths == (18, 18, 18)
  assert a.stages[0][0] == (16, 16, 64)
  # first block: stride 1, 16 -> 64 channels: projection with BN (spec §1)
  first = topology.of(a).blocks[0]
  assert (first.in_width, first.out_width, first.stride) == (16, 64, 1)
  assert first.shortcut == "conv_bn" and first.projection.has_bn


def test_imagenet_resnet50_stages():
  a = arch.named("imagenet_resnet50")
  assert a.depths == (3, 4, 6, 3) and a.stages[3][0] == (512, 512, 2048)


def test_shortcut_kinds_of_a_pruned_network():
  a = pruned_cifar()
  kinds = [b.shortcut for b in topology.of(a).blocks]
  # 9->11 (stride 1, mismatch), 11->9, 9->25 (stride 2), 25->51 (stride 2), 51->51, 51->64
  assert kinds == ["conv_bn", "conv_bn", "pool_conv", "pool_conv", "identity", "conv_bn"]
  no_bn = arch.Architecture(**{**a.to_dict(), "projection_bn": False})
  assert topology.of(no_bn).blocks[0].shortcut == "conv"
  assert topology.of(no_bn).blocks[0].projection.has_bn is False


def test_json_round_trip(tmp_path):
  a = pruned_cifar()
  path = tmp_path / "a.json"
  a.save(str(path))
  assert arch.load(str(path)) == a
  assert json.loads(path.read_text())["stages"][1] == [[19, 25]]


@pytest.mark.parametrize(
  "change, message",
  [
    ({"family": "cifar_wide"}, "family='cifar_wide': allowed: cifar_basic"),
    ({"stages": [[[16, 16]], [[32, 32]]]}, "cifar_basic networks have 3 stages, got 2"),
    ({"stages": [[[16, 16]], [], [[64, 64]]]}, "stages[1]: a stage keeps at least one block"),
    (
      {"stages": [[[16, 16, 16]], [[32, 32]], [[64, 64]]]},
      "stages[0][0]: a basic block has 2 conv",
    ),
    ({"stages": [[[16, 0]], [[32, 32]], [[64, 64]]]}, "stages[0][0]: widths must be positive"),
    ({"stages": [[[16, 1.5]], [[32, 32]], [[64, 64]]]}, "stages[0][0]: widths must be integers"),
    ({"input_size": 30}, "input_size=30: cifar networks need a multiple of 4"),
    ({"num_classes": 0}, "num_classes=0: must be a positive integer"),
    ({"colour": "red"}, "unknown field(s) ['colour']"),
  ],
)
def test_bad_files_get_one_line_naming_the_problem(tmp_path, change, message):
  d = {**pruned_cifar().to_dict(), **change}
  path = tmp_path / "bad.json"
  path.write_text(json.dumps(d))
  with pytest.raises(arch.ArchError) as e:
    arch.load(str(path))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert str(path) in str(e.value)


def test_missing_fields_and_bad_json(tmp_path):
  p = tmp_path / "x.json"
  p.write_text('{"family": "cifar_basic"}')
  with pytest.raises(arch.ArchError, match=r"missing field\(s\) \['num_classes'"):
    arch.load(str(p))
  p.write_text("{not json")
  with pytest.raises(arch.ArchError, match="not valid JSON"):
    arch.load(str(p))
  with pytest.raises(arch.ArchError, match="no such architecture file"):
    arch.load(str(tmp_path / "none.json"))


def test_depth_rules():
  assert arch.cifar_resnet(8).depths == (1, 1, 1)
  with pytest.raises(arch.ArchError, match=r"depth=21: a CIFAR basic ResNet needs depth = 6n\+2"):
    arch.cifar_resnet(21)
  with pytest.raises(arch.ArchError, match="9n"):
    arch.cifar_resnet(21, "bottleneck")
  with pytest.raises(arch.ArchError, match="unknown architecture 'resnet21'"):
    arch.named("resnet21")


def test_networks_name_every_family_and_refuse_a_foreign_module(tmp_path):
  import flax.linen as nn

  from tas_jax.models import networks

  with pytest.raises(arch.ArchError, match=r"resnet50_tv, repvgg_a0, repvgg_b1\) nor a \.json"):
    networks.resolve("resnet21")
  path = tmp_path / "a.json"
  path.write_text('{"family": "vgg"}')
  with pytest.raises(arch.ArchError, match=r"family='vgg': allowed: cifar_basic, .*, repvgg$"):
    networks.load(str(path))
  with pytest.raises(TypeError, match=r"not Dense"):
    networks.build(nn.Dense(3))
