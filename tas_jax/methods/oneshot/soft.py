"""FPGM's soft pruning (He et al., CVPR 2019; `fpgm.soft=true`): as the released
`pruning_cifar10.py`, the filters nearest the geometric median are selected and zeroed before the
first epoch; the search stage then fine-tunes the whole teacher with FPGM's recipe and, after
every epoch, selects again and zeroes. The zeroed filters get no updates through an epoch (the
released `do_grad_mask`), so the network and its BN statistics learn to do without them; they stay
in the network, and a later selection may keep them again (they then train from zero). A filter
held at zero is usually the nearest to the median again, so few channels come back: each epoch
records how many swapped. The channels zeroed after the last epoch are
cut by extraction, from these weights (not the teacher's); the run `fpgm-ce` then only evaluates
the cut network: the paper fine-tunes before the cut, not after.

Zeroing a filter leaves its BN's shift, so a soft-pruned channel still carries a constant; the cut
network drops it. The search's summary gives both accuracies (`test_accuracy`, soft-pruned;
`cut_test_accuracy`, the network extraction builds). Residual chains are pruned as one group, as
in the one-shot form: every conv producing the chain loses the same filters.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tas_jax import parallel, target as target_lib, workdir as layout
from tas_jax.errors import ConfigError
from tas_jax.methods.oneshot import settings, stages
from tas_jax.models import channels, networks, repvgg, resnet
from tas_jax.ops import flops
from tas_jax.training import checkpoint, supervised

NAME = "fpgm"


def _kernel_of(params: dict, conv_name: str) -> dict:
  layer = params
  for key in resnet.variable_scope(conv_name):
    layer = layer[key]
  return layer["conv"]


def zero_removed(base, params: dict, kept: dict) -> dict:
  """`params` with the filters of every removed channel zeroed in every conv producing its group
  (host arrays; a copy)."""
  params = jax.tree.map(np.array, params)
  lay = channels.of(base)
  for g in lay.groups:
    removed = np.setdiff1d(np.arange(g.size), kept[g.name])
    for conv in lay.producers(g.name):
      _kernel_of(params, conv.name)["kernel"][..., removed] = 0.0
  return params


class FrozenState(NamedTuple):
  trainable: Any  # a params-shaped tree: 1 where a weight may change, 0 where it is held


def frozen_where_zeroed(trainable: Any = None) -> optax.GradientTransformation:
  """Multiplies every update by `FrozenState.trainable` (at first `trainable`, or all ones): the
  last link of the optimizer's chain, so momentum and weight decay never move a held weight. The
  mask is state, replaced between epochs (same shapes: no recompilation)."""

  def init(params):
    if trainable is None:
      return FrozenState(jax.tree.map(jnp.ones_like, params))
    return FrozenState(jax.tree.map(lambda m, p: jnp.asarray(m, p.dtype), trainable, params))

  def update(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * m, updates, state.trainable), state

  return optax.GradientTransformation(init, update)


def trainable_mask(base, params: dict, kept: dict) -> dict:
  """1 everywhere but the filters of removed channels: `zero_removed`'s zeros as a mask."""
  ones = jax.tree.map(lambda p: np.ones(np.shape(p), np.float32), params)
  return zero_removed(base, ones, kept)


