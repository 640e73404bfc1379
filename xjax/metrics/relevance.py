"""The explanation a metric scores, checked against its images: one place for every metric.

Every metric takes `x` (B, H, W, C) and the relevance of each input element, (B, H, W, C), or of
each pixel, (B, H, W) (channels already summed).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError


def checked_relevance(x: Any, relevance: Any) -> jax.Array:
  """`relevance` as a float array after checking it fits the images `x`.

  Raises:
    ConfigError: x not (B, H, W, C), or relevance neither x's shape nor (B, H, W).
  """
  if jnp.ndim(x) != 4:
    raise ConfigError(f"x must be a batch of images (B, H, W, C); got shape {jnp.shape(x)}.")
  x_shape, shape = tuple(jnp.shape(x)), tuple(jnp.shape(relevance))
  if shape not in (x_shape, x_shape[:3]):
    raise ConfigError(f"relevance must have the shape of x {x_shape} or, summed over channels, "
                      f"{x_shape[:3]}; got shape {shape}.")
  relevance = jnp.asarray(relevance)
  if not jnp.issubdtype(relevance.dtype, jnp.floating):
    relevance = relevance.astype(jnp.float32)
  return relevance


def pixel_relevance(x: Any, relevance: Any) -> jax.Array:
  """(B, H, W) the relevance of each pixel: the sum of its channels' (after the checks above)."""
  relevance = checked_relevance(x, relevance)
  return relevance.sum(-1) if relevance.ndim == 4 else relevance
