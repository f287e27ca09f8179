"""The package's layout, checked by walking its imports (every `import` statement, at any depth,
except the one-line entry blocks `if __name__ == "__main__":`, which run only as a script).

- No import cycle of any length, between modules or between folders (and top-level modules).
- The layers: models at the bottom, the commands (`tas_jax/commands/`) at the top; a module imports
  only its own layer and those below (LAYERS).
- A library module holds no command code: its `__main__` block only calls a command.
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
  tree.body = [n for n in tree.body if not _is_main_block(n)]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("tas_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      if not base.startswith("tas_jax"):
        continue
      for a in node.names:
        found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
  return found


def _is_main_block(node) -> bool:
  """`if __name__ == "__main__":` at module level."""
  return (
    isinstance(node, ast.If)
    and isinstance(node.test, ast.Compare)
    and isinstance(node.test.left, ast.Name)
    and node.test.left.id == "__name__"
    and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
  )


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
  assert {
    "tas_jax.methods.tas.supernet",
    "tas_jax.models.topology",
    "tas_jax.stages.pipeline",
    "tas_jax.data.sources",
    "tas_jax.training.loop",
    "tas_jax.main",
  } <= set(graph)
  assert "tas_jax.models.topology" in graph["tas_jax.ops.flops"]
  assert "tas_jax.methods.tas.cwi" in graph["tas_jax.methods.tas.supernet"]


def cycles(graph: dict) -> list[list[str]]:
  """The import cycles of `graph` ({node: nodes it imports}): its strongly connected components
  of more than one node (or a node importing itself), each sorted (Tarjan's algorithm)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _folder_graph(graph: dict) -> dict:
  out: dict = {}
  for name, imported in graph.items():
    out.setdefault(_unit(name), set()).update(_unit(m) for m in imported if _unit(m) != _unit(name))
  return out


def test_no_import_cycle_of_any_length():
  graph = {n: {m for m in imported if m != n} for n, imported in _graph().items()}
  assert cycles(graph) == [], f"module import cycles: {cycles(graph)}"
  folders = _folder_graph(graph)
  assert cycles(folders) == [], f"folder import cycles: {cycles(folders)}"


def test_the_cycle_check_names_a_planted_cycle():
  graph = {n: set(imported) for n, imported in _graph().items()}
  graph["tas_jax.latency"] = graph["tas_jax.latency"] | {"tas_jax.main"}  # as it once was
  found = cycles(graph)
  assert found and any(
    {"tas_jax.latency", "tas_jax.main", "tas_jax.config"} <= set(c) for c in found
  ), found


# bottom to top: a module imports its own layer and the ones below, never one above
LAYERS = (
  {"errors", "validation", "console", "parallel", "multihost", "workdir", "plots", "compilation"},
  {"graph", "models", "ops", "prune"},
  {"data", "interop"},
  {"training", "latency", "target"},
  {"methods"},
  {"config"},
  {"stages"},
  {"main", "runs", "export", "convert", "flops"},
  {"commands"},
)


def test_layers_models_at_the_bottom_commands_at_the_top():
  level = {unit: i for i, units in enumerate(LAYERS) for unit in units}
  graph = _graph()
  units = {_unit(n) for n in graph} - {"tas_jax"}
  assert units <= set(level), f"folders or modules with no layer: {sorted(units - set(level))}"
  upward = sorted(
    (name, m)
    for name, imported in graph.items()
    for m in imported
    if _unit(name) != "tas_jax" and _unit(m) != "tas_jax" and level[_unit(m)] > level[_unit(name)]
  )
  assert upward == [], f"imports of a higher layer: {upward}"


def test_library_modules_hold_no_command_code():
  """A `__main__` block outside tas_jax/commands/ is the two lines that call a command's main."""
  for name, path in _modules().items():
    with open(path) as f:
      tree = ast.parse(f.read())
    blocks = [n for n in tree.body if _is_main_block(n)]
    if name.startswith("tas_jax.commands"):
      assert not blocks, name
      continue
    for block in blocks:
      assert len(block.body) == 2, (name, ast.unparse(block))
      imported, call = block.body
      assert isinstance(imported, ast.ImportFrom) and imported.module == "tas_jax.commands", name
      assert ast.unparse(call) == "command.main()" or ast.unparse(call) == "command.cli()", name


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
    if not name.startswith("tas_jax.methods."):  # the registry imports every method
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
    assert "def cwi_numpy" not in source, name  # test-only reference: tests/reference.py
