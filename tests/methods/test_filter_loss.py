"""Interpretable-CNN filter loss (Zhang, Wu, Zhu 2018): templates, the MI estimate against a naive
loop, the mask layer and its gradient, and the public code's surrogate gradient against numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.methods import filter_loss

RNG = np.random.default_rng(0)
N, B, D = 3, 4, 2


def _maps(scale=5.0):
  return RNG.uniform(0.0, scale, size=(B, N, N, D)).astype(np.float32)


def _naive_mi(x):
  """MI of one filter's maps x (B, n, n) by loops over templates and images, in float64."""
  x = np.asarray(x, np.float64)
  b, n = x.shape[0], x.shape[1]
  tau, alpha = 0.5 / n**2, n**2 / (1.0 + n**2)
  temps, priors = [], []
  for a in range(n):
    for c in range(n):
      t = np.empty((n, n))
      for i in range(n):
        for j in range(n):
          t[i, j] = tau * max(1.0 - 4.0 * (abs(i - a) + abs(j - c)) / n, -1.0)
      temps.append(t)
      priors.append(alpha / n**2)
  temps.append(np.full((n, n), -tau))
  priors.append(1.0 - alpha)
  p_x_t = np.empty((len(temps), b))
  for k, t in enumerate(temps):
    e = np.array([np.exp(np.sum(x[i] * t)) for i in range(b)])
    p_x_t[k] = e / e.sum()
  p_x = sum(priors[k] * p_x_t[k] for k in range(len(temps)))
  mi = 0.0
  for k in range(len(temps)):
    for i in range(b):
      mi += priors[k] * p_x_t[k, i] * np.log(p_x_t[k, i] / p_x[i])
  return mi


def test_templates_match_a_hand_written_3x3_case():
  temps = filter_loss.templates(3)
  tau = 0.5 / 9
  third = -1.0 / 3.0
  assert temps.shape == (10, 3, 3)
  # mu = (0, 0): 1 - 4 d / 3 is 1, -1/3, then clipped at -1 from d = 2 on.
  np.testing.assert_allclose(temps[0], tau * np.array([[1, third, -1],
                                                       [third, -1, -1],
                                                       [-1, -1, -1]]), rtol=1e-6)
  # mu = (1, 2) is row 1 * 3 + 2 = 5.
  np.testing.assert_allclose(temps[5], tau * np.array([[-1, -1, third],
                                                       [-1, third, 1],
                                                       [-1, -1, third]]), rtol=1e-6)
  np.testing.assert_allclose(temps[9], np.full((3, 3), -tau), rtol=1e-6)
  # alpha = 9 / 10: every positive has prior 0.9 / 9 and the negative 0.1.
  np.testing.assert_allclose(np.exp(filter_loss.log_priors(3)), np.full(10, 0.1), rtol=1e-6)


def test_mi_estimate_matches_a_naive_loop_over_templates_and_images():
  maps = _maps(scale=20.0)     # scores of order 1, so that the MI is far from 0
  loss = filter_loss.filter_loss_paper(maps)
  expected = [-_naive_mi(maps[..., d]) for d in range(D)]
  assert abs(expected[0]) > 1e-3
  np.testing.assert_allclose(loss, expected, rtol=1e-4, atol=1e-7)


def test_one_sharp_peak_per_image_has_more_mi_than_uniform_maps():
  peaked = np.zeros((B, N, N, 1), np.float32)
  for b, (i, j) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
    peaked[b, i, j, 0] = 50.0
  uniform = np.full_like(peaked, 50.0 / 9)   # the same total activation, spread out
  loss_peaked = float(filter_loss.filter_loss_paper(peaked)[0])
  loss_uniform = float(filter_loss.filter_loss_paper(uniform)[0])
  assert loss_uniform == pytest.approx(0.0, abs=1e-6)
  assert loss_peaked < -0.1


def test_vmapped_loss_equals_a_loop_over_filters():
  maps = _maps()
  loop = [float(filter_loss.filter_loss_paper(maps[..., d:d + 1])[0]) for d in range(D)]
  np.testing.assert_allclose(filter_loss.filter_loss_paper(maps), loop, rtol=1e-6)
  grad = jax.grad(lambda m: filter_loss.filter_loss_paper(m).sum())(maps)
  for d in range(D):
    one = jax.grad(lambda m: filter_loss.filter_loss_paper(m)[0])(maps[..., d:d + 1])
    np.testing.assert_allclose(grad[..., d], one[..., 0], rtol=1e-5, atol=1e-9)


