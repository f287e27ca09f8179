"""The Colab notebook, executed end to end headless (nbclient) with the demo shrunk by overrides:
it must run, show the results table and the two width plots inline."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.one_pass(1)   # the kernel is its own process: one pass runs it

TINY = {"data.train_examples": 512, "teacher.warmup_epochs": 0, "teacher.cosine_epochs": 1,
        "teacher.batch_size": 64, "search.epochs": 2, "search.batch_size": 64,
        "distill.warmup_epochs": 0, "distill.cosine_epochs": 1, "distill.batch_size": 64,
        "pipeline.throughput_batch": 32, "pipeline.throughput_repeats": 2, "log_every_steps": 100}


def test_notebook_runs_and_shows_the_table_and_the_plots(tmp_path, monkeypatch):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "tas_jax_demo.ipynb"), as_version=4)
  monkeypatch.setenv("TAS_JAX_NOTEBOOK_OVERRIDES", json.dumps(TINY))
  monkeypatch.setenv("TAS_JAX_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("XLA_FLAGS", "")
  NotebookClient(nb, timeout=1200, kernel_name="python3",
                 resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "finished: True" in texts
  markdown = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert any("| teacher (unpruned) | teacher |" in m and "| TAS + KD | tas-kd |" in m for m in markdown)
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2
  assert os.path.isfile(tmp_path / "run" / "extract" / "arch.json")
