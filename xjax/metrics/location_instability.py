"""Location instability of convolutional filters against annotated object parts.

Zhang, Wu & Zhu, "Interpretable convolutional neural networks" (CVPR 2018, Sec. 4.2) score how
consistently a filter describes one object part: a filter that responds to the same part fires at
a constant offset from it, so the distance between its peak and each part's keypoint varies
little across images. Zhang, Yang & Wu, "Unsupervised learning of neural networks to explain
neural networks" (AAAI 2019) use the same score for the filters of an explainer network. With
p_f the peak of filter f on an image (the receptive-field centre of the unit of its map with the
highest activation; `xjax.explain.receptive_field`) and q_k the keypoint of part k,

    D_{f,k} = std(||q_k - p_f||),   instability = mean_f mean_k D_{f,k} / sqrt(W^2 + H^2),

where the standard deviation (sample, ddof = 1) runs over the `top_n` images on which f fires most
strongly (its peak value) among those where part k is annotated, and the image diagonal
normalises it. Lower is better. As in the authors' release, images are ranked by the peak value
with ties kept in image order, and a (filter, part) with fewer than two images has no D
(NaN). Here such pairs are skipped in the means; in the release one such pair leaves the whole
filter out. Where every part shows on two images or more the two agree.

The pieces:

* `peak_positions`: each filter's peak, (x, y), and its value on each image of a batch;
* `location_instability`: D / diagonal per (filter, part) from the peaks of the whole dataset,
  and its means.

Coordinates are in pixel units where pixel (i, j) covers [j, j + 1) x [i, i + 1) and has its
centre at (j + 0.5, i + 0.5), as `xjax.metrics.locality` and `xjax.data.shapes` give keypoints:
`keypoints` (M, P, 2) as (x, y), `keypoints_visible` (M, P).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError

Array = jax.Array


def peak_positions(maps: Any, centres_y: Any, centres_x: Any) -> tuple[Array, Array]:
  """The peak of each filter on each image: the receptive-field centre of its strongest unit.

  Args:
    maps: (B, h, w, K) feature maps.
    centres_y, centres_x: (h,) and (w,) the receptive-field centres of the rows and columns of
      units (`xjax.explain.receptive_field.receptive_field_centres`).

  Returns:
    (positions (B, K, 2) as (x, y), values (B, K)): where each filter peaks and its activation
    there; among equal maxima the first unit in row-major order.
  """
  shape = jnp.shape(maps)
  if len(shape) != 4:
    raise ConfigError(f"maps must be feature maps of shape (B, h, w, K); got shape {shape}.")
  if jnp.shape(centres_y) != shape[1:2] or jnp.shape(centres_x) != shape[2:3]:
    raise ConfigError(f"centres_y and centres_x must hold one centre per row and column of the "
                      f"maps, shapes ({shape[1]},) and ({shape[2]},); got {jnp.shape(centres_y)} "
                      f"and {jnp.shape(centres_x)}.")
  maps = jnp.asarray(maps)
  flat = jnp.moveaxis(maps, 3, 1).reshape(shape[0], shape[3], -1)  # (B, K, h * w)
  index = jnp.argmax(flat, axis=-1)
  values = jnp.take_along_axis(flat, index[..., None], -1)[..., 0]
  row, col = jnp.divmod(index, shape[2])
  positions = jnp.stack([jnp.asarray(centres_x, jnp.float32)[col],
                         jnp.asarray(centres_y, jnp.float32)[row]], -1)
  return positions, values


def _deviation(peaks: Array, values: Array, keypoints: Array, visible: Array, top_n: int
               ) -> Array:
  """D of one filter and one part: peaks (M, 2), values (M,), keypoints (M, 2), visible (M,)."""
  index = jnp.arange(values.shape[0])
  order = jnp.lexsort((index, -values, ~visible))  # annotated first, strongest first, in order
  count = jnp.minimum(top_n, visible.sum())
  chosen = jnp.zeros(values.shape, bool).at[order].set(index < count)
  distance = jnp.linalg.norm(keypoints - peaks, axis=-1)
  n = chosen.sum()
  mean = jnp.where(chosen, distance, 0.0).sum() / jnp.maximum(n, 1)
  variance = jnp.where(chosen, (distance - mean) ** 2, 0.0).sum() / jnp.maximum(n - 1, 1)
  return jnp.where(n >= 2, jnp.sqrt(variance), jnp.nan)


def location_instability(peaks: Any, peak_values: Any, keypoints: Any, keypoints_visible: Any,
                         image_size: Sequence[int], top_n: int = 100) -> dict[str, Array]:
  """Location instability of K filters against P parts over a dataset of M images.

  Args:
    peaks: (M, K, 2) the (x, y) peak of each filter on each image (`peak_positions`).
    peak_values: (M, K) the filters' activations at their peaks, which rank the images.
    keypoints: (M, P, 2) the (x, y) of each part on each image, in the pixel units of `peaks`.
    keypoints_visible: (M, P) True where the part is annotated.
    image_size: (H, W) of the images, whose diagonal normalises the deviations.
    top_n: the number of images with the strongest peaks of a filter that count (100 in the
      papers); fewer where fewer images show the part.

  Returns:
    {"mean": the instability (a scalar), "per_filter": (K,) its mean over the parts,
     "per_part": (P,) its mean over the filters, "deviation": (K, P) D / diagonal}; NaN pairs
    (fewer than two images) are skipped in the means. Lower is better.

  Raises:
    ConfigError: inconsistent shapes, top_n not an int >= 2, or an image size below 1.
  """
  peak_shape, value_shape = jnp.shape(peaks), jnp.shape(peak_values)
  kp_shape, vis_shape = jnp.shape(keypoints), jnp.shape(keypoints_visible)
  if len(peak_shape) != 3 or peak_shape[2] != 2 or peak_shape[0] < 1 or peak_shape[1] < 1:
    raise ConfigError(f"peaks must be (x, y) of K filters per image, shape (M, K, 2); got shape "
                      f"{peak_shape}.")
  if value_shape != peak_shape[:2]:
    raise ConfigError(f"peak_values must hold one value per peak, shape {peak_shape[:2]}; got "
                      f"shape {value_shape}.")
  if len(kp_shape) != 3 or kp_shape[2] != 2 or kp_shape[0] != peak_shape[0] or kp_shape[1] < 1:
    raise ConfigError(f"keypoints must be (x, y) of P parts on each of the {peak_shape[0]} "
                      f"images, shape ({peak_shape[0]}, P, 2); got shape {kp_shape}.")
  if vis_shape != kp_shape[:2]:
    raise ConfigError(f"keypoints_visible must flag each keypoint, shape {kp_shape[:2]}; got shape "
                      f"{vis_shape}.")
  if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 2:
    raise ConfigError(f"top_n must be a Python int >= 2 (a standard deviation needs two images); "
                      f"got {top_n!r}.")
  if len(image_size) != 2 or any(not np.isscalar(n) or n < 1 for n in image_size):
    raise ConfigError(f"image_size must be (H, W) with H, W >= 1; got {image_size!r}.")
  height, width = image_size
  peaks = jnp.asarray(peaks, jnp.float32)
  values = jnp.asarray(peak_values, jnp.float32)
  keypoints = jnp.asarray(keypoints, jnp.float32)
  visible = jnp.asarray(keypoints_visible, bool)
  return _instability(peaks, values, keypoints, visible,
                      float(np.sqrt(float(height) ** 2 + float(width) ** 2)), int(top_n))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _instability(peaks: Array, values: Array, keypoints: Array, visible: Array, diagonal: float,
                 top_n: int) -> dict[str, Array]:
  over_parts = jax.vmap(_deviation, in_axes=(None, None, 1, 1, None))  # (M, 2), (M,) -> (P,)
  over_filters = jax.vmap(over_parts, in_axes=(1, 1, None, None, None))  # -> (K, P)
  deviation = over_filters(peaks, values, keypoints, visible, top_n) / diagonal
  per_filter = jnp.nanmean(deviation, axis=1)
  return {"mean": jnp.nanmean(per_filter), "per_filter": per_filter,
          "per_part": jnp.nanmean(deviation, axis=0), "deviation": deviation}
