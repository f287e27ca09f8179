"""Measured latency on the current JAX backend: whole networks, and the table of every conv a
search space can build.

    python -m tas_jax.latency --config=configs/demo.py --workdir=runs/demo

FLOPs are a proxy for speed, and a poor one: at equal FLOPs, the networks of RESULTS.md run
0.97-1.9x faster than the teacher on the CPU. A latency table prices each conv by its measured time
instead, so a search can aim at a fraction of the unpruned network's latency
(`target.cost=latency`).

The table: for every conv of the unpruned topology (stem, main path, projections) and every
(input width, output width) pair of the TAS candidates (`tas_jax.models.candidates`), plus the 1x1
stride-1 projections extraction inserts where a pruned block's input and output widths differ, the
forward time of conv + BN (inference form: one scale and shift) + ReLU on a batch of
`latency.batch_size` random inputs. Identical convs (same kernel, stride, input side and widths)
share one entry. Each entry is timed as `CHAINED` calls of the conv inside one jitted function,
less the same function with no call, over `CHAINED` (medians of `repeats`): the fixed cost of
launching a jitted function is paid once per network, not once per conv, and must not be in every
entry (on a GPU it would flatten the table and make every removed block look cheap).

Widths between the table's are interpolated bilinearly (the searches' gradients need a smooth
price); below the narrowest candidate (30%) the price is the narrowest entry's, never
extrapolated. The network a method actually chose is priced on entries at its own widths,
measured on demand and added to the cache (`predicted`): PaS, L1 and FPGM keep any number of
channels, not only TAS's 8.

The backward is not in the table: it prices inference. BN and ReLU are measured on every entry,
the CIFAR stride-2 projections included (they have no BN): a small overcharge for those few
entries. The residual adds, pooling and classifier are not priced; how well the sum predicts a
whole network's forward is in BENCHMARKS.md (`python -m benchmarks.latency_prediction`).

The table is cached as JSON in WORKDIR/latency/, one file per (backend, device kind, batch size);
a second call measures only entries that are missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import time
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from tas_jax import console, parallel
from tas_jax.data import augment
from tas_jax.errors import ConfigError
from tas_jax.models import networks, topology
from tas_jax.models.arch import Architecture
from tas_jax.models.candidates import width_candidates


@dataclasses.dataclass(frozen=True, order=True)
class ConvKey:
  """What a conv's latency depends on (its name and BN flag aside)."""

  kernel: int
  stride: int
  in_size: int  # spatial side of its input
  in_width: int
  out_width: int

  def __str__(self) -> str:
    return f"k{self.kernel}s{self.stride}i{self.in_size}:{self.in_width}x{self.out_width}"

  def describe(self) -> str:
    """The key in words: 'k3s1i32:16x32' is '3x3 conv, stride 1, on 32x32 inputs, 16 -> 32
    channels'."""
    return (
      f"{self.kernel}x{self.kernel} conv, stride {self.stride}, on {self.in_size}x"
      f"{self.in_size} inputs, {self.in_width} -> {self.out_width} channels"
    )

  @classmethod
  def parse(cls, text: str) -> "ConvKey":
    m = re.fullmatch(r"k(\d+)s(\d+)i(\d+):(\d+)x(\d+)", text)
    if m is None:
      raise ValueError(f"not a latency-table key: {text!r}")
    return cls(*map(int, m.groups()))

  @classmethod
  def of(
    cls, conv: topology.Conv, in_width: Optional[int] = None, out_width: Optional[int] = None
  ) -> "ConvKey":
    return cls(
      conv.kernel,
      conv.stride,
      conv.in_size,
      conv.in_width if in_width is None else in_width,
      conv.out_width if out_width is None else out_width,
    )


def input_candidates(base: Architecture, conv: topology.Conv) -> tuple[int, ...]:
  """The input widths a conv of `base` can see in a pruned network: the image's channels for the
  stem, else the candidates of the conv that feeds it (every block output of a stage has the same
  full width, so truncated stages change nothing)."""
  return (base.input_channels,) if conv.name == "stem" else width_candidates(conv.in_width)


