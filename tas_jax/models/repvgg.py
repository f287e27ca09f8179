"""RepVGG (Ding et al., CVPR 2021): PaS's own network family, from an explicit description.

A RepVGG is a chain of blocks, one width each; the first block of every stage has stride 2. In
training form a block is ReLU(BN(conv3x3(x)) + BN(conv1x1(x)) + BN(x)), the identity branch only
where the block keeps width and resolution. `reparameterize` folds the three branches and their
BNs into one 3x3 conv with bias per block — the deploy form, a plain VGG-like chain computing the
same function in evaluation mode. The deploy form has a free width per layer, so a network PaS
pruned (`tas_jax.models.channels.cut`: a block's masked output rows and the next block's matching
input columns go) is again a `RepVGGArch`, built by the same module with `deploy=True`.

`gates` (a call argument) multiplies a block's output, after its ReLU, by a per-channel vector
(the site is the block's name, "stage2.block1"), as in `tas_jax.models.resnet`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tas_jax.models import topology
from tas_jax.models.arch import ArchError
from tas_jax.models.resnet import ConvBN, classify, conv_init, gate

BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class RepVGGArch:
  """Widths of every block of every stage; stride 2 at each stage's first block."""

  num_classes: int
  input_size: int
  input_channels: int
  stages: tuple[tuple[int, ...], ...]
  name: str = ""
  family: str = "repvgg"
  deploy: bool = False  # built in deploy form (a pruned network) rather than training form

  def __post_init__(self):
    object.__setattr__(self, "stages", tuple(tuple(int(w) for w in s) for s in self.stages))
    if self.family != "repvgg":
      raise ArchError(f"family={self.family!r}: a RepVGGArch is 'repvgg'")
    if any(len(s) < 1 for s in self.stages) or any(w < 1 for s in self.stages for w in s):
      raise ArchError("stages: every stage keeps at least one block, every width is positive")
    if self.input_size % 2 ** len(self.stages):
      raise ArchError(
        f"input_size={self.input_size}: a multiple of {2 ** len(self.stages)} "
        f"(one stride-2 block per stage)"
      )

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), "stages": [list(s) for s in self.stages]}

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.to_dict(), f, indent=2)

  @property
  def depths(self) -> tuple[int, ...]:
    return tuple(len(s) for s in self.stages)

  @property
  def output_width(self) -> int:
    return self.stages[-1][-1]

  @classmethod
  def from_dict(cls, d: dict, source: str = "architecture") -> "RepVGGArch":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ArchError(
        f"{source}: unknown field(s) {unknown} for a RepVGG; allowed: {sorted(fields)}"
      )
    try:
      return cls(**d)
    except (TypeError, ValueError) as e:
      raise ArchError(f"{source}: {e}") from None


VARIANTS = {"a0": (0.75, 2.5, (2, 4, 14, 1)), "b1": (2.0, 4.0, (4, 6, 16, 1))}


def named_repvgg(
  variant: str, num_classes: int = 1000, input_size: int = 224, input_channels: int = 3
) -> RepVGGArch:
  """RepVGG-A0 (a = 0.75, b = 2.5; blocks 1, 2, 4, 14, 1) or -B1 (a = 2, b = 4; 1, 4, 6, 16, 1)."""
  table = VARIANTS
  if variant not in table:
    raise ArchError(f"RepVGG variant {variant!r}: allowed {', '.join(table)}")
  a, b, counts = table[variant]
  widths = [min(64, int(64 * a))] + [int(64 * a), int(128 * a), int(256 * a), int(512 * b)]
  stages = [(widths[0],)] + [(w,) * n for w, n in zip(widths[1:], counts)]
  return RepVGGArch(
    num_classes, input_size, input_channels, tuple(stages), name=f"repvgg_{variant}"
  )


