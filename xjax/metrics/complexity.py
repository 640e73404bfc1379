"""Complexity: how concentrated an explanation is, from the explanation alone.

* `sparseness`: the Gini index of |R| (Chalasani et al., ICML 2020); higher is sparser.
* `complexity`: the entropy of the share of |R| on each feature (Bhatt et al., IJCAI 2020);
  lower is simpler.

Both follow Quantus 0.6.0 (Hedstroem et al., JMLR 2023) to its epsilons, and like Quantus they
score every element of the relevance as given: (B, H, W, C) relevance is H * W * C features
(Quantus flattens its NCHW attributions whole and never sums channels; the metrics ignore the
order, so NHWC and NCHW agree), (B, H, W) relevance is H * W pixels. `sum_channels=True` sums
(B, H, W, C) relevance over channels first, the pixel relevance of `pixel_flipping` and the
localisation metrics. The model is not needed: `apply_fn`, `params` and `target` are taken (the
calling convention of `xjax.metrics`) and ignored; `x` gives the shape relevance is checked
against. For token sequences x (B, T, D) the features are the T tokens: relevance (B, T), or
(B, T, D) summed over D first (`xjax.metrics.relevance`), so `sum_channels` changes nothing.

Quantus's own defaults differ in one respect: `normalise=True` divides the attributions by the
largest |R| of the whole batch before its epsilon is added, so its sparseness depends (slightly)
on the other examples of the batch; the scores here are Quantus's with `normalise=False` (its
default `abs=True` is what both metrics do anyway).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xjax.metrics.registry import FLAG, METRICS, ApplyFn
from xjax.metrics.relevance import checked_relevance, per_example_metric

Array = jax.Array

# Quantus 0.6.0 `Sparseness` adds this to every |R| before sorting: an all-zero explanation then
# has Gini index 0 (evenly spread) instead of 0 / 0.
SPARSENESS_EPSILON = 1e-7
# Quantus 0.6.0 `Complexity` takes log(p + 1e-12), so that a feature without relevance adds
# 0 * log(1e-12) = 0 to the entropy instead of 0 * log(0) = NaN.
COMPLEXITY_EPSILON = 1e-12


def _magnitudes(x: Any, relevance: Any, sum_channels: bool) -> Array:
  """(B, N) |R| of each feature, N = H * W * C, or H * W with channels summed first.

  Raises:
    ConfigError: x not (B, H, W, C), or relevance neither x's shape nor (B, H, W).
  """
  relevance = checked_relevance(x, relevance)
  if sum_channels and relevance.ndim == 4:
    # The signed sum first: a pixel's channels may cancel, as they do for the pixel's relevance.
    relevance = relevance.sum(-1)
  return jnp.abs(relevance.reshape(relevance.shape[0], -1))


@METRICS.register(
    "sparseness",
    checks={"sum_channels": FLAG},
    description="sparseness: the Gini index of the absolute relevance (Chalasani et al. 2020)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def sparseness(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
               sum_channels: bool = False) -> Array:
  """Sparseness (Chalasani, Chen, Chowdhury, Wu, Jha, "Concise explanations of neural networks
  using adversarial training", ICML 2020): the Gini index of the absolute relevance.

  With a = sort(|R| + 1e-7) ascending over the N features of an example, the Gini index of
  Hurley & Rickard ("Comparing measures of sparsity", IEEE Trans. Information Theory 2009),
  1 - 2 sum_k (a_k / |a|_1) (N - k + 1/2) / N, rewritten as one weighted sum (as Quantus does):

      G = sum_k (2k - N - 1) a_k / (N sum_k a_k),  k = 1..N,

  is 0 for evenly spread relevance and 1 - 1/N for all of it on one feature (up to the epsilon,
  which is Quantus 0.6.0 `Sparseness`'s: (N - 1) / (N (1 + N 1e-7)) there). Higher is sparser.

  Args:
    apply_fn, params, target: ignored (the calling convention of `xjax.metrics`).
    x: the images (B, H, W, C) or token sequences (B, T, D); only their shape is used.
    relevance: the explanation, (B, H, W, C) or already summed over channels (B, H, W); for
      sequences (B, T) or (B, T, D) (summed over D).
    sum_channels: sum (B, H, W, C) relevance over channels before taking |R| (per pixel);
      False (Quantus's convention): every element is a feature.

  Returns:
    (B,) the Gini index in [0, 1 - 1/N].

  Raises:
    ConfigError: x not (B, H, W, C), or relevance of another shape.
  """
  del apply_fn, params, target
  values = sort_nonnegative(_magnitudes(x, relevance, sum_channels) + SPARSENESS_EPSILON)
  n = values.shape[-1]
  weights = 2 * jnp.arange(1, n + 1, dtype=values.dtype) - n - 1
  return jnp.sum(weights * values, axis=-1) / (n * jnp.sum(values, axis=-1))


def sort_nonnegative(values: Array) -> Array:
  """`jnp.sort(values, axis=-1)` for float32 values >= 0, sorted as their int32 bit patterns
  (which order them as the floats): XLA:CPU sorts integers about 5x faster than floats, whose
  comparator first maps each one to a total order (32 x 784 values: 0.85 ms against 4.5 ms)."""
  bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
  return jax.lax.bitcast_convert_type(jnp.sort(bits, axis=-1), jnp.float32)


@METRICS.register(
    "complexity",
    checks={"sum_channels": FLAG},
    description="complexity: the entropy of the shares of the absolute relevance (Bhatt et al. "
                "2020)",
    higher_is_better=False, score=None)
@per_example_metric(sequences=True)
def complexity(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
               sum_channels: bool = False) -> Array:
  """Complexity (Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model
  explanations", IJCAI 2020, their complexity mu_C): the entropy of the fractional contribution
  of each feature to the total magnitude of the explanation.

      p_i = |R_i| / sum_j |R_j|,   complexity = -sum_i p_i log(p_i + 1e-12)   (natural log),

  as Quantus 0.6.0 `Complexity` computes it (its epsilon inside the log makes a zero feature add
  0). It is log(N) for evenly spread relevance and 0 for all of it on one feature; lower is
  simpler. An all-zero explanation has no fractions and scores NaN (0 / 0, as in Quantus).
  Arguments and errors as in `sparseness`.

  Returns:
    (B,) the entropy in nats, in [0, log N].
  """
  del apply_fn, params, target
  magnitudes = _magnitudes(x, relevance, sum_channels)
  shares = magnitudes / jnp.sum(magnitudes, axis=-1, keepdims=True)
  return -jnp.sum(shares * jnp.log(shares + COMPLEXITY_EPSILON), axis=-1)
