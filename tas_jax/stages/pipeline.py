"""Stage `all`: the whole method in one workdir.

teacher → the search and extraction of every method the runs need (`config.method`, whose FLOPs
the baselines match, and e.g. PaS for a `pas-kd` run) → every distill run of
`config.pipeline.runs` → results. A stage whose `summary.json` says it finished is skipped, an
interrupted one resumes from its checkpoint, so the same command continues a pipeline that was
stopped anywhere. The method (`config.method`) comes from the registry in `tas_jax.methods`.
"""

from __future__ import annotations

import copy

import ml_collections
from absl import logging

from tas_jax import config as config_lib, console, methods, multihost, workdir as layout
from tas_jax.stages import distill, records, results, teacher


def run_all(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """teacher → search → extract → distill runs → results, skipping what is finished."""
  runs = [r.strip() for r in config.pipeline.runs.split(",")]
  # (stage folder, the config it runs with, its function)
  plan = [("teacher", config, teacher.train_and_evaluate)]
  for name in config_lib.run_methods(config.pipeline.runs, config.method):
    method = methods.get(name)
    plan += [
      (layout.search_stage(name), config, method.search),
      (layout.extract_stage(name), config, method.extract),
    ]
  for run in runs:
    c = copy.deepcopy(config)
    for field, value in config_lib.parse_run(run).items():
      c.distill[field] = value
    plan.append((f"distill/{run}", c, distill.distill))
  for i, (stage, stage_config, fn) in enumerate(plan, 1):
    records.check(stage_config, workdir, stage)  # a result made with other settings stops here
    finished = layout.read_summary(layout.stage_dir(workdir, stage)) is not None
    if multihost.as_process_0(finished):  # every process skips or runs it alike
      logging.info("[all] %d/%d %s: finished before, skipped", i, len(plan), stage)
      continue
    logging.info("[all] %d/%d %s", i, len(plan), stage)
    with console.stage_log(layout.stage_dir(workdir, stage), layout.is_writer()):
      summary = fn(stage_config, workdir)
    if not summary.get("finished"):
      logging.info(
        "[all] %s stopped before the end (max_steps_per_run); run the same command "
        "again to continue",
        stage,
      )
      return {"stage": "all", "finished": False, "stopped_in": stage}
  return {"stage": "all", "finished": True, **results.results(config, workdir)}
