"""Stage `search`: TAS architecture search (Dong & Yang 2019's search, as released).

The training set is split per class into halves A and B (seeded). Every iteration is one weight
step on a batch of A (cross-entropy, SGD Nesterov, cosine per epoch) followed by one architecture
step on a batch of B (cross-entropy + λ·cost, Adam, constant lr), compiled together as one
function of (state, {"a": batch, "b": batch}, key, τ): τ is an input, so the whole search
compiles once. The batches come from one in-memory source per half (`tas_jax.data.sources`).

After every epoch the argmax architecture (width per conv, depth per stage), its exact FLOPs F(A)
against F_max, E[F], τ and the losses are logged and kept in the history; `WORKDIR/search/` holds
Orbax checkpoints (weights and architecture logits apart), TensorBoard events and `summary.json`
with the final architecture.
"""

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metrics

from tas_jax import console, parallel, target as target_lib, workdir as layout
from tas_jax.data import datasets, sources
from tas_jax.methods.tas import cost, spaces
from tas_jax.ops import flops
from tas_jax.training import checkpoint, stage as stage_lib, steps, supervised


class SearchState(steps.TrainState):
  """The supernet's weights (SGD, Flax TrainState) and the architecture logits with their own
  optimiser (Adam): {"alpha": (S, 8), "beta": (stages, D)}."""

  arch: Any = None
  arch_opt_state: Any = None
  arch_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)

  def apply_arch_gradients(self, grads) -> "SearchState":
    updates, arch_opt_state = self.arch_tx.update(grads, self.arch_opt_state, self.arch)
    return self.replace(arch=optax.apply_updates(self.arch, updates), arch_opt_state=arch_opt_state)


@flax.struct.dataclass
class SearchMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")  # weight step, half A
  accuracy: metrics.Average.from_output("accuracy")
  arch_loss: metrics.Average.from_output("arch_loss")  # architecture step CE, half B
  arch_accuracy: metrics.Average.from_output("arch_accuracy")
  cost: metrics.Average.from_output("cost")
  expected_flops_ratio: metrics.Average.from_output("expected_flops_ratio")
  flops_ratio: metrics.LastValue.from_output("flops_ratio")  # F(A) / F_max of the argmax


def tau_schedule(s: ml_collections.ConfigDict) -> optax.Schedule:
  """epoch -> τ: cosine (released) or linear (paper) from tau_max to tau_min over the epochs."""
  epochs = max(s.epochs - 1, 1)
  if s.tau_schedule == "cosine":
    return optax.cosine_decay_schedule(s.tau_max, epochs, alpha=s.tau_min / s.tau_max)
  return optax.linear_schedule(s.tau_max, s.tau_min, epochs)


def tau_at(s: ml_collections.ConfigDict, epoch: int) -> float:
  """τ of an epoch: the optax schedule evaluated once per epoch on the host's CPU in float64, then
  handed to the step as a float32 input (float32 arithmetic would round τ differently by an ulp,
  which a search's argmax decisions can amplify)."""
  with jax.enable_x64(True), jax.default_device(jax.local_devices(backend="cpu")[0]):
    return float(tau_schedule(s)(epoch))


