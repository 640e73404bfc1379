"""Figures of activation maximization (Montavon, Samek, Mueller, DSP 2018).

`plot_prototypes`: one row per prior (l2, expert, code space), one column per class, each
prototype titled with the classifier's probability of its class: Fig. 3.1's comparison. (The
pixel-flipping curves are `xjax.plot.metrics.plot_flipping_curves`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xjax.errors import ConfigError
from xjax.plot.heatmaps import _displayable_image, save_figure


def plot_prototypes(prototypes: Mapping[str, np.ndarray], path: str | Path, *,
                    class_names: Sequence[str], captions: Mapping[str, Sequence[str]] | None = None,
                    cell_size: float = 1.3, dpi: int = 100) -> Path:
  """Saves a PNG grid of prototypes: a row per prior, a column per class.

  Args:
    prototypes: prior name -> prototypes (K, H, W[, C]), one per class, in row order.
    path: the PNG to write.
    class_names: the K column titles.
    captions: prior name -> K short texts written under the prototypes (e.g. "p=0.99").
  """
  rows = list(prototypes)
  num_classes = len(class_names)
  for name, images in prototypes.items():
    if len(images) != num_classes:
      raise ConfigError(f"prototypes[{name!r}] has {len(images)} images for {num_classes} classes.")
  fig = Figure(figsize=(num_classes * cell_size, len(rows) * (cell_size + 0.25)))
  axes = fig.subplots(len(rows), num_classes, squeeze=False)
  for r, name in enumerate(rows):
    for c in range(num_classes):
      image, cmap = _displayable_image(prototypes[name][c])
      ax = axes[r, c]
      ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(str(class_names[c]), fontsize=9)
      if c == 0:
        ax.set_ylabel(name, fontsize=9)
      if captions is not None:
        ax.set_xlabel(captions[name][c], fontsize=7)
  fig.tight_layout()
  return save_figure(fig, path, dpi)
