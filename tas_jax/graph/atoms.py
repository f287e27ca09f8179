"""Channels as atoms: the index space a channel dependency graph is built on.

Every index of every axis of every value in a jaxpr is an *atom*; two atoms are joined (union-find)
when the computation forces them to be removed together — a conv's output channel and the kernel
column that makes it, a residual add's two operands, a concatenation's output and the operand slice
it came from. A class of joined atoms is one removable channel; a class that touches the model's
inputs or outputs, or an op this package does not understand, is *pinned* and never cut.

An axis is a list of *digits*, most significant first: a flatten of (H, W, C) into one axis keeps
the three digits, so the Dense kernel rows it meets are split the same way and row p·C + c joins
channel c. An axis of size 1 has no digits (broadcasting never couples it). When two axes must be
joined and their digits do not line up, a digit that nothing else has touched yet is split
exactly; a digit already joined elsewhere is *coarsened*: its blocks join the outer sub-digit
(whole GroupNorm groups, whole attention heads) and the inner sub-digits are pinned.
"""

from __future__ import annotations

import math

import numpy as np

Axis = list  # of np.ndarray digits, most significant first


class Atoms:
  """Union-find over atom ids, with a pinned flag and a reduced-over flag per class."""

  def __init__(self) -> None:
    self.parent: list[int] = []
    self.size: list[int] = []
    self.pinned: list[bool] = []
    self.reduced: list[bool] = []

  def new(self, n: int, pinned: bool = False) -> np.ndarray:
    start = len(self.parent)
    self.parent.extend(range(start, start + n))
    self.size.extend([1] * n)
    self.pinned.extend([pinned] * n)
    self.reduced.extend([False] * n)
    return np.arange(start, start + n)

  def find(self, a: int) -> int:
    parent = self.parent
    root = a
    while parent[root] != root:
      root = parent[root]
    while parent[a] != root:
      parent[a], a = root, parent[a]
    return root

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if self.size[ra] < self.size[rb]:
      ra, rb = rb, ra
    self.parent[rb] = ra
    self.size[ra] += self.size[rb]
    self.pinned[ra] = self.pinned[ra] or self.pinned[rb]
    self.reduced[ra] = self.reduced[ra] or self.reduced[rb]

  def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
    for x, y in zip(np.ravel(a).tolist(), np.ravel(b).tolist()):
      self.union(x, y)

  def pin(self, atoms: np.ndarray) -> None:
    for a in np.ravel(atoms).tolist():
      self.pinned[self.find(a)] = True

  def mark_reduced(self, atoms: np.ndarray) -> None:
    for a in np.ravel(atoms).tolist():
      self.reduced[self.find(a)] = True

  def roots(self, atoms: np.ndarray) -> np.ndarray:
    return np.asarray([self.find(a) for a in np.ravel(atoms).tolist()], np.int64).reshape(
      np.shape(atoms)
    )

  def untouched(self, digit: np.ndarray) -> bool:
    """No atom of `digit` is joined to anything or pinned: it may be re-split freely."""
    return all(self.size[self.find(a)] == 1 and not self.pinned[a] for a in digit.tolist())

  # --- axes ---------------------------------------------------------------------------------

  def axis(self, size: int, pinned: bool = False) -> Axis:
    return [self.new(size, pinned)] if size > 1 else []

  def like(self, axis: Axis) -> Axis:
    """A new axis with `axis`'s digits, every atom joined to its counterpart."""
    out = []
    for digit in axis:
      new = self.new(len(digit))
      self.union_many(new, digit)
      out.append(new)
    return out

  def pin_axis(self, axis: Axis) -> None:
    for digit in axis:
      self.pin(digit)

  def refine(self, axis: Axis, cuts: set) -> bool:
    """Split `axis`'s digits in place so that every stride in `cuts` is a digit boundary. False
    (and nothing changed) when the strides do not nest."""
    plan = []
    lo = 1
    for digit in reversed(axis):
      hi = lo * len(digit)
      inner = sorted(c for c in cuts if lo < c < hi)
      bounds = [lo] + inner + [hi]
      if any(b % a for a, b in zip(bounds, bounds[1:])):
        return False
      plan.append([b // a for a, b in zip(bounds, bounds[1:])][::-1])  # sub-sizes, major first
      lo = hi
    plan.reverse()
    new_axis = []
    for digit, sizes in zip(axis, plan):
      if len(sizes) == 1:
        new_axis.append(digit)
      elif self.untouched(digit):
        new_axis += [self.new(s) for s in sizes]
      else:  # coarsen: whole blocks join the outer sub-digit, the inner ones are pinned
        outer = self.new(sizes[0])
        block = len(digit) // sizes[0]
        for i in range(sizes[0]):
          for a in digit[i * block : (i + 1) * block].tolist():
            self.union(int(outer[i]), a)
        new_axis += [outer] + [self.new(s, pinned=True) for s in sizes[1:]]
    axis[:] = new_axis
    return True

  def unify(self, a: Axis, b: Axis) -> None:
    """Join two axes of the same size index by index (refining their digits to line up)."""
    if [len(d) for d in a] != [len(d) for d in b]:
      cuts = boundaries(a) | boundaries(b)
      if not (self.refine(a, cuts) and self.refine(b, cuts)):
        self.pin_axis(a)
        self.pin_axis(b)
        return
    for x, y in zip(a, b):
      self.union_many(x, y)


def boundaries(axis: Axis) -> set:
  """The strides at which `axis`'s digits meet (excluding 1 and the whole size)."""
  out, stride = set(), 1
  for digit in reversed(axis[1:]):
    stride *= len(digit)
    out.add(stride)
  return out


def axis_size(axis: Axis) -> int:
  return math.prod(len(d) for d in axis)


def index_roots(atoms: Atoms, axis: Axis) -> np.ndarray:
  """(size, digits) array: the class of each digit of every index of `axis`."""
  if not axis:
    return np.zeros((1, 0), np.int64)
  sizes = [len(d) for d in axis]
  positions = np.unravel_index(np.arange(math.prod(sizes)), sizes)
  return np.stack([atoms.roots(d)[p] for d, p in zip(axis, positions)], axis=1)


def kept_size(roots: np.ndarray, removed: np.ndarray) -> int:
  """How many indices of an axis survive when the classes `removed` go."""
  if roots.shape[1] == 0:
    return roots.shape[0]
  return int(np.count_nonzero(~np.isin(roots, removed).any(axis=1)))
