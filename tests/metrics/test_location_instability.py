"""Location instability: peaks by hand, the metric against a plain numpy loop over filters and
parts (the authors' procedure), planted peaks (a filter locked to a part scores 0, a wandering
one does not), hand-computed tiny cases, jax.jit, and the one-line errors."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.location_instability import location_instability, peak_positions

RNG = np.random.default_rng(0)


def reference(peaks, values, keypoints, visible, image_size, top_n):
  """(K, P) D / diagonal by loops: rank the images by the filter's peak value (ties in image
  order), keep the top_n where the part is annotated, the sample std of the distances."""
  m, k, _ = peaks.shape
  parts = keypoints.shape[1]
  out = np.full((k, parts), np.nan)
  for f in range(k):
    ranked = sorted(range(m), key=lambda i: -values[i, f])  # sorted() is stable
    for p in range(parts):
      chosen = [i for i in ranked if visible[i, p]][:top_n]
      if len(chosen) >= 2:
        distances = [math.dist(keypoints[i, p], peaks[i, f]) for i in chosen]
        out[f, p] = np.std(distances, ddof=1)
  return out / math.hypot(*image_size)


def test_peak_positions_by_hand():
  maps = np.zeros((2, 3, 4, 2), np.float32)
  maps[0, 1, 2, 0] = 5.0  # image 0, filter 0: row 1, column 2
  maps[0, 2, 0, 1] = maps[0, 0, 3, 1] = 1.0  # a tie: the first in row-major order wins
  maps[1, :, :, 0] = -1.0  # all equal: the first unit
  maps[1, 2, 3, 1] = 7.0
  centres_y, centres_x = np.array([2.0, 6.0, 10.0]), np.array([1.5, 3.5, 5.5, 7.5])
  positions, values = peak_positions(maps, centres_y, centres_x)
  np.testing.assert_array_equal(positions, [[[5.5, 6.0], [7.5, 2.0]], [[1.5, 2.0], [7.5, 10.0]]])
  np.testing.assert_array_equal(values, [[5.0, 1.0], [-1.0, 7.0]])


def test_hand_computed():
  peaks = np.zeros((3, 1, 2))
  keypoints = np.array([[[1.0, 0.0]], [[0.0, 2.0]], [[3.0, 0.0]]])  # distances 1, 2, 3
  values = np.array([[3.0], [1.0], [2.0]])
  visible = np.ones((3, 1), bool)
  size = (3, 4)  # diagonal 5
  result = location_instability(peaks, values, keypoints, visible, size, top_n=3)
  np.testing.assert_allclose(result["mean"], 1.0 / 5, rtol=1e-6)  # std(1, 2, 3) = 1
  # top 2 by value: images 0 and 2, distances 1 and 3: std sqrt(2).
  result = location_instability(peaks, values, keypoints, visible, size, top_n=2)
  np.testing.assert_allclose(result["mean"], math.sqrt(2) / 5, rtol=1e-6)
  # Part not annotated on image 0: images 2 and 1, distances 3 and 2.
  result = location_instability(peaks, values, keypoints, ~np.eye(3, 1, dtype=bool), size, top_n=2)
  np.testing.assert_allclose(result["mean"], math.sqrt(0.5) / 5, rtol=1e-6)
  # Annotated on one image only: no deviation (NaN), and no mean.
  result = location_instability(peaks, values, keypoints, np.eye(3, 1, dtype=bool), size)
  assert np.isnan(result["deviation"]).all() and np.isnan(result["mean"])


def test_against_numpy_reference():
  m, k, parts, size = 40, 5, 3, (20, 30)
  peaks = RNG.uniform(0, 30, (m, k, 2))
  values = RNG.integers(0, 6, (m, k)).astype(np.float32)  # many ties
  keypoints = RNG.uniform(0, 20, (m, parts, 2))
  visible = RNG.random((m, parts)) < 0.6
  visible[:, 2] = False
  visible[7, 2] = visible[30, 2] = visible[31, 2] = True  # part 2: three images only
  for top_n in (2, 10, 100):
    result = location_instability(peaks, values, keypoints, visible, size, top_n=top_n)
    expected = reference(peaks, values, keypoints, visible, size, top_n)
    np.testing.assert_allclose(result["deviation"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["per_filter"], expected.mean(1), rtol=1e-5)
    np.testing.assert_allclose(result["per_part"], expected.mean(0), rtol=1e-5)
    np.testing.assert_allclose(result["mean"], expected.mean(), rtol=1e-5)
  # NaN pairs are skipped: with top_n=2 and part 2 on three images, all pairs have two images;
  # make part 2 appear once and its column is NaN, the means over the rest.
  visible[30:32, 2] = False
  result = location_instability(peaks, values, keypoints, visible, size, top_n=10)
  expected = reference(peaks, values, keypoints, visible, size, 10)
  assert np.isnan(expected[:, 2]).all()
  np.testing.assert_allclose(result["per_filter"], expected[:, :2].mean(1), rtol=1e-5)
  assert np.isnan(result["per_part"][2])
  np.testing.assert_allclose(result["mean"], expected[:, :2].mean(), rtol=1e-5)
  jitted = jax.jit(location_instability, static_argnames=("image_size", "top_n"))
  again = jitted(peaks, values, keypoints, visible, image_size=size, top_n=10)
  np.testing.assert_allclose(again["deviation"], result["deviation"], rtol=1e-6)


def test_planted_peaks():
  """Filter 0 fires at a fixed offset from part 0, filter 1 anywhere: 0 against a clear > 0."""
  m, h, w = 30, 12, 16
  keypoint_cells = np.stack([RNG.integers(0, h - 2, (m, 2)), RNG.integers(0, w - 3, (m, 2))], -1)
  maps = RNG.uniform(0, 1, (m, h, w, 2)).astype(np.float32)
  rows, cols = keypoint_cells[:, 0, 0], keypoint_cells[:, 0, 1]
  maps[np.arange(m), rows + 2, cols + 3, 0] = 2.0 + RNG.uniform(0, 1, m)  # 2 rows, 3 columns away
  centres_y, centres_x = 2.0 * np.arange(h) + 1.0, 2.0 * np.arange(w) + 1.0  # stride-2 units
  peaks, values = peak_positions(maps, centres_y, centres_x)
  keypoints = np.stack([centres_x[keypoint_cells[..., 1]], centres_y[keypoint_cells[..., 0]]], -1)
  visible = np.ones((m, 2), bool)
  size = (2 * h, 2 * w)
  result = location_instability(peaks, values, keypoints, visible, size, top_n=20)
  expected = reference(np.asarray(peaks), np.asarray(values), keypoints, visible, size, 20)
  np.testing.assert_allclose(result["deviation"], expected, rtol=1e-5, atol=1e-6)
  assert abs(float(result["deviation"][0, 0])) < 1e-6  # always sqrt(6^2 + 4^2) from part 0
  assert float(result["deviation"][1, 0]) > 0.1  # about 0.2 for uniform peaks
  assert float(result["per_filter"][1]) > 0.1 and float(result["per_filter"][0]) > 0.05
  assert float(result["per_part"][0]) < float(result["per_part"][1])


def test_errors():
  peaks, values = np.zeros((4, 2, 2)), np.zeros((4, 2))
  keypoints, visible = np.zeros((4, 3, 2)), np.ones((4, 3), bool)
  with pytest.raises(ConfigError, match="top_n"):
    location_instability(peaks, values, keypoints, visible, (8, 8), top_n=1)
  with pytest.raises(ConfigError, match="peak_values"):
    location_instability(peaks, values[:, :1], keypoints, visible, (8, 8))
  with pytest.raises(ConfigError, match="keypoints must"):
    location_instability(peaks, values, keypoints[:3], visible, (8, 8))
  with pytest.raises(ConfigError, match="keypoints_visible"):
    location_instability(peaks, values, keypoints, visible[:, :2], (8, 8))
  with pytest.raises(ConfigError, match="image_size"):
    location_instability(peaks, values, keypoints, visible, (8, 0))
  with pytest.raises(ConfigError, match="maps"):
    peak_positions(np.zeros((2, 3, 4)), np.zeros(3), np.zeros(4))
  with pytest.raises(ConfigError, match="centres_y"):
    peak_positions(np.zeros((2, 3, 4, 1)), np.zeros(4), np.zeros(3))
