"""`trace(model, ...)`: the channel groups of any Flax model, from its jaxpr; the cut that removes
them; the pruned model; and its multiply-adds.

A *group* is a set of channels that must be removed together, each channel a class of atoms
(`tas_jax.graph.atoms`) that touches at least one variable and nothing pinned. Its *members* are
the (variable, axis) pairs it cuts, each with the indices every channel of the group owns there: a
conv kernel's output column, the next kernel's input row, BN's four vectors, the rows p·C + c of a
Dense after a flatten. Groups are the classes sharing the same members, ordered by their first
member's index.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.extend import core

from tas_jax.graph import models as adapters
from tas_jax.graph.atoms import Atoms, index_roots, kept_size
from tas_jax.graph.models import path_name
from tas_jax.graph.rules import Walker, where as _where

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Member:
  path: str  # the variable: 'params/Conv_0/kernel'
  axis: int
  indices: tuple  # per channel of the group: the indices it owns on this axis


@dataclasses.dataclass(frozen=True)
class Group:
  name: str  # the first variable that produces the channels, e.g. 'Conv_0'
  size: int
  members: tuple[Member, ...]
  normalized: bool  # a reduction over the channels (LayerNorm, GroupNorm, softmax) sees them
  producer_paths: tuple = ()  # the kernels whose output channels these are (what criteria score)
  roots: tuple = dataclasses.field(repr=False, default=())

  @property
  def producers(self) -> tuple[Member, ...]:
    return tuple(m for m in self.members if m.path in self.producer_paths)


class Graph:
  """The channel groups of a traced model and everything derived from them."""

  def __init__(self, adapter, example: tuple, ignore: Sequence[str] = ()) -> None:
    self.adapter, self.example = adapter, example
    variables = adapter.variables
    leaves, self.treedef = jax.tree_util.tree_flatten_with_path(variables)
    self.paths = [path_name(p) for p, _ in leaves]
    self.shapes = [np.shape(x) for _, x in leaves]
    flat = [x for _, x in leaves]

    def fn(flat_vars, *xs):
      return adapter.apply(jax.tree_util.tree_unflatten(self.treedef, flat_vars), *xs)

    self.closed = jax.make_jaxpr(fn)(flat, *example)
    jaxpr = self.closed.jaxpr
    self.atoms = Atoms()
    self.walker = w = Walker(self.atoms)
    n_vars = len(flat)
    self.var_of_leaf = jaxpr.invars[:n_vars]
    for v in self.var_of_leaf:
      w.define(v, [self.atoms.axis(d) for d in v.aval.shape])
    for v in list(jaxpr.invars[n_vars:]) + list(jaxpr.constvars):
      w.pin_value(v)
    w.run(jaxpr)
    for v in jaxpr.outvars:
      w.pin_value(v)
    self.is_param = self._parameters()
    self.ignored = self._ignore(ignore)
    w.finish_sites()
    self.leaf_roots = [
      [index_roots(self.atoms, axis) for axis in w.of(v)] for v in self.var_of_leaf
    ]
    self.groups = self._groups()
    self.messages = self._messages()
    for m in self.messages:
      log.warning(m)

  # --- construction -------------------------------------------------------------------------
  def _ignore(self, ignore: Sequence[str]) -> list[str]:
    hit = []
    for i, (path, v) in enumerate(zip(self.paths, self.var_of_leaf)):
      module = self.module_of(path)
      if any(path == p or module == p or module.startswith(p + "/") for p in ignore):
        for a, axis in enumerate(self.walker.of(v)):
          if (v, a) not in self.walker.contracted:
            self.atoms.pin_axis(axis)
        hit.append(path)
    missing = [p for p in ignore if not any(p in h for h in hit)]
    if missing:
      raise ValueError(f"ignore: no variable of the model is under {missing}; paths: {self.paths}")
    return hit

  def _groups(self) -> tuple[Group, ...]:
    members: dict = {}  # root -> {(leaf, axis): indices}
    for leaf, axes in enumerate(self.leaf_roots):
      for a, roots in enumerate(axes):
        for r in np.unique(roots):
          r = int(r)
          if self.atoms.pinned[r]:
            continue
          idx = np.nonzero((roots == r).any(axis=1))[0]
          members.setdefault(r, {})[(leaf, a)] = idx
    by_signature: dict = {}
    for r, m in members.items():
      by_signature.setdefault(tuple(sorted(m)), []).append(r)
    groups = []
    for signature, roots in by_signature.items():
      first = signature[0]
      roots.sort(key=lambda r: int(members[r][first][0]))
      owned = lambda leaf, a: tuple(tuple(int(i) for i in members[r][(leaf, a)]) for r in roots)
      group_members = tuple(Member(self.paths[leaf], a, owned(leaf, a)) for leaf, a in signature)
      producing = [
        (leaf, a)
        for leaf, a in signature
        if (self.var_of_leaf[leaf], a) not in self.walker.contracted
        and self.paths[leaf].endswith(("kernel", "embedding"))
      ]
      producing.sort(key=lambda m: self._order(m[0]))
      leaf = (producing or sorted(signature, key=lambda m: self._order(m[0])))[0][0]
      name = self.module_of(self.paths[leaf])
      normalized = any(self.atoms.reduced[r] for r in roots)
      producers = tuple(self.paths[i] for i, _ in producing)
      groups.append(Group(name, len(roots), group_members, normalized, producers, tuple(roots)))
    groups.sort(key=lambda g: min(self._order(self.paths.index(m.path)) for m in g.members))
    seen: dict = {}
    for i, g in enumerate(groups):  # unique names: a second group of one layer gets a suffix
      n = seen.get(g.name, 0)
      seen[g.name] = n + 1
      if n:
        groups[i] = dataclasses.replace(g, name=f"{g.name}#{n}")
    return tuple(groups)

  def _parameters(self) -> list[bool]:
    """Which variables are trained parameters (not BN statistics): linen's 'params' collection,
    an NNX module's nnx.Param, every variable of a plain function."""
    if self.adapter.kind == "nnx":
      return [p in self.adapter.param_paths for p in self.paths]
    if self.adapter.kind == "linen":
      return [p.split("/")[0] == "params" for p in self.paths]
    return [True] * len(self.paths)

  def module_of(self, path: str) -> str:
    """'Conv_0' for 'params/Conv_0/kernel' (linen) or 'conv/kernel' (NNX, functions)."""
    parts = path.split("/")
    inner = parts[1:-1] if self.adapter.kind == "linen" else parts[:-1]
    return "/".join(inner) or path

  def _order(self, leaf: int) -> int:
    """Where the computation first reads a variable (unused ones last)."""
    return self.walker.first_use.get(self.var_of_leaf[leaf], 1 << 30)

  def _messages(self) -> list[str]:
    out, said = [], set()
    for u in self.walker.unknown:
      key = (u.primitive, u.where)
      if key in said:
        continue
      said.add(key)
      roots = set(int(r) for d in u.atoms for r in self.atoms.roots(d))
      hit = [
        p
        for p, axes in zip(self.paths, self.leaf_roots)
        if any(np.isin(r, list(roots)).any() for r in axes)
      ]
      out.append(
        f"tas_jax.graph: no rule for `{u.primitive}` ({u.where}); the channels it touches are "
        f"not cut: {', '.join(hit) or 'no variables'}"
      )
    return out

  # --- queries ------------------------------------------------------------------------------
  def group(self, name: str) -> Group:
    for g in self.groups:
      if g.name == name:
        return g
    raise KeyError(f"no group {name!r}; groups: {[g.name for g in self.groups]}")

  def removed(self, kept: Optional[dict]) -> np.ndarray:
    """The classes (atom roots) that `kept` ({group: kept channel indices}) removes."""
    if not kept:
      return np.zeros(0, np.int64)
    out = []
    for g in self.groups:
      if g.name in kept:
        keep = set(int(i) for i in kept[g.name])
        out += [r for j, r in enumerate(g.roots) if j not in keep]
    return np.asarray(out, np.int64)

  def macs(self, kept: Optional[dict] = None) -> int:
    """Multiply-adds of every conv and matmul on the example input (the whole batch): a conv's
    window over every output pixel (padding included, as the TAS convention counts), a
    transposed conv's window over every input pixel, a matmul's output by its contraction."""
    removed = self.removed(kept)
    total = 0
    for s in self.walker.sites:
      out = math.prod(kept_size(r, removed) for r in s.out)
      inner = math.prod(kept_size(r, removed) for r in s.contracted)
      total += s.repeats * s.fixed * out * inner
    return int(round(total))

  @functools.cached_property
  def _patterns(self) -> list:
    """Per conv/matmul: (repeats·window, [axis patterns]), an axis pattern {tuple of the groups
    an index's digits belong to: how many indices}: its width at any kept counts is
    Σ count · Π over those groups of kept/size (exact when a group's channels share one pattern)."""
    group_of = {int(r): i for i, g in enumerate(self.groups) for r in g.roots}
    out = []
    for s in self.walker.sites:
      axes = []
      for roots in list(s.out) + list(s.contracted):
        pattern: dict = {}
        for row in roots.tolist():
          key = tuple(sorted(group_of[r] for r in row if r in group_of))
          pattern[key] = pattern.get(key, 0) + 1
        axes.append(pattern)
      out.append((s.repeats * s.fixed, axes))
    return out

  def macs_at_counts(self, counts: dict) -> Any:
    """The MACs at kept *counts* per group (numbers, or traced values: PaS's and TAS's costs
    differentiate it); equal to `macs` of any kept channels with those counts."""
    fraction = [counts[g.name] / g.size if g.name in counts else 1.0 for g in self.groups]
    total = 0.0
    for factor, axes in self._patterns:
      term = factor
      for pattern in axes:
        width = 0.0
        for key, n in pattern.items():
          share = n
          for i in key:
            share = share * fraction[i]
          width = width + share
        term = term * width
      total = total + term
    return total

  def params(self, kept: Optional[dict] = None) -> int:
    """Number of trained parameters (BN statistics are not)."""
    removed = self.removed(kept)
    return sum(
      math.prod(kept_size(r, removed) for r in self.leaf_roots[i])
      for i, is_param in enumerate(self.is_param)
      if is_param
    )

  @functools.cached_property
  def output_sites(self) -> dict:
    """{layer (a module path): [(group, positions, channels)]}: the layers whose outputs carry a
    group's channels (convs, Dense, BN and other per-channel layers), and for each output
    position the channel it belongs to. Multiplying those outputs by a per-channel gate zeroes a
    removed channel everywhere it is made (PaS's masks, TAS's channel-wise interpolation)."""
    out: dict = {}
    for g in self.groups:
      for m in g.members:
        leaf = self.paths.index(m.path)
        if not self.is_param[leaf] or (self.var_of_leaf[leaf], m.axis) in self.walker.contracted:
          continue
        layer = self.module_of(m.path)
        if any(name == g.name for name, _, _ in out.get(layer, [])):
          continue
        positions = np.concatenate([np.asarray(idx, np.int64) for idx in m.indices])
        channels = np.concatenate([np.full(len(idx), j) for j, idx in enumerate(m.indices)])
        out.setdefault(layer, []).append((g.name, positions, channels))
    return out

  @functools.cached_property
  def input_sites(self) -> dict:
    """{layer: [(group, positions, channels, size)]}: the layers that contract a group's channels
    (a conv's input features, a Dense's rows after a flatten) with, for each position of the
    contracted axis (of `size`), the channel it reads. Mixing a layer's input there changes what
    every reader of the group sees and nothing else (TAS's channel-wise interpolation)."""
    out: dict = {}
    for g in self.groups:
      for m in g.members:
        leaf = self.paths.index(m.path)
        if (
          not self.is_param[leaf] or (self.var_of_leaf[leaf], m.axis) not in self.walker.contracted
        ):
          continue
        positions = np.concatenate([np.asarray(idx, np.int64) for idx in m.indices])
        channels = np.concatenate([np.full(len(idx), j) for j, idx in enumerate(m.indices)])
        entry = (g.name, positions, channels, self.shapes[leaf][m.axis])
        out.setdefault(self.module_of(m.path), []).append(entry)
    return out

  def producer_filters(self, variables: Any) -> dict:
    """{group: [(fan-in, C) filters of every producer]}: each channel's weights in a producing
    kernel, channels last, as the filter criteria (`tas_jax.ops.criteria`) read them."""
    arrays = {
      path_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(variables)[0]
    }
    out = {}
    for g in self.groups:
      filters = []
      for m in g.producers:
        w = np.moveaxis(arrays[m.path], m.axis, 0)
        filters.append(np.stack([w[list(idx)].ravel() for idx in m.indices], axis=1))
      out[g.name] = filters
    return out

  # --- the cut ------------------------------------------------------------------------------
  def check_kept(self, kept: dict) -> None:
    for name, idx in kept.items():
      g = self.group(name)
      idx = np.asarray(idx)
      if len(idx) == 0 or np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= g.size:
        raise ValueError(
          f"kept channels of {name}: sorted distinct indices in [0, {g.size}), at least one; "
          f"got {idx.tolist()}"
        )

  def shapes_at(self, kept: dict) -> Any:
    """The traced variables' tree of `jax.ShapeDtypeStruct`s after `kept`'s cut."""
    removed = self.removed(kept)
    flat = jax.tree_util.tree_leaves(self.adapter.variables)
    out = [
      jax.ShapeDtypeStruct(tuple(kept_size(r, removed) for r in roots), x.dtype)
      for x, roots in zip(flat, self.leaf_roots)
    ]
    return jax.tree_util.tree_unflatten(self.treedef, out)

  def cut(self, variables: Any, kept: dict) -> Any:
    """`variables` (the traced model's tree) with every channel `kept` does not keep removed from
    every member array."""
    self.check_kept(kept)
    removed = self.removed(kept)
    flat, treedef = jax.tree_util.tree_flatten(variables)
    out = []
    for leaf, x in enumerate(flat):
      x = np.asarray(jax.device_get(x))
      for a, roots in enumerate(self.leaf_roots[leaf]):
        if roots.shape[1] and np.isin(roots, removed).any():
          x = np.take(x, np.nonzero(~np.isin(roots, removed).any(axis=1))[0], axis=a)
      out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)

  def masked(self, variables: Any, kept: dict) -> Any:
    """`variables` with the removed channels zeroed in every trained parameter (running
    statistics left as they are): the original that a cut must reproduce."""
    removed = self.removed(kept)
    flat, treedef = jax.tree_util.tree_flatten(variables)
    out = []
    for leaf, x in enumerate(flat):
      x = np.array(jax.device_get(x))
      if self.is_param[leaf]:
        for a, roots in enumerate(self.leaf_roots[leaf]):
          if roots.shape[1]:
            gone = np.nonzero(np.isin(roots, removed).any(axis=1))[0]
            index = [slice(None)] * x.ndim
            index[a] = gone
            x[tuple(index)] = 0
      out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)

  def prune(self, kept: dict) -> tuple[Callable, Any, Any]:
    """(apply, variables, module or None) of the model with only `kept` channels, checked against
    the trace: every value of the pruned computation has the shape the cut predicts."""
    small = self.cut(self.adapter.variables, kept)
    apply, small, module = self.adapter.pruned(small)
    self.verify(apply, small, kept)
    return apply, small, module

  def verify(self, apply: Callable, variables: Any, kept: dict) -> None:
    removed = self.removed(kept)
    flat = jax.tree_util.tree_leaves(variables)
    try:
      closed = jax.make_jaxpr(lambda v, *xs: apply(v, *xs))(variables, *self.example)
    except Exception as e:  # noqa: BLE001 - reported with what to do
      raise ValueError(
        f"the pruned model does not run at its new widths ({type(e).__name__}: {e}); a width "
        "written into the model's code did not follow the cut: pass ignore=[the layer]"
      ) from e
    if len(flat) != len(self.var_of_leaf):
      raise ValueError("the pruned variables do not match the traced ones")
    pairs = list(_lockstep(self.closed.jaxpr, closed.jaxpr))
    for old, new, eqn in pairs:
      want = tuple(
        kept_size(index_roots(self.atoms, axis), removed) if axis else d
        for axis, d in zip(self.walker.of(old), old.aval.shape)
      )
      if tuple(new.aval.shape) != want:
        place = "" if eqn is None else f" at `{eqn.primitive.name}` ({_where(eqn)})"
        raise ValueError(
          f"the pruned model computes a {tuple(new.aval.shape)} value{place} where the cut "
          f"predicts {want}: a width written into the model's code did not follow the cut; pass "
          "ignore=[that layer] to trace()"
        )


