"""Token sequences coloured by relevance: the text counterpart of `plot_explanations`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xjax.errors import ConfigError
from xjax.plot.heatmaps import heatmap_rgb


def plot_token_relevance(tokens: Sequence[Sequence[str]], relevance: Mapping[str, np.ndarray],
                         path: str | Path, *, labels: Sequence[str] | None = None,
                         masks: np.ndarray | None = None, cell_width: float = 0.55,
                         dpi: int = 100) -> Path:
  """Saves a PNG: for each method a block of rows, one row per sequence, each token a box
  coloured by its relevance (red positive, blue negative, white 0, each row scaled by its own
  max |R|, as `heatmap_rgb`), its name written in it.

  Args:
    tokens: N sequences of T token names.
    relevance: method name -> token relevance (N, T), in block order.
    path: where to write the PNG (parent folders are created).
    labels: one text per sequence (e.g. its class), written left of its rows.
    masks: (N, T) the ground-truth tokens (e.g. the planted ones): their boxes get a black frame.
    cell_width: inches per token.
    dpi: dots per inch.

  Returns:
    The path of the PNG.
  """
  n = len(tokens)
  length = max((len(t) for t in tokens), default=0)
  for name, r in relevance.items():
    if np.shape(r) != (n, length):
      raise ConfigError(f"relevance[{name!r}] must have shape (N, T) = ({n}, {length}); got "
                        f"{np.shape(r)}.")
  rows = len(relevance) * (n + 1)
  figure = Figure(figsize=(cell_width * length + 1.6, 0.32 * rows + 0.3), dpi=dpi)
  axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
  axes.set_xlim(-3.0, length)
  axes.set_ylim(rows, -0.5)
  axes.axis("off")
  row = 0
  for name, r in relevance.items():
    axes.text(-3.0, row, name, fontsize=9, fontweight="bold", va="center")
    row += 1
    colours = heatmap_rgb(np.asarray(r, np.float64)[:, None, :])[:, 0]
    for i, sequence in enumerate(tokens):
      if labels is not None:
        axes.text(-2.8, row, str(labels[i]), fontsize=8, va="center")
      for t, token in enumerate(sequence):
        framed = masks is not None and bool(np.asarray(masks)[i, t])
        axes.add_patch(Rectangle((t, row - 0.45), 0.96, 0.9, facecolor=colours[i, t],
                                 edgecolor="black" if framed else "0.85",
                                 linewidth=1.4 if framed else 0.4))
        axes.text(t + 0.48, row, token, fontsize=6, ha="center", va="center")
      row += 1
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path)
  return path
