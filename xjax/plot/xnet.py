"""XNet figures: drop-loss curves, category activations, heatmap grids and top images.

The figures of David & Liu, "XNet": an explainable dense layer of k neurons is trained so that
dropping neuron j hurts the classification of images of category j (the drop loss DL_j).

* `plot_drop_loss_curves`: per-neuron drop loss against epoch, one panel per run (Figs. 1, 7, 8).
* `plot_category_activation`: category x neuron activation share, column maxima boxed in blue
  (Fig. 2).
* `plot_category_heatmaps`: images with each model's saliency map or class activation map, one row
  per category (Figs. 3, 4).
* `plot_top_images`: the images that give each neuron its highest drop loss, one square block per
  neuron (Figs. 5, 6).

Each `plot_*` function validates its input (raising `ConfigError`), saves a PNG (creating parent
folders) and returns the path; the `_draw_*` helpers return the figure, a bare
`matplotlib.figure.Figure` (see `xjax.plot.heatmaps`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from xjax.errors import ConfigError
from xjax.plot.heatmaps import _displayable_image, heatmap_rgb, save_figure

DEFAULT_DPI = 110


def _neuron_labels(neuron_labels: Sequence[str] | None, k: int) -> list[str]:
  """The given labels (checked to be k of them), or "neuron 0" ... "neuron k-1"."""
  if neuron_labels is None:
    return [f"neuron {j}" for j in range(k)]
  if len(neuron_labels) != k:
    raise ConfigError(f"neuron_labels needs {k} entries (one per neuron); got "
                      f"{len(neuron_labels)}.")
  return list(neuron_labels)


# Drop-loss curves (Figs. 1, 7, 8).


def _check_histories(histories: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The histories as float arrays, checked to be (E + 1, k) with one k for all panels."""
  if not histories:
    raise ConfigError("histories is empty; give at least one panel name -> (E + 1, k) array.")
  arrays = {name: np.asarray(h, dtype=np.float64) for name, h in histories.items()}
  for name, h in arrays.items():
    if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] == 0:
      raise ConfigError(f"histories[{name!r}] must have shape (E + 1, k) (epoch x neuron); got "
                        f"{h.shape}.")
  widths = {name: h.shape[1] for name, h in arrays.items()}
  if len(set(widths.values())) != 1:
    raise ConfigError(f"all histories need the same number of neurons k; got {widths}.")
  return arrays


def _draw_drop_loss_curves(histories: Mapping[str, np.ndarray], *,
                           neuron_labels: Sequence[str] | None = None,
                           title: str = "") -> Figure:
  """The figure of `plot_drop_loss_curves`, left open; see there for the arguments."""
  arrays = _check_histories(histories)
  k = next(iter(arrays.values())).shape[1]
  labels = _neuron_labels(neuron_labels, k)
  fig = Figure(figsize=(4.5 * len(arrays), 3.6))
  axes = fig.subplots(1, len(arrays), sharey=True, squeeze=False)
  for ax, (name, h) in zip(axes[0], arrays.items()):
    epochs = np.arange(h.shape[0])
    for j in range(k):
      ax.plot(epochs, h[:, j], "-o", markersize=3, label=labels[j])
    ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0, 0].set_ylabel("drop loss")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_drop_loss_curves(histories: Mapping[str, np.ndarray], path: str | Path, *,
                          neuron_labels: Sequence[str] | None = None, title: str = "",
                          dpi: int = DEFAULT_DPI) -> Path:
  """Saves per-neuron drop loss against epoch, one panel per run, side by side (Figs. 1, 7, 8).

  Args:
    histories: panel name (e.g. "baseline", "xnet") -> drop losses (E + 1, k): row 0 before
      training, row e after epoch e, one column per neuron. All panels need the same k.
    path: where to write the PNG (parent folders are created).
    neuron_labels: k legend entries; default "neuron 0" ... "neuron k-1".
    title: a title over all panels.
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.

  Raises:
    ConfigError: a history that is not 2-D, differing k, or the wrong number of labels.
  """
  fig = _draw_drop_loss_curves(histories, neuron_labels=neuron_labels, title=title)
  return save_figure(fig, path, dpi)


# Category activation (Fig. 2).


