"""The package's layout, checked by walking its imports (every `import` statement, at any depth).

- No two folders import each other: the dependencies between tas_jax's folders (and its
  top-level modules) form a graph without two-way edges.
- No method-independent module imports a method: outside `tas_jax/methods/`, nothing imports
  a method's folder `tas_jax.methods.<name>`; they reach a method through the registry
  (`tas_jax.methods.get`). The modules beside the folders (`methods/extraction.py`) are shared.
- A method imports no other method and no stage (stages dispatch to methods, not the reverse).
- Benchmarks and test-only reference code live outside the installed package.
"""

import ast
import os
import pkgutil

import tas_jax

ROOT = os.path.dirname(tas_jax.__file__)


def _modules():
  """{dotted name: path} of every module of the package."""
  out = {}
  for info in pkgutil.walk_packages([ROOT], prefix="tas_jax."):
    path = os.path.join(ROOT, *info.name.split(".")[1:])
    out[info.name] = os.path.join(path, "__init__.py") if info.ispkg else path + ".py"
  return out


def _imports(name: str, path: str) -> set[str]:
  """The tas_jax modules `name` imports (absolute and relative, `from X import Y` counted as X.Y
  when X.Y is a module, else X)."""
  modules = _modules()
  found = set()
  with open(path) as f:
    tree = ast.parse(f.read())
  package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("tas_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      if not base.startswith("tas_jax"):
        continue
      for a in node.names:
        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
  return found


def _unit(module: str) -> str:
  """The folder (or top-level module) a module belongs to: tas_jax.methods.tas.cost ->
  'methods', tas_jax.config -> 'config'."""
  return module.split(".")[1] if module.count(".") >= 1 else "tas_jax"


def _graph():
  return {name: _imports(name, path) for name, path in _modules().items()}


def _method_folder(module: str):
  """'tas' for tas_jax.methods.tas(.…), None for the registry and the shared modules beside the
  method folders."""
  parts = module.split(".")
  if len(parts) < 3 or parts[1] != "methods":
    return None
  return parts[2] if os.path.isdir(os.path.join(ROOT, "methods", parts[2])) else None


def test_the_walk_sees_the_package():
  graph = _graph()
  assert {"tas_jax.methods.tas.supernet", "tas_jax.models.topology", "tas_jax.stages.pipeline",
          "tas_jax.data.sources", "tas_jax.training.loop", "tas_jax.main"} <= set(graph)
  assert "tas_jax.models.topology" in graph["tas_jax.ops.flops"]
  assert "tas_jax.methods.tas.cwi" in graph["tas_jax.methods.tas.supernet"]


def test_no_two_folders_import_each_other():
  edges = set()
  for name, imported in _graph().items():
    for other in imported:
      a, b = _unit(name), _unit(other)
      if a != b:
        edges.add((a, b))
  both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
  assert both_ways == [], f"folders importing each other: {both_ways}"


def test_no_method_independent_module_imports_a_method():
  offenders = []
  for name, imported in _graph().items():
    if name.startswith("tas_jax.methods"):
      continue
    offenders += [(name, m) for m in imported if _method_folder(m)]
  assert offenders == [], offenders


def test_methods_import_no_other_method_and_no_stage():
  folders = set()
  for name, imported in _graph().items():
    if not name.startswith("tas_jax.methods."):   # the registry imports every method
      continue
    method = _method_folder(name)
    folders.add(method)
    for m in imported:
      assert not m.startswith("tas_jax.stages"), (name, m)
      assert _method_folder(m) in (None, method), (name, m)
  assert {"tas", "pas", "oneshot"} <= folders


def test_registry_dispatches_on_the_method_name():
  from tas_jax import methods
  from tas_jax.errors import ConfigError
  tas = methods.get("tas")
  assert tas.name == "tas" and callable(tas.search) and callable(tas.extract)
  assert "tas" in methods.names()
  try:
    methods.get("nope")
  except ConfigError as e:
    assert "config.method='nope'" in str(e) and "tas" in str(e)
  else:
    raise AssertionError("an unknown method must be refused")


def test_benchmarks_and_references_live_outside_the_package():
  names = set(_modules())
  assert not any(n.endswith((".bench", ".torch_reference")) for n in names)
  for name, path in _modules().items():
    with open(path) as f:
      source = f.read()
    assert "def cwi_numpy" not in source, name   # test-only reference: tests/reference.py
