"""The three kinds of model `tas_jax.graph.trace` accepts, and how each runs at pruned widths.

A pruned model is the user's own code run on smaller arrays: JAX re-traces it, so every shape that
the code derives from its inputs (`x.shape[-1]`, `jnp.mean`, a Flax layer's inferred input width)
follows the cut. What the code *states* does not: a Flax layer's `features`, a depthwise conv's
`feature_group_count`, GroupNorm's `num_groups`. For models built from Flax's layers those are
rewritten at call time (linen: a method interceptor; NNX: the modules' attributes, in place); a
width written into the user's own code (a reshape to a literal size, a slice at a literal offset)
is caught when the pruned model is checked against the trace (`tas_jax.graph.trace`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta, scope as flax_scope

if TYPE_CHECKING:
  from flax import nnx


def path_name(path) -> str:
  """'params/Conv_0/kernel' for a pytree key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(p for p in parts if p != "value")


def _get(tree, path: tuple):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _linen_widths(
  module: nn.Module, params: dict, original: dict, args: tuple, prefix: tuple = ()
) -> None:
  """Set the width attributes of one bound Flax layer from its (pruned) parameters."""
  path = tuple(module.scope.path)[len(prefix) :] if module.scope is not None else ()
  mine, before = _get(params, path), _get(original, path)
  if not isinstance(mine, dict):
    return
  put = lambda name, value: object.__setattr__(module, name, value)
  kernel = mine.get("kernel")
  if isinstance(module, (nn.Conv, nn.ConvTranspose, nn.ConvLocal)) and kernel is not None:
    put("features", kernel.shape[-1])
    groups = getattr(module, "feature_group_count", 1)
    if groups > 1 and args:
      put("feature_group_count", args[0].shape[-1] // kernel.shape[-2])
  elif isinstance(module, nn.Dense) and kernel is not None:
    put("features", kernel.shape[-1])
  elif isinstance(module, nn.DenseGeneral) and kernel is not None:
    n = len(module.features) if isinstance(module.features, tuple) else 1
    put("features", tuple(kernel.shape[-n:]) if n > 1 else kernel.shape[-1])
  elif isinstance(module, nn.Embed) and "embedding" in mine:
    put("features", mine["embedding"].shape[-1])
  elif isinstance(module, nn.GroupNorm) and module.num_groups is not None:
    vector = mine.get("scale", mine.get("bias"))
    old = (before or {}).get("scale", (before or {}).get("bias"))
    if vector is not None and old is not None:
      group_size = old.shape[-1] // module.num_groups
      put("num_groups", vector.shape[-1] // group_size)


def _fit(value, shape):
  """`value` (an initializer's output) cut to `shape` on every axis: a pruned model's fresh
  parameter where the module's code states the unpruned shape."""
  return value[tuple(slice(0, n) for n in shape)] if tuple(value.shape) != tuple(shape) else value


@contextlib.contextmanager
def _param_shapes(shapes: Optional[dict], prefix: tuple):
  """Within it, a linen parameter takes its pruned shape: a stored one is taken as stored (Flax's
  check against the shape the module's code states, e.g. a layer scale `(self.width,)`, is given
  the stored shape instead), and a new one (init) is cut to `shapes` where they name it.
  `Graph.verify` checks every shape of the pruned computation against the trace, a stronger check
  than the one this stands in for."""
  original = flax_scope.Scope.param

  def param(self, name, init_fn, *init_args, unbox=True, **init_kwargs):
    if self.has_variable("params", name):
      stored = meta.unbox(self.get_variable("params", name))
      like = lambda *_, **__: jax.tree.map(lambda v: jnp.zeros(np.shape(v), v.dtype), stored)
      return original(self, name, like, unbox=unbox)
    target = _get(shapes, tuple(self.path)[len(prefix) :] + (name,)) if shapes else None
    if target is None or not hasattr(target, "shape"):
      return original(self, name, init_fn, *init_args, unbox=unbox, **init_kwargs)
    fitted = lambda *a, **k: _fit(init_fn(*a, **k), target.shape)
    return original(self, name, fitted, *init_args, unbox=unbox, **init_kwargs)

  flax_scope.Scope.param = param
  try:
    yield
  finally:
    flax_scope.Scope.param = original


@contextlib.contextmanager
def widths_from(params: dict, original: dict, prefix: tuple = ()):
  """Runs linen modules at pruned widths: each Flax layer's width attributes set from `params`
  (its pruned parameters or their shapes) as it is called, parameters at their pruned shapes.
  `prefix`: the scope path of the model inside a larger one."""

  def widths(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      _linen_widths(context.module, params, original, args, prefix)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(widths), _param_shapes(params, prefix):
    yield


class Function:
  """Any pure function `f(variables, *inputs)`: at pruned widths it is simply called again."""

  kind = "function"

  def __init__(self, fn: Callable, variables: Any, kwargs: dict) -> None:
    self.fn, self.variables, self.kwargs = fn, variables, kwargs

  def apply(self, variables, *xs):
    return self.fn(variables, *xs, **self.kwargs)

  def pruned(self, variables) -> tuple[Callable, Any, Any]:
    return self.apply, variables, None


class Linen:
  """A `flax.linen` Module and its variables: pruned, `module.apply` runs with Flax's layers'
  widths read from the pruned parameters (no rewrite of the user's module)."""

  kind = "linen"

  def __init__(self, module: nn.Module, variables: dict, kwargs: dict) -> None:
    self.module, self.variables, self.kwargs = module, variables, kwargs

  def apply(self, variables, *xs):
    return self.module.apply(variables, *xs, **self.kwargs)

  def pruned(self, variables) -> tuple[Callable, Any, Any]:
    original = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), self.variables)
    original = original.get("params", {})

    def small_apply(small_variables, *xs):
      with widths_from(small_variables.get("params", {}), original):
        return self.module.apply(small_variables, *xs, **self.kwargs)

    return small_apply, variables, None


def _nnx_widths(model: nnx.Module) -> None:
  from flax import nnx

  """Set every Flax NNX layer's width attributes from its (pruned) arrays, in place."""
  for _, m in nnx.iter_modules(model):
    kernel = getattr(m, "kernel", None)
    kernel = None if kernel is None else kernel.get_value()
    if isinstance(m, nnx.Conv) and kernel is not None:
      groups = m.feature_group_count
      if groups > 1:  # whole feature groups were cut: the size of a group stays
        groups = kernel.shape[-1] // (m.out_features // groups)
      m.feature_group_count = groups
      m.in_features, m.out_features = kernel.shape[-2] * groups, kernel.shape[-1]
    elif isinstance(m, nnx.Linear) and kernel is not None:
      m.in_features, m.out_features = kernel.shape[0], kernel.shape[-1]
    elif isinstance(m, (nnx.BatchNorm, nnx.LayerNorm, nnx.RMSNorm, nnx.GroupNorm)):
      vector = getattr(m, "scale", None) or getattr(m, "bias", None) or getattr(m, "mean", None)
      if vector is not None:
        n = vector.get_value().shape[-1]
        if isinstance(m, nnx.GroupNorm):
          m.num_groups = n // m.group_size
        m.num_features = n


class NNX:
  """A Flax NNX module: traced through `nnx.split`; pruned, a new module with the cut arrays and
  its layers' widths updated (the original is left as it was)."""

  kind = "nnx"

  def __init__(self, model: nnx.Module, kwargs: dict) -> None:
    from flax import nnx

    self.graphdef, self.variables = nnx.split(model)
    self.kwargs = kwargs
    params = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    self.param_paths = frozenset(path_name(p) for p, _ in params)

  def apply(self, variables, *xs):
    from flax import nnx

    return nnx.merge(self.graphdef, variables)(*xs, **self.kwargs)

  def pruned(self, variables) -> tuple[Callable, Any, Any]:
    from flax import nnx

    model = nnx.merge(self.graphdef, variables)
    _nnx_widths(model)
    graphdef, state = nnx.split(model)
    small_apply = functools.partial(_nnx_apply, graphdef, self.kwargs)
    return small_apply, state, model


def _nnx_apply(graphdef, kwargs, state, *xs):
  from flax import nnx

  return nnx.merge(graphdef, state)(*xs, **kwargs)


def adapt(model, args: tuple, kwargs: dict):
  """(adapter, example inputs) for `trace(model, *args)`."""
  nnx = sys.modules.get("flax.nnx")  # imported by whoever made an NNX module; not here (0.1 s)
  if nnx is not None and isinstance(model, nnx.Module):
    return NNX(model, kwargs), args
  if not args:
    raise TypeError("trace(model, variables, *example): the variables and an example input")
  if isinstance(model, nn.Module):
    return Linen(model, args[0], kwargs), args[1:]
  if callable(model):
    return Function(model, args[0], kwargs), args[1:]
  raise TypeError(
    f"trace: expected a flax.linen Module, an nnx.Module or a function f(variables, *inputs); "
    f"got {type(model).__name__}"
  )