def space_keys(base: Architecture) -> list[ConvKey]:
  """Every conv (kernel, stride, input side, input width, output width) the TAS search space of
  `base` can build, deduplicated and sorted."""
  topo = topology.of(base)
  keys = set()
  for conv in topo.convs():
    keys |= {
      ConvKey.of(conv, a, b)
      for a in input_candidates(base, conv)
      for b in width_candidates(conv.out_width)
    }
  for block in topo.blocks:
    if block.stride == 1 and block.projection is None:
      # a pruned identity block whose widths differ gets a 1x1 projection (topology.shortcut_kind)
      keys |= {
        ConvKey(1, 1, block.in_size, a, b)
        for a in width_candidates(block.in_width)
        for b in width_candidates(block.out_width)
        if a != b
      }
  return sorted(keys)


@dataclasses.dataclass
class Table:
  """Seconds per forward of each conv + BN + ReLU at `batch_size`, on one backend."""

  backend: str
  device_kind: str
  batch_size: int
  seconds: dict  # ConvKey -> float
  path: str = ""  # its cache file, where entries measured on demand go ("" = none: no measuring)
  repeats: int = 5

  def measure_missing(self, keys: Iterable[ConvKey]) -> int:
    """Measures the entries of `keys` the table lacks, on this device, and adds them to the
    table and its cache file; returns how many. Nothing without a cache file or with several
    processes (every process must price alike: they interpolate instead)."""
    missing = sorted(set(keys) - set(self.seconds))
    if not missing or not self.path or jax.process_count() > 1:
      return 0
    for key in missing:
      self.seconds[key] = conv_seconds(key, self.batch_size, self.repeats)
    cached = _read(self.path)
    cached.update(self.seconds)
    _write(self.path, Table(self.backend, self.device_kind, self.batch_size, cached))
    return len(missing)

  def __getitem__(self, key: ConvKey) -> float:
    try:
      return self.seconds[key]
    except KeyError:
      raise KeyError(
        f"no latency-table entry for the conv {key}: the table covers the TAS "
        "search space's widths only"
      ) from None

  def network(self, arch: Architecture) -> float:
    """The table's latency of a network: the sum over its convs (seconds per batch)."""
    return sum(self[ConvKey.of(c)] for c in topology.of(arch).convs())

  def to_json(self) -> dict:
    return {
      "backend": self.backend,
      "device_kind": self.device_kind,
      "batch_size": self.batch_size,
      "unit": "seconds per forward of the batch",
      "key": "kKsSiI:CinxCout = a KxK conv (+BN+ReLU), stride S, on IxI inputs, Cin -> Cout "
      "channels",
      "entries": {str(k): v for k, v in sorted(self.seconds.items())},
    }


def batch_size(config) -> int:
  """The batch a run's table is measured at: `latency.batch_size`, or the results table's."""
  return config.latency.batch_size or config.pipeline.throughput_batch


def cache_path(workdir: str, batch_size: int) -> str:
  device = jax.local_devices()[0]
  kind = re.sub(r"[^A-Za-z0-9]+", "_", device.device_kind).strip("_").lower()
  return os.path.join(workdir, "latency", f"{device.platform}_{kind}_b{batch_size}.json")


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {ConvKey.parse(k): float(v) for k, v in json.load(f)["entries"].items()}


CHAINED = 8  # conv calls inside one timed jitted call
FLOOR_SECONDS = 1e-9  # an entry's least value (a difference of medians can come out <= 0)


