"""Stage `extract`: the searched architecture as a file, a report and two plots (the released TAS
training recipe).

Runs as its own process after the search: it reads only the architecture logits (α, β) and the
recorded history from the latest search checkpoint (Orbax partial restore, no weights), takes the
argmax of every distribution and writes `WORKDIR/extract/`:

- `arch.json`: the pruned network (the format `tas_jax.models.arch` reads; `python -m
  tas_jax.flops` and the distill stage take it as it is);
- `report.md` / `summary.json`: width of every conv against the original, depth of every stage,
  FLOPs and parameters before and after, F(A) against the target;
- `widths.png`: pruned against original width per layer; `widths_over_epochs.png`: the argmax
  width of every layer after each search epoch, as a heat map.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from tas_jax import latency, plots, target as target_lib, workdir as layout
from tas_jax.errors import CheckpointNotFoundError, ConfigError
from tas_jax.methods import extraction
from tas_jax.methods.tas import spaces
from tas_jax.models import networks
from tas_jax.ops import flops
from tas_jax.training import checkpoint


def read_search(workdir: str) -> tuple[spaces.Space, dict, list[dict], int]:
  """(search space, architecture logits, per-epoch history, step) of the latest search
  checkpoint."""
  search_dir = layout.search_dir(workdir)
  base_path = os.path.join(search_dir, layout.BASE_ARCH)
  if not os.path.exists(base_path):
    raise CheckpointNotFoundError(
      f"no search in {search_dir} ({base_path} is missing): run --config.stage=search with this "
      "--workdir first"
    )
  space = spaces.of(networks.load(base_path))
  sharding = checkpoint.host_sharding()
  abstract = {
    "arch": jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      jax.eval_shape(space.init_logits, jax.random.key(0)),
    )
  }
  restored, meta, step = checkpoint.read_checkpoint(search_dir, abstract, "search")
  return space, jax.device_get(restored["arch"]), meta.get("history", []), step


def slot_table(space: spaces.Space, widths, depths) -> list[dict]:
  """One row per searched conv: original width, kept width (0 where its block was dropped)."""
  rows = []
  slot_block = {i: b for b in space.blocks for i in b.slots}
  for i, slot in enumerate(space.slots):
    block = slot_block.get(i)
    kept = block is None or block.index < depths[block.stage]
    rows.append(
      {
        "layer": slot.name,
        "original": slot.full,
        "width": widths[i] if kept else 0,
        "removed": not kept,
      }
    )
  return rows


def plot_history(space: spaces.Space, history: list[dict], path: str) -> None:
  """Heat map: rows = layers, columns = epochs, colour = argmax width / original (0 = dropped)."""
  full = np.array([s.full for s in space.slots], np.float32)
  ratios = np.stack(
    [[r["width"] for r in slot_table(space, h["widths"], h["depths"])] / full for h in history],
    axis=1,
  )
  plots.plot_width_history(
    [s.name for s in space.slots],
    ratios,
    path,
    "argmax width / original width after each epoch (0 = block dropped)",
  )


def _markdown(summary: dict, rows: list[dict]) -> str:
  b, p = summary["before"], summary["after"]
  lines = [
    f"# Extracted architecture: {summary['architecture']}",
    "",
    f"From the search checkpoint at step {summary['search_step']} "
    f"({summary['search_epochs_recorded']} epochs recorded).",
    "",
    *extraction.size_rows(summary),
    *([f"| blocks per stage | {b['depths']} | {p['depths']} | |"] if b["depths"] else []),
    "",
    f"F(A) = {100 * summary['flops_ratio']:.1f}% of F_max; target {100 * summary['target']:.0f}% "
    f"(band of the search: {summary['band']}).",
    "",
    *latency.report_lines(summary.get("latency")),
    "| layer | original width | pruned width | kept |",
    "|---|---|---|---|",
  ]
  for r in rows:
    kept = "block dropped" if r["removed"] else f"{100 * r['width'] / r['original']:.0f}%"
    lines.append(
      f"| {r['layer']} | {r['original']} | {r['width'] if not r['removed'] else '–'} | {kept} |"
    )
  return "\n".join(lines) + "\n"


def searched_variant(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The variant (tas / width / depth) the search in WORKDIR/search ran, from its own record:
  the argmax of an unsearched dimension is pinned by the variant, so the current config's must
  not decide it. A config asking for another one is refused."""
  search_dir = layout.search_dir(workdir)
  record = (layout.read_record(search_dir) or {}).get("fields", {})
  variant = record.get("search.variant") or (layout.read_summary(search_dir) or {}).get("variant")
  if variant is None:  # a search from before records: the config is all there is
    return config.search.variant
  if variant != config.search.variant:
    raise ConfigError(
      f"config.search.variant={config.search.variant!r}, but the search in "
      f"{search_dir} ran variant {variant!r}: extract with "
      f"--config.search.variant={variant}, or search again in a new --workdir"
    )
  return variant


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes WORKDIR/extract/ from the latest search checkpoint; returns the summary."""
  s, ratio = config.search, config.target.flop_ratio
  out_dir = layout.extract_dir(workdir)
  variant = searched_variant(config, workdir)
  space, logits, history, step = read_search(workdir)
  w_idx, d_idx = (np.asarray(v) for v in jax.device_get(space.argmax(logits, variant)))
  base = space.base
  final = space.named_architecture(w_idx, d_idx)
  widths = [slot.candidates[int(i)] for slot, i in zip(space.slots, w_idx)]
  rows = slot_table(space, widths, final.depths)
  before, after = flops.count(base), flops.count(final)
  target = target_lib.Target.build(config, base, workdir, quiet=True)
  low, high = target.band(s.band)
  summary = {
    "stage": "extract",
    "finished": True,
    "architecture": final.name,
    "variant": variant,
    "search_step": step,
    "search_epochs_recorded": len(history),
    "target": ratio,
    "band": f"{100 * low:.0f}%–{100 * high:.0f}% of F_max",
    "flops_ratio": after.flops / before.flops,
    "before": {
      "flops_m": round(before.flops_m, 4),
      "params_m": round(before.params_m, 6),
      "depths": list(base.depths),
    },
    "after": {
      "flops_m": round(after.flops_m, 4),
      "params_m": round(after.params_m, 6),
      "depths": list(final.depths),
    },
    "layers": rows,
  }
  report = target.report(config, workdir, final)
  if report is not None:
    summary["latency"] = report
  on_target = target.on_target_ratio(summary["flops_ratio"], report)
  if target.by_table:
    summary["band"] = summary["band"].replace("F_max", "the unpruned network's table latency")
  if layout.is_writer():
    os.makedirs(out_dir, exist_ok=True)
    final.save(os.path.join(out_dir, layout.ARCH))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(_markdown(summary, rows))
    plots.plot_widths(
      rows,
      os.path.join(out_dir, "widths.png"),
      f"{final.name}: {after.flops_m:.2f} M FLOPs ({100 * summary['flops_ratio']:.1f}% "
      f"of {before.flops_m:.2f} M), blocks {list(final.depths)} of {list(base.depths)}",
    )
    if history:
      plot_history(space, history, os.path.join(out_dir, "widths_over_epochs.png"))
  summary["in_band"] = target.in_band(on_target, s.band)
  if not summary["in_band"]:
    logging.warning(
      "[extract] %s has %.1f%% of the %s, outside the search's band %s: the "
      "search had not settled (more search.epochs, or the settled recipe: configs/demo_settled.py)",
      final.name,
      100 * on_target,
      target.label,
      summary["band"],
    )
  layout.write_summary(out_dir, summary)
  logging.info(
    "[extract] %s: %.2f M FLOPs = %.1f%% of %.2f M (target %.0f%% of the %s), %.4f M params "
    "(%.4f M)%s; wrote arch.json, report.md and plots to %s",
    final.name,
    after.flops_m,
    100 * summary["flops_ratio"],
    before.flops_m,
    100 * ratio,
    target.label,
    after.params_m,
    before.params_m,
    f", blocks per stage {list(final.depths)} of {list(base.depths)}" if base.depths else "",
    out_dir,
  )
  if "latency" in summary:
    latency.log_report("extract", final.name, summary["latency"], logging.info)
  return summary
