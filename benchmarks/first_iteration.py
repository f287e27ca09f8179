"""`python -m benchmarks.first_iteration`: how long a user waits for a TAS search, and its memory.

    T_LAUNCH=$(date +%s.%N) python -m benchmarks.first_iteration --network=resnet56 --iters=5

The tas_jax side of the side-by-side with `../shared/bench/official_tas/official_search_bench.py`
(the released search iteration): the same CIFAR-shaped batch of 256 per half, synthetic images
held in memory, one device. It prints one JSON line with
- `launch_to_first_iteration_s`: from `T_LAUNCH` (set it in the shell just before the command, as
  for the official script; without it, from this module's import) to the end of the first search
  iteration: imports, the state's initialisation, compilation and the iteration itself;
- `search_compile_s`: tracing, lowering and XLA compilation of the search iteration (ahead of
  time; the compiled program is the one then run, so nothing compiles twice);
- `breakdown`: where the launch went, in seconds: `import` (Python modules, from `T_LAUNCH`),
  `data`, `init` (the supernet's state, its own small programs included), then either `step`
  (with `--compilation_cache`: the iteration's kept program loaded, or traced, compiled and
  kept; a load starts before `init` and overlaps it, so `step` is only what was left to wait)
  or, without a cache, `trace`, `lower` (Python, never cached) and `compile` (XLA); then
  `first_iteration` (running it);
- `kept_step`: with `--compilation_cache`, `compilation.KeptStep.timings` of the iteration:
  `source` ("traced" on a cold launch, "loaded" on a warm one) and the seconds of each part;
- `compilation_cache`: with `--compilation_cache=FOLDER`, the programs it served and compiled
  (`tas_jax.compilation.counts`): run twice for a cold and a warm launch;
- `search_iteration_s`: the median of `--iters` iterations after `--warmup`;
- `compiled_temp_bytes`: XLA's memory analysis of the compiled iteration;
- `peak_rss_bytes`: the process's peak resident memory (`getrusage`), at the end;
- `page_faults_per_iteration`: minor page faults (`getrusage`) per timed iteration: memory the
  process took fresh from the system at every call.
`--scan_blocks=false` builds the supernet with every block unrolled (the layout before
`model.scan_blocks`), for before/after figures.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time

_IMPORTED = time.time()

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import bench  # noqa: E402
from tas_jax import compilation, parallel  # noqa: E402
from tas_jax.config import base_config  # noqa: E402
from tas_jax.data import sources  # noqa: E402

# --network and --batch (of each half, 256 as the official script's) are benchmarks.bench's flags
flags.DEFINE_integer("warmup", 1, "iterations after the first, not timed")
flags.DEFINE_integer("iters", 5, "timed iterations; the figure is their median")
flags.DEFINE_bool("scan_blocks", True, "model.scan_blocks: one compiled block per stage")
flags.DEFINE_string("compilation_cache", "", "a persistent compilation cache folder ('' = none)")
flags.DEFINE_string("label", "", "copied into the JSON line as 'launch' (e.g. cold, warm)")
FLAGS = flags.FLAGS


def main(_):
  launch = float(os.environ.get("T_LAUNCH", _IMPORTED))
  marks = {"import": time.time()}
  cache = compilation.setup(FLAGS.compilation_cache) if FLAGS.compilation_cache else ""
  a = bench.cifar_network(FLAGS.network)
  c = base_config()
  c.model.scan_blocks = FLAGS.scan_blocks
  mesh = parallel.make_mesh(1)
  ds = bench.synthetic_cifar(8 * FLAGS.batch)
  data = sources.DeviceDataset(ds, mesh, 256)
  augmentation = sources.Augmentation(ds.mean, ds.std)
  marks["data"] = time.time()
  fingerprint = {"benchmark": "first_iteration", "batch": FLAGS.batch, "config": c.to_dict()}
  iteration, state, halves, taus = bench.search_setup(
    a, c, mesh, ds, data, augmentation, FLAGS.batch, fingerprint if cache else None
  )
  key = parallel.put_replicated(jax.random.key(1), mesh)
  batches = halves.iterate(0)
  first = next(batches)
  jax.block_until_ready((state, first))
  marks["init"] = time.time()
  kept = {}
  if hasattr(iteration, "ready"):  # kept in the cache: loaded (prefetched during init) or traced
    iteration.ready(state, first, (key, taus[0]))
    marks["step"] = time.time()
    compiled, kept = iteration.compiled, dict(iteration.timings)
  else:
    traced = iteration.trace(state, first, (key, taus[0]))
    marks["trace"] = time.time()
    lowered = traced.lower()
    marks["lower"] = time.time()
    compiled = lowered.compile()
    marks["compile"] = time.time()
  compile_s = time.time() - marks["init"]
  args = (state, first, (key, taus[0]))
  run = iteration if kept else compiled
  analysis = compiled.memory_analysis()
  memory = {"compiled_temp_bytes": int(analysis.temp_size_in_bytes)} if analysis else {}
  state, _ = run(*args)
  jax.block_until_ready(state)
  marks["first_iteration"] = time.time()
  to_first = marks["first_iteration"] - launch
  previous, breakdown = launch, {}
  for name, at in marks.items():
    breakdown[name] = round(at - previous, 2)
    previous = at
  times, faults = [], 0
  for i in range(FLAGS.warmup + FLAGS.iters):
    if i == FLAGS.warmup:
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    state, _ = run(state, next(batches), (key, taus[0]))
    jax.block_until_ready(state)
    if i >= FLAGS.warmup:
      times.append(time.perf_counter() - t)
  print(
    json.dumps(
      {
        "side": "tas_jax",
        **({"launch": FLAGS.label} if FLAGS.label else {}),
        "network": FLAGS.network,
        "batch": FLAGS.batch,
        "scan_blocks": FLAGS.scan_blocks,
        "launch_to_first_iteration_s": round(to_first, 2),
        "search_compile_s": round(compile_s, 2),
        "search_iteration_s": round(statistics.median(times), 4),
        "iterations_s": [round(x, 4) for x in times],
        "breakdown": breakdown,
        **({"kept_step": kept} if kept else {}),
        **({"compilation_cache": compilation.counts()} if cache else {}),
        **memory,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "page_faults_per_iteration": round(
          (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / FLAGS.iters
        ),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
