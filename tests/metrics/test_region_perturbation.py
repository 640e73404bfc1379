"""Region perturbation against hand computations on a linear model and 4x4 images of 2x2 patches."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.metrics.linear_model import TARGET, close, exact_relevance, images_and_weights, linear
from xjax.errors import ConfigError
from xjax.metrics.region_perturbation import patch_ids, region_perturbation

RNG = np.random.default_rng(0)
X, WEIGHTS = images_and_weights(RNG)
B, H, W, C = X.shape
RELEVANCE = exact_relevance(WEIGHTS, X)  # the exact contribution of every element


def patch_sums(relevance, patch=2):
  """(B, 4) the relevance of the 2x2 patches of a 4x4 image, row-major, by explicit slicing."""
  return np.stack([relevance[:, i:i + patch, j:j + patch].sum((1, 2, 3))
                   for i in range(0, H, patch) for j in range(0, W, patch)], axis=1)


@pytest.mark.parametrize("order", ["most_relevant_first", "least_relevant_first"])
def test_linear_model_curve_removes_sorted_patch_contributions(order):
  # With a zero baseline, replacing a patch removes exactly its contribution sum w_i x_i, so the
  # curve is f(x) minus the cumulative sum of the sorted patch sums.
  sums = patch_sums(RELEVANCE).astype(np.float64)
  ordered = -np.sort(-sums, 1) if order == "most_relevant_first" else np.sort(sums, 1)
  f = RELEVANCE.sum((1, 2, 3))[:, None]
  expected = f - np.concatenate([np.zeros((B, 1)), np.cumsum(ordered, 1)], 1)
  result = region_perturbation(linear, WEIGHTS, X, TARGET, RELEVANCE, patch_size=2, order=order)
  close(result.curves, expected, atol=1e-4)
  close(result.curves[:, 0], linear(WEIGHTS, X)[np.arange(B), TARGET], atol=1e-4)
  close(result.fractions, [0, 0.25, 0.5, 0.75, 1])
  close(result.area, np.trapezoid(expected, np.linspace(0, 1, 5), axis=1), atol=1e-4)
  close(result.aopc, (expected[:, :1] - expected).mean(1), atol=1e-4)  # Samek et al., Eq. 12
  two = region_perturbation(linear, WEIGHTS, X, TARGET, RELEVANCE, patch_size=2, order=order,
                            steps=2)
  close(two.curves, expected[:, :3], atol=1e-4)


def test_a_hand_made_4x4_image():
  # x = 1 everywhere, the model sums the pixels: each replaced 2x2 patch removes 4. Patch
  # relevance (row-major): 1, 9, -2, 9 -> MoRF replaces patches 1, 3 (tie: lower index), 0, 2.
  x = jnp.ones((1, 4, 4, 1))
  relevance = jnp.zeros((1, 4, 4)).at[0, 0, 0].set(1.0).at[0, 1, 3].set(9.0)
  relevance = relevance.at[0, 3, 0].set(-2.0).at[0, 2, 2].set(9.0)
  probe = lambda params, x: jnp.stack([x.sum((1, 2, 3)), x[:, 0, 0, 0]], -1)
  run = functools.partial(region_perturbation, probe, None, x, jnp.array([0]), relevance,
                          patch_size=2, baseline=-1.0)
  close(run().curves[0], [16, 8, 0, -8, -16])
  # The probe's output 1 reads pixel (0, 0), in patch 0: replaced at step 3 (MoRF), 2 (LeRF).
  reader = functools.partial(region_perturbation, probe, None, x, jnp.array([1]), relevance,
                             patch_size=2, baseline=-1.0)
  close(reader().curves[0], [1, 1, 1, -1, -1])
  close(reader(order="least_relevant_first").curves[0], [1, 1, -1, -1, -1])


def test_partial_patches_follow_quantus_centred_grid():
  assert patch_ids(5, 5, 2).tolist()[0] == [0, 0, 1, 1, 2]  # pad (0, 1): partial last column
  assert patch_ids(6, 6, 4)[:, 0].tolist() == [0, 0, 0, 2, 2, 2]  # pad (1, 1): 3 + 3 rows
  x = jnp.ones((1, 5, 5, 1))
  relevance = jnp.zeros((1, 5, 5)).at[0, 4, 4].set(1.0)  # the 1x1 corner patch 8 first
  result = region_perturbation(lambda p, x: x.sum((1, 2, 3))[:, None], None, x, jnp.array([0]),
                               relevance, patch_size=2, steps=2)
  close(result.curves[0], [25, 24, 20])  # then patch 0 (tie at 0 relevance: lowest index)
  close(result.fractions, [0, 1 / 9, 2 / 9])


def test_batch_jit_chunks_and_blur_agree():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  run = functools.partial(region_perturbation, linear, WEIGHTS, X, TARGET, relevance,
                          patch_size=2, baseline="blur", blur_sigma=1.0)
  full = run()
  for b in range(B):  # batch equals per example
    one = region_perturbation(linear, WEIGHTS, X[b:b + 1], TARGET[b:b + 1], relevance[b:b + 1],
                              patch_size=2, baseline="blur", blur_sigma=1.0)
    close(one.curves[0], full.curves[b])
  for max_batch in (1, 4):
    close(run(max_batch=max_batch).curves, full.curves)
  jitted = jax.jit(functools.partial(region_perturbation, linear, patch_size=2, baseline="blur",
                                     blur_sigma=1.0, max_batch=4))(WEIGHTS, X, TARGET, relevance)
  for a, b in zip(jitted, full):
    close(a, b)
  # The blurred baseline is not the image: the last point differs from f(x).
  assert not np.allclose(full.curves[:, -1], full.curves[:, 0])


@pytest.mark.parametrize("options, match", [
    (dict(patch_size=0), r"patch_size must be a Python int >= 1"),
    (dict(patch_size=5), r"patch_size=5 exceeds the 4x4 images"),
    (dict(patch_size=2, steps=5), r"steps=5 exceeds the 4 patches of 2x2 in 4x4 images"),
    (dict(baseline="black"), r"Unknown baseline 'black'; known: a number, an array, 'mean'"),
    (dict(baseline="blur", blur_sigma=-1.0), r"blur_sigma must be a finite Python number"),
    (dict(order="morf"), r"Unknown order 'morf'"),
    (dict(score="prob"), r"Unknown score 'prob'"),
    (dict(baseline="uniform"), r"baseline='uniform' needs a PRNG key"),
    (dict(max_batch=0), r"max_batch must be a Python int >= 1"),
])
def test_bad_options_raise_one_line_config_errors(options, match):
  with pytest.raises(ConfigError, match=match) as info:
    region_perturbation(linear, WEIGHTS, X, TARGET, RELEVANCE, **{"patch_size": 2, **options})
  assert "\n" not in str(info.value)
