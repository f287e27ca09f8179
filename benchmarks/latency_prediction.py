"""`python -m benchmarks.latency_prediction`: how well a latency table predicts whole networks.

    python -m benchmarks.latency_prediction --network=resnet20 --batch=256 --archs=24 \\
        --workdir=runs/latency

Builds (or reads from WORKDIR/latency/) the table of the network's TAS search space, draws
`--archs` random architectures of the space (uniform widths and depths; the unpruned and the
narrowest network among them), and measures each one's whole forward pass (interleaved, median of
`--repeats`). Prints one JSON line: the Pearson and Spearman correlation of the table's sum with
the measured time, the mean relative error of the sum, and the same after one fitted scale factor
(the table misses the residual adds, pooling, classifier and per-call overhead).
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags

from benchmarks import bench
from tas_jax import latency
from tas_jax.methods.tas import space as space_lib
from tas_jax.models import channels, topology

# --network (resnetN) and --batch (of the table and the measured passes) are benchmarks.bench's
flags.DEFINE_integer("archs", 24, "random architectures (the unpruned and the narrowest added)")
# --repeats (timed calls per architecture; the figure is their median) is benchmarks.bench's
flags.DEFINE_string("workdir", "runs/latency", "where the table is cached")
flags.DEFINE_integer("draw_seed", 0, "of the architecture draw")
flags.DEFINE_enum(
  "widths",
  "space",
  ["space", "any"],
  "space: widths among TAS's candidates (on the table); any: every channel group at a uniform "
  "width in [1, its full width], full depth, as PaS, L1 and FPGM keep (priced interpolated and on "
  "entries measured at those widths)",
)
FLAGS = flags.FLAGS


def quality(predicted: np.ndarray, measured: np.ndarray) -> dict:
  """How well `predicted` tracks `measured`: correlations, mean relative error before and after
  one fitted scale."""
  rank = lambda v: np.argsort(np.argsort(v))
  scale = float(np.sum(predicted * measured) / np.sum(predicted * predicted))
  rel = np.abs(predicted - measured) / measured
  rel_scaled = np.abs(scale * predicted - measured) / measured
  return {
    "pearson": round(float(np.corrcoef(predicted, measured)[0, 1]), 4),
    "spearman": round(float(np.corrcoef(rank(predicted), rank(measured))[0, 1]), 4),
    "mean_relative_error": round(float(rel.mean()), 4),
    "fitted_scale": round(scale, 4),
    "mean_relative_error_after_scale": round(float(rel_scaled.mean()), 4),
  }


def draw(space, base, rng) -> object:
  if FLAGS.widths == "space":
    return space.architecture(
      [rng.integers(0, s.num_valid) for s in space.slots],
      [rng.integers(0, len(d)) for d in space.depths],
    )
  kept = {g.name: list(range(rng.integers(1, g.size + 1))) for g in channels.of(base).groups}
  return channels.pruned_architecture(base, kept)


def main(_):
  base = bench.cifar_network(FLAGS.network)
  space = space_lib.build(base)
  table = latency.build(base, FLAGS.workdir, FLAGS.batch)
  rng = np.random.default_rng(FLAGS.draw_seed)
  archs = [base, space.architecture([0] * space.num_slots, [0] * len(space.depths))]
  archs += [draw(space, base, rng) for _ in range(FLAGS.archs)]
  measured = np.array(latency.measured_network_seconds(archs, FLAGS.batch, FLAGS.repeats))
  base_convs = {c.name: c for c in topology.of(base).convs()}
  interpolate = lambda a: sum(  # any widths: no inserted projections, every conv is the base's
    float(latency.conv_latency(table, base, base_convs[c.name], c.in_width, c.out_width))
    for c in topology.of(a).convs()
  )
  interpolated = np.array([interpolate(a) for a in archs]) if FLAGS.widths == "any" else None
  on_table = len(table.seconds)
  predicted = np.array([latency.predicted(table, base, a) for a in archs])
  d = jax.devices()[0]
  out = {
    "network": base.name,
    "batch": FLAGS.batch,
    "device": f"{d.platform} ({d.device_kind})",
    "widths": FLAGS.widths,
    "table_entries": on_table,
    "entries_measured_on_demand": len(table.seconds) - on_table,
    "architectures": len(archs),
    **quality(predicted, measured),
  }
  if FLAGS.widths == "any":
    out["interpolated"] = quality(interpolated, measured)
  out["unpruned_ms"] = {
    "predicted": round(1e3 * predicted[0], 3),
    "measured": round(1e3 * measured[0], 3),
  }
  out["pairs_ms"] = [[round(1e3 * p, 3), round(1e3 * m, 3)] for p, m in zip(predicted, measured)]
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