def optimizers(s: ml_collections.ConfigDict, steps_per_epoch: int):
  """(weight optimiser, its schedule, architecture optimiser)."""
  # cosine to 0 stepped per epoch, after `warmup_epochs` of linear warm-up per iteration
  per_epoch = optax.cosine_decay_schedule(s.lr, s.epochs - s.warmup_epochs)

  def cosine(count):
    return per_epoch(count // steps_per_epoch)

  schedule = (
    cosine
    if s.warmup_epochs == 0
    else optax.join_schedules(
      [optax.linear_schedule(0.0, s.lr, s.warmup_epochs * steps_per_epoch), cosine],
      [s.warmup_epochs * steps_per_epoch],
    )
  )

  weights = optax.chain(
    optax.add_decayed_weights(s.weight_decay),
    optax.sgd(schedule, momentum=s.momentum, nesterov=s.nesterov),
  )
  if s.arch_lr_schedule == "cosine":
    arch_lr = optax.cosine_decay_schedule(s.arch_lr, s.epochs * steps_per_epoch)
  elif s.arch_cooldown_epochs:
    # constant, then cosine to 0 over the last epochs: the argmax stops flipping across the band
    # once the cost has brought it there (a deviation; the released lr stays constant)
    hold = (s.epochs - s.arch_cooldown_epochs) * steps_per_epoch
    arch_lr = optax.join_schedules(
      [
        optax.constant_schedule(s.arch_lr),
        optax.cosine_decay_schedule(s.arch_lr, s.arch_cooldown_epochs * steps_per_epoch),
      ],
      [hold],
    )
  else:
    arch_lr = s.arch_lr  # the released recipe
  arch = optax.chain(
    optax.add_decayed_weights(s.arch_weight_decay),
    optax.adam(arch_lr, b1=s.arch_beta1, b2=s.arch_beta2),
  )
  return weights, schedule, arch


def step_keys(key, step):
  """(augmentation of half A, of half B, the supernet's sampling on A, on B) of one iteration."""
  return jax.random.split(jax.random.fold_in(key, step), 4)


def make_search_step(
  net,
  space,
  s: ml_collections.ConfigDict,
  target: target_lib.Target,
  mesh,
  mode: str,
  fingerprint: Optional[dict] = None,
):
  """Compiles `iteration(state, batch, (key, tau)) -> (state, metrics)`; the batch holds one batch
  of each half, `{"a": …, "b": …}`. `s`: config.search; `target`: what the cost prices (FLOPs, or
  a latency table: the metrics' ratios stay FLOPs). With `fingerprint` (`stage.step_fingerprint`)
  the lowered iteration is kept in the compilation cache for the next launch."""
  axis = parallel.step_axis(mode)
  net = net.clone(axis_name=axis)
  flops_max = float(flops.count(space.base).flops)
  cost_max = target.full

  def priced(arch):
    """(E[cost], cost of the argmax network) in the search's measure."""
    return space.priced(arch, target, s.expected_flops, s.variant, s.branch_flops)

  def iteration(state: SearchState, batch, extras):
    key, tau = extras
    _, _, k_net_a, k_net_b = step_keys(key, state.step)
    xa, ya = batch["a"]["image"], batch["a"]["label"]
    xb, yb = batch["b"]["image"], batch["b"]["label"]

    # --- weight step on half A: the architecture is a constant here ---
    def weight_objective(params):
      logits, upd = net.apply(
        {"params": params, "batch_stats": state.batch_stats},
        xa,
        state.arch,
        k_net_a,
        tau,
        train=True,
        mutable=["batch_stats"],
      )
      return steps.classification_loss(logits, ya), (logits, upd.get("batch_stats", {}))

    (w_loss, (logits_a, batch_stats)), grads = jax.value_and_grad(weight_objective, has_aux=True)(
      state.params
    )
    grads, w_loss = parallel.mean((grads, w_loss), axis)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

    # --- architecture step on half B, with the new weights held constant ---
    def arch_objective(arch):
      logits, upd = net.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        xb,
        arch,
        k_net_b,
        tau,
        train=True,
        mutable=["batch_stats"],
      )
      ce = steps.classification_loss(logits, yb)
      expected, exact = priced(arch)
      c = cost.cost_loss(
        expected, exact, cost_max, target.ratio, target.tolerance, s.band, s.in_band
      )
      return ce + s.cost_weight * c, (ce, c, expected, exact, logits, upd.get("batch_stats", {}))

    (_, (a_ce, c, expected, exact, logits_b, batch_stats)), a_grads = jax.value_and_grad(
      arch_objective, has_aux=True
    )(state.arch)
    if target.by_table:  # the metrics' ratios are FLOPs in either measure
      expected = space.expected_flops(state.arch, s.expected_flops, s.variant)
    if target.by_table or s.branch_flops != "exact":  # and F(A) the exact count
      exact = space.exact_flops(*space.argmax(state.arch, s.variant))
    a_grads, a_ce = parallel.mean((a_grads, a_ce), axis)
    state = state.apply_arch_gradients(a_grads).replace(batch_stats=batch_stats)

    acc_a, acc_b = parallel.mean(
      (jnp.mean(jnp.argmax(logits_a, -1) == ya), jnp.mean(jnp.argmax(logits_b, -1) == yb)), axis
    )
    return state, SearchMetrics.single_from_model_output(
      loss=w_loss,
      accuracy=acc_a,
      arch_loss=a_ce,
      arch_accuracy=acc_b,
      cost=c,
      expected_flops_ratio=expected / flops_max,
      flops_ratio=exact / flops_max,
    )

  kept = (
    ("tas_search_iteration", fingerprint, lambda state, *_: (state, SearchMetrics.empty()))
    if fingerprint is not None
    else None
  )
  return parallel.compile_step(iteration, mesh, mode, extras=True, kept=kept)


