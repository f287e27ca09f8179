"""Stage `distill`: train the pruned network, with knowledge distillation from the teacher (TAS's
released training recipe).

The student is a method's extracted network (`distill.student=tas`: `WORKDIR/extract/arch.json`;
`pas`, `l1`, `fpgm`: `WORKDIR/extract-NAME/`, fine-tuned from its extracted weights,
`distill.init=searched`, with the method's own recipe where it has one — PaS's as released — and,
for a RepVGG, in training form with the masks frozen, cut into `deploy/` at the end), a baseline
at the FLOPs of `config.method`'s extraction (`uniform`: one width multiplier; `random`: a random
draw from the search space) or any architecture JSON / named network. It is built by the same
model code as the teacher, physically smaller, and trained with the teacher's recipe
(`config.distill`, or the method's fine-tuning recipe) and, with `distill.kd`, the loss

    (1 - a)·CE(z, y) + a·T²·KL(softmax(ẑ/T) ‖ softmax(z/T)),   a = 0.9, T = 4,

where ẑ are the logits of the teacher (read from its Orbax checkpoint, eval mode, same augmented
batch). `distill.init=teacher` starts from the teacher's first-k channels ("w/ Init"). Each run
has its own folder `WORKDIR/distill/STUDENT-{kd|ce}[-init]/`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from tas_jax import config as config_lib, methods, parallel, workdir as layout
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.methods import extraction
from tas_jax.models import arch as arch_lib, channels, networks, resnet
from tas_jax.ops import flops
from tas_jax.stages import baselines
from tas_jax.training import checkpoint, steps, supervised


def kd_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
  """(1 - a)·CE(student, labels) + a·T²·KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean."""
  ce = steps.classification_loss(student_logits, labels)
  kl = optax.kl_divergence(
    jax.nn.log_softmax(student_logits / temperature), jax.nn.softmax(teacher_logits / temperature)
  ).mean()
  return (1 - alpha) * ce + alpha * temperature**2 * kl


def _require(path: str, stage: str) -> str:
  if not os.path.exists(path):
    raise CheckpointNotFoundError(
      f"{path} is missing: run --config.stage={stage} with this --workdir first"
    )
  return path


def _extracted(workdir: str, method: str) -> arch_lib.Architecture:
  return networks.load(
    _require(
      os.path.join(layout.extract_dir(workdir, method), layout.ARCH),
      layout.stage_flags("extract", method),
    )
  )


def student_architecture(
  d: ml_collections.ConfigDict, workdir: str, method: str = layout.DEFAULT_METHOD
) -> tuple[arch_lib.Architecture, dict]:
  """The network to train, and how it was chosen (for the summary); baselines match the FLOPs of
  `method`'s extraction."""
  if d.student not in config_lib.students():
    return networks.resolve(d.student), {"student": d.student}
  if methods.is_method(d.student):
    return _extracted(workdir, d.student), {"student": d.student}
  searched = _extracted(workdir, method)
  base = networks.load(
    _require(
      os.path.join(layout.search_dir(workdir, method), layout.BASE_ARCH),
      layout.stage_flags("search", method),
    )
  )
  target = flops.count(searched).flops
  stem = base.name or "custom"
  if d.student == "uniform":
    a = baselines.uniform(base, target, name=f"{stem}_uniform")
  else:
    a = baselines.random(
      base, target, d.flops_tolerance, d.baseline_seed, name=f"{stem}_random{d.baseline_seed}"
    )
  return a, {"student": d.student, "target_flops_m": round(target / 1e6, 4)}


