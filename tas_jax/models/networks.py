"""Any network tas_jax trains, behind one build / load: a ResNet (`tas_jax.models.arch`) or a
RepVGG (`tas_jax.models.repvgg`, PaS's family). The stages call these and never ask which."""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from tas_jax.models import arch as arch_lib, repvgg, resnet, user

Network = Union[arch_lib.Architecture, repvgg.RepVGGArch, user.UserNetwork]
REPVGG_NAMED = ("repvgg_a0", "repvgg_b1")
NAMED = (*arch_lib.NAMED, *REPVGG_NAMED)  # every named network `resolve` knows


def build(
  a: Network,
  bn_axis_name: Optional[str] = None,
  dtype=jnp.float32,
  name: Optional[str] = None,
  scan_blocks: bool = False,
) -> nn.Module:
  """The Flax module of `a` (`name`: its name as a submodule of another; `scan_blocks`: a
  ResNet's equal blocks as one lax.scan, `model.scan_blocks`)."""
  if isinstance(a, repvgg.RepVGGArch):
    return repvgg.RepVGG(a, bn_axis_name=bn_axis_name, dtype=dtype, name=name)
  if isinstance(a, user.UserNetwork):
    return user.Model(a, bn_axis_name=bn_axis_name, dtype=dtype, name=name)
  if not isinstance(a, arch_lib.Architecture):
    raise TypeError(
      f"networks.build takes a tas_jax architecture description (a ResNet's "
      f"tas_jax.models.arch.Architecture or a RepVGGArch), not {type(a).__name__}: "
      "describe the network with one (networks.resolve('resnet20'), arch.load(FILE))"
    )
  return resnet.ResNet(
    a, bn_axis_name=bn_axis_name, dtype=dtype, name=name, scan_blocks=scan_blocks
  )


def dummy_input(a: Network, batch: int = 1):
  return jnp.zeros((batch, a.input_size, a.input_size, a.input_channels), jnp.float32)


def from_dict(d, source: str = "architecture") -> Network:
  if isinstance(d, dict) and d.get("family") == user.FAMILY:
    return user.UserNetwork.from_dict(d, source)
  if isinstance(d, dict) and d.get("family") == "repvgg":
    return repvgg.RepVGGArch.from_dict(d, source)
  if isinstance(d, dict) and "family" in d and d["family"] not in arch_lib.FAMILIES:
    raise arch_lib.ArchError(
      f"{source}: family={d['family']!r}: allowed: {', '.join(arch_lib.FAMILIES)}, repvgg"
    )
  return arch_lib.Architecture.from_dict(d, source)


def load(path: str) -> Network:
  """Reads an architecture JSON file of either family; errors are one line naming the problem."""
  if not os.path.isfile(path):
    raise arch_lib.ArchError(f"{path}: no such architecture file")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise arch_lib.ArchError(f"{path}: not valid JSON ({e})") from None
  return from_dict(d, source=path)


def resolve(name_or_path: str) -> Network:
  """A named network (ResNets of `tas_jax.models.arch`, repvgg_a0 / repvgg_b1) or a JSON file."""
  if name_or_path in REPVGG_NAMED:
    return repvgg.named_repvgg(name_or_path.split("_")[1])
  if name_or_path.endswith(".json") or os.path.sep in name_or_path:
    return load(name_or_path)
  if name_or_path not in arch_lib.NAMED:
    raise arch_lib.ArchError(
      f"{name_or_path!r} is neither a named architecture "
      f"({', '.join(NAMED)}) nor a .json "
      "architecture file"
    )
  return arch_lib.resolve(name_or_path)


def family_of(model) -> str:
  """ "resnet", "repvgg" or "module" (a user's): the network a config's `model` section
  describes."""
  if model.get("module"):
    return user.FAMILY
  if model.arch:
    return "repvgg" if isinstance(resolve(model.arch), repvgg.RepVGGArch) else "resnet"
  return "repvgg" if model.family == "repvgg" else "resnet"
