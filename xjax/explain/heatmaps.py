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


# Added to the total positive relevance, as Quantus 0.6.0's AttributionLocalisation does, so that
# an image without positive relevance scores 0 rather than 0 / 0.
SHARE_EPSILON = 1e-9


def positive_share(h: Array, mask: Array, *, positive_only: bool = True) -> Array:
  """The share of each image's relevance that lies inside `mask`, (B,): the one computation of
  attribution localisation (Kohlbrenner, Bauer, Nakajima, Binder, Samek, Lapuschkin, "Towards
  best practice in explaining neural network decisions with LRP", IJCNN 2020).

  `sum_{p in mask} R+_p / (sum_p R+_p + 1e-9)` with `R+ = max(h, 0)`; with `positive_only=False`
  the signed h instead. No checks: `relevance_share` and `xjax.metrics.attribution_localisation`
  check their inputs and call this.

  Args:
    h: heatmaps (B, ...).
    mask: a boolean array of the shape of `h`.
    positive_only: clip h at 0 first (the paper's definition).
  """
  axes = _image_axes(h)
  scores = jnp.maximum(h, 0) if positive_only else h
  inside = jnp.sum(jnp.where(mask, scores, 0), axis=axes)
  return inside / (jnp.sum(scores, axis=axes) + SHARE_EPSILON)


def relevance_share(h: Array, mask: Array) -> Array:
  """Attribution localisation (Kohlbrenner et al., IJCNN 2020) of heatmaps: the share of each
  image's positive relevance that lies inside `mask`, in [0, 1], (B,).

  `sum(max(h, 0) * mask) / (sum(max(h, 0)) + 1e-9)`, the same number as
  `xjax.metrics.attribution_localisation` (both call `positive_share`), here for heatmaps alone
  (no images) and with a mask that may be shared by all images. An image without positive
  relevance gets 0. This is not relevance mass accuracy (Arras et al. 2022), which takes the
  signed relevance (`xjax.metrics.relevance_mass_accuracy`).

  Args:
    h: heatmaps (B, H, W) (or any (B, ...)).
    mask: a boolean (or 0/1) array broadcastable to `h`, e.g. (B, H, W) or one (H, W) for all.
  """
  _image_axes(h)
  try:
    mask = jnp.broadcast_to(jnp.asarray(mask), jnp.shape(h))
  except ValueError as e:
    raise ConfigError(f"mask of shape {jnp.shape(mask)} does not fit heatmaps of shape "
                      f"{jnp.shape(h)}.") from e
  return positive_share(jnp.asarray(h), mask.astype(bool))