def distill(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes, or finds finished) one distill run; returns its summary."""
  d = config.distill
  if d.init == "searched" and methods.get(d.student).finetune is not None:
    d = methods.get(d.student).finetune(config)  # the method's recipe for its kept weights
  run = config_lib.run_name(d)
  logging.info(
    "[distill] %s: %s%s; %s",
    run,
    d.get("description", "the distill recipe"),
    f", KD from the teacher (a={d.kd_alpha:g}, T={d.kd_temperature:g})" if d.kd else ", no KD",
    supervised.describe(d),
  )
  if d.init == "scratch" and config_lib.keeps_weights(d.student):
    logging.info(
      "[distill] %s: %s's architecture trained from scratch; --config.distill.init=searched "
      "fine-tunes its extracted weights with its paper's recipe instead (the pipeline's %s-%s)",
      run,
      d.student,
      d.student,
      "kd" if d.kd else "ce",
    )
  mesh, ds = supervised.load_inputs(config, d.eval_batch_size)
  student, chosen = student_architecture(d, workdir, config.method)
  supervised.check_fits(student, ds, f"config.distill.student={d.student!r}")
  dtype = jnp.dtype(config.model.dtype)
  needs_teacher = d.kd or d.init == "teacher"
  teacher_arch, teacher_vars, teacher_step = (
    checkpoint.read_teacher(workdir, parallel.replicated(mesh), "distill")
    if needs_teacher
    else (None, None, None)
  )
  if teacher_arch is not None:
    supervised.check_fits(teacher_arch, ds, f"the teacher in {workdir}/teacher")

  loss_fn, loss_args = None, ()
  if d.kd:
    teacher_model = networks.build(teacher_arch, dtype=dtype, scan_blocks=config.model.scan_blocks)

    def loss_fn(logits, labels, x, teacher_variables):
      teacher_logits = jax.lax.stop_gradient(teacher_model.apply(teacher_variables, x, train=False))
      return kd_loss(logits, teacher_logits, labels, d.kd_alpha, d.kd_temperature)

    loss_args = (teacher_vars,)

  init_variables, model, finish = None, None, None
  form = extraction.training_form(workdir, d.student) if d.init == "searched" else None
  if form is not None:
    model, init_variables, finish = _training_form(
      workdir, layout.distill_dir(workdir, run), d.student, *form, student, dtype
    )
  elif d.init == "searched":

    def init_variables(params, batch_stats):
      weights = extraction.read_weights(
        workdir, d.student, checkpoint.abstract({"params": params, "batch_stats": batch_stats})
      )
      logging.info(
        "[distill] fine-tuning the weights %s's extraction kept (%d arrays)",
        d.student,
        len(jax.tree.leaves(weights)),
      )
      return weights["params"], weights["batch_stats"]
  elif d.init == "teacher":

    def init_variables(params, batch_stats):
      params, n_params = resnet.inherit_first_channels(params, teacher_vars["params"])
      batch_stats, _ = resnet.inherit_first_channels(batch_stats, teacher_vars["batch_stats"])
      logging.info(
        "[distill] w/ Init: %d of %d weight arrays start from the teacher's first channels",
        n_params,
        len(jax.tree.leaves(params)),
      )
      return params, batch_stats

  method = d.student if methods.is_method(d.student) else config.method
  reference = teacher_arch or networks.load(
    _require(
      os.path.join(layout.search_dir(workdir, method), layout.BASE_ARCH),
      layout.stage_flags("search", method),
    )
  )
  extra = {
    "run": run,
    **chosen,
    "kd": d.kd,
    "kd_alpha": d.kd_alpha,
    "kd_temperature": d.kd_temperature,
    "init": d.init,
    "teacher_step": teacher_step,
    "reference_flops_m": round(flops.count(reference).flops_m, 4),
    "flops_ratio": flops.count(student).flops / flops.count(reference).flops,
    "architecture_spec": student.to_dict(),
  }
  return supervised.train_network(
    config,
    d,
    "distill",
    f"distill/{run}",
    layout.distill_dir(workdir, run),
    mesh,
    ds,
    student,
    loss_fn,
    loss_args,
    init_variables,
    extra,
    model,
    finish,
    starts_from={
      "searched": f"the weights {d.student}'s extraction kept",
      "teacher": "the teacher's first channels (w/ Init)",
    }.get(d.init, ""),
  )


def _training_form(workdir: str, run_dir: str, method: str, base, kept: dict, pruned, dtype):
  """(model, init_variables, finish) of a fine-tuning in training form: the unpruned network
  with its removed channels gated off (frozen masks), from the extraction's training-form
  weights; at the end it is cut into `pruned` (a RepVGG: reparameterised, then cut), which
  goes to the run's deploy/ folder and is evaluated again — its accuracy is the run's."""
  model = channels.Gated(base, channels.as_static(kept), dtype=dtype)

  def init_variables(params, batch_stats):
    weights = extraction.read_training_form(
      workdir,
      method,
      checkpoint.abstract({"params": params["network"], "batch_stats": batch_stats["network"]}),
    )
    logging.info(
      "[distill] fine-tuning %s's kept weights in training form (%s, masks frozen), cut at the end",
      method,
      base.name or "custom",
    )
    return {"network": weights["params"]}, {"network": weights["batch_stats"]}

  def finish(state, evaluate):
    trained = jax.device_get(
      {"params": state.params["network"], "batch_stats": state.batch_stats["network"]}
    )
    cut_arch, cut_vars = channels.cut(base, trained, kept, name=pruned.name)
    if cut_arch.to_dict() != pruned.to_dict():
      raise AssertionError(f"the fine-tuned network cuts into {cut_arch}, not {pruned}")
    deployed = evaluate(lambda v, x: networks.build(cut_arch).apply(v, x, train=False), cut_vars)
    gated = evaluate(
      lambda v, x: model.apply({"params": v[0], "batch_stats": v[1]}, x, train=False),
      (state.params, state.batch_stats),
    )
    deploy_dir = os.path.join(run_dir, layout.DEPLOY)
    extraction.save_weights(os.path.join(deploy_dir, layout.WEIGHTS), cut_vars)
    if layout.is_writer():
      cut_arch.save(os.path.join(deploy_dir, layout.ARCH))
    logging.info(
      "[distill] cut into %s (%s): test accuracy %.2f%%, the training form's %.2f%%",
      cut_arch.name,
      deploy_dir,
      100 * deployed["accuracy"],
      100 * gated["accuracy"],
    )
    return {
      "test_accuracy": deployed["accuracy"],
      "test_top5_accuracy": deployed["top5_accuracy"],
      "test_loss": deployed["loss"],
      "training_form_test_accuracy": gated["accuracy"],
      "training_form_test_loss": gated["loss"],
      "deployed_from": "training form, masks frozen",
    }

  return model, init_variables, finish
