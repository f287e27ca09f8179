"""Stage `all` end to end on a tiny budget: teacher → search → extract → distill runs → results;
extraction as its own process; a rerun skips what is finished."""

import json
import os
import subprocess
import sys

import pipelines
import pytest

from tas_jax.models import arch
from tas_jax.ops import flops
from tas_jax.stages import baselines, pipeline, records

pytestmark = pytest.mark.stage  # reads the shared CIFAR pipeline (tests/pipelines.py)


@pytest.fixture
def pipeline_run(cifar_pipeline):
  return cifar_pipeline


def test_all_stages_run_and_the_results_table_compares_the_networks(pipeline_run):
  workdir, out = pipeline_run
  assert out["finished"]
  for path in [
    "teacher/summary.json",
    "search/summary.json",
    "extract/arch.json",
    "extract/report.md",
    "extract/widths.png",
    "extract/widths_over_epochs.png",
    "distill/tas-kd/summary.json",
    "distill/uniform-ce-init/summary.json",
    "search-pas/summary.json",
    "extract-pas/arch.json",
    "extract-pas/kept_channels.json",
    "distill/pas-kd/summary.json",
    "results.md",
    "results.json",
  ]:
    assert os.path.isfile(os.path.join(workdir, path)), path
  rows = {r["run"]: r for r in out["rows"]}
  assert list(rows) == pipelines.RUNS
  teacher = rows["teacher"]
  assert teacher["flops_pruned"] == 0 and teacher["flops_m"] == pytest.approx(
    flops.count(arch.cifar_resnet(8, input_size=28, input_channels=1)).flops_m, abs=1e-4
  )
  tas = json.load(open(os.path.join(workdir, "extract", "summary.json")))
  for run in ("tas-kd", "uniform-ce-init", "pas-kd"):
    r = rows[run]
    assert 0.3 < r["flops_pruned"] < 0.7, run  # both searches' target is 50%
    assert r["params_m"] < teacher["params_m"]
    assert r["images_per_s"] > 0 and r["speedup"] > 0
    assert 0 <= r["test_accuracy"] <= 1
  # the uniform baseline sits at the searched network's FLOPs: the closest uniform network (a
  # channel of ResNet-8 is a few % of its FLOPs)
  closest = baselines.uniform(
    arch.cifar_resnet(8, input_size=28, input_channels=1), tas["after"]["flops_m"] * 1e6
  )
  assert rows["uniform-ce-init"]["flops_m"] == pytest.approx(flops.count(closest).flops_m, abs=1e-4)
  assert rows["uniform-ce-init"]["flops_m"] == pytest.approx(tas["after"]["flops_m"], rel=0.05)
  with open(os.path.join(workdir, "results.md")) as f:
    text = f.read()
  assert "| teacher (unpruned) | teacher |" in text and "| uniform width + CE w/ Init |" in text
  assert "| PaS (fine-tuned) + KD | pas-kd |" in text
  pas = json.load(open(os.path.join(workdir, "extract-pas", "summary.json")))
  assert rows["pas-kd"]["flops_m"] == pytest.approx(pas["after"]["flops_m"], abs=1e-4)
  s = json.load(open(os.path.join(workdir, "distill", "tas-kd", "summary.json")))
  assert (
    s["kd"]
    and s["init"] == "scratch"
    and s["compilations"] == {"train_step": 1, "eval_step": 1, "gather": 1, "shuffle": 1}
  )


def test_extracted_architecture_is_the_search_result_and_the_flop_counter_agrees(pipeline_run):
  workdir, _ = pipeline_run
  search = json.load(open(os.path.join(workdir, "search", "summary.json")))
  extracted = arch.load(os.path.join(workdir, "extract", "arch.json"))
  assert extracted.to_dict()["stages"] == search["architecture"]["stages"]
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "tas_jax.flops",
      os.path.join(workdir, "extract", "arch.json"),
      "--json",
    ],
    capture_output=True,
    text=True,
    cwd=pipelines.ROOT,
    env={**os.environ, "PYTHONPATH": pipelines.ROOT},
  )
  assert json.loads(out.stdout)["flops_m"] == search["flops_m"]
  report = json.load(open(os.path.join(workdir, "extract", "summary.json")))
  assert report["flops_ratio"] == pytest.approx(search["flops_ratio"])
  assert [r["width"] for r in report["layers"] if not r["removed"]][0] == extracted.stem_width


def test_extract_runs_as_its_own_process_from_the_search_checkpoint(pipeline_run, tmp_path):
  workdir, _ = pipeline_run
  # a workdir holding only the search: extraction needs nothing else
  os.symlink(os.path.join(workdir, "search"), tmp_path / "search")
  out = pipelines.cli(tmp_path, "--config.stage=extract")
  assert out.returncode == 0, out.stderr[-2000:]
  with (
    open(tmp_path / "extract" / "arch.json") as a,
    open(os.path.join(workdir, "extract", "arch.json")) as b,
  ):
    assert json.load(a) == json.load(b)
  # distilling without a teacher says which stage to run
  out = pipelines.cli(tmp_path, "--config.stage=distill")
  assert out.returncode == 2 and "--config.stage=teacher" in out.stderr


def test_rerun_skips_finished_stages(pipeline_run):
  workdir, _ = pipeline_run
  stamps = {
    p: os.path.getmtime(os.path.join(workdir, p, "summary.json"))
    for p in (
      "teacher",
      "search",
      "extract",
      "distill/tas-kd",
      "distill/uniform-ce-init",
      "search-pas",
      "extract-pas",
      "distill/pas-kd",
    )
  }
  again = pipeline.run_all(pipelines.config(), workdir)
  assert again["finished"] and [r["run"] for r in again["rows"]] == [
    "teacher",
    "tas-kd",
    "uniform-ce-init",
    "pas-kd",
  ]
  for p, t in stamps.items():
    assert os.path.getmtime(os.path.join(workdir, p, "summary.json")) == t, p
  # a setting that changes a result stops the rerun; one that does not is accepted
  changed = pipelines.config()
  changed.target.flop_ratio = 0.3
  with pytest.raises(records.StageMismatchError, match=r"target\.flop_ratio=0\.5 \(now 0\.3\)"):
    pipeline.run_all(changed, workdir)
  neutral = pipelines.config()
  neutral.max_steps_per_run, neutral.log_every_steps = 5, 7
  assert pipeline.run_all(neutral, workdir)["finished"]
