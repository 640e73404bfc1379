"""From relevance to heatmaps: channel reductions, per-image normalisation, relevance in a mask.

Relevance arrays are NHWC, (B, H, W, C), as the explanation methods return them for images;
heatmaps are (B, H, W). Every function works per image and is safe for all-zero heatmaps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError

Array = jax.Array

NORMALIZE_MODES = ("max_abs", "sum")


def _image_axes(h: Array) -> tuple[int, ...]:
  if jnp.ndim(h) < 2:
    raise ConfigError(f"expected a batch of heatmaps (B, ...); got shape {jnp.shape(h)}.")
  return tuple(range(1, jnp.ndim(h)))


def _check_relevance(r: Array) -> None:
  if jnp.ndim(r) != 4:
    raise ConfigError(f"expected relevance of shape (B, H, W, C); got shape {jnp.shape(r)}.")


def channel_sum(r: Array) -> Array:
  """The heatmap `sum_c R[b, h, w, c]`, (B, H, W): keeps conservation (LRP, gradient x input)."""
  _check_relevance(r)
  return jnp.sum(r, axis=-1)


def channel_max_abs(r: Array) -> Array:
  """The heatmap `max_c |R[b, h, w, c]|`, (B, H, W): the saliency map of Simonyan et al. 2014,
  Sec. 3.1 (the maximum over colour channels of the absolute gradient)."""
  _check_relevance(r)
  return jnp.max(jnp.abs(r), axis=-1)


def normalize(h: Array, mode: str = "max_abs") -> Array:
  """Each image's heatmap scaled by one positive number, so heatmaps compare across images.

  Args:
    h: heatmaps (B, ...), e.g. (B, H, W).
    mode: "max_abs" divides by `max |h_b|` (values in [-1, 1], the largest magnitude is 1);
      "sum" divides by `sum |h_b|` (the absolute values sum to 1).

  Returns:
    The scaled heatmaps, shape of `h`; an all-zero heatmap stays all zero (no NaN).
  """
  if mode not in NORMALIZE_MODES:
    raise ConfigError(f"Unknown normalize mode {mode!r}; known: {', '.join(NORMALIZE_MODES)}.")
  axes = _image_axes(h)
  magnitude = jnp.abs(h)
  if mode == "max_abs":
    scale = jnp.max(magnitude, axis=axes, keepdims=True)
  else:
    scale = jnp.sum(magnitude, axis=axes, keepdims=True)
  return h / jnp.where(scale > 0, scale, 1)


def relevance_share(h: Array, mask: Array) -> Array:
  """The share of each image's positive relevance that lies inside `mask`, in [0, 1], (B,).

  `sum(max(h, 0) * mask) / sum(max(h, 0))`: the relevance mass accuracy of a ground-truth
  localisation metric (e.g. the pointing / mass tests of Quantus). An image without positive
  relevance gets 0.

  Args:
    h: heatmaps (B, H, W) (or any (B, ...)).
    mask: a boolean (or 0/1) array broadcastable to `h`, e.g. (B, H, W) or one (H, W) for all.
  """
  axes = _image_axes(h)
  try:
    mask = jnp.broadcast_to(jnp.asarray(mask), jnp.shape(h))
  except ValueError as e:
    raise ConfigError(f"mask of shape {jnp.shape(mask)} does not fit heatmaps of shape "
                      f"{jnp.shape(h)}.") from e
  positive = jnp.maximum(h, 0)
  inside = jnp.sum(jnp.where(mask.astype(bool), positive, 0), axis=axes)
  total = jnp.sum(positive, axis=axes)
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1), 0)
