"""Pruning methods: one folder each, behind one contract, found by name in `REGISTRY`.

A method is a `Method` (`tas_jax.methods.contract`): its stages, its settings and what the
method-independent code needs to know about it. The config (`tas_jax.config`), the pipeline, the
distill and results stages and the stage records ask the registry and name no method.

Stages, each `fn(config, workdir) -> summary dict`:
- `search`: from the config's unpruned network (and WORKDIR/teacher where the method starts from
  trained weights), writes its resumable run to WORKDIR/search[-NAME]/;
- `extract`: from the search's result, writes WORKDIR/extract[-NAME]/arch.json — the pruned
  network as an architecture, which every method-independent stage (training with KD, baselines at
  its FLOPs, results) reads — and its report. A method that keeps weights (`keeps_weights`) also
  writes the kept channels' variables (`tas_jax.methods.extraction`), which its fine-tuning starts
  from.

Settings: the method's own config section (`section`, built by `defaults()`, checked by
`validate(config)`), and the FLOPs target all methods share, `config.target`.

Adding one: a folder beside `tas/` and `pas/` with a module-level `METHOD = Method(...)`, and a line
in `REGISTRY` below — or, from outside the package (a notebook, a test), `register(method)` before
`tas_jax.config.base_config()` is called. docs/guides/adding-a-method.md walks through it.
"""

from __future__ import annotations

from tas_jax.errors import ConfigError
from tas_jax.methods import oneshot, pas, tas
from tas_jax.methods.contract import Method

# name -> Method: what config.method, a distill run's STUDENT and the pipeline dispatch on
REGISTRY: dict[str, Method] = {
  m.name: m for m in (tas.METHOD, pas.METHOD, oneshot.L1, oneshot.FPGM)
}


def register(method: Method) -> Method:
  """Adds (or replaces) a method; returns it. Call before building a config that should hold its
  section."""
  REGISTRY[method.name] = method
  return method


def unregister(name: str) -> None:
  REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(REGISTRY)


def get(name: str) -> Method:
  """The method registered as `name`; a ConfigError naming the known ones otherwise."""
  if name not in REGISTRY:
    raise ConfigError(f"config.method={name!r}: allowed: {', '.join(REGISTRY)}")
  return REGISTRY[name]


def is_method(name: str) -> bool:
  return name in REGISTRY
