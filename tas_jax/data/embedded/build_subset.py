"""Rebuilds fashion_mnist_subset.npz from the full Fashion-MNIST IDX files.

python -m tas_jax.data.embedded.build_subset [--idx_dir=DIR]   # default: Debian's folder
"""

import numpy as np

from tas_jax.data import datasets


def build(idx_dir: str, out_path: str, train_per_class: int = 500, test_per_class: int = 100):
  xtr, ytr, xte, yte = (datasets.read_idx(p) for p in datasets._idx_in(idx_dir))
  rng = np.random.default_rng(0)

  def pick(labels, n):
    return np.sort(
      np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False) for c in range(10)])
    )

  a, b = pick(ytr, train_per_class), pick(yte, test_per_class)
  np.savez_compressed(
    out_path,
    train_images=xtr[a],
    train_labels=ytr[a].astype(np.uint8),
    test_images=xte[b],
    test_labels=yte[b].astype(np.uint8),
    train_source_index=a.astype(np.uint16),
    test_source_index=b.astype(np.uint16),
  )


if __name__ == "__main__":
  from tas_jax.commands import embedded_subset as command

  command.main()
