"""Heatmap figures: relevance in red, counter-relevance in blue, white at zero.

The colour convention of the LRP literature (e.g. Montavon, Samek, Mueller, DSP 2018, Fig. 4:
"red corresponds to relevance and blue to counter-relevance"), with symmetric limits per image so
that 0 is always white whatever the sign balance of the heatmap.

Every figure of `xjax.plot` is a bare `matplotlib.figure.Figure`, never a pyplot one: `savefig`
renders it with the Agg canvas of the file format, so saving works headless (no display, no
backend to choose) and importing xjax.plot leaves the pyplot backend of a notebook or script
alone. Such a figure is not registered with pyplot: nothing to close, it is freed like any
object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from xjax.errors import ConfigError

# An odd number of entries puts one entry exactly at 0.5, so a relevance of 0 is pure white.
RELEVANCE_CMAP = LinearSegmentedColormap.from_list(
    "relevance", ["#0000ff", "#ffffff", "#ff0000"], N=255)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
  """Writes `fig` as a PNG at `path` (creating parent folders) and returns the path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  return path


def heatmap_rgb(h: np.ndarray) -> np.ndarray:
  """Heatmaps (H, W) or (N, H, W) as float RGB in [0, 1], (..., H, W, 3).

  Each image is scaled by its own `max |h|` to [-1, 1], so 0 maps to white, the strongest
  relevance to dark red and the strongest counter-relevance to dark blue. An all-zero heatmap is
  white.
  """
  h = np.asarray(h, dtype=np.float64)
  if h.ndim not in (2, 3):
    raise ConfigError(f"expected a heatmap (H, W) or heatmaps (N, H, W); got shape {h.shape}. "
                      f"Reduce channels first, e.g. xjax.explain.heatmaps.channel_sum.")
  vmax = np.max(np.abs(h), axis=(-2, -1), keepdims=True)
  scaled = h / np.where(vmax > 0, vmax, 1.0)
  return RELEVANCE_CMAP((scaled + 1.0) / 2.0)[..., :3]


def _displayable_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
  """An image for `imshow`: uint8 or floats in [0, 1] as they are, other floats min-max scaled."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3):
    raise ConfigError(f"expected images (H, W), (H, W, 1) or (H, W, 3); got shape {image.shape}.")
  if image.dtype == np.uint8:
    image = image.astype(np.float64) / 255.0
  else:
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    if low < 0.0 or high > 1.0:  # e.g. standardised or [-1, 1] inputs: show the full range.
      image = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return image, ("gray" if image.ndim == 2 else None)


def plot_explanations(images: np.ndarray, heatmaps: Mapping[str, np.ndarray], path: str | Path, *,
                      titles: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                      masks: np.ndarray | None = None, mistakes: Sequence[bool] | None = None,
                      cell_size: float = 2.0, dpi: int = 100) -> Path:
  """Saves a PNG grid: one row per image, the image first, then one heatmap per method.

  Args:
    images: (N, H, W), (N, H, W, 1) or (N, H, W, 3); uint8, or floats (in [0, 1] shown as they
      are, otherwise min-max scaled per image).
    heatmaps: method name -> heatmaps (N, H, W), in column order; coloured by `heatmap_rgb`.
    path: where to write the PNG (parent folders are created).
    titles: column titles, 1 + len(heatmaps) of them; default "input" and the method names.
    labels: one text per row (e.g. "class 3, p = 0.91"), written left of the row.
    masks: (N, H, W) the ground truth the heatmaps are scored against (e.g. the object's
      pixels); its outline is drawn on the image and on every heatmap.
    mistakes: one bool per row: True rows (e.g. misclassified images) get a red label.
    cell_size: the size of one cell in inches; the PNG is ((N * cell_size + 0.6) * dpi) pixels
      high (0.6 inches for the colour scale) and ((1 + len(heatmaps)) * cell_size * dpi) wide.
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.
  """
  images = np.asarray(images)
  num_rows, num_cols = images.shape[0], 1 + len(heatmaps)
  for name, h in heatmaps.items():
    if np.shape(h)[:1] != (num_rows,) or np.ndim(h) != 3:
      raise ConfigError(f"heatmaps[{name!r}] must have shape (N, H, W) with N = {num_rows}; got "
                        f"{np.shape(h)}.")
  titles = ["input", *heatmaps] if titles is None else list(titles)
  if len(titles) != num_cols:
    raise ConfigError(f"titles needs {num_cols} entries (input + methods); got {len(titles)}.")
  if labels is not None and len(labels) != num_rows:
    raise ConfigError(f"labels needs {num_rows} entries (one per image); got {len(labels)}.")
  if masks is not None and np.shape(masks) != (num_rows, *images.shape[1:3]):
    raise ConfigError(f"masks must have shape {(num_rows, *images.shape[1:3])} (one per image); "
                      f"got {np.shape(masks)}.")
  if mistakes is not None and len(mistakes) != num_rows:
    raise ConfigError(f"mistakes needs {num_rows} entries (one per image); got {len(mistakes)}.")
  colours = [heatmap_rgb(h) for h in heatmaps.values()]

  # The last row of the grid, a short one, holds the colour scale shared by every heatmap.
  fig = Figure(figsize=(num_cols * cell_size, num_rows * cell_size + 0.6))
  grid = fig.add_gridspec(num_rows + 1, num_cols,
                          height_ratios=[cell_size] * num_rows + [0.12])
  axes = np.array([[fig.add_subplot(grid[row, col]) for col in range(num_cols)]
                   for row in range(num_rows)])
  for row in range(num_rows):
    image, cmap = _displayable_image(images[row])
    cells = [(image, cmap)] + [(rgb[row], None) for rgb in colours]
    for col, (content, cmap) in enumerate(cells):
      ax = axes[row, col]
      ax.imshow(content, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
      if masks is not None and np.any(masks[row]):
        ax.contour(np.asarray(masks[row], np.float64), levels=[0.5], colors="black",
                   linewidths=0.8)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(titles[col], fontsize=9)
    if labels is not None:
      wrong = mistakes is not None and bool(mistakes[row])
      axes[row, 0].set_ylabel(labels[row], fontsize=8, color="red" if wrong else "black")
  if heatmaps:
    scale = fig.add_subplot(grid[num_rows, 1:])
    fig.colorbar(ScalarMappable(Normalize(-1.0, 1.0), RELEVANCE_CMAP), cax=scale,
                 orientation="horizontal")
    scale.set_xlabel("relevance / max |relevance| of the image"
                     + ("; black: the mask" if masks is not None else ""), fontsize=8)
    scale.tick_params(labelsize=7)
  fig.tight_layout()
  return save_figure(fig, path, dpi)
