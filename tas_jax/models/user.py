"""A user's own Flax model as a tas_jax network: `--config.model.module=my_package.models:VGG`.

`UserNetwork` is its description, as an `Architecture` is a ResNet's: the class path, its keyword
arguments, the input and classes, and — once pruned — the channels kept of every traced group
(`tas_jax.graph`). `Model` is its Flax module at those widths: the user's own class, called with
Flax's layers' widths set from the pruned shapes (`tas_jax.graph.models`), so the teacher, the
extracted network and its fine-tuning all run the user's code. The call convention a model must
follow: `__call__(self, x, train: bool)` returning `(batch, classes)` logits, BatchNorm with
`use_running_average=not train`, and no width the code writes itself (`x.reshape(b, 64)`) where a
channel is cut (the trace refuses such a cut in one line).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging as std_logging
import os
import sys
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tas_jax import graph
from tas_jax.errors import ConfigError
from tas_jax.graph import models as adapters

FAMILY = "module"


@dataclasses.dataclass(frozen=True)
class UserNetwork:
  module: str  # "package.module:Class", importable from the working directory or installed
  kwargs: str  # the class's keyword arguments, a JSON object
  num_classes: int
  input_size: int
  input_channels: int = 3
  kept: tuple = ()  # ((group, (channel, ...)), ...) of the unpruned model; () = unpruned
  name: str = ""

  @property
  def depths(self) -> tuple:
    """No blocks tas_jax may drop: a user's model is pruned in width only."""
    return ()

  @property
  def unpruned(self) -> "UserNetwork":
    return dataclasses.replace(self, kept=(), name=self.name if not self.kept else "")

  def keep(self, kept: dict, name: str = "") -> "UserNetwork":
    if self.kept:
      raise ConfigError(f"{self.name}: already pruned; prune the unpruned model instead")
    return dataclasses.replace(
      self, kept=tuple((g, tuple(int(i) for i in idx)) for g, idx in kept.items()), name=name
    )

  def to_dict(self) -> dict:
    return {
      "family": FAMILY,
      "name": self.name,
      "module": self.module,
      "kwargs": json.loads(self.kwargs),
      "num_classes": self.num_classes,
      "input_size": self.input_size,
      "input_channels": self.input_channels,
      "kept": {g: list(idx) for g, idx in self.kept},
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  def save(self, path: str) -> None:
    with open(path, "w") as f:
      f.write(self.to_json())

  @classmethod
  def from_dict(cls, d: dict, source: str = "architecture") -> "UserNetwork":
    try:
      return cls(
        module=d["module"],
        kwargs=json.dumps(d.get("kwargs", {}), sort_keys=True),
        num_classes=int(d["num_classes"]),
        input_size=int(d["input_size"]),
        input_channels=int(d.get("input_channels", 3)),
        kept=tuple((g, tuple(idx)) for g, idx in d.get("kept", {}).items()),
        name=d.get("name", ""),
      )
    except (KeyError, TypeError, ValueError) as e:
      raise ConfigError(f"{source}: a module network needs module, num_classes, input_size: {e}")


def load_class(path: str):
  """The class `package.module:Class` names; one line saying what is wrong otherwise."""
  if ":" not in path:
    raise ConfigError(
      f"config.model.module={path!r}: expected 'package.module:Class', e.g. "
      "'examples.models:MobileNetV2'"
    )
  where, name = path.split(":", 1)
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  try:
    module = importlib.import_module(where)
  except ImportError as e:
    raise ConfigError(
      f"config.model.module={path!r}: cannot import {where!r} ({e}); run from the folder that "
      "holds it or install it"
    ) from None
  cls = getattr(module, name, None)
  if cls is None:
    raise ConfigError(f"config.model.module={path!r}: {where} has no {name!r}")
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    raise ConfigError(
      f"config.model.module={path!r}: {name} is not a flax.linen Module (the command line "
      "trains linen modules; an NNX model is pruned in Python with tas_jax.graph / tas_jax.prune)"
    )
  return cls


def instantiate(net: UserNetwork) -> nn.Module:
  kwargs = json.loads(net.kwargs)
  try:
    return load_class(net.module)(**kwargs)
  except TypeError as e:
    raise ConfigError(f"config.model.kwargs={net.kwargs}: {net.module} does not take them: {e}")


def _example(net: UserNetwork, batch: int = 1):
  return jnp.zeros((batch, net.input_size, net.input_size, net.input_channels), jnp.float32)


@functools.cache
def traced(net: UserNetwork) -> graph.Graph:
  """The unpruned model's channel graph (abstract: no weights are computed). Checks the call
  convention and the output first, each failure in one line."""
  net = net.unpruned
  module = instantiate(net)
  x = _example(net)
  try:
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: module.apply(v, x, train=False), variables)
  except TypeError as e:
    if "train" not in str(e) and "argument" not in str(e):
      raise
    raise ConfigError(
      f"{net.module}: tas_jax calls a model as model(x, train=...) (BatchNorm with "
      f"use_running_average=not train); this one says: {e}"
    ) from None
  if getattr(out, "shape", None) != (1, net.num_classes):
    raise ConfigError(
      f"{net.module}: expected (batch, {net.num_classes}) logits for a batch of "
      f"{tuple(x.shape)} images, got {getattr(out, 'shape', type(out).__name__)}"
    )
  tracer_log = std_logging.getLogger(graph.trace.__module__)
  level = tracer_log.level
  tracer_log.setLevel(std_logging.ERROR)  # its notes go into the error, or are logged below
  try:
    g = graph.trace(module, variables, x, train=False)
  finally:
    tracer_log.setLevel(level)
  if not g.groups:
    reasons = "; ".join(g.messages) or "every channel reaches the model's input or output"
    raise ConfigError(f"{net.module}: no channel of the model can be cut ({reasons})")
  for message in g.messages:
    tracer_log.warning(message)
  return g


