"""The Colab notebook executed headless (nbclient): on the shared pipeline's teacher, search and
extraction it trains the TAS + KD network in its kernel and shows the results table and the two
width plots inline; the install cell's clone/install/one-line errors."""

import json
import os
import shutil

import nbformat
import pipelines
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.stage  # reads the shared pipeline (the kernel itself runs on 1 device)
def test_notebook_runs_and_shows_the_table_and_the_plots(cifar_pipeline, tmp_path, monkeypatch):
  shared, _ = cifar_pipeline
  workdir = tmp_path / "run"
  for stage in ("teacher", "search", "extract"):  # the kernel trains the distillation itself
    shutil.copytree(os.path.join(shared, stage), workdir / stage, symlinks=True)
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "tas_jax_demo.ipynb"), as_version=4)
  monkeypatch.setenv(
    "TAS_JAX_NOTEBOOK_OVERRIDES", json.dumps({**pipelines.OVERRIDES, "pipeline.runs": "tas-kd"})
  )
  monkeypatch.setenv("TAS_JAX_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("XLA_FLAGS", "")
  NotebookClient(
    nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": ROOT}}
  ).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "finished: True" in texts
  assert "tas-kd back in Python: " in texts  # tas_jax.load in the kernel
  markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert any(
    "| teacher (unpruned) | teacher |" in m and "| TAS + KD | tas-kd |" in m for m in markdown
  )
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2
  with open(workdir / "distill" / "tas-kd" / "summary.json") as f:  # trained in the kernel
    assert json.load(f)["finished"]


def install_cell():
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "tas_jax_demo.ipynb"), as_version=4)
  return next(c for c in nb.cells if c.cell_type == "code" and "REPO_URL" in c.source)


def install_functions(monkeypatch):
  """The install cell's definitions, executed here from the repository (nothing is installed: the
  cell installs only on Colab or outside a checkout)."""
  monkeypatch.chdir(ROOT)
  namespace = {}
  exec(install_cell().source, namespace)
  return namespace


def test_install_cell_clones_installs_and_stops_with_one_line(tmp_path, monkeypatch):
  ns = install_functions(monkeypatch)
  install, error = ns["install_tas_jax"], ns["InstallError"]
  target = str(tmp_path / "clone")
  for url in ("", "https://github.com/YOUR_ORG/tas_jax.git"):
    with pytest.raises(error, match="^set REPO_URL in this cell to the git URL"):
      install(url, target)
  with pytest.raises(error, match=r"^`git clone -q /no/such/repo .*` failed \(exit 128\): fatal: "):
    install("/no/such/repo", target)
  with pytest.raises(error, match=r"^`false install -q -r requirements.txt` failed \(exit 1\)"):
    install(ROOT, target, pip=("false",))
  assert os.path.isfile(os.path.join(target, "tas_jax", "__init__.py"))  # cloned before pip failed
  ran = install(
    ROOT, target, jax_extra="tpu", pip=("true",)
  )  # the clone is there: not cloned again
  assert ran == [
    ["true", "install", "-q", "-r", "requirements.txt"],
    ["true", "install", "-q", "--no-deps", "-e", "."],
    ["true", "install", "-q", "jax[tpu]==0.10.2"],
  ]
  assert os.getcwd() == target
  assert error("x")._render_traceback_() == ["InstallError: x"]


@pytest.mark.children  # a kernel process
def test_install_cell_stops_run_all_on_colab_without_a_repository_url(tmp_path):
  """As on Colab (google.colab imported, no checkout, REPO_URL unset): the cell fails with the one
  line, and the next cell never runs."""
  nb = nbformat.v4.new_notebook()
  nb.cells = [
    nbformat.v4.new_code_cell(
      "import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')"
    ),
    install_cell(),
    nbformat.v4.new_code_cell("print('the next cell ran')"),
  ]
  client = NotebookClient(
    nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  with pytest.raises(Exception):
    client.execute()
  errors = [o for o in nb.cells[1].get("outputs", []) if o.output_type == "error"]
  assert len(errors) == 1 and errors[0]["traceback"] == [
    "InstallError: set REPO_URL in this cell to the git URL of the tas_jax repository "
    "(e.g. https://github.com/<owner>/tas_jax.git), then run it again"
  ]
  assert not nb.cells[2].get("outputs")
