"""`python -m benchmarks.bench`: what one TAS search iteration costs, measured in one run.

    python -m benchmarks.bench --network=resnet20 --batch=256 --json
    python -m benchmarks.bench --network=resnet56 --scaling=1,2,4,8    # forced CPU devices
    python -m benchmarks.bench --profile=/tmp/trace                     # jax.profiler trace too

On CIFAR-shaped uint8 data resident on the device (synthetic: timing does not depend on pixel
values) it compiles and times, in this order and in one process:

- the plain training step of the unpruned network (the teacher's step: the in-memory source's
  gather + augment call, then forward, backward, SGD), and one TAS search iteration (weight step on
  half A + architecture step on half B, compiled as one function); the key
  `search_over_two_plain_ratio` is the search iteration against two plain steps;
- one PaS search step (the masked network, CE + α·MACs gap², one SGD step on weights and mask
  scalars) timed in turns with the plain step (repeat by repeat): `pas_over_plain_ratio` is the
  PaS step against the plain step under the same machine load;
- compile time (ahead-of-time lower + compile), images/s, the compiled program's memory
  (`memory_analysis`; the CPU runtime keeps no peak counter, accelerators report
  `peak_bytes_in_use`);
- compilations across an epoch boundary: the calls after new permutations and a new τ must reuse
  the compiled steps and gathers (jit cache sizes stay 1);
- host-device transfers inside the step loop: the timed loop runs under
  `jax.transfer_guard("disallow")`, so any implicit copy would raise; 0 is a checked figure;
- the plain step once more compiled with XLA's default options instead of tas_jax's CPU ones
  (`parallel.compiler_options`), as the "before" figure of that change (skip: `--no-xla-defaults`);
- when PyTorch is installed (never a dependency; `--no-torch` skips it), the same network's
  training step in PyTorch as a reference row, timed in turns with the plain step (repeat by
  repeat), so that `jax_over_torch_ratio` compares the two under the same machine load.

Warm-up calls are excluded; figures are medians over `--repeats` of `--steps` calls each.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Optional

import jax
import numpy as np
from absl import app, flags

from benchmarks.timing import Stepper, compile_stats, median_time, median_times
from tas_jax import parallel
from tas_jax.config import base_config
from tas_jax.data import datasets, sources
from tas_jax.methods.pas import masks, search as pas_search
from tas_jax.methods.tas import search, spaces, supernet
from tas_jax.models import arch as arch_lib, resnet
from tas_jax.target import Target
from tas_jax.training import steps, supervised


def cifar_network(name: str) -> arch_lib.Architecture:
  """'resnetN' -> the CIFAR ResNet of depth N (basic blocks; bottleneck for 164)."""
  depth = int(name[6:]) if name.startswith("resnet") and name[6:].isdigit() else -1
  block = "bottleneck" if depth in arch_lib.CIFAR_DEPTHS_BOTTLENECK else "basic"
  try:
    return arch_lib.cifar_resnet(depth, block)
  except arch_lib.ArchError as e:
    raise ValueError(
      f"--network={name}: resnetN with a CIFAR depth N (20, 32, 56, 110, 164, …): {e}"
    ) from None


def synthetic_cifar(n: int, seed: int = 0) -> datasets.ImageDataset:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, n).astype(np.int32)
  return datasets.ImageDataset(
    "synthetic", x, y, x[:256], y[:256], 10, (0.5,) * 3, (0.25,) * 3, "synthetic"
  )


def search_setup(a, c, mesh, ds, data, augmentation, batch: int, fingerprint=None):
  """(jitted search iteration, its state, the two halves stepped together, τ of epochs 0 and 1)
  of the supernet of `a` on a resident dataset, as the search stage builds them: with
  `fingerprint` and a compilation cache the iteration is kept (`compilation.KeptStep`), and a
  kept one loads while the state is made."""
  space = spaces.of(a)
  net = supernet.SuperNet(space, scan_blocks=c.model.scan_blocks)
  c.search.epochs = 2
  wtx, _, atx = search.optimizers(c.search, 4)
  iteration = search.make_search_step(
    net,
    space,
    c.search,
    Target.flops(space.base, c.target.flop_ratio, c.target.tolerance),
    mesh,
    "jit",
    fingerprint,
  )
  ahead = hasattr(iteration, "prefetch")
  loading = ahead and iteration.prefetch()  # a kept program loads while the state is made
  sample = np.zeros((2, 32, 32, 3), np.float32)
  half_a, half_b = datasets.split_per_class(ds.train_labels, 0)
  halves = sources.Zipped(
    **{
      name: sources.InMemorySource(
        data,
        half,
        batch,
        augmentation,
        lambda e, i=i: jax.random.fold_in(jax.random.key(2), 2 * e + i),
        lambda step, i=i: search.step_keys(jax.random.key(1), step)[i],
        steps_per_epoch=min(len(half_a), len(half_b)) // batch,
      )
      for i, (name, half) in enumerate((("a", half_a), ("b", half_b)))
    }
  )
  taus = [parallel.put_replicated(np.float32(search.tau_at(c.search, e)), mesh) for e in (0, 1)]
  if ahead and not loading:  # as the search stage: nothing kept, compiled in a thread from the
    # state's shapes while the state itself is made
    key = parallel.put_replicated(jax.random.key(1), mesh)
    shapes = search.state_shapes(net, space, wtx, atx, sample, jax.random.key(0), mesh)
    iteration.prefetch((shapes, halves.abstract_batch(), parallel.abstract((key, taus[0]))))
  sstate = search.create_state(net, space, wtx, atx, sample, jax.random.key(0), mesh, fingerprint)
  return iteration, sstate, halves, taus


def bench_jax(
  network: str,
  batch: int,
  num_devices: int,
  repeats: int,
  steps_per_repeat: int,
  profile_dir: str = "",
  with_xla_defaults: bool = True,
  reference: Optional[Callable] = None,
) -> dict:
  """The figures of one run (see the module docstring). `reference`, a callable running one step
  of another framework, is timed in turns with the plain step (`out['reference']`)."""
  a = cifar_network(network)
  mesh = parallel.make_mesh(num_devices)
  n_dev = mesh.shape[parallel.AXIS]
  ds = synthetic_cifar(8 * batch)  # 8 steps per epoch, halves of 4: the timed calls cross epochs
  data = sources.DeviceDataset(ds, mesh, 256)
  augmentation = sources.Augmentation(ds.mean, ds.std)
  c = base_config()
  key = parallel.put_replicated(jax.random.key(1), mesh)
  out: dict = {
    "network": network,
    "batch": batch,
    "devices": n_dev,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
  }

  # --- plain training step of the unpruned network ---
  model = resnet.build(a)
  tx, _ = supervised.sgd_with_warmup_cosine(c.teacher, 8)
  source = sources.InMemorySource(
    data,
    np.arange(len(ds.train_labels)),
    batch,
    augmentation,
    supervised.permutation_key(0),
    lambda step: jax.random.fold_in(jax.random.key(1), step),
  )

  def plain_step_and_stepper(with_compile_stats: bool):
    """The plain step as compiled under the current options, and a warmed-up stepper of it."""
    state = steps.create_state(model, tx, resnet.dummy_input(a), jax.random.key(0), mesh)
    step = steps.make_train_step(model, mesh, "jit")
    batches = source.iterate(0)
    if with_compile_stats:
      seconds, out["plain_memory"] = compile_stats(step, state, next(batches))
      out["plain_compile_s"] = round(seconds, 2)
    stepper = Stepper(step, state, batches)
    jax.block_until_ready(stepper())  # compiles the jitted step itself, warms up
    jax.block_until_ready(stepper())  # the second warm-up call finishes before timing starts
    return step, stepper

  plain, plain_stepper = plain_step_and_stepper(with_compile_stats=True)
  stepper = plain_stepper
  with jax.transfer_guard("disallow"):
    timed = median_times(
      {"jax": stepper, **({"reference": reference} if reference else {})}, repeats, steps_per_repeat
    )
    t_plain, raw_plain = timed["jax"]
    for _ in range(source.steps_per_epoch):  # on into the next epoch: a new permutation
      jax.block_until_ready(stepper())
  if reference:
    t_ref, raw_ref = timed["reference"]
    out["reference"] = {
      "step_s": round(t_ref, 4),
      "repeats_s": [round(x, 4) for x in raw_ref],
      "images_per_s": round(batch / t_ref, 1),
    }
  out.update(
    plain_step_s=round(t_plain, 4),
    plain_repeats_s=[round(x, 4) for x in raw_plain],
    plain_images_per_s=round(batch / t_plain, 1),
    plain_compilations=max(plain._cache_size(), *source.compilations().values()),
    compiler_options=parallel.compiler_options(),
  )
  if with_xla_defaults and out["compiler_options"]:
    # the same step compiled with XLA's own options: what tas_jax's CPU options are worth
    with parallel.xla_defaults():
      _, default_stepper = plain_step_and_stepper(with_compile_stats=False)
    t_default, raw_default = median_time(default_stepper, repeats, steps_per_repeat)
    out.update(
      plain_step_xla_defaults_s=round(t_default, 4),
      plain_xla_defaults_repeats_s=[round(x, 4) for x in raw_default],
      xla_defaults_over_tuned_ratio=round(t_default / t_plain, 3),
    )
    default_stepper.close()
    del default_stepper

  # --- TAS search iteration ---
  iteration, sstate, halves, taus = search_setup(a, c, mesh, ds, data, augmentation, batch)
  batches = halves.iterate(0)
  search_compile, out["search_memory"] = compile_stats(
    iteration, sstate, next(batches), (key, taus[0])
  )
  stepper = Stepper(iteration, sstate, batches, (key, taus[0]))
  jax.block_until_ready(stepper())
  jax.block_until_ready(stepper())  # the second warm-up call finishes before timing starts
  with jax.transfer_guard("disallow"):
    t_search, raw_search = median_time(stepper, repeats, steps_per_repeat)
    stepper.args = ((key, taus[1]),)  # the next epoch's τ; the halves cross epochs on their own
    for _ in range(halves.steps_per_epoch):
      jax.block_until_ready(stepper())
  search_compilations = max(
    iteration._cache_size(), *(n for h in "ab" for n in halves.source(h).compilations().values())
  )
  out.update(
    search_iteration_s=round(t_search, 4),
    search_repeats_s=[round(x, 4) for x in raw_search],
    search_images_per_s=round(2 * batch / t_search, 1),  # a batch of A and one of B
    search_compile_s=round(search_compile, 2),
    search_compilations=search_compilations,
    search_over_two_plain_ratio=round(t_search / (2 * t_plain), 3),
    host_transfers_in_step_loop=0,
  )  # checked: the loops above ran under transfer_guard
  out["compilations_after_epoch_boundary"] = (
    out["plain_compilations"] - 1 + out["search_compilations"] - 1
  )

  # --- PaS search step, timed in turns with the plain step ---
  pas_model = masks.MaskedNetwork(a)
  pas_tx = pas_search.optimizer(c.pas)
  pstate = steps.create_state(pas_model, pas_tx, resnet.dummy_input(a), jax.random.key(0), mesh)
  pas_step = pas_search.make_search_step(pas_model, c.pas, Target.flops(a, 0.5), mesh, "jit")
  pas_batches = source.iterate(0)
  pas_compile, out["pas_memory"] = compile_stats(pas_step, pstate, next(pas_batches))
  pas_stepper = Stepper(pas_step, pstate, pas_batches)
  jax.block_until_ready(pas_stepper())
  jax.block_until_ready(pas_stepper())
  with jax.transfer_guard("disallow"):
    timed = median_times({"plain": plain_stepper, "pas": pas_stepper}, repeats, steps_per_repeat)
  (t_plain_turns, _), (t_pas, raw_pas) = timed["plain"], timed["pas"]
  out.update(
    pas_step_s=round(t_pas, 4),
    pas_repeats_s=[round(x, 4) for x in raw_pas],
    pas_images_per_s=round(batch / t_pas, 1),
    pas_compile_s=round(pas_compile, 2),
    pas_compilations=pas_step._cache_size(),
    plain_step_in_turns_with_pas_s=round(t_plain_turns, 4),
    pas_over_plain_ratio=round(t_pas / t_plain_turns, 3),
  )
  pas_stepper.close()

  if profile_dir:  # 3 calls of each step, traced; summarised by XLA op
    for name, fn in (("plain", plain_stepper), ("search", stepper)):
      trace_dir = os.path.join(profile_dir, name)
      with jax.profiler.trace(trace_dir):
        for _ in range(3):
          jax.block_until_ready(fn())
      out[f"{name}_profile"] = profile_summary(trace_dir, calls=3)
    out["profile_dir"] = profile_dir
  plain_stepper.close()
  stepper.close()
  return out


def profile_summary(trace_dir: str, calls: int, top: int = 8) -> dict:
  """Where the time goes in a `jax.profiler` trace: XLA's executed ops (convolutions, fusions,
  copies …) summed by name over the runtime's threads, per call, largest first.

  Reads the trace's XSpace protobuf with TensorFlow's bindings (a dependency already). Times are
  thread time: ops that run in parallel on several threads add up to more than the wall time.
  Convolutions that XLA:CPU hands to Eigen run asynchronously on its pool and leave no trace
  events: with tas_jax's CPU options most of a step's untraced thread time is theirs.
  """
  import collections
  import glob

  from tensorflow.tsl.profiler.protobuf import xplane_pb2

  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    return {}
  space = xplane_pb2.XSpace()
  with open(paths[-1], "rb") as f:
    space.ParseFromString(f.read())
  totals: collections.Counter = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):  # the XLA runtime's threads, not Python
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if not name.startswith("ThunkExecutor"):
          totals[name] += event.duration_ps
  everything = sum(totals.values()) or 1
  kinds: collections.Counter = collections.Counter()
  for name, ps in totals.items():  # "transpose_copy_fusion.30" -> "transpose_copy_fusion"
    kinds[re.sub(r"\.\d+$", "", name)] += ps

  def rows(counter):
    return [
      {"op": name, "ms_per_call": round(ps / 1e9 / calls, 3), "share": round(ps / everything, 4)}
      for name, ps in counter.most_common(top)
    ]

  return {
    "thread_ms_per_call": round(everything / 1e9 / calls, 1),
    "by_kind": rows(kinds),
    "top_ops": rows(totals),
  }


def torch_step(network: str, batch: int):
  """The same CIFAR ResNet's training step in PyTorch, or (None, None) without PyTorch."""
  try:
    from benchmarks import torch_reference  # imports torch
  except ImportError:
    return None, None
  return torch_reference.make_step(int(network[6:]), batch)


