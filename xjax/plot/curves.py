"""Training curves: loss and accuracy per epoch, train beside validation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
  """Saves a two-panel PNG (loss, accuracy vs epoch) from a run's per-epoch history."""
  epochs = [h["epoch"] for h in history]
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, key in zip(axes, ("loss", "accuracy")):
    for split, style in (("train", "-o"), ("validation", "--s")):
      values = [h.get(f"{split}_{key}") for h in history]
      if any(v is not None for v in values):
        ax.plot(epochs, values, style, label=split, markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
