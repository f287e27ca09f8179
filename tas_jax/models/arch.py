"""Architecture descriptions: the one input every ResNet in tas_jax is built from.

The teacher, the network extracted from a search and a user's hand-written widths are all an
`Architecture`; `tas_jax.models.topology` derives every layer from it, and the model, the FLOP
counter and the search spaces read that. An architecture is stored as JSON:

    {
      "family": "cifar_basic",        # cifar_basic | cifar_bottleneck | imagenet_basic |
                                      # imagenet_bottleneck
      "num_classes": 10,
      "input_size": 32,               # square images, pixels
      "input_channels": 3,
      "stem_width": 16,               # output width of the stem conv
      "stages": [                     # CIFAR: 3 stages; ImageNet: 4 stages
        [[16, 16], [16, 16], [16, 16]],   # kept blocks, each the widths of its main-path convs
        [[32, 32], [32, 32], [32, 32]],   # (2 for a basic block, 3 for a bottleneck)
        [[64, 64], [64, 64], [64, 64]]
      ],
      "projection_bn": true,          # optional: BN after a stride-1 projection shortcut
      "projections": ["stage1.block1"],  # optional: blocks that keep a stride-1 projection even
                                         # where their input and output widths agree
      "downsample": "pool_conv",      # optional: the stride-2 shortcut, "pool_conv" (TAS: 2x2
                                      # average pool, 1x1 conv) or "strided_conv" (torchvision:
                                      # 1x1 conv with stride 2, BN)
      "name": "resnet20"              # optional, informational
    }

Shortcuts, strides and spatial sizes are derived, never listed (`tas_jax.models.topology`). A
stride-1 projection has BN when `projection_bn` is true: TAS's released code asks
for it on the unpruned networks and in pruned CIFAR-basic and ImageNet networks, and for none in
pruned CIFAR-bottleneck networks; extraction writes the flag. `projections` is for a pruned network
that inherits the weights of its original (PaS): a block that had a projection keeps it, even when
pruning happened to leave its input and output equally wide. `downsample` says how a stride-2
block's shortcut shrinks the map: TAS's networks average-pool 2x2 and then apply a 1x1 conv (as
released), torchvision's ResNets apply a 1x1 conv with stride 2 and BN (`resnet18_tv`,
`resnet50_tv`, the form pretrained torchvision weights need). Both cost the same FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FAMILIES = ("cifar_basic", "cifar_bottleneck", "imagenet_basic", "imagenet_bottleneck")
_NUM_STAGES = {"cifar": 3, "imagenet": 4}
_CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}
_KEYS = (
  "family",
  "num_classes",
  "input_size",
  "input_channels",
  "stem_width",
  "stages",
  "projection_bn",
  "name",
  "projections",
  "downsample",
)
DOWNSAMPLES = ("pool_conv", "strided_conv")


class ArchError(ValueError):
  """An architecture description that cannot be built; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A ResNet: every main-path conv's width and the kept blocks of every stage.

  Frozen and made of tuples so that it is hashable: Flax modules take it as a static attribute.
  """

  family: str
  num_classes: int
  input_size: int
  input_channels: int
  stem_width: int
  stages: tuple[tuple[tuple[int, ...], ...], ...]
  projection_bn: bool = True
  name: str = ""
  projections: tuple[
    str, ...
  ] = ()  # blocks ("stage1.block1") with a projection whatever the widths
  downsample: str = (
    "pool_conv"  # the stride-2 shortcut: pool_conv (TAS) | strided_conv (torchvision)
  )

  def __post_init__(self):
    try:
      stages = tuple(tuple(tuple(block) for block in stage) for stage in self.stages)
    except TypeError:
      raise ArchError(
        "stages: must be a list of stages, each a list of blocks, each a list of conv widths"
      ) from None
    for s, stage in enumerate(stages):
      for b, widths in enumerate(stage):
        if not all(_is_int(w) for w in widths):
          raise ArchError(f"stages[{s}][{b}]: widths must be integers, got {list(widths)}")
    object.__setattr__(self, "stages", stages)
    if isinstance(self.projections, str) or not all(isinstance(p, str) for p in self.projections):
      raise ArchError(
        f"projections: a list of block names like 'stage1.block1', got {self.projections!r}"
      )
    object.__setattr__(self, "projections", tuple(self.projections))
    validate(self)

  # --- derived facts, used by the model and the FLOP counter alike ---
  @property
  def dataset_kind(self) -> str:
    """'cifar' or 'imagenet': which stem, which shortcut and which initialisation."""
    return self.family.split("_")[0]

  @property
  def block_kind(self) -> str:
    """'basic' or 'bottleneck'."""
    return self.family.split("_")[1]

  @property
  def depths(self) -> tuple[int, ...]:
    """Kept blocks per stage."""
    return tuple(len(stage) for stage in self.stages)

  # --- (de)serialisation ---
  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["stages"] = [[list(block) for block in stage] for stage in self.stages]
    d["projections"] = list(self.projections)
    if not self.projections:  # the usual case: left out of the JSON
      del d["projections"]
    if self.downsample == "pool_conv":  # TAS's form, the default: left out too
      del d["downsample"]
    return d

  def to_json(self) -> str:
    """JSON with one block per line: readable and diffable."""
    stages = ",\n".join(
      "    [" + ", ".join(json.dumps(list(b)) for b in stage) + "]" for stage in self.stages
    )
    head = {k: v for k, v in self.to_dict().items() if k != "stages"}
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items())
    return "{\n" + body + ',\n  "stages": [\n' + stages + "\n  ]\n}\n"

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      f.write(self.to_json())

  @classmethod
  def from_dict(cls, d: Any, source: str = "architecture") -> "Architecture":
    if not isinstance(d, dict):
      raise ArchError(f"{source}: expected a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
      raise ArchError(f"{source}: unknown field(s) {unknown}; allowed: {list(_KEYS)}")
    missing = [k for k in _KEYS[:6] if k not in d]
    if missing:
      raise ArchError(f"{source}: missing field(s) {missing}")
    try:
      return cls(**d)
    except ArchError as e:
      raise ArchError(f"{source}: {e}") from None
    except (TypeError, ValueError) as e:
      raise ArchError(f"{source}: malformed value ({e})") from None


def load(path: str) -> Architecture:
  """Reads and validates an architecture JSON file; errors are one line naming the problem."""
  if not os.path.isfile(path):
    raise ArchError(f"{path}: no such architecture file")
  try:
    with open(path) as f:
      d = json.load(f)
  except json.JSONDecodeError as e:
    raise ArchError(f"{path}: not valid JSON ({e})") from None
  return Architecture.from_dict(d, source=path)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def validate(a: Architecture) -> None:
  """Raises ArchError with a one-line message if `a` cannot be built."""
  if a.family not in FAMILIES:
    raise ArchError(f"family={a.family!r}: allowed: {', '.join(FAMILIES)}")
  for field in ("num_classes", "input_size", "input_channels", "stem_width"):
    v = getattr(a, field)
    if not _is_int(v) or v < 1:
      raise ArchError(f"{field}={v!r}: must be a positive integer")
  if not isinstance(a.projection_bn, bool):
    raise ArchError(f"projection_bn={a.projection_bn!r}: must be true or false")
  if a.downsample not in DOWNSAMPLES:
    raise ArchError(
      f"downsample={a.downsample!r}: allowed: {', '.join(DOWNSAMPLES)} (TAS's "
      "2x2 average pool + 1x1 conv, or torchvision's 1x1 conv with stride 2)"
    )
  n_stages = _NUM_STAGES[a.dataset_kind]
  if len(a.stages) != n_stages:
    raise ArchError(f"stages: {a.family} networks have {n_stages} stages, got {len(a.stages)}")
  # Every stride-2 step (conv and the 2x2 average pool of its shortcut) must see an even map.
  downsampling = n_stages - 1 + (2 if a.dataset_kind == "imagenet" else 0)
  if a.input_size % (2**downsampling):
    raise ArchError(
      f"input_size={a.input_size}: {a.dataset_kind} networks need a multiple of "
      f"{2**downsampling} (every stride-2 step must see an even map)"
    )
  n_convs = _CONVS_PER_BLOCK[a.block_kind]
  for s, stage in enumerate(a.stages):
    if len(stage) < 1:
      raise ArchError(f"stages[{s}]: a stage keeps at least one block (its first), got none")
    for b, widths in enumerate(stage):
      if len(widths) != n_convs:
        raise ArchError(
          f"stages[{s}][{b}]: a {a.block_kind} block has {n_convs} conv widths, got {len(widths)}"
        )
      for w in widths:
        if w < 1:
          raise ArchError(f"stages[{s}][{b}]: widths must be positive integers, got {list(widths)}")
  blocks = {
    f"stage{s + 1}.block{b + 1}" for s, stage in enumerate(a.stages) for b in range(len(stage))
  }
  for name in a.projections:
    if name not in blocks:
      raise ArchError(
        f"projections: {name!r} is not a kept block (blocks are named like 'stage1.block1')"
      )


# --------------------------------------------------------------------------------------------
# Named unpruned networks (Dong & Yang 2019's networks, as released)
# --------------------------------------------------------------------------------------------

CIFAR_DEPTHS_BASIC = (20, 32, 56, 110)
CIFAR_DEPTHS_BOTTLENECK = (164,)
IMAGENET_DEPTHS = {
  18: ("basic", (2, 2, 2, 2)),
  34: ("basic", (3, 4, 6, 3)),
  50: ("bottleneck", (3, 4, 6, 3)),
  101: ("bottleneck", (3, 4, 23, 3)),
}


def cifar_resnet(
  depth: int,
  block: str = "basic",
  num_classes: int = 10,
  input_size: int = 32,
  input_channels: int = 3,
) -> Architecture:
  """The unpruned CIFAR ResNet of a depth: 6n+2 (basic) or 9n+2 (bottleneck)."""
  per_block = 6 if block == "basic" else 9
  if block not in _CONVS_PER_BLOCK:
    raise ArchError(f"block={block!r}: allowed: basic, bottleneck")
  if not _is_int(depth) or depth < per_block + 2 or (depth - 2) % per_block:
    examples = CIFAR_DEPTHS_BASIC if block == "basic" else (29, 56, 164)
    raise ArchError(
      f"depth={depth!r}: a CIFAR {block} ResNet needs depth = {per_block}n+2 "
      f"with n >= 1 (e.g. {', '.join(map(str, examples))})"
    )
  n = (depth - 2) // per_block
  stages = []
  for planes in (16, 32, 64):
    widths = (planes, planes) if block == "basic" else (planes, planes, 4 * planes)
    stages.append((widths,) * n)
  return Architecture(
    family=f"cifar_{block}",
    num_classes=num_classes,
    input_size=input_size,
    input_channels=input_channels,
    stem_width=16,
    stages=tuple(stages),
    name=f"resnet{depth}",
  )


def imagenet_resnet(
  depth: int,
  num_classes: int = 1000,
  input_size: int = 224,
  input_channels: int = 3,
  downsample: str = "pool_conv",
) -> Architecture:
  """The unpruned ImageNet ResNet-18/34/50/101; `downsample="strided_conv"` is torchvision's
  ResNet (v1.5: the stride on the 3x3 conv of a bottleneck, as here)."""
  if depth not in IMAGENET_DEPTHS:
    raise ArchError(f"depth={depth!r}: ImageNet ResNets: {', '.join(map(str, IMAGENET_DEPTHS))}")
  block, blocks = IMAGENET_DEPTHS[depth]
  stages = []
  for s, n in enumerate(blocks):
    planes = 64 * 2**s
    widths = (planes, planes) if block == "basic" else (planes, planes, 4 * planes)
    stages.append((widths,) * n)
  return Architecture(
    family=f"imagenet_{block}",
    num_classes=num_classes,
    input_size=input_size,
    input_channels=input_channels,
    stem_width=64,
    stages=tuple(stages),
    downsample=downsample,
    name=f"resnet{depth}_tv" if downsample == "strided_conv" else f"imagenet_resnet{depth}",
  )


NAMED = {
  **{f"resnet{d}": (lambda d=d: cifar_resnet(d)) for d in CIFAR_DEPTHS_BASIC},
  "resnet164": lambda: cifar_resnet(164, "bottleneck"),
  "imagenet_resnet18": lambda: imagenet_resnet(18),
  "imagenet_resnet50": lambda: imagenet_resnet(50),
  # torchvision's topology: what its pretrained weights run on (python -m tas_jax.convert)
  "resnet18_tv": lambda: imagenet_resnet(18, downsample="strided_conv"),
  "resnet50_tv": lambda: imagenet_resnet(50, downsample="strided_conv"),
}


def named(name: str) -> Architecture:
  """A named unpruned network: resnet20/32/56/110/164 (CIFAR-10), imagenet_resnet18/50 (TAS's
  ImageNet form), resnet18_tv/resnet50_tv (torchvision's)."""
  if name not in NAMED:
    raise ArchError(f"unknown architecture {name!r}; named ones: {', '.join(NAMED)}")
  return NAMED[name]()


def resolve(name_or_path: str) -> Architecture:
  """A named architecture, or one read from a JSON file."""
  if name_or_path in NAMED:
    return named(name_or_path)
  if name_or_path.endswith(".json") or os.path.sep in name_or_path:
    return load(name_or_path)
  raise ArchError(
    f"{name_or_path!r} is neither a named architecture ({', '.join(NAMED)}) "
    "nor a .json architecture file"
  )
