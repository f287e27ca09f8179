"""The extraction of a weight-keeping method (PaS, L1-norm, FPGM), written the same way for all.

From the unpruned network, its trained variables and the kept channel indices of every group
(`tas_jax.models.channels`), `write` cuts the smaller network and fills WORKDIR/extract-METHOD/:

- `arch.json`: the pruned network, which the distill stage trains;
- `weights/`: an Orbax checkpoint of its {"params", "batch_stats"}, which a distill run with
  `init=searched` fine-tunes (`read_weights`);
- `kept_channels.json`: the kept output channels of every conv and the classifier's inputs;
- `report.md`, `widths.png` and `summary.json`: FLOPs and parameters before and after, and
  whether the FLOPs landed within `target.tolerance` of `target.flop_ratio`;
- for a RepVGG, also `training_form/` (the unpruned network's variables in training form),
  `base_arch.json` and `kept_groups.json`: its fine-tuning runs the training form with the masks
  frozen (`channels.Gated`) and cuts it at the end, as released PaS does — the cut deploy form has
  no BN left to train. A cut ResNet keeps every BN, and training it is training the frozen-mask
  network (a removed channel is zero after its ReLU, so the kept weights see the same gradients):
  it is fine-tuned as it is.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from tas_jax import latency, plots, target as target_lib, workdir as layout
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.models import channels, networks, repvgg
from tas_jax.ops import flops
from tas_jax.training import checkpoint


def rows(base, kept_counts: dict) -> list[dict]:
  """The report's table: every main conv's original and kept width."""
  groups = channels.of(base)
  if isinstance(groups, channels.TracedGroups):  # a user's model: one row per traced group
    return [
      {"layer": g.name, "original": g.size, "width": kept_counts[g.name], "removed": False}
      for g in groups.groups
    ]
  return [
    {
      "layer": c.name,
      "original": c.out_width,
      "width": kept_counts[groups.conv_groups[c.name][1]],
      "removed": False,
    }
    for c in channels.main_convs(base)
  ]


def save_weights(path: str, variables: dict) -> None:
  """An Orbax checkpoint of the extracted network's variables (replaced if it exists)."""
  checkpoint.save_tree(path, variables)


def read_weights(workdir: str, method: str, abstract: dict) -> dict:
  """{"params", "batch_stats"} that `method`'s extraction wrote for its pruned network."""
  path = os.path.abspath(os.path.join(layout.extract_dir(workdir, method), layout.WEIGHTS))
  if not os.path.exists(path):
    raise CheckpointNotFoundError(
      f"{path} is missing: run --config.stage="
      f"{layout.stage_flags('extract', method)} with this --workdir first"
    )
  return checkpoint.restore_tree(path, abstract)


def trains_in_training_form(base) -> bool:
  """Whether a pruned `base` is fine-tuned at full width with frozen masks (RepVGG) rather than
  cut (ResNet); see the module's docstring."""
  return isinstance(base, repvgg.RepVGGArch)


def training_form(workdir: str, method: str):
  """(the unpruned architecture, kept indices per group) of an extraction written for fine-tuning
  in training form, or None."""
  out_dir = layout.extract_dir(workdir, method)
  if not os.path.isdir(os.path.join(out_dir, layout.TRAINING_FORM)):
    return None
  with open(os.path.join(out_dir, layout.KEPT_GROUPS)) as f:
    kept = json.load(f)
  return networks.load(os.path.join(out_dir, layout.BASE_ARCH)), kept


def read_training_form(workdir: str, method: str, abstract: dict) -> dict:
  """{"params", "batch_stats"} of the unpruned network in training form (`training_form`)."""
  return checkpoint.restore_tree(
    os.path.join(layout.extract_dir(workdir, method), layout.TRAINING_FORM), abstract
  )


def size_rows(summary: dict) -> list[str]:
  """The report's original/pruned table of FLOPs and params (every extraction's report.md)."""
  b, p = summary["before"], summary["after"]
  return [
    "| | original | pruned | kept |",
    "|---|---|---|---|",
    f"| FLOPs (M) | {b['flops_m']:.2f} | {p['flops_m']:.2f} | "
    f"{100 * summary['flops_ratio']:.1f}% |",
    f"| params (M) | {b['params_m']:.4f} | {p['params_m']:.4f} | "
    f"{100 * p['params_m'] / b['params_m']:.1f}% |",
  ]


