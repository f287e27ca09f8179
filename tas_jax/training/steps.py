"""Train and evaluation steps for image classifiers: pure functions of `(state, batch)` (or
`(state, batch, extras)`, one tree of what else a step reads: a teacher's weights), compiled once.

The batch is a dict of global arrays sharded along 'data' (`tas_jax.data.sources`); where it came
from (gathered on the device, or streamed from each host) is not the step's business. The same
step function serves both parallel modes (`tas_jax.parallel.compile_step`; `parallel.mean` is the
one cross-device average).
"""

from typing import Any, Callable, Iterable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics
from flax.training import train_state

from tas_jax import parallel


class TrainState(train_state.TrainState):
  """Flax's TrainState (step, params, optimiser) plus the BatchNorm running statistics."""

  batch_stats: Any = None


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Average.from_output("accuracy")


def create_state(
  model: nn.Module, tx: optax.GradientTransformation, sample_input, key, mesh
) -> TrainState:
  """Initialises weights and optimiser state directly as replicated device arrays."""

  def init():
    variables = model.init(key, sample_input, train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
    )

  return parallel.jit_once(init, out_shardings=parallel.replicated(mesh))()


def classification_loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(
  model: nn.Module, mesh, mode: str, loss_fn: Optional[Callable] = None
) -> Callable:
  """Compiles `step(state, batch) -> (state, TrainMetrics)` with cross-entropy, or, given
  `loss_fn(logits, labels, images, *extras)`, `step(state, batch, extras)`: distillation's loss,
  the teacher's variables in `extras` (an input of the compiled step, not a constant baked into
  it).
  """
  axis = parallel.step_axis(mode)
  if hasattr(model, "bn_axis_name"):  # per-device code: BatchNorm averages over the mesh axis
    model = model.clone(bn_axis_name=axis)

  def step(state: TrainState, batch: dict, extras: tuple = ()):
    x, y = batch["image"], batch["label"]

    def objective(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      loss = (
        loss_fn(logits, y, x, *extras) if loss_fn is not None else classification_loss(logits, y)
      )
      # a network without BN (a deployed RepVGG) has no statistics to update
      return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    grads, loss, accuracy = parallel.mean((grads, loss, accuracy), axis)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return new_state, TrainMetrics.single_from_model_output(loss=loss, accuracy=accuracy)

  return parallel.compile_step(step, mesh, mode, extras=loss_fn is not None)


def make_eval_step(apply_fn: Callable) -> Callable:
  """Compiles `eval_step(variables, batch) -> {'loss_sum', 'correct', 'correct_top5'}` over the
  batch's real
  examples (`batch['mask']`). `apply_fn(variables, images)` gives the logits in evaluation mode."""

  def eval_step(variables, batch):
    logits = apply_fn(variables, batch["image"])
    labels, mask = batch["label"], batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    _, top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))
    return {
      "loss_sum": jnp.sum(ce * mask),
      "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
      "correct_top5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
    }

  return jax.jit(eval_step, compiler_options=parallel.compiler_options())


def evaluate(eval_step: Callable, variables, batches: Iterable[dict], num_examples: int) -> dict:
  """{'loss', 'accuracy', 'top5_accuracy'} over one pass of `batches`; the sums stay on the
  device until the end."""
  total = None
  for batch in batches:
    sums = eval_step(variables, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  total = jax.device_get(total)
  return {
    "loss": float(total["loss_sum"]) / num_examples,
    "accuracy": float(total["correct"]) / num_examples,
    "top5_accuracy": float(total["correct_top5"]) / num_examples,
  }