def _state_parts(net, space, tx, arch_tx, sample_input):
  """(variables(key_data), state(variables)): the two programs that make the search state."""

  def variables(key_data):
    k_init, k_arch = jax.random.split(jax.random.wrap_key_data(key_data))
    arch = space.init_logits(k_arch)
    v = net.init(k_init, sample_input, arch, k_init, 1.0, train=True)
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {}), "arch": arch}

  def state(v):
    return SearchState.create(
      apply_fn=net.apply,
      params=v["params"],
      tx=tx,
      batch_stats=v["batch_stats"],
      arch=v["arch"],
      arch_opt_state=arch_tx.init(v["arch"]),
      arch_tx=arch_tx,
    )

  return variables, state


def create_state(
  net, space, tx, arch_tx, sample_input, key, mesh, fingerprint: Optional[dict] = None
) -> SearchState:
  """The supernet's state: its variables and α/β (one program, kept in the compilation cache
  with `fingerprint`, as the iteration is), then the optimisers' states."""
  variables, state = _state_parts(net, space, tx, arch_tx, sample_input)
  if fingerprint is not None:
    fingerprint = {**fingerprint, "sample_input": repr(jax.typeof(sample_input))}
  v = parallel.kept_once(variables, mesh, "tas_supernet_init", fingerprint)(
    jax.random.key_data(key)
  )
  return parallel.jit_once(state, out_shardings=parallel.replicated(mesh))(v)


def state_shapes(net, space, tx, arch_tx, sample_input, key, mesh) -> SearchState:
  """`create_state`'s result as `jax.ShapeDtypeStruct`s, replicated over `mesh`, without
  running or compiling anything: what compiling the iteration ahead needs before the state is
  made."""
  variables, state = _state_parts(net, space, tx, arch_tx, sample_input)
  shapes = jax.eval_shape(lambda k: state(variables(k)), jax.random.key_data(key))
  replicated = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), shapes)


def _from_teacher(state: SearchState, space, tx, workdir: str, mesh, variant: str) -> SearchState:
  """The supernet's weights from the teacher's checkpoint: every conv its trained kernel, every
  width candidate its trained BN (a search-only BN starts as the identity)."""
  base = space.base
  _, variables, step = checkpoint.read_teacher(
    workdir,
    parallel.replicated(mesh),
    "search",
    expected=base,
    mismatch=lambda teacher: (
      f"config.search.init='teacher': the teacher in {workdir}/teacher is "
      f"{teacher.name or 'a different network'}, the search runs on {base.name or 'custom'}"
    ),
  )
  params, stats = space.supernet_weights(
    variables["params"], variables.get("batch_stats", {}), variant
  )
  params, stats = jax.device_put((params, stats), parallel.replicated(mesh))
  logging.info("[search] supernet weights from the teacher's checkpoint at step %d", step)
  opt_state = parallel.jit_once(tx.init, out_shardings=parallel.replicated(mesh))(params)
  return state.replace(params=params, batch_stats=stats, opt_state=opt_state)


