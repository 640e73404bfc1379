"""SRAE's locality and F_reg: the Voronoi part cells against a brute-force loop over pixels, the
cell histograms and their entropy against a numpy reference on planted heatmaps, F_reg by hand,
jax.jit, and the one-line errors."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.locality import (
  f_reg,
  f_reg_errors,
  locality,
  locality_entropy,
  part_cells,
  part_histograms,
)

RNG = np.random.default_rng(0)


def close(a, b, atol=1e-6, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def random_parts(batch, parts, height, width, step=None):
  """Random keypoints (some invisible, some outside the box), visibility and boxes.

  `step`: snap keypoints and boxes to multiples of it (exact distances, and ties).
  """
  keypoints = RNG.uniform(-2, [width + 2, height + 2], size=(batch, parts, 2))
  visible = RNG.random((batch, parts)) < 0.7
  visible[:, 0] |= ~visible.any(-1)  # at least one visible part per image
  corners = np.sort(RNG.uniform(-1, [width + 1, height + 1], size=(batch, 2, 2)), axis=1)
  bbox = np.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], -1)
  if step:
    keypoints, bbox = np.round(keypoints / step) * step, np.round(bbox / step) * step
  return keypoints.astype(np.float32), visible, bbox.astype(np.float32)


def cells_by_loop(keypoints, visible, bbox, height, width):
  """The nearest visible keypoint of each pixel centre in the box, one pixel at a time."""
  cells = np.full((len(keypoints), height, width), -1, np.int64)
  for b in range(len(keypoints)):
    x_min, y_min, x_max, y_max = bbox[b].astype(np.float64)
    for i in range(height):
      for j in range(width):
        cx, cy = j + 0.5, i + 0.5
        if not (x_min <= cx <= x_max and y_min <= cy <= y_max):
          continue
        best, best_d = -1, math.inf
        for p in range(keypoints.shape[1]):
          if visible[b, p]:
            kx, ky = keypoints[b, p].astype(np.float64)
            d = (cx - kx) ** 2 + (cy - ky) ** 2
            if d < best_d:  # strict: equal distances keep the lower part index
              best, best_d = p, d
        cells[b, i, j] = best
  return cells


def histograms_by_loop(heatmaps, cells, parts):
  """The numpy reference: max(R, 0) normalised over the image, summed per cell."""
  rows = np.zeros((len(heatmaps), parts))
  for b, (heat, cell) in enumerate(zip(heatmaps.astype(np.float64), cells)):
    positive = np.maximum(heat, 0)
    if positive.sum() == 0:
      continue
    shares = positive / positive.sum()
    for p in range(parts):
      rows[b, p] = shares[cell == p].sum()
  return rows


def entropy_of(rows):
  mean = np.mean(rows, axis=0)
  s = mean / mean.sum()
  s = s[s > 0]
  return float(-(s * np.log(s)).sum())


def histograms(relevance, keypoints, visible, bbox, channels=None):
  relevance = np.asarray(relevance, np.float32)
  x = np.zeros((*relevance.shape[:3], channels or 1), np.float32)
  return np.asarray(part_histograms(None, None, x, None, relevance, keypoints=keypoints,
                                    keypoints_visible=visible, bbox=bbox))


# --- part_cells -----------------------------------------------------------------------------------


def test_part_cells_match_a_brute_force_loop_with_exact_ties():
  # Keypoints and boxes on whole pixels: every squared distance is exact in float32, so ties
  # (equal distances) happen and must go to the lower part index, as in the loop.
  keypoints, visible, bbox = random_parts(6, 8, 9, 11, step=1.0)
  cells = np.asarray(part_cells(keypoints, visible, bbox, 9, 11))
  assert cells.dtype == np.int32 and cells.shape == (6, 9, 11)
  np.testing.assert_array_equal(cells, cells_by_loop(keypoints, visible, bbox, 9, 11))
  assert (cells >= 0).any() and (cells == -1).any()
  # The case does hold ties inside the boxes.
  centres = np.stack(np.meshgrid(np.arange(11) + 0.5, np.arange(9) + 0.5), -1)  # (H, W, 2)
  d = ((centres[None, :, :, None] - keypoints[:, None, None]) ** 2).sum(-1)
  d = np.sort(np.where(visible[:, None, None], d, np.inf), -1)
  assert ((d[..., 0] == d[..., 1]) & (cells >= 0)).sum() >= 3


def test_part_cells_match_the_loop_on_continuous_coordinates_and_under_jit():
  keypoints, visible, bbox = random_parts(5, 7, 8, 10)
  cells = np.asarray(jax.jit(part_cells, static_argnums=(3, 4))(keypoints, visible, bbox, 8, 10))
  np.testing.assert_array_equal(cells, cells_by_loop(keypoints, visible, bbox, 8, 10))
  # Invisible keypoints own no pixel.
  for b in range(5):
    assert set(np.unique(cells[b])) - {-1} <= set(np.flatnonzero(visible[b]))


def test_whole_pixel_box_and_an_image_without_visible_keypoints():
  # Box (1, 0, 3, 2): columns 1-2 of rows 0-1; keypoints at the centres of pixels (0, 1), (1, 2).
  keypoints = np.array([[[1.5, 0.5], [2.5, 1.5]]] * 2, np.float32)
  visible = np.array([[True, True], [False, False]])
  bbox = np.array([[1, 0, 3, 2]] * 2, np.float32)
  cells = np.asarray(part_cells(keypoints, visible, bbox, 3, 4))
  np.testing.assert_array_equal(cells[0], [[-1, 0, 0, -1],    # (0, 2) ties: the lower index
                                           [-1, 0, 1, -1],    # (1, 1) ties too
                                           [-1, -1, -1, -1]])
  np.testing.assert_array_equal(cells[1], -np.ones((3, 4)))


# --- part_histograms and the entropy --------------------------------------------------------------


def test_random_heatmaps_match_the_numpy_reference_eagerly_and_under_jit():
  keypoints, visible, bbox = random_parts(6, 5, 8, 9)
  relevance = RNG.normal(size=(6, 8, 9, 3)).astype(np.float32)
  relevance[2] = -np.abs(relevance[2])  # no positive mass: a zero row
  rows = histograms(relevance, keypoints, visible, bbox, channels=3)
  cells = cells_by_loop(keypoints, visible, bbox, 8, 9)
  expected = histograms_by_loop(relevance.sum(-1), cells, 5)
  close(rows, expected)
  np.testing.assert_array_equal(rows[2], 0)
  # A row sums to the share of the positive map inside the box.
  positive = np.maximum(relevance.sum(-1), 0)
  inside = np.where(cells >= 0, positive, 0).sum((1, 2)) / np.maximum(positive.sum((1, 2)), 1e-30)
  close(rows.sum(-1), inside)
  jitted = jax.jit(lambda x, r, k, v, b: part_histograms(None, None, x, None, r, keypoints=k,
                                                         keypoints_visible=v, bbox=b))
  close(jitted(np.zeros((6, 8, 9, 3), np.float32), relevance, keypoints, visible, bbox), rows)
  close(locality_entropy(rows), entropy_of(expected))


def four_cell_image():
  """A 4x4 image, box = the whole image, 4 keypoints at the quadrant centres: 4 cells of 2x2,
  plus a second image with a box of rows 0-1 only (cells 0 and 1 of 2x2 each)."""
  keypoints = np.array([[[1, 1], [3, 1], [1, 3], [3, 3]]] * 2, np.float32)
  visible = np.ones((2, 4), bool)
  bbox = np.array([[0, 0, 4, 4], [0, 0, 4, 2]], np.float32)
  return keypoints, visible, bbox


def test_a_heatmap_in_one_cell_has_entropy_zero():
  keypoints, visible, bbox = four_cell_image()
  heat = np.zeros((2, 4, 4), np.float32)
  heat[:, 0, 2], heat[:, 1, 3] = 2.0, 1.0  # both in the top-right cell (part 1)
  heat[:, 3, 0] = -5.0  # negative relevance is clipped away
  rows = histograms(heat, keypoints, visible, bbox)
  close(rows, [[0, 1, 0, 0], [0, 1, 0, 0]])
  close(locality_entropy(rows), 0.0)


def test_a_uniform_heatmap_over_the_box_gives_the_entropy_of_the_cell_areas():
  # Cells of areas 4, 2, 2, 1 (of 9 pixels): box (0, 0, 3, 3), keypoints in the corners.
  keypoints = np.array([[[0.5, 0.5], [2.5, 0.5], [0.5, 2.5], [2.5, 2.5]]], np.float32)
  bbox = np.array([[0, 0, 3, 3]], np.float32)
  heat = np.zeros((1, 5, 5), np.float32)
  heat[0, :3, :3] = 0.7
  rows = histograms(heat, keypoints, np.ones((1, 4), bool), bbox)
  areas = np.array([4, 2, 2, 1]) / 9
  close(rows, [areas])
  close(locality_entropy(rows), -(areas * np.log(areas)).sum())


def test_mass_outside_the_box_is_dropped_after_normalising_over_the_image():
  keypoints, visible, bbox = four_cell_image()
  heat = np.zeros((2, 4, 4), np.float32)
  heat[:, 0, 0] = 1.0  # part 0, inside both boxes
  heat[:, 3, 3] = 3.0  # part 3 in the first box, outside the second
  rows = histograms(heat, keypoints, visible, bbox)
  close(rows, [[0.25, 0, 0, 0.75], [0.25, 0, 0, 0]])
  # The average (0.25, 0, 0, 0.375) normalised: (0.4, 0, 0, 0.6).
  close(locality_entropy(rows), -(0.4 * math.log(0.4) + 0.6 * math.log(0.6)))


def test_locality_is_the_mean_entropy_over_features_and_bounded_by_log_p():
  even, one = np.full((3, 15), 1 / 15), np.eye(15)[[4, 4, 4]]
  close(locality_entropy(even), math.log(15))
  assert abs(math.log(15) - 2.71) < 0.005  # the paper's maximum for CUB's 15 parts
  close(locality(np.stack([even, one])), math.log(15) / 2)
  rows = RNG.random((4, 10, 6))
  close(locality(rows), np.mean([entropy_of(r) for r in rows]))
  assert np.isnan(locality_entropy(np.zeros((2, 3))))  # no mass anywhere: undefined


# --- F_reg ----------------------------------------------------------------------------------------


def test_f_reg_by_hand():
  y_bar, y_hat = np.array([1.0, 2.5, -1.0, 0.0]), np.array([1.5, 2.0, 1.0, 0.0])
  close(f_reg_errors(y_bar, y_hat), [0.5, 0.5, 2.0, 0.0])
  close(f_reg(y_bar, y_hat), 0.75)
  close(jax.jit(f_reg)(y_bar, y_hat), 0.75)


# --- errors ---------------------------------------------------------------------------------------


def one_line(info):
  assert "\n" not in str(info.value)


def test_missing_annotations():
  keypoints, visible, bbox = four_cell_image()
  x, heat = np.zeros((2, 4, 4, 1), np.float32), np.ones((2, 4, 4), np.float32)
  with pytest.raises(ConfigError, match="locality needs part annotations: pass bbox") as info:
    part_histograms(None, None, x, None, heat, keypoints=keypoints, keypoints_visible=visible)
  one_line(info)
  with pytest.raises(ConfigError, match="pass keypoints, keypoints_visible, bbox"):
    part_histograms(None, None, x, None, heat)


@pytest.mark.parametrize("field, value, message", [
  ("keypoints", np.zeros((2, 4, 3)), r"keypoints must be \(x, y\) .* got shape \(2, 4, 3\)"),
  ("keypoints", np.zeros((3, 4, 2)), r"keypoints must hold one row per image, shape \(2, P, 2\)"),
  ("keypoints_visible", np.ones((2, 3), bool), r"keypoints_visible must flag each keypoint"),
  ("bbox", np.zeros((2, 2, 2)), r"bbox must be .* shape \(2, 4\); got shape \(2, 2, 2\)"),
])
def test_wrong_shapes(field, value, message):
  keypoints, visible, bbox = four_cell_image()
  parts = {"keypoints": keypoints, "keypoints_visible": visible, "bbox": bbox, field: value}
  with pytest.raises(ConfigError, match=message) as info:
    part_histograms(None, None, np.zeros((2, 4, 4, 1)), None, np.ones((2, 4, 4)), **parts)
  one_line(info)


def test_an_image_without_visible_keypoints_is_an_error_eagerly_and_nan_under_jit():
  keypoints, visible, bbox = four_cell_image()
  visible[1] = False
  heat = np.ones((2, 4, 4), np.float32)
  with pytest.raises(ConfigError, match=r"no keypoint is visible in example\(s\) \[1\]") as info:
    histograms(heat, keypoints, visible, bbox)
  one_line(info)
  jitted = jax.jit(lambda v: part_histograms(None, None, np.zeros((2, 4, 4, 1)), None, heat,
                                             keypoints=keypoints, keypoints_visible=v, bbox=bbox))
  rows = np.asarray(jitted(visible))
  close(rows[0], [0.25] * 4)
  assert np.isnan(rows[1]).all()


def test_other_errors():
  keypoints, visible, bbox = four_cell_image()
  with pytest.raises(ConfigError, match="relevance must have the shape of x"):
    histograms(np.ones((2, 4, 4, 2)), keypoints, visible, bbox, channels=3)
  with pytest.raises(ConfigError, match="height must be a Python int >= 1"):
    part_cells(keypoints, visible, bbox, 0, 4)
  with pytest.raises(ConfigError, match=r"histograms must be .* shape \(M, P\)"):
    locality_entropy(np.ones(5))
  with pytest.raises(ConfigError, match=r"histograms must be .* shape \(N, M, P\)"):
    locality(np.ones((2, 5)))
  with pytest.raises(ConfigError, match=r"y_bar and y_hat must have the same shape") as info:
    f_reg(np.ones(4), np.ones((4, 1)))
  one_line(info)
  with pytest.raises(ConfigError, match="at least one prediction"):
    f_reg(np.ones(0), np.ones(0))
