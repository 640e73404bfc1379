"""Completeness: exactly 0 for gradient x input of a linear model, and by hand otherwise."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.completeness import completeness

B, H, W, C, K = 3, 4, 4, 1, 3
RNG = np.random.default_rng(5)
X = RNG.normal(size=(B, H, W, C)).astype(np.float32)
WEIGHTS = RNG.normal(size=(H * W * C, K)).astype(np.float32)
BIAS = RNG.normal(size=(K,)).astype(np.float32)
TARGET = np.array([0, 2, 1])
W_T = WEIGHTS[:, TARGET].T.reshape(B, H, W, C)  # the weights of each example's explained logit


def linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


def affine(params, x):
  w, b = params
  return x.reshape(x.shape[0], -1) @ w + b


def close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-5)


def test_gradient_times_input_of_a_bias_free_linear_model_is_complete():
  # f(x) = w . x and f(0) = 0, so sum(w * x) = f(x) - f(0) exactly; the gradient w alone is not.
  close(completeness(linear, WEIGHTS, X, TARGET, W_T * X), np.zeros(B))
  error = np.asarray(completeness(linear, WEIGHTS, X, TARGET, W_T))
  close(error, (W_T - W_T * X).reshape(B, -1).sum(-1))
  assert np.all(np.abs(error) > 1e-3)
  # Relevance summed over channels scores the same.
  close(completeness(linear, WEIGHTS, X, TARGET, (W_T * X).sum(-1)), np.zeros(B))


def test_baselines_bias_and_the_relative_form_by_hand():
  params = (WEIGHTS, BIAS)
  base = RNG.normal(size=(1, H, W, C)).astype(np.float32)
  # The bias cancels in f(x) - f(x'): w * (x - x') is complete against the baseline x'.
  close(completeness(affine, params, X, TARGET, W_T * (X - base), baseline=base), np.zeros(B))
  # Against the zero baseline it misses w . x', and the bias does not enter.
  change = (W_T * X).reshape(B, -1).sum(-1)
  error = (W_T * (X - base)).reshape(B, -1).sum(-1) - change
  close(completeness(affine, params, X, TARGET, W_T * (X - base)), error)
  close(completeness(affine, params, X, TARGET, W_T * (X - base), relative=True),
        error / np.abs(change))
  # A scalar baseline c: f(x) - f(c) = w . x - c * sum(w).
  relevance = RNG.normal(size=(B, H, W)).astype(np.float32)
  change = (W_T * X).reshape(B, -1).sum(-1) - 0.5 * W_T.reshape(B, -1).sum(-1)
  close(completeness(affine, params, X, TARGET, relevance, baseline=0.5),
        relevance.reshape(B, -1).sum(-1) - change)


def test_explicit_output_vectors_weight_the_logits():
  seed = RNG.normal(size=(B, K)).astype(np.float32)
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  change = np.einsum("bk,bk->b", seed, linear(WEIGHTS, X))
  close(completeness(linear, WEIGHTS, X, seed, relevance),
        relevance.reshape(B, -1).sum(-1) - change, atol=1e-4)


def test_batch_equals_per_example_and_jit():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  run = jax.jit(functools.partial(completeness, affine, baseline=0.3))
  full = run((WEIGHTS, BIAS), X, TARGET, relevance)
  for b in range(B):
    one = run((WEIGHTS, BIAS), X[b:b + 1], TARGET[b:b + 1], relevance[b:b + 1])
    close(one[0], full[b])
  close(completeness(affine, (WEIGHTS, BIAS), X, TARGET, relevance, baseline=0.3), full)
  assert full.shape == (B,)


@pytest.mark.parametrize("options, match", [
    (dict(baseline="black"), r"baseline must be a number or an array broadcastable to x"),
    (dict(baseline=np.zeros((3, 3))), r"baseline of shape \(3, 3\) does not broadcast to x"),
    (dict(relative=1), r"relative must be True or False"),
    (dict(relevance=jnp.zeros((B, H * W))), r"relevance must have the shape of x"),
    (dict(target=np.zeros(B + 1, int)), r"is a batch of 3 input\(s\).*but target has 4"),
])
def test_bad_inputs_raise_one_line_config_errors(options, match):
  args = {"target": TARGET, "relevance": W_T * X, **options}
  with pytest.raises(ConfigError, match=match) as info:
    completeness(linear, WEIGHTS, X, **args)
  assert "\n" not in str(info.value)
