"""Heatmap reductions and normalisation against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import heatmaps as hm

R = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 3)), jnp.float32)


def test_channel_reductions():
  np.testing.assert_allclose(hm.channel_sum(R), np.asarray(R).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(hm.channel_max_abs(R), np.abs(np.asarray(R)).max(-1), rtol=1e-6)
  pixel = jnp.array([[[[1.0, -3.0, 2.0]]]])
  assert float(hm.channel_sum(pixel)[0, 0, 0]) == 0.0
  assert float(hm.channel_max_abs(pixel)[0, 0, 0]) == 3.0
  with pytest.raises(ConfigError):
    hm.channel_sum(R[0])


def test_normalize_max_abs_and_sum_per_image():
  h = jnp.array([[[1.0, -4.0], [2.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
  np.testing.assert_allclose(hm.normalize(h), [[[0.25, -1.0], [0.5, 0.0]], [[1, 1], [0, 0]]])
  np.testing.assert_allclose(hm.normalize(h, "sum"),
                             [[[1 / 7, -4 / 7], [2 / 7, 0.0]], [[0.5, 0.5], [0, 0]]], rtol=1e-6)
  with pytest.raises(ConfigError):
    hm.normalize(h, "minmax")


@pytest.mark.parametrize("mode", hm.NORMALIZE_MODES)
def test_normalize_all_zero_is_zero(mode):
  h = jnp.concatenate([jnp.zeros((1, 3, 4)), jnp.ones((1, 3, 4))])
  out = hm.normalize(h, mode)
  assert np.all(np.isfinite(out)) and np.all(out[0] == 0)
  # Gradients stay finite too (the safe denominator is inside jnp.where).
  grad = jax.grad(lambda h: hm.normalize(h, mode).sum())(h)
  assert np.all(np.isfinite(grad))


def test_relevance_share():
  h = jnp.array([[[3.0, -5.0], [1.0, 0.0]],     # positive mass 4, 3 of it top-left.
                 [[-1.0, -2.0], [0.0, 0.0]],    # no positive relevance: 0.
                 [[1.0, 1.0], [1.0, 1.0]]])
  mask = jnp.array([[True, False], [False, False]])  # one mask for all images.
  np.testing.assert_allclose(hm.relevance_share(h, mask), [0.75, 0.0, 0.25])
  per_image = jnp.stack([mask, mask, jnp.ones((2, 2), bool)])
  np.testing.assert_allclose(hm.relevance_share(h, per_image), [0.75, 0.0, 1.0])
  with pytest.raises(ConfigError):
    hm.relevance_share(h, jnp.ones((3, 3), bool))


def test_relevance_share_is_the_attribution_localisation_metric():
  # One computation (`positive_share`): the share of runs.explain is the metric of runs.evaluate.
  from xjax.metrics import attribution_localisation
  rng = np.random.default_rng(1)
  h = rng.normal(size=(4, 5, 6)).astype(np.float32)
  h[3] = -np.abs(h[3])  # no positive relevance: 0 in both
  mask = rng.random((4, 5, 6)) < 0.4
  mask[:, 0, 0] = True
  share = hm.relevance_share(h, mask)
  np.testing.assert_array_equal(
      share, attribution_localisation(None, None, h[..., None], None, h, mask=mask))
  assert float(share[3]) == 0.0
  positive = np.maximum(h, 0)
  np.testing.assert_allclose(share[:3], (positive * mask).sum((1, 2))[:3]
                             / positive.sum((1, 2))[:3], rtol=1e-5)
