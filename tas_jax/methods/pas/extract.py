"""Stage `extract` of PaS: the kept channels cut out into a physically smaller network, with
weights.

Reads the latest PaS search checkpoint (weights, BN statistics and mask scalars; no optimiser
state), takes the kept channel *indices* of every mask group (1[v > 0.5], at least one per group)
and cuts them out (`tas_jax.models.channels`): the masked network's function in evaluation mode, as
a plain ResNet, or a RepVGG in deploy form. WORKDIR/extract-pas/ gets what every weight-keeping
method's extraction writes (`tas_jax.methods.extraction`: arch.json, weights/, kept_channels.json,
report.md, widths.png) and `widths_over_epochs.png`, the kept channels after each search epoch.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from tas_jax import plots, workdir as layout
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.methods import extraction
from tas_jax.methods.pas import masks as masks_lib
from tas_jax.methods.pas.search import NAME, kept_channels
from tas_jax.models import arch as arch_lib, networks
from tas_jax.training import checkpoint


def read_search(workdir: str) -> tuple[arch_lib.Architecture, dict, list[dict], int]:
  """(original architecture, {"params", "batch_stats"} of the masked network, history, step)."""
  search_dir = layout.search_dir(workdir, NAME)
  base_path = os.path.join(search_dir, layout.BASE_ARCH)
  if not os.path.exists(base_path):
    raise CheckpointNotFoundError(
      f"no PaS search in {search_dir} ({base_path} is missing): run --config.method=pas "
      "--config.stage=search with this --workdir first"
    )
  base = networks.load(base_path)
  model = masks_lib.MaskedNetwork(base)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), networks.dummy_input(base)))
  abstract = checkpoint.abstract(
    {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}, checkpoint.host_sharding()
  )
  restored, meta, step = checkpoint.read_checkpoint(
    search_dir, abstract, layout.stage_flags("search", NAME)
  )
  return base, jax.device_get(restored), meta.get("history", []), step


def network_variables(variables: dict) -> dict:
  """The plain network's {"params", "batch_stats"} inside a masked network's variables."""
  return {
    "params": variables["params"]["network"],
    "batch_stats": variables["batch_stats"]["network"],
  }


def extract(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes WORKDIR/extract-pas/ from the latest PaS search checkpoint; returns the summary."""
  base, variables, history, step = read_search(workdir)
  kept = kept_channels(variables["params"]["masks"])
  summary = extraction.write(
    config,
    workdir,
    NAME,
    "PaS",
    f"From the PaS search checkpoint at step {step}",
    base,
    network_variables(variables),
    kept,
    extra={"search_step": step},
    advice="the masks had not reached it: more pas.epochs or a larger pas.cost_weight",
  )
  if layout.is_writer() and history:
    table = summary["layers"]
    full = np.array([r["original"] for r in table], np.float32)
    ratios = np.stack(
      [[r["width"] for r in extraction.rows(base, h["kept"])] / full for h in history], 1
    )
    plots.plot_width_history(
      [r["layer"] for r in table],
      ratios,
      os.path.join(layout.extract_dir(workdir, NAME), "widths_over_epochs.png"),
      "kept channels / original width after each epoch",
    )
  return summary
