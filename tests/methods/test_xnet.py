"""XNet: vmapped drop losses against the naive loop, X-layer and min gradients, matching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.errors import ConfigError
from xjax.methods import xnet
from xjax.nn.xnet import XNetHead
from xjax.train.losses import ModelOutputs, build_loss_terms

RNG = np.random.default_rng(0)
K, C, B, F = 4, 3, 16, 6


def _head_params():
  head = XNetHead(num_neurons=K, num_classes=C)
  return head, head.init(jax.random.key(0), jnp.zeros((1, F)))["params"]


def _batch():
  features = jnp.asarray(RNG.normal(size=(B, F)), jnp.float32)
  labels = jnp.asarray(RNG.integers(0, C, size=B))
  membership = jnp.asarray(RNG.random((B, K)) < 0.4)  # images in several or no categories
  return features, labels, membership


def test_vmapped_drop_losses_equal_k_masked_forward_passes():
  head, params = _head_params()
  features, labels, membership = _batch()
  _, hidden = head.apply({"params": params}, features)
  losses, counts = xnet.drop_losses(params["output"], hidden, labels, membership)
  loop_losses, loop_counts = xnet.drop_losses_loop(params["output"], hidden, labels, membership)
  np.testing.assert_allclose(losses, loop_losses, rtol=1e-6)
  np.testing.assert_array_equal(counts, loop_counts)
  # And by hand for neuron 1: the full head run with the explainable kernel's column 1 zeroed.
  dropped = jax.tree.map(lambda a: a, params)
  dropped["explainable"]["kernel"] = params["explainable"]["kernel"].at[:, 1].set(0.0)
  dropped["explainable"]["bias"] = params["explainable"]["bias"].at[1].set(-1.0)  # ReLU -> 0
  logits, _ = head.apply({"params": dropped}, features)
  per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  mask = np.asarray(membership[:, 1], np.float32)
  np.testing.assert_allclose(losses[1], (per_image * mask).sum() / mask.sum(), rtol=1e-5)


def test_a_dropped_neuron_gets_no_gradient_through_the_x_layer():
  head, params = _head_params()
  features, labels, _ = _batch()
  _, hidden = head.apply({"params": params}, features)
  keep = jnp.ones((K,)).at[2].set(0.0)

  def loss(output_params, hidden):
    logits = xnet.head_logits(output_params, hidden, keep)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  g_params, g_hidden = jax.grad(loss, argnums=(0, 1))(params["output"], hidden)
  np.testing.assert_array_equal(g_params["kernel"][2], 0.0)  # W_o[j, :]
  np.testing.assert_array_equal(g_hidden[:, 2], 0.0)  # so W_h[:, j], b_h[j] get none either
  assert float(jnp.abs(g_params["kernel"][jnp.array([0, 1, 3])]).min()) > 0


def test_the_min_objective_sends_its_gradient_to_the_arg_min_neuron_only():
  losses = jnp.array([0.9, 0.3, 0.7, 0.5])
  counts = jnp.array([3.0, 2.0, 1.0, 4.0])
  grad = jax.grad(lambda per_category: xnet.objective(per_category, counts, "min"))(losses)
  np.testing.assert_array_equal(grad, [0.0, 1.0, 0.0, 0.0])
  # An empty category is left out even when its (undefined, 0) loss is the smallest.
  empty = counts.at[1].set(0.0)
  assert float(xnet.objective(losses.at[1].set(0.0), empty, "min")) == pytest.approx(0.5)
  np.testing.assert_array_equal(
      jax.grad(lambda per_category: xnet.objective(per_category, empty, "min"))(losses),
      [0.0, 0.0, 0.0, 1.0])
  assert float(xnet.objective(losses, jnp.zeros(4), "min")) == 0.0  # no category present
  assert float(xnet.objective(losses, empty, "sum")) == pytest.approx(0.9 + 0.7 + 0.5)
  assert float(xnet.objective(losses, empty, "mean")) == pytest.approx((0.9 + 0.7 + 0.5) / 3)


def test_the_loss_term_is_minus_alpha_times_the_min_and_follows_the_matching():
  head, params = _head_params()
  features, labels, membership = _batch()
  logits, hidden = head.apply({"params": params}, features)
  attributes = jnp.concatenate([jnp.zeros((B, 1)), membership.astype(jnp.float32)], axis=1)
  terms = build_loss_terms({"xnet_drop": {"weight": 0.05, "categories": [1, 2, 3, 4]}})
  weight, term = terms["xnet_drop"]
  outputs = ModelOutputs(logits, {"xnet_hidden": hidden})
  value = term({"head": params}, {"attributes": attributes, "label": labels}, outputs)
  losses, counts = xnet.drop_losses(params["output"], hidden, labels, membership)
  assert weight == 0.05
  np.testing.assert_allclose(value, -xnet.objective(losses, counts, "min"), rtol=1e-6)
  # With category c matched to neuron perm[c], neuron perm[c] is dropped for category c's images.
  perm = jnp.array([2, 0, 3, 1])
  matched = xnet.category_membership(np.asarray(attributes), [1, 2, 3, 4], np.asarray(perm))
  permuted = term({"head": params}, {"attributes": attributes, "label": labels,
                                     "xnet_membership": matched}, outputs)
  by_hand = xnet.drop_losses(params["output"], hidden, labels,
                             membership[:, jnp.argsort(perm)])
  np.testing.assert_allclose(permuted, -xnet.objective(*by_hand, "min"), rtol=1e-6)
  with pytest.raises(ConfigError, match="one category per neuron"):
    xnet.xnet_drop_loss([1, 2])({"head": params}, {"attributes": attributes, "label": labels},
                                outputs)
  with pytest.raises(ConfigError, match="objective"):
    xnet.xnet_drop_loss([1, 2, 3, 4], "max")


def test_matching_recovers_a_planted_permutation():
  """Category c's images depend on neuron planted[c]: dropping it hurts them most."""
  k, n = 4, 400
  planted = np.array([2, 0, 3, 1])
  category = RNG.integers(0, k, size=n)
  hidden = np.full((n, k), 0.1, np.float32)
  hidden[np.arange(n), planted[category]] = 3.0  # each image uses its category's neuron
  # Even neurons vote for class 1, odd ones for class 0; each image's label is its neuron's vote,
  # so dropping that neuron (and only that one) makes the image's loss large.
  vote = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
  output = {"kernel": jnp.asarray(np.stack([-vote, vote], axis=1), jnp.float32),
            "bias": jnp.zeros(2)}
  labels = np.where(planted[category] % 2 == 0, 1, 0).astype(np.int32)
  membership = np.eye(k)[category]
  batches = [(jnp.asarray(hidden[i:i + 100]), jnp.asarray(labels[i:i + 100]),
              jnp.asarray(membership[i:i + 100])) for i in range(0, n, 100)]
  matrix = xnet.drop_loss_matrix(output, batches)
  assert matrix.shape == (k, k)
  np.testing.assert_array_equal(xnet.match_neurons(matrix), planted)
  # The matrix is the per-sample mean, whatever the batching.
  one_batch = xnet.drop_loss_matrix(output, [(jnp.asarray(hidden), jnp.asarray(labels),
                                              jnp.asarray(membership))])
  np.testing.assert_allclose(matrix, one_batch, rtol=1e-5)
