"""Train steps on a given number of devices and parallel mode; used by test_train.py and
test_search.py, in this process or, for a device count this process does not have, in a child
process with XLA_FLAGS=--xla_force_host_platform_device_count=N. The batches come from the
in-memory source, as in the stages."""

import dataclasses
import json
import sys

import jax
import numpy as np

from tas_jax import parallel
from tas_jax.config import base_config
from tas_jax.data import datasets, sources
from tas_jax.models import arch, resnet
from tas_jax.target import Target
from tas_jax.training import steps, supervised


def _data(mesh, n_train=256):
  ds = datasets.load("embedded")
  ds = dataclasses.replace(
    ds,
    train_images=ds.train_images[:n_train],
    train_labels=ds.train_labels[:n_train],
    test_images=ds.test_images[:64],
    test_labels=ds.test_labels[:64],
  )
  return ds, sources.DeviceDataset(ds, mesh, 64)


def _source(ds, data, batch=64):
  return sources.InMemorySource(
    data,
    np.arange(len(ds.train_labels)),
    batch,
    sources.Augmentation(ds.mean, ds.std),
    supervised.permutation_key(0),
    lambda step: jax.random.fold_in(jax.random.key(1), step),
  )


def _flat(state):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves((state.params, state.batch_stats))])


def one_step(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  mesh = parallel.make_mesh(num_devices)
  ds, data = _data(mesh)
  a = arch.cifar_resnet(8, num_classes=10, input_size=28, input_channels=1)
  model = resnet.build(a)
  t = base_config().teacher
  t.warmup_epochs, t.cosine_epochs = 0, 1
  tx, _ = supervised.sgd_with_warmup_cosine(t, steps_per_epoch=4)
  state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  step = steps.make_train_step(model, mesh, mode)
  batches = _source(ds, data).iterate(0)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, next(batches))
    losses.append(float(m.compute()["loss"]))
  flat = _flat(state)
  return {
    "losses": losses,
    "params_head": flat[:2000].tolist(),
    "params_norm": float(np.linalg.norm(flat)),
    "devices": mesh.shape[parallel.AXIS],
  }