def _lockstep(old, new):
  """(old var, new var, eqn) of two top-level jaxprs of the same code. (A nested jaxpr may be one
  object shared by several calls, so only its calls' operands and results are compared.)"""
  if len(old.eqns) != len(new.eqns):
    raise ValueError(
      f"the pruned model's computation has {len(new.eqns)} steps where the original has "
      f"{len(old.eqns)}: its code branches on a width"
    )
  for a, b in zip(old.invars, new.invars):
    yield a, b, None
  for e1, e2 in zip(old.eqns, new.eqns):
    if e1.primitive.name != e2.primitive.name:
      raise ValueError(
        f"the pruned model runs `{e2.primitive.name}` where the original ran "
        f"`{e1.primitive.name}` ({_where(e1)}): its code branches on a width"
      )
    for a, b in zip(e1.outvars, e2.outvars):
      if not isinstance(a, core.DropVar):
        yield a, b, e1


def trace(model: Any, *args: Any, ignore: Sequence[str] = (), **kwargs: Any) -> Graph:
  """The channel groups of `model` run on an example input.

  - `trace(module, variables, x, train=False)`: a `flax.linen` Module;
  - `trace(nnx_module, x)`: a Flax NNX module (through `nnx.split`);
  - `trace(f, variables, x)`: any function `f(variables, *inputs)`.

  Keyword arguments other than `ignore` go to every call of the model. `ignore` names variables or
  modules ('Dense_0', 'params/head/kernel') whose output channels must stay; their inputs are still
  cut. The model's inputs and outputs are never cut.
  """
  adapter, example = adapters.adapt(model, args, kwargs)
  return Graph(adapter, tuple(example), ignore)