def column_maxima(matrix: np.ndarray) -> np.ndarray:
  """The row index of the largest entry of each column of a 2-D matrix (first one on ties)."""
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] == 0:
    raise ConfigError(f"expected a non-empty 2-D matrix; got shape {matrix.shape}.")
  return np.argmax(matrix, axis=0)


def _check_matrices(matrices: Mapping[str, np.ndarray],
                    num_categories: int) -> dict[str, np.ndarray]:
  """The matrices as float arrays, checked to be (K categories, k neurons) with one k for all."""
  if not matrices:
    raise ConfigError("matrices is empty; give at least one panel name -> (K, k) matrix.")
  arrays = {name: np.asarray(m, dtype=np.float64) for name, m in matrices.items()}
  for name, m in arrays.items():
    if m.ndim != 2 or m.shape[0] != num_categories or m.shape[1] == 0:
      raise ConfigError(f"matrices[{name!r}] must have shape (K, k) with K = {num_categories} "
                        f"(one row per category name); got {m.shape}.")
  widths = {name: m.shape[1] for name, m in arrays.items()}
  if len(set(widths.values())) != 1:
    raise ConfigError(f"all matrices need the same number of neurons k; got {widths}.")
  return arrays


def _annotate_cells(ax, matrix: np.ndarray, vmax: float) -> None:
  """Writes each cell's value (2 decimals), white on dark cells, black on light ones."""
  for (i, j), value in np.ndenumerate(matrix):
    colour = "white" if value > 0.6 * vmax else "black"
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color=colour)


def _box_column_maxima(ax, matrix: np.ndarray) -> None:
  """Outlines the largest cell of each column with a blue square (slightly inset)."""
  for j, i in enumerate(column_maxima(matrix)):
    ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, edgecolor="blue", linewidth=2.5,
                           fill=False))


def _draw_category_activation(matrices: Mapping[str, np.ndarray], *,
                              category_names: Sequence[str],
                              neuron_labels: Sequence[str] | None = None,
                              title: str = "") -> Figure:
  """The figure of `plot_category_activation`, left open; see there for the arguments."""
  arrays = _check_matrices(matrices, len(category_names))
  num_categories, k = next(iter(arrays.values())).shape
  labels = _neuron_labels(neuron_labels, k)
  vmax = max(float(m.max()) for m in arrays.values())
  vmax = vmax if vmax > 0 else 1.0
  cell = 0.9
  width = len(arrays) * (k * cell + 1.8) + 1.0
  fig = Figure(figsize=(width, num_categories * cell + 1.6), layout="constrained")
  axes = fig.subplots(1, len(arrays), squeeze=False)
  for ax, (name, m) in zip(axes[0], arrays.items()):
    image = ax.imshow(m, cmap="Reds", vmin=0.0, vmax=vmax)
    _annotate_cells(ax, m, vmax)
    _box_column_maxima(ax, m)
    ax.set_xticks(range(k), labels, fontsize=8, rotation=30 if k > 4 else 0)
    ax.set_yticks(range(num_categories), list(category_names), fontsize=8)
    ax.set_title(name)
  fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
  if title:
    fig.suptitle(title)
  return fig


def plot_category_activation(matrices: Mapping[str, np.ndarray], path: str | Path, *,
                             category_names: Sequence[str],
                             neuron_labels: Sequence[str] | None = None, title: str = "",
                             dpi: int = DEFAULT_DPI) -> Path:
  """Saves category x neuron activation heatmaps, column maxima boxed in blue (Fig. 2).

  Args:
    matrices: panel name (e.g. "baseline", "xnet") -> (K categories, k neurons) activations,
      already normalised per neuron (columns sum to 1). Shown with one colour scale, 0 to the
      largest value over all panels.
    path: where to write the PNG (parent folders are created).
    category_names: K row labels.
    neuron_labels: k column labels; default "neuron 0" ... "neuron k-1".
    title: a title over all panels.
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.

  Raises:
    ConfigError: a matrix that is not (K, k) with K = len(category_names), differing k, or the
      wrong number of neuron labels.
  """
  fig = _draw_category_activation(matrices, category_names=category_names,
                                  neuron_labels=neuron_labels, title=title)
  return save_figure(fig, path, dpi)


