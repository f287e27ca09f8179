"""The width plots every pruning method's extraction writes (files only: no display on TPU VMs/CI).

- `plot_widths`: pruned against original width per layer (a cross where a block was dropped);
- `plot_width_history`: a heat map of kept width / original width per layer after each epoch.
"""

from __future__ import annotations

import numpy as np


def _pyplot():
  """matplotlib's pyplot on the file-only Agg backend, imported at the first plot: a process that
  draws none (a benchmark, the accelerator check) runs without matplotlib."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_widths(rows: list[dict], path: str, title: str) -> None:
  """rows: {"layer", "original", "width", "removed"} per layer, in forward order."""
  plt = _pyplot()
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(rows) + 2), 3.6))
  ax.bar(x, [r["original"] for r in rows], color="#d0d0d0", label="original")
  ax.bar(x, [r["width"] for r in rows], color="#2a6fb0", width=0.6, label="pruned")
  for i, r in enumerate(rows):
    if r["removed"]:
      ax.text(i, r["original"] * 0.5, "×", ha="center", va="center", color="#b02a2a")
  ax.set_xticks(
    x,
    [r["layer"].replace(".block", ".b").replace(".conv_", ".") for r in rows],
    rotation=90,
    fontsize=7,
  )
  ax.set_ylabel("channels")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_width_history(layers: list[str], ratios: np.ndarray, path: str, title: str) -> None:
  """ratios: (layers, epochs) kept width / original width."""
  epochs = ratios.shape[1]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(5, 0.25 * epochs + 3), max(3, 0.2 * len(layers) + 1)))
  image = ax.imshow(
    ratios,
    aspect="auto",
    cmap="viridis",
    vmin=0,
    vmax=1,
    interpolation="nearest",
    extent=(0.5, epochs + 0.5, len(layers) - 0.5, -0.5),
  )
  ax.set_yticks(range(len(layers)), layers, fontsize=6)
  ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  ax.set_xlabel("search epoch")
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.04)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