def blocks(arch: RepVGGArch) -> tuple[topology.Conv, ...]:
  """Every block as its deploy-form 3x3 conv (the layers FLOPs are counted on), in order."""
  out, width, size = [], arch.input_channels, arch.input_size
  for s, stage in enumerate(arch.stages):
    for b, w in enumerate(stage):
      stride = 2 if b == 0 else 1
      out_size = topology.conv_out_size(size, 3, stride)
      out.append(
        topology.Conv(f"stage{s + 1}.block{b + 1}", 3, stride, width, w, size, out_size, False)
      )
      width, size = w, out_size
  return tuple(out)


def has_identity(conv: topology.Conv) -> bool:
  return conv.stride == 1 and conv.in_width == conv.out_width


class RepVGGBlock(nn.Module):
  """Training form: ReLU(BN(conv3x3) + BN(conv1x1) + BN(identity, where widths and sizes agree))."""

  layout: topology.Conv
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.layout
    y = ConvBN(
      c.out_width, 3, c.stride, bn_axis_name=self.bn_axis_name, dtype=self.dtype, name="dense"
    )(x, train)
    y = y + ConvBN(
      c.out_width, 1, c.stride, bn_axis_name=self.bn_axis_name, dtype=self.dtype, name="pointwise"
    )(x, train)
    if has_identity(c):
      y = y + nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=BN_EPSILON,
        axis_name=self.bn_axis_name,
        dtype=self.dtype,
        name="identity",
      )(x)
    return nn.relu(y)


class RepVGG(nn.Module):
  """The blocks of `arch` in training form, or in deploy form (one 3x3 conv with bias each; the
  default of an architecture with `deploy`)."""

  arch: RepVGGArch
  deploy: Optional[bool] = None
  bn_axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, gates: Optional[dict] = None):
    x = x.astype(self.dtype)
    deploy = self.arch.deploy if self.deploy is None else self.deploy
    for c in blocks(self.arch):
      if deploy:
        x = nn.relu(
          nn.Conv(
            c.out_width,
            (3, 3),
            (c.stride, c.stride),
            padding=((1, 1), (1, 1)),
            kernel_init=conv_init,
            dtype=self.dtype,
            name=c.name,
          )(x)
        )
      else:
        x = RepVGGBlock(c, self.bn_axis_name, self.dtype, name=c.name)(x, train)
      x = gate(x, gates, c.name)
    return classify(x, self.arch.num_classes)


def _fold_bn(kernel, bn_params, bn_stats):
  """(kernel · γ/σ per output channel, β − μ·γ/σ): a conv followed by eval-mode BN as one conv."""
  scale = np.asarray(bn_params["scale"]) / np.sqrt(np.asarray(bn_stats["var"]) + BN_EPSILON)
  return kernel * scale, np.asarray(bn_params["bias"]) - np.asarray(bn_stats["mean"]) * scale


def reparameterize(arch: RepVGGArch, variables: dict) -> dict:
  """Training-form {"params", "batch_stats"} -> deploy-form {"params"}: per block, the 3x3 branch,
  the 1x1 branch (its kernel at the centre of a 3x3) and the identity (a 3x3 identity kernel), each
  with its BN folded in, summed into one kernel and one bias."""
  params, stats = variables["params"], variables["batch_stats"]
  out = {"classifier": {k: np.asarray(v) for k, v in params["classifier"].items()}}
  for c in blocks(arch):
    p, s = params[c.name], stats[c.name]
    k3, b3 = _fold_bn(np.asarray(p["dense"]["conv"]["kernel"]), p["dense"]["bn"], s["dense"]["bn"])
    k1, b1 = _fold_bn(
      np.asarray(p["pointwise"]["conv"]["kernel"]), p["pointwise"]["bn"], s["pointwise"]["bn"]
    )
    kernel = k3.copy()
    kernel[1:2, 1:2] += k1
    bias = b3 + b1
    if has_identity(c):
      eye = np.zeros((3, 3, c.in_width, c.out_width), np.float32)
      eye[1, 1] = np.eye(c.out_width, dtype=np.float32)
      ki, bi = _fold_bn(eye, p["identity"], s["identity"])
      kernel, bias = kernel + ki, bias + bi
    out[c.name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
  return {"params": out}
