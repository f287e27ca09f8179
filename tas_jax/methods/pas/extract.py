"""Stage `extract` of PaS: the kept channels cut out into a physically smaller network, with weights.

Reads the latest PaS search checkpoint (weights, BN statistics and mask scalars; no optimiser
state), takes the kept channel *indices* of every mask group (1[v > 0.5], at least one per group)
and writes WORKDIR/extract-pas/:

- `arch.json`: the pruned network (same blocks and shortcuts as the original: every conv's width is
  its group's kept count), which the distill stage trains;
- `weights/`: an Orbax checkpoint of its {"params", "batch_stats"}: every conv's kernel gathered to
  its kept input and output channels, BN vectors to the kept outputs, the classifier to the kept
  inputs — the masked network's function in evaluation mode, as a plain ResNet;
- `kept_channels.json`: the kept output channel indices of every conv (and the classifier's
  inputs); `report.md`, `summary.json`, `widths.png`, `widths_over_epochs.png`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from tas_jax import plots, workdir as layout
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.methods.pas import masks as masks_lib
from tas_jax.methods.pas.search import METHOD, kept_channels
from tas_jax.models import arch as arch_lib, networks, repvgg, resnet, topology
from tas_jax.ops import flops
from tas_jax.training import loop


def read_search(workdir: str) -> tuple[arch_lib.Architecture, dict, list[dict], int]:
  """(original architecture, {"params", "batch_stats"} of the masked network, history, step)."""
  search_dir = layout.search_dir(workdir, METHOD)
  base_path = os.path.join(search_dir, layout.BASE_ARCH)
  if not os.path.exists(base_path):
    raise CheckpointNotFoundError(
        f"no PaS search in {search_dir} ({base_path} is missing): run --config.method=pas "
        "--config.stage=search with this --workdir first")
  base = networks.load(base_path)
  model = masks_lib.MaskedNetwork(base)
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), networks.dummy_input(base)))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          {"params": shapes["params"], "batch_stats": shapes["batch_stats"]})
  restored, meta, step = loop.read_checkpoint(search_dir, abstract,
                                             layout.stage_flags("search", METHOD))
  return base, jax.device_get(restored), meta.get("history", []), step


def pruned_architecture(base: arch_lib.Architecture, kept: dict, name: str = "") -> arch_lib.Architecture:
  """The original network with every main conv as wide as its output group's kept channels."""
  lay = masks_lib.layout(base)
  widths = [len(kept[lay.conv_groups[c.name][1]]) for c in topology.of(base).main_convs()]
  return topology.pruned(base, widths, base.depths, name=name, inherits=True)


def _get(tree: dict, path: tuple[str, ...]) -> dict:
  for key in path:
    tree = tree[key]
  return tree


def _put(tree: dict, path: tuple[str, ...], value: dict) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def gather_variables(base: arch_lib.Architecture, kept: dict, params: dict,
                     batch_stats: dict) -> tuple[dict, dict]:
  """The plain network's (params, batch_stats) gathered to the kept channels.

  `params` / `batch_stats` are the original ResNet's trees (the masked network's "network" part)."""
  lay = masks_lib.layout(base)
  new_params, new_stats = {}, {}
  for c in topology.of(base).convs():
    scope = resnet.variable_scope(c.name)
    group_in, group_out = lay.conv_groups[c.name]
    rows = np.arange(c.in_width) if group_in is None else np.asarray(kept[group_in])
    cols = np.asarray(kept[group_out])
    layer = _get(params, scope)
    entry = {"conv": {"kernel": np.asarray(layer["conv"]["kernel"])[:, :, rows][..., cols]}}
    if c.has_bn:
      entry["bn"] = {k: np.asarray(v)[cols] for k, v in layer["bn"].items()}
      _put(new_stats, scope, {"bn": {k: np.asarray(v)[cols]
                                     for k, v in _get(batch_stats, scope)["bn"].items()}})
    _put(new_params, scope, entry)
  head = np.asarray(kept[lay.head_group])
  new_params["classifier"] = {"kernel": np.asarray(params["classifier"]["kernel"])[head],
                              "bias": np.asarray(params["classifier"]["bias"])}
  return new_params, new_stats


def extract_network(base, variables: dict, name: str = ""):
  """(pruned architecture, {"params", "batch_stats"} of it, kept indices per group) of a masked
  network's variables ({"params": {"masks", "network"}, "batch_stats": {"network"}}).

  A RepVGG is reparameterised first (one 3x3 conv with bias per block), then squeezed: the pruned
  network is its deploy form, which has no BN statistics."""
  kept = kept_channels(variables["params"]["masks"])
  network = {"params": variables["params"]["network"],
             "batch_stats": variables["batch_stats"]["network"]}
  if isinstance(base, repvgg.RepVGGArch):
    pruned, got = repvgg.squeeze(base, repvgg.reparameterize(base, network), kept, name)
    got["batch_stats"] = {}
  else:
    pruned = pruned_architecture(base, kept, name)
    params, stats = gather_variables(base, kept, network["params"], network["batch_stats"])
    got = {"params": params, "batch_stats": stats}
  expected = jax.eval_shape(lambda: networks.build(pruned).init(
      jax.random.key(0), networks.dummy_input(pruned)))
  mismatch = jax.tree.map(lambda e, g: e.shape != g.shape,
                          {"params": expected["params"],
                           "batch_stats": expected.get("batch_stats", {})}, got)
  if any(jax.tree.leaves(mismatch)):
    raise AssertionError(f"gathered variables do not fit {pruned.name}: {mismatch}")
  return pruned, got, kept


