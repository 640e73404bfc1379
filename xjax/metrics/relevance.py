"""The explanation a metric scores, checked against its images: one place for every metric.

Every metric takes `x` (B, H, W, C) and the relevance of each input element, (B, H, W, C), or of
each pixel, (B, H, W) (channels already summed).

Every registered metric is decorated with `per_example_metric`: outside `jax.jit` a class index
outside the model's outputs or relevance holding NaN or infinity is a `ConfigError`; under `jit`
(where values cannot be looked at) the scores and curves of such an example are NaN, never a
finite number computed from a zero seed or from NaNs sorted somewhere into a ranking (the same
mechanism as the methods', `xjax.explain.targets`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import checked_examples, poison_examples, valid_examples


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


def per_example_metric(metric: Callable) -> Callable:
  """Decorates `metric(apply_fn, params, x, target, relevance, **options)` with the checks every
  metric shares; the result of an invalid example is NaN (see the module docstring).

  `apply_fn` or `target` may be None for the metrics that ignore them (localisation, complexity):
  then the target is not checked.
  """

  @functools.wraps(metric)
  def checked(apply_fn: Callable, params: Any, x: Any, target: Any, relevance: Any, *args: Any,
              **options: Any) -> Any:
    check_images(x)
    # The metric's own checks first (its options, the relevance's shape), then the target's.
    result = metric(apply_fn, params, x, target, relevance, *args, **options)
    valid = (valid_examples(x) if apply_fn is None or target is None
             else checked_examples(apply_fn, params, x, target))
    finite = jnp.isfinite(jnp.reshape(jnp.asarray(relevance), (jnp.shape(x)[0], -1))).all(-1)
    return poison_examples(result, valid & finite)

  return checked


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
