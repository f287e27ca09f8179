"""What a run prints, and where its full log goes.

The console gets short lines (`HH:MM:SS message`; warnings say so): one per progress interval
(step/total, %, images/s, ETA, the key metrics), one per epoch, and what a stage decided. Each stage
also appends everything logged while it runs to `STAGE_DIR/log.txt` (full timestamps and sources),
including details kept off the console (`detail`). Libraries' start-up noise (the TPU backend probe
on a CPU or GPU machine, Orbax narrating every save, TensorFlow's oneDNN banner, matplotlib's font
cache) is silenced at its logger or environment variable.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import time
from typing import Optional

from absl import logging

LOG_FILE = "log.txt"
_DETAIL = std_logging.getLogger("tas_jax.detail")  # the log file only
_DETAIL.propagate = False
_DETAIL.setLevel(std_logging.INFO)
_QUIET_LOGGERS = (
  "jax._src.xla_bridge",
  "matplotlib",
  "orbax",
  "absl.logging_writer",
  "onnxscript",
  "onnx_ir",
  "torch.onnx",
  "torch.export",
)


def quiet_environment() -> None:
  """Before TensorFlow loads (clu's writers, tfds import it): no oneDNN banner or C++ INFO lines."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


class _Short(std_logging.Formatter):
  def format(self, record):
    prefix = (
      "error: "
      if record.levelno >= std_logging.ERROR
      else "warning: "
      if record.levelno >= std_logging.WARNING
      else ""
    )
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    return f"{stamp} {prefix}{record.getMessage()}"


def _not_noise(record) -> bool:
  return "orbax" not in record.pathname and "Unable to initialize backend" not in str(record.msg)


def setup() -> None:
  """Short console lines and quiet libraries; safe to call more than once."""
  quiet_environment()
  handler = logging.get_absl_handler()
  if not getattr(handler, "_tas_jax_console", False):
    handler.setFormatter(_Short())
    handler.addFilter(_not_noise)
    handler._tas_jax_console = True
  for name in _QUIET_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.WARNING)


def detail(message: str, *args) -> None:
  """A line for the stage's log file only (long per-epoch details)."""
  _DETAIL.info(message, *args)


@contextlib.contextmanager
def stage_log(directory: str, enabled: bool = True):
  """Everything logged inside goes to DIRECTORY/log.txt too (appended: a resumed run adds to it)."""
  if not enabled:
    yield
    return
  os.makedirs(directory, exist_ok=True)
  handler = std_logging.FileHandler(os.path.join(directory, LOG_FILE))
  handler.setFormatter(
    std_logging.Formatter("%(asctime)s %(levelname)s %(filename)s:%(lineno)d %(message)s")
  )
  handler.addFilter(_not_noise)
  loggers = (std_logging.getLogger(), _DETAIL)
  for logger in loggers:
    logger.addHandler(handler)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeHandler(handler)
    handler.close()


def duration(seconds: float) -> str:
  """'45s', '12m05s', '3h07m'."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_metrics(values: dict) -> str:
  """'loss 0.4321 accuracy 85.20% …': accuracies and ratios as percentages."""
  parts = []
  for k, v in values.items():
    if "accuracy" in k or k.endswith("ratio"):
      parts.append(f"{k} {100 * v:.2f}%")
    elif isinstance(v, float):
      parts.append(f"{k} {v:.4g}")
    else:
      parts.append(f"{k} {v}")
  return " ".join(parts)


class Progress:
  """One console line per interval: the rate is measured over the steps run since the last line
  (a resumed run's earlier steps and the first step's compilation are not counted)."""

  def __init__(self, stage: str, total_steps: int, global_batch: int):
    self.stage, self.total, self.batch = stage, total_steps, global_batch
    self._t = self._step = None

  def compiled(
    self,
    step: int,
    seconds: float,
    what: str = "train step",
    cache: Optional[dict] = None,
    kept: Optional[dict] = None,
  ) -> None:
    """Called after the first step of this run returned: its time is mostly compilation.
    `cache`: what the persistent compilation cache did meanwhile (`compilation.counts`); `kept`:
    the step's `compilation.KeptStep.timings`, when its compiled program is kept."""
    if kept and kept.get("source") == "loaded":
      how = "loaded the %s an earlier launch kept (no tracing) and ran it in %.1fs"
    elif cache and cache.get("hits") and not cache.get("compiled"):
      how = "loaded the %s from the compilation cache and ran it in %.1fs"
    else:
      how = "compiled and ran the %s in %.1fs"
    if kept and kept.get("source") == "traced":  # traced, compiled and kept, maybe ahead of time
      parts = "traced in %.1fs, lowered in %.1fs, compiled in %.1fs" % (
        kept.get("trace_s", 0.0),
        kept.get("lower_s", 0.0),
        kept.get("compile_s", 0.0),
      )
      waited = kept.get("waited_s", 0.0)
      how += (
        f" (the step: {parts}, ahead of time, ready before the first step needed it)"
        if waited < 0.05
        else f" (the step: {parts}; the first step waited {waited:.1f}s for it)"
      )
    logging.info("[%s] " + how, self.stage, what, seconds)
    self._t, self._step = time.time(), step

  def restart(self, step: int) -> None:
    """The next interval starts now (after an evaluation); before the first step, a no-op."""
    if self._step is not None:
      self._t, self._step = time.time(), step

  def report(self, step: int, metrics: dict) -> float:
    """Logs the line for `step`; returns images/s over the interval (0 before any interval)."""
    now = time.time()
    rate = 0.0
    if self._step is not None and step > self._step:
      steps_per_s = (step - self._step) / max(now - self._t, 1e-9)
      rate = steps_per_s * self.batch
      eta = duration((self.total - step) / steps_per_s)
      speed = f"{rate:.0f} img/s, {1 / steps_per_s:.3g} s/step, ETA {eta}"
    else:
      speed = "timing from the next interval"
    logging.info(
      "[%s] step %d/%d (%.1f%%) %s | %s",
      self.stage,
      step,
      self.total,
      100 * step / self.total,
      speed,
      format_metrics(metrics),
    )
    self._t, self._step = now, step
    return rate


def progress_bar(
  iterable,
  total: int,
  unit: str,
  desc: str,
  every_secs: float = 30.0,
  enabled: bool = True,
  stream=None,
):
  """The items of `iterable`, with tqdm's bar on a terminal; elsewhere (output redirected to a
  file, a CI log) a plain line "desc: n/total unit (p%)" at most every `every_secs` and at the end,
  instead of tqdm's carriage returns, which a file keeps as one huge line."""
  import sys

  stream = stream or sys.stderr
  if not enabled:
    yield from iterable
    return
  if stream.isatty():
    import tqdm

    yield from tqdm.tqdm(iterable, total=total, unit=unit, desc=desc, file=stream)
    return
  last = time.time()
  n = 0
  for n, item in enumerate(iterable, 1):
    yield item
    now = time.time()
    if now - last >= every_secs or n == total:
      print(f"{desc}: {n}/{total} {unit} ({100 * n / max(total, 1):.0f}%)", file=stream, flush=True)
      last = now
