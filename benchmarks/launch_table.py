"""`python -m benchmarks.launch_table runs/side_by_side_search.jsonl`: the side-by-side launches
(`benchmarks/side_by_side_search.sh`) as one Markdown table of medians: from launch to the end of
the first search iteration, the released code against tas_jax with a cold and a warm compilation
cache, and tas_jax's ratios to the released code."""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def rows(lines: list[str]) -> list[str]:
  runs = defaultdict(list)
  for line in lines:
    if not line.startswith("{"):
      continue
    d = json.loads(line)
    if d.get("side") == "official" and "first_iteration_end_since_launch_s" in d:
      runs[d["depth"], "released"].append(d["first_iteration_end_since_launch_s"])
    elif d.get("side") == "tas_jax" and "launch" in d:
      depth = int(d["network"].removeprefix("resnet"))
      runs[depth, d["launch"]].append(d["launch_to_first_iteration_s"])
  out = [
    "| network | released code | tas_jax, cold cache | tas_jax, warm cache | cold / released "
    "| warm / released | rounds |",
    "|---|---|---|---|---|---|---|",
  ]
  for depth in sorted({k[0] for k in runs}):
    released, cold, warm = (runs[depth, k] for k in ("released", "cold", "warm"))
    if not (released and cold and warm):
      continue
    r, c, w = (statistics.median(x) for x in (released, cold, warm))
    out.append(
      f"| ResNet-{depth} | {r:.2f} s | {c:.2f} s | {w:.2f} s | {c / r:.2f}× | {w / r:.2f}× "
      f"| {min(len(released), len(cold), len(warm))} |"
    )
  return out


if __name__ == "__main__":
  with open(sys.argv[1] if len(sys.argv) > 1 else "runs/side_by_side_search.jsonl") as f:
    print("\n".join(rows(f.read().splitlines())))