def kept_of_zeros(base, params: dict) -> dict:
  """{group: kept indices}: the channels whose filters are not all zero in every producing conv
  (what `zero_removed` left)."""
  lay = channels.of(base)
  out = {}
  for g in lay.groups:
    alive = np.zeros(g.size, bool)
    for conv in lay.producers(g.name):
      k = np.asarray(_kernel_of(params, conv.name)["kernel"])
      alive |= np.abs(k.reshape(-1, g.size)).sum(0) > 0
    out[g.name] = np.flatnonzero(alive).tolist()
  return out


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Soft FPGM: fine-tunes the teacher, re-selecting and zeroing after every epoch; writes
  WORKDIR/search-fpgm/ (checkpoints, channels.json, summary.json)."""
  stage, stage_dir = layout.search_stage(NAME), layout.search_dir(workdir, NAME)
  recipe = settings.soft_recipe(config)
  mesh, ds = supervised.load_inputs(config, recipe.eval_batch_size)
  base, teacher_vars, teacher_step = checkpoint.read_teacher(
    workdir, checkpoint.host_sharding(), stage
  )
  if isinstance(base, repvgg.RepVGGArch):
    raise ConfigError(
      "fpgm.soft=true zeroes a ResNet's conv filters between epochs; a RepVGG's pruned filters "
      "are its reparameterised ones: use fpgm.soft=false"
    )
  target = target_lib.Target.build(config, base, workdir)
  groups = channels.of(base)
  full = flops.count(base).flops

  def select(params, batch_stats):
    scores = stages.score(NAME, base, {"params": params, "batch_stats": batch_stats})
    kept, how = stages.choose(NAME, base, scores, target)
    return scores, kept, how

  # as released: the first selection is made and zeroed before the first epoch
  teacher_vars = jax.device_get(teacher_vars)
  _, first, _ = select(teacher_vars["params"], teacher_vars["batch_stats"])
  start = jax.device_put(
    {
      "params": zero_removed(base, teacher_vars["params"], first),
      "batch_stats": teacher_vars["batch_stats"],
    },
    parallel.replicated(mesh),
  )
  first_mask = trainable_mask(base, teacher_vars["params"], first)

  def between_epochs(state, epoch):
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    _, kept, how = select(params, batch_stats)
    place = lambda tree: jax.tree.map(
      lambda new, old: jax.device_put(new, old.sharding), tree, state.params
    )
    *links, _ = state.opt_state  # the chain's last link is frozen_where_zeroed's
    frozen = FrozenState(place(trainable_mask(base, params, kept)))
    state = state.replace(
      params=place(zero_removed(base, params, kept)), opt_state=(*links, frozen)
    )
    counts = channels.counts(kept)
    held = kept_of_zeros(base, params)  # the previous selection: held at zero through the epoch
    changed = sum(len(set(kept[g]) ^ set(held[g])) for g in kept) // 2
    return state, {
      "flops_ratio": flops.with_kept(groups, counts) / full,
      "pruning_ratio": how["pruning_ratio"],
      "channels_swapped": changed,  # kept now and removed before, or the reverse (pairs)
      "kept_indices": kept,
    }

  def finish(state, evaluate):
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    kept = kept_of_zeros(base, params)
    variables = {"params": params, "batch_stats": batch_stats}
    scores = stages.score(NAME, base, variables)
    pruned, weights = channels.cut(base, variables, kept)
    model = networks.build(pruned)
    cut = evaluate(lambda v, x: model.apply(v, x, train=False), weights)
    counts = channels.counts(kept)
    if layout.is_writer():
      base.save(os.path.join(stage_dir, layout.BASE_ARCH))
      with open(os.path.join(stage_dir, stages.CHANNELS), "w") as f:
        json.dump({g: {"scores": [float(v) for v in scores[g]], "kept": kept[g]} for g in kept}, f)
    return {
      "method": NAME,
      "criterion": NAME,
      "soft": True,
      "rule": "one pruning ratio for every group, re-selected after every epoch",
      "base_architecture": base.name,
      "flop_ratio_target": config.target.flop_ratio,
      "flops_ratio": flops.with_kept(groups, counts) / full,
      "flops_m": round(flops.with_kept(groups, counts) / 1e6, 4),
      "flops_max_m": round(full / 1e6, 4),
      "kept": counts,
      "cut_test_accuracy": cut["accuracy"],
      "cut_test_top5_accuracy": cut["top5_accuracy"],
      **target.kept_latency_ratio(groups, counts),
    }

  return supervised.train_network(
    config,
    recipe,
    "fpgm",
    stage,
    stage_dir,
    mesh,
    ds,
    base,
    init_variables=lambda params, stats: (start["params"], start["batch_stats"]),
    summary_extra={"teacher_step": teacher_step},
    finish=finish,
    starts_from=f"the teacher's weights (step {teacher_step}), soft FPGM",
    between_epochs=between_epochs,
    optimizer_wrapper=lambda tx: optax.chain(tx, frozen_where_zeroed(first_mask)),
  )
