"""The bias-free linear model that the perturbation metrics' tests check against hand computations.

Gradient x input of `linear` is the exact decomposition of each logit (R = w_c * x sums to
f_c(x)), and setting a pixel to 0 removes exactly its contribution, so curves and correlations
have closed forms. Each test module draws its own images and weights from its own seed and reads
the sizes off them (`B, H, W, C = X.shape`).
"""

from __future__ import annotations

import numpy as np

B, H, W, C, K = 3, 4, 4, 2, 3  # images, height, width, channels, classes
TARGET = np.array([0, 2, 1])


def linear(w, x):
  """Bias-free, so flipping a pixel to 0 removes exactly its contribution."""
  return x.reshape(x.shape[0], -1) @ w


def images_and_weights(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Normal images (B, H, W, C) and weights (H * W * C, K), drawn from `rng` in that order (the
  caller's later draws go on from the same generator)."""
  x = rng.normal(size=(B, H, W, C)).astype(np.float32)
  weights = rng.normal(size=(H * W * C, K)).astype(np.float32)
  return x, weights


def exact_relevance(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Gradient x input of `linear` for `TARGET`: R = w_c * x, summing to f_c(x)."""
  return (weights[:, TARGET].T.reshape(x.shape) * x).astype(np.float32)


def close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)
