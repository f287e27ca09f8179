"""Trained networks out of tas_jax: the unpruned teacher, the TAS-pruned and the PaS-pruned networks
of the shared pipeline (tests/pipelines.py), each exported to StableHLO, PyTorch and ONNX, with
logits equal to tas_jax's on real test images (Fashion-MNIST) to 1e-4; any batch size."""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="launch/setup.sh installs torch for these tests")
onnx = pytest.importorskip("onnx", reason="launch/setup.sh installs onnx for these tests")

from tas_jax import export  # noqa: E402

pytestmark = pytest.mark.stage  # reads the shared CIFAR pipeline

RUNS = {"teacher": "unpruned", "tas-kd": "TAS-pruned", "pas-kd": "PaS-pruned"}


@pytest.fixture(scope="module")
def exported(cifar_pipeline):
  """{(run, format): export.json entry} for every run and format, written once."""
  workdir, _ = cifar_pipeline
  out = {}
  for run in RUNS:
    for fmt in export.FORMATS:
      out[run, fmt] = export.export(workdir, run, fmt, num_images=16)[fmt]
  return workdir, out


@pytest.mark.parametrize("run", RUNS)
def test_every_format_gives_tas_jax_logits_on_real_images(exported, run):
  workdir, entries = exported
  a, _, _ = export.read_run(workdir, run)
  if run != "teacher":
    teacher, _, _ = export.read_run(workdir, "teacher")
    assert a != teacher  # a smaller network than the teacher
  for fmt in export.FORMATS:
    entry = entries[run, fmt]
    assert os.path.isfile(entry["path"]) and entry["checked_images"] == 16
    assert entry["max_logit_difference"] < 1e-4, (run, fmt, entry)


def test_the_files_load_and_run_at_any_batch_size(exported):
  """What README shows: the StableHLO artefact with JAX alone, model.pt2 with torch alone, the
  ONNX file with onnxruntime, at batch sizes other than the one exported with."""
  workdir, entries = exported
  a, variables, config = export.read_run(workdir, "pas-kd")
  images, _ = export.check_images(config, 5)
  reference = np.asarray(export.jax_function(a, variables)(images))
  with open(entries["pas-kd", "stablehlo"]["path"], "rb") as f:
    model = jax.export.deserialize(bytearray(f.read()))
  for n in (1, 5):
    assert export.largest_difference(reference[:n], np.asarray(model.call(images[:n]))) < 1e-4
  nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  program = torch.export.load(
    os.path.join(os.path.dirname(entries["pas-kd", "torch"]["path"]), "model.pt2")
  )
  with torch.no_grad():
    assert export.largest_difference(reference, program.module()(nchw).numpy()) < 1e-4
  graph = onnx.load(entries["pas-kd", "onnx"]["path"]).graph
  batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
  assert graph.input[0].name == "images" and batch_dim.dim_param and not batch_dim.dim_value
  import onnxruntime

  session = onnxruntime.InferenceSession(entries["pas-kd", "onnx"]["path"])
  assert (
    export.largest_difference(reference[:3], session.run(None, {"images": nchw[:3].numpy()})[0])
    < 1e-4
  )


def test_an_unknown_run_is_one_line_naming_the_runs(exported, capsys):
  workdir, _ = exported
  from tas_jax.commands import export as export_command

  with pytest.raises(SystemExit) as e:
    export_command.cli(workdir, "tas-kd-nope", "onnx")
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "runs here: teacher, pas-kd, tas-kd, uniform-ce-init" in err


def test_export_json_and_readme_say_what_the_network_expects(exported, monkeypatch):
  """export.json: size, channel order, ÷255, mean/std, the evaluation's resize/crop, class names;
  README.md's three lines per format, run as written in the folder, give tas_jax's logits."""
  import json
  import re

  workdir, entries = exported
  folder = os.path.dirname(entries["pas-kd", "stablehlo"]["path"])
  info = json.load(open(os.path.join(folder, "export.json")))
  assert info["input"]["size"] == [28, 28] and info["input"]["channels"] == 1
  assert "255" in info["input"]["scale"] and "no resize or crop" in info["input"]["preprocessing"]
  assert info["class_names"][0] == "T-shirt/top" and len(info["class_names"]) == 10
  assert info["class_names_are"] == "names"
  text = open(os.path.join(folder, "README.md")).read()
  assert "Divide the uint8 pixels by 255" in text and "0.286" in text and "0.353" in text
  blocks = dict(re.findall(r"## (\w+) \(`[^`]+`\)\n\n```python\n(.*?)```", text, re.S))
  assert sorted(blocks) == sorted(export.FORMATS)
  a, variables, config = export.read_run(workdir, "pas-kd")
  images, _ = export.check_images(config, 4)
  reference = np.asarray(export.jax_function(a, variables)(images))
  monkeypatch.chdir(folder)
  for fmt, code in blocks.items():
    assert len(code.strip().splitlines()) == 3
    x = images if fmt == "stablehlo" else images.transpose(0, 3, 1, 2).copy()
    scope = {"images": x}
    exec(code, scope)  # noqa: S102 — the README's own lines
    logits = scope["logits"]
    logits = logits.detach().numpy() if hasattr(logits, "detach") else np.asarray(logits)
    assert export.largest_difference(reference, logits) < 1e-4, fmt


def test_tas_jax_load_as_the_docs_show_it(cifar_pipeline, capsys):
  """The docs' `tas_jax.load` example (docs/guides/cifar.md), run as written on the shared
  pipeline's workdir: the printed
  accuracy is the run's recorded test accuracy; a missing workdir or run is one line."""
  import json
  import re

  import tas_jax
  from tas_jax import errors

  workdir, _ = cifar_pipeline
  root = os.path.dirname(os.path.dirname(__file__))
  page = open(os.path.join(root, "docs", "guides", "cifar.md")).read()
  code = next(b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "tas_jax.load(" in b)
  exec(code.replace('"runs/demo"', repr(workdir)), {})  # noqa: S102 — the docs' own lines
  name, accuracy = capsys.readouterr().out.split()[:2]
  summary = json.load(open(os.path.join(workdir, "distill", "tas-kd", "summary.json")))
  assert name == summary["architecture"]
  assert abs(float(accuracy.rstrip("%")) / 100 - summary["test_accuracy"]) < 2e-3
  net = tas_jax.load(workdir, "pas-kd")
  assert net.summary["run"] == "pas-kd" and set(net.variables) == {"params", "batch_stats"}
  with pytest.raises(errors.CheckpointNotFoundError, match=r"no such folder"):
    tas_jax.load(workdir + "-missing", "tas-kd")
  with pytest.raises(errors.CheckpointNotFoundError, match=r"runs here: teacher, pas-kd, tas-kd"):
    tas_jax.load(workdir, "nope")
