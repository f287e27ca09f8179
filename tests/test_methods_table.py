"""`python -m benchmarks.methods_table`: the RESULTS tables from the workdirs of
`benchmarks/methods_table.sh`, checked against figures worked out by hand."""

import json

from benchmarks import methods_table

RUNS = ["teacher", "tas-kd", "pas-ce", "pas-kd", "l1-ce", "l1-kd", "fpgm-ce", "fpgm-kd"]
RUNS += ["uniform-ce", "uniform-kd", "random-ce", "random-kd"]


def _write(root, seed, target, kind, accuracies):
  d = root / f"s{seed}_t{target}" / kind
  d.mkdir(parents=True)
  rows = [
    {"run": r, "test_accuracy": a, "flops_m": 10.0 + seed, "params_m": 0.1, "speedup": 1.5}
    for r, a in accuracies.items()
  ]
  (d / "results.json").write_text(json.dumps({"rows": rows}))


def test_means_spreads_and_per_seed_differences(tmp_path):
  for seed, tas, l1 in [(0, 0.86, 0.87), (1, 0.84, 0.86)]:
    acc = {r: 0.80 for r in RUNS} | {"tas-kd": tas, "l1-kd": l1, "teacher": 0.9}
    _write(tmp_path, seed, "0.5", "paper", acc)
    _write(tmp_path, seed, "0.5", "common", acc)
  _write(tmp_path, 0, "0.3", "paper", {r: 0.8 for r in RUNS})  # no common table yet: left out
  found = methods_table.collect(str(tmp_path))
  assert list(found) == ["0.5"] and sorted(found["0.5"]) == [0, 1]
  text = "\n".join(methods_table.table("0.5", found["0.5"]))
  assert "### Target 50% of the FLOPs, seeds 0, 1" in text
  # TAS: 86 and 84 -> mean 85.00, sample std sqrt(2) = 1.41; FLOPs the mean of 10 and 11
  assert "| TAS (tas-kd / tas-kd) | 85.00 ± 1.41% (86.0 / 84.0) |" in text
  assert "| 10.50 | 0.1000 | 1.50 / 1.50× |" in text
  # TAS minus L1 under the common recipe: 86 - 87 = -1, 84 - 86 = -2: the same sign on both
  assert "| L1-norm (l1-kd) | -1.0 / -2.0 | -1.50 | yes |" in text
  # TAS minus PaS: +6 and +4
  assert "| PaS (pas-kd) | +6.0 / +4.0 | +5.00 | yes |" in text
