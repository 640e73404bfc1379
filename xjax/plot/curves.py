"""Training curves: loss and accuracy per epoch, train beside validation.

Drawn on a bare `matplotlib.figure.Figure` (no pyplot, no backend chosen): see `xjax.plot.heatmaps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure


def plot_training_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
  """Saves a two-panel PNG (loss, accuracy vs epoch) from a run's per-epoch history."""
  epochs = [h["epoch"] for h in history]
  fig = Figure(figsize=(9, 3.5))
  axes = fig.subplots(1, 2)
  for ax, key in zip(axes, ("loss", "accuracy")):
    for split, style in (("train", "-o"), ("validation", "--s")):
      values = [h.get(f"{split}_{key}") for h in history]
      if any(v is not None for v in values):
        ax.plot(epochs, values, style, label=split, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # a generative model has no accuracy to draw
      ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
