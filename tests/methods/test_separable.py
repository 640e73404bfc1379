"""Block-wise L1 (Rieger 2018, Eq. 5-6) against hand-computed matrices, its gradient, the block
rules, and the top-2 heatmaps (diffusion, Eq. 7, is `xjax.metrics.diffusion`'s: see
tests/metrics/test_diffusion.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.methods import separable
from xjax.train.losses import build_loss_terms

W = jnp.array([[1.0, -2.0],
               [3.0, 4.0],
               [-5.0, 6.0],
               [7.0, -8.0]])  # (n_in = 4, n_out = 2); blocks of the inputs: 0, 0, 1, 1


def test_blocks_split_units_evenly_over_the_classes():
  np.testing.assert_array_equal(separable.block_of(4, 2), [0, 0, 1, 1])
  np.testing.assert_array_equal(separable.block_of(5, 2), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(separable.block_of(10, 10), np.arange(10))  # output layer
  np.testing.assert_array_equal(separable.block_of(512, 10)[[0, 51, 52, 511]], [0, 0, 1, 9])
  np.testing.assert_array_equal(separable.off_block_mask(4, 2, 2),
                                [[0, 1], [0, 1], [1, 0], [1, 0]])
  with pytest.raises(ConfigError, match="class blocks"):
    separable.block_of(3, 10)


def test_the_penalty_sums_positive_off_block_weights_and_its_gradient_is_their_mask():
  params = {"dense1": {"kernel": W, "bias": jnp.ones(2)},
            "conv1": {"kernel": jnp.ones((3, 3, 1, 4))}}  # a conv kernel is not penalised
  # Off-block entries: (0,1) = -2, (1,1) = 4, (2,0) = -5, (3,0) = 7 -> positive ones 4 + 7.
  assert float(separable.block_l1(params, 2)) == pytest.approx(11.0)
  grad = jax.grad(lambda p: separable.block_l1(p, 2))(params)
  np.testing.assert_array_equal(grad["dense1"]["kernel"], [[0, 0], [0, 1], [0, 0], [1, 0]])
  np.testing.assert_array_equal(grad["conv1"]["kernel"], 0.0)
  np.testing.assert_array_equal(grad["dense1"]["bias"], 0.0)


def test_the_loss_term_is_the_penalty_and_layers_can_be_chosen():
  params = {"dense1": {"kernel": W}, "classifier": {"kernel": jnp.ones((2, 2))}}
  weight, term = build_loss_terms({"block_l1": {"weight": 0.5, "num_classes": 2}})["block_l1"]
  assert weight == 0.5
  assert float(term(params, None, None)) == pytest.approx(11.0 + 2.0)  # + the two off-diagonal 1s
  only = separable.block_l1_term(2, layers=["classifier"])
  assert float(only(params, None, None)) == pytest.approx(2.0)
  with pytest.raises(ConfigError, match="No dense layer"):
    separable.block_l1(params, 2, layers=["dense9"])


def test_the_dense_layers_of_a_table1_network_are_found():
  from xjax.nn.registry import get_model, init_variables
  params = init_variables(get_model("cnn_fashion"), jax.random.key(0), (28, 28, 1))["params"]
  kernels = separable.dense_kernels(params)
  assert {k: v.shape for k, v in kernels.items()} == {"dense1/kernel": (6272, 256),
                                                      "classifier/kernel": (256, 10)}
  by_hand = sum(float(jnp.sum(jax.nn.relu(k) * separable.off_block_mask(*k.shape, 10)))
                for k in kernels.values())
  assert float(separable.block_l1(params, 10)) == pytest.approx(by_hand, rel=1e-5)


def tiny_relu_net(rng):
  """`(apply_fn, params)` of Dense(12 -> 8)-ReLU-Dense(8 -> 4) on (B, 2, 2, 3) images."""
  params = {"w1": jnp.asarray(rng.normal(size=(12, 8)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}

  def apply_fn(p, x):
    return jax.nn.relu(x.reshape(len(x), -1) @ p["w1"]) @ p["w2"]

  return apply_fn, params


def test_top2_heatmaps_explain_the_two_largest_logits_and_conserve_them():
  from xjax.explain import composites, heatmaps
  from xjax.explain.lrp import lrp
  rng = np.random.default_rng(3)
  apply_fn, params = tiny_relu_net(rng)
  x = jnp.asarray(rng.random((5, 2, 2, 3)), jnp.float32)
  top1, top2, classes = separable.top2_heatmaps(apply_fn, params, x)
  logits = np.asarray(apply_fn(params, x))
  np.testing.assert_array_equal(classes, np.argsort(-logits, axis=1)[:, :2])
  # The top-2 class with all other outputs set to 0, written as an explicit output relevance.
  explicit = jax.nn.one_hot(classes[:, 1], 4) * logits
  by_hand = heatmaps.channel_sum(lrp(apply_fn, params, x, explicit, composites.dtd(0.0, 1.0)))
  np.testing.assert_allclose(top2, by_hand, rtol=1e-6)
  assert top1.shape == top2.shape == (5, 2, 2)
  positive = logits[np.arange(5), classes[:, 1]] > 0  # DTD conserves a positive logit
  assert positive.sum() >= 2
  np.testing.assert_allclose(np.asarray(top2).sum(axis=(1, 2))[positive],
                             logits[np.arange(5), classes[:, 1]][positive], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(top1).sum(axis=(1, 2)), logits.max(axis=1), rtol=1e-4)


def test_top2_heatmaps_of_many_images_equal_one_batch_whatever_the_padding():
  rng = np.random.default_rng(4)
  apply_fn, params = tiny_relu_net(rng)
  x = rng.random((5, 2, 2, 3)).astype(np.float32)
  whole = separable.top2_heatmaps(apply_fn, params, jnp.asarray(x))
  batched = separable.top2_heatmaps_of(apply_fn, params, x, batch_size=2)  # 2 + 2 + (1 + 1 pad)
  for a, b in zip(whole, batched):
    assert b.shape[0] == 5
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(batched[3], apply_fn(params, x), rtol=1e-5)  # and the logits
  with pytest.raises(ConfigError, match=r"\(N, H, W, C\)"):
    separable.top2_heatmaps_of(apply_fn, params, x[0])
  with pytest.raises(ConfigError, match="batch_size"):
    separable.top2_heatmaps_of(apply_fn, params, x, batch_size=0)


def test_channel_blocks_give_each_input_the_block_of_its_channel():
  # A flattened (H, W, k) = (1, 3, 4) map, C = 2: channels 0-1 -> block 0, channels 2-3 -> 1,
  # at every position (unit i = position * 4 + channel).
  np.testing.assert_array_equal(separable.input_blocks(12, 2, input_channels=4),
                                [0, 0, 1, 1] * 3)
  np.testing.assert_array_equal(separable.input_blocks(12, 2), [0] * 6 + [1] * 6)  # flat index
  mask = separable.off_block_mask(12, 2, 2, input_channels=4)
  np.testing.assert_array_equal(mask[:, 0], [0, 0, 1, 1] * 3)
  np.testing.assert_array_equal(mask[:, 1], [1, 1, 0, 0] * 3)
  params = {"dense1": {"kernel": jnp.ones((12, 2))}, "classifier": {"kernel": jnp.ones((2, 2))}}
  # dense1: 12 of 24 weights off-block either way; the classifier: 2 of 4.
  assert float(separable.block_l1(params, 2, channel_blocks={"dense1": 4})) == pytest.approx(14.0)
  term = separable.block_l1_term(2, channel_blocks=(("dense1", 4),))
  grad = jax.grad(lambda p: term(p, None, None))(params)
  np.testing.assert_array_equal(grad["dense1"]["kernel"], mask)
  with pytest.raises(ConfigError, match="not a multiple"):
    separable.input_blocks(10, 2, input_channels=4)
  with pytest.raises(ConfigError, match="dense9"):
    separable.block_l1(params, 2, channel_blocks={"dense9": 4})
