"""Which PyTorch state-dict key holds which tas_jax variable, and how the two tensors differ.

One table per network, derived from its topology, serves both directions: importing pretrained
weights (`tas_jax.convert`) and exporting a trained network (`tas_jax.export --format=torch`). The
key names are torchvision's for a ResNet (`conv1`, `bn1`, `layer2.0.conv1`, `layer2.0.downsample.0`,
`fc`) and the released RepVGG code's for a RepVGG (`stage0.rbr_dense.conv`, `stage1.0.rbr_1x1.bn`,
`stage1.0.rbr_identity`, `stage1.0.rbr_reparam` in deploy form, `linear`). So an unpruned
`resnet50_tv` exported to PyTorch loads into `torchvision.models.resnet50()` as it is, and a
torchvision or RepVGG checkpoint imports without a renaming step.

Tensors: a conv kernel is OIHW in PyTorch and HWIO here, a linear weight (out, in) there and
(in, out) here; BatchNorm's weight/bias/running_mean/running_var are scale/bias/mean/var. No torch
import: the tables and the numpy transposes are plain Python, used by the tests without PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from tas_jax.errors import ConfigError
from tas_jax.models import arch as arch_lib, repvgg, resnet, topology

BN_FIELDS = (
  ("weight", "params", "scale"),
  ("bias", "params", "bias"),
  ("running_mean", "batch_stats", "mean"),
  ("running_var", "batch_stats", "var"),
)
IGNORED_SUFFIXES = ("num_batches_tracked",)  # BN's step counter: no tas_jax counterpart


class WeightsError(ConfigError):
  """A state dict that does not fit the architecture; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its state-dict key, where it lives in {"params", "batch_stats"}, and its kind
  ("conv": OIHW <-> HWIO, "linear": (out, in) <-> (in, out), "vector": as is)."""

  key: str
  collection: str
  path: tuple[str, ...]
  kind: str


def _conv_bn(
  prefix: str, scope: tuple[str, ...], has_bn: bool, conv_key: str = "weight", bn_prefix: str = ""
) -> list[Entry]:
  out = [Entry(f"{prefix}{conv_key}", "params", scope + ("conv", "kernel"), "conv")]
  if has_bn:
    out += [Entry(f"{bn_prefix}{t}", c, scope + ("bn", j), "vector") for t, c, j in BN_FIELDS]
  return out


def resnet_key(conv_name: str) -> tuple[str, str]:
  """(conv prefix, BN prefix) of a topology conv in torchvision's naming:
  "stem" -> ("conv1.", "bn1."), "stage2.block1.conv_b" -> ("layer2.0.conv2.", "layer2.0.bn2.")."""
  if conv_name == "stem":
    return "conv1.", "bn1."
  block, part = conv_name.rsplit(".", 1)
  stage, index = block.split(".")
  layer = f"layer{stage.removeprefix('stage')}.{int(index.removeprefix('block')) - 1}."
  if part == "shortcut":
    raise ValueError("a shortcut's keys depend on its kind: see resnet_entries")
  n = "abc".index(part.removeprefix("conv_")) + 1
  return f"{layer}conv{n}.", f"{layer}bn{n}."


def resnet_entries(a: arch_lib.Architecture) -> list[Entry]:
  topo = topology.of(a)
  out = []
  for c in topo.main_convs():
    conv_prefix, bn_prefix = resnet_key(c.name)
    out += _conv_bn(conv_prefix, resnet.variable_scope(c.name), c.has_bn, bn_prefix=bn_prefix)
  for b in topo.blocks:
    if b.projection is None:
      continue
    layer = resnet_key(b.convs[0].name)[0].rsplit("conv1.", 1)[0]
    first = 1 if b.shortcut == "pool_conv" else 0  # downsample.0 is the AvgPool2d in TAS's form
    out += _conv_bn(
      f"{layer}downsample.{first}.",
      resnet.variable_scope(b.projection.name),
      b.projection.has_bn,
      bn_prefix=f"{layer}downsample.{first + 1}.",
    )
  out += [
    Entry("fc.weight", "params", ("classifier", "kernel"), "linear"),
    Entry("fc.bias", "params", ("classifier", "bias"), "vector"),
  ]
  return out


def repvgg_block_key(block_name: str) -> str:
  """The released RepVGG's module of a block: "stage1.block1" -> "stage0." (a lone block),
  "stage3.block2" -> "stage2.1."."""
  stage, index = block_name.split(".")
  s = int(stage.removeprefix("stage")) - 1
  return f"stage{s}." if s == 0 else f"stage{s}.{int(index.removeprefix('block')) - 1}."


def repvgg_entries(a: repvgg.RepVGGArch, deploy: bool) -> list[Entry]:
  out = []
  for c in repvgg.blocks(a):
    key = repvgg_block_key(c.name)
    if deploy:
      out += [
        Entry(f"{key}rbr_reparam.weight", "params", (c.name, "kernel"), "conv"),
        Entry(f"{key}rbr_reparam.bias", "params", (c.name, "bias"), "vector"),
      ]
      continue
    out += _conv_bn(
      f"{key}rbr_dense.conv.", (c.name, "dense"), True, bn_prefix=f"{key}rbr_dense.bn."
    )
    out += _conv_bn(
      f"{key}rbr_1x1.conv.", (c.name, "pointwise"), True, bn_prefix=f"{key}rbr_1x1.bn."
    )
    if repvgg.has_identity(c):
      out += [
        Entry(f"{key}rbr_identity.{t}", coll, (c.name, "identity", j), "vector")
        for t, coll, j in BN_FIELDS
      ]
  out += [
    Entry("linear.weight", "params", ("classifier", "kernel"), "linear"),
    Entry("linear.bias", "params", ("classifier", "bias"), "vector"),
  ]
  return out


def entries(a, deploy: bool | None = None) -> list[Entry]:
  """Every tensor of network `a` (a ResNet, or a RepVGG in training or deploy form)."""
  if isinstance(a, repvgg.RepVGGArch):
    return repvgg_entries(a, a.deploy if deploy is None else deploy)
  return resnet_entries(a)


_AXES = {
  "conv": ((3, 2, 0, 1), (2, 3, 1, 0)),  # HWIO -> OIHW, OIHW -> HWIO
  "linear": ((1, 0), (1, 0)),
}


def _to_torch(value: np.ndarray, kind: str) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(value, _AXES[kind][0])) if kind in _AXES else value


def _from_torch(value: np.ndarray, kind: str) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(value, _AXES[kind][1])) if kind in _AXES else value


def _get(tree: Mapping, path: tuple[str, ...]):
  for part in path:
    tree = tree[part]
  return tree


def _put(tree: dict, path: tuple[str, ...], value) -> None:
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = value


def to_state_dict(a, variables: Mapping, deploy: bool | None = None) -> dict[str, np.ndarray]:
  """{"params", "batch_stats"} of network `a` -> {state-dict key: float32 array in PyTorch's
  layout}."""
  return {
    e.key: _to_torch(np.asarray(_get(variables[e.collection], e.path), np.float32), e.kind)
    for e in entries(a, deploy)
  }


def strip_wrappers(state: Mapping) -> dict:
  """A checkpoint as saved by training scripts -> its plain state dict: the model's entries of
  {"state_dict": …} / {"model": …}, and keys without DataParallel's "module." prefix."""
  for wrapper in ("state_dict", "model"):
    if wrapper in state and isinstance(state[wrapper], Mapping):
      state = state[wrapper]
  return {k.removeprefix("module."): v for k, v in state.items()}


