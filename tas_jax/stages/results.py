"""Stage `results`: the table that sums up a workdir.

Reads the teacher and every finished distill run of the workdir, measures the inference
throughput of each network, physically built at its own widths, on one batch of test images in one
process (interleaved, median of repeats), and writes `WORKDIR/results.md` and `results.json`
(process 0).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import jax
import ml_collections
from absl import logging

from tas_jax import latency, methods, workdir as layout
from tas_jax.errors import CheckpointNotFoundError
from tas_jax.models import networks, repvgg
from tas_jax.training import checkpoint, supervised


def teacher_to_measure(stage_dir: str, arch: networks.Network) -> tuple:
  """(architecture, variables) the teacher is timed as: a RepVGG teacher in its deploy form, as
  every pruned RepVGG is, so the speed-up is the pruning's alone and not the
  reparameterisation's."""
  variables = checkpoint.read_variables(stage_dir, arch, "teacher", checkpoint.host_sharding())[0]
  if isinstance(arch, repvgg.RepVGGArch) and not arch.deploy:
    return dataclasses.replace(arch, deploy=True), repvgg.reparameterize(arch, variables)
  return arch, variables


BASELINE_LABELS = {"uniform": "uniform width", "random": "random"}


def _label(summary: dict) -> str:
  name = summary.get("student")
  student = (
    methods.get(name).label
    if methods.is_method(name)
    else BASELINE_LABELS.get(name, summary.get("architecture") or name)
  )
  return (
    f"{student} + {'KD' if summary['kd'] else 'CE'}"
    f"{' w/ Init' if summary.get('init') == 'teacher' else ''}"
  )


def results(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Builds WORKDIR/results.{md,json} from the finished stages; prints and returns the table."""
  teacher_summary = layout.read_summary(layout.teacher_dir(workdir))
  if teacher_summary is None:
    raise CheckpointNotFoundError(
      f"no finished teacher in {workdir}/teacher: run --config.stage=teacher (or all) first"
    )
  teacher_arch = networks.load(os.path.join(layout.teacher_dir(workdir), layout.ARCH))
  runs = []
  for path in sorted(glob.glob(os.path.join(layout.distill_dir(workdir), "*", layout.SUMMARY))):
    s = layout.read_summary(os.path.dirname(path))
    if s is not None:
      runs.append(s)
  order = [r.strip() for r in config.pipeline.runs.split(",")]
  runs.sort(key=lambda s: (order.index(s["run"]) if s["run"] in order else len(order), s["run"]))

  _, ds = supervised.load_inputs(config, config.teacher.eval_batch_size)
  batch = ds.sample_images(config.pipeline.throughput_batch)
  to_measure = {"teacher": teacher_to_measure(layout.teacher_dir(workdir), teacher_arch)}
  for s in runs:
    a, variables, _ = checkpoint.read_trained(
      layout.distill_dir(workdir, s["run"]), "distill", checkpoint.host_sharding()
    )
    to_measure[s["run"]] = (a, variables)
  logging.info(
    "[results] measuring inference throughput of %d networks on one batch of %d test "
    "images (%d repeats)",
    len(to_measure),
    len(batch),
    config.pipeline.throughput_repeats,
  )
  speed = latency.measure_networks(
    to_measure, batch, ds.mean, ds.std, config.pipeline.throughput_repeats
  )

  t_flops, t_params = teacher_summary["flops_m"], teacher_summary["params_m"]
  origin = (
    "imported, fine-tuned"
    if teacher_summary.get("finetuned_from")
    else "imported"
    if teacher_summary.get("imported")
    else "unpruned"
  )
  rows = [
    {
      "network": f"teacher ({origin})",
      "run": "teacher",
      "architecture": teacher_arch.name,
      "test_accuracy": teacher_summary["test_accuracy"],
      "test_top5_accuracy": teacher_summary.get("test_top5_accuracy"),
      "flops_m": t_flops,
      "params_m": t_params,
      "flops_pruned": 0.0,
      "epochs": teacher_summary["epochs"],
      **speed["teacher"],
      "speedup": 1.0,
    }
  ]
  for s in runs:
    rows.append(
      {
        "network": _label(s),
        "run": s["run"],
        "architecture": s["architecture"],
        "test_accuracy": s["test_accuracy"],
        "test_top5_accuracy": s.get("test_top5_accuracy"),
        "flops_m": s["flops_m"],
        "params_m": s["params_m"],
        "flops_pruned": 1 - s["flops_m"] / t_flops,
        "epochs": s["epochs"],
        **speed[s["run"]],
        "speedup": speed[s["run"]]["images_per_s"] / speed["teacher"]["images_per_s"],
      }
    )
  device = jax.local_devices()[0]
  table = {
    "dataset": teacher_summary["dataset"],
    "device": f"{device.platform} ({device.device_kind})",
    "throughput_batch": len(batch),
    "throughput_repeats": config.pipeline.throughput_repeats,
    "deploy_form": isinstance(teacher_arch, repvgg.RepVGGArch),
    "rows": rows,
  }
  text = markdown(table)
  if layout.is_writer():
    print(text, flush=True)  # first: a workdir that cannot be written still shows the table
    md_path, json_path = layout.results_paths(workdir)
    try:
      with open(json_path, "w") as f:
        json.dump(table, f, indent=2)
      with open(md_path, "w") as f:
        f.write(text)
      logging.info("[results] written to %s and %s", md_path, json_path)
    except OSError as e:
      logging.warning(
        "[results] could not write %s (%s): the table above is not saved", e.filename, e.strerror
      )
  return table


def markdown(table: dict) -> str:
  deploy = (
    "; RepVGG networks timed in deploy form (branches fused)" if table.get("deploy_form") else ""
  )
  lines = [
    f"Results on {table['dataset']}; inference throughput: batch {table['throughput_batch']}, "
    f"median of {table['throughput_repeats']} interleaved calls, one {table['device']} device"
    f"{deploy}.",
    "",
    "| network | run | test acc. | top-5 | FLOPs (M) | params (M) | FLOPs pruned | epochs "
    "| images/s | speed-up |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in table["rows"]:
    top5 = r.get("test_top5_accuracy")
    lines.append(
      f"| {r['network']} | {r['run']} | {100 * r['test_accuracy']:.2f}% | "
      f"{'–' if top5 is None else f'{100 * top5:.2f}%'} | "
      f"{r['flops_m']:.2f} | {r['params_m']:.4f} | {100 * r['flops_pruned']:.1f}% | "
      f"{r['epochs']} | {r['images_per_s']:.0f} | {r['speedup']:.2f}× |"
    )
  return "\n".join(lines) + "\n"