def _map_4x4():
  """(2, 4, 4, 2): filter 0 peaks at (1, 2) (3, and 1 at (0, 1)); filter 1 has 1 at (0, 0) and 2
  at (3, 3). Image 1 is image 0 times 2."""
  maps = np.zeros((2, 4, 4, 2), np.float32)
  maps[:, 1, 2, 0] = 3.0
  maps[:, 0, 1, 0] = 1.0
  maps[:, 0, 0, 1] = 1.0
  maps[:, 3, 3, 1] = 2.0
  maps[1] *= 2.0
  return maps


def test_argmax_mask_matches_a_hand_computed_4x4_case():
  maps = _map_4x4()
  masked, masks = filter_loss.mask(maps, mode="argmax")
  # beta = 4, n = 4: m = max(1 - d, -1), d the L1 distance to the peak (1, 2).
  expected0 = np.array([[-1, -1, 0, -1],
                        [-1, 0, 1, 0],
                        [-1, -1, 0, -1],
                        [-1, -1, -1, -1]], np.float32)
  np.testing.assert_allclose(masks[0, ..., 0], expected0)
  np.testing.assert_allclose(masks[1, ..., 0], expected0)
  # Filter 1 peaks at (3, 3): only the corner is kept, its neighbours are 0.
  expected1 = np.full((4, 4), -1.0, np.float32)
  expected1[3, 3], expected1[2, 3], expected1[3, 2] = 1, 0, 0
  np.testing.assert_allclose(masks[1, ..., 1], expected1)
  # (0, 1) is 2 steps from (1, 2): mask -1, so its activation is cut.
  np.testing.assert_allclose(masked[1, ..., 0], np.maximum(maps[1, ..., 0] * expected0, 0))
  assert float(masked[1, 0, 1, 0]) == 0.0 and float(masked[1, 1, 2, 0]) == 6.0


def test_centroid_mask_matches_a_hand_computed_4x4_case():
  maps = _map_4x4()
  masked, masks = filter_loss.mask(maps, mode="centroid", beta=jnp.array([2.0, 2.0]))
  d = np.abs(np.arange(4)[:, None] - 2) + np.abs(np.arange(4) - 2)
  # Filter 1: centroid ((0 * 1 + 3 * 2) / 3, same) = (2, 2), coordinate 1/3 on linspace(-1, 1,
  # 4); a step is 2/3, so m = max(1 - 2 * 2/3 d, -1) = 1, -1/3, then -1.
  np.testing.assert_allclose(masks[0, ..., 1], np.maximum(1 - 4.0 / 3.0 * d, -1), rtol=1e-6)
  # Filter 0: centroid ((0 * 1 + 1 * 3) / 4, (1 * 1 + 2 * 3) / 4) = (0.75, 1.75) -> (1, 2).
  d0 = np.abs(np.arange(4)[:, None] - 1) + np.abs(np.arange(4) - 2)
  np.testing.assert_allclose(masks[1, ..., 0], np.maximum(1 - 4.0 / 3.0 * d0, -1), rtol=1e-6)
  np.testing.assert_allclose(masked, np.maximum(maps * np.asarray(masks), 0), rtol=1e-6)
  # A per-filter beta: filter 1 with beta = 1 gives 1 - 2/3 d.
  _, masks = filter_loss.mask(maps, mode="centroid", beta=jnp.array([2.0, 1.0]))
  np.testing.assert_allclose(masks[0, ..., 1], np.maximum(1 - 2.0 / 3.0 * d, -1), rtol=1e-6)


@pytest.mark.parametrize("mode", filter_loss.MODES)
def test_mask_gradient_is_upstream_times_positive_part_of_the_mask(mode):
  maps = _map_4x4()
  upstream = RNG.normal(size=maps.shape).astype(np.float32)
  # beta = 1: a wide mask, positive also on zeros of x around the peak.
  _, masks = filter_loss.mask(maps, mode=mode, beta=1.0)
  f = lambda m: jnp.sum(filter_loss.mask(m, mode=mode, beta=1.0)[0] * upstream)
  grad = jax.grad(f)(maps)
  # Exactly upstream * max(m, 0), also at the zeros of x next to the peak (plain autodiff of
  # max(x m, 0) would give 0 there), and nothing through the peak position.
  np.testing.assert_allclose(grad, upstream * np.maximum(np.asarray(masks), 0), rtol=1e-6)
  assert float(np.abs(upstream * np.maximum(np.asarray(masks), 0))[maps == 0].sum()) > 0


def test_mask_beta_gets_the_gradient_of_the_forward_pass():
  maps = _map_4x4()
  f = lambda beta: jnp.sum(filter_loss.mask(maps, mode="centroid", beta=beta)[0])
  beta = jnp.array([0.3, 0.4])
  eps = 1e-2
  numeric = [(f(beta.at[d].add(eps)) - f(beta.at[d].add(-eps))) / (2 * eps) for d in range(2)]
  np.testing.assert_allclose(jax.grad(f)(beta), numeric, rtol=1e-3)
  assert float(jnp.abs(jax.grad(f)(beta)).min()) > 0