def pruned_shapes(net: UserNetwork) -> dict:
  """{"params", ...} shapes of `net` at its kept channels."""
  g = traced(net)
  return g.shapes_at(dict(net.kept)) if net.kept else g.shapes_at({})


def gated(g: graph.Graph, gates: dict, prefix: tuple = ()):
  """Within it, the outputs of `g`'s layers that carry a group are multiplied by its gate."""
  sites = g.output_sites

  def gate(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = tuple(context.module.scope.path)[len(prefix) :] if context.module.scope else ()
    entries = sites.get("/".join(path)) if context.method_name == "__call__" else None
    if not entries or not hasattr(out, "shape"):
      return out
    vector = jnp.ones(out.shape[-1], out.dtype)
    for group, positions, channels in entries:  # a gather (static indices): differentiable
      index = np.full(out.shape[-1], -1)
      index[positions] = channels
      value = jnp.take(gates[group].astype(out.dtype), np.maximum(index, 0))
      vector = vector * jnp.where(index >= 0, value, 1)
    return out * vector

  return nn.intercept_methods(gate)


def mix_input(x, mix, positions, channels):
  """x with the channels of one group, at `positions` of its last axis (`channels[i]` the channel
  at positions[i]), replaced by `mix @ channels`: at every position of the same replica (a
  flatten's pixel) at once."""
  order = np.lexsort((positions, channels))
  per_channel = np.bincount(channels)
  if np.any(per_channel != per_channel[0]):
    raise ValueError("a group's channels occur unequally often in a layer's input")
  index = positions[order].reshape(len(per_channel), per_channel[0])  # (C, replicas)
  mix = mix.astype(x.dtype)
  if index.shape[1] == 1 and np.array_equal(index[:, 0], np.arange(x.shape[-1])):
    return x @ mix.T
  mixed = jnp.einsum("jk,...kp->...jp", mix, x[..., index])
  return x.at[..., index].set(mixed)


def mixed(g: graph.Graph, mixes: dict, prefix: tuple = ()):
  """Within it, every layer that reads a group's channels (`Graph.input_sites`) reads them mixed
  by that group's (C, C) matrix: TAS's channel-wise interpolation where the group is read."""
  sites = g.input_sites

  def mix(next_fun, args, kwargs, context):
    path = tuple(context.module.scope.path)[len(prefix) :] if context.module.scope else ()
    entries = sites.get("/".join(path)) if context.method_name == "__call__" else None
    if not entries or not args or not hasattr(args[0], "shape"):
      return next_fun(*args, **kwargs)
    x = args[0]
    for group, positions, channels, size in entries:
      if group not in mixes:
        continue
      if x.shape[-1] != size:
        raise ConfigError(
          f"{'/'.join(path)} reads group {group} on an axis of {size} but is called on an input "
          f"of shape {tuple(x.shape)}: TAS's width search mixes a layer's last input axis; prune "
          "this model with pas, l1 or fpgm"
        )
      x = mix_input(x, mixes[group], positions, channels)
    return next_fun(x, *args[1:], **kwargs)

  return nn.intercept_methods(mix)


class Model(nn.Module):
  """The user's model at `net`'s widths; its variables are exactly the user's own tree."""

  net: UserNetwork
  bn_axis_name: Optional[str] = None  # the user's BatchNorm decides (jit: global statistics)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
    self, x, train: bool = False, gates: Optional[dict] = None, mixes: Optional[dict] = None
  ):
    """`gates`: {group: (channels,) vector} multiplying every layer output that carries the
    group: PaS's masks on a traced model. `mixes`: {group: (channels, channels) matrix} mixing
    what every layer reads of the group: TAS's CWI. Both on the unpruned model only."""
    if (gates or mixes) and self.net.kept:
      raise ValueError("gates and mixes act on the unpruned model's channels; this one is pruned")
    if gates:
      with gated(traced(self.net), gates, tuple(self.scope.path)):
        return self._run(x, train)
    if mixes:
      with mixed(traced(self.net), mixes, tuple(self.scope.path)):
        return self._run(x, train)
    return self._run(x, train)

  def _run(self, x, train: bool):
    shapes = pruned_shapes(self.net)["params"]
    original = pruned_shapes(self.net.unpruned)["params"]
    prefix = tuple(self.scope.path)
    inner = instantiate(self.net)
    nn.share_scope(self, inner)
    with adapters.widths_from(shapes, original, prefix):
      return inner(x.astype(jnp.float32), train=train)
