"""Pruning plans for any traced Flax model: which channels of every traced group to keep, by a
criterion, to a FLOPs or parameter target — the Torch-Pruning workflow, JAX-shaped:

    graph = tas_jax.graph.trace(module, variables, x)
    plan = tas_jax.prune.plan(graph, criterion="l1", flop_ratio=0.5)
    small_apply, small_variables = plan.apply()
    print(plan.report())

Criteria are tas_jax's own (`tas_jax.methods.oneshot.criteria`), computed on each group's
producers (the kernels whose output channels the group is, summed over them, as for the built-in
ResNets): `l1` (Li et al. 2017), `fpgm` (He et al. 2019), and `random` as a control. `ranking=
"global"` compares channels of all groups by their score over their group's mean; `"uniform"`
removes the same fraction of every group. Both remove the fewest channels that reach the target
(`tas_jax.methods.oneshot.select`), counting multiply-adds on the traced graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from tas_jax.graph import Graph
from tas_jax.ops import criteria, select

CRITERIA = ("l1", "fpgm", "random")
RANKINGS = ("global", "uniform")


def scores(graph: Graph, variables: Any, criterion: str, seed: int = 0) -> dict:
  """{group: (size,) scores}, low = removed first."""
  if criterion not in CRITERIA:
    raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
  if criterion == "random":
    rng = np.random.default_rng(seed)
    return {g.name: rng.random(g.size) for g in graph.groups}
  out = {}
  for name, filters in graph.producer_filters(variables).items():
    if not filters:  # no kernel makes these channels (e.g. a bare scale): their size-only score
      out[name] = np.ones(graph.group(name).size)
    else:
      out[name] = criteria.l1(filters) if criterion == "l1" else criteria.fpgm(filters)
  return out


@dataclasses.dataclass
class Plan:
  graph: Graph
  kept: dict  # {group: sorted kept channel indices}
  scores: dict
  criterion: str
  target: str  # what was asked, for the report

  def apply(self) -> tuple[Callable, Any]:
    """(apply, variables) of the pruned model; `apply(variables, *inputs)` is jittable,
    differentiable and exportable. For an NNX model, `self.module` is the pruned module."""
    small_apply, small_variables, self.module = self.graph.prune(self.kept)
    return small_apply, small_variables

  def report(self) -> str:
    g = self.graph
    macs0, macs1 = g.macs(), g.macs(self.kept)
    p0, p1 = g.params(), g.params(self.kept)
    lines = [
      f"{self.criterion} pruning to {self.target}: {len(g.groups)} channel groups",
      f"{'group':40s} {'channels':>12s}  members",
    ]
    for grp in g.groups:
      n = len(self.kept.get(grp.name, range(grp.size)))
      note = " (normalised over channels)" if grp.normalized else ""
      lines.append(f"{grp.name:40s} {grp.size:5d} → {n:<5d}  {len(grp.members)}{note}")
    lines.append(f"MACs   {macs0:,} → {macs1:,} ({macs1 / macs0:.1%})")
    lines.append(f"params {p0:,} → {p1:,} ({p1 / p0:.1%})")
    lines += g.messages
    return "\n".join(lines)


def plan(
  graph: Graph,
  variables: Any = None,
  criterion: str = "l1",
  flop_ratio: Optional[float] = None,
  param_ratio: Optional[float] = None,
  ranking: str = "global",
  groups: Optional[Sequence[str]] = None,
  seed: int = 0,
) -> Plan:
  """The channels to keep so that the pruned model has at most `flop_ratio` of the traced
  multiply-adds (or `param_ratio` of the parameters). `variables` defaults to the traced ones;
  `groups` limits the cut to those groups."""
  if (flop_ratio is None) == (param_ratio is None):
    raise ValueError("plan: give one of flop_ratio= or param_ratio=")
  if ranking not in RANKINGS:
    raise ValueError(f"ranking must be one of {RANKINGS}; got {ranking!r}")
  variables = graph.adapter.variables if variables is None else variables
  ratio = flop_ratio if flop_ratio is not None else param_ratio
  if not 0 < ratio <= 1:
    raise ValueError(f"the target ratio must be in (0, 1]; got {ratio}")
  first = lambda counts: {name: range(n) for name, n in counts.items()}
  if flop_ratio is not None:
    cost, what = (lambda counts: graph.macs(first(counts))), f"{flop_ratio:.0%} of the MACs"
  else:
    cost, what = (lambda counts: graph.params(first(counts))), f"{param_ratio:.0%} of the params"
  target = ratio * cost({g.name: g.size for g in graph.groups})
  s = scores(graph, variables, criterion, seed)
  prunable = None if groups is None else frozenset(groups)
  if ranking == "global":
    relative = {k: criteria.relative(v) if v.mean() > 0 else v for k, v in s.items()}
    kept = select.global_ranking(graph, relative, target, cost, prunable)
  else:
    kept, _ = select.uniform_ratio(graph, s, target, cost, prunable)
  return Plan(graph, kept, s, criterion, what)
