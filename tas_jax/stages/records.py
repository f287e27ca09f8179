"""What each stage's result depends on, recorded in its folder, so that a rerun with other settings
stops instead of silently reusing the old result.

Every stage writes `STAGE_DIR/config.json` when it starts: the config fields that define its result
(its own section, the data, the model, the seed) together with those of the stages it reads (a
distill run with KD reads the teacher; an extraction reads its search), the names of those stages,
and the whole config for the record. A rerun in the same workdir compares the defining fields of the
stage and of every stage it reads with the current config. A difference stops the run with one line
naming the fields and what to do; `--config.overwrite=STAGE` instead deletes that stage and every
stage that read it, and runs it again. Fields that do not change a result (logging, evaluation
batch sizes, checkpoint frequency, `max_steps_per_run`, device counts) are not compared, so a
resumed run with another `max_steps_per_run` carries on.

A finished stage that a command only reads (the teacher, for `--config.stage=search`) is taken as
recorded (`adopt_recorded`): the fields it was made with replace the config's, are logged once and
go into the new stage's record, so a later stage need not repeat the earlier stages' overrides. Only
a field set explicitly for this command (`--config.teacher.batch_size=...`) that contradicts the
record stops it, with the same line as above. The stages a command runs are compared as before.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from typing import Iterable, Optional

import ml_collections
from absl import logging

from tas_jax import config as config_lib, methods, target as target_lib, workdir as layout
from tas_jax.errors import ConfigError

RECORD = layout.RECORD

# sections of a stage's own result; fields listed in NEUTRAL (and each method's `not_defining`)
# are left out of every comparison
COMMON = ("seed", "data", "model")
NEUTRAL = {
  "data.workers",
  "data.prefetch",
  "data.bad_images",
  "teacher.eval_batch_size",
  "distill.eval_batch_size",
  "finetune.eval_batch_size",
  *config_lib.RENAMED,
}


def _neutral() -> set[str]:
  return NEUTRAL | {f"{m.section}.{f}" for m in methods.REGISTRY.values() for f in m.not_defining}


class StageMismatchError(ConfigError):
  """A stage folder holds a result made with other settings than the current config."""


def flat_fields(tree: dict, skip=frozenset(), prefix: str = "") -> dict:
  """A nested config dict as {"section.field": value}, without the names in `skip`."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flat_fields(value, skip, name + "."))
    elif name not in skip:
      out[name] = value
  return out


def _select(config: ml_collections.ConfigDict, fields) -> dict:
  full = config.to_dict()
  out = {}
  for field in fields:
    value = full
    for part in field.split("."):
      value = value[part]
    out.update(
      flat_fields({field: value}, _neutral()) if isinstance(value, dict) else {field: value}
    )
  return out


def stage_of(config: ml_collections.ConfigDict) -> str:
  """The folder name (as the pipeline lists stages) of the stage `config.stage` runs."""
  if config.stage == "search":
    return layout.search_stage(config.method)
  if config.stage == "extract":
    return layout.extract_stage(config.method)
  if config.stage == "distill":
    return f"distill/{config_lib.run_name(config.distill)}"
  return config.stage


def _method_of(stage: str, prefix: str) -> methods.Method:
  """The method of a search or extract folder: 'search' is the default method's, 'search-pas'
  PaS's."""
  suffix = stage[len(prefix) + 1 :]
  return methods.get(suffix or layout.DEFAULT_METHOD)


def own_fields(config: ml_collections.ConfigDict, stage: str) -> tuple[dict, list[str]]:
  """(the fields that define `stage`'s own result, the stages it reads)."""
  if stage == "teacher":
    finetune = ("finetune",) if config.teacher.finetune_imported else ()
    return _select(config, COMMON + ("teacher",) + finetune), []
  if stage.startswith("search"):
    method = _method_of(stage, "search")
    fields = _select(config, COMMON + ("target",) + ((method.section,) if method.section else ()))
    if not method.search_reads_finetune(config):
      for field in method.finetune_fields:  # read by its fine-tuning, not by its search
        fields.pop(f"{method.section}.{field}", None)
    # the latency table it prices with, where the target is latency (tas_jax.target)
    fields.update(_select(config, target_lib.recorded_fields(config)))
    return fields, ["teacher"] if method.reads_teacher(config) else []
  if stage.startswith("extract"):
    return {}, [layout.search_stage(_method_of(stage, "extract").name)]
  if stage.startswith("distill/"):
    d = config.distill
    fields = _select(config, COMMON + ("distill",))
    if not d.kd:
      fields.pop("distill.kd_alpha"), fields.pop("distill.kd_temperature")
    if d.student != "random":
      fields.pop("distill.baseline_seed"), fields.pop("distill.flops_tolerance")
    reads = []
    if d.student in config_lib.students():
      method = methods.get(d.student if methods.is_method(d.student) else config.method)
      reads.append(layout.extract_stage(method.name))
      if d.init == "searched":
        fields.update(
          _select(config, tuple(f"{method.section}.{f}" for f in method.finetune_fields))
        )
    if d.kd or d.init == "teacher":
      reads.append("teacher")
    return fields, reads
  raise ValueError(f"no record for stage {stage!r}")


