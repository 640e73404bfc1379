"""XNet's figures: what each draws (lines, boxes, labels), the PNGs, and errors on bad shapes."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from xjax.errors import ConfigError
from xjax.plot import xnet as plots

RNG = np.random.default_rng(0)


def test_drop_loss_curves_draw_one_line_per_neuron_with_its_history():
  histories = {"baseline": RNG.random((4, 3)), "xnet": RNG.random((4, 3))}
  fig = plots._draw_drop_loss_curves(histories, neuron_labels=["a", "b", "c"])
  axes = fig.axes
  assert [ax.get_title() for ax in axes] == ["baseline", "xnet"]
  for ax, history in zip(axes, histories.values()):
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    for j, line in enumerate(ax.get_lines()):
      np.testing.assert_array_equal(line.get_xdata(), np.arange(4))
      np.testing.assert_allclose(line.get_ydata(), history[:, j])
  plt.close(fig)
  with pytest.raises(ConfigError, match="same number of neurons"):
    plots.plot_drop_loss_curves({"a": np.zeros((3, 2)), "b": np.zeros((3, 3))}, "x.png")
  with pytest.raises(ConfigError, match="neuron_labels"):
    plots.plot_drop_loss_curves({"a": np.zeros((3, 2))}, "x.png", neuron_labels=["only one"])


def test_column_maxima_mark_the_category_of_each_neuron():
  matrix = np.array([[0.1, 0.7, 0.2],
                     [0.6, 0.2, 0.2],
                     [0.3, 0.1, 0.6]])
  np.testing.assert_array_equal(plots.column_maxima(matrix), [1, 0, 2])
  with pytest.raises(ConfigError):
    plots.column_maxima(np.zeros(3))


def test_every_figure_writes_a_png(tmp_path):
  paths = [
      plots.plot_drop_loss_curves({"baseline": RNG.random((3, 3))}, tmp_path / "a" / "f1.png"),
      plots.plot_category_activation({"xnet": np.eye(3)}, tmp_path / "f2.png",
                                     category_names=["x", "y", "z"]),
      plots.plot_category_heatmaps(
          RNG.integers(0, 256, (3, 2, 8, 8, 3), dtype=np.uint8),
          {"baseline": RNG.normal(size=(3, 2, 8, 8)), "xnet": RNG.random((3, 2, 8, 8))},
          tmp_path / "f3.png", row_labels=["x", "y", "z"], overlay=True),
      plots.plot_top_images(RNG.random((3, 9, 8, 8, 1)), tmp_path / "f5.png",
                            group_labels=["n0", "n1", "n2"], scores=RNG.random((3, 9))),
  ]
  for path in paths:
    with Image.open(path) as image:
      assert image.size[0] > 200 and image.size[1] > 100


def test_bad_shapes_are_named():
  with pytest.raises(ConfigError, match="category"):
    plots.plot_category_activation({"xnet": np.eye(3)}, "x.png", category_names=["x", "y"])
  with pytest.raises(ConfigError, match="R, N, H, W"):
    plots.plot_category_heatmaps(np.zeros((3, 2, 8, 8, 3)), {"xnet": np.zeros((3, 8, 8))},
                                 "x.png", row_labels=["x", "y", "z"])
  with pytest.raises(ConfigError, match="G, M, H, W, C"):
    plots.plot_top_images(np.zeros((9, 8, 8, 1)), "x.png", group_labels=["n0"])
