"""Lists every image of a streamed dataset that cannot be decoded, before a run meets it.

    python -m tas_jax.data.check --data_dir=/data/imagenet \\
        [--splits=train,validation] [--threads=16]

Reads the same records a run reads (a train/ + val/ JPEG folder, or TFDS imagenet2012) and decodes
each fully, with a progress bar; prints one line per unreadable file and a count, and exits with
status 1 when there is any. A run skips such files with a warning (`config.data.bad_images=skip`,
the default) or stops at the first (`fail`).
"""

from __future__ import annotations

import concurrent.futures

from tas_jax import console
from tas_jax.data import imagenet


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
    bad = [
      r
      for r in console.progress_bar(results, len(records), "img", "checked", enabled=progress)
      if r is not None
    ]
  return bad


if __name__ == "__main__":
  from tas_jax.commands import data_check as command

  command.main()
