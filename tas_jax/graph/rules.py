"""How each jaxpr primitive couples the axes of its operands and results (the DepGraph rules).

`Walker.run(jaxpr)` visits every equation, nested jaxprs included, and joins atoms
(`tas_jax.graph.atoms`) as each primitive dictates. The rules are a whitelist: a primitive with no
rule pins every axis it touches (its channels are never cut) and is reported once, with its source
line — a model is never cut wrongly because of an op this package does not know.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
from jax.extend import core

from tas_jax.graph.atoms import Atoms, Axis, index_roots

ELEMENTWISE = frozenset(
  """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type
  copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
  is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or pow real
  reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh
  xor sharding_constraint mesh_cast reshard""".split()
)
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or".split())
CALLS = {  # primitive: the param holding the jaxpr whose invars are the operands, in order
  "jit": "jaxpr",
  "pjit": "jaxpr",
  "closed_call": "call_jaxpr",
  "core_call": "call_jaxpr",
  "remat2": "jaxpr",
  "checkpoint": "jaxpr",
  "custom_jvp_call": "call_jaxpr",
  "custom_vjp_call": "call_jaxpr",
  "custom_vjp_call_jaxpr": "fun_jaxpr",
}


@dataclasses.dataclass
class Unknown:
  primitive: str
  where: str
  atoms: list  # every atom of its operands and results


@dataclasses.dataclass
class Site:
  """A conv or matmul: what the MAC counter needs (axes of its result and contracted operand)."""

  kind: str  # "conv" | "dot"
  out: list  # index_roots of every result axis (filled after the walk)
  contracted: list  # index_roots of the contracted axes
  fixed: float  # what no cut changes: a conv's window (x input/output pixels when transposed)
  repeats: int  # iterations of the enclosing scans
  axes: tuple = ()  # (result axes, contracted axes) before the walk ends


def where(eqn) -> str:
  """The user's source line of an equation (JAX's own summary of it)."""
  from jax._src import source_info_util  # no public API names an equation's source line

  try:
    frame = source_info_util.user_frame(eqn.source_info.traceback)
  except Exception:  # noqa: BLE001 - source info is a courtesy
    frame = None
  return "" if frame is None else f"{frame.file_name}:{frame.start_line}"


class Walker:
  """Walks a jaxpr, keeping the axes (lists of digits) of every value it meets."""

  def __init__(self, atoms: Atoms) -> None:
    self.atoms = atoms
    self.axes: dict = {}  # Var -> [Axis per dimension]
    self.unknown: list[Unknown] = []
    self.sites: list[Site] = []
    self.contracted: set = set()  # (Var, axis) of operands a matmul/conv contracts
    self.repeats = 1
    self.first_use: dict = {}  # Var -> order of the first equation that reads it
    self.enclosing: list = []  # the call equations whose jaxpr is being walked
    self.origin: dict = {}  # Var -> the variable it is a cast or a call's copy of, same axes

  def source(self, v):
    """The value `v` is a dtype cast (or a nested call's parameter) of: a kernel keeps its name
    through Flax's dtype promotion and the jit around a layer."""
    while v in self.origin:
      v = self.origin[v]
    return v

  # --- values -------------------------------------------------------------------------------
  def of(self, v) -> list:
    if isinstance(v, core.Literal):
      return [self.atoms.axis(d, pinned=True) for d in np.shape(v.val)]
    if v not in self.axes:
      self.axes[v] = [self.atoms.axis(d, pinned=True) for d in v.aval.shape]
    return self.axes[v]

  def define(self, v, axes: list) -> None:
    if not isinstance(v, core.DropVar):
      self.axes[v] = axes

  def fresh(self, v, pinned: bool = False) -> list:
    return [self.atoms.axis(d, pinned) for d in v.aval.shape]

  def pin_value(self, v) -> None:
    for axis in self.of(v):
      self.atoms.pin_axis(axis)

  # --- walking ------------------------------------------------------------------------------
  def run(self, jaxpr) -> None:
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name not in CALLS and name != "scan":  # where the computation, not a wrapper, reads it
        for v in eqn.invars:
          if not isinstance(v, core.Literal):
            self.first_use.setdefault(self.source(v), len(self.first_use))
      rule = RULES.get(name)
      if name in ELEMENTWISE:
        rule = _elementwise
      elif name in REDUCTIONS:
        rule = _reduction
      elif name in CALLS:
        rule = _call
      if rule is None or rule(self, eqn) is False:
        self._unknown(eqn)

  def _unknown(self, eqn) -> None:
    for v in eqn.invars:
      self.pin_value(v)
    atoms = [d for v in eqn.invars for axis in self.of(v) for d in axis]
    for v in eqn.outvars:
      self.define(v, self.fresh(v, pinned=True))
      atoms += [d for axis in self.of(v) for d in axis]
    places = [where(e) for e in [eqn] + self.enclosing[::-1]]
    place = next((p for p in places if p), "no source line")
    self.unknown.append(Unknown(eqn.primitive.name, place, atoms))

  def nested(self, jaxpr, operands, results) -> None:
    """Run a nested jaxpr whose invars are `operands` and outvars `results`, in order."""
    inner = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
    for v in inner.constvars:
      self.pin_value(v)
    for inv, op in zip(inner.invars, operands):
      self.define(inv, [self.atoms.like(a) for a in self.of(op)])
      if not isinstance(op, core.Literal):
        self.origin[inv] = op
    self.run(inner)
    for outv, res in zip(inner.outvars, results):
      self.define(res, [self.atoms.like(a) for a in self.of(outv)])

  def finish_sites(self) -> None:
    for s in self.sites:
      out, contracted = s.axes
      s.out = [index_roots(self.atoms, a) for a in out]
      s.contracted = [index_roots(self.atoms, a) for a in contracted]


def _elementwise(w: Walker, eqn) -> None:
  for out in eqn.outvars:
    shape = out.aval.shape
    axes = [w.atoms.axis(d) for d in shape]
    for v in eqn.invars:
      in_axes = w.of(v)
      if len(in_axes) != len(shape):  # scalars and literals
        continue
      for a, (d, b) in enumerate(zip(shape, in_axes)):
        if d > 1 and v.aval.shape[a] == d:
          w.atoms.unify(axes[a], b)
    w.define(out, axes)
  operands = [v for v in eqn.invars if not isinstance(v, core.Literal)]
  if len(operands) == 1 and len(eqn.outvars) == 1 and operands[0].aval.shape == shape:
    w.origin[eqn.outvars[0]] = operands[0]


def _one_to_one(w: Walker, eqn) -> None:
  for v, out in zip(eqn.invars, eqn.outvars):
    w.define(out, [w.atoms.like(a) for a in w.of(v)])


def _reduction(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  axes = w.of(v)
  reduced = set(eqn.params["axes"])
  for a in reduced:
    for d in axes[a]:
      w.atoms.mark_reduced(d)
  w.define(out, [w.atoms.like(ax) for i, ax in enumerate(axes) if i not in reduced])


def _argminmax(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  axes = w.of(v)
  reduced = set(eqn.params["axes"])
  for a in reduced:  # the result is a position on this axis
    w.atoms.pin_axis(axes[a])
  w.define(out, [w.atoms.like(ax) for i, ax in enumerate(axes) if i not in reduced])


def _cumulative(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  axes = w.of(v)
  w.atoms.pin_axis(axes[eqn.params["axis"]])
  w.define(out, [w.atoms.like(ax) for ax in axes])


def _transpose(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  axes = w.of(v)
  w.define(out, [w.atoms.like(axes[p]) for p in eqn.params["permutation"]])


def _squeeze(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  dims = {d % len(v.aval.shape) for d in eqn.params["dimensions"]}
  w.define(out, [w.atoms.like(a) for i, a in enumerate(w.of(v)) if i not in dims])


def _broadcast_in_dim(w: Walker, eqn) -> None:
  v, out = eqn.invars[0], eqn.outvars[0]
  if len(eqn.invars) > 1:  # dynamic shapes
    return False
  axes = w.of(v)
  dims = eqn.params["broadcast_dimensions"]
  result = []
  for i, d in enumerate(out.aval.shape):
    if i in dims and v.aval.shape[dims.index(i)] == d:
      result.append(w.atoms.like(axes[dims.index(i)]))
    else:  # a new axis: free (its size follows whatever it meets)
      result.append(w.atoms.axis(d))
  w.define(out, result)


def _reshape(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars[:1], eqn.outvars
  if eqn.params.get("dimensions") is not None or len(eqn.invars) > 1:
    return False
  in_axes = w.of(v)
  in_shape, out_shape = v.aval.shape, out.aval.shape
  # global strides at which output axes meet, then each input axis refined to contain them
  cuts, stride = set(), 1
  for d in reversed(out_shape):
    stride *= d
    cuts.add(stride)
  ok, stride = True, 1
  spans = []
  for axis, d in reversed(list(zip(in_axes, in_shape))):
    local = {c // stride for c in cuts if stride < c < stride * d and c % stride == 0}
    if any(stride < c < stride * d and c % stride for c in cuts):
      ok = False
    ok = ok and w.atoms.refine(axis, local)
    spans.append((stride, axis))
    stride *= d
  if not ok:
    for axis in in_axes:
      w.atoms.pin_axis(axis)
    w.define(out, w.fresh(out, pinned=True))
    return None
  digits = []  # (global stride of the digit's least significant end, digit), major first
  for lo, axis in reversed(spans):
    s = lo * math.prod(len(d) for d in axis)
    for d in axis:
      s //= len(d)
      digits.append((s, d))
  result, stride = [], 1
  bounds = []
  for d in reversed(out_shape):
    bounds.append((stride, stride * d))
    stride *= d
  bounds.reverse()
  for (lo, hi), d in zip(bounds, out_shape):
    mine = [dg for s, dg in digits if lo <= s < hi]
    new = []
    for dg in mine:
      copy = w.atoms.new(len(dg))
      w.atoms.union_many(copy, dg)
      new.append(copy)
    result.append(new if d > 1 else [])
  w.define(out, result)
  return None


def _concatenate(w: Walker, eqn) -> None:
  out = eqn.outvars[0]
  dim = eqn.params["dimension"]
  axes = [w.atoms.axis(d) for d in out.aval.shape]
  offset = 0
  for v in eqn.invars:
    in_axes = w.of(v)
    n = v.aval.shape[dim]
    for a, ax in enumerate(in_axes):
      if a != dim:
        w.atoms.unify(axes[a], ax)
    target = axes[dim][0][offset : offset + n] if axes[dim] else np.zeros(0, int)
    if n == 1:
      w.atoms.pin(target)
    elif len(in_axes[dim]) == 1:
      w.atoms.union_many(target, in_axes[dim][0])
    else:
      w.atoms.pin(target)
      w.atoms.pin_axis(in_axes[dim])
    offset += n
  w.define(out, axes)


def _chunks(w: Walker, axis: Axis, starts: list, size: int) -> list:
  """Equal chunks [start, start + size) of a one-digit axis: each chunk's atoms joined to the
  same positions of every other chunk (so every chunk keeps the same width)."""
  digit = axis[0]
  n = len(digit)
  for j in range(size, n, size):
    w.atoms.union_many(digit[:size], digit[j : j + size])
  outs = []
  for start in starts:
    new = w.atoms.new(size)
    w.atoms.union_many(new, digit[start : start + size])
    outs.append([new] if size > 1 else [])
  return outs


def _split(w: Walker, eqn) -> None:
  (v,) = eqn.invars
  axis, sizes = eqn.params["axis"], [int(s) for s in eqn.params["sizes"]]
  axes = w.of(v)
  n = v.aval.shape[axis]
  equal = len(set(sizes)) == 1 and len(axes[axis]) == 1
  if equal:
    starts = list(range(0, n, sizes[0]))
    pieces = _chunks(w, axes[axis], starts, sizes[0])
  else:
    w.atoms.pin_axis(axes[axis])
    pieces = [w.atoms.axis(s, pinned=True) for s in sizes]
  for out, piece in zip(eqn.outvars, pieces):
    w.define(out, [piece if a == axis else w.atoms.like(ax) for a, ax in enumerate(axes)])


def _slice(w: Walker, eqn) -> None:
  (v,), (out,) = eqn.invars, eqn.outvars
  axes = w.of(v)
  starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
  strides = eqn.params["strides"] or (1,) * len(starts)
  result = []
  for a, (ax, d, s, lim, st) in enumerate(zip(axes, v.aval.shape, starts, limits, strides)):
    size = out.aval.shape[a]
    if s == 0 and lim == d and st == 1:
      result.append(w.atoms.like(ax))
    elif st == 1 and size > 0 and d % size == 0 and s % size == 0 and len(ax) == 1:
      result.append(_chunks(w, ax, [s], size)[0])
    else:  # a fixed window of this axis: its channels cannot move
      w.atoms.pin_axis(ax)
      result.append(w.atoms.axis(size, pinned=True))
  w.define(out, result)


def _axiswise(w: Walker, v, out, untouched) -> None:
  """`out` from `v` axis by axis: an axis the op leaves alone keeps its channels; one it pads or
  windows is fixed on both sides."""
  result = []
  for ax, d, same in zip(w.of(v), out.aval.shape, untouched):
    if same:
      result.append(w.atoms.like(ax))
    else:
      w.atoms.pin_axis(ax)
      result.append(w.atoms.axis(d, pinned=True))
  w.define(out, result)


def _pad(w: Walker, eqn) -> None:
  v, out = eqn.invars[0], eqn.outvars[0]
  _axiswise(w, v, out, [tuple(cfg) == (0, 0, 0) for cfg in eqn.params["padding_config"]])


def _reduce_window(w: Walker, eqn) -> None:
  if len(eqn.invars) != 1:
    return False
  p, v, out = eqn.params, eqn.invars[0], eqn.outvars[0]
  ones = (1,) * len(v.aval.shape)
  untouched = [
    p["window_dimensions"][a] == 1
    and p["window_strides"][a] == 1
    and tuple(p["padding"][a]) == (0, 0)
    and p.get("base_dilation", ones)[a] == 1
    and p.get("window_dilation", ones)[a] == 1
    for a in range(len(ones))
  ]
  _axiswise(w, v, out, untouched)
  return None


def _conv(w: Walker, eqn) -> None:
  p = eqn.params
  lhs, rhs = eqn.invars
  (out,) = eqn.outvars
  if p["batch_group_count"] != 1:
    return False
  dn = p["dimension_numbers"]
  lb, lf, *_ = dn.lhs_spec
  ro, ri, *rs = dn.rhs_spec
  ob, of, *os_ = dn.out_spec
  la, ra = w.of(lhs), w.of(rhs)
  for a in rs:
    w.atoms.pin_axis(ra[a])
  for a in dn.lhs_spec[2:]:  # pixels are not channels
    w.atoms.pin_axis(la[a])
  groups = p["feature_group_count"]
  result = [None] * len(out.aval.shape)
  result[ob] = w.atoms.like(la[lb])
  result[of] = w.atoms.like(ra[ro])
  for a in os_:
    result[a] = w.atoms.axis(out.aval.shape[a], pinned=True)
  if groups == 1:
    w.atoms.unify(la[lf], ra[ri])
    w.contracted.add((w.source(rhs), ri))
  else:  # grouped / depthwise: a whole feature group (its inputs and outputs) is one channel
    c, o = lhs.aval.shape[lf], rhs.aval.shape[ro]
    if len(la[lf]) != 1 or len(result[of]) != 1:
      return False
    w.atoms.pin_axis(ra[ri])
    cin, cout = c // groups, o // groups
    for g in range(groups):
      members = list(la[lf][0][g * cin : (g + 1) * cin]) + list(
        result[of][0][g * cout : (g + 1) * cout]
      )
      for m in members[1:]:
        w.atoms.union(int(members[0]), int(m))
  w.define(out, result)
  window = math.prod(rhs.aval.shape[a] for a in rs)
  if any(d != 1 for d in p["lhs_dilation"]):  # transposed: every input pixel meets the window
    window *= math.prod(lhs.aval.shape[a] for a in dn.lhs_spec[2:])
    window /= math.prod(out.aval.shape[a] for a in os_)
  w.sites.append(Site("conv", [], [], window, w.repeats, (result, [ra[ri]])))


def _dot_general(w: Walker, eqn) -> None:
  lhs, rhs = eqn.invars
  (out,) = eqn.outvars
  (lc, rc), (lbatch, rbatch) = eqn.params["dimension_numbers"]
  la, ra = w.of(lhs), w.of(rhs)
  for a, b in zip(lc, rc):
    w.atoms.unify(la[a], ra[b])
    w.contracted.add((w.source(rhs), b))
    w.contracted.add((w.source(lhs), a))
  result = []
  for a, b in zip(lbatch, rbatch):
    w.atoms.unify(la[a], ra[b])
    result.append(w.atoms.like(la[a]))
  result += [w.atoms.like(la[a]) for a in range(len(la)) if a not in lc and a not in lbatch]
  result += [w.atoms.like(ra[b]) for b in range(len(ra)) if b not in rc and b not in rbatch]
  w.define(out, result)
  w.sites.append(Site("dot", [], [], 1, w.repeats, (result, [la[a] for a in lc])))


def _call(w: Walker, eqn) -> None:
  jaxpr = eqn.params[CALLS[eqn.primitive.name]]
  inner = jaxpr.jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else jaxpr
  if len(inner.invars) != len(eqn.invars) or len(inner.outvars) != len(eqn.outvars):
    return False
  w.enclosing.append(eqn)
  w.nested(jaxpr, eqn.invars, eqn.outvars)
  w.enclosing.pop()
  return None


def _scan(w: Walker, eqn) -> None:
  p = eqn.params
  closed = p["jaxpr"]
  inner = closed.jaxpr
  nconst, ncarry = p["num_consts"], p["num_carry"]
  ops = eqn.invars
  for v in inner.constvars:
    w.pin_value(v)
  for i, (inv, op) in enumerate(zip(inner.invars, ops)):
    op_axes = w.of(op)
    if i < nconst + ncarry:
      w.define(inv, [w.atoms.like(a) for a in op_axes])
    else:  # a stacked operand: its leading (iteration) axis is fixed
      w.atoms.pin_axis(op_axes[0])
      w.define(inv, [w.atoms.like(a) for a in op_axes[1:]])
  outer_repeats = w.repeats
  w.repeats *= p["length"]
  w.enclosing.append(eqn)
  w.run(inner)
  w.enclosing.pop()
  w.repeats = outer_repeats
  for i in range(ncarry):  # the carry is the same value in every iteration
    carry_in, carry_out = w.of(inner.invars[nconst + i]), w.of(inner.outvars[i])
    for a, b in zip(carry_in, carry_out):
      w.atoms.unify(a, b)
  for i, (outv, res) in enumerate(zip(inner.outvars, eqn.outvars)):
    axes = [w.atoms.like(a) for a in w.of(outv)]
    if i >= ncarry:
      axes = [w.atoms.axis(p["length"], pinned=True)] + axes
    w.define(res, axes)


RULES: dict[str, Callable] = {
  "argmax": _argminmax,
  "argmin": _argminmax,
  "cumsum": _cumulative,
  "cumprod": _cumulative,
  "cummax": _cumulative,
  "cummin": _cumulative,
  "cumlogsumexp": _cumulative,
  "transpose": _transpose,
  "squeeze": _squeeze,
  "broadcast_in_dim": _broadcast_in_dim,
  "reshape": _reshape,
  "concatenate": _concatenate,
  "split": _split,
  "slice": _slice,
  "pad": _pad,
  "reduce_window_sum": _reduce_window,
  "reduce_window_max": _reduce_window,
  "reduce_window_min": _reduce_window,
  "conv_general_dilated": _conv,
  "dot_general": _dot_general,
  "scan": _scan,
  "optimization_barrier": _one_to_one,
  "device_put": _one_to_one,
}