def scaling(args, counts: list[int]) -> list[dict]:
  """Re-runs this benchmark in a child process per forced CPU device count."""
  rows = []
  for n in counts:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
    cmd = [
      sys.executable,
      "-m",
      "benchmarks.bench",
      f"--network={args.network}",
      f"--batch={args.batch}",
      f"--repeats={args.repeats}",
      f"--steps={args.steps}",
      "--json",
      "--notorch",
      "--noxla_defaults",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} with {n} devices failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append(
      {
        k: r[k]
        for k in (
          "devices",
          "plain_step_s",
          "plain_images_per_s",
          "search_iteration_s",
          "search_images_per_s",
          "search_over_two_plain_ratio",
        )
      }
    )
  return rows


def table(r: dict) -> str:
  lines = [
    f"{r['network']}, batch {r['batch']}, {r['devices']} {r['platform']} device(s) "
    f"({r['device_kind']}); medians of {r['repeats']} x {r['steps']} calls",
    f"{'':40}{'median s':>10}{'images/s':>11}{'compile s':>11}",
    f"{'plain training step':40}{r['plain_step_s']:>10.4f}{r['plain_images_per_s']:>11.1f}"
    f"{r['plain_compile_s']:>11.2f}",
    f"{'search iteration (weight + arch step)':40}{r['search_iteration_s']:>10.4f}"
    f"{r['search_images_per_s']:>11.1f}{r['search_compile_s']:>11.2f}",
    f"{'PaS search step (masks + weights)':40}{r['pas_step_s']:>10.4f}"
    f"{r['pas_images_per_s']:>11.1f}{r['pas_compile_s']:>11.2f}",
    f"search iteration / two plain steps: {r['search_over_two_plain_ratio']:.3f}",
    f"PaS step / plain step (timed in turns): {r['pas_over_plain_ratio']:.3f}",
    f"XLA options: {r['compiler_options'] or 'XLA defaults'}",
    f"compilations after an epoch boundary: {r['compilations_after_epoch_boundary']}; "
    f"host transfers inside the step loop: {r['host_transfers_in_step_loop']} "
    "(transfer_guard)",
  ]
  for name in ("plain_memory", "search_memory", "pas_memory"):
    lines.append(f"{name}: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in r[name].items()))
  if "plain_step_xla_defaults_s" in r:
    lines.append(
      f"{'plain step, XLA default options':40}{r['plain_step_xla_defaults_s']:>10.4f}"
      f"{r['batch'] / r['plain_step_xla_defaults_s']:>11.1f}   "
      f"({r['xla_defaults_over_tuned_ratio']:.2f}x the tuned step)"
    )
  if "torch" in r:
    t = r["torch"]
    lines.append(
      f"{'PyTorch ' + t['torch_version'] + ' training step':40}{t['step_s']:>10.4f}"
      f"{t['images_per_s']:>11.1f}   ({t['threads']} threads)"
    )
    lines.append(f"JAX plain step / PyTorch step: {r['jax_over_torch_ratio']:.2f}")
  for name in ("plain_profile", "search_profile"):
    if r.get(name):
      lines.append(
        f"{name}: XLA ops by kind, thread time per call (total "
        f"{r[name]['thread_ms_per_call']:.0f} ms over all threads):"
      )
      lines += [
        f"  {p['op']:<44}{p['ms_per_call']:>10.2f} ms{100 * p['share']:>7.1f}%"
        for p in r[name]["by_kind"]
      ]
  for row in r.get("scaling", []):
    lines.append(
      f"  {row['devices']} device(s): plain {row['plain_images_per_s']:.1f} img/s, "
      f"search {row['search_images_per_s']:.1f} img/s, ratio "
      f"{row['search_over_two_plain_ratio']:.3f}"
    )
  return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_string("network", "resnet20", "a named CIFAR network (resnet20, resnet56, …)")
flags.DEFINE_integer("batch", 256, "global batch")
flags.DEFINE_integer("devices", -1, "-1: all visible devices")
flags.DEFINE_integer("steps", 3, "timed calls per repeat")
flags.DEFINE_integer("repeats", 5, "repeats; figures are medians over them")
flags.DEFINE_bool("json", False, "print one JSON line instead of a table")
flags.DEFINE_bool(
  "torch", True, "time the PyTorch reference row when torch is installed (--notorch skips it)"
)
flags.DEFINE_bool(
  "xla_defaults",
  True,
  "also time the plain step compiled with XLA's default options (--noxla_defaults skips it)",
)
flags.DEFINE_string("scaling", "", "comma-separated forced CPU device counts, e.g. 1,2,4,8")
flags.DEFINE_string("profile", "", "write a jax.profiler trace of 3 calls of each step here")


def run(args) -> int:
  """The benchmark for parsed flags (`FLAGS` or any object with the same attributes)."""
  try:
    cifar_network(args.network)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  step, info = torch_step(args.network, args.batch) if args.torch else (None, None)
  r = bench_jax(
    args.network,
    args.batch,
    args.devices,
    args.repeats,
    args.steps,
    args.profile,
    args.xla_defaults,
    reference=step,
  )
  r.update(
    repeats=args.repeats, steps=args.steps, date=time.strftime("%Y-%m-%d"), jax=jax.__version__
  )
  if step is not None:
    r["torch"] = {**info, **r.pop("reference")}
    r["jax_over_torch_ratio"] = round(r["plain_step_s"] / r["torch"]["step_s"], 3)
  if args.scaling:
    r["scaling"] = scaling(args, [int(n) for n in args.scaling.split(",")])
  print(json.dumps(r) if args.json else table(r))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  sys.exit(run(FLAGS))


if __name__ == "__main__":
  app.run(main)
