"""The Flax ResNets: shapes, shortcuts, initialisation (spec §1)."""

import jax
import jax.numpy as jnp
import numpy as np
from test_arch import one_block_per_stage, pruned_cifar

from tas_jax import parallel
from tas_jax.models import arch, resnet


def init(a, seed=0):
  model = resnet.build(a)
  return model, parallel.jit_once(model.init)(jax.random.key(seed), resnet.dummy_input(a, 2))


def test_output_shape_and_feature_sizes():
  a = arch.cifar_resnet(8, num_classes=7, input_size=16, input_channels=1)
  model, v = init(a)
  x = jnp.ones((3, 16, 16, 1))
  logits, state = model.apply(v, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (3, 7)
  # running statistics moved from their initial values (train mode updates them)
  bs0 = v["batch_stats"]["stem"]["bn"]["mean"]
  assert not np.allclose(state["batch_stats"]["stem"]["bn"]["mean"], bs0)


def test_pruned_network_builds_its_shortcuts():
  a = pruned_cifar()
  v = jax.eval_shape(resnet.build(a).init, jax.random.key(0), resnet.dummy_input(a, 2))
  p = v["params"]
  assert p["stem"]["conv"]["kernel"].shape == (3, 3, 3, 9)
  assert p["stage1.block1"]["conv_a"]["conv"]["kernel"].shape == (3, 3, 9, 6)
  # stride-1 width mismatch 9 -> 11: 1x1 projection with BN
  assert p["stage1.block1"]["shortcut"]["proj"]["conv"]["kernel"].shape == (1, 1, 9, 11)
  assert "bn" in p["stage1.block1"]["shortcut"]["proj"]
  # CIFAR stride-2 projection: 1x1 conv, no BN
  assert p["stage2.block1"]["shortcut"]["proj"]["conv"]["kernel"].shape == (1, 1, 9, 25)
  assert "bn" not in p["stage2.block1"]["shortcut"]["proj"]
  # identity shortcut: no parameters
  assert "shortcut" not in p["stage3.block2"]
  assert p["classifier"]["kernel"].shape == (64, 10)


def test_imagenet_shortcuts_and_zero_init_last_bn():
  a = one_block_per_stage(arch.imagenet_resnet(50, num_classes=5, input_size=64))
  _, v = init(a)
  p = v["params"]
  assert "bn" in p["stage2.block1"]["shortcut"]["proj"]  # stride 2: with BN
  assert "shortcut" in p["stage1.block1"]  # 64 -> 256 at stride 1
  assert np.all(p["stage1.block1"]["conv_c"]["bn"]["scale"] == 0)  # last BN of the branch
  assert np.all(p["stage1.block1"]["conv_a"]["bn"]["scale"] == 1)


def test_initialisation_statistics():
  """kaiming-normal fan_out (std sqrt(2 / (k*k*Cout))), BN (1, 0), linear N(0, 0.01), bias 0."""
  a = arch.named("resnet32")  # five blocks per stage
  _, v = init(a)
  p = v["params"]
  k = np.asarray(p["stage3.block5"]["conv_b"]["conv"]["kernel"])
  assert abs(k.std() - np.sqrt(2 / (9 * 64))) < 0.05 * np.sqrt(2 / (9 * 64))
  assert abs(k.mean()) < 0.005
  fc = np.asarray(p["classifier"]["kernel"])
  assert abs(fc.std() - 0.01) < 0.002 and np.all(np.asarray(p["classifier"]["bias"]) == 0)
  bn = p["stage2.block3"]["conv_a"]["bn"]
  assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)


def test_residual_block_by_hand():
  """A one-block-per-stage net whose every conv is zero computes ReLU(shortcut): the stem output
  passes through stage 1 unchanged, so the logits are the classifier of pooled features."""
  a = arch.cifar_resnet(8, num_classes=3, input_size=8, input_channels=1)
  model, v = init(a)
  params = jax.tree.map(lambda x: x, v["params"])
  for name, sub in params.items():
    if name.startswith("stage"):
      for conv in ("conv_a", "conv_b"):
        sub[conv]["conv"]["kernel"] = jnp.zeros_like(sub[conv]["conv"]["kernel"])
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  logits = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=False)
  # eval BN with fresh statistics (mean 0, var 1) is x / sqrt(1 + eps)
  bn = lambda t: t / np.sqrt(1 + 1e-5)
  stem = jax.nn.relu(
    bn(
      jax.lax.conv_general_dilated(
        x,
        params["stem"]["conv"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    )
  )
  h = stem  # stage 1: ReLU(0 + identity)
  for s in ("stage2.block1", "stage3.block1"):  # ReLU(0 + conv1x1(avgpool(h)))
    pooled = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, h.shape[3]).mean((2, 4))
    h = jax.nn.relu(pooled @ params[s]["shortcut"]["proj"]["conv"]["kernel"][0, 0])
  want = h.mean((1, 2)) @ params["classifier"]["kernel"] + params["classifier"]["bias"]
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-6)


def test_progress_is_plain_lines_when_not_a_terminal():
  """Redirected to a file, a progress report is whole lines (tqdm's carriage returns would make
  one huge line): at the interval and at the end, every item passed through."""
  import io

  from tas_jax import console

  stream = io.StringIO()
  items = list(console.progress_bar(range(5), 5, "img", "checked", every_secs=0.0, stream=stream))
  assert items == [0, 1, 2, 3, 4]
  text = stream.getvalue()
  assert "\r" not in text and text.splitlines() == [
    f"checked: {n}/5 img ({20 * n}%)" for n in range(1, 6)
  ]
  stream = io.StringIO()
  assert list(
    console.progress_bar(range(3), 3, "conv", "table", every_secs=1e9, stream=stream)
  ) == [0, 1, 2]
  assert stream.getvalue() == "table: 3/3 conv (100%)\n"  # only the end within the interval
