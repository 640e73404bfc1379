"""Faithfulness correlation: does the relevance of a random subset predict the drop of the score?

Bhatt, Weller, Moura, "Evaluating and aggregating feature-based model explanations" (IJCAI 2020,
Sec. 3.1, Eq. 2, "faithfulness" mu_F): for random subsets S of |S| features,

  mu_F(f, g; x) = corr_S( sum_{i in S} g(f, x)_i ,  f(x) - f(x_[x_S = x_bar_S]) ),

the Pearson correlation, over the subsets, of the relevance in the subset and the drop of the
explained output when the subset is set to a baseline x_bar. For a linear model f(x) = w . x, a
zero baseline and the relevance w * x (gradient times input) the drop is exactly the relevance
of the subset, so mu_F = 1.

The `num_samples * B` perturbed images are evaluated by `pixel_flipping`'s loop
(`perturbed_scores`), at most `max_batch` at once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.explain.targets import check_count, check_model_target
from xjax.metrics.correlation import pearson
from xjax.metrics.pixel_flipping import BASELINE, SCORES, ApplyFn, baseline_images, perturbed_scores
from xjax.metrics.registry import AT_LEAST_TWO, COUNT, METRICS, OPTIONAL_COUNT
from xjax.metrics.relevance import check_images, per_example_metric, pixel_relevance
from xjax.registry import one_of

Array = jax.Array


def random_subsets(key: Array, num_samples: int, batch: int, num_pixels: int,
                   subset_size: int) -> Array:
  """(num_samples, B, subset_size) int32 pixel indices: for every sample and image a uniformly
  random subset of `subset_size` distinct pixels of `num_pixels`.

  The `subset_size` largest of `num_pixels` uniform draws (`lax.top_k`) are a uniform subset; one
  sample at a time (`lax.map`), so only B * num_pixels draws exist at once.
  """
  def one(k: Array) -> Array:
    return jax.lax.top_k(jax.random.uniform(k, (batch, num_pixels)), subset_size)[1]

  return jax.lax.map(one, jax.random.split(key, num_samples)).astype(jnp.int32)


def subset_correlation(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                       relevance: Array, subsets: Array, *, baseline: Any = 0.0,
                       score: str = "logit", key: Array | None = None,
                       max_batch: int | None = None) -> Array:
  """(B,) the faithfulness correlation over the given `subsets` (S, B, s) of pixel indices
  (row-major over H*W), e.g. from `random_subsets`; see `faithfulness_correlation`.

  A (near-)constant relevance sum or score drop over the subsets gives NaN (no correlation is
  defined), as Quantus's `scipy.stats.pearsonr`.
  """
  per_pixel = pixel_relevance(x, relevance)
  check_model_target(apply_fn, params, x, target)
  if score not in SCORES:
    raise ConfigError(f"Unknown score {score!r}; known: {', '.join(SCORES)}.")
  x, target, subsets = jnp.asarray(x), jnp.asarray(target), jnp.asarray(subsets)
  batch, height, width, _ = x.shape
  num_samples = subsets.shape[0]
  chunk = batch if max_batch is None else check_count("max_batch", max_batch)
  base = baseline_images(x, baseline, key)
  rows = jnp.arange(batch)[None, :, None]
  # (S, B) the relevance inside each subset.
  inside = per_pixel.reshape(batch, -1)[rows, subsets].sum(-1)

  def perturbed(sample: Array, image: Array) -> Array:
    # The subset as a mask: scatter the indices of each (sample, image) into its pixels.
    mask = jnp.zeros((sample.shape[0], height * width), bool)
    mask = mask.at[jnp.arange(sample.shape[0])[:, None], subsets[sample, image]].set(True)
    return jnp.where(mask.reshape(-1, height, width, 1), base[image], x[image])

  def unperturbed(sample: Array, image: Array) -> Array:
    del sample
    return x[image]

  original = perturbed_scores(apply_fn, params, target, unperturbed, 1, batch, score=score,
                              max_batch=chunk)
  drops = original - perturbed_scores(apply_fn, params, target, perturbed, num_samples, batch,
                                      score=score, max_batch=chunk)  # (B, S)
  return pearson(inside.T, drops)


@METRICS.register(
    "faithfulness_correlation",
    checks={"subset_size": COUNT, "num_samples": AT_LEAST_TWO, "baseline": BASELINE,
            "score": one_of(*SCORES), "max_batch": OPTIONAL_COUNT},
    description="faithfulness correlation: the Pearson correlation of the relevance of random "
                "subsets and the drop of the output when they are removed (Bhatt et al. 2020)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def faithfulness_correlation(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                             relevance: Array, *, subset_size: int = 224, num_samples: int = 100,
                             baseline: Any = 0.0, score: str = "logit", key: Array | None = None,
                             max_batch: int | None = None) -> Array:
  """(B,) the faithfulness correlation of each image (Bhatt et al., IJCAI 2020, Eq. 2).

  For each of `num_samples` subsets S (drawn from `key`, independently per image, uniformly among
  the subsets of `subset_size` distinct pixels) the relevance inside S, `sum_{i in S} R_i` (all
  channels), and the drop of the score, `f(x) - f(x with the pixels of S, all channels, set to
  the baseline)`, are recorded; the score is their Pearson correlation over the samples, in
  [-1, 1], higher is better. NaN where either is constant over the samples (e.g. subset_size =
  H*W, or a model that ignores the subsets).

  Defaults as Quantus 0.6.0's `FaithfulnessCorrelation(nr_runs=100, subset_size=224)` and its
  logits (`softmax=False`). Differences from Quantus: Quantus draws subsets of the C*H*W
  elements (single channels of pixels) with `np.random`; here of the H*W pixels, all channels
  replaced together (the same for C = 1), drawn from a JAX key. Quantus's default baseline
  "black" is each image's minimum (here pass `baseline=x.min((1, 2, 3), keepdims=True)`; the
  default 0 is pixel_flipping's) and it normalises the relevance by its maximum by default
  (Pearson's correlation does not change under a positive scale).

  Args:
    apply_fn, params, x, target, relevance: as for `pixel_flipping` (images or token
      sequences).
    subset_size: the pixels (tokens) per subset, an int in [1, H*W) ([1, T)).
    num_samples: the number of random subsets per image (Quantus: nr_runs), an int >= 2.
    baseline: as `pixel_flipping`'s (a number, "mean", "uniform", an array); Bhatt et al. leave
      x_bar open.
    score: "logit" or "probability".
    key: a JAX PRNG key for the subsets (and the "uniform" baseline); required.
    max_batch: the most images per call of `apply_fn`; None: B.

  Raises:
    ConfigError: x, target or relevance that do not fit; subset_size not an int in [1, H*W);
      num_samples not an int >= 2; an unknown score or baseline; no key; max_batch not an
      int >= 1.
  """
  check_images(x)
  batch, height, width, _ = jnp.shape(x)
  num_pixels = height * width
  subset_size = check_count("subset_size", subset_size)
  if subset_size >= num_pixels:
    raise ConfigError(f"subset_size={subset_size} must be below the {num_pixels} pixels of "
                      f"{height}x{width} images (a subset of all pixels never varies).")
  num_samples = check_count("num_samples", num_samples, minimum=2)
  if key is None:
    raise ConfigError("faithfulness_correlation needs a PRNG key for its random subsets: pass "
                      "key=jax.random.key(0).")
  subset_key, baseline_key = jax.random.split(key)
  subsets = random_subsets(subset_key, num_samples, batch, num_pixels, subset_size)
  return subset_correlation(apply_fn, params, x, target, relevance, subsets, baseline=baseline,
                            score=score, key=baseline_key, max_batch=max_batch)
