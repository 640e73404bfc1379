"""Locality and F_reg: SRAE's scores of its x-features (Qi & Li, "Learning explainable embeddings
for deep networks", NIPS 2017 Interpretable ML Symposium, Sec. 3; the journal version, "Embedding
deep networks into visual explanations", arXiv 1709.05360, evaluates the same way).

Locality asks whether the heatmap of one x-feature falls on few object parts. With S^{n,m} the
heatmap of x-feature n on image m normalised to a distribution over the pixels, and the object's
bounding box partitioned into Voronoi cells around the P part keypoints (the CUB part labels are
single points, so a pixel of the box belongs to the part whose keypoint is nearest),

    S_p^{n,m} = sum_{(i, j) in cell p} S_{i,j}^{n,m},     S-bar_p^n = (1/M) sum_m S_p^{n,m},
    H_n = -sum_p s_p log s_p,   s_p = S-bar_p^n / sum_q S-bar_q^n        (natural log),

and the locality of a method is the mean of H_n over its x-features: lower is more local, log P
the most spread (2.71 for CUB's 15 parts). The pieces:

* `part_cells`: the Voronoi cell of each pixel of the box (-1 outside it);
* `part_histograms`: S_p^{n,m}, one row of P cell masses per image, a metric of the
  `xjax.metrics` convention (`relevance` is the heatmap of one x-feature);
* `locality_entropy`: H_n from the rows of all M images (a dataset-level number);
* `locality`: the mean of H_n over the x-features.

F_reg (Sec. 3, metric (1)) is SRAE's faithfulness, the mean absolute error of its prediction
y-bar against the network's y-hat: `f_reg`, and per example `f_reg_errors`.

Ground truth (as `xjax.data.shapes` and `xjax.data.cub_folder` give it, in pixel units where pixel
(i, j) covers [j, j + 1) x [i, i + 1) and has its centre at (j + 0.5, i + 0.5)): `keypoints`
(B, P, 2) as (x, y), `keypoints_visible` (B, P), `bbox` (B, 4) as (x_min, y_min, x_max, y_max).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from xjax.errors import ConfigError
from xjax.metrics.relevance import per_example_metric, pixel_relevance

Array = jax.Array
ApplyFn = Callable[[Any, Array], Array]


def _is_concrete(*values: Any) -> bool:
  return not any(isinstance(v, jax.core.Tracer) for v in values)


def _check_parts(keypoints: Any, visible: Any, bbox: Any, batch: int | None = None) -> None:
  """Raises a ConfigError unless the part annotations have consistent shapes.

  `batch`: the number of images they must describe (None: that of `keypoints`).
  """
  kp_shape, vis_shape, box_shape = jnp.shape(keypoints), jnp.shape(visible), jnp.shape(bbox)
  if len(kp_shape) != 3 or kp_shape[2] != 2 or kp_shape[1] < 1:
    raise ConfigError(f"keypoints must be (x, y) of P >= 1 parts per image, shape (B, P, 2); got "
                      f"shape {kp_shape}.")
  batch = kp_shape[0] if batch is None else batch
  if kp_shape[0] != batch:
    raise ConfigError(f"keypoints must hold one row per image, shape ({batch}, P, 2); got shape "
                      f"{kp_shape}.")
  if vis_shape != kp_shape[:2]:
    raise ConfigError(f"keypoints_visible must flag each keypoint, shape {kp_shape[:2]}; got shape "
                      f"{vis_shape}.")
  if box_shape != (batch, 4):
    raise ConfigError(f"bbox must be (x_min, y_min, x_max, y_max) per image, shape ({batch}, 4); "
                      f"got shape {box_shape}.")


def _check_size(height: Any, width: Any) -> None:
  for name, value in (("height", height), ("width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ConfigError(f"{name} must be a Python int >= 1 (it fixes the shape of the cells); got "
                        f"{value!r}.")


def box_masks(bbox: Any, height: int, width: int) -> Array:
  """(B, H, W) bool: the pixels whose centres (j + 0.5, i + 0.5) lie in each box (x_min, y_min,
  x_max, y_max), edges included (`part_cells`' box)."""
  bbox = jnp.asarray(bbox, jnp.float32)
  cx = jnp.arange(width, dtype=jnp.float32) + 0.5
  cy = jnp.arange(height, dtype=jnp.float32) + 0.5
  x_min, y_min, x_max, y_max = (bbox[:, k, None, None] for k in range(4))
  return ((cx[None, None, :] >= x_min) & (cx[None, None, :] <= x_max)
          & (cy[None, :, None] >= y_min) & (cy[None, :, None] <= y_max))


def part_cells(keypoints: Any, visible: Any, bbox: Any, height: int, width: int) -> Array:
  """(B, H, W) int32 the part cell of each pixel: the Voronoi partition of the bounding box
  around the visible part keypoints (Qi & Li, SRAE, Sec. 3).

  Pixel (i, j) lies in the box iff its centre (j + 0.5, i + 0.5) does, x_min <= j + 0.5 <= x_max
  and y_min <= i + 0.5 <= y_max (with boxes of whole pixels, as `xjax.data.shapes` gives, exactly
  the pixels j_min..j_max, i_min..i_max). It belongs to the visible keypoint nearest its centre
  (Euclidean distance; equal distances go to the lower part index). Visible keypoints outside the
  box still claim the box pixels nearest them; invisible ones claim none (CUB marks them (0, 0)).

  Args:
    keypoints: (B, P, 2) float, (x, y) in pixel units.
    visible: (B, P) bool (or 0/1), which keypoints are annotated.
    bbox: (B, 4) float, (x_min, y_min, x_max, y_max) in pixel units.
    height, width: the image size H, W, Python ints (static under `jax.jit`).

  Returns:
    (B, H, W) int32: the part index in [0, P) of each pixel of the box; -1 outside the box, and
    everywhere in an image without a visible keypoint.

  Raises:
    ConfigError: shapes other than (B, P, 2), (B, P) and (B, 4); height or width not an int >= 1.
  """
  _check_parts(keypoints, visible, bbox)
  _check_size(height, width)
  keypoints = jnp.asarray(keypoints, jnp.float32)
  visible = jnp.asarray(visible) != 0
  bbox = jnp.asarray(bbox, jnp.float32)
  cx = jnp.arange(width, dtype=jnp.float32) + 0.5   # (W,) the pixel centres
  cy = jnp.arange(height, dtype=jnp.float32) + 0.5  # (H,)
  dx = cx[None, None, :, None] - keypoints[:, None, None, :, 0]  # (B, 1, W, P)
  dy = cy[None, :, None, None] - keypoints[:, None, None, :, 1]  # (B, H, 1, P)
  distances = jnp.where(visible[:, None, None, :], dx * dx + dy * dy, jnp.inf)  # (B, H, W, P)
  nearest = jnp.argmin(distances, axis=-1).astype(jnp.int32)  # the first of equal distances
  inside = box_masks(bbox, height, width) & visible.any(-1)[:, None, None]
  return jnp.where(inside, nearest, -1)


@per_example_metric
def part_histograms(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                    keypoints: Array | None = None, keypoints_visible: Array | None = None,
                    bbox: Array | None = None) -> Array:
  """(B, P) the mass of each image's heatmap in each part cell, S_p^{n,m} of SRAE's locality
  (Qi & Li, "Learning explainable embeddings for deep networks", 2017, Sec. 3, metric (2)).

  The heatmap is the positive part of the channel-summed relevance, max(sum_c R, 0) (SRAE scores
  c-MWP maps of Excitation Backprop, which are non-negative). As in the paper it is normalised
  over the whole image, S_ij = R+_ij / sum R+, and then summed over each cell of `part_cells`:
  P(Part_p | Pixel_ij) is 1 in the pixel's cell and 0 for every part outside the box, so a row
  sums to the share of the heatmap inside the box (not to 1), and an image that puts little of
  its heatmap on the object weighs little in the average of `locality_entropy`. A map without
  positive mass has no distribution: its row is 0 and it adds nothing to that average.

  This is the per-example score; the locality of the x-feature is `locality_entropy` of the rows
  of all images (lower is more local). The model is not needed: `apply_fn`, `params` and `target`
  are taken (the calling convention of `xjax.metrics`) and ignored.

  Args:
    apply_fn, params, target: ignored (the calling convention of `xjax.metrics`).
    x: the images (B, H, W, C); only their shape is used.
    relevance: the heatmap of one x-feature, (B, H, W, C) or summed over channels (B, H, W).
    keypoints: (B, P, 2) (x, y) of the part keypoints in pixel units; required (None only so
      that the metric can be bound by name without it, see `xjax.metrics.get_metric`).
    keypoints_visible: (B, P) bool, which keypoints are annotated; required.
    bbox: (B, 4) (x_min, y_min, x_max, y_max) of the object in pixel units; required.

  Returns:
    (B, P) the cell masses, each row in [0, 1] summing to the heatmap's share inside the box;
    NaN rows for images without a visible keypoint (reachable only under `jax.jit`).

  Raises:
    ConfigError: x not (B, H, W, C) or relevance of another shape; a part annotation missing or
      of the wrong shape; concrete relevance with NaN or infinity; concrete keypoints_visible
      with an image without a visible keypoint (the message lists which).
  """
  del apply_fn, params, target
  scores = pixel_relevance(x, relevance)
  missing = [name for name, value in (("keypoints", keypoints),
                                      ("keypoints_visible", keypoints_visible), ("bbox", bbox))
             if value is None]
  if missing:
    raise ConfigError(f"locality needs part annotations: pass {', '.join(missing)} (keypoints "
                      f"(B, P, 2), keypoints_visible (B, P), bbox (B, 4), in pixel units).")
  batch, height, width = scores.shape
  _check_parts(keypoints, keypoints_visible, bbox, batch)
  any_visible = jnp.asarray(keypoints_visible).reshape(batch, -1).any(-1)
  if _is_concrete(keypoints_visible):
    none = np.flatnonzero(~np.asarray(any_visible))
    if none.size:
      raise ConfigError(f"no keypoint is visible in example(s) {none[:10].tolist()}"
                        f"{' ...' if none.size > 10 else ''}: locality needs at least one part per "
                        f"image (under jax.jit their rows are NaN).")
  cells = part_cells(keypoints, keypoints_visible, bbox, height, width)
  positive = jnp.maximum(scores, 0)
  total = positive.sum(axis=(1, 2), keepdims=True)
  shares = jnp.where(total > 0, positive / jnp.where(total > 0, total, 1), 0)
  num_parts = jnp.shape(keypoints)[1]
  # one_hot of -1 (outside the box) is a row of zeros: those pixels join no cell.
  histograms = jnp.einsum("bhw,bhwp->bp", shares, jax.nn.one_hot(cells, num_parts,
                                                                  dtype=shares.dtype))
  return jnp.where(any_visible[:, None], histograms, jnp.nan)


def locality_entropy(histograms: Any) -> Array:
  """H_n, the locality of one x-feature (Qi & Li, SRAE, Sec. 3, metric (2)): the entropy of the
  normalised average of the images' cell histograms.

      S-bar_p = (1/M) sum_m S_p^m,   s_p = S-bar_p / sum_q S-bar_q,   H = -sum_p s_p log s_p,

  in nats, 0 log 0 = 0: 0 for a heatmap always in one cell, log P (2.71 for 15 parts) for one
  spread evenly over the parts. Lower is more local. A dataset-level number: pass the rows of
  all M images (`part_histograms`, concatenated over batches). NaN where no image has any mass
  inside its box (nothing to normalise), or where a row is NaN.

  Args:
    histograms: (M, P) the cell masses S_p^m of each image.

  Returns:
    () the entropy.

  Raises:
    ConfigError: histograms not (M, P) with M, P >= 1.
  """
  shape = jnp.shape(histograms)
  if len(shape) != 2 or 0 in shape:
    raise ConfigError(f"histograms must be the cell masses of each image, shape (M, P) with M, "
                      f"P >= 1; got shape {shape}.")
  mean = jnp.mean(jnp.asarray(histograms, jnp.float32), axis=0)
  share = mean / mean.sum()
  return -jnp.sum(xlogy(share, share))


def locality(histograms: Any) -> Array:
  """The locality of a method (Qi & Li, SRAE, Sec. 3 and Table 1): the mean of H_n over its
  x-features, H_n = `locality_entropy` of feature n's histograms. Lower is more local.

  Args:
    histograms: (N, M, P) the cell masses of N x-features on M images.

  Returns:
    () the mean entropy in nats, in [0, log P].

  Raises:
    ConfigError: histograms not (N, M, P) with N, M, P >= 1.
  """
  shape = jnp.shape(histograms)
  if len(shape) != 3 or 0 in shape:
    raise ConfigError(f"histograms must be the cell masses of each x-feature and image, shape "
                      f"(N, M, P) with N, M, P >= 1; got shape {shape}.")
  return jnp.mean(jax.vmap(locality_entropy)(jnp.asarray(histograms, jnp.float32)))


def _check_predictions(y_bar: Any, y_hat: Any) -> None:
  if jnp.shape(y_bar) != jnp.shape(y_hat):
    raise ConfigError(f"y_bar and y_hat must have the same shape (one prediction per example); "
                      f"got {jnp.shape(y_bar)} and {jnp.shape(y_hat)}.")


def f_reg_errors(y_bar: Any, y_hat: Any) -> Array:
  """|y-bar - y-hat| per example, the terms of SRAE's F_reg (Qi & Li, Sec. 3, metric (1)).

  Args:
    y_bar: SRAE's prediction v^T E(Z), any shape.
    y_hat: the network's prediction (the pre-softmax class score), the same shape.

  Raises:
    ConfigError: shapes differ (no broadcasting: (B,) against (B, 1) would compare all pairs).
  """
  _check_predictions(y_bar, y_hat)
  return jnp.abs(jnp.asarray(y_bar) - jnp.asarray(y_hat))


def f_reg(y_bar: Any, y_hat: Any) -> Array:
  """F_reg = (1/M) sum_m |y-bar^(m) - y-hat^(m)|, SRAE's faithfulness (Qi & Li, "Learning
  explainable embeddings for deep networks", 2017, Sec. 3, metric (1)): the mean absolute error
  of the explanation module's prediction against the network's. Lower is more faithful.

  Args:
    y_bar: SRAE's prediction v^T E(Z), one per example.
    y_hat: the network's prediction, the same shape.

  Returns:
    () the mean absolute error.

  Raises:
    ConfigError: shapes differ, or there is no example.
  """
  if jnp.size(y_bar) == 0:
    raise ConfigError("f_reg needs at least one prediction; got none.")
  return jnp.mean(f_reg_errors(y_bar, y_hat))
