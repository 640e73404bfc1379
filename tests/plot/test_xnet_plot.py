"""XNet figures: drop-loss curves, category activation, heatmap grids and top images."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from xjax.errors import ConfigError
from xjax.plot.xnet import (
  _draw_category_activation,
  _draw_category_heatmaps,
  _draw_drop_loss_curves,
  _draw_top_images,
  column_maxima,
  plot_category_activation,
  plot_category_heatmaps,
  plot_drop_loss_curves,
  plot_top_images,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CATEGORIES = ["shadow", "bald", "bangs"]


def _png_size(path) -> tuple[int, int]:
  assert path.exists() and path.read_bytes()[:8] == PNG_MAGIC
  with Image.open(path) as png:
    return png.size


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


# Drop-loss curves.


def test_plot_drop_loss_curves_writes_png(tmp_path):
  histories = {"baseline": _rng(0).random((6, 3)), "xnet": _rng(1).random((6, 3))}
  path = plot_drop_loss_curves(histories, tmp_path / "sub" / "drop.png", neuron_labels=CATEGORIES,
                               title="drop loss", dpi=80)
  width, height = _png_size(path)
  assert (width, height) == (round(2 * 4.5 * 80), round(3.6 * 80))  # two panels side by side.


def test_drop_loss_curves_one_line_per_neuron_with_labels():
  histories = {"sum": _rng(0).random((4, 3)), "min": _rng(1).random((4, 3))}
  fig = _draw_drop_loss_curves(histories, neuron_labels=CATEGORIES)
  try:
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["sum", "min"]
    assert axes[0].get_ylabel() == "drop loss" and axes[1].get_xlabel() == "epoch"
    for ax, h in zip(axes, histories.values()):
      assert [t.get_text() for t in ax.get_legend().get_texts()] == CATEGORIES
      lines = ax.get_lines()
      np.testing.assert_array_equal(lines[0].get_xdata(), [0, 1, 2, 3])  # epoch 0 .. E.
      np.testing.assert_allclose(lines[2].get_ydata(), h[:, 2])
    assert axes[0].get_ylim() == axes[1].get_ylim()  # shared y-axis.
  finally:
    plt.close(fig)


def test_drop_loss_curves_default_labels():
  fig = _draw_drop_loss_curves({"xnet": np.zeros((3, 2))})
  try:
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["neuron 0", "neuron 1"]
  finally:
    plt.close(fig)


@pytest.mark.parametrize("histories, labels", [
    ({"a": np.zeros((5, 3)), "b": np.zeros((5, 2))}, None),   # k differs across panels.
    ({"a": np.zeros(5)}, None),                                # not (E + 1, k).
    ({}, None),                                                # no panel.
    ({"a": np.zeros((5, 3))}, ["x", "y"]),                     # 2 labels for 3 neurons.
])
def test_plot_drop_loss_curves_rejects_bad_input(tmp_path, histories, labels):
  with pytest.raises(ConfigError):
    plot_drop_loss_curves(histories, tmp_path / "a.png", neuron_labels=labels)
  assert not (tmp_path / "a.png").exists()


# Category activation.


def test_column_maxima():
  matrix = np.array([[0.1, 0.7, 0.2, 0.4],
                     [0.6, 0.2, 0.2, 0.4],
                     [0.3, 0.1, 0.6, 0.2]])
  np.testing.assert_array_equal(column_maxima(matrix), [1, 0, 2, 0])  # ties: the first row.
  with pytest.raises(ConfigError):
    column_maxima(np.zeros(3))


def test_plot_category_activation_writes_png(tmp_path):
  matrices = {"baseline": _rng(0).dirichlet(np.ones(3), size=3).T,
              "xnet": _rng(1).dirichlet(np.ones(3), size=3).T}
  path = plot_category_activation(matrices, tmp_path / "act.png", category_names=CATEGORIES,
                                  title="activation", dpi=80)
  width, height = _png_size(path)
  assert width > 2 * height > 0 and height > 200


def test_category_activation_boxes_column_maxima_and_labels():
  xnet = np.array([[0.7, 0.1],
                   [0.2, 0.3],
                   [0.1, 0.6]])
  fig = _draw_category_activation({"xnet": xnet}, category_names=CATEGORIES,
                                  neuron_labels=["n0", "n1"])
  try:
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    centres = sorted((p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2)
                     for p in boxes)
    np.testing.assert_allclose(centres, [(0, 0), (1, 2)])  # (column, row) of each maximum.
    assert all(not p.get_fill() and p.get_linewidth() == 2.5 for p in boxes)
    assert [t.get_text() for t in ax.get_yticklabels()] == CATEGORIES
    assert [t.get_text() for t in ax.get_xticklabels()] == ["n0", "n1"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in xnet.flat)
  finally:
    plt.close(fig)


@pytest.mark.parametrize("matrices, names", [
    ({"a": np.ones((3, 3)), "b": np.ones((3, 2))}, CATEGORIES),   # k differs across panels.
    ({"a": np.ones((3, 3))}, CATEGORIES[:2]),                      # K != len(category_names).
    ({"a": np.ones(3)}, CATEGORIES),                               # not 2-D.
])
def test_plot_category_activation_rejects_bad_input(tmp_path, matrices, names):
  with pytest.raises(ConfigError):
    plot_category_activation(matrices, tmp_path / "a.png", category_names=names)


# Heatmaps per category.


@pytest.mark.parametrize("overlay", [False, True])
@pytest.mark.parametrize("images", [
    _rng(0).random((3, 2, 8, 8, 1)),                                  # grayscale [0, 1].
    _rng(0).integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8),        # RGB uint8.
])
def test_plot_category_heatmaps_writes_png(tmp_path, images, overlay):
  heatmaps = {"baseline": _rng(1).normal(size=(3, 2, 8, 8)), "xnet": np.zeros((3, 2, 8, 8))}
  path = plot_category_heatmaps(images, heatmaps, tmp_path / "hm.png", row_labels=CATEGORIES,
                                overlay=overlay, dpi=50)
  width, height = _png_size(path)
  assert width > height > 100  # 3 rows x (2 examples x 3 columns).


def test_category_heatmaps_layout_titles_and_row_labels():
  images = _rng(0).random((3, 2, 8, 8, 3))
  cams = {"baseline": _rng(1).random((3, 2, 4, 4)), "xnet": _rng(2).random((3, 2, 4, 4))}
  fig = _draw_category_heatmaps(images, cams, row_labels=CATEGORIES, overlay=True)
  try:
    axes = np.array(fig.axes).reshape(3, 6)
    titles = [ax.get_title() for ax in axes[0]]
    assert titles == ["image", "baseline", "xnet"] * 2
    assert [ax.get_ylabel() for ax in axes[:, 0]] == CATEGORIES
    assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in axes.flat)
    assert len(axes[0, 1].get_images()) == 2  # grayscale image under the CAM.
    assert axes[0, 1].get_images()[1].get_alpha() == 0.5
  finally:
    plt.close(fig)


@pytest.mark.parametrize("images, heatmaps, labels", [
    (np.zeros((3, 2, 8, 8, 1)), {"xnet": np.zeros((3, 2, 8))}, CATEGORIES),        # 3-D heatmaps.
    (np.zeros((3, 2, 8, 8, 1)), {"xnet": np.zeros((3, 1, 8, 8))}, CATEGORIES),     # N differs.
    (np.zeros((3, 2, 8, 8, 1)), {"xnet": np.zeros((2, 2, 8, 8))}, CATEGORIES),     # R differs.
    (np.zeros((3, 8, 8, 1)), {"xnet": np.zeros((3, 2, 8, 8))}, CATEGORIES),        # 4-D images.
    (np.zeros((3, 2, 8, 8, 1)), {"xnet": np.zeros((3, 2, 8, 8))}, CATEGORIES[:2]),  # 2 labels.
    (np.zeros((3, 2, 8, 8, 1)), {}, CATEGORIES),                                    # no model.
])
def test_plot_category_heatmaps_rejects_bad_input(tmp_path, images, heatmaps, labels):
  with pytest.raises(ConfigError):
    plot_category_heatmaps(images, heatmaps, tmp_path / "a.png", row_labels=labels)


# Top images per neuron.


def test_plot_top_images_writes_png(tmp_path):
  images = _rng(0).integers(0, 256, (3, 9, 8, 8, 1), dtype=np.uint8)
  path = plot_top_images(images, tmp_path / "top.png", group_labels=CATEGORIES,
                         scores=_rng(1).random((3, 9)), title="top 9", dpi=60)
  width, height = _png_size(path)
  assert width == round(3 * (3 * 1.1 + 0.4) * 60) and height > 150


def test_top_images_blocks_labels_and_scores():
  scores = np.arange(10, dtype=float).reshape(2, 5) / 10
  fig = _draw_top_images(_rng(0).random((2, 5, 8, 8, 3)), group_labels=["n0", "n1"],
                         scores=scores)
  try:
    assert [sub.get_suptitle() for sub in fig.subfigs] == ["n0", "n1"]
    first = fig.subfigs[0].axes
    assert len(first) == 6  # 5 images in 2 rows of ceil(sqrt(5)) = 3.
    assert [len(ax.get_images()) for ax in first] == [1, 1, 1, 1, 1, 0]
    assert [ax.get_title() for ax in fig.subfigs[1].axes[:5]] == ["0.50", "0.60", "0.70", "0.80",
                                                                  "0.90"]
  finally:
    plt.close(fig)


@pytest.mark.parametrize("images, labels, scores", [
    (np.zeros((3, 8, 8)), CATEGORIES, None),                  # 3-D images.
    (np.zeros((3, 9, 8, 8, 1)), CATEGORIES[:2], None),        # 2 labels for 3 groups.
    (np.zeros((3, 9, 8, 8, 1)), CATEGORIES, np.zeros((3, 8))),  # scores not (G, M).
])
def test_plot_top_images_rejects_bad_input(tmp_path, images, labels, scores):
  with pytest.raises(ConfigError):
    plot_top_images(images, tmp_path / "a.png", group_labels=labels, scores=scores)
