"""The layout of a workdir, named in one place: every stage reads and writes its files through here.

    WORKDIR/
      teacher/                  the unpruned network: checkpoints/, arch.json, summary.json, events
                                (imported.json: converted from PyTorch weights by tas_jax.convert)
      search/                   TAS's search: checkpoints/, base_arch.json, summary.json
      extract/                  arch.json (the pruned network), report.md, summary.json, widths*.png
      search-pas/, extract-pas/ the same for every other method (pas, l1, fpgm); a method that
      search-l1/, ...           keeps weights also writes extract-NAME/kept_channels.json and
                                weights/ (the kept channels' variables)
      distill/RUN/              one pruned network trained (RUN = tas-kd, uniform-kd, ...)
      results.md, results.json  the table of every finished run

Writing is process 0's job in a multi-process run (`is_writer`); every process reads.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax

CHECKPOINTS = "checkpoints"
SUMMARY = "summary.json"
ARCH = "arch.json"
BASE_ARCH = "base_arch.json"
KEPT_CHANNELS = "kept_channels.json"
IMPORTED = "imported.json"  # teacher/: made by python -m tas_jax.convert, not trained
IMPORTED_WEIGHTS = "imported_weights"  # teacher/: the converted weights, set aside when they are
IMPORTED_ARCH = "imported_arch.json"  # fine-tuned (teacher.finetune_imported), and their network
RECORD = "config.json"  # the settings a stage ran with (tas_jax.stages.records)


def teacher_dir(workdir: str) -> str:
  return os.path.join(workdir, "teacher")


WEIGHTS = "weights"
TRAINING_FORM = "training_form"  # extract-METHOD/: a RepVGG's unpruned variables in training form
KEPT_GROUPS = "kept_groups.json"  # extract-METHOD/: kept channel indices per channel group
DEPLOY = "deploy"  # distill/RUN/: the network a training-form fine-tuning cut


DEFAULT_METHOD = "tas"  # config.method of a fresh config, and the method whose folders are
# search/ and extract/, as they were before there were others; every other method's search-NAME/


def search_stage(method: str = DEFAULT_METHOD) -> str:
  """The search stage's folder name: 'search' for TAS (the first method), 'search-METHOD' else."""
  return "search" if method == DEFAULT_METHOD else f"search-{method}"


def extract_stage(method: str = DEFAULT_METHOD) -> str:
  return "extract" if method == DEFAULT_METHOD else f"extract-{method}"


def stage_flags(stage: str, method: str = DEFAULT_METHOD) -> str:
  """What follows --config.stage= in an error's advice: 'search', or
  'search --config.method=pas'."""
  return stage if method == DEFAULT_METHOD else f"{stage} --config.method={method}"


def search_dir(workdir: str, method: str = DEFAULT_METHOD) -> str:
  return os.path.join(workdir, search_stage(method))


def extract_dir(workdir: str, method: str = DEFAULT_METHOD) -> str:
  return os.path.join(workdir, extract_stage(method))


def distill_dir(workdir: str, run: str = "") -> str:
  return os.path.join(workdir, "distill", run) if run else os.path.join(workdir, "distill")


def results_paths(workdir: str) -> tuple[str, str]:
  """(results.md, results.json)."""
  return os.path.join(workdir, "results.md"), os.path.join(workdir, "results.json")


def stage_dir(workdir: str, stage: str) -> str:
  """The folder of a stage name as the pipeline lists them: 'teacher', 'search', 'extract',
  'distill/RUN'."""
  return os.path.join(workdir, *stage.split("/"))


def checkpoint_dir(directory: str) -> str:
  return os.path.abspath(os.path.join(directory, CHECKPOINTS))


def is_writer() -> bool:
  """Whether this process writes files (summaries, reports, plots, arch.json, results)."""
  return jax.process_index() == 0


def read_summary(directory: str):
  """A stage's summary.json, or None when it is missing or says the stage has not finished."""
  path = os.path.join(directory, SUMMARY)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    summary = json.load(f)
  return summary if summary.get("finished") else None


def read_json(path: str):
  """The JSON file at `path`, or None when there is none."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_imported(teacher_dir: str):
  """imported.json of a teacher converted from PyTorch weights, or None for a trained one."""
  return read_json(os.path.join(teacher_dir, IMPORTED))


def write_summary(directory: str, summary: dict) -> str:
  """Writes summary.json (process 0 only); returns its path."""
  path = os.path.join(directory, SUMMARY)
  if is_writer():
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
      json.dump(summary, f, indent=2)
  return path


def read_record(directory: str):
  """The settings record a stage wrote in `directory` (`tas_jax.stages.records`), or None."""
  return read_json(os.path.join(directory, RECORD))


def write_problem(folder: str) -> Optional[str]:
  """None if `folder` exists or can be made and a file written in it; else the OS's reason."""
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".write_test_{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    return e.strerror or str(e)
  return None
