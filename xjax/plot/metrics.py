"""Figures of explanation metrics: the mean curve of each method, one panel per curve metric.

* `plot_flipping_curves`: the explained score against the share of pixels flipped, one line per
  explanation method (Samek et al. 2017, "Evaluating the visualization of what a deep neural
  network has learned", Fig. 4);
* `plot_metric_curves`: the same for several curve metrics side by side (pixel flipping, region
  perturbation, insertion / deletion, the randomisation steps), as `runs.evaluate` draws them.

Drawn on a bare `matplotlib.figure.Figure` (no pyplot, no backend chosen): see `xjax.plot.heatmaps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xjax.plot.heatmaps import save_figure


def _draw_curves(ax, fractions: np.ndarray, curves: Mapping[str, np.ndarray], *, xlabel: str,
                 ylabel: str, title: str = "", areas: Mapping[str, float] | None = None) -> None:
  for i, (name, curve) in enumerate(curves.items()):
    label = name if areas is None else f"{name} (area {areas[name]:.3f})"
    # The colour cycle has 10 colours: later lines are dashed, so no two look alike.
    ax.plot(np.asarray(fractions), np.asarray(curve), marker=".", markersize=3, label=label,
            linestyle="-" if i < 10 else "--")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def plot_flipping_curves(fractions: np.ndarray, curves: Mapping[str, np.ndarray],
                         path: str | Path, *, areas: Mapping[str, float] | None = None,
                         ylabel: str = "score of the explained class", title: str = "",
                         dpi: int = 100) -> Path:
  """Saves the mean pixel-flipping curve of each method (legend: its area under the curve)."""
  fig = Figure(figsize=(5.5, 4.0))
  _draw_curves(fig.subplots(), fractions, curves, areas=areas, ylabel=ylabel, title=title,
               xlabel="share of pixels flipped, most relevant first")
  fig.tight_layout()
  return save_figure(fig, path, dpi)


def plot_metric_curves(panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray], str]],
                       path: str | Path, *, ylabel: str = "score of the explained class",
                       dpi: int = 100) -> Path:
  """Saves one panel per curve metric: `{title: (x axis, {method: mean curve}, x label)}`."""
  fig = Figure(figsize=(5.0 * len(panels), 4.0))
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (title, (fractions, curves, xlabel)) in zip(axes, panels.items()):
    _draw_curves(ax, fractions, curves, xlabel=xlabel, ylabel=ylabel, title=title)
  fig.tight_layout()
  return save_figure(fig, path, dpi)
