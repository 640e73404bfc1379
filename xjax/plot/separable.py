"""Fig. 6 of Rieger 2018 ("Separable explanations"): dense kernels, positive red, negative blue.

Each kernel `(n_in, n_out)` is drawn transposed (one row per output unit), with its own symmetric
colour limits, and the class blocks of `xjax.methods.separable.block_of` outlined: under the
block-wise L1 penalty the positive (red) weights gather in the diagonal blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xjax.errors import ConfigError
from xjax.methods.separable import block_of
from xjax.plot.heatmaps import RELEVANCE_CMAP, save_figure


def _block_edges(num_units: int, num_classes: int, blocks: np.ndarray | None = None
                 ) -> np.ndarray:
  """The unit positions (between units, at k - 0.5) where a new class block starts.

  `blocks` gives each unit's block when they are not `block_of`'s (then in sorted order).
  """
  blocks = block_of(num_units, num_classes) if blocks is None else np.sort(blocks)
  return np.flatnonzero(np.diff(blocks)) + 0.5


def plot_dense_weights(kernels: Mapping[str, Mapping[str, np.ndarray]], path: str | Path, *,
                       num_classes: int, input_blocks: Mapping[str, np.ndarray] | None = None,
                       title: str = "", cell_size: float = 3.0, dpi: int = 100) -> Path:
  """Saves a PNG grid of dense kernels: one row per run, one column per layer.

  Args:
    kernels: run name -> (layer path -> kernel (n_in, n_out)); every run has the same layers.
    path: where to write the PNG (parent folders are created).
    num_classes: C, the number of class blocks outlined.
    input_blocks: layer path -> the class block of each of its inputs, for layers whose blocks
      are not `block_of`'s (`xjax.methods.separable.input_blocks`); their inputs are drawn
      sorted by block.
    title: the figure's title.
    cell_size: the height of one panel in inches (its width is 1.4 times that).
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.
  """
  runs = list(kernels)
  if not runs:
    raise ConfigError("plot_dense_weights needs at least one run of kernels.")
  layers = list(kernels[runs[0]])
  for run in runs:
    if list(kernels[run]) != layers:
      raise ConfigError(f"Run {run!r} has the dense layers {list(kernels[run])}, not {layers}.")
    for layer, kernel in kernels[run].items():
      if np.ndim(kernel) != 2:
        raise ConfigError(f"{run}/{layer}: a dense kernel must be 2-D; got {np.shape(kernel)}.")
  fig = Figure(figsize=(len(layers) * cell_size * 1.4, len(runs) * cell_size))
  axes = fig.subplots(len(runs), len(layers), squeeze=False)
  for row, run in enumerate(runs):
    for col, layer in enumerate(layers):
      w = np.asarray(kernels[run][layer], np.float64).T  # (n_out, n_in)
      blocks = (input_blocks or {}).get(layer)
      if blocks is not None:
        if len(blocks) != w.shape[1]:
          raise ConfigError(f"input_blocks[{layer!r}] has {len(blocks)} entries for a layer "
                            f"with {w.shape[1]} inputs.")
        w = w[:, np.argsort(blocks, kind="stable")]
      vmax = float(np.max(np.abs(w))) or 1.0
      ax = axes[row, col]
      ax.imshow(w, cmap=RELEVANCE_CMAP, vmin=-vmax, vmax=vmax, aspect="auto",
                interpolation="nearest")
      for edge in _block_edges(w.shape[1], num_classes, blocks):
        ax.axvline(edge, color="k", linewidth=0.4, alpha=0.6)
      for edge in _block_edges(w.shape[0], num_classes):
        ax.axhline(edge, color="k", linewidth=0.4, alpha=0.6)
      ax.set_title(f"{run}: {layer} (|w| <= {vmax:.2g})", fontsize=9)
      ax.set_xlabel(f"input unit (of {w.shape[1]}{', by block' if blocks is not None else ''})",
                    fontsize=8)
      ax.set_ylabel(f"output unit (of {w.shape[0]})", fontsize=8)
      ax.tick_params(labelsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return save_figure(fig, path, dpi)
