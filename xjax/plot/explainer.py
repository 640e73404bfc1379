"""Figures of the explainer-network experiment (Zhang, Yang & Wu, AAAI 2019, Fig. 3): filters on
their top images, the peak of each map marked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xjax.plot.heatmaps import _displayable_image, save_figure


def plot_filter_peaks(images: np.ndarray, filters: Mapping[str, Mapping[str, np.ndarray]],
                      chosen: Mapping[str, Sequence[int]], path: str | Path, *, top: int = 4,
                      cell_size: float = 1.6) -> Path:
  """One row per chosen filter: its `top` images (the highest peaks), the peak marked with a
  cross, the rows grouped by network ("explainer" interpretable filters, then "performer").

  Args:
    images: (N, H, W, C) the images (uint8 or floats in [0, 1]).
    filters: per network, "peaks" (N, K, 2) as (x, y) in pixels and "values" (N, K).
    chosen: per network, the filter indices to show.
    path: the PNG to write.
  """
  rows = [(who, f) for who in chosen for f in chosen[who]]
  fig = Figure(figsize=(cell_size * top, cell_size * max(len(rows), 1)))
  axes = fig.subplots(max(len(rows), 1), top, squeeze=False)
  for r, (who, f) in enumerate(rows):
    order = np.argsort(-filters[who]["values"][:, f])[:top]
    for c, i in enumerate(order):
      ax = axes[r, c]
      image, cmap = _displayable_image(images[i])
      ax.imshow(image, cmap=cmap, extent=(0, image.shape[1], image.shape[0], 0))
      x, y = filters[who]["peaks"][i, f]
      ax.plot([x], [y], marker="+", color="yellow", markersize=12, markeredgewidth=2)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(f"{who} {f}", fontsize=8)
  fig.tight_layout()
  return save_figure(fig, path)
