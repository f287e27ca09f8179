"""Train and evaluation steps for image classifiers, pure functions compiled once per run.

A train step takes the whole dataset (uint8, resident on the device), the epoch's permutation
(also on the device) and the train state; it finds its own batch from `state.step`, so the host
sends nothing per step and never waits on the device. The same per-shard function serves both
parallel modes (`tas_jax.training.parallel`).
"""


import dataclasses
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from jax.sharding import NamedSharding

from tas_jax.data import augment
from tas_jax.training import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("accuracy")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """How a step finds and augments its batch."""
  global_batch: int
  steps_per_epoch: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int = 4
  flip: bool = True


def create_state(model: nn.Module, tx: optax.GradientTransformation, sample_input, key,
                 mesh) -> TrainState:
  """Initialises weights and optimiser state directly as replicated device arrays."""

  def init():
    variables = model.init(key, sample_input, train=False)
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}),
                      tx.init(params))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def shard_batch(spec: BatchSpec, step, perm, shard_index, shard_count):
  """Indices into the dataset and positions in the global batch of this shard's examples."""
  if spec.steps_per_epoch * spec.global_batch > perm.shape[0]:  # static: checked when tracing
    raise ValueError(f"{spec.steps_per_epoch} steps of {spec.global_batch} need "
                     f"{spec.steps_per_epoch * spec.global_batch} examples per epoch, the "
                     f"permutation has {perm.shape[0]}")
  local = spec.global_batch // shard_count
  offset = shard_index * local
  start = (step % spec.steps_per_epoch) * spec.global_batch + offset
  return jax.lax.dynamic_slice(perm, (start,), (local,)), offset + jnp.arange(local)


def augmented_batch(spec: BatchSpec, step, perm, images, labels, key, shard_index, shard_count,
                    batch_sharding: Optional[NamedSharding]):
  """This shard's (augmented, normalised images; labels) of the step's batch from `perm`."""
  idx, positions = shard_batch(spec, step, perm, shard_index, shard_count)
  if batch_sharding is not None:  # global view: spread the batch over the 'data' axis
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    positions = jax.lax.with_sharding_constraint(positions, batch_sharding)
  keys = augment.example_keys(key, positions)
  x = augment.train_batch(keys, images[idx], spec.mean, spec.std, spec.crop_padding, spec.flip)
  return x, labels[idx]


def classification_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, spec: BatchSpec, mesh,
                    mode: str, loss_fn: Optional[Callable] = None,
                    num_loss_args: int = 0) -> Callable:
  """Compiles `step(state, images, labels, key, *loss_args, perm) -> (state, TrainMetrics)`.

  `loss_fn(logits, labels, x, *loss_args)` defaults to cross-entropy; distillation passes its own,
  with the teacher's variables as a loss argument (an input of the compiled step, not a constant
  baked into it).
  """
  loss_fn = loss_fn or (lambda logits, labels, x: classification_loss(logits, labels))
  axis = parallel.AXIS if mode == "pmap" else None
  if hasattr(model, "bn_axis_name"):  # per-device code: BatchNorm averages over the mesh axis
    model = model.clone(bn_axis_name=axis)
  batch_sharding: Optional[NamedSharding] = parallel.batch_sharded(mesh) if mode == "jit" else None

  def per_shard(shard_index, shard_count, state: TrainState, images, labels, key, *rest):
    *loss_args, perm = rest
    x, y = augmented_batch(spec, state.step, perm, images, labels, jax.random.fold_in(key, state.step),
                           shard_index, shard_count, batch_sharding)

    def objective(params):
      logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
      return loss_fn(logits, y, x, *loss_args), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    if axis is not None:
      grads, loss, accuracy = jax.lax.pmean((grads, loss, accuracy), axis)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, TrainMetrics.single_from_model_output(loss=loss, accuracy=accuracy)

  return parallel.compile_step(per_shard, mesh, mode, num_args=5 + num_loss_args)


def make_eval_fn(apply_fn: Callable, mean, std, mesh, num_examples: int,
                 eval_batch: int) -> Callable:
  """Compiles `evaluate(variables, images, labels) -> {'loss', 'accuracy'}`.

  `apply_fn(variables, x)` gives the logits of normalised images in evaluation mode. `images` is
  the test set padded to a multiple of `eval_batch`; the padding is masked out. The whole pass is
  one `lax.map` over batches: one call per evaluation, no Python loop.
  """
  sharding = parallel.batch_sharded(mesh)

  def evaluate(variables, images, labels):
    n_batches = images.shape[0] // eval_batch
    xs = images.reshape((n_batches, eval_batch) + images.shape[1:])
    ys = labels.reshape((n_batches, eval_batch))
    valid = (jnp.arange(n_batches * eval_batch) < num_examples).reshape((n_batches, eval_batch))

    def one(batch):
      x, y, m = (jax.lax.with_sharding_constraint(t, sharding) for t in batch)
      logits = apply_fn(variables, augment.normalize(x, mean, std))
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return jnp.sum(ce * m), jnp.sum((jnp.argmax(logits, -1) == y) * m)

    ce, correct = jax.lax.map(one, (xs, ys, valid))
    return {"loss": ce.sum() / num_examples, "accuracy": correct.sum() / num_examples}

  return jax.jit(evaluate, compiler_options=parallel.compiler_options())
