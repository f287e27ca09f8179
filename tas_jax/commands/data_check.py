"""`python -m tas_jax.data.check --data_dir=DIR [--splits=train,validation] [--threads=16]`: every
image of a streamed dataset that cannot be decoded (`tas_jax.data.check.unreadable`); exit status 1
when there is any."""

from __future__ import annotations

import sys

from absl import app, flags

from tas_jax.commands import fail, guarded
from tas_jax.data import check, imagenet


def main() -> None:
  data_dir = flags.DEFINE_string(
    "data_dir", None, "The dataset folder (what --config.data.dir names)."
  )
  splits = flags.DEFINE_list("splits", ["train", "validation"], "Splits to check.")
  threads = flags.DEFINE_integer("threads", 8, "Decoding threads.")

  def run(argv):
    if len(argv) > 1 or not data_dir.value:
      fail("usage: python -m tas_jax.data.check --data_dir=DIR [--splits=train,validation]")
    total_bad = total = 0
    classes = None
    for split in splits.value:
      records = guarded(imagenet.open_split, data_dir.value, split, classes)
      classes = classes or records.classes
      print(f"{split}: {len(records)} images in {len(records.classes)} classes", file=sys.stderr)
      bad = check.unreadable(records, threads.value)
      for name, reason in bad:
        print(f"unreadable: {name} ({reason})")
      total_bad, total = total_bad + len(bad), total + len(records)
    print(f"{total_bad} of {total} images cannot be decoded", file=sys.stderr)
    sys.exit(1 if total_bad else 0)

  app.run(run)