def defining_fields(config: ml_collections.ConfigDict, stage: str) -> tuple[dict, list[str]]:
  """(the fields of `stage` and of every stage it reads, transitively; those stages, deps first)."""
  fields, reads = own_fields(config, stage)
  order: list[str] = []
  for dep in reads:
    dep_fields, dep_order = defining_fields(config, dep)
    fields = {**dep_fields, **fields}
    order += [s for s in dep_order + [dep] if s not in order]
  return fields, order


def _has_result(directory: str) -> bool:
  checkpoints = os.path.join(directory, layout.CHECKPOINTS)
  return os.path.exists(os.path.join(directory, layout.SUMMARY)) or (
    os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))
  )


read_record = layout.read_record


def _show(value) -> str:
  return repr(value) if isinstance(value, str) else str(value)


def _differences(recorded: dict, current: dict) -> list[str]:
  """'field=old (now new)' for every field both know with another value (a field one of them
  lacks, e.g. added by a newer tas_jax, is not a difference). A record written before a field was
  renamed (config.RENAMED) is read under the new name."""
  recorded = {config_lib.RENAMED.get(k, k): v for k, v in recorded.items()}
  as_json = lambda v: json.loads(json.dumps(v))  # a tuple field is a list in a record
  return [
    f"{k}={_show(recorded[k])} (now {_show(current[k])})"
    for k in sorted(recorded.keys() & current.keys())
    if recorded[k] != as_json(current[k])
  ]


def readers(workdir: str, stage: str) -> list[str]:
  """The stage folders of the workdir whose record says they read `stage` (directly or not)."""
  out = []
  candidates = [p for p in os.listdir(workdir) if p != "distill"] if os.path.isdir(workdir) else []
  distill = layout.distill_dir(workdir)
  if os.path.isdir(distill):
    candidates += [f"distill/{r}" for r in sorted(os.listdir(distill))]
  for name in candidates:
    record = read_record(layout.stage_dir(workdir, name))
    if record is not None and stage in record.get("reads", []):
      out.append(name)
  return out


def _overwrites(config: ml_collections.ConfigDict, stage: str) -> bool:
  wanted = [s.strip() for s in config.overwrite.split(",") if s.strip()]
  return stage in wanted or (stage.startswith("distill/") and "distill" in wanted)


def _delete(workdir: str, stage: str) -> list[str]:
  """Deletes a stage folder, every folder that read it, and the results table; returns the
  stages deleted."""
  gone = [stage] + readers(workdir, stage)
  if layout.is_writer():
    for name in gone:
      shutil.rmtree(layout.stage_dir(workdir, name), ignore_errors=True)
    for path in layout.results_paths(workdir):
      if os.path.exists(path):
        os.remove(path)
  _sync(f"overwrite {stage}")
  return gone


def _sync(name: str) -> None:
  from tas_jax import multihost

  multihost.barrier(name)


def check(
  config: ml_collections.ConfigDict,
  workdir: str,
  stage: str,
  overrides: Optional[Iterable[str]] = None,
) -> ml_collections.ConfigDict:
  """Before `stage` runs (or is skipped as finished): takes the finished stages it reads as
  recorded where `overrides` allows (`adopt_recorded`), then compares its folder's record and
  those of the stages it reads with the config; raises StageMismatchError (one line) on a
  difference, or, for a stage named in `config.overwrite`, deletes it and its readers. Records the
  stage when it has no result yet. Returns the config the stage runs with."""
  config, adopted = adopt_recorded(config, workdir, stage, overrides)
  _, reads = defining_fields(config, stage)
  for name in reads + [stage]:
    directory = layout.stage_dir(workdir, name)
    if not _has_result(directory):
      continue
    current, _ = defining_fields(config, name)
    record = read_record(directory)
    if record is None:
      logging.warning(
        "%s has no record of the settings it ran with (made by an older tas_jax); "
        "assuming they are this config's",
        directory,
      )
      continue
    changed = _differences(record.get("fields", {}), current)
    if not changed:
      continue
    if _overwrites(config, name):
      gone = _delete(workdir, name)
      logging.warning(
        "config.overwrite: deleted %s (made with %s) to run it again",
        ", ".join(layout.stage_dir(workdir, g) for g in gone),
        ", ".join(changed),
      )
      continue
    finished = [r for r in readers(workdir, name) if _has_result(layout.stage_dir(workdir, r))]
    also = f" and the {len(finished)} stage(s) that read it" if finished else ""
    raise StageMismatchError(
      f"{directory} holds a result made with other settings: {', '.join(changed)}. Use a new "
      f"--workdir, or add --config.overwrite={name} to delete it{also} and run it again"
    )
  write(config, workdir, stage, adopted)
  return config


