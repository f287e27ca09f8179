"""One teacher train step on a given number of devices and parallel mode; used by test_train.py,
in this process or, for a device count this process does not have, in a child process with
XLA_FLAGS=--xla_force_host_platform_device_count=N."""

import dataclasses
import json
import sys

import jax
import numpy as np

from tas_jax.data import datasets
from tas_jax.models import arch, resnet
from tas_jax.training import parallel, steps, supervised
from tas_jax.config import base_config


def one_step(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  ds = datasets.load("embedded")
  ds = dataclasses.replace(ds, train_images=ds.train_images[:256], train_labels=ds.train_labels[:256],
                           test_images=ds.test_images[:64], test_labels=ds.test_labels[:64])
  a = arch.cifar_resnet(8, num_classes=10, input_size=28, input_channels=1)
  mesh = parallel.make_mesh(num_devices)
  model = resnet.build(a)
  t = base_config().teacher
  t.warmup_epochs, t.cosine_epochs = 0, 1
  tx, _ = supervised.sgd_with_warmup_cosine(t, steps_per_epoch=4)
  state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  data = supervised.DeviceData(ds, mesh, 64)
  spec = steps.BatchSpec(64, 4, ds.mean, ds.std)
  step = steps.make_train_step(model, tx, spec, mesh, mode)
  perm = supervised.epoch_permutation_fn(0, 256, mesh)(0)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, data.train_images, data.train_labels, jax.random.key(1), perm)
    losses.append(float(m.compute()["loss"]))
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves((state.params, state.batch_stats))])
  return {"losses": losses, "params_head": flat[:2000].tolist(), "params_norm": float(np.linalg.norm(flat)),
          "devices": mesh.shape[parallel.AXIS]}


def one_search_iteration(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  """TAS search iterations (weight step + architecture step) of ResNet-14: the metrics of every
  iteration, and the weights and architecture logits after the first."""
  from tas_jax.models import supernet
  from tas_jax.search import space as space_lib
  from tas_jax.training import search
  ds = datasets.load("embedded")
  ds = dataclasses.replace(ds, train_images=ds.train_images[:256], train_labels=ds.train_labels[:256],
                           test_images=ds.test_images[:64], test_labels=ds.test_labels[:64])
  space = space_lib.build(arch.cifar_resnet(14, num_classes=10, input_size=28, input_channels=1))
  mesh = parallel.make_mesh(num_devices)
  s = base_config().search
  s.epochs = 2
  net = supernet.SuperNet(space)
  tx, _, arch_tx = search.optimizers(s, steps_per_epoch=2)
  state = search.create_state(net, space, tx, arch_tx, np.zeros((2, 28, 28, 1), np.float32),
                              jax.random.key(0), mesh)
  data = supervised.DeviceData(ds, mesh, 64)
  half_a, half_b = datasets.split_per_class(ds.train_labels, 0)
  batch = 48  # two iterations fit in the smaller half (125 images)
  assert 2 * batch <= min(len(half_a), len(half_b))
  spec = steps.BatchSpec(batch, 2, ds.mean, ds.std)
  step = search.make_search_step(net, space, tx, arch_tx, spec, s, mesh, mode)
  half_a, half_b = (parallel.put_replicated(h.astype(np.int32), mesh) for h in (half_a, half_b))
  tau = parallel.put_replicated(np.float32(3.0), mesh)
  out, after_first = [], None
  for _ in range(num_steps):
    state, m = step(state, data.train_images, data.train_labels, jax.random.key(1), half_a, half_b, tau)
    out.append({k: float(v) for k, v in m.compute().items()})
    if after_first is None:  # the state after exactly one iteration
      flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves((state.params, state.batch_stats))])
      after_first = {"alpha": np.asarray(state.arch["alpha"]).ravel().tolist(),
                     "beta": np.asarray(state.arch["beta"]).ravel().tolist(),
                     "params_head": flat[:2000].tolist()}
  return {"metrics": out, **after_first, "devices": mesh.shape[parallel.AXIS],
          "compilations": step._cache_size()}


def one_distill_step(num_devices: int, mode: str, num_steps: int = 2) -> dict:
  """KD steps of a pruned ResNet-8 from a (randomly initialised) ResNet-8 teacher whose variables
  are an input of the step."""
  from tas_jax.training import distill
  ds = datasets.load("embedded")
  ds = dataclasses.replace(ds, train_images=ds.train_images[:256], train_labels=ds.train_labels[:256])
  teacher_arch = arch.cifar_resnet(8, num_classes=10, input_size=28, input_channels=1)
  student_arch = arch.Architecture(**{**teacher_arch.to_dict(), "stem_width": 8,
                                      "stages": [[[8, 16]], [[16, 24]], [[40, 48]]]})
  mesh = parallel.make_mesh(num_devices)
  teacher_model, model = resnet.build(teacher_arch), resnet.build(student_arch)
  teacher_vars = parallel.put_replicated(
      jax.jit(teacher_model.init)(jax.random.key(5), resnet.dummy_input(teacher_arch)), mesh)
  t = base_config().distill
  t.warmup_epochs, t.cosine_epochs = 0, 1
  tx, _ = supervised.sgd_with_warmup_cosine(t, steps_per_epoch=4)
  state = steps.create_state(model, tx, resnet.dummy_input(student_arch), jax.random.key(0), mesh)
  data = supervised.DeviceData(ds, mesh, 64)

  def loss_fn(logits, labels, x, tv):
    return distill.kd_loss(logits, teacher_model.apply(tv, x, train=False), labels, 0.9, 4.0)

  step = steps.make_train_step(model, tx, steps.BatchSpec(64, 4, ds.mean, ds.std), mesh, mode,
                               loss_fn, num_loss_args=1)
  perm = supervised.epoch_permutation_fn(0, 256, mesh)(0)
  losses = []
  for _ in range(num_steps):
    state, m = step(state, data.train_images, data.train_labels, jax.random.key(1), teacher_vars, perm)
    losses.append(float(m.compute()["loss"]))
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves((state.params, state.batch_stats))])
  return {"losses": losses, "params_head": flat[:2000].tolist(), "params_norm": float(np.linalg.norm(flat)),
          "devices": mesh.shape[parallel.AXIS]}


CHECKS = {"step": one_step, "search": one_search_iteration, "distill": one_distill_step}

if __name__ == "__main__":
  fn = CHECKS[sys.argv[3] if len(sys.argv) > 3 else "step"]
  print(json.dumps(fn(int(sys.argv[1]), sys.argv[2])))
