"""Stage `search` of PaS (Li et al., IJCAI 2022, and its released code): masks and weights learned
together, one step.

Starts from the teacher in WORKDIR/teacher (PaS prunes a trained network). Every step is one SGD
step (constant lr, momentum, coupled weight decay on the mask scalars too) on one batch of the
whole training set, on

    CE + w·((MACs(kept) − R·MACs_full) / unit)²,    R = config.target.flop_ratio (all methods'),

where MACs(kept) counts the masked network by the same topology as the FLOP counter
(`tas_jax.models.channels`), and (w, unit) = (α·(M_ref/G)², MACs_full) by default, or the
released (α, G) with `pas.penalty=released` (`settings.penalty_scale`).

After every epoch the kept channels of every group, the MACs ratio and the masked network's test
accuracy (with batch statistics, as TAS evaluates its argmax network; with the running statistics,
which trail the moving masks, as `masked_test_accuracy_running_bn`) go into the history;
WORKDIR/search-pas/ holds Orbax checkpoints (resumable mid-epoch), TensorBoard events and
summary.json.

With `target.cost=latency` the penalty prices the masked network by the latency table
(`tas_jax.latency.with_kept`, interpolated between the table's widths) in units of the unpruned
network's table latency, with the same weight, and R is a ratio of latencies.
"""

from typing import Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics

from tas_jax import console, parallel, target as target_lib, workdir as layout
from tas_jax.data import sources
from tas_jax.methods.pas import masks as masks_lib, settings
from tas_jax.models import channels
from tas_jax.ops import flops
from tas_jax.training import checkpoint, stage as stage_lib, steps, supervised

NAME = "pas"  # config.method; its folders are search-pas/ and extract-pas/


@flax.struct.dataclass
class PasMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")  # CE + α·penalty
  ce: metrics.Average.from_output("ce")
  accuracy: metrics.Average.from_output("accuracy")
  penalty: metrics.Average.from_output("penalty")  # ((cost − target) / unit)², unweighted
  flops_ratio: metrics.LastValue.from_output("flops_ratio")  # MACs(kept) / MACs_full


MOTIONLESS = 0.99  # a MACs ratio above this after the first epoch: the masks have not moved


def make_penalty(p: ml_collections.ConfigDict, target: target_lib.Target):
  """scores -> (w·gap², gap², MACs of the masked network), gap = (cost(kept) − R·full) / unit in
  the target's measure, (w, unit) from `settings.penalty_scale` (traceable; the STE gives every
  mask scalar the derivative of the cost by its group's count)."""
  lay = channels.of(target.base)
  weight, unit = settings.penalty_scale(p, target.base, target.full, target.by_table)

  def penalty(scores):
    kept = masks_lib.kept_counts(lay, scores)
    gap2 = ((target.at_kept(lay, kept) - target.goal) / unit) ** 2
    return weight * gap2, gap2, flops.with_kept(lay, kept)

  return penalty


