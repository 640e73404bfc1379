"""Sparseness (Gini index) and complexity (entropy) against closed forms, an independent numpy loop
over examples, jax.jit, and their one-line errors."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.complexity import complexity, sparseness

EPS = 1e-7  # Quantus's epsilon, added to every |R| by sparseness
RNG = np.random.default_rng(0)


def close(a, b, atol=1e-6, rtol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def score(metric, relevance, **options):
  """`metric` on (B, H, W) or (B, H, W, C) relevance; x of the matching shape, model left out."""
  relevance = np.asarray(relevance, np.float32)
  channels = relevance.shape[3] if relevance.ndim == 4 else 1
  x = np.zeros((*relevance.shape[:3], channels), np.float32)
  return np.asarray(metric(None, None, x, None, relevance, **options))


def one_hot(n, index=0, value=1.0):
  image = np.zeros((1, 1, n), np.float32)
  image[0, 0, index] = value
  return image


# --- closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 9, 16])
def test_gini_of_a_single_feature_is_one_minus_one_over_n(n):
  # With the epsilon on every value: sum_k (2k - n - 1) a_k = n - 1, sum a = 1 + n eps.
  expected = (n - 1) / (n * (1 + n * EPS))
  for value in (1.0, -3.0):  # |R|: the sign does not matter
    close(score(sparseness, one_hot(n, n // 2, value)), [expected])
  close(score(sparseness, one_hot(n)), [1 - 1 / n], atol=1e-5)


def test_gini_of_constant_and_zero_relevance_is_zero():
  close(score(sparseness, np.full((1, 3, 3), 2.5)), [0.0])
  close(score(sparseness, -np.ones((1, 4, 4))), [0.0])
  close(score(sparseness, np.zeros((1, 4, 4))), [0.0])  # the epsilon: evenly spread, not 0 / 0


def test_gini_by_hand():
  # Sorted (0, 0, 1, 1): weights 2k - 5 = (-3, -1, 1, 3), so (1 + 3) / (4 * 2) = 1/2.
  close(score(sparseness, np.array([[[1, 0], [0, -1]]])), [0.5], atol=1e-6)
  # Sorted (1, 2, 3): weights (-2, 0, 2): (-2 + 6) / (3 * 6) = 2/9.
  close(score(sparseness, np.array([[[3, -1, 2]]])), [2 / 9], atol=1e-6)


def test_entropy_closed_forms():
  close(score(complexity, np.full((1, 4, 4), -0.3)), [math.log(16)], atol=1e-5)
  close(score(complexity, one_hot(9, 4, -2.0)), [0.0])
  # Two equal features of six: log 2; shares (1/2, 1/4, 1/4): 1.5 log 2.
  close(score(complexity, np.array([[[0, 5, 0], [-5, 0, 0]]])), [math.log(2)], atol=1e-6)
  close(score(complexity, np.array([[[2, -1, 0, 1]]])), [1.5 * math.log(2)], atol=1e-6)


def test_entropy_of_zero_relevance_is_nan_as_in_quantus():
  assert np.isnan(score(complexity, np.zeros((1, 3, 3)))).all()


def test_every_element_is_a_feature_unless_channels_are_summed():
  # 2x2 pixels of 3 channels, all equal: 12 features, or 4 pixels.
  relevance = np.ones((1, 2, 2, 3), np.float32)
  close(score(complexity, relevance), [math.log(12)], atol=1e-6)
  close(score(complexity, relevance, sum_channels=True), [math.log(4)], atol=1e-6)
  # One pixel's channels cancel: summed, it has no relevance; per element it is 2 of 6 features.
  relevance = np.zeros((1, 1, 2, 3), np.float32)
  relevance[0, 0, 0] = [1, -1, 0]
  relevance[0, 0, 1] = [2, 0, 0]
  close(score(complexity, relevance, sum_channels=True), [0.0])
  close(score(sparseness, relevance, sum_channels=True), [(2 - 1) / (2 * (1 + 2 * EPS / 2))],
        atol=1e-6)
  close(score(complexity, relevance), [-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))],
        atol=1e-6)
  # Sum over channels first equals passing the summed relevance, which has no channels to sum.
  random = RNG.normal(size=(2, 3, 3, 2)).astype(np.float32)
  for metric in (sparseness, complexity):
    close(score(metric, random, sum_channels=True), score(metric, random.sum(-1)))
    close(score(metric, random.sum(-1), sum_channels=True), score(metric, random.sum(-1)))


# --- random batches: a numpy loop, per-example calls, jit -----------------------------------------


B, H, W, C = 5, 4, 4, 2
RELEVANCE = RNG.normal(size=(B, H, W, C)).astype(np.float32)
RELEVANCE[0, :2] = 0  # some zero features


def reference(name, relevance):
  """An independent loop over examples, in float64, Quantus's formulas."""
  out = []
  for r in np.abs(relevance.astype(np.float64)):
    a = r.reshape(-1)
    n = a.size
    if name == "sparseness":
      a = np.sort(a + EPS)
      out.append(sum((2 * k - n - 1) * a[k - 1] for k in range(1, n + 1)) / (n * a.sum()))
    else:
      p = a / a.sum()
      out.append(-sum(q * math.log(q + 1e-12) for q in p))
  return np.array(out)


@pytest.mark.parametrize("metric", (sparseness, complexity), ids=lambda m: m.__name__)
def test_random_batches_match_a_numpy_loop_per_example_calls_and_jit(metric):
  batch = score(metric, RELEVANCE)
  assert batch.shape == (B,)
  close(batch, reference(metric.__name__, RELEVANCE), atol=1e-5, rtol=1e-5)
  close(score(metric, RELEVANCE, sum_channels=True),
        reference(metric.__name__, RELEVANCE.sum(-1)), atol=1e-5, rtol=1e-5)
  close(batch, [score(metric, RELEVANCE[i:i + 1])[0] for i in range(B)])
  x = np.zeros((B, H, W, C), np.float32)
  for sum_channels in (False, True):
    jitted = jax.jit(functools.partial(metric, None, None, sum_channels=sum_channels))
    close(jitted(x, None, RELEVANCE), score(metric, RELEVANCE, sum_channels=sum_channels))


def test_the_sparser_explanation_scores_higher_sparseness_and_lower_complexity():
  spread = np.abs(RELEVANCE) + 1
  peaked = spread * (np.arange(H * W * C).reshape(1, H, W, C) == 5) + 0.01
  assert np.all(score(sparseness, peaked) > score(sparseness, spread))
  assert np.all(score(complexity, peaked) < score(complexity, spread))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", (sparseness, complexity), ids=lambda m: m.__name__)
@pytest.mark.parametrize("x, relevance, match", [
    (np.zeros((B, H * W)), np.zeros((B, H * W)), r"x must be a batch of images \(B, H, W, C\)"),
    (np.zeros((B, H, W, C)), np.zeros((B, H, W, 3)), r"relevance must have the shape of x"),
    (np.zeros((B, H, W, C)), np.zeros((B, H * W)), r"relevance must have the shape of x"),
    (np.zeros((B, H, W, C)), np.zeros((2, H, W)), r"relevance must have the shape of x"),
])
def test_bad_inputs_raise_one_line_config_errors(metric, x, relevance, match):
  with pytest.raises(ConfigError, match=match) as info:
    metric(None, None, x, None, relevance)
  assert "\n" not in str(info.value)
