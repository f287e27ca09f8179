"""`python -m benchmarks.imagenet`: what ImageNet costs on this machine, in one run.

    python -m benchmarks.imagenet --folder=/tmp/imagenet_samples --json

- the input pipeline: decoded + augmented training images per second in one process (one core:
  JPEG decode, random-resized crop to 224, flip, colour jitter, lighting), over the JPEG folder
  (`python -m tas_jax.data.imagenet_samples --out=DIR` builds one from real photographs);
- the ImageNet ResNet-50 teacher step and one TAS search iteration (weight + architecture step) at
  224, in float32 and bfloat16: ahead-of-time compile time, the compiled program's memory, median
  step time and images/s; in bfloat16 also the model FLOP/s and the MFU against the chip's dense
  bf16 peak (`BF16_PEAK`; null for a chip not in it, the CPU included).

Synthetic batches feed the steps (timing does not depend on pixel values); `--batch` is per step
(the search iteration takes one batch of each half).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.timing import Stepper, compile_stats, median_time
from tas_jax import parallel
from tas_jax.config import base_config
from tas_jax.data import imagenet
from tas_jax.methods.tas import search, spaces, supernet
from tas_jax.models import arch as arch_lib, resnet
from tas_jax.ops import flops
from tas_jax.target import Target
from tas_jax.training import steps, supervised

FLAGS = flags.FLAGS
flags.DEFINE_string("folder", "", "a train/<class>/*.JPEG folder for the pipeline figure")
flags.DEFINE_integer("images", 64, "images decoded for the pipeline figure")
flags.DEFINE_integer("batch", 8, "images per step")
flags.DEFINE_integer("depth", 50, "ImageNet ResNet depth (18 or 50)")
flags.DEFINE_integer("repeats", 3, "repeats; figures are medians")
flags.DEFINE_integer("steps", 2, "timed calls per repeat")
flags.DEFINE_string("dtypes", "float32,bfloat16", "comma-separated")
flags.DEFINE_bool("json", False, "one JSON line")
flags.DEFINE_bool("scan_blocks", False, "model.scan_blocks: a stage's equal blocks as one lax.scan")


def pipeline_rate(folder: str, n: int) -> dict:
  """Training views per second in this process (one core), median over three passes."""
  records = imagenet.open_split(folder, "train")
  rng = np.random.default_rng(0)
  rates = []
  for _ in range(3):
    t = time.perf_counter()
    for i in range(n):
      imagenet.train_view(records[i % len(records)], rng)
    rates.append(n / (time.perf_counter() - t))
  return {
    "images_per_s_per_core": round(statistics.median(rates), 1),
    "images": n,
    "source_images": len(records),
  }


def _batch(batch: int, classes: int, mesh) -> dict:
  rng = np.random.default_rng(0)
  return jax.device_put(
    {
      "image": rng.normal(size=(batch, 224, 224, 3)).astype(np.float32),
      "label": rng.integers(0, classes, batch).astype(np.int32),
    },
    parallel.batch_sharded(mesh),
  )


def _forever(batch):
  while True:
    yield batch


def step_figures(depth: int, dtype: str, batch: int, repeats: int, steps_per_repeat: int) -> dict:
  a = arch_lib.imagenet_resnet(depth)
  mesh = parallel.make_mesh()
  c = base_config()
  out = {}
  data = _batch(batch, a.num_classes, mesh)

  model = resnet.build(a, dtype=jnp.dtype(dtype), scan_blocks=FLAGS.scan_blocks)
  tx, _ = supervised.sgd_with_warmup_cosine(c.teacher, 100)
  state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  step = steps.make_train_step(model, mesh, "jit")
  seconds, memory = compile_stats(step, state, data)
  stepper = Stepper(step, state, _forever(data))
  jax.block_until_ready(stepper())
  t, raw = median_time(stepper, repeats, steps_per_repeat)
  out["teacher_step"] = {
    "compile_s": round(seconds, 1),
    "memory": memory,
    "step_s": round(t, 3),
    "images_per_s": round(batch / t, 2),
    "repeats_s": [round(x, 3) for x in raw],
  }
  del stepper, state

  space = spaces.of(a)
  net = supernet.SuperNet(space, dtype=jnp.dtype(dtype), scan_blocks=FLAGS.scan_blocks)
  c.search.epochs = 2
  wtx, _, atx = search.optimizers(c.search, 100)
  sstate = search.create_state(
    net, space, wtx, atx, np.zeros((2, 224, 224, 3), np.float32), jax.random.key(0), mesh
  )
  iteration = search.make_search_step(
    net,
    space,
    c.search,
    Target.flops(space.base, c.target.flop_ratio, c.target.tolerance),
    mesh,
    "jit",
  )
  key = parallel.put_replicated(jax.random.key(1), mesh)
  tau = parallel.put_replicated(np.float32(search.tau_at(c.search, 0)), mesh)
  pair = {"a": data, "b": data}
  seconds, memory = compile_stats(iteration, sstate, pair, (key, tau))
  stepper = Stepper(iteration, sstate, _forever(pair), (key, tau))
  jax.block_until_ready(stepper())
  t, raw = median_time(stepper, repeats, steps_per_repeat)
  out["search_iteration"] = {
    "compile_s": round(seconds, 1),
    "memory": memory,
    "step_s": round(t, 3),
    "images_per_s": round(2 * batch / t, 2),
    "repeats_s": [round(x, 3) for x in raw],
  }
  return out


# dense bf16 peak FLOP/s by device kind (vendor datasheets, without sparsity); the first match wins
BF16_PEAK = (
  ("H100 PCIe", 756e12),
  ("H100", 989.4e12),
  ("H200", 989.4e12),
  ("A100", 312e12),
  ("L4", 121e12),
  ("TPU v4", 275e12),
  ("TPU v5 lite", 197e12),
  ("TPU v5", 459e12),
  ("TPU v6 lite", 918e12),
)


def bf16_peak(kind: str) -> Optional[float]:
  return next((peak for name, peak in BF16_PEAK if name in kind), None)


def add_mfu(figures: dict, depth: int, batch: int, kind: str) -> None:
  """Model FLOPs utilisation of each step against the chip's dense bf16 peak (all devices): a
  training step is 3 passes of 2·MACs per image (forward, and a backward twice as costly); a
  search iteration two such steps of the full-width network (the CWI mixing is not counted)."""
  peak = bf16_peak(kind)
  macs = flops.count(arch_lib.imagenet_resnet(depth)).flops
  for name, passes in (("teacher_step", 1), ("search_iteration", 2)):
    if name in figures:
      model_flops = passes * 3 * 2 * macs * batch
      achieved = model_flops / figures[name]["step_s"]
      figures[name]["tflops_per_s"] = round(achieved / 1e12, 2)
      n = jax.device_count()
      figures[name]["mfu"] = round(achieved / (n * peak), 4) if peak else None


def run(args) -> dict:
  r = {
    "network": f"imagenet_resnet{args.depth}",
    "batch": args.batch,
    "image_size": 224,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "date": time.strftime("%Y-%m-%d"),
    "jax": jax.__version__,
    "scan_blocks": args.scan_blocks,
  }
  if args.folder:
    r["pipeline"] = pipeline_rate(args.folder, args.images)
  for dtype in args.dtypes.split(","):
    r[dtype] = step_figures(args.depth, dtype, args.batch, args.repeats, args.steps)
    if dtype == "bfloat16":
      add_mfu(r[dtype], args.depth, args.batch, r["device_kind"])
  return r


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  r = run(FLAGS)
  print(json.dumps(r) if FLAGS.json else json.dumps(r, indent=1))
  sys.exit(0)


if __name__ == "__main__":
  app.run(main)
