"""Channel groups of any Flax model, traced from its jaxpr (DepGraph on jaxprs), and the cut that
makes it smaller: `trace(model, variables, example)` → `Graph`; `Graph.prune(kept)` → the pruned
model. Pruning plans (criteria, FLOPs targets) are in `tas_jax.prune`."""

from tas_jax.graph.trace import Graph, Group, Member, trace

__all__ = ["Graph", "Group", "Member", "trace"]
