"""Diffusion: how different the explanations of an image's two most likely classes are.

Rieger, Chormai, Montavon, Hansen, Mueller, "Structuring neural networks for more explainable
predictions" (2018), Eq. 7: d = mean_b ||h1_b - h2_b||_F, the heatmaps of the explained class
(h1, the `relevance` given) and of the runner-up class (h2, the method re-run for it). This is
the per-example form, `||h1_b - h2_b||_F`, whose mean over a test set is the paper's d (the
separable experiment's Table 2). With `unit=True` (the default) each heatmap is first divided by
its Frobenius norm, so d lies in [0, 2] as in the paper's table and measures how different the
two explanations are rather than how large the logits are: 0 for the same heatmap, sqrt(2) for
orthogonal ones. Higher is better: a class-specific explanation moves when the class does.

The runner-up class is the one of highest logit other than the target (the target need not be
the top-1 class), or `other` if given. The heatmaps are the relevance summed over channels.

`heatmap_distances` (with `unit_heatmaps`) is the one computation of Eq. 7: the metric calls it on
the heatmaps it is given and recomputes, and the separable experiment (`runs.separable`, Table 2)
on the DTD heatmaps of the top-1 and top-2 classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.explain.targets import check_model_target
from xjax.metrics.registry import EXPLAIN, FLAG, METRICS, ApplyFn
from xjax.metrics.relevance import (
  check_explain,
  per_example_metric,
  pixel_relevance,
  recomputed_relevance,
)

Array = jax.Array


def runner_up(logits: Array, target: Array) -> Array:
  """(B,) the class of highest logit other than `target` (class indices (B,))."""
  masked = jnp.where(jax.nn.one_hot(target, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.argmax(masked, axis=-1)


def unit_heatmaps(h: Array) -> Array:
  """Each heatmap (N, H, W) divided by its Frobenius norm (an all-zero heatmap stays 0).

  [A] Rieger et al. do not say how heatmaps are scaled, but the values of their Table 2 are all
  <= 2, the largest distance of two unit-norm heatmaps, and the raw d scales with the output
  relevance (the logit): on unit heatmaps d measures how different the explanations of the two
  classes are, not how large their logits are (0 = the same heatmap, sqrt(2) = orthogonal,
  2 = opposite).
  """
  h = jnp.asarray(h)
  norm = jnp.sqrt(jnp.sum(jnp.square(h), axis=(-2, -1), keepdims=True))
  return h / jnp.where(norm > 0, norm, 1.0)


def heatmap_distances(h1: Array, h2: Array, *, unit: bool = True) -> Array:
  """Eq. 7 of Rieger et al. 2018 per image: `||h1_n - h2_n||_F`, (N,), whose mean is d.

  Args:
    h1, h2: channel-summed heatmaps (N, H, W) of the two classes (e.g. the top-1 and top-2).
    unit: divide each heatmap by its Frobenius norm first (`unit_heatmaps`; d in [0, 2], the
      scale of the paper's Table 2); False: the raw heatmaps (d scales with the logits).

  Raises:
    ConfigError: h1 and h2 not two (N, H, W) stacks of the same shape.
  """
  h1, h2 = jnp.asarray(h1), jnp.asarray(h2)
  if h1.shape != h2.shape or h1.ndim != 3:
    raise ConfigError(f"diffusion needs two (N, H, W) heatmap stacks of the same shape; got "
                      f"{h1.shape} and {h2.shape} (sum over channels first).")
  if unit:
    h1, h2 = unit_heatmaps(h1), unit_heatmaps(h2)
  return jnp.sqrt(jnp.sum(jnp.square(h1 - h2), axis=(1, 2)))


@METRICS.register(
    "diffusion",
    checks={"explain": EXPLAIN, "unit": FLAG},
    description="diffusion: the distance between the (unit) explanations of the target and the "
                "runner-up class (Rieger et al. 2018, Eq. 7)",
    higher_is_better=True, score=None)
@per_example_metric
def diffusion(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
              explain: Callable[[Any, Array, Array], Array], other: Array | None = None,
              unit: bool = True) -> Array:
  """(B,) `||h1_b - h2_b||_F`, h1 the explanation of `target`, h2 that of the runner-up class.

  Args:
    apply_fn: `apply_fn(params, x) -> (B, C)` logits (to find the runner-up class).
    params: the model's parameters, passed to `explain`.
    x: (B, H, W, C) the explained images.
    target: (B,) class indices.
    relevance: (B, H, W, C) or (B, H, W) the explanation of x for `target` (h1).
    explain: `explain(params, x, target) -> relevance`, re-run for the other class.
    other: (B,) the other class; None: the runner-up (highest logit other than the target).
    unit: divide each heatmap by its Frobenius norm first (`unit_heatmaps`; Rieger 2018's Table
      2 scale).

  Raises:
    ConfigError: bad shapes, vector targets, a target outside the model's outputs, an `explain`
      that is not callable or returns another shape, or `unit` not a bool.
  """
  h1 = pixel_relevance(x, relevance)
  check_model_target(apply_fn, params, x, target)
  check_explain(explain)
  if jnp.ndim(target) != 1:
    raise ConfigError(f"diffusion needs class indices (B,) as target (the runner-up is another "
                      f"class); got shape {jnp.shape(target)}.")
  if not isinstance(unit, bool):
    raise ConfigError(f"unit must be True or False; got {unit!r}.")
  target = jnp.asarray(target)
  if other is None:
    other = runner_up(apply_fn(params, x), target)
  h2 = recomputed_relevance(explain(params, x, jnp.asarray(other)), x, h1)
  return heatmap_distances(h1, h2, unit=unit)
