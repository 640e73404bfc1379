"""The explanation a metric scores, checked against its images: one place for every metric.

Every metric takes `x` (B, H, W, C) and the relevance of each input element, (B, H, W, C), or of
each pixel, (B, H, W) (channels already summed).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError


def check_images(x: Any) -> None:
  """Raises a ConfigError unless x is a batch of images (B, H, W, C)."""
  if jnp.ndim(x) != 4:
    raise ConfigError(f"x must be a batch of images (B, H, W, C); got shape {jnp.shape(x)}.")


def checked_relevance(x: Any, relevance: Any) -> jax.Array:
  """`relevance` as a float array after checking it fits the images `x`.

  Raises:
    ConfigError: x not (B, H, W, C); relevance neither x's shape nor (B, H, W); a concrete
      relevance (outside `jax.jit`) holding NaN or infinity (the message lists the examples).
  """
  check_images(x)
  x_shape, shape = tuple(jnp.shape(x)), tuple(jnp.shape(relevance))
  if shape not in (x_shape, x_shape[:3]):
    raise ConfigError(f"relevance must have the shape of x {x_shape} or, summed over channels, "
                      f"{x_shape[:3]}; got shape {shape}.")
  if not isinstance(relevance, jax.core.Tracer):
    # A NaN would sort anywhere in a ranking and spread through every sum: the score would be
    # quietly meaningless. A traced relevance cannot be inspected (its NaNs reach the scores).
    finite = np.isfinite(np.asarray(relevance, np.float64)).reshape(shape[0], -1).all(-1)
    if not finite.all():
      bad = np.flatnonzero(~finite)
      raise ConfigError(f"relevance holds NaN or infinity in example(s) {bad[:10].tolist()}"
                        f"{' ...' if bad.size > 10 else ''}: the method failed on them.")
  relevance = jnp.asarray(relevance)
  if not jnp.issubdtype(relevance.dtype, jnp.floating):
    relevance = relevance.astype(jnp.float32)
  return relevance


def pixel_relevance(x: Any, relevance: Any) -> jax.Array:
  """(B, H, W) the relevance of each pixel: the sum of its channels' (after the checks above)."""
  relevance = checked_relevance(x, relevance)
  return relevance.sum(-1) if relevance.ndim == 4 else relevance


def check_explain(explain: Any) -> None:
  """Raises a ConfigError unless `explain` is callable: the method a metric re-runs."""
  if not callable(explain):
    raise ConfigError(f"explain must be a function explain(params, x, target) -> relevance; "
                      f"got {explain!r}.")


def recomputed_relevance(explained: Any, inputs: Any, relevance: jax.Array) -> jax.Array:
  """The output of a re-run method, `explained` for `inputs`, shaped like `relevance`'s examples.

  Where `relevance` is per pixel (B, H, W) and the method returns the inputs' shape, its channels
  are summed, so that like is compared with like.

  Raises:
    ConfigError: `explained` has neither shape.
  """
  explained = jnp.asarray(explained)
  if explained.shape == jnp.shape(inputs) and relevance.ndim == 3:
    explained = explained.sum(-1)
  expected = (jnp.shape(inputs)[0], *relevance.shape[1:])
  if explained.shape != expected:
    raise ConfigError(f"explain returned shape {explained.shape} for {expected[0]} images; "
                      f"expected the relevance's per-example shape {relevance.shape[1:]}.")
  return explained


def relevance_ranks(scores: jax.Array, order: str) -> jax.Array:
  """(B, N) the step rank of each of N scored items (pixels, patches): 0 is replaced first.

  `argsort` of the (negated) scores lists the items in order; `argsort` of that list inverts the
  permutation, giving each item its position. Both sorts are stable, so equal relevance is broken
  by the item's index (the lower first) in either order.
  """
  key = -scores if order == "most_relevant_first" else scores
  return jnp.argsort(jnp.argsort(key, axis=-1, stable=True), axis=-1, stable=True)
