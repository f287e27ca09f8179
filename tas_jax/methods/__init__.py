"""Pruning methods: one folder each, behind one small contract, found by name in a registry.

A method provides two stages, each `fn(config, workdir) -> summary dict`:

- `search`: from the config's unpruned network (and WORKDIR/teacher where the method starts from
  trained weights), writes its resumable run to WORKDIR/search/;
- `extract`: from the latest search checkpoint, writes WORKDIR/extract/arch.json — the pruned
  network as an `Architecture`, which every method-independent stage (training with KD,
  baselines at its FLOPs, results) reads — and its report. A method that keeps the searched
  weights names the surviving channels of every layer in extract/kept_channels.json.

The entry point and the pipeline dispatch on `config.method` through `get`; nothing outside this
folder imports a method's modules, and a method imports only method-independent code.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

from tas_jax.errors import ConfigError

# name -> the module whose METHOD attribute is the method; imported when asked for
_MODULES = {
    "tas": "tas_jax.methods.tas",
    "pas": "tas_jax.methods.pas",
}


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  description: str
  search: Callable[..., dict]
  extract: Callable[..., dict]


def names() -> tuple[str, ...]:
  return tuple(_MODULES)


def get(name: str) -> Method:
  """The method registered as `name`; a ConfigError naming the known ones otherwise."""
  if name not in _MODULES:
    raise ConfigError(f"config.method={name!r}: allowed: {', '.join(_MODULES)}")
  return importlib.import_module(_MODULES[name]).METHOD
