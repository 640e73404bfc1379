"""CAM and Grad-CAM against their closed forms; contrastive excitation backprop by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain.cam import cam, cam_maps, gradcam, gradcam_maps
from xjax.explain.excitation import excitation_backprop, winning_probability
from xjax.explain.heatmaps import channel_sum

RNG = np.random.default_rng(1)
KERNEL1 = RNG.normal(size=(3, 3, 2, 4)).astype(np.float32)
KERNEL2 = RNG.normal(size=(3, 3, 4, 5)).astype(np.float32)
HEAD = RNG.normal(size=(5, 3)).astype(np.float32)
BIAS = RNG.normal(size=(3,)).astype(np.float32)
PARAMS = {"k1": KERNEL1, "k2": KERNEL2, "w": HEAD, "b": BIAS}
X = jnp.asarray(RNG.uniform(size=(2, 8, 8, 2)).astype(np.float32))


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def features(p, x):
  return jax.nn.relu(_conv(jax.nn.relu(_conv(x, p["k1"])), p["k2"]))


def gap_net(p, x):
  """conv-ReLU-conv-ReLU, global average pooling, dense: the CAM architecture."""
  return features(p, x).mean(axis=(1, 2)) @ p["w"] + p["b"]


def test_cam_is_the_class_weighted_sum_of_the_last_feature_maps():
  target = jnp.array([2, 0])
  maps = features(PARAMS, X)
  want = jnp.einsum("bhwk,kb->bhw", maps, HEAD[:, np.asarray(target)])  # sum_k w_ck A_k
  np.testing.assert_allclose(cam_maps(gap_net, PARAMS, X, target), want, rtol=1e-5, atol=1e-5)
  # Its mean plus the bias is the class score (Zhou et al. 2016, Eq. 2).
  logits = gap_net(PARAMS, X)[jnp.arange(2), target]
  np.testing.assert_allclose(want.mean(axis=(1, 2)) + BIAS[np.asarray(target)], logits, rtol=1e-5)
  full = cam(gap_net, PARAMS, X, target)
  assert full.shape == X.shape  # same resolution here: the map, spread over the 2 channels
  np.testing.assert_allclose(channel_sum(full), want, rtol=1e-5, atol=1e-5)


def test_gradcam_weights_maps_by_mean_gradients_and_rectifies():
  target = jnp.array([1, 1])
  maps = features(PARAMS, X)
  alpha = HEAD[:, 1] / 64.0  # dy/dA_k(i, j) = w_k / (h w) for a GAP head
  want = np.maximum(np.einsum("bhwk,k->bhw", maps, alpha), 0)
  np.testing.assert_allclose(gradcam_maps(gap_net, PARAMS, X, target), want, rtol=1e-5,
                             atol=1e-6)
  raw = gradcam_maps(gap_net, PARAMS, X, target, relu=False)
  assert float(raw.min()) < 0 or float(want.min()) >= 0
  # The first convolution's maps by index and the shapes of the resized heatmap.
  assert gradcam_maps(gap_net, PARAMS, X, target, layer=0).shape == (2, 8, 8)
  assert gradcam(gap_net, PARAMS, X, target).shape == X.shape


def test_cam_without_convolutions_is_a_clear_error():
  with pytest.raises(ConfigError, match="convolution"):
    cam(lambda p, x: x.reshape(2, -1) @ p, jnp.ones((128, 3)), X, jnp.array([0, 1]))


def test_contrastive_mwp_subtracts_the_dual_unit_at_the_top_layer():
  """c-MWP at the top layer's input, by hand: MWP(W) - MWP(-W) through the dense head."""
  target = jnp.array([0, 2])
  maps = np.asarray(features(PARAMS, X))
  pooled = maps.mean(axis=(1, 2))  # (2, 5): the top layer's input

  def mwp(a, w, t):
    w_pos = np.maximum(w, 0)
    return a * w_pos[:, t] / (a @ w_pos[:, t])

  want = np.stack([mwp(pooled[b], HEAD, int(t)) - mwp(pooled[b], -HEAD, int(t))
                   for b, t in enumerate(target)])
  got = winning_probability(gap_net, PARAMS, X, target, contrastive=True, layer=1)
  # Average pooling spreads each channel's probability over its positions in proportion.
  np.testing.assert_allclose(np.asarray(got).sum(axis=(1, 2)), want, rtol=1e-4, atol=1e-6)
  plain = winning_probability(gap_net, PARAMS, X, target)
  np.testing.assert_allclose(plain.sum(axis=(1, 2, 3)), 1.0, rtol=1e-4)  # MWP is conserved
  heatmap = excitation_backprop(gap_net, PARAMS, X, target, contrastive=True, layer=1)
  assert heatmap.shape == X.shape and float(heatmap.min()) >= -1e-6