# Heatmaps per category (Figs. 3, 4).


def _check_category_heatmaps(images: np.ndarray,
                             heatmaps: Mapping[str, np.ndarray],
                             row_labels: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """The images (R, N, H, W, C) and heatmaps (R, N, h, w), checked to agree on R and N."""
  images = np.asarray(images)
  if images.ndim != 5:
    raise ConfigError(f"images must have shape (R, N, H, W, C) (rows x examples); got "
                      f"{images.shape}.")
  if not heatmaps:
    raise ConfigError("heatmaps is empty; give at least one model name -> (R, N, H, W) array.")
  arrays = {name: np.asarray(h, dtype=np.float64) for name, h in heatmaps.items()}
  for name, h in arrays.items():
    if h.ndim != 4 or h.shape[:2] != images.shape[:2]:
      raise ConfigError(f"heatmaps[{name!r}] must have shape (R, N, H, W) with (R, N) = "
                        f"{images.shape[:2]}; got {h.shape}.")
  if len(row_labels) != images.shape[0]:
    raise ConfigError(f"row_labels needs {images.shape[0]} entries (one per row); got "
                      f"{len(row_labels)}.")
  return images, arrays


def _grayscale(image: np.ndarray) -> np.ndarray:
  """A displayable (H, W) image in [0, 1]: RGB averaged with luminance weights."""
  image, _ = _displayable_image(image)
  if image.ndim == 3:
    image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
  return image


def _unit_scaled(heatmap: np.ndarray) -> np.ndarray:
  """The non-negative part of a heatmap divided by its maximum (all zero stays zero)."""
  heatmap = np.maximum(heatmap, 0.0)
  peak = heatmap.max()
  return heatmap / peak if peak > 0 else heatmap


def _show_overlay(ax, image: np.ndarray, heatmap: np.ndarray) -> None:
  """The image in grayscale under the heatmap in "jet" at alpha 0.5, stretched to the image."""
  gray = _grayscale(image)
  height, width = gray.shape
  ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0)
  ax.imshow(_unit_scaled(heatmap), cmap="jet", vmin=0.0, vmax=1.0, alpha=0.5,
            extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="bilinear")


def _draw_category_heatmaps(images: np.ndarray, heatmaps: Mapping[str, np.ndarray], *,
                            row_labels: Sequence[str], title: str = "",
                            overlay: bool = False) -> Figure:
  """The figure of `plot_category_heatmaps`, left open; see there for the arguments."""
  images, arrays = _check_category_heatmaps(images, heatmaps, row_labels)
  num_rows, num_examples = images.shape[:2]
  group = 1 + len(arrays)
  cell = 1.6
  fig = Figure(figsize=(num_examples * group * cell + 0.6, num_rows * cell + 0.6))
  axes = fig.subplots(num_rows, num_examples * group, squeeze=False)
  for r in range(num_rows):
    for n in range(num_examples):
      image_ax = axes[r, n * group]
      image, cmap = _displayable_image(images[r, n])
      image_ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
      for m, (name, h) in enumerate(arrays.items(), start=1):
        ax = axes[r, n * group + m]
        if overlay:
          _show_overlay(ax, images[r, n], h[r, n])
        else:
          ax.imshow(heatmap_rgb(h[r, n]), interpolation="nearest")
        if r == 0:
          ax.set_title(name, fontsize=9)
      if r == 0:
        image_ax.set_title("image", fontsize=9)
    axes[r, 0].set_ylabel(row_labels[r], fontsize=9)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_category_heatmaps(images: np.ndarray, heatmaps: Mapping[str, np.ndarray],
                           path: str | Path, *, row_labels: Sequence[str], title: str = "",
                           overlay: bool = False, dpi: int = DEFAULT_DPI) -> Path:
  """Saves images beside each model's heatmaps, one row per category (Figs. 3, 4).

  Each example takes a group of columns: the image, then one heatmap per model, in the order of
  `heatmaps`.

  Args:
    images: (R, N, H, W, C): R rows (one per category) of N examples; uint8, or floats (in
      [0, 1] shown as they are, otherwise min-max scaled per image). C is 1 or 3.
    heatmaps: model name (e.g. "baseline", "xnet") -> heatmaps (R, N, H, W).
    path: where to write the PNG (parent folders are created).
    row_labels: R texts written left of the rows (e.g. category names).
    title: a title over the grid.
    overlay: False (saliency, Fig. 3): heatmaps alone, red positive, blue negative, white at 0,
      scaled per heatmap. True (class activation maps, Fig. 4): the non-negative part of each
      heatmap, scaled to [0, 1] per image, in "jet" at alpha 0.5 over the grayscale image
      (heatmaps of another size are stretched over the image).
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.

  Raises:
    ConfigError: images not 5-D, heatmaps not 4-D or not matching (R, N), or the wrong number
      of row labels.
  """
  fig = _draw_category_heatmaps(images, heatmaps, row_labels=row_labels, title=title,
                                overlay=overlay)
  return save_figure(fig, path, dpi)


