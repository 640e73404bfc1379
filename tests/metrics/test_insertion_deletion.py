"""Insertion and deletion against pixel flipping and a numpy loop; the Gaussian blur by hand."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from tests.metrics.linear_model import TARGET, close, images_and_weights, linear
from xjax.errors import ConfigError
from xjax.metrics.insertion_deletion import gaussian_blur, insertion_deletion
from xjax.metrics.pixel_flipping import flip_counts, pixel_flipping

RNG = np.random.default_rng(1)
X, WEIGHTS = images_and_weights(RNG)
B, H, W, C = X.shape
P = H * W
RELEVANCE = RNG.normal(size=(B, H, W, C)).astype(np.float32)


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_curves_against_a_numpy_loop():
  # Independent of pixel_flipping: sort, then insert into the canvas or delete to 0.
  sigma, steps = 1.0, 4
  canvas = np.asarray(gaussian_blur(X, sigma), np.float64)
  result = insertion_deletion(linear, WEIGHTS, X, TARGET, RELEVANCE, steps=steps,
                              blur_sigma=sigma)
  counts = flip_counts(P, steps)
  order = np.argsort(-RELEVANCE.sum(-1).reshape(B, P), axis=1, kind="stable")
  for b in range(B):
    for k, count in enumerate(counts):
      moved = np.zeros(P, bool)
      moved[order[b, :count]] = True
      moved = moved.reshape(H, W, 1)
      inserted = np.where(moved, X[b], canvas[b]).reshape(1, -1)
      deleted = np.where(moved, 0.0, X[b]).reshape(1, -1)
      close(result.insertion[b, k], softmax(inserted @ WEIGHTS)[0, TARGET[b]])
      close(result.deletion[b, k], softmax(deleted @ WEIGHTS)[0, TARGET[b]])
  close(result.fractions, counts / P)
  # RISE's auc: (sum - first / 2 - last / 2) / (n - 1) with equal steps.
  rise_auc = lambda a: (a.sum(1) - a[:, 0] / 2 - a[:, -1] / 2) / (a.shape[1] - 1)
  close(result.insertion_area, rise_auc(np.asarray(result.insertion)))
  close(result.deletion_area, rise_auc(np.asarray(result.deletion)))


def test_deletion_is_pixel_flipping_of_the_probability():
  flipped = pixel_flipping(linear, WEIGHTS, X, TARGET, RELEVANCE, steps=5, score="probability")
  result = insertion_deletion(linear, WEIGHTS, X, TARGET, RELEVANCE, steps=5)
  close(result.deletion, flipped.curves)
  close(result.deletion_area, flipped.area)
  # Insertion ends at the image, deletion starts there.
  close(result.insertion[:, -1], result.deletion[:, 0])


def test_gaussian_blur_by_hand():
  constant = np.full((1, 5, 3, 2), 0.7, np.float32)
  close(gaussian_blur(constant, 2.0), constant)  # renormalised at the border
  close(gaussian_blur(X, 0.0), X)
  impulse = np.zeros((1, 13, 13, 1), np.float32)
  impulse[0, 6, 6] = 1.0
  blurred = np.asarray(gaussian_blur(impulse, 1.0))[0, :, :, 0]
  # Rows 3..9 reach no border, so their weights are the plain truncated Gaussian (3 sigma).
  g = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
  expected = np.zeros((13, 13))
  expected[3:10, 3:10] = np.outer(g, g) / g.sum() ** 2
  close(blurred, expected, atol=1e-6)


def test_batch_jit_chunks_and_baselines():
  run = functools.partial(insertion_deletion, linear, WEIGHTS, X, TARGET, RELEVANCE, steps=4,
                          insertion_baseline="uniform", key=jax.random.key(0))
  full = run()
  for max_batch in (1, 7):
    for a, b in zip(run(max_batch=max_batch), full):
      close(a, b)
  jitted = jax.jit(functools.partial(insertion_deletion, linear, steps=4,
                                     insertion_baseline="uniform", max_batch=5))
  for a, b in zip(jitted(WEIGHTS, X, TARGET, RELEVANCE, key=jax.random.key(0)), full):
    close(a, b)
  blur = jax.jit(functools.partial(insertion_deletion, linear, steps=4, blur_sigma=1.0))
  blurred = blur(WEIGHTS, X, TARGET, RELEVANCE)
  for b in range(B):  # per example: one compile for the shape of one, reused
    one = blur(WEIGHTS, X[b:b + 1], TARGET[b:b + 1], RELEVANCE[b:b + 1])
    close(one.insertion[0], blurred.insertion[b])
    close(one.deletion_area[0], blurred.deletion_area[b])
  # A number as the canvas: column 0 is the model on that constant image.
  zero = insertion_deletion(linear, WEIGHTS, X, TARGET, RELEVANCE, steps=4,
                            insertion_baseline=0.0, score="logit")
  close(zero.insertion[:, 0], 0.0)


@pytest.mark.parametrize("options, match", [
    (dict(insertion_baseline="black"), r"Unknown baseline 'black'; known: .*'blur'"),
    (dict(deletion_baseline="gray"), r"Unknown baseline 'gray'"),
    (dict(blur_sigma=-0.5), r"blur_sigma must be a finite Python number >= 0"),
    (dict(score="prob"), r"Unknown score 'prob'"),
    (dict(steps=0), r"steps must be a Python int >= 1"),
    (dict(insertion_baseline="uniform"), r"baseline='uniform' needs a PRNG key"),
    (dict(x=X[0]), r"x must be a batch of images"),
])
def test_bad_options_raise_one_line_config_errors(options, match):
  x = options.pop("x", X)
  with pytest.raises(ConfigError, match=match) as info:
    insertion_deletion(linear, WEIGHTS, x, TARGET, RELEVANCE, **options)
  assert "\n" not in str(info.value)
