"""Stage `search`: TAS architecture search (spec §5).

The training set is split per class into halves A and B (seeded). Every iteration is one weight
step on a batch of A (cross-entropy, SGD Nesterov, cosine per epoch) followed by one architecture
step on a batch of B (cross-entropy + λ·cost, Adam, constant lr), compiled together as one
function: τ and the epoch's permutations are inputs, so the whole search compiles once.

After every epoch the argmax architecture (width per conv, depth per stage), its exact FLOPs F(A)
against F_max, E[F], τ and the losses are logged and kept in the history; `WORKDIR/search/` holds
Orbax checkpoints (weights and architecture logits apart), TensorBoard events and `summary.json`
with the final architecture.
"""

import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics

from tas_jax import config as config_lib
from tas_jax.data import datasets
from tas_jax.models import supernet as supernet_lib
from tas_jax.ops import flops
from tas_jax.search import cost, space as space_lib
from tas_jax.training import loop, parallel, steps, supervised


@flax.struct.dataclass
class SearchState:
  step: jax.Array
  params: Any            # supernet weights (SGD)
  batch_stats: Any
  opt_state: Any
  arch: Any              # {"alpha": (S, 8), "beta": (stages, D)} (Adam)
  arch_opt_state: Any


@flax.struct.dataclass
class SearchMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")                    # weight step, half A
  accuracy: metrics.Average.from_output("accuracy")
  arch_loss: metrics.Average.from_output("arch_loss")          # architecture step CE, half B
  arch_accuracy: metrics.Average.from_output("arch_accuracy")
  cost: metrics.Average.from_output("cost")
  expected_flops_ratio: metrics.Average.from_output("expected_flops_ratio")
  flops_ratio: metrics.LastValue.from_output("flops_ratio")    # F(A) / F_max of the argmax


def tau_at(epoch: int, s: ml_collections.ConfigDict) -> float:
  """τ of an epoch: cosine (released) or linear (paper) from tau_max to tau_min."""
  progress = epoch / max(s.epochs - 1, 1)
  if s.tau_schedule == "cosine":
    return s.tau_min + 0.5 * (s.tau_max - s.tau_min) * (1 + math.cos(math.pi * progress))
  return s.tau_max - (s.tau_max - s.tau_min) * progress


def optimizers(s: ml_collections.ConfigDict, steps_per_epoch: int):
  """(weight optimiser, its schedule, architecture optimiser)."""
  def schedule(count):  # cosine to 0, stepped per epoch, no warm-up
    epoch = count // steps_per_epoch
    return 0.5 * s.lr * (1 + jnp.cos(jnp.pi * epoch / s.epochs))

  weights = optax.chain(optax.add_decayed_weights(s.weight_decay),
                        optax.sgd(schedule, momentum=s.momentum, nesterov=s.nesterov))
  arch_lr = (s.arch_lr if s.arch_lr_schedule == "constant" else  # constant: the released recipe
             optax.cosine_decay_schedule(s.arch_lr, s.epochs * steps_per_epoch))
  arch = optax.chain(optax.add_decayed_weights(s.arch_weight_decay),
                     optax.adam(arch_lr, b1=s.arch_beta1, b2=s.arch_beta2))
  return weights, schedule, arch