def conv_seconds(key: ConvKey, batch_size: int, repeats: int, seed: int = 0) -> float:
  """Forward time of conv + BN (scale and shift) + ReLU of `key` on a random batch, without the
  fixed per-call cost: (median time of `CHAINED` calls in one jitted loop − median of the same
  loop with none) / `CHAINED`. Each iteration's weights depend on the previous result (times
  zero) and sums its output, so XLA can neither hoist the conv out of the loop nor compute part
  of it."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(
    rng.normal(size=(batch_size, key.in_size, key.in_size, key.in_width)), jnp.float32
  )
  w = jnp.asarray(
    rng.normal(size=(key.kernel, key.kernel, key.in_width, key.out_width)), jnp.float32
  )
  scale, shift = jnp.ones(key.out_width), jnp.zeros(key.out_width)
  pad = key.kernel // 2

  def forward(x, w, scale, shift):
    y = jax.lax.conv_general_dilated(
      x, w, (key.stride,) * 2, ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y * scale + shift)

  def chained(calls):
    def loop(x, w, scale, shift):
      def body(_, carry):
        # the whole output is read, so no part of the conv can be left out
        return carry + jnp.sum(forward(x, w + 0.0 * carry, scale, shift))

      return jax.lax.fori_loop(0, calls, body, jnp.zeros((), x.dtype))

    return jax.jit(loop, compiler_options=parallel.compiler_options())

  fns = {calls: chained(calls) for calls in (CHAINED, 0)}
  for fn in fns.values():
    jax.block_until_ready(fn(x, w, scale, shift))  # compile
    jax.block_until_ready(fn(x, w, scale, shift))  # warm up
  times = {calls: [] for calls in fns}
  for _ in range(repeats):  # interleaved: machine noise hits both alike
    for calls, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(x, w, scale, shift))
      times[calls].append(time.perf_counter() - t)
  seconds = (statistics.median(times[CHAINED]) - statistics.median(times[0])) / CHAINED
  return max(seconds, FLOOR_SECONDS)


def build(
  base: Architecture,
  workdir: str,
  batch_size: int,
  repeats: int = 5,
  progress: bool = True,
  log=print,
) -> Table:
  """The latency table of `base`'s search space: read from the workdir's cache, the missing
  entries measured (with a progress bar) and written back."""
  path = cache_path(workdir, batch_size)
  cached = _read(path)
  keys = space_keys(base)
  missing = [k for k in keys if k not in cached]
  device = jax.local_devices()[0]
  if missing and jax.process_count() > 1:
    # every process must price with the same table: measured once, before the run
    raise ConfigError(
      f"{len(missing)} latency-table entries are missing from {path}, and this "
      f"run has {jax.process_count()} processes: build the table first with one "
      "process, `python -m tas_jax.latency --config=... --workdir=...`"
    )
  if not missing:
    log(
      f"[latency] {len(keys)} entries of {base.name or 'the network'}'s table: all cached in {path}"
    )
  else:
    log(
      f"[latency] measuring {len(missing)} of {len(keys)} conv entries of "
      f"{base.name or 'the network'}'s search space on {device.platform} ({device.device_kind}), "
      f"batch {batch_size}, median of {repeats} calls each; cache {path}"
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for i, key in enumerate(
      console.progress_bar(missing, len(missing), "conv", "latency table", enabled=progress)
    ):
      cached[key] = conv_seconds(key, batch_size, repeats)
      if (i + 1) % 50 == 0 or i + 1 == len(missing):  # an interrupted build keeps its entries
        table = Table(device.platform, device.device_kind, batch_size, cached)
        _write(path, table)
  return Table(
    device.platform, device.device_kind, batch_size, {k: cached[k] for k in keys}, path, repeats
  )


def _axis(grid, c):
  """(i, t) with c = grid[i] + t·(grid[i+1] − grid[i]), t in [0, 1]: the grid cell of c, clamped
  at the ends (below the narrowest width, the narrowest entry's price); c may be traced."""
  g = jnp.asarray(grid, jnp.float32)
  i = jnp.clip(jnp.searchsorted(g, c, side="right") - 1, 0, len(g) - 2)
  return i, jnp.clip((c - g[i]) / (g[i + 1] - g[i]), 0.0, 1.0)


def conv_latency(table: Table, base: Architecture, conv: topology.Conv, c_in, c_out):
  """The latency of `base`'s conv at any widths (traced or not): the table bilinearly
  interpolated between the candidate widths, the narrowest entry's below them (clamped, never
  extrapolated towards zero). Its derivative in a width is the latency of one more channel
  there, as a conv's FLOPs' is for MACs (PaS); below the narrowest candidate it is 0."""
  ins, outs = input_candidates(base, conv), width_candidates(conv.out_width)
  t = jnp.asarray([[table[ConvKey.of(conv, a, b)] for b in outs] for a in ins], jnp.float32)
  j, v = _axis(outs, c_out)
  if len(ins) == 1:  # the stem: the image's channels only
    return t[0, j] * (1 - v) + t[0, j + 1] * v
  i, u = _axis(ins, c_in)
  return (1 - u) * ((1 - v) * t[i, j] + v * t[i, j + 1]) + u * (
    (1 - v) * t[i + 1, j] + v * t[i + 1, j + 1]
  )


def with_kept(table: Table, groups, kept: dict):
  """The table latency of a network with `kept[group]` channels in each channel group
  (`tas_jax.models.channels`; traced or concrete counts): `tas_jax.ops.flops.with_kept` in
  seconds. The classifier is not in the table."""

  def width(group):
    return groups.arch.input_channels if group is None else kept[group]

  return sum(
    conv_latency(table, groups.arch, c, *map(width, groups.conv_groups[c.name]))
    for c in topology.of(groups.arch).convs()
  )


def predicted(table: Table, base: Architecture, arch: Architecture) -> float:
  """The table latency of `arch`, a pruned `base`, on entries at its own widths: those the table
  lacks (PaS, L1, FPGM keep any number of channels) are measured now and cached; where they
  cannot be (no cache file, several processes), the base conv of the same name interpolated
  (`conv_latency`)."""
  base_convs = {c.name: c for c in topology.of(base).convs()}
  convs = topology.of(arch).convs()
  table.measure_missing(ConvKey.of(c) for c in convs)
  total = 0.0
  for c in convs:
    key = ConvKey.of(c)
    total += (
      table.seconds[key]
      if key in table.seconds
      else float(conv_latency(table, base, base_convs[c.name], c.in_width, c.out_width))
    )
  return total


def report(config, workdir: str, base: Architecture, pruned: Architecture) -> dict:
  """A pruned network's latency as the table predicts it and as measured (whole forward passes
  of both networks, interleaved), each against the unpruned network's: what extraction reports."""
  table = build(
    base, workdir, batch_size(config), config.latency.repeats, progress=False, log=lambda line: None
  )
  measured_max, measured = measured_network_seconds(
    [base, pruned], table.batch_size, config.pipeline.throughput_repeats
  )
  full, pruned_seconds = table.network(base), predicted(table, base, pruned)
  return {
    "batch_size": table.batch_size,
    "device": f"{table.backend} ({table.device_kind})",
    "predicted_ms": round(1e3 * pruned_seconds, 4),
    "predicted_max_ms": round(1e3 * full, 4),
    "predicted_ratio": pruned_seconds / full,
    "measured_ms": round(1e3 * measured, 4),
    "measured_max_ms": round(1e3 * measured_max, 4),
    "measured_ratio": measured / measured_max,
  }


def report_lines(t: Optional[dict]) -> list[str]:
  """`report`'s figures as a paragraph of an extraction's report.md (none without them)."""
  if t is None:
    return []
  return [
    f"Latency (batch {t['batch_size']}, {t['device']}): predicted by the table "
    f"{t['predicted_ms']:.2f} ms = {100 * t['predicted_ratio']:.1f}% of the unpruned "
    f"network's {t['predicted_max_ms']:.2f} ms; measured {t['measured_ms']:.2f} ms = "
    f"{100 * t['measured_ratio']:.1f}% of {t['measured_max_ms']:.2f} ms.",
    "",
  ]


def log_report(stage: str, name: str, t: dict, log) -> None:
  log(
    f"[{stage}] latency of {name} at batch {t['batch_size']} on {t['device']}: predicted by the "
    f"table {t['predicted_ms']:.2f} ms = {100 * t['predicted_ratio']:.1f}% of the unpruned "
    f"network's {t['predicted_max_ms']:.2f} ms; measured {t['measured_ms']:.2f} ms = "
    f"{100 * t['measured_ratio']:.1f}% of {t['measured_max_ms']:.2f} ms"
  )


def _write(path: str, table: Table) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(table.to_json(), f, indent=1)
  os.replace(tmp, path)


def measure_networks(to_measure: dict, images, mean, std, repeats: int) -> dict:
  """Inference time of each {name: (arch, variables)} on the same uint8 batch, one device.

  Each network is compiled and warmed up first; then every repeat times one call of every network
  in turn (interleaved, so machine noise hits all alike). Returns {name: {'images_per_s',
  'ms_per_batch'}} from the median call time.
  """
  x = jax.device_put(augment.normalize(jnp.asarray(images), mean, std))
  forwards = {}
  for name, (a, variables) in to_measure.items():
    model = networks.build(a)
    forwards[name] = (
      jax.jit(
        lambda v, x, m=model: m.apply(v, x, train=False),
        compiler_options=parallel.compiler_options(),
      ),
      variables,
    )
    jax.block_until_ready(forwards[name][0](variables, x))  # compile
    jax.block_until_ready(forwards[name][0](variables, x))  # warm up
  times = {name: [] for name in to_measure}
  for _ in range(repeats):
    for name, (fn, variables) in forwards.items():
      t = time.perf_counter()
      jax.block_until_ready(fn(variables, x))
      times[name].append(time.perf_counter() - t)
  batch = images.shape[0]
  return {
    name: {
      "images_per_s": round(batch / statistics.median(ts), 1),
      "ms_per_batch": round(1e3 * statistics.median(ts), 3),
    }
    for name, ts in times.items()
  }


def random_init(arch: Architecture, seed: int = 0) -> dict:
  """Inference variables of `arch` from its initialisers (timing does not depend on values)."""
  model = networks.build(arch)
  x = jnp.zeros((1, arch.input_size, arch.input_size, arch.input_channels))
  return parallel.jit_once(lambda: model.init(jax.random.key(seed), x, train=False))()


def measured_network_seconds(
  archs: Iterable[Architecture], batch_size: int, repeats: int = 7, seed: int = 0
) -> list[float]:
  """Measured forward seconds per batch of each architecture (interleaved, median of repeats)."""
  archs = list(archs)
  a0 = archs[0]
  images = np.random.default_rng(seed).integers(
    0, 256, (batch_size, a0.input_size, a0.input_size, a0.input_channels), dtype=np.uint8
  )
  ones = (0.5,) * a0.input_channels
  out = measure_networks(
    {str(i): (a, random_init(a)) for i, a in enumerate(archs)}, images, ones, ones, repeats
  )
  return [out[str(i)]["ms_per_batch"] / 1e3 for i in range(len(archs))]


def reading(table: Table, base: Architecture, path: str) -> list[str]:
  """What a table says about pruning on this machine, in lines: the unpruned network's latency,
  how far narrowing every conv and removing blocks each reach, the smallest reachable target, the
  costliest entries, and what a key means."""
  from tas_jax.models.candidates import depth_candidates

  convs = topology.of(base).main_convs()
  full = table.network(base)
  narrow_widths = [min(width_candidates(c.out_width)) for c in convs]
  full_widths = [c.out_width for c in convs]
  shallow = [min(d) for d in depth_candidates(base)]
  narrowest = table.network(topology.pruned(base, narrow_widths, base.depths)) / full
  shallowest = table.network(topology.pruned(base, full_widths, shallow)) / full
  smallest = table.network(topology.pruned(base, narrow_widths, shallow)) / full
  costly = sorted(table.seconds.items(), key=lambda kv: -kv[1])[:3]
  if list(shallow) == list(base.depths):
    verdict = "no block can be removed (one per stage): only narrowing moves it"
  elif narrowest > shallowest:
    verdict = "removing blocks moves it further than narrowing here"
  else:
    verdict = "narrowing moves it further than removing blocks here"
  return [
    f"[latency] {base.name or 'network'} on {table.backend} ({table.device_kind}), batch "
    f"{table.batch_size}: {len(table.seconds)} entries in {path}",
    f"  unpruned network (sum of its convs): {1e3 * full:.2f} ms",
    f"  every conv at its narrowest candidate, all blocks kept: {100 * narrowest:.0f}% of it",
    f"  the fewest blocks per stage {shallow}, full widths: {100 * shallowest:.0f}%",
    f"  both: {100 * smallest:.0f}%: latency targets (target.flop_ratio with target.cost=latency) "
    f"below that cannot be reached on this machine; {verdict}",
    "  costliest entries: "
    + "; ".join(f"{k} ({k.describe()}) {1e3 * v:.3f} ms" for k, v in costly),
    "  a key kKsSiI:CinxCout is a KxK conv + BN + ReLU with stride S on IxI inputs, Cin -> Cout "
    "channels",
  ]


if __name__ == "__main__":
  from tas_jax.commands import latency as command

  command.main()
