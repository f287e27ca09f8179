"""`python -m tas_jax.data.imagenet_samples --out=DIR`: the tiny ImageNet-layout folder of the
photographs in the foolbox wheel (`tas_jax.data.imagenet_samples.build`)."""

from __future__ import annotations

from absl import app, flags

from tas_jax.commands import guarded
from tas_jax.data import imagenet_samples


def main() -> None:
  out = flags.DEFINE_string("out", None, "the folder to write")

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not out.value:
      raise app.UsageError("--out=DIR is needed")
    print(guarded(imagenet_samples.build, out.value))

  app.run(run)
