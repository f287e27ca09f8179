"""`python -m benchmarks.latency_vs_flops --seed=S --root=runs/lat25`: TAS aiming at latency
against TAS aiming at FLOPs, at the same measured latency (issue 25's results, one seed).

On the embedded demo (`configs/demo.py`), from a teacher already trained in `--teacher_from`
(copied, with the latency table of `--table_from`, into every workdir it makes):
1. `target.cost=latency` at `target.flop_ratio` (the table latency's ratio): search, extract (its
   report measures the pruned network's latency against the teacher's), distill with KD;
2. `target.cost=flops`, bisecting the FLOPs target until the extracted network's measured
   latency ratio is within `--match` of the first one's (regula falsi on the measured ratio, at
   most `--max_searches` searches; the target 0.5 search may be copied from `--flops50_from`);
   the closest one is distilled with KD.
Every step is a `python -m tas_jax.main` run in its own workdir under ROOT/sS, so rerunning the
same command resumes where it stopped. Prints one JSON line per finished network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from absl import app, flags

flags.DEFINE_integer("seed", 0, "config.seed of every run")
flags.DEFINE_string("root", "runs/lat25", "workdirs go to ROOT/sSEED/…")
flags.DEFINE_string("teacher_from", "runs/six/s{seed}", "a workdir holding the seed's teacher")
flags.DEFINE_string(
  "flops50_from",
  "runs/six/s{seed}",
  "a workdir whose search is TAS at 50% "
  "FLOPs with this seed (copied instead of searching again); '' to search",
)
flags.DEFINE_string("table_from", "runs/lat25", "a workdir holding the latency table")
flags.DEFINE_float("target", 0.5, "the latency target of the latency-aware search")
flags.DEFINE_float("match", 0.02, "measured latency ratios this close count as matched")
flags.DEFINE_integer("max_searches", 4, "FLOPs searches of the bisection at most")
flags.DEFINE_bool("summarize", False, "only print the markdown table of ROOT/s*/ (finished seeds)")
flags.DEFINE_integer(
  "remeasure",
  0,
  "with --summarize: time the teacher and both pruned networks "
  "of every seed again, interleaved, median of this many calls (0: no)",
)
FLAGS = flags.FLAGS


def prepare(workdir: str, search_from: str = "") -> None:
  seed = FLAGS.seed
  os.makedirs(workdir, exist_ok=True)
  for sub, src in (
    ("teacher", FLAGS.teacher_from.format(seed=seed)),
    ("latency", FLAGS.table_from),
    ("search", search_from),
  ):
    if src and not os.path.exists(os.path.join(workdir, sub)):
      shutil.copytree(os.path.join(src, sub), os.path.join(workdir, sub))


def run(workdir: str, stage: str, *overrides: str) -> None:
  cmd = [
    sys.executable,
    "-m",
    "tas_jax.main",
    "--config=configs/demo.py",
    f"--workdir={workdir}",
    f"--config.seed={FLAGS.seed}",
    f"--config.stage={stage}",
    "--config.pipeline.runs=tas-kd",
    "--config.latency.report=true",
    *overrides,
  ]
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def summary(workdir: str, stage: str) -> dict:
  with open(os.path.join(workdir, stage, "summary.json")) as f:
    return json.load(f)


def network(workdir: str, cost: str, target: float, *overrides: str) -> dict:
  """Search + extract (+ the measured latency) of one setting; its extract summary."""
  run(workdir, "search", *overrides)
  run(workdir, "extract", *overrides)
  e = summary(workdir, "extract")
  return {
    "cost": cost,
    "target": target,
    "workdir": workdir,
    "flops_ratio": e["flops_ratio"],
    "depths": e["after"]["depths"],
    **{f"latency_{k}": v for k, v in e["latency"].items()},
  }


def distilled(row: dict, *overrides: str) -> dict:
  run(row["workdir"], "distill", *overrides)
  d = summary(row["workdir"], "distill/tas-kd")
  return {**row, "test_accuracy": d["test_accuracy"], "flops_m": d["flops_m"]}


def _row(workdir: str) -> dict:
  e, d = summary(workdir, "extract"), summary(workdir, "distill/tas-kd")
  return {
    "accuracy": d["test_accuracy"],
    "flops": e["flops_ratio"],
    "depths": e["after"]["depths"],
    "predicted": e["latency"]["predicted_ratio"],
    "measured": e["latency"]["measured_ratio"],
  }


def summarize() -> None:
  """The table of every seed whose two distill runs have finished, and the mean ± std."""
  import glob
  import statistics

  rows = []
  for seed_dir in sorted(glob.glob(os.path.join(FLAGS.root, "s*"))):
    flops_dirs = [
      w
      for w in glob.glob(os.path.join(seed_dir, "flops_*"))
      if os.path.exists(os.path.join(w, "distill", "tas-kd", "summary.json"))
    ]
    lat_dir = os.path.join(seed_dir, "latency_cost")
    if not flops_dirs or not os.path.exists(
      os.path.join(lat_dir, "distill", "tas-kd", "summary.json")
    ):
      continue
    target = float(os.path.basename(flops_dirs[0])[len("flops_") :])
    rows.append((os.path.basename(seed_dir), _row(lat_dir), _row(flops_dirs[0]), target))
  if FLAGS.remeasure:  # all networks of a seed in one interleaved measurement, machine idle
    from tas_jax import latency
    from tas_jax.models import networks

    for seed, lat, flo, target in rows:
      archs = [
        networks.load(os.path.join(FLAGS.root, seed, d, sub, "arch.json"))
        for d, sub in (
          ("latency_cost", "teacher"),
          ("latency_cost", "extract"),
          (f"flops_{target:.3f}", "extract"),
        )
      ]
      t = latency.measured_network_seconds(archs, 256, FLAGS.remeasure)
      lat["remeasured"], flo["remeasured"] = t[1] / t[0], t[2] / t[0]
  extra = " re-measured latency |" if FLAGS.remeasure else ""
  print(
    "| seed | search | FLOPs target | FLOPs | blocks | table latency | measured latency |"
    f"{extra} test accuracy (KD) |"
  )
  print("|---|---|---|---|---|---|---|---|" + ("---|" if FLAGS.remeasure else ""))
  for seed, lat, flo, target in rows:
    for name, r, t in (
      ("latency", lat, f"{FLAGS.target:.0%} of latency"),
      ("FLOPs", flo, f"{target:.3f}"),
    ):
      again = f" {r['remeasured']:.1%} |" if FLAGS.remeasure else ""
      print(
        f"| {seed} | TAS, cost={name.lower()} | {t} | {r['flops']:.1%} | {r['depths']} | "
        f"{r['predicted']:.1%} | {r['measured']:.1%} |{again} {r['accuracy']:.2%} |"
      )
  for name, i in (("latency", 1), ("FLOPs", 2)):
    if len(rows) > 1:
      acc = [r[i]["accuracy"] for r in rows]
      meas = [r[i]["measured"] for r in rows]
      fl = [r[i]["flops"] for r in rows]
      again = ""
      if FLAGS.remeasure:
        rem = [r[i]["remeasured"] for r in rows]
        again = f" {statistics.mean(rem):.1%} ± {statistics.stdev(rem):.1%} |"
      print(
        f"| mean ± std ({len(rows)} seeds) | TAS, cost={name.lower()} | | "
        f"{statistics.mean(fl):.1%} ± {statistics.stdev(fl):.1%} | | | "
        f"{statistics.mean(meas):.1%} ± {statistics.stdev(meas):.1%} |{again} "
        f"{statistics.mean(acc):.2%} ± {statistics.stdev(acc):.2%} |"
      )


def main(_):
  if FLAGS.summarize:
    return summarize()
  base = os.path.join(FLAGS.root, f"s{FLAGS.seed}")
  lat_dir = os.path.join(base, "latency_cost")
  prepare(lat_dir)
  lat_args = ("--config.target.cost=latency", f"--config.target.flop_ratio={FLAGS.target}")
  lat = network(lat_dir, "latency", FLAGS.target, *lat_args)
  print(json.dumps(lat), flush=True)
  goal = lat["latency_measured_ratio"]

  tried = []  # (measured latency ratio, FLOPs target, row)
  target = 0.5
  for _ in range(FLAGS.max_searches):
    wd = os.path.join(base, f"flops_{target:.3f}")
    prepare(
      wd, FLAGS.flops50_from.format(seed=FLAGS.seed) if target == 0.5 and FLAGS.flops50_from else ""
    )
    row = network(wd, "flops", target, f"--config.target.flop_ratio={target}")
    print(json.dumps(row), flush=True)
    tried.append((row["latency_measured_ratio"], target, row))
    if abs(row["latency_measured_ratio"] - goal) <= FLAGS.match:
      break
    below = [t for t in tried if t[0] < goal]
    above = [t for t in tried if t[0] > goal]
    if below and above:  # regula falsi between the closest bracketing pair
      (m0, r0, _), (m1, r1, _) = max(below), min(above)
      target = r0 + (goal - m0) * (r1 - r0) / (m1 - m0)
    else:  # step along the FLOPs target by the latency gap
      target = target + (goal - row["latency_measured_ratio"])
    target = round(min(max(target, 0.1), 0.95), 3)
    if any(abs(target - t[1]) < 1e-3 for t in tried):
      break
  matched = min(tried, key=lambda t: abs(t[0] - goal))[2]
  print(json.dumps({"distilled": distilled(lat, *lat_args)}), flush=True)
  print(
    json.dumps(
      {"distilled": distilled(matched, f"--config.target.flop_ratio={matched['target']}")}
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
