"""`python -m tas_jax.data.embedded.build_subset [--idx_dir=DIR]`: rebuild the embedded
Fashion-MNIST subset from the full IDX files (`tas_jax.data.embedded.build_subset.build`)."""

from __future__ import annotations

from absl import app, flags

from tas_jax.commands import guarded
from tas_jax.data import datasets
from tas_jax.data.embedded import build_subset


def main() -> None:
  idx_dir = flags.DEFINE_string(
    "idx_dir", datasets.DEBIAN_FASHION_MNIST, "folder of the full Fashion-MNIST IDX files"
  )

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    guarded(build_subset.build, idx_dir.value, datasets.EMBEDDED_PATH)

  app.run(run)
