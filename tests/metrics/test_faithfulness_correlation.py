"""Faithfulness correlation: exactly 1 for gradient x input of a linear model, and by hand."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.metrics.linear_model import TARGET, close, exact_relevance, images_and_weights, linear
from xjax.errors import ConfigError
from xjax.metrics.faithfulness_correlation import (
  faithfulness_correlation,
  random_subsets,
  subset_correlation,
)

RNG = np.random.default_rng(2)
X, WEIGHTS = images_and_weights(RNG)
B, H, W, C = X.shape
P = H * W
RELEVANCE = exact_relevance(WEIGHTS, X)
KEY = jax.random.key(0)


def test_gradient_times_input_of_a_linear_model_correlates_exactly():
  # Zero baseline: the drop is sum_{i in S} w_i x_i, the relevance of S, so the correlation is 1.
  run = jax.jit(functools.partial(faithfulness_correlation, linear, subset_size=5,
                                  num_samples=20))  # compiled once for the three relevances
  run = functools.partial(run, WEIGHTS, X, TARGET, key=KEY)
  close(run(RELEVANCE), np.ones(B))
  close(run(-RELEVANCE), -np.ones(B))
  random = RNG.normal(size=X.shape).astype(np.float32)
  assert np.all(np.abs(np.asarray(run(random))) < 0.99)


def test_subsets_are_distinct_uniform_pixels_and_the_correlation_by_hand():
  subsets = np.asarray(random_subsets(KEY, 50, B, P, 6))
  assert subsets.shape == (50, B, 6)
  assert all(len(set(s)) == 6 for s in subsets.reshape(-1, 6))
  assert subsets.min() >= 0 and subsets.max() < P
  counts = np.bincount(subsets.reshape(-1), minlength=P)
  assert counts.min() > 0  # every pixel gets drawn
  # An independent computation over the same subsets, with the "mean" baseline.
  relevance = RNG.normal(size=(B, H, W)).astype(np.float32)
  score = subset_correlation(linear, WEIGHTS, X, TARGET, relevance, subsets[:8],
                             baseline="mean")
  base = X.mean((1, 2), keepdims=True)
  for b in range(B):
    sums, drops = [], []
    f = linear(WEIGHTS, X[b:b + 1])[0, TARGET[b]]
    for s in subsets[:8, b]:
      mask = np.zeros(P, bool)
      mask[s] = True
      image = np.where(mask.reshape(H, W, 1), base[b], X[b])
      drops.append(f - linear(WEIGHTS, image[None])[0, TARGET[b]])
      sums.append(relevance[b].reshape(-1)[s].sum())
    close(score[b], np.corrcoef(sums, drops)[0, 1], atol=1e-4)


def test_batch_jit_and_chunks_agree():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  run = functools.partial(faithfulness_correlation, linear, WEIGHTS, X, TARGET, relevance,
                          subset_size=4, num_samples=10, score="probability", key=KEY)
  full = run()
  for max_batch in (1, 7):
    close(run(max_batch=max_batch), full)
  jitted = jax.jit(functools.partial(faithfulness_correlation, linear, subset_size=4,
                                     num_samples=10, score="probability", max_batch=4))
  close(jitted(WEIGHTS, X, TARGET, relevance, key=KEY), full)
  # Per example, over the same subsets (a fresh draw would differ).
  subsets = random_subsets(KEY, 10, B, P, 4)
  correlation = jax.jit(functools.partial(subset_correlation, linear))  # one compile per shape
  batched = correlation(WEIGHTS, X, TARGET, relevance, subsets)
  for b in range(B):
    one = correlation(WEIGHTS, X[b:b + 1], TARGET[b:b + 1], relevance[b:b + 1],
                      subsets[:, b:b + 1])
    close(one[0], batched[b])
  assert not np.allclose(run(key=jax.random.key(1)), full)


@pytest.mark.parametrize("options, match", [
    (dict(subset_size=16), r"subset_size=16 must be below the 16 pixels of 4x4 images"),
    (dict(subset_size=0), r"subset_size must be a Python int >= 1"),
    (dict(num_samples=1), r"num_samples must be a Python int >= 2"),
    (dict(key=None), r"needs a PRNG key for its random subsets"),
    (dict(baseline="black"), r"Unknown baseline 'black'"),
    (dict(score="prob"), r"Unknown score 'prob'"),
    (dict(max_batch=0), r"max_batch must be a Python int >= 1"),
])
def test_bad_options_raise_one_line_config_errors(options, match):
  options = {"subset_size": 4, "num_samples": 4, "key": KEY, **options}
  with pytest.raises(ConfigError, match=match) as info:
    faithfulness_correlation(linear, WEIGHTS, X, TARGET, RELEVANCE, **options)
  assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="relevance must have the shape of x"):
    faithfulness_correlation(linear, WEIGHTS, X, TARGET, jnp.zeros((B, P)), subset_size=4,
                             key=KEY)
