"""Relevance colours and the explanation grid figure."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xjax.errors import ConfigError
from xjax.plot.heatmaps import RELEVANCE_CMAP, heatmap_rgb, plot_explanations


def test_zero_is_white_positive_red_negative_blue():
  assert RELEVANCE_CMAP(0.5)[:3] == (1.0, 1.0, 1.0)
  rgb = heatmap_rgb(np.array([[-2.0, 0.0, 1.0, 2.0]]))
  assert rgb.shape == (1, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
  negative, zero, half, positive = rgb[0]
  np.testing.assert_array_equal(zero, [1.0, 1.0, 1.0])
  assert negative[2] > max(negative[0], negative[1]) + 0.2  # blue.
  assert positive[0] > max(positive[1], positive[2]) + 0.2  # red.
  assert half[0] > max(half[1], half[2]) + 0.2
  assert half.sum() > positive.sum()  # weaker relevance is lighter.


def test_symmetric_limits_per_image():
  # Each image is scaled by its own max |h|: a 10x larger heatmap gets the same colours.
  h = np.random.default_rng(0).normal(size=(3, 5))
  rgb = heatmap_rgb(np.stack([h, 10 * h, np.zeros_like(h)]))
  np.testing.assert_allclose(rgb[0], rgb[1])
  np.testing.assert_array_equal(rgb[2], 1.0)  # an all-zero heatmap is white.
  with pytest.raises(ConfigError):
    heatmap_rgb(np.zeros((1, 3, 5, 3)))


@pytest.mark.parametrize("images", [
    np.random.default_rng(0).random((2, 8, 8, 1)),                              # grayscale [0, 1].
    np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),    # RGB uint8.
    np.random.default_rng(0).normal(size=(2, 8, 8, 3)),                         # standardised.
])
def test_plot_explanations_writes_png(tmp_path, images):
  heatmaps = {"saliency": np.random.default_rng(1).normal(size=(2, 8, 8)),
              "zeros": np.zeros((2, 8, 8))}
  path = plot_explanations(images, heatmaps, tmp_path / "sub" / "grid.png",
                           labels=["class 1", "class 2"], cell_size=1.5, dpi=80)
  assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as png:
    # (width, height) = (columns, rows) cells, and 0.6 inches for the colour scale.
    assert png.size == (3 * 1.5 * 80, (2 * 1.5 + 0.6) * 80)


def test_plot_explanations_outlines_the_mask_and_marks_mistakes(tmp_path):
  images = np.full((2, 8, 8, 3), 255, np.uint8)  # white, so the outline is all that is dark
  heatmaps = {"zeros": np.zeros((2, 8, 8))}  # white too
  masks = np.zeros((2, 8, 8), bool)
  masks[:, 2:6, 2:6] = True
  plain = plot_explanations(images, heatmaps, tmp_path / "plain.png", labels=["a", "b"])
  drawn = plot_explanations(images, heatmaps, tmp_path / "drawn.png", labels=["a", "b"],
                            masks=masks, mistakes=[False, True])
  with Image.open(plain) as a, Image.open(drawn) as b:
    a, b = np.asarray(a.convert("RGB"), int), np.asarray(b.convert("RGB"), int)
  dark = lambda png: (png.sum(-1) < 150).sum()
  assert dark(b) > dark(a)  # the outlines, on the image and the heatmap of both rows
  reddish = lambda png: ((png[..., 0] > 150) & (png[..., 1] < 100) & (png[..., 2] < 100)).sum()
  assert reddish(b) > reddish(a)  # the label of the mistaken row
  with pytest.raises(ConfigError, match="masks must have shape"):
    plot_explanations(images, heatmaps, tmp_path / "x.png", masks=masks[:1])


def test_plot_explanations_rejects_bad_shapes(tmp_path):
  images = np.zeros((2, 8, 8, 1))
  with pytest.raises(ConfigError):
    plot_explanations(images, {"lrp": np.zeros((3, 8, 8))}, tmp_path / "a.png")
  with pytest.raises(ConfigError):
    plot_explanations(images, {"lrp": np.zeros((2, 8, 8, 3))}, tmp_path / "a.png")
  with pytest.raises(ConfigError):
    plot_explanations(images, {"lrp": np.zeros((2, 8, 8))}, tmp_path / "a.png", titles=["x"])
