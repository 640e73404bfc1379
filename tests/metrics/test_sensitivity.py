"""Max- and avg-sensitivity: 0 for a constant explanation, by hand for gradient x input."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.sensitivity import avg_sensitivity, max_sensitivity, sensitivities

B, H, W, C, K, S = 3, 4, 4, 1, 3, 6
RADIUS = 0.1
RNG = np.random.default_rng(7)
X = RNG.normal(size=(B, H, W, C)).astype(np.float32)
WEIGHTS = RNG.normal(size=(H * W * C, K)).astype(np.float32)
TARGET = np.array([0, 2, 1])
KEY = jax.random.key(3)


def linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


def weights_of(w, x, target):
  return w[:, target].T.reshape(x.shape)


def gradient_times_input(w, x, target):
  return weights_of(w, x, target) * x


def close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def run(metric, explain, relevance, params=WEIGHTS, **options):
  options = {"radius": RADIUS, "num_samples": S, "key": KEY, **options}
  return metric(linear, params, X, TARGET, relevance, explain=explain, **options)


def test_an_explanation_that_ignores_x_has_sensitivity_zero():
  relevance = weights_of(WEIGHTS, X, TARGET)
  for metric in (max_sensitivity, avg_sensitivity):
    close(run(metric, weights_of, relevance), np.zeros(B), atol=0)
  # The same metric is not 0 for gradient x input, which moves with x.
  assert np.all(np.asarray(run(max_sensitivity, gradient_times_input,
                               gradient_times_input(WEIGHTS, X, TARGET))) > 0)


def test_gradient_times_input_of_a_linear_model_by_hand():
  # explain(x + u) - explain(x) = w * u, so s_k = ||w * u_k|| / ||w * x|| for the same noise u.
  relevance = gradient_times_input(WEIGHTS, X, TARGET)
  noise = np.asarray(jax.random.uniform(KEY, (S, *X.shape), jnp.float32, -RADIUS, RADIUS))
  w = weights_of(WEIGHTS, X, TARGET)
  norm = np.linalg.norm((w * noise).reshape(S, B, -1), axis=-1)
  expected = norm / np.linalg.norm(relevance.reshape(B, -1), axis=-1)
  close(run(max_sensitivity, gradient_times_input, relevance), expected.max(0), atol=1e-4)
  close(run(avg_sensitivity, gradient_times_input, relevance), expected.mean(0), atol=1e-4)
  # Bounded by the largest noise, |u_i| <= radius.
  bound = RADIUS * np.linalg.norm(w.reshape(B, -1), axis=-1)
  assert np.all(expected.max(0) <= bound / np.linalg.norm(relevance.reshape(B, -1), axis=-1))
  linf = np.abs(w * noise).reshape(S, B, -1).max(-1) / np.abs(relevance.reshape(B, -1)).max(-1)
  close(run(max_sensitivity, gradient_times_input, relevance, norm="linf"), linf.max(0),
        atol=1e-4)
  # Pixel relevance: the explanation of the perturbed images is summed over channels too.
  close(run(max_sensitivity, gradient_times_input, relevance.sum(-1)), expected.max(0),
        atol=1e-4)


def test_batch_equals_per_example_over_the_same_noise_and_jit():
  # A relevance that is not linear in x (squared input), so each sample's change differs.
  def explain(w, x, target):
    return weights_of(w, x, target) * x * x

  relevance = explain(WEIGHTS, X, TARGET)
  per_sample = sensitivities(linear, WEIGHTS, X, TARGET, relevance, explain=explain,
                             radius=RADIUS, num_samples=S, key=KEY)
  assert per_sample.shape == (S, B)
  noise = np.asarray(jax.random.uniform(KEY, (S, *X.shape), jnp.float32, -RADIUS, RADIUS))
  for b in range(B):
    # Example b alone, under its own slice of the noise and its own target.
    moved = explain(WEIGHTS, X[b] + noise[:, b], np.full(S, TARGET[b]))
    change = np.asarray(moved - relevance[b]).reshape(S, -1)
    close(per_sample[:, b], np.linalg.norm(change, axis=-1) / np.linalg.norm(relevance[b]),
          atol=1e-4)
  jitted = jax.jit(functools.partial(max_sensitivity, linear, explain=explain, radius=RADIUS,
                                     num_samples=S))
  close(jitted(WEIGHTS, X, TARGET, relevance, key=KEY), per_sample.max(0), atol=1e-5)
  other = jitted(WEIGHTS, X, TARGET, relevance, key=jax.random.key(4))
  assert not np.allclose(np.asarray(other), np.asarray(per_sample.max(0)))


@pytest.mark.parametrize("options, match", [
    (dict(radius=0), r"radius must be a finite Python number > 0"),
    (dict(radius="0.1"), r"radius must be a finite Python number > 0"),
    (dict(num_samples=0), r"num_samples must be a Python int >= 1"),
    (dict(norm="l3"), r"Unknown norm 'l3'; expected one of fro, linf"),
    (dict(key=None), r"needs a PRNG key for its noise"),
    (dict(explain="saliency"), r"explain must be a function"),
    (dict(explain=lambda w, x, t: x[..., 0, 0]), r"explain returned shape \(18, 4\)"),
])
def test_bad_options_raise_one_line_config_errors(options, match):
  options = {"explain": gradient_times_input, **options}
  with pytest.raises(ConfigError, match=match) as info:
    run(max_sensitivity, relevance=gradient_times_input(WEIGHTS, X, TARGET), **options)
  assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="relevance must have the shape of x"):
    run(avg_sensitivity, gradient_times_input, jnp.zeros((B, H * W)))