def record_architecture(
  space,
  arch_logits,
  flops_max: float,
  s: ml_collections.ConfigDict,
  target: Optional[target_lib.Target] = None,
) -> dict:
  """The argmax architecture as a history entry: widths per conv, depths, F(A), E[F], and how
  decided the distributions are (mean over convs / stages of the most likely candidate's
  probability: 1/8 … 1 for widths); with a latency table, its table latency and E[latency] as
  ratios to the unpruned network's."""
  w_idx, d_idx = jax.device_get(space.argmax(arch_logits, s.variant))
  a = space.architecture(w_idx, d_idx)
  counts = flops.count(a)
  expected = float(space.expected_flops(arch_logits, s.expected_flops, s.variant))
  p_width, p_depth = jax.device_get(space.probabilities(arch_logits, s.variant))
  return {
    "flops_ratio": counts.flops / flops_max,
    "flops_m": round(counts.flops_m, 4),
    "params_m": round(counts.params_m, 4),
    "expected_flops_ratio": expected / flops_max,
    "expected_flops_form": s.expected_flops,
    "flops_gap": abs(expected - counts.flops) / flops_max,
    "width_max_prob": float(np.mean(np.max(p_width, -1))),
    # 1 where there is no depth to choose (a user's model)
    "depth_max_prob": float(np.mean(np.max(p_depth, -1))) if p_depth.size else 1.0,
    "widths": [slot.candidates[int(i)] for slot, i in zip(space.slots, w_idx)],
    "depths": list(a.depths),
    **latency_record(space, arch_logits, a, s, target),
  }


def latency_record(space, arch_logits, a, s, target: Optional[target_lib.Target]) -> dict:
  """The argmax network's table latency and E[latency] as ratios (and ms) of the unpruned
  network's, when the target prices by a latency table; {} otherwise."""
  if target is None or not target.by_table:
    return {}
  full = target.full
  expected = float(
    cost.expected_latency(space, arch_logits, target.table, s.expected_flops, s.variant)
  )
  return {
    "latency_ratio": target.network(a) / full,
    "expected_latency_ratio": expected / full,
    "latency_ms": round(1e3 * target.network(a), 4),
    "latency_max_ms": round(1e3 * full, 4),
  }


