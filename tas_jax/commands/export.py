"""`python -m tas_jax.export --workdir=W --run=RUN --format=stablehlo|onnx|torch`: a trained
network out of tas_jax, checked against it (`tas_jax.export.export`)."""

from __future__ import annotations

from tas_jax import console

console.quiet_environment()

from absl import app, flags  # noqa: E402

from tas_jax import export  # noqa: E402
from tas_jax.commands import guarded  # noqa: E402


def cli(workdir: str, run: str, fmt: str, num_images: int = 8) -> int:
  """Exports and checks, prints the file and the check; a user's error is one line, status 2."""
  console.setup()
  info = guarded(export.export, workdir, run, fmt, num_images)
  entry = info[fmt]
  print(
    f"{run} ({info['architecture']}) -> {entry['path']}\nchecked on "
    f"{entry['checked_images']} test images of {info['dataset']}: largest logit difference "
    f"{entry['max_logit_difference']:.2e} (relative to max(1, |logit|); tolerance "
    f"{export.TOLERANCE})"
  )
  return 0


def main() -> None:
  workdir = flags.DEFINE_string("workdir", None, "the workdir holding the run")
  run = flags.DEFINE_string("run", None, "teacher, or a distill run (tas-kd, pas-ce, …)")
  fmt = flags.DEFINE_enum("format", None, export.FORMATS, "what to write")
  check_images = flags.DEFINE_integer("check_images", 8, "test images the export is checked on")

  def go(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for flag in (workdir, run, fmt):
      if not flag.value:
        raise app.UsageError(f"--{flag.name} is needed")
    return cli(workdir.value, run.value, fmt.value, check_images.value)

  app.run(go)