def one_search_iteration(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  """TAS search iterations (weight step + architecture step) of ResNet-14: the metrics of every
  iteration, and the weights and architecture logits after the first."""
  from tas_jax.methods.tas import search, spaces, supernet

  mesh = parallel.make_mesh(num_devices)
  ds, data = _data(mesh)
  space = spaces.of(arch.cifar_resnet(14, num_classes=10, input_size=28, input_channels=1))
  c = base_config()
  s = c.search
  s.epochs = 2
  net = supernet.SuperNet(space)
  tx, _, arch_tx = search.optimizers(s, steps_per_epoch=2)
  state = search.create_state(
    net, space, tx, arch_tx, np.zeros((2, 28, 28, 1), np.float32), jax.random.key(0), mesh
  )
  half_a, half_b = datasets.split_per_class(ds.train_labels, 0)
  batch = 48  # two iterations fit in the smaller half (125 images)
  assert 2 * batch <= min(len(half_a), len(half_b))
  key = jax.random.key(1)
  halves = sources.Zipped(
    **{
      name: sources.InMemorySource(
        data,
        half,
        batch,
        sources.Augmentation(ds.mean, ds.std),
        lambda e, i=i: jax.random.fold_in(jax.random.key(2), 2 * e + i),
        lambda step, i=i: search.step_keys(key, step)[i],
        steps_per_epoch=2,
      )
      for i, (name, half) in enumerate((("a", half_a), ("b", half_b)))
    }
  )
  step = search.make_search_step(
    net, space, s, Target.flops(space.base, c.target.flop_ratio, c.target.tolerance), mesh, mode
  )
  tau = parallel.put_replicated(np.float32(3.0), mesh)
  batches = halves.iterate(0)
  out, after_first = [], None
  for _ in range(num_steps):
    state, m = step(state, next(batches), (key, tau))
    out.append({k: float(v) for k, v in m.compute().items()})
    if after_first is None:  # the state after exactly one iteration
      after_first = {
        "alpha": np.asarray(state.arch["alpha"]).ravel().tolist(),
        "beta": np.asarray(state.arch["beta"]).ravel().tolist(),
        "params_head": _flat(state)[:2000].tolist(),
      }
  return {
    "metrics": out,
    **after_first,
    "devices": mesh.shape[parallel.AXIS],
    "compilations": step._cache_size(),
  }


def one_distill_step(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  """KD steps of a pruned ResNet-8 from a (randomly initialised) ResNet-8 teacher whose variables
  are an input of the step."""
  from tas_jax.stages import distill

  mesh = parallel.make_mesh(num_devices)
  ds, data = _data(mesh)
  teacher_arch = arch.cifar_resnet(8, num_classes=10, input_size=28, input_channels=1)
  student_arch = arch.Architecture(
    **{**teacher_arch.to_dict(), "stem_width": 8, "stages": [[[8, 16]], [[16, 24]], [[40, 48]]]}
  )
  teacher_model, model = resnet.build(teacher_arch), resnet.build(student_arch)
  teacher_vars = parallel.put_replicated(
    parallel.jit_once(teacher_model.init)(jax.random.key(5), resnet.dummy_input(teacher_arch)), mesh
  )
  t = base_config().distill
  t.warmup_epochs, t.cosine_epochs = 0, 1
  tx, _ = supervised.sgd_with_warmup_cosine(t, steps_per_epoch=4)
  state = steps.create_state(model, tx, resnet.dummy_input(student_arch), jax.random.key(0), mesh)

  def loss_fn(logits, labels, x, tv):
    return distill.kd_loss(logits, teacher_model.apply(tv, x, train=False), labels, 0.9, 4.0)

  step = steps.make_train_step(model, mesh, mode, loss_fn)
  batches = _source(ds, data).iterate(0)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, next(batches), (teacher_vars,))
    losses.append(float(m.compute()["loss"]))
  flat = _flat(state)
  return {
    "losses": losses,
    "params_head": flat[:2000].tolist(),
    "params_norm": float(np.linalg.norm(flat)),
    "devices": mesh.shape[parallel.AXIS],
  }


def one_pas_step(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  """PaS steps (joint SGD on weights and mask scalars, CE + α·MACs gap²) of a masked ResNet-8
  whose scalars start at random values away from the threshold (about half the channels off)."""
  from tas_jax.methods.pas import masks, search as pas_search

  mesh = parallel.make_mesh(num_devices)
  ds, data = _data(mesh)
  a = arch.cifar_resnet(8, num_classes=10, input_size=28, input_channels=1)
  model = masks.MaskedNetwork(a)
  p = base_config().pas
  p.lr, p.penalty, p.macs_unit, p.cost_weight = 0.05, "released", 0.0, 10.0
  tx = pas_search.optimizer(p)
  state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  rng = np.random.default_rng(3)
  scores = {
    k: np.where(rng.random(v.shape) < 0.5, 0.2, 0.8).astype(np.float32)
    for k, v in jax.device_get(state.params["masks"]).items()
  }
  params = {**state.params, "masks": parallel.put_replicated(scores, mesh)}
  state = state.replace(
    params=params, opt_state=jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(params)
  )
  step = pas_search.make_search_step(model, p, Target.flops(model.arch, 0.3), mesh, mode)
  batches = _source(ds, data).iterate(0)
  losses, ratios = [], []
  for _ in range(num_steps):
    state, m = step(state, next(batches))
    out = m.compute()
    losses.append(float(out["loss"]))
    ratios.append(float(out["flops_ratio"]))
  flat = _flat(state)
  masks_after = np.concatenate(
    [np.ravel(v) for v in jax.tree.leaves(jax.device_get(state.params["masks"]))]
  )
  return {
    "losses": losses,
    "flops_ratios": ratios,
    "masks": masks_after.tolist(),
    "params_head": flat[:2000].tolist(),
    "params_norm": float(np.linalg.norm(flat)),
    "devices": mesh.shape[parallel.AXIS],
    "compilations": step._cache_size(),
  }


CHECKS = {
  "step": one_step,
  "search": one_search_iteration,
  "distill": one_distill_step,
  "pas": one_pas_step,
}

if __name__ == "__main__":
  fn = CHECKS[sys.argv[3] if len(sys.argv) > 3 else "step"]
  print(json.dumps(fn(int(sys.argv[1]), sys.argv[2])))