def make_search_step(net: supernet_lib.SuperNet, space: space_lib.SearchSpace, tx, arch_tx,
                     spec: steps.BatchSpec, s: ml_collections.ConfigDict, mesh, mode: str):
  """Compiles `iteration(state, images, labels, key, perm_a, perm_b, tau) -> (state, metrics)`."""
  axis = parallel.AXIS if mode == "pmap" else None
  net = net.clone(axis_name=axis)
  batch_sharding = parallel.batch_sharded(mesh) if mode == "jit" else None
  flops_max = float(flops.count(space.base).flops)

  def per_shard(shard_index, shard_count, state: SearchState, images, labels, key, perm_a, perm_b,
                tau):
    k = jax.random.fold_in(key, state.step)
    k_aug_a, k_aug_b, k_net_a, k_net_b = jax.random.split(k, 4)
    xa, ya = steps.augmented_batch(spec, state.step, perm_a, images, labels, k_aug_a, shard_index,
                                   shard_count, batch_sharding)
    xb, yb = steps.augmented_batch(spec, state.step, perm_b, images, labels, k_aug_b, shard_index,
                                   shard_count, batch_sharding)

    def mean(tree):
      return jax.lax.pmean(tree, axis) if axis is not None else tree

    # --- weight step on half A: the architecture is a constant here ---
    def weight_objective(params):
      logits, upd = net.apply({"params": params, "batch_stats": state.batch_stats}, xa, state.arch,
                              k_net_a, tau, train=True, mutable=["batch_stats"])
      return steps.classification_loss(logits, ya), (logits, upd["batch_stats"])

    (w_loss, (logits_a, batch_stats)), grads = jax.value_and_grad(weight_objective, has_aux=True)(
        state.params)
    grads, w_loss = mean((grads, w_loss))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    # --- architecture step on half B, with the new weights held constant ---
    def arch_objective(arch):
      logits, upd = net.apply({"params": params, "batch_stats": batch_stats}, xb, arch, k_net_b, tau,
                              train=True, mutable=["batch_stats"])
      ce = steps.classification_loss(logits, yb)
      expected = cost.expected_flops(space, arch, s.expected_flops, s.variant)
      exact = cost.exact_flops(space, *space.argmax(arch, s.variant))
      c = cost.cost_loss(expected, exact, flops_max, s.flop_ratio, s.tolerance, s.band)
      return ce + s.cost_weight * c, (ce, c, expected, exact, logits, upd["batch_stats"])

    (_, (a_ce, c, expected, exact, logits_b, batch_stats)), a_grads = jax.value_and_grad(
        arch_objective, has_aux=True)(state.arch)
    a_grads, a_ce = mean((a_grads, a_ce))
    a_updates, arch_opt_state = arch_tx.update(a_grads, state.arch_opt_state, state.arch)
    arch = optax.apply_updates(state.arch, a_updates)

    acc_a, acc_b = mean((jnp.mean(jnp.argmax(logits_a, -1) == ya),
                         jnp.mean(jnp.argmax(logits_b, -1) == yb)))
    new_state = SearchState(state.step + 1, params, batch_stats, opt_state, arch, arch_opt_state)
    return new_state, SearchMetrics.single_from_model_output(
        loss=w_loss, accuracy=acc_a, arch_loss=a_ce, arch_accuracy=acc_b, cost=c,
        expected_flops_ratio=expected / flops_max, flops_ratio=exact / flops_max)

  return parallel.compile_step(per_shard, mesh, mode, num_args=7)


def create_state(net, space, tx, arch_tx, sample_input, key, mesh) -> SearchState:
  k_init, k_arch = jax.random.split(key)

  def init():
    arch = space.init_logits(k_arch)
    variables = net.init(k_init, sample_input, arch, k_init, 1.0, train=True)
    return SearchState(jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"],
                       tx.init(variables["params"]), arch, arch_tx.init(arch))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _from_teacher(state: SearchState, base, tx, workdir: str, mesh) -> SearchState:
  """The supernet's weights from the teacher's checkpoint: every conv its trained kernel, every
  width candidate its trained BN (a search-only BN starts as the identity)."""
  teacher_arch, variables, step = supervised.read_teacher(workdir, mesh, "search")
  if teacher_arch.to_dict() | {"name": ""} != base.to_dict() | {"name": ""}:
    raise config_lib.ConfigError(
        f"config.search.init='teacher': the teacher in {workdir}/teacher is "
        f"{teacher_arch.name or 'a different network'}, the search runs on {base.name or 'custom'}")
  params, stats = supernet_lib.supernet_params_from_plain(variables["params"],
                                                          variables["batch_stats"])
  params, stats = jax.device_put((params, stats), parallel.replicated(mesh))
  logging.info("[search] supernet weights from the teacher's checkpoint at step %d", step)
  opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
  return state.replace(params=params, batch_stats=stats, opt_state=opt_state)


