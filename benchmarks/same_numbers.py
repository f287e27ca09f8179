"""`python -m benchmarks.same_numbers WORKDIR`: does `model.scan_blocks` change any number?

Runs the seeded tiny teacher and TAS search of the test pipeline (`tests/pipelines.py`: ResNet-8 on
2,000 embedded images; here ResNet-14, so that stage 3 has blocks to scan) twice, with every block
unrolled and with the equal blocks scanned, in WORKDIR/unrolled and WORKDIR/scanned, and prints
per epoch the teacher's losses and the search's losses, E[F], F(A) and architecture side by side,
with the largest relative difference. Exit status 1 if an architecture differs.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import pipelines  # noqa: E402

from tas_jax import main, workdir as layout  # noqa: E402

FIELDS = {
  "teacher": ("train_loss", "test_loss", "test_accuracy"),
  "search": ("train_loss", "train_arch_loss", "expected_flops_ratio", "flops_ratio"),
}


def run(workdir: str, scan_blocks: bool) -> dict:
  c = pipelines.config(model__depth=14, model__scan_blocks=scan_blocks, pipeline__runs="tas-kd")
  for stage in ("teacher", "search"):
    c.stage = stage
    main.run(c, workdir)
  return {
    stage: layout.read_summary(d)
    for stage, d in (
      ("teacher", layout.teacher_dir(workdir)),
      ("search", layout.search_dir(workdir)),
    )
  }


def main_(workdir: str) -> int:
  out = {
    name: run(os.path.join(workdir, name), name == "scanned") for name in ("unrolled", "scanned")
  }
  worst, same_arch = 0.0, True
  for stage, fields in FIELDS.items():
    for u, s in zip(out["unrolled"][stage]["history"], out["scanned"][stage]["history"]):
      row = []
      for f in fields:
        a, b = u[f], s[f]
        rel = abs(a - b) / max(abs(a), 1e-12)
        worst = max(worst, rel)
        row.append(f"{f} {a:.6g} / {b:.6g}")
      if stage == "search":
        same = (u["widths"], u["depths"]) == (s["widths"], s["depths"])
        same_arch &= same
        row.append(
          f"widths {u['widths']} depths {u['depths']}"
          + ("" if same else f" / widths {s['widths']} depths {s['depths']}")
        )
      print(f"{stage} epoch {u['epoch']}: " + "; ".join(row))
  same_arch &= out["unrolled"]["search"]["architecture"] == out["scanned"]["search"]["architecture"]
  print(json.dumps({"largest_relative_difference": worst, "same_architecture": same_arch}))
  return 0 if same_arch else 1


if __name__ == "__main__":
  sys.exit(main_(sys.argv[1] if len(sys.argv) > 1 else "/tmp/same_numbers"))