def from_state_dict(a, state: Mapping, deploy: bool | None = None, source: str = "weights") -> dict:
  """{state-dict key: array} -> {"params", "batch_stats"} of network `a`, every tensor checked: a
  missing, unexpected or wrongly shaped key is a WeightsError naming it."""
  state = strip_wrappers(state)
  table = entries(a, deploy)
  known = {e.key for e in table}
  unexpected = sorted(k for k in state if k not in known and not k.endswith(IGNORED_SUFFIXES))
  missing = [e.key for e in table if e.key not in state]
  name = a.name or "the architecture"
  if missing or unexpected:
    parts = (
      [f"missing {missing[:3]}{' …' if len(missing) > 3 else ''} ({len(missing)} keys)"]
      if missing
      else []
    ) + (
      [f"unexpected {unexpected[:3]}{' …' if len(unexpected) > 3 else ''} ({len(unexpected)} keys)"]
      if unexpected
      else []
    )
    raise WeightsError(f"{source} does not fit {name}: {'; '.join(parts)}")
  out: dict = {"params": {}, "batch_stats": {}}
  expected = _expected_shapes(a, deploy)
  for e in table:
    value = _from_torch(np.asarray(state[e.key], np.float32), e.kind)
    want = expected[e.collection, e.path]
    if value.shape != want:
      raise WeightsError(
        f"{source}: {e.key} has shape {list(_to_torch(value, e.kind).shape)}, "
        f"{name} needs {list(_to_torch(np.zeros(want), e.kind).shape)}"
      )
    _put(out[e.collection], e.path, value)
  return out


def _expected_shapes(a, deploy: bool | None) -> dict:
  """(collection, path) -> the tas_jax shape of every variable, from the initialised model."""
  import jax

  from tas_jax.models import networks

  model = repvgg.RepVGG(a, deploy=deploy) if isinstance(a, repvgg.RepVGGArch) else networks.build(a)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), networks.dummy_input(a)))
  out = {}
  for collection in ("params", "batch_stats"):
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes.get(collection, {}))[0]:
      out[collection, tuple(p.key for p in path)] = leaf.shape
  return out
