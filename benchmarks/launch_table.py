"""`python -m benchmarks.launch_table runs/side_by_side_search.jsonl`: the side-by-side launches
(`benchmarks/side_by_side_search.sh`) as one Markdown table of medians: from launch to the end of
the first search iteration, the released code against tas_jax with a cold and a warm compilation
cache, and tas_jax's ratios to the released code; then every launch, round by round, with its
steady iteration and where its launch went (`--lines=false` leaves that table out)."""

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


def every_launch(lines: list[str]) -> list[str]:
  """One row per launch, in the order they ran; a round is one released launch and the tas_jax
  launches after it."""
  out = [
    "| round | network | launch | launch → end of 1st iteration (s) | iteration (s, median) "
    "| breakdown (s) |",
    "|---|---|---|---|---|---|",
  ]
  rounds: dict = defaultdict(int)
  for line in lines:
    if not line.startswith("{"):
      continue
    d = json.loads(line)
    if d.get("side") == "official" and "first_iteration_end_since_launch_s" in d:
      rounds[d["depth"]] += 1
      depth, launch, total = d["depth"], "released", d["first_iteration_end_since_launch_s"]
      iteration, parts = d["iteration_s_median"], f"setup {d['setup_s_since_launch']:.2f}"
    elif d.get("side") == "tas_jax" and "launch" in d:
      depth, launch = int(d["network"].removeprefix("resnet")), f"tas_jax {d['launch']}"
      total, iteration = d["launch_to_first_iteration_s"], d["search_iteration_s"]
      parts = ", ".join(f"{k} {v}" for k, v in d["breakdown"].items())
    else:
      continue
    out.append(
      f"| {rounds[depth]} | ResNet-{depth} | {launch} | {total:.2f} | {iteration:.2f} | {parts} |"
    )
  return out


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--")]
  with open(args[0] if args else "runs/side_by_side_search.jsonl") as f:
    lines = f.read().splitlines()
  print("\n".join(rows(lines)))
  if "--lines=false" not in sys.argv:
    print("\n" + "\n".join(every_launch(lines)))