def _markdown(title: str, source: str, summary: dict, table: list[dict]) -> str:
  lines = [
    f"# {title}: extracted network {summary['architecture']}",
    "",
    f"{source}; the weights of the kept channels are in `weights/`.",
    "",
    *size_rows(summary),
    "",
    f"Target {100 * summary['target']:.0f}% of the original {target_lib.LABELS[summary['cost']]}.",
    "",
    *latency.report_lines(summary.get("latency")),
    "| layer | original width | kept channels | kept |",
    "|---|---|---|---|",
  ]
  lines += [
    f"| {r['layer']} | {r['original']} | {r['width']} | {100 * r['width'] / r['original']:.0f}% |"
    for r in table
  ]
  return "\n".join(lines) + "\n"


def write(
  config: ml_collections.ConfigDict,
  workdir: str,
  method: str,
  title: str,
  source: str,
  base,
  variables: dict,
  kept: dict,
  extra: dict | None = None,
  advice: str = "",
) -> dict:
  """Cuts `kept` out of `base` with `variables`, writes WORKDIR/extract-METHOD/ (see above) and
  returns its summary. `title` / `source` head the report ("PaS", "From the PaS search checkpoint
  at step 40"); `extra` joins the summary; `advice` follows the warning of a missed target."""
  out_dir = layout.extract_dir(workdir, method)
  stage = layout.extract_stage(method)
  ratio, tolerance = config.target.flop_ratio, config.target.tolerance
  groups = channels.of(base)
  counts = channels.counts(kept)
  kept_ratio = flops.with_kept(groups, counts) / flops.count(base).flops  # named by what it kept
  pruned, weights = channels.cut(
    base, variables, kept, name=f"{base.name or 'custom'}_{method}{round(100 * kept_ratio)}"
  )
  before, after = flops.count(base), flops.count(pruned)
  if after.flops != flops.with_kept(groups, counts):
    raise AssertionError(
      f"extracted FLOPs {after.flops} differ from the count at the kept widths "
      f"{flops.with_kept(groups, counts)}"
    )
  table = rows(base, counts)
  summary = {
    "stage": stage,
    "finished": True,
    "method": method,
    "architecture": pruned.name,
    "target": ratio,
    "cost": config.target.cost,
    "flops_ratio": after.flops / before.flops,
    "before": {"flops_m": round(before.flops_m, 4), "params_m": round(before.params_m, 6)},
    "after": {"flops_m": round(after.flops_m, 4), "params_m": round(after.params_m, 6)},
    "kept": counts,
    "layers": table,
    **(extra or {}),
  }
  target = target_lib.Target.build(config, base, workdir, quiet=True)
  report = target.report(config, workdir, pruned)
  if report is not None:
    summary["latency"] = report
  on_target = target.on_target_ratio(summary["flops_ratio"], report)
  summary["in_band"] = target.in_band(on_target)
  os.makedirs(out_dir, exist_ok=True)
  save_weights(os.path.join(out_dir, layout.WEIGHTS), weights)  # every process: Orbax is collective
  if trains_in_training_form(base):
    save_weights(os.path.join(out_dir, layout.TRAINING_FORM), jax.device_get(variables))
  if layout.is_writer():
    if trains_in_training_form(base):
      base.save(os.path.join(out_dir, layout.BASE_ARCH))
      with open(os.path.join(out_dir, layout.KEPT_GROUPS), "w") as f:
        json.dump({g: [int(i) for i in idx] for g, idx in kept.items()}, f)
    pruned.save(os.path.join(out_dir, layout.ARCH))
    with open(os.path.join(out_dir, layout.KEPT_CHANNELS), "w") as f:
      json.dump(groups.per_conv(kept), f)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(_markdown(title, source, summary, table))
    plots.plot_widths(
      table,
      os.path.join(out_dir, "widths.png"),
      f"{pruned.name}: {after.flops_m:.2f} M FLOPs ({100 * summary['flops_ratio']:.1f}% "
      f"of {before.flops_m:.2f} M)",
    )
  if not summary["in_band"]:
    logging.warning(
      "[%s] %s has %.1f%% of the %s, more than target.tolerance=%g from the target %.0f%%%s",
      stage,
      pruned.name,
      100 * on_target,
      target.label,
      tolerance,
      100 * ratio,
      f" ({advice})" if advice else "",
    )
  layout.write_summary(out_dir, summary)
  logging.info(
    "[%s] %s: %.2f M FLOPs = %.1f%% of %.2f M (target %.0f%%), %.4f M params (%.4f M); "
    "wrote arch.json, weights/, kept_channels.json, report.md and widths.png to %s",
    stage,
    pruned.name,
    after.flops_m,
    100 * summary["flops_ratio"],
    before.flops_m,
    100 * ratio,
    after.params_m,
    before.params_m,
    out_dir,
  )
  if "latency" in summary:
    latency.log_report(stage, pruned.name, summary["latency"], logging.info)
  return summary