def _numpy_code_grad(x, m, positive, epoch):
  """The surrogate gradient by its formula, per filter and image, in float64."""
  x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
  a = 0.5
  m_other = m[::-1, :, :, ::-1]
  dx = np.zeros_like(x)
  for d in range(x.shape[3]):
    for kind in (True, False):
      images = [b for b in range(x.shape[0]) if bool(positive[b]) == kind]
      if not images:
        continue
      if kind:
        s = {b: np.mean(x[b, :, :, d] * m[b, :, :, d]) for b in images}
        s_ref = {b: np.mean(x[b, :, :, d] * m_other[b, :, :, d]) for b in images}
      else:
        s = {b: -np.mean(x[b, :, :, d]) for b in images}
        s_ref = s
      log_z = a * np.log(np.mean([np.exp(s_ref[b] / a) for b in images]))
      raw = {b: np.exp(s[b] / a) * (s[b] - log_z + a) for b in images}
      mean = np.mean(list(raw.values()))
      for b in images:
        g = raw[b] / mean * 0.1 / epoch
        dx[b, :, :, d] += -m[b, :, :, d] * g * 1e-5 if kind else g * 1e-5
  return dx


@pytest.mark.parametrize("positive, epoch", [(None, 1.0), ([True, False, True, False], 3.0)])
def test_code_gradient_matches_its_formula_in_numpy(positive, epoch):
  # A peak at a different position for every image and filter, so that the flipped masks (of
  # other images and filters) differ from the own ones.
  maps = _maps(scale=1.0)
  for k, (b, d) in enumerate([(b, d) for b in range(B) for d in range(D)]):
    maps[b, k // N % N, k % N, d] += 6.0
  _, masks = filter_loss.mask(maps, mode="centroid")
  assert not np.allclose(masks, np.flip(np.asarray(masks), axis=(0, 3)))
  weights = jnp.array([1.0, 2.0])     # the upstream cotangent scales each filter's gradient
  f = lambda x: jnp.sum(weights * filter_loss.filter_loss_code(x, masks, positive, epoch))
  grad = jax.grad(f)(maps)
  flags = np.ones(B, bool) if positive is None else np.asarray(positive)
  expected = _numpy_code_grad(maps, masks, flags, epoch) * np.array([1.0, 2.0])
  assert np.abs(expected).max() > 1e-7
  np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-12)
  # The value is the paper's -MI, for logging.
  np.testing.assert_allclose(filter_loss.filter_loss_code(maps, masks, positive, epoch),
                             filter_loss.filter_loss_paper(maps), rtol=1e-6)


def test_all_zero_maps_give_no_nan():
  zeros = jnp.zeros((B, N, N, D))
  for mode in filter_loss.MODES:
    masked, masks = filter_loss.mask(zeros, mode=mode)
    assert np.isfinite(masks).all() and np.isfinite(masked).all()
    f = lambda x, mode=mode: filter_loss.mask(x, mode=mode)[0].sum()
    assert np.isfinite(jax.grad(f)(zeros)).all()
  _, masks = filter_loss.mask(zeros, mode="centroid")
  np.testing.assert_allclose(masks[0, 1, 1, 0], 1.0)     # the centre of an empty map
  assert np.isfinite(filter_loss.filter_loss_paper(zeros)).all()
  assert np.isfinite(jax.grad(lambda x: filter_loss.filter_loss_paper(x).sum())(zeros)).all()
  for positive in (None, [True, False, True, False]):
    f = lambda x, positive=positive: filter_loss.filter_loss_code(x, masks, positive).sum()
    g = jax.grad(f)(zeros)
    assert np.isfinite(g).all()
  # Huge activations overflow exp(s / a); the gradient stays finite.
  huge = jnp.full((B, N, N, D), 1e4).at[0].set(0.0)
  g = jax.grad(lambda x: filter_loss.filter_loss_code(x, masks).sum())(huge)
  assert np.isfinite(g).all()


def test_bad_inputs_raise_config_errors():
  maps = _maps()
  with pytest.raises(ConfigError, match="square"):
    filter_loss.filter_loss_paper(maps[:, :2])
  with pytest.raises(ConfigError, match="mode"):
    filter_loss.mask(maps, mode="peak")
  with pytest.raises(ConfigError, match="beta"):
    filter_loss.mask(maps, beta=jnp.ones(3))
  with pytest.raises(ConfigError, match="one flag per image"):
    filter_loss.filter_loss_code(maps, maps, positive=[True])
  with pytest.raises(ConfigError, match="epoch"):
    filter_loss.filter_loss_code(maps, maps, epoch=0)
