"""The stages of a one-shot criterion method (L1-norm, FPGM): no training of its own.

- `search`: reads the teacher in WORKDIR/teacher (the trained network is what gets pruned), scores
  every channel (`criteria`), chooses the kept channels for `config.target.flop_ratio` (`select`),
  and writes WORKDIR/search-NAME/: base_arch.json, channels.json (scores and kept indices per
  group) and summary.json.
- `extract`: cuts those channels out of the teacher with their weights
  (`tas_jax.methods.extraction`): WORKDIR/extract-NAME/, fine-tuned by the distill runs NAME-kd /
  NAME-ce.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import ml_collections
from absl import logging

from tas_jax import target as target_lib, workdir as layout
from tas_jax.errors import CheckpointNotFoundError, ConfigError
from tas_jax.methods import extraction
from tas_jax.methods.oneshot import settings
from tas_jax.models import channels, networks
from tas_jax.ops import criteria, flops, select
from tas_jax.training import checkpoint

CHANNELS = "channels.json"


def _teacher(workdir: str, stage: str):
  """(architecture, {"params", "batch_stats"} on the host, step) of WORKDIR/teacher."""
  base, variables, step = checkpoint.read_teacher(workdir, checkpoint.host_sharding(), stage)
  return base, jax.device_get(variables), step


def score(criterion: str, base, variables: dict, l1_ranking: str = "global") -> dict:
  """{group: (C,) scores}, comparable across groups where the ranking is global."""
  kernels = channels.producer_kernels(base, variables)
  if criterion == "fpgm":
    return {g: criteria.fpgm(k) for g, k in kernels.items()}
  if l1_ranking == "global":
    return {g: criteria.relative(criteria.l1(k)) for g, k in kernels.items()}
  return {g: criteria.l1(k) for g, k in kernels.items()}


def choose(
  criterion: str,
  base,
  scores: dict,
  target: target_lib.Target,
  l1_ranking: str = "global",
  scope: str = "all",
) -> tuple[dict, dict]:
  """(kept indices per group, how: {"rule", "scope", "pruning_ratio"?}) for a cost <= the
  target's (FLOPs, or the table latency, a ratio of the unpruned network's). scope "inner":
  only the blocks' inner activations lose channels (Li et al.)."""
  groups = channels.of(base)
  goal, cost = target.goal, target.cost_of_counts()
  prunable = None
  if scope == "inner":
    prunable = select.inner_groups(groups)
    if not prunable:
      name = base.name or "this network"
      raise ConfigError(
        f"l1.scope=inner prunes the convs inside residual blocks, and {name} has none: "
        "use l1.scope=all"
      )
  how = {"scope": scope}
  if criterion == "l1" and l1_ranking == "global":
    kept = select.global_ranking(groups, scores, goal, cost, prunable)
    return kept, {"rule": "global ranking", **how}
  kept, r = select.uniform_ratio(groups, scores, goal, cost, prunable)
  return kept, {"rule": "one pruning ratio for every group", "pruning_ratio": r, **how}


def make_search(criterion: str) -> Callable[[ml_collections.ConfigDict, str], dict]:
  """The search stage of the one-shot method named after its criterion (l1, fpgm)."""
  name = criterion

  def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Scores the teacher's channels and chooses the kept ones; writes WORKDIR/search-NAME/."""
    stage, stage_dir = layout.search_stage(name), layout.search_dir(workdir, name)
    t0 = time.time()
    base, variables, step = _teacher(workdir, stage)
    ranking = config.l1.ranking if criterion == "l1" else "uniform"
    scope = config.l1.scope if criterion == "l1" else "all"
    scores = score(criterion, base, variables, ranking)
    target = target_lib.Target.build(config, base, workdir)
    kept, how = choose(criterion, base, scores, target, ranking, scope)
    groups = channels.of(base)
    counts = channels.counts(kept)
    flops_max = flops.count(base).flops
    ratio = flops.with_kept(groups, counts) / flops_max
    how.update(target.kept_latency_ratio(groups, counts))
    summary = {
      "stage": stage,
      "finished": True,
      "method": name,
      "criterion": criterion,
      **how,
      "base_architecture": base.name,
      "teacher_step": step,
      "flop_ratio_target": config.target.flop_ratio,
      "flops_ratio": ratio,
      "flops_m": round(flops.with_kept(groups, counts) / 1e6, 4),
      "flops_max_m": round(flops_max / 1e6, 4),
      "kept": counts,
      "wall_time_s": round(time.time() - t0, 2),
    }
    if layout.is_writer():
      os.makedirs(stage_dir, exist_ok=True)
      base.save(os.path.join(stage_dir, layout.BASE_ARCH))
      with open(os.path.join(stage_dir, CHANNELS), "w") as f:
        json.dump({g: {"scores": [float(v) for v in scores[g]], "kept": kept[g]} for g in kept}, f)
    layout.write_summary(stage_dir, summary)
    logging.info(
      "[%s] %s: %d of %d channels kept (%s, %s), %.2f M FLOPs = %.1f%% of %.2f M%s (target "
      "%.0f%% of the %s)",
      stage,
      criterion,
      sum(counts.values()),
      groups.num_channels,
      how["rule"],
      "inner convs only" if scope == "inner" else "every group",
      summary["flops_m"],
      100 * ratio,
      flops_max / 1e6,
      f", table latency {how['latency_ratio']:.1%}" if target.by_table else "",
      100 * config.target.flop_ratio,
      target.label,
    )
    return summary

  return search


def make_extract(name: str, title: str) -> Callable[[ml_collections.ConfigDict, str], dict]:
  def extract(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Cuts the chosen channels out of the teacher; writes WORKDIR/extract-NAME/."""
    path = os.path.join(layout.search_dir(workdir, name), CHANNELS)
    if not os.path.exists(path):
      raise CheckpointNotFoundError(
        f"{path} is missing: run --config.stage="
        f"{layout.stage_flags('search', name)} with this --workdir first"
      )
    with open(path) as f:
      kept = {g: v["kept"] for g, v in json.load(f).items()}
    stage = layout.extract_stage(name)
    soft = settings.soft(config, name)
    if soft:  # soft FPGM: the weights its search fine-tuned and zeroed
      search_dir = layout.search_dir(workdir, name)
      base = networks.load(os.path.join(search_dir, layout.BASE_ARCH))
      variables, step = checkpoint.read_variables(
        search_dir, base, stage, checkpoint.host_sharding()
      )
      variables = jax.device_get(variables)
      source = f"soft {title} on its search's fine-tuned weights at step {step}"
    else:
      base, variables, step = _teacher(workdir, stage)
      source = f"{title} on the teacher's checkpoint at step {step}"
    if name == "l1" and config.l1.scope == "inner":
      source += " (l1.scope=inner: only the convs inside residual blocks pruned, as Li et al.)"
    return extraction.write(
      config,
      workdir,
      name,
      title,
      source,
      base,
      variables,
      kept,
      extra={"search_step" if soft else "teacher_step": step},
    )

  return extract