def record_architecture(space: space_lib.SearchSpace, arch_logits, flops_max: float,
                        s: ml_collections.ConfigDict) -> dict:
  """The argmax architecture as a history entry: widths per conv, depths, F(A), E[F], and how
  decided the distributions are (mean over convs / stages of the most likely candidate's
  probability: 1/8 … 1 for widths)."""
  w_idx, d_idx = jax.device_get(space.argmax(arch_logits, s.variant))
  a = space.architecture(w_idx, d_idx)
  counts = flops.count(a)
  expected = float(cost.expected_flops(space, arch_logits, s.expected_flops, s.variant))
  p_width, p_depth = jax.device_get(space.probabilities(arch_logits, s.variant))
  return {"flops_ratio": counts.flops / flops_max, "flops_m": round(counts.flops_m, 4),
          "params_m": round(counts.params_m, 4), "expected_flops_ratio": expected / flops_max,
          "expected_flops_form": s.expected_flops,
          "flops_gap": abs(expected - counts.flops) / flops_max,
          "width_max_prob": float(np.mean(np.max(p_width, -1))),
          "depth_max_prob": float(np.mean(np.max(p_depth, -1))),
          "widths": [slot.candidates[int(i)] for slot, i in zip(space.slots, w_idx)],
          "depths": list(a.depths)}


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the search stage; returns its summary."""
  config_lib.validate(config)
  s = config.search
  stage_dir = os.path.join(workdir, "search")
  t0 = time.time()
  ds = supervised.load_data(config)
  base = config_lib.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  space = space_lib.build(base)
  flops_max = float(flops.count(base).flops)
  mesh = parallel.make_mesh(config.num_devices)
  n_dev = mesh.shape[parallel.AXIS]
  half_a, half_b = datasets.split_per_class(ds.train_labels, config.seed)
  steps_per_epoch = supervised.check_batch("search.batch_size", s.batch_size, n_dev,
                                        min(len(half_a), len(half_b)))
  logging.info("[search] TAS(%s) on %s of %s: target %.0f%% of %.2f M FLOPs, %d searched convs, "
               "depth choices %s; halves of %d/%d images, %d iterations per epoch, %d device(s)",
               s.variant, base.name or "custom", ds.name, 100 * s.flop_ratio, flops_max / 1e6,
               space.num_slots, [list(d) for d in space.depths], len(half_a), len(half_b),
               steps_per_epoch, n_dev)

  net = supernet_lib.SuperNet(space, s.variant)
  tx, schedule, arch_tx = optimizers(s, steps_per_epoch)
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  state = create_state(net, space, tx, arch_tx, jnp.zeros((2,) + ds.train_images.shape[1:]),
                       init_key, mesh)
  if s.init == "teacher":
    state = _from_teacher(state, base, tx, workdir, mesh)
  data = supervised.DeviceData(ds, mesh, s.eval_batch_size)
  halves = parallel.put_replicated((half_a.astype(np.int32), half_b.astype(np.int32)), mesh)
  spec = steps.BatchSpec(s.batch_size, steps_per_epoch, ds.mean, ds.std, config.data.crop_padding,
                         config.data.flip)
  iteration = make_search_step(net, space, tx, arch_tx, spec, s, mesh, config.parallel)
  evaluate = steps.make_eval_fn(
      # the argmax network with batch statistics (see tas_jax.models.supernet)
      lambda v, x: net.apply({"params": v[0], "batch_stats": v[1]}, x, v[2], jax.random.key(0), 1.0,
                             train=True, argmax=True),
      ds.mean, ds.std, mesh, data.num_test, data.eval_batch)

  perm_key = jax.random.fold_in(jax.random.key(config.seed), 2)
  shuffle = jax.jit(lambda e, a, b: (a[jax.random.permutation(jax.random.fold_in(perm_key, 2 * e), len(a))],
                                     b[jax.random.permutation(jax.random.fold_in(perm_key, 2 * e + 1), len(b))]),
                    out_shardings=parallel.replicated(mesh))

  def epoch_inputs(epoch):
    perm_a, perm_b = shuffle(np.int32(epoch), *halves)
    return perm_a, perm_b, jax.device_put(np.float32(tau_at(epoch, s)), parallel.replicated(mesh))

  def end_of_epoch(state, epoch, train):
    entry = {"tau": round(tau_at(epoch, s), 5),
             "supernet_train_accuracy": train["accuracy"],     # weight steps, half A
             "supernet_val_accuracy": train["arch_accuracy"],  # architecture steps, half B
             **record_architecture(space, state.arch, flops_max, s)}
    if s.evaluate_every_epoch:
      test = evaluate((state.params, state.batch_stats, state.arch), data.test_images,
                      data.test_labels)
      entry["argmax_test_accuracy"] = float(test["accuracy"])
    logging.info("[search] epoch %d: argmax widths %s depths %s", epoch + 1, entry["widths"],
                 entry["depths"])
    return entry

  os.makedirs(stage_dir, exist_ok=True)
  base.save(os.path.join(stage_dir, "base_arch.json"))  # extraction rebuilds the space from it
  cfg = loop.LoopConfig("search", s.epochs, steps_per_epoch, s.batch_size, config.log_every_steps,
                        config.checkpoint_every_steps, config.keep_checkpoints,
                        config.max_steps_per_run)
  state, history, finished = loop.fit(cfg, stage_dir, state, iteration,
                                      (data.train_images, data.train_labels, aug_key),
                                      epoch_inputs, end_of_epoch, lambda st: float(schedule(st)))
  if not finished:
    return {"stage": "search", "finished": False, "step": int(jax.device_get(state.step))}
  w_idx, d_idx = jax.device_get(space.argmax(state.arch, s.variant))
  final = space.architecture(w_idx, d_idx, name=f"{base.name}_tas{round(100 * s.flop_ratio)}")
  counts = flops.count(final)
  summary = {
      "stage": "search", "finished": True, "variant": s.variant, "dataset": ds.name,
      "base_architecture": base.name, "flop_ratio_target": s.flop_ratio,
      "flops_max_m": round(flops_max / 1e6, 4), "flops_m": round(counts.flops_m, 4),
      "flops_ratio": counts.flops / flops_max, "params_m": round(counts.params_m, 4),
      "architecture": final.to_dict(), "epochs": s.epochs,
      "expected_flops_form": s.expected_flops,
      # the last epoch's record: did the supernet learn, is the architecture decided
      **{k: history[-1][k] for k in ("supernet_train_accuracy", "supernet_val_accuracy",
                                     "width_max_prob", "depth_max_prob", "expected_flops_ratio",
                                     "flops_gap")},
      "steps": s.epochs * steps_per_epoch,
      # compilations of each jitted function over the whole run (τ and permutations change per
      # epoch, as inputs): 1 each, or the search recompiled somewhere
      "compilations": {"iteration": iteration._cache_size(), "evaluate": evaluate._cache_size(),
                       "epoch_shuffle": shuffle._cache_size()},
      "devices": n_dev, "parallel": config.parallel, "wall_time_s": round(time.time() - t0, 1),
      "history": history,
  }
  path = loop.write_summary(stage_dir, summary)
  logging.info("[search] finished: F(A) = %.2f M FLOPs = %.1f%% of %.2f M (target %.0f%%), "
               "depths %s; summary in %s", counts.flops_m, 100 * summary["flops_ratio"],
               flops_max / 1e6, 100 * s.flop_ratio, list(final.depths), path)
  return summary
