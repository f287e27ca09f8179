"""What every pruning method aims at: `Target`, built once from `config.target`.

The cost a method prices networks by is either FLOPs (the counter of `tas_jax.ops.flops`) or
latency (a table measured on this backend, `tas_jax.latency`). Methods, extraction and the
records ask a `Target` for the label, the unpruned network's cost, the cost of an architecture or
of kept channel counts, the band and the on-target check, and the extraction's latency report,
instead of branching on the measure themselves. TAS prices its expected cost through the same
walk with one of two pricers (`tas_jax.methods.tas.cost`), chosen by `by_table`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

from absl import logging

from tas_jax import latency, workdir as layout
from tas_jax.ops import flops

MEASURES = ("flops", "latency")
LABELS = {"flops": "FLOPs", "latency": "table latency"}


def priced_by_table(measure: str) -> bool:
  """Whether `config.target.cost` = measure prices networks by a latency table (built on this
  backend), which a record names and a RepVGG search cannot use."""
  return measure == "latency"


def recorded_fields(config) -> tuple[str, ...]:
  """The config fields besides config.target that a search's result depends on through its
  target: the latency table's settings."""
  return ("latency.batch_size", "latency.repeats") if priced_by_table(config.target.cost) else ()


def band_bounds(band: str, ratio: float, tolerance: float) -> tuple[float, float]:
  """(low, high) of the target band as fractions of the unpruned network's cost: released
  [R - t, R] (TAS's released search), symmetric [(1-t)R, (1+t)R]; `within`: [R - t, R + t]."""
  if band == "released":
    return ratio - tolerance, ratio
  if band == "symmetric":
    return (1 - tolerance) * ratio, (1 + tolerance) * ratio
  return ratio - tolerance, ratio + tolerance


@dataclasses.dataclass(frozen=True)
class Target:
  measure: str  # flops | latency (config.target.cost)
  ratio: float  # the pruned network's cost / the unpruned one's
  tolerance: float
  base: object  # the unpruned network (an architecture description)
  table: Optional[latency.Table] = None  # the latency table, when the measure is latency
  latency_report: bool = False  # extraction measures the pruned network's latency anyway

  @classmethod
  def build(cls, config, base, workdir: str = "", quiet: bool = False) -> "Target":
    """The config's target for the unpruned network `base`; with target.cost=latency its table,
    measured (or read from WORKDIR/latency/) once here."""
    t = config.target
    table = None
    if priced_by_table(t.cost):
      table = latency.build(
        base,
        workdir,
        latency.batch_size(config),
        config.latency.repeats,
        progress=layout.is_writer() and not quiet,
        log=(lambda line: None) if quiet else logging.info,
      )
    return cls(t.cost, t.flop_ratio, t.tolerance, base, table, bool(config.latency.report))

  @classmethod
  def flops(cls, base, ratio: float, tolerance: float = 0.05) -> "Target":
    """A FLOPs target without a config (tests, benchmarks)."""
    return cls("flops", ratio, tolerance, base)

  @property
  def by_table(self) -> bool:
    """Whether costs are the latency table's (else FLOPs)."""
    return self.table is not None

  @property
  def label(self) -> str:
    """ "FLOPs" or "table latency", as the logs and reports say it."""
    return LABELS[self.measure]

  @functools.cached_property
  def full(self) -> float:
    """The unpruned network's cost."""
    return self.network(self.base)

  def network(self, a) -> float:
    """The cost of an architecture on the search space's widths (the table's entries)."""
    return self.table.network(a) if self.by_table else float(flops.count(a).flops)

  def predicted(self, a) -> float:
    """The cost of any pruning of `base` (the table interpolated between its widths)."""
    return (
      latency.predicted(self.table, self.base, a) if self.by_table else float(flops.count(a).flops)
    )

  def at_kept(self, groups, kept):
    """The cost of `groups`' network with `kept[g]` channels in group g (traceable: PaS's
    penalty differentiates it)."""
    return (
      latency.with_kept(self.table, groups, kept)
      if self.by_table
      else flops.with_kept(groups, kept)
    )

  def kept_ratio(self, groups, kept) -> float:
    return float(self.at_kept(groups, kept)) / self.full

  def cost_of_counts(self):
    """counts -> cost, for the channel selections (`tas_jax/ops/select.py`); None: FLOPs, which
    they count themselves."""
    if not self.by_table:
      return None
    groups = self.groups
    return lambda counts: float(latency.with_kept(self.table, groups, counts))

  @functools.cached_property
  def groups(self):
    from tas_jax.models import channels

    return channels.of(self.base)

  @property
  def goal(self) -> float:
    """The target cost."""
    return self.ratio * self.full

  def band(self, style: str = "within") -> tuple[float, float]:
    return band_bounds(style, self.ratio, self.tolerance)

  def in_band(self, value_ratio: float, style: str = "within") -> bool:
    low, high = self.band(style)
    return bool(low - 1e-9 <= value_ratio <= high + 1e-9)

  def describe(self) -> str:
    """'50% of the FLOPs' / '50% of the table latency'."""
    return f"{100 * self.ratio:.0f}% of the {self.label}"

  def full_text(self) -> str:
    """The unpruned network's cost in words: '20.18 M FLOPs' (', 12.31 ms table latency')."""
    text = f"{flops.count(self.base).flops / 1e6:.2f} M FLOPs"
    return text + (f", {1e3 * self.full:.2f} ms table latency" if self.by_table else "")

  def latency_ratio(self, a) -> dict:
    """{"latency_ratio": …} of architecture `a` when priced by the table, else {}."""
    return {"latency_ratio": self.table.network(a) / self.full} if self.by_table else {}

  def kept_latency_ratio(self, groups, kept) -> dict:
    return {"latency_ratio": self.kept_ratio(groups, kept)} if self.by_table else {}

  def report(self, config, workdir: str, pruned) -> Optional[dict]:
    """The extraction's latency figures (predicted and measured, `latency.report`) when the
    target is latency or `latency.report` asks for them; None otherwise."""
    if self.by_table or self.latency_report:
      return latency.report(config, workdir, self.base, pruned)
    return None

  def on_target_ratio(self, flops_ratio: float, report: Optional[dict]) -> float:
    """The ratio the band is checked on: the table's prediction for a latency target."""
    return report["predicted_ratio"] if self.by_table else flops_ratio
