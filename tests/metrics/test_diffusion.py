"""Diffusion (Rieger et al. 2018, Eq. 7): its one computation (`heatmap_distances`,
`unit_heatmaps`) on hand-made heatmaps; per example, a closed form on a linear model, d of the
separable experiment's DTD heatmaps on a ReLU network, and a class-blind explanation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import composites, gradients
from xjax.explain.lrp import lrp
from xjax.methods import separable
from xjax.metrics import METRICS, diffusion, get_metric
from xjax.metrics.diffusion import heatmap_distances, runner_up, unit_heatmaps

B, H, W, C, K = 5, 4, 4, 2, 3
RNG = np.random.default_rng(0)
X = RNG.uniform(0.1, 1, size=(B, H, W, C)).astype(np.float32)
WEIGHTS = RNG.normal(size=(H * W * C, K)).astype(np.float32)


def linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


def test_distances_are_the_frobenius_norms_of_the_heatmap_differences():
  top1 = np.zeros((2, 3, 3))
  top2 = np.zeros((2, 3, 3))
  top2[0, 0, 0], top2[0, 2, 1] = 3.0, 4.0  # distance 5
  top1[1] = 1.0  # distance sqrt(9) = 3 for the all-ones difference
  np.testing.assert_allclose(heatmap_distances(top1, top2, unit=False), [5.0, 3.0], rtol=1e-6)
  np.testing.assert_array_equal(heatmap_distances(top1, top1, unit=False), 0.0)
  for bad in ((np.zeros((2, 3, 3, 1)),) * 2, (np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))):
    with pytest.raises(ConfigError, match="N, H, W"):
      heatmap_distances(*bad)


def test_unit_heatmaps_have_norm_one_and_bound_the_distance_by_two():
  h = jnp.asarray([[[3.0, 0.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])  # norms 5 and 0
  unit = unit_heatmaps(h)
  np.testing.assert_allclose(unit[0], [[0.6, 0.0], [0.0, 0.8]], rtol=1e-6)
  np.testing.assert_array_equal(unit[1], 0.0)  # all-zero stays zero, no NaN
  # Opposite heatmaps: 2; orthogonal: sqrt(2); the same heatmap at another scale: 0.
  a = jnp.asarray([[[1.0, 0.0]]])
  b = jnp.asarray([[[0.0, 2.0]]])
  np.testing.assert_allclose(heatmap_distances(a, -3 * a), [2.0], rtol=1e-6)
  np.testing.assert_allclose(heatmap_distances(a, b), [np.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(heatmap_distances(a, 7 * a), [0.0], atol=1e-7)


def test_runner_up_is_the_best_other_class():
  logits = jnp.array([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [0.0, 5.0, 5.0]])
  np.testing.assert_array_equal(runner_up(logits, jnp.array([0, 2, 1])), [2, 0, 2])


def test_linear_model_closed_form():
  # gradient x input of class c is x * W_c exactly: d_b = ||x_b * (W_t - W_o)|| summed over
  # channels first, with o the runner-up class of each image.
  target = np.array([0, 1, 2, 0, 1])
  relevance = gradients.gradient_x_input(linear, WEIGHTS, X, target)
  scores = diffusion(linear, WEIGHTS, X, target, relevance, explain=functools.partial(
      gradients.gradient_x_input, linear), unit=False)
  logits = linear(WEIGHTS, X)
  other = [max((c for c in range(K) if c != t), key=lambda c: logits[b, c])
           for b, t in enumerate(target)]
  maps = lambda cls: (X * np.stack([WEIGHTS[:, c].reshape(H, W, C) for c in cls])).sum(-1)
  expected = np.sqrt(((maps(target) - maps(other)) ** 2).sum((1, 2)))
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  # A given `other` class replaces the runner-up.
  given = (target + 1) % K
  np.testing.assert_allclose(
      diffusion(linear, WEIGHTS, X, target, relevance, unit=False, other=given,
                explain=functools.partial(gradients.gradient_x_input, linear)),
      np.sqrt(((maps(target) - maps(given)) ** 2).sum((1, 2))), rtol=1e-5)


def test_mean_is_the_separable_experiments_d_of_dtd():
  # A ReLU network explained by DTD for its top-1 class; the metric re-runs DTD for the runner-up.
  # Per image, the distance of the unit top-1 and top-2 heatmaps of `top2_heatmaps` (the separable
  # experiment's): their mean is its d (Table 2).
  params = {"w1": jnp.asarray(RNG.normal(size=(H * W * C, 8)), jnp.float32),
            "w2": jnp.asarray(RNG.normal(size=(8, K)), jnp.float32)}

  def net(p, x):
    return jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]

  explain = lambda p, x, t: lrp(net, p, x, t, composites.dtd(0.0, 1.0))
  top1, top2, classes = separable.top2_heatmaps(net, params, X, 0.0, 1.0)
  scores = jax.jit(functools.partial(diffusion, net, explain=explain))(
      params, X, classes[:, 0], explain(params, X, classes[:, 0]))
  unit = [np.asarray(h) / np.maximum(np.linalg.norm(h, axis=(1, 2), keepdims=True), 1e-30)
          for h in (top1, top2)]  # an empty (all-zero) heatmap stays 0
  expected = np.linalg.norm(unit[0] - unit[1], axis=(1, 2))  # numpy, not the code under test
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
  assert np.all((scores >= 0) & (scores <= 2 + 1e-6)) and scores.mean() > 0.1


def test_a_class_blind_explanation_scores_zero():
  blind = lambda params, x, target: x  # the same map whatever the class
  scores = diffusion(linear, WEIGHTS, X, np.zeros(B, np.int32), X, explain=blind)
  np.testing.assert_allclose(scores, 0, atol=1e-6)


def test_registered_and_errors():
  assert METRICS.metadata("diffusion")["higher_is_better"] is True
  explain = functools.partial(gradients.gradient, linear)
  target = np.zeros(B, np.int32)
  for change, match in (
      (dict(target=np.zeros((B, K), np.float32)), r"class indices \(B,\)"),
      (dict(target=np.full(B, K)), r"target must be class indices in \[0, 3\)"),
      (dict(unit=1), "unit must be True or False"),
      (dict(explain=None), "explain must be a function"),
      (dict(relevance=X[:2]), "relevance must have the shape of x")):
    args = dict(target=target, relevance=X, explain=explain, unit=True) | change
    with pytest.raises(ConfigError, match=match):
      diffusion(linear, WEIGHTS, X, args["target"], args["relevance"], explain=args["explain"],
                unit=args["unit"])
  with pytest.raises(ConfigError, match="Bad value 1 for option 'unit'"):
    get_metric("diffusion", explain=explain, unit=1)
