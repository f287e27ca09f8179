"""Rebuilds fashion_mnist_subset.npz from the full Fashion-MNIST IDX files.

    python -m tas_jax.data.embedded.build_subset [--idx_dir=DIR]   # default: Debian's folder
"""

import numpy as np
from absl import app, flags

from tas_jax.data import datasets


def build(idx_dir: str, out_path: str, train_per_class: int = 500, test_per_class: int = 100):
  xtr, ytr, xte, yte = (datasets.read_idx(p) for p in datasets._idx_in(idx_dir))
  rng = np.random.default_rng(0)

  def pick(labels, n):
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                                   for c in range(10)]))

  a, b = pick(ytr, train_per_class), pick(yte, test_per_class)
  np.savez_compressed(out_path, train_images=xtr[a], train_labels=ytr[a].astype(np.uint8),
                      test_images=xte[b], test_labels=yte[b].astype(np.uint8),
                      train_source_index=a.astype(np.uint16), test_source_index=b.astype(np.uint16))


_IDX_DIR = flags.DEFINE_string("idx_dir", datasets.DEBIAN_FASHION_MNIST,
                               "folder of the full Fashion-MNIST IDX files")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  build(_IDX_DIR.value, datasets.EMBEDDED_PATH)


if __name__ == "__main__":
  app.run(main)