# Top images per neuron (Figs. 5, 6).


def _check_top_images(images: np.ndarray, group_labels: Sequence[str],
                      scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
  """The images (G, M, H, W, C) and scores (G, M) or None, checked to agree."""
  images = np.asarray(images)
  if images.ndim != 5 or images.shape[1] == 0:
    raise ConfigError(f"images must have shape (G, M, H, W, C) (groups x images); got "
                      f"{images.shape}.")
  if len(group_labels) != images.shape[0]:
    raise ConfigError(f"group_labels needs {images.shape[0]} entries (one per group); got "
                      f"{len(group_labels)}.")
  if scores is not None:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != images.shape[:2]:
      raise ConfigError(f"scores must have shape (G, M) = {images.shape[:2]}; got "
                        f"{scores.shape}.")
  return images, scores


def _draw_top_images(images: np.ndarray, *, group_labels: Sequence[str],
                     scores: np.ndarray | None = None, title: str = "") -> Figure:
  """The figure of `plot_top_images`, left open; see there for the arguments."""
  images, scores = _check_top_images(images, group_labels, scores)
  num_groups, per_group = images.shape[:2]
  side = math.ceil(math.sqrt(per_group))
  rows = math.ceil(per_group / side)  # e.g. 9 -> 3 x 3, 5 -> 2 rows of 3.
  cell = 1.1
  height = rows * cell + 0.7 + (0.4 if title else 0.0)
  fig = Figure(figsize=(num_groups * (side * cell + 0.4), height), layout="constrained")
  blocks = fig.subfigures(1, num_groups, squeeze=False, wspace=0.04)[0]
  for g, block in enumerate(blocks):
    block.suptitle(group_labels[g], fontsize=10)
    axes = block.subplots(rows, side, squeeze=False)
    for m, ax in enumerate(axes.flat):
      ax.set_axis_off()
      if m >= per_group:
        continue
      image, cmap = _displayable_image(images[g, m])
      ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0)
      if scores is not None:
        ax.set_title(f"{scores[g, m]:.2f}", fontsize=7, pad=2)
  if title:
    fig.suptitle(title)
  return fig


def plot_top_images(images: np.ndarray, path: str | Path, *, group_labels: Sequence[str],
                    scores: np.ndarray | None = None, title: str = "",
                    dpi: int = DEFAULT_DPI) -> Path:
  """Saves groups of images side by side, each a square block with its label (Figs. 5, 6).

  Args:
    images: (G, M, H, W, C): G groups (e.g. the neurons of the explainable layer) of M images
      (e.g. the top 9 by drop loss), drawn row by row in a block ceil(sqrt(M)) images wide (a
      3 x 3 square for M = 9); uint8, or floats (in [0, 1] shown as they are, otherwise min-max
      scaled per image). C is 1 or 3.
    path: where to write the PNG (parent folders are created).
    group_labels: G texts written above the blocks.
    scores: (G, M) values (e.g. drop losses) written above each image with 2 decimals.
    title: a title over all blocks.
    dpi: dots per inch of the PNG.

  Returns:
    The path of the PNG.

  Raises:
    ConfigError: images not 5-D, scores not (G, M), or the wrong number of group labels.
  """
  fig = _draw_top_images(images, group_labels=group_labels, scores=scores, title=title)
  return save_figure(fig, path, dpi)
