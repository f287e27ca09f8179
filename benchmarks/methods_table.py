"""`python -m benchmarks.methods_table --root=runs/methods39`: the six methods' tables from the
workdirs `benchmarks/methods_table.sh` made — per target, each method's test accuracy (mean ± std
over seeds) with its paper's own fine-tuning and with the common KD recipe, FLOPs, params and the
measured speed-up (per seed: the machine is shared), and TAS's accuracy against each other
method's under the common recipe, seed by seed (one teacher per seed, so the pairs share it)."""

from __future__ import annotations

import collections
import glob
import json
import os
import re

import numpy as np
from absl import app, flags

flags.DEFINE_string("root", "runs/methods39", "the ROOT of benchmarks/methods_table.sh")
FLAGS = flags.FLAGS

METHODS = [  # (label, paper-recipe run, common-recipe run)
  ("TAS", "tas-kd", "tas-kd"),
  ("PaS", "pas-ce", "pas-kd"),
  ("L1-norm", "l1-ce", "l1-kd"),
  ("FPGM", "fpgm-ce", "fpgm-kd"),
  ("uniform width", "uniform-ce", "uniform-kd"),
  ("random width", "random-ce", "random-kd"),
]


def _rows(path: str) -> dict:
  with open(path) as f:
    return {r["run"]: r for r in json.load(f)["rows"]}


def collect(root: str) -> dict:
  """{target: {seed: {"paper": rows, "common": rows}}} of every finished results table."""
  out = collections.defaultdict(dict)
  for d in sorted(glob.glob(os.path.join(root, "s*_t*"))):
    m = re.fullmatch(r"s(\d+)_t([0-9.]+)", os.path.basename(d))
    tables = {k: os.path.join(d, k, "results.json") for k in ("paper", "common")}
    if m and all(os.path.exists(p) for p in tables.values()):
      out[m[2]][int(m[1])] = {k: _rows(p) for k, p in tables.items()}
  return out


def _acc(values: list[float]) -> str:
  v = 100 * np.asarray(values)
  spread = f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else ""
  return f"{v.mean():.2f}{spread}% ({' / '.join(f'{x:.1f}' for x in v)})"


def table(target: str, seeds: dict) -> list[str]:
  order = sorted(seeds)
  lines = [
    f"### Target {float(target):.0%} of the FLOPs, seeds {', '.join(map(str, order))}",
    "",
    "| method | paper's fine-tuning: test acc. | common KD recipe: test acc. | FLOPs (M) | "
    "params (M) | speed-up, paper's run (per seed) |",
    "|---|---|---|---|---|---|",
  ]
  teacher = [seeds[s]["paper"]["teacher"] for s in order]
  lines.append(
    f"| teacher | {_acc([r['test_accuracy'] for r in teacher])} | | "
    f"{np.mean([r['flops_m'] for r in teacher]):.2f} | "
    f"{np.mean([r['params_m'] for r in teacher]):.4f} | 1.00× |"
  )
  for label, paper, common in METHODS:
    p = [seeds[s]["paper"].get(paper) for s in order]
    c = [seeds[s]["common"].get(common) for s in order]
    if not all(p) or not all(c):
      continue
    lines.append(
      f"| {label} ({paper} / {common}) | {_acc([r['test_accuracy'] for r in p])} | "
      f"{_acc([r['test_accuracy'] for r in c])} | {np.mean([r['flops_m'] for r in p]):.2f} | "
      f"{np.mean([r['params_m'] for r in p]):.4f} | "
      f"{' / '.join('%.2f' % r['speedup'] for r in p)}× |"
    )
  return lines + [""] + paired(seeds, order)


def paired(seeds: dict, order: list) -> list[str]:
  """TAS + KD minus each other method under the common recipe, per seed and on average, in
  points: a difference that keeps its sign on every seed is worth more than the means' gap."""
  tas = [seeds[s]["common"].get("tas-kd") for s in order]
  lines = [
    "| common KD recipe: TAS minus | per seed (points) | mean | same sign on every seed |",
    "|---|---|---|---|",
  ]
  for label, _, common in METHODS[1:]:
    other = [seeds[s]["common"].get(common) for s in order]
    if not all(tas) or not all(other):
      continue
    d = 100 * np.array([t["test_accuracy"] - o["test_accuracy"] for t, o in zip(tas, other)])
    same = "yes" if (np.all(d > 0) or np.all(d < 0)) and len(d) > 1 else "no"
    lines.append(
      f"| {label} ({common}) | {' / '.join(f'{x:+.1f}' for x in d)} | {d.mean():+.2f} | {same} |"
    )
  return lines + [""]


def main(_):
  found = collect(FLAGS.root)
  if not found:
    raise SystemExit(f"no finished s*_t*/{{paper,common}}/results.json under {FLAGS.root}")
  for target in sorted(found, key=float, reverse=True):  # the milder target first
    print("\n".join(table(target, found[target])))


if __name__ == "__main__":
  app.run(main)
