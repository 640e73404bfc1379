"""Randomisation checks: 1 for explanations blind to the model, by hand for a two-layer MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from xjax.errors import ConfigError
from xjax.metrics.randomisation import (
  RandomisationResult,
  model_parameter_randomisation,
  random_classes,
  random_logit,
  similarity_of,
)

B, H, W, C, HIDDEN, K = 3, 4, 4, 1, 8, 5
RNG = np.random.default_rng(11)
X = RNG.normal(size=(B, H, W, C)).astype(np.float32)
TARGET = np.array([0, 3, 1])
KEY = jax.random.key(5)
PARAMS = {
  "dense1": {"kernel": RNG.normal(size=(H * W * C, HIDDEN)).astype(np.float32),
             "bias": RNG.normal(size=(HIDDEN,)).astype(np.float32)},
  "dense2": {"kernel": RNG.normal(size=(HIDDEN, K)).astype(np.float32),
             "bias": RNG.normal(size=(K,)).astype(np.float32)},
}


def mlp(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["dense1"]["kernel"] + params["dense1"]["bias"])
  return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]


def gradient(params, x, target):
  return jax.grad(lambda x: (mlp(params, x) * jax.nn.one_hot(target, K)).sum())(x)


def edge_detector(params, x, target):
  # Blind to params and target: the input itself.
  del params, target
  return x


def randomise(explain=gradient, params=PARAMS, **options):
  options = {"key": KEY, **options}
  return model_parameter_randomisation(mlp, params, X, TARGET, explain(params, X, TARGET),
                                       explain=explain, **options)


def test_an_explanation_blind_to_the_weights_scores_exactly_one_at_every_layer():
  for similarity in ("spearman", "pearson"):
    for cascade in (True, False):
      result = randomise(edge_detector, similarity=similarity, cascade=cascade)
      assert isinstance(result, RandomisationResult)
      assert result.layers == ("dense2", "dense1")
      np.testing.assert_array_equal(np.asarray(result.similarity), np.ones((2, B)))


def test_the_gradient_of_an_mlp_changes_once_the_top_layer_is_randomised():
  result = randomise(similarity="pearson")
  assert result.similarity.shape == (2, B)
  assert np.all(np.asarray(result.similarity) < 0.9)
  assert randomise(order="bottom_up").layers == ("dense1", "dense2")


def test_cascading_and_independent_by_hand():
  k2, k1 = jax.random.split(KEY, 2)  # top_down: dense2 gets the first key
  from xjax.metrics.randomisation import _randomised
  r2, r1 = _randomised(PARAMS["dense2"], k2), _randomised(PARAMS["dense1"], k1)
  relevance = gradient(PARAMS, X, TARGET)
  both = {"dense1": r1, "dense2": r2}
  only1 = {"dense1": r1, "dense2": PARAMS["dense2"]}  # independent: layer 2 untouched
  expect = lambda p: similarity_of(gradient(p, X, TARGET), relevance)  # noqa: E731
  cascading = randomise(cascade=True).similarity
  independent = randomise(cascade=False).similarity
  # Both first randomise dense2 alone, so their first rows agree.
  np.testing.assert_allclose(cascading[0], independent[0], atol=1e-6)
  np.testing.assert_allclose(cascading[1], expect(both), atol=1e-6)
  np.testing.assert_allclose(independent[1], expect(only1), atol=1e-6)
  assert not np.allclose(cascading[1], independent[1])
  # The noise keeps each leaf's shape and (about) its spread; zero biases would stay zero.
  assert r1["kernel"].shape == PARAMS["dense1"]["kernel"].shape


def test_flax_variables_are_randomised_under_params_and_other_collections_kept():
  seen = []

  def explain(variables, x, target):
    seen.append(variables)
    return gradient(variables["params"], x, target)

  variables = {"params": PARAMS, "stats": {"mean": np.zeros(3, np.float32)}}
  relevance = gradient(PARAMS, X, TARGET)
  result = model_parameter_randomisation(lambda v, x: mlp(v["params"], x), variables, X, TARGET,
                                         relevance, explain=explain, key=KEY)
  assert result.layers == ("dense2", "dense1")
  assert all(v["stats"] is variables["stats"] for v in seen)


def test_spearman_matches_scipy_with_ties():
  a = RNG.integers(0, 4, size=(5, 30)).astype(np.float32)  # many ties
  b = RNG.integers(0, 6, size=(5, 30)).astype(np.float32)
  expected = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(5)]
  np.testing.assert_allclose(np.asarray(similarity_of(a, b, "spearman")), expected, atol=1e-5)
  expected = [scipy.stats.pearsonr(a[i], b[i]).statistic for i in range(5)]
  np.testing.assert_allclose(np.asarray(similarity_of(a, b, "pearson")), expected, atol=1e-5)


def test_random_logit_picks_another_class_and_is_one_when_blind_to_the_class():
  target = np.arange(40) % K
  for seed in range(25):
    other = np.asarray(random_classes(target, jax.random.key(seed), K))
    assert np.all(other != target) and np.all((other >= 0) & (other < K))
  # Every other class turns up, and only two classes leaves one choice.
  picks = np.asarray(random_classes(np.zeros(400, int), KEY, K))
  assert set(picks.tolist()) == set(range(1, K))
  np.testing.assert_array_equal(np.asarray(random_classes(np.array([0, 1]), KEY, 2)), [1, 0])
  score = random_logit(mlp, PARAMS, X, TARGET, X, explain=edge_detector, key=KEY, num_classes=K)
  np.testing.assert_array_equal(np.asarray(score), np.ones(B))
  score = random_logit(mlp, PARAMS, X, TARGET, gradient(PARAMS, X, TARGET), explain=gradient,
                       key=KEY, num_classes=K, similarity="pearson")
  assert score.shape == (B,) and np.all(np.asarray(score) < 1)


@pytest.mark.parametrize("call, message", [
  (lambda: randomise(order="sideways"), "Unknown order"),
  (lambda: randomise(similarity="ssim"), "Unknown similarity"),
  (lambda: randomise(cascade=1), "cascade must be"),
  (lambda: randomise(key=None), "PRNG key"),
  (lambda: model_parameter_randomisation(mlp, {}, X, TARGET, X, explain=edge_detector, key=KEY),
   "non-empty mapping"),
  (lambda: random_logit(mlp, PARAMS, X, TARGET, X, explain=edge_detector, key=KEY,
                        num_classes=1), "num_classes"),
  (lambda: random_logit(mlp, PARAMS, X, TARGET, X, explain=edge_detector, key=KEY,
                        num_classes=K, similarity="ssim"), "Unknown similarity"),
])
def test_one_line_errors(call, message):
  with pytest.raises(ConfigError, match=message) as info:
    call()
  assert "\n" not in str(info.value)