def search(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) the search stage; returns its summary."""
  s, ratio = config.search, config.target.flop_ratio
  stage_dir = layout.search_dir(workdir)
  mesh, ds = supervised.load_inputs(config, s.eval_batch_size)
  base = supervised.architecture(config, ds.num_classes, ds.image_size, ds.channels)
  space = spaces.of(base)
  # base_arch.json: extraction rebuilds the search space from it
  run = stage_lib.Stage.open(config, "search", stage_dir, mesh, files={layout.BASE_ARCH: base})
  flops_max = float(flops.count(base).flops)
  n_dev = mesh.shape[parallel.AXIS]
  half_a, half_b = datasets.split_per_class(ds.train_labels, config.seed)
  steps_per_epoch = sources.check_batch(
    "search.batch_size", s.batch_size, n_dev, min(len(half_a), len(half_b))
  )
  target = target_lib.Target.build(config, base, workdir)
  measure = target.label
  logging.info(
    "[search] TAS(%s) on %s of %s: target %.0f%% of the %s (%.2f M FLOPs%s), %s; halves of "
    "%d/%d images, %d iterations per epoch, %d device(s)",
    s.variant,
    base.name or "custom",
    ds.name,
    100 * ratio,
    measure,
    flops_max / 1e6,
    f", {1e3 * target.full:.2f} ms table latency" if target.by_table else "",
    space.describe(),
    len(half_a),
    len(half_b),
    steps_per_epoch,
    n_dev,
  )

  net = space.supernet(s.variant, jnp.dtype(config.model.dtype), config.model.scan_blocks)
  tx, schedule, arch_tx = optimizers(s, steps_per_epoch)
  # the iteration first: a program kept by an earlier launch loads while the state is made
  fingerprint = stage_lib.step_fingerprint(config, target=target, steps_per_epoch=steps_per_epoch)
  iteration = make_search_step(net, space, s, target, mesh, config.parallel, fingerprint)
  ahead = hasattr(iteration, "prefetch")  # kept in the compilation cache: made in a thread
  loading = ahead and iteration.prefetch()  # a program an earlier launch kept loads meanwhile
  init_key, aug_key = jax.random.split(jax.random.key(config.seed))
  sample = jnp.zeros((2, ds.image_size, ds.image_size, ds.channels))
  # one batch of each half per iteration; each half reshuffled per epoch with its own key
  perm_key = jax.random.fold_in(jax.random.key(config.seed), 2)
  halves = sources.Zipped(
    a=ds.train_source(
      half_a,
      s.batch_size,
      seed=2 * config.seed + 1,
      epoch_key=lambda e: jax.random.fold_in(perm_key, 2 * e),
      step_key=lambda step: step_keys(aug_key, step)[0],
      steps_per_epoch=steps_per_epoch,
    ),
    b=ds.train_source(
      half_b,
      s.batch_size,
      seed=2 * config.seed + 2,
      epoch_key=lambda e: jax.random.fold_in(perm_key, 2 * e + 1),
      step_key=lambda step: step_keys(aug_key, step)[1],
      steps_per_epoch=steps_per_epoch,
    ),
  )
  test_source = ds.eval_source()
  batch = halves.abstract_batch()
  if ahead and not loading and batch is not None:  # nothing kept: compiled in a thread from the
    # state's shapes, while the state is made, the teacher's weights (and, in the loop, a
    # checkpoint) load and the first batches are gathered
    tau0 = jax.device_put(np.float32(tau_at(s, 0)), parallel.replicated(mesh))
    shapes = state_shapes(net, space, tx, arch_tx, sample, init_key, mesh)
    iteration.prefetch((shapes, batch, parallel.abstract((aug_key, tau0))))
  state = create_state(net, space, tx, arch_tx, sample, init_key, mesh, fingerprint)
  if s.init == "teacher":
    state = _from_teacher(state, space, tx, workdir, mesh, s.variant)
  eval_step = steps.make_eval_step(
    # the argmax network with batch statistics (see tas_jax.methods.tas.supernet); the running
    # statistics a user's BatchNorm would update meanwhile are dropped
    lambda v, x: net.apply(
      {"params": v[0], "batch_stats": v[1]},
      x,
      v[2],
      jax.random.key(0),
      1.0,
      train=True,
      argmax=True,
      mutable=["batch_stats"],
    )[0]
  )

  def end_of_epoch(state, epoch, train):
    entry = {
      "tau": round(tau_at(s, epoch), 5),
      "supernet_train_accuracy": train["accuracy"],  # weight steps, half A
      "supernet_val_accuracy": train["arch_accuracy"],  # architecture steps, half B
      **record_architecture(space, state.arch, flops_max, s, target),
    }
    if s.evaluate_every_epoch:
      test = steps.evaluate(
        eval_step,
        (state.params, state.batch_stats, state.arch),
        test_source.batches(),
        test_source.num_examples,
      )
      entry["argmax_test_accuracy"] = test["accuracy"]
      entry["argmax_test_top5_accuracy"] = test["top5_accuracy"]
    console.detail(
      "[search] epoch %d: argmax widths %s depths %s%s",
      epoch + 1,
      entry["widths"],
      entry["depths"],
      f"; F(A) {entry['flops_ratio']:.1%}, E[F] {entry['expected_flops_ratio']:.1%}, "
      f"table latency {entry['latency_ratio']:.1%} (E {entry['expected_latency_ratio']:.1%})"
      " of the unpruned network's"
      if target.by_table
      else "",
    )
    return entry

  state, history = run.fit(
    state,
    iteration,
    halves,
    end_of_epoch,
    epochs=s.epochs,
    steps_per_epoch=steps_per_epoch,
    batch_size=s.batch_size,
    learning_rate=lambda st: float(schedule(st)),
    step_args=(aug_key,),
    epoch_args=lambda epoch: (
      jax.device_put(np.float32(tau_at(s, epoch)), parallel.replicated(mesh)),
    ),
    starts_from="the teacher's weights" if s.init == "teacher" else "scratch",
  )
  if history is None:
    return run.unfinished(state)
  w_idx, d_idx = jax.device_get(space.argmax(state.arch, s.variant))
  final = space.named_architecture(w_idx, d_idx)
  counts = flops.count(final)
  summary = {
    "stage": "search",
    "finished": True,
    "variant": s.variant,
    "dataset": ds.name,
    "base_architecture": base.name,
    "flop_ratio_target": ratio,
    "flops_max_m": round(flops_max / 1e6, 4),
    "flops_m": round(counts.flops_m, 4),
    "flops_ratio": counts.flops / flops_max,
    "params_m": round(counts.params_m, 4),
    "architecture": final.to_dict(),
    "epochs": s.epochs,
    "expected_flops_form": s.expected_flops,
    "cost": target.measure,
    **(
      {k: history[-1][k] for k in ("latency_ratio", "latency_ms", "latency_max_ms")}
      if target.by_table
      else {}
    ),
    # the last epoch's record: did the supernet learn, is the architecture decided
    **{
      k: history[-1][k]
      for k in (
        "supernet_train_accuracy",
        "supernet_val_accuracy",
        "width_max_prob",
        "depth_max_prob",
        "expected_flops_ratio",
        "flops_gap",
      )
    },
    "steps": s.epochs * steps_per_epoch,
    # compilations of each jitted function over the whole run (τ and permutations change per
    # epoch, as inputs): 1 each, or the search recompiled somewhere
    "compilations": {
      "iteration": iteration._cache_size(),
      "eval_step": eval_step._cache_size(),
      **{
        f"{k}_{half}": v
        for half in ("a", "b")
        for k, v in getattr(halves.source(half), "compilations", dict)().items()
      },
    },
    "history": history,
  }
  on_target = summary["latency_ratio"] if target.by_table else summary["flops_ratio"]
  low, high = target.band(s.band)
  summary["in_band"] = target.in_band(on_target, s.band)
  if not summary["in_band"]:
    logging.warning(
      "[search] the searched network has %.1f%% of the %s, outside the band %.0f%%–%.0f%%: %s",
      100 * on_target,
      measure,
      100 * low,
      100 * high,
      f"search.cost_weight (now {s.cost_weight:g}) sets how hard the cost pulls it into the band "
      f"and search.epochs (now {s.epochs}) how long it has (target.tolerance, now "
      f"{config.target.tolerance:g}, its width); extraction takes this network as it is",
    )
  return run.finish(
    summary,
    "[search] finished: F(A) = %.2f M FLOPs = %.1f%% of %.2f M%s (target %.0f%% of the "
    "%s), depths %s",
    counts.flops_m,
    100 * summary["flops_ratio"],
    flops_max / 1e6,
    f", table latency {summary['latency_ms']:.2f} ms = {summary['latency_ratio']:.1%} "
    f"of {summary['latency_max_ms']:.2f} ms"
    if target.by_table
    else "",
    100 * ratio,
    measure,
    list(final.depths),
  )
