"""Time of one TAS search iteration (weight step + architecture step) against two plain training
steps of the unpruned network, measured in one run on the same data and batch size.

    python benchmarks/search_vs_plain.py --depth 20 --batch 256 --repeats 5 --steps 5

Prints a table and one JSON line. Medians over repeats; compilation excluded (one warm-up call).
"""

import argparse
import json
import time

import jax
import numpy as np

from tas_jax.config import base_config
from tas_jax.data import datasets
from tas_jax.models import arch, resnet, supernet
from tas_jax.search import space as space_lib
from tas_jax.training import parallel, search, steps, supervised


def synthetic_cifar(n: int, seed: int = 0) -> datasets.ImageDataset:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, n).astype(np.int32)
  return datasets.ImageDataset("synthetic", x, y, x[:256], y[:256], 10, (0.5,) * 3, (0.25,) * 3,
                               "synthetic")


def timed(fn, repeats, steps_per_repeat):
  out = fn()  # warm-up (compiles)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps_per_repeat):
      out = fn()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / steps_per_repeat)
  return float(np.median(times)), times


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--depth", type=int, default=20)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args()
  ds = synthetic_cifar(4 * args.batch)
  a = arch.cifar_resnet(args.depth)
  mesh = parallel.make_mesh(-1)
  c = base_config()
  data = supervised.DeviceData(ds, mesh, 256)

  # plain training step
  model = resnet.build(a)
  tx, _ = supervised.sgd_with_warmup_cosine(c.teacher, 4)
  state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  spec = steps.BatchSpec(args.batch, 4, ds.mean, ds.std)
  plain = steps.make_train_step(model, tx, spec, mesh, "jit")
  perm = supervised.epoch_permutation_fn(0, len(ds.train_labels), mesh)(0)
  holder = {"s": state}

  def plain_step():
    holder["s"], m = plain(holder["s"], data.train_images, data.train_labels, jax.random.key(1), perm)
    return holder["s"].step

  t_plain, raw_plain = timed(plain_step, args.repeats, args.steps)

  # search iteration
  space = space_lib.build(a)
  net = supernet.SuperNet(space)
  wtx, _, atx = search.optimizers(c.search, 2)
  sstate = search.create_state(net, space, wtx, atx, np.zeros((2, 32, 32, 3), np.float32),
                               jax.random.key(0), mesh)
  sspec = steps.BatchSpec(args.batch, 2, ds.mean, ds.std)
  it = search.make_search_step(net, space, wtx, atx, sspec, c.search, mesh, "jit")
  half_a, half_b = (parallel.put_replicated(h.astype(np.int32), mesh)
                    for h in datasets.split_per_class(ds.train_labels, 0))
  tau = parallel.put_replicated(np.float32(2.0), mesh)
  sholder = {"s": sstate}

  def search_step():
    sholder["s"], m = it(sholder["s"], data.train_images, data.train_labels, jax.random.key(1),
                         half_a, half_b, tau)
    return sholder["s"].step

  t_search, raw_search = timed(search_step, args.repeats, args.steps)
  result = {"network": f"resnet{args.depth}", "batch": args.batch, "devices": jax.device_count(),
            "plain_step_s": round(t_plain, 4), "search_iteration_s": round(t_search, 4),
            "search_over_two_plain_ratio": round(t_search / (2 * t_plain), 3),
            "plain_repeats_s": [round(t, 4) for t in raw_plain],
            "search_repeats_s": [round(t, 4) for t in raw_search],
            "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__}
  print(f"{'':28}{'median s':>10}")
  print(f"{'plain training step':28}{t_plain:>10.4f}")
  print(f"{'search iteration (W + A)':28}{t_search:>10.4f}")
  print(f"{'ratio to two plain steps':28}{t_search / (2 * t_plain):>10.3f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
