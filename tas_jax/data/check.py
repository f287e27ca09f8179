"""Lists every image of a streamed dataset that cannot be decoded, before a run meets it.

    python -m tas_jax.data.check --data_dir=/data/imagenet [--splits=train,validation] [--threads=16]

Reads the same records a run reads (a train/ + val/ JPEG folder, or TFDS imagenet2012) and decodes
each fully, with a progress bar; prints one line per unreadable file and a count, and exits with
status 1 when there is any. A run skips such files with a warning (`config.data.bad_images=skip`,
the default) or stops at the first (`fail`).
"""

from __future__ import annotations

import concurrent.futures
import sys

from absl import app, flags

from tas_jax import console
from tas_jax.data import datasets, imagenet

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "The dataset folder (what --config.data.dir names).")
flags.DEFINE_list("splits", ["train", "validation"], "Splits to check.")
flags.DEFINE_integer("threads", 8, "Decoding threads.")


def unreadable(records, threads: int = 8, progress: bool = True) -> list[tuple[str, str]]:
  """[(name, reason)] of the records that cannot be read or decoded, in record order."""

  def check(i):
    try:
      imagenet.decode(records[i]["jpeg"])
      return None
    except Exception as e:  # noqa: BLE001 — whatever PIL raises for a bad file
      return records.name(i), imagenet.why_unreadable(e)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = pool.map(check, range(len(records)))
    bad = [r for r in console.progress_bar(results, len(records), "img", "checked",
                                           enabled=progress) if r is not None]
  return bad


def main(argv):
  if len(argv) > 1 or not FLAGS.data_dir:
    print("usage: python -m tas_jax.data.check --data_dir=DIR [--splits=train,validation]",
          file=sys.stderr)
    sys.exit(2)
  total_bad = total = 0
  classes = None
  try:
    for split in FLAGS.splits:
      records = imagenet.open_split(FLAGS.data_dir, split, classes)
      classes = classes or records.classes
      print(f"{split}: {len(records)} images in {len(records.classes)} classes", file=sys.stderr)
      bad = unreadable(records, FLAGS.threads)
      for name, reason in bad:
        print(f"unreadable: {name} ({reason})")
      total_bad, total = total_bad + len(bad), total + len(records)
  except (datasets.DataNotFoundError, datasets.BadDataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"{total_bad} of {total} images cannot be decoded", file=sys.stderr)
  sys.exit(1 if total_bad else 0)


if __name__ == "__main__":
  app.run(main)
