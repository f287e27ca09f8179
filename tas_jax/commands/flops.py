"""`python -m tas_jax.flops NAME_OR_ARCH_JSON [--json] [--layers]`: FLOPs and parameters.

NAME is one of the named unpruned networks (resnet20/32/56/110/164 on CIFAR-10,
imagenet_resnet18/50, torchvision's resnet18_tv/resnet50_tv, repvgg_a0/b1); anything ending in .json
is read as an architecture description. FLOPs are multiply-adds in the TAS convention (see
`tas_jax.ops.flops`: every conv and the classifier; BN, ReLU and pooling free) — the convention of
torchvision's published GFLOPS, whose figures are printed beside the count for its networks.
"""

from __future__ import annotations

import json

from absl import app, flags

from tas_jax.commands import guarded
from tas_jax.models import arch as arch_lib, networks
from tas_jax.ops import flops

# published figures of named networks: (source, GFLOPs as multiply-adds, parameters)
PUBLISHED = {
  "resnet18_tv": ("torchvision's ResNet18_Weights meta", 1.814, 11_689_512),
  "resnet50_tv": ("torchvision's ResNet50_Weights meta", 4.089, 25_557_032),
}


def report(a: arch_lib.Architecture, counts: flops.Counts, with_layers: bool) -> str:
  lines = [
    f"{a.name or 'architecture'} ({a.family}, {a.input_size}x{a.input_size}x"
    f"{a.input_channels} input, {a.num_classes} classes, blocks per stage "
    f"{list(a.depths)})",
    f"FLOPs: {counts.flops_m:.2f} M   params: {counts.params_m:.3f} M",
  ]
  if a.name in PUBLISHED and a == arch_lib.resolve(a.name):
    source, gflops, params = PUBLISHED[a.name]
    lines.append(
      f"published ({source}): {gflops:.3f} G FLOPs, {params / 1e6:.6f} M params; "
      f"counted here: {counts.flops / 1e9:.3f} G, {counts.params / 1e6:.6f} M"
    )
  if with_layers:
    lines.append(f"{'layer':<24}{'k':>3}{'in':>6}{'out':>6}{'map':>5}{'MFLOPs':>10}{'params':>10}")
    for l in counts.layers:
      lines.append(
        f"{l.name:<24}{l.kernel:>3}{l.in_width:>6}{l.out_width:>6}{l.out_size:>5}"
        f"{l.flops / 1e6:>10.3f}{l.params:>10d}"
      )
  return "\n".join(lines)


def main() -> None:
  as_json = flags.DEFINE_bool("json", False, 'print one line {"flops_m": …, "params_m": …}')
  layers = flags.DEFINE_bool("layers", False, "also list every layer")

  def run(argv) -> int:
    if len(argv) != 2:
      raise app.UsageError(
        f"one architecture: a named network ({', '.join(networks.NAMED)}) or "
        "an architecture .json file"
      )
    a = guarded(networks.resolve, argv[1])
    counts = flops.count(a)
    if as_json.value:
      print(
        json.dumps({"flops_m": round(counts.flops_m, 4), "params_m": round(counts.params_m, 6)})
      )
    else:
      print(report(a, counts, layers.value))
    return 0

  app.run(run)