def _set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  *path, name = field.split(".")
  section = config
  for part in path:
    section = section[part]
  current = section[name]
  section[name] = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


def adopt_recorded(
  config: ml_collections.ConfigDict,
  workdir: str,
  stage: str,
  overrides: Optional[Iterable[str]] = None,
) -> tuple[ml_collections.ConfigDict, dict]:
  """The config `stage` runs with when the finished stages it reads are taken as recorded.

  For every stage `stage` reads (transitively) that holds a result and a record, each recorded
  field that differs from the config takes the recorded value, unless it is in `overrides` (the
  fields set explicitly for this command: `--config.X=` flags), which is a contradiction and stops
  with one line (or, named in `config.overwrite`, deletes that stage as `check` does).
  `overrides=None` counts every field as explicit: nothing is adopted (a notebook's config is
  compared as it is; pass the fields you changed to adopt the rest). Returns a copy when it
  changes anything, and {field: recorded value} of what it took (logged once; `write` keeps it
  in the new stage's record).
  """
  if overrides is None:
    return config, {}
  explicit = {config_lib.RENAMED.get(f, f) for f in overrides}
  _, reads = defining_fields(config, stage)
  adopted: dict[str, tuple] = {}
  out = config
  for name in reads:
    directory = layout.stage_dir(workdir, name)
    record = read_record(directory) if _has_result(directory) else None
    if record is None or _overwrites(config, name):
      continue
    recorded = {config_lib.RENAMED.get(k, k): v for k, v in record.get("fields", {}).items()}
    current, _ = defining_fields(out, name)
    changed = _differences(recorded, current)
    if not changed:
      continue
    contradicting = [c for c in changed if c.split("=", 1)[0] in explicit]
    if contradicting:
      raise StageMismatchError(
        f"{directory} holds a result made with other settings: {', '.join(contradicting)}. "
        f"Leave those flags out to use it as it is, use a new --workdir, or add "
        f"--config.overwrite={name} to delete it and the stages that read it"
      )
    if out is config:
      out = copy.deepcopy(config)
      out.unlock()  # a locked copy (config_flags) still accepts values of existing fields
    for line in changed:
      field = line.split("=", 1)[0]
      adopted[field] = (recorded[field], current[field], name)
      _set_field(out, field, recorded[field])
  if adopted:
    by_stage: dict[str, list[str]] = {}
    for field, (value, was, name) in sorted(adopted.items()):
      by_stage.setdefault(name, []).append(f"{field}={_show(value)} (config: {_show(was)})")
    for name, fields in by_stage.items():
      logging.info("[%s] reads %s as it was made: %s", stage, name, ", ".join(fields))
    out.lock()
  return out, {f: v for f, (v, _, _) in adopted.items()}


def write(
  config: ml_collections.ConfigDict,
  workdir: str,
  stage: str,
  taken_as_recorded: Optional[dict] = None,
  replace: bool = False,
  extra: Optional[dict] = None,
) -> None:
  """Records what `stage` is run with, unless its folder already holds a result with a record
  (`replace`: write it all the same, e.g. an imported teacher about to be fine-tuned; `extra`
  joins the record)."""
  directory = layout.stage_dir(workdir, stage)
  if not layout.is_writer() or (
    not replace and _has_result(directory) and read_record(directory) is not None
  ):
    return
  fields, reads = defining_fields(config, stage)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, RECORD), "w") as f:
    json.dump(
      {
        "stage": stage,
        "fields": fields,
        "reads": reads,
        "config": config.to_dict(),
        "taken_as_recorded": taken_as_recorded or {},
        **(extra or {}),
      },
      f,
      indent=1,
    )


def write_imported(workdir: str, imported: dict) -> None:
  """The record of a teacher `tas_jax.convert` imported: no training settings to compare (its
  fine-tuning records its own, `write(..., replace=True)`), what it was converted from."""
  if layout.is_writer():
    os.makedirs(layout.teacher_dir(workdir), exist_ok=True)
    with open(os.path.join(layout.teacher_dir(workdir), RECORD), "w") as f:
      json.dump({"stage": "teacher", "fields": {}, "reads": [], "imported": imported}, f, indent=1)