def save_weights(path: str, variables: dict) -> None:
  """An Orbax checkpoint of the extracted network's variables (replaced if it exists)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(path), jax.tree.map(jnp.asarray, variables), force=True)


def _main_convs(base) -> tuple[topology.Conv, ...]:
  """The convs a mask prunes: a ResNet's stem and main paths, a RepVGG's blocks."""
  if isinstance(base, repvgg.RepVGGArch):
    return repvgg.blocks(base)
  return topology.of(base).main_convs()


def _rows(base, counts: dict) -> list[dict]:
  lay = masks_lib.layout(base)
  return [{"layer": c.name, "original": c.out_width, "width": counts[lay.conv_groups[c.name][1]],
           "removed": False} for c in _main_convs(base)]


def _markdown(summary: dict, rows: list[dict]) -> str:
  b, p = summary["before"], summary["after"]
  lines = [f"# PaS: extracted network {summary['architecture']}", "",
           f"From the PaS search checkpoint at step {summary['search_step']}; the weights of the kept "
           "channels are in `weights/`.", "",
           "| | original | pruned | kept |", "|---|---|---|---|",
           f"| FLOPs (M) | {b['flops_m']:.2f} | {p['flops_m']:.2f} | {100 * summary['flops_ratio']:.1f}% |",
           f"| params (M) | {b['params_m']:.4f} | {p['params_m']:.4f} | "
           f"{100 * p['params_m'] / b['params_m']:.1f}% |", "",
           f"Target {100 * summary['target']:.0f}% of the original FLOPs.", "",
           "| layer | original width | kept channels | kept |", "|---|---|---|---|"]
  lines += [f"| {r['layer']} | {r['original']} | {r['width']} | {100 * r['width'] / r['original']:.0f}% |"
            for r in rows]
  return "\n".join(lines) + "\n"


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes WORKDIR/extract-pas/ from the latest PaS search checkpoint; returns the summary."""
  out_dir = layout.extract_dir(workdir, METHOD)
  base, variables, history, step = read_search(workdir)
  ratio = config.search.flop_ratio
  name = f"{base.name or 'custom'}_pas{round(100 * ratio)}"
  pruned, weights, kept = extract_network(base, variables, name)
  lay = masks_lib.layout(base)
  counts = {g: len(i) for g, i in kept.items()}
  before, after = flops.count(base), flops.count(pruned)
  if after.flops != lay.flops(counts):
    raise AssertionError(f"extracted FLOPs {after.flops} differ from the masked count {lay.flops(counts)}")
  rows = _rows(base, counts)
  summary = {
      "stage": layout.extract_stage(METHOD), "finished": True, "method": METHOD,
      "architecture": pruned.name, "search_step": step, "target": ratio,
      "flops_ratio": after.flops / before.flops,
      "before": {"flops_m": round(before.flops_m, 4), "params_m": round(before.params_m, 6)},
      "after": {"flops_m": round(after.flops_m, 4), "params_m": round(after.params_m, 6)},
      "kept": counts, "layers": rows,
  }
  os.makedirs(out_dir, exist_ok=True)
  save_weights(os.path.join(out_dir, layout.WEIGHTS), weights)   # every process: Orbax is collective
  if layout.is_writer():
    pruned.save(os.path.join(out_dir, layout.ARCH))
    per_conv = {c.name: kept[lay.conv_groups[c.name][1]] for c in flops.convs_of(base)}
    per_conv["classifier.inputs"] = kept[lay.head_group]
    with open(os.path.join(out_dir, layout.KEPT_CHANNELS), "w") as f:
      json.dump(per_conv, f)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
      f.write(_markdown(summary, rows))
    plots.plot_widths(rows, os.path.join(out_dir, "widths.png"),
                      f"{pruned.name}: {after.flops_m:.2f} M FLOPs ({100 * summary['flops_ratio']:.1f}% "
                      f"of {before.flops_m:.2f} M)")
    if history:
      full = np.array([r["original"] for r in rows], np.float32)
      ratios = np.stack([[r["width"] for r in _rows(base, h["kept"])] / full for h in history], 1)
      plots.plot_width_history([r["layer"] for r in rows], ratios,
                               os.path.join(out_dir, "widths_over_epochs.png"),
                               "kept channels / original width after each epoch")
  tolerance = config.search.tolerance
  summary["in_band"] = bool(abs(summary["flops_ratio"] - ratio) <= tolerance + 1e-9)
  if not summary["in_band"]:
    logging.warning("[%s] %s has %.1f%% of the FLOPs, more than search.tolerance=%g from the "
                    "target %.0f%%: the masks had not reached it (more pas.epochs or a larger "
                    "pas.cost_weight)", summary["stage"], pruned.name,
                    100 * summary["flops_ratio"], tolerance, 100 * ratio)
  layout.write_summary(out_dir, summary)
  logging.info("[%s] %s: %.2f M FLOPs = %.1f%% of %.2f M (target %.0f%%), %.4f M params (%.4f M); "
               "wrote arch.json, weights/, kept_channels.json, report.md and plots to %s",
               summary["stage"], pruned.name, after.flops_m, 100 * summary["flops_ratio"],
               before.flops_m, 100 * ratio, after.params_m, before.params_m, out_dir)
  return summary