def make_search_step(
  model: masks_lib.MaskedNetwork,
  p: ml_collections.ConfigDict,
  target: target_lib.Target,
  mesh,
  mode: str,
):
  """Compiles `step(state, batch) -> (state, PasMetrics)`: one joint SGD step, the penalty on the
  masked network's cost in the target's measure (FLOPs, or the table latency), weighted and
  measured as `settings.penalty_scale` says; the metrics' FLOPs ratio stays FLOPs."""
  axis = parallel.step_axis(mode)
  model = model.clone(bn_axis_name=axis)
  flops_max = float(flops.count(model.arch).flops)
  penalty_of = make_penalty(p, target)

  def step(state: steps.TrainState, batch):
    x, y = batch["image"], batch["label"]

    def objective(params):
      logits, upd = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      ce = steps.classification_loss(logits, y)
      weighted, penalty, macs = penalty_of(params["masks"])
      return ce + weighted, (ce, penalty, macs, logits, upd["batch_stats"])

    (loss, (ce, penalty, macs, logits, batch_stats)), grads = jax.value_and_grad(
      objective, has_aux=True
    )(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    grads, loss, ce, accuracy = parallel.mean((grads, loss, ce, accuracy), axis)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, PasMetrics.single_from_model_output(
      loss=loss, ce=ce, accuracy=accuracy, penalty=penalty, flops_ratio=macs / flops_max
    )

  return parallel.compile_step(step, mesh, mode)


def optimizer(p: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD on weights and mask scalars alike, constant lr, coupled L2 on both (as released)."""
  return optax.chain(
    optax.add_decayed_weights(p.weight_decay),
    optax.sgd(p.lr, momentum=p.momentum, nesterov=p.nesterov),
  )


def kept_channels(scores: dict) -> dict:
  """{group: sorted kept channel indices} of concrete mask scalars: the channels the forward
  mask (`masks.hard_mask`) keeps."""
  return {
    name: np.flatnonzero(np.asarray(masks_lib.hard_mask(jnp.asarray(v)))).tolist()
    for name, v in scores.items()
  }


def record(
  lay: channels.ChannelGroups,
  scores: dict,
  flops_max: float,
  target: Optional[target_lib.Target] = None,
) -> dict:
  """The masks after an epoch: kept channels per group, the masked network's FLOPs (and table
  latency, as a ratio to the unpruned network's)."""
  indices = kept_channels(jax.device_get(scores))
  kept = {g.name: len(indices[g.name]) for g in lay.groups}  # in forward order
  out = {
    "flops_ratio": flops.with_kept(lay, kept) / flops_max,
    "flops_m": round(flops.with_kept(lay, kept) / 1e6, 4),
    "kept": kept,
    "kept_fraction": sum(kept.values()) / lay.num_channels,
  }
  if target is not None:
    out.update(target.kept_latency_ratio(lay, kept))
  return out


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the PaS search; returns its summary."""
  p, ratio = config.pas, config.target.flop_ratio
  stage = layout.search_stage(NAME)
  stage_dir = layout.search_dir(workdir, NAME)
  mesh, ds = supervised.load_inputs(config, p.eval_batch_size)
  base = supervised.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  lay = channels.of(base)
  run = stage_lib.Stage.open(config, stage, stage_dir, mesh, files={layout.BASE_ARCH: base})
  flops_max = float(flops.count(base).flops)
  n_dev = mesh.shape[parallel.AXIS]
  steps_per_epoch = sources.check_batch("pas.batch_size", p.batch_size, n_dev, ds.num_train)
  logging.info(
    "[%s] PaS on %s of %s: target %.0f%% of the %s (%.2f M FLOPs), %d mask groups (%d "
    "channels), alpha %g (%s penalty), %d steps per epoch, %d device(s)",
    stage,
    base.name or "custom",
    ds.name,
    100 * ratio,
    target_lib.LABELS[config.target.cost],
    flops_max / 1e6,
    len(lay.groups),
    lay.num_channels,
    settings.cost_weight(p, base),
    p.penalty,
    steps_per_epoch,
    n_dev,
  )

  _, teacher_vars, teacher_step = checkpoint.read_teacher(
    workdir,
    parallel.replicated(mesh),
    stage,
    expected=base,
    mismatch=lambda teacher: (
      f"method=pas prunes the teacher in {workdir}/teacher ({teacher.name or 'custom'}), "
      f"but the config describes {base.name or 'a different network'}"
    ),
  )
  model = masks_lib.MaskedNetwork(
    base, dtype=jnp.dtype(config.model.dtype), scan_blocks=config.model.scan_blocks
  )
  tx = optimizer(p)
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  state = steps.create_state(
    model, tx, jnp.zeros((1, ds.image_size, ds.image_size, ds.channels)), init_key, mesh
  )
  # the teacher's weights, every mask scalar at 1: the search starts from the trained network
  params = {**state.params, "network": teacher_vars["params"]}
  state = state.replace(
    params=params,
    batch_stats={"network": teacher_vars["batch_stats"]},
    opt_state=parallel.jit_once(tx.init, out_shardings=parallel.replicated(mesh))(params),
  )
  logging.info("[%s] weights from the teacher's checkpoint at step %d", stage, teacher_step)

  train_source = ds.train_source(
    np.arange(ds.num_train),
    p.batch_size,
    seed=config.seed,
    epoch_key=supervised.permutation_key(config.seed),
    step_key=lambda step: jax.random.fold_in(aug_key, step),
  )
  test_source = ds.eval_source()
  target = target_lib.Target.build(config, base, workdir)
  weight, unit = settings.penalty_scale(p, base, target.full, target.by_table)
  logging.info(
    "[%s] penalty %.4g·((%s − %.0f%% of the unpruned) / %s)², %s",
    stage,
    weight,
    target.label,
    100 * ratio,
    "the unpruned network's" if unit == target.full else f"{unit:g}",
    "scaled from the released α = %g per G² at %s"
    % (settings.cost_weight(p, base), settings.REFERENCE_NETWORK[settings.family(base)])
    if p.penalty == "scaled"
    else "the released form",
  )
  step = make_search_step(model, p, target, mesh, config.parallel)
  # the masked network with batch statistics: its running statistics trail the masks, which
  # moved during the epoch (on a small dataset they are a few steps old; fine-tuning renews them)
  eval_step = steps.make_eval_step(
    lambda v, x: model.apply(
      {"params": v[0], "batch_stats": v[1]}, x, train=True, mutable=["batch_stats"]
    )[0]
  )
  running_eval_step = steps.make_eval_step(
    lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False)
  )

  def end_of_epoch(state, epoch, train):
    entry = record(lay, state.params["masks"], flops_max, target)
    test, running = (
      steps.evaluate(
        fn, (state.params, state.batch_stats), test_source.batches(), test_source.num_examples
      )
      for fn in (eval_step, running_eval_step)
    )
    entry.update(
      masked_test_accuracy=test["accuracy"],
      masked_test_top5_accuracy=test["top5_accuracy"],
      masked_test_accuracy_running_bn=running["accuracy"],
    )
    console.detail(
      "[%s] epoch %d: kept channels %s", stage, epoch + 1, list(entry["kept"].values())
    )
    on_target = entry["latency_ratio"] if target.by_table else entry["flops_ratio"]
    if epoch == 0 and on_target > MOTIONLESS and ratio < MOTIONLESS - config.target.tolerance:
      logging.warning(
        "[%s] after the first epoch the masks have not moved (%.1f%% of the %s, target %.0f%%): "
        "the penalty is too weak for this network and budget; raise pas.cost_weight (now %g)%s",
        stage,
        100 * on_target,
        target.label,
        100 * ratio,
        settings.cost_weight(p, base),
        ", or use pas.penalty=scaled" if p.penalty == "released" else "",
      )
    return entry

  state, history = run.fit(
    state,
    step,
    train_source,
    end_of_epoch,
    epochs=p.epochs,
    steps_per_epoch=steps_per_epoch,
    batch_size=p.batch_size,
    learning_rate=lambda s: p.lr,
    starts_from="the teacher's weights",
  )
  if history is None:
    return run.unfinished(state)
  last = history[-1]
  summary = {
    "stage": stage,
    "finished": True,
    "method": NAME,
    "dataset": ds.name,
    "base_architecture": base.name,
    "flop_ratio_target": ratio,
    "flops_max_m": round(flops_max / 1e6, 4),
    "flops_m": last["flops_m"],
    "flops_ratio": last["flops_ratio"],
    "kept": last["kept"],
    "cost": target.measure,
    **({"latency_ratio": last["latency_ratio"]} if target.by_table else {}),
    "masked_test_accuracy": last["masked_test_accuracy"],
    "epochs": p.epochs,
    "steps": p.epochs * steps_per_epoch,
    "cost_weight": settings.cost_weight(p, base),
    "penalty": p.penalty,
    "penalty_weight": weight,  # w of w·((cost − target) / unit)²
    "penalty_unit": unit,
    "teacher_step": teacher_step,
    "compilations": {"step": step._cache_size(), "eval_step": eval_step._cache_size()},
    "history": history,
  }
  on_target = last["latency_ratio"] if target.by_table else last["flops_ratio"]
  tolerance = config.target.tolerance
  summary["in_band"] = target.in_band(on_target)
  if not summary["in_band"]:
    alpha = summary["cost_weight"]
    logging.warning(
      "[%s] the masked network has %.1f%% of the %s, more than target.tolerance=%g from the "
      "target %.0f%%: %s pas.cost_weight (now %g)%s, or change pas.epochs (now %d); extraction "
      "takes these masks as they are",
      stage,
      100 * on_target,
      target.label,
      tolerance,
      100 * ratio,
      "raise" if on_target > ratio else "lower",
      alpha,
      ", or pas.penalty=scaled" if on_target > ratio and p.penalty == "released" else "",
      p.epochs,
    )
  return run.finish(
    summary,
    "[%s] finished: the masked network has %.2f M FLOPs = %.1f%% of %.2f M%s (target "
    "%.0f%% of the %s), test accuracy %.2f%%",
    stage,
    last["flops_m"],
    100 * last["flops_ratio"],
    flops_max / 1e6,
    f", table latency {last['latency_ratio']:.1%}" if target.by_table else "",
    100 * ratio,
    target.label,
    100 * last["masked_test_accuracy"],
  )
