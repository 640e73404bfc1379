"""GaussianRBM: free energy, conditionals and log Z against brute force, the Gibbs chain's
stationary moments, the CD gradient against its hand formula, and a planted two-cluster density."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.nn import GaussianRBM, get_model, rbm
from xjax.train.generative import contrastive_divergence
from xjax.train.losses import ModelOutputs

SIGMA = 0.7


def random_params(num_visible: int, num_hidden: int, seed: int = 0, scale: float = 0.5) -> dict:
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
  return {"W": normal(num_visible, num_hidden), "b": normal(num_visible), "c": normal(num_hidden)}


def all_hidden_states(num_hidden: int) -> np.ndarray:
  return np.array(list(itertools.product((0.0, 1.0), repeat=num_hidden)), np.float32)


def enumerated_energies(params: dict, x: np.ndarray) -> np.ndarray:
  """E(x_b, h) for every example b and every hidden state h: (B, 2^H)."""
  hs = all_hidden_states(params["c"].shape[0])
  return np.stack([np.asarray(rbm.energy(params, x, np.broadcast_to(h, (len(x), len(h))), SIGMA))
                   for h in hs], axis=1)


@pytest.fixture(scope="module")
def tiny():
  """D=3, H=4, random parameters, and five random inputs."""
  params = random_params(3, 4)
  x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  return params, x


def test_free_energy_is_minus_log_sum_over_all_hidden_states(tiny):
  params, x = tiny
  expected = -jax.nn.logsumexp(-enumerated_energies(params, x), axis=1)
  np.testing.assert_allclose(rbm.free_energy(params, x, SIGMA), expected, rtol=1e-5, atol=1e-5)
  # The module computes the same on images (flattened) and calls it its log-density.
  model = GaussianRBM(num_hidden=4, sigma=SIGMA)
  images = x.reshape(5, 1, 3, 1)
  np.testing.assert_allclose(model.apply({"params": params}, images, method=GaussianRBM.log_prob),
                             -expected, rtol=1e-5, atol=1e-5)
  logits, _ = model.apply({"params": params}, images)
  np.testing.assert_allclose(logits, -expected, rtol=1e-5, atol=1e-5)


def test_hidden_probs_are_the_enumerated_posterior_marginals(tiny):
  params, x = tiny
  posterior = jax.nn.softmax(-enumerated_energies(params, x), axis=1)  # p(h | x): (B, 2^H)
  marginals = posterior @ all_hidden_states(4)  # p(h_j = 1 | x)
  np.testing.assert_allclose(rbm.hidden_probs(params, x, SIGMA), marginals, rtol=1e-5, atol=1e-6)


def test_visible_mean_minimises_the_energy_given_h(tiny):
  """p(x | h) is Gaussian with mean b + sigma W h: there the gradient of E in x vanishes."""
  params, _ = tiny
  h = all_hidden_states(4)
  mean = rbm.visible_mean(params, h, SIGMA)
  grad = jax.grad(lambda x: rbm.energy(params, x, h, SIGMA).sum())(mean)
  np.testing.assert_allclose(grad, 0.0, atol=1e-5)
  # Its Hessian in x is I / sigma^2: the variance of p(x | h) is sigma^2.
  hess = jax.hessian(lambda x: rbm.energy(params, x[None], h[:1], SIGMA)[0])(mean[0])
  np.testing.assert_allclose(hess, np.eye(3) / SIGMA ** 2, rtol=1e-5)
  model = GaussianRBM(num_hidden=4, sigma=SIGMA)
  np.testing.assert_allclose(model.apply({"params": params}, h, method=GaussianRBM.visible_mean),
                             mean, rtol=1e-6)


def test_log_partition_matches_a_numerical_integral_in_one_dimension():
  params = random_params(1, 3, seed=2, scale=0.8)
  grid = np.linspace(-15, 15, 30001, dtype=np.float32)[:, None]
  free = np.asarray(rbm.free_energy(params, grid, SIGMA), np.float64)
  log_z = float(rbm.log_partition_bruteforce(params, SIGMA))
  np.testing.assert_allclose(np.log(np.trapezoid(np.exp(-free), grid[:, 0])), log_z, atol=1e-4)


def test_the_normalised_density_integrates_to_one_in_two_dimensions():
  params = random_params(2, 4, seed=3, scale=0.6)
  axis = np.linspace(-10, 10, 801, dtype=np.float32)
  grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
  log_p = -np.asarray(rbm.free_energy(params, grid, SIGMA), np.float64) - float(
      rbm.log_partition_bruteforce(params, SIGMA))
  density = np.exp(log_p).reshape(len(axis), len(axis))
  total = np.trapezoid(np.trapezoid(density, axis), axis)
  np.testing.assert_allclose(total, 1.0, atol=1e-4)


def exact_moments(params: dict, sigma: float) -> tuple[float, float]:
  """E[x] and E[x^2] of a one-visible-unit RBM: p(h) from the exponents of log Z, x|h Gaussian."""
  hs = all_hidden_states(params["c"].shape[0])
  wh = hs @ np.asarray(params["W"]).T  # (2^H, 1)
  log_w = hs @ np.asarray(params["c"]) + wh @ np.asarray(params["b"]) / sigma + 0.5 * wh[:, 0] ** 2
  p_h = np.exp(log_w - log_w.max())
  p_h /= p_h.sum()
  means = np.asarray(params["b"])[0] + sigma * wh[:, 0]
  return float(p_h @ means), float(p_h @ (sigma ** 2 + means ** 2))


def test_a_long_gibbs_chain_samples_the_model_distribution():
  """The negative sample of CD-k, for large k, has the model's exact mean and second moment."""
  params = random_params(1, 2, seed=4, scale=0.8)
  model = GaussianRBM(num_hidden=2, sigma=SIGMA, cd_steps=30)
  starts = np.full((20000, 1, 1, 1), 3.0, np.float32)  # far from the mass: the chain must move
  _, inter = jax.jit(lambda x: model.apply({"params": params}, x, train=True,
                                           rngs={"dropout": jax.random.key(0)}))(starts)
  sample = np.asarray(inter["negative_sample"][:, 0], np.float64)
  mean, second = exact_moments(params, SIGMA)
  # Standard errors with 20000 independent chains: about 0.006 for the mean, 0.01 for x^2.
  np.testing.assert_allclose(sample.mean(), mean, atol=0.03)
  np.testing.assert_allclose(np.mean(sample ** 2), second, atol=0.05)


def test_contrastive_divergence_gradient_is_the_hand_formula(tiny):
  """d/dtheta [mean F(x_data) - mean F(x_sample)] with the sample held fixed (Hinton 2002)."""
  params, x = tiny
  model = GaussianRBM(num_hidden=4, sigma=SIGMA, cd_steps=2)
  term = contrastive_divergence()

  def loss(p):
    logits, inter = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(5)})
    return term(p, None, ModelOutputs(logits, inter)), inter

  (value, inter), grads = jax.value_and_grad(loss, has_aux=True)(params)
  sample = np.asarray(inter["negative_sample"])
  assert not np.allclose(sample, x)  # a real chain moved
  np.testing.assert_allclose(value, np.mean(rbm.free_energy(params, x, SIGMA))
                             - np.mean(rbm.free_energy(params, sample, SIGMA)), rtol=1e-5)
  ph_data = np.asarray(rbm.hidden_probs(params, x, SIGMA))
  ph_sample = np.asarray(rbm.hidden_probs(params, sample, SIGMA))
  b = np.asarray(params["b"])
  # dF/db = -(x - b)/sigma^2, dF/dc_j = -p(h_j=1|x), dF/dW_ij = -(x_i/sigma) p(h_j=1|x): descent
  # moves each towards the data statistics and away from the sample's.
  np.testing.assert_allclose(grads["b"], -(np.mean((x - b) / SIGMA ** 2, 0)
                                           - np.mean((sample - b) / SIGMA ** 2, 0)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads["c"], -(ph_data.mean(0) - ph_sample.mean(0)), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(grads["W"], -((x / SIGMA).T @ ph_data / len(x)
                                           - (sample / SIGMA).T @ ph_sample / len(x)),
                             rtol=1e-4, atol=1e-6)


def test_eval_mode_intermediates_and_initialisation():
  model = get_model("gaussian_rbm", num_hidden=6, num_classes=10)  # num_classes is ignored
  x = np.random.default_rng(6).normal(size=(3, 2, 2, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  assert params["W"].shape == (4, 6) and np.all(params["b"] == 0) and np.all(params["c"] == 0)
  assert 0.005 < float(np.std(params["W"])) < 0.02  # N(0, 0.01^2)
  logits, inter = model.apply(variables, x)
  assert logits.shape == (3,) and set(inter) == set(GaussianRBM.INTERMEDIATES)
  flat = x.reshape(3, -1)
  reconstruction = rbm.visible_mean(params, rbm.hidden_probs(params, flat, 1.0), 1.0)
  np.testing.assert_allclose(inter["example_loss"], np.mean((flat - reconstruction) ** 2, -1),
                             rtol=1e-5)


def test_planted_clusters_have_the_highest_density():
  """Data from two tight clusters: after CD-1 training, -F is highest at the two centres."""
  rng = np.random.default_rng(0)
  centres = np.array([[2.0, 2.0, -2.0, -2.0], [-2.0, 2.0, 2.0, -2.0]], np.float32)
  data = centres[rng.integers(0, 2, 1024)] + 0.1 * rng.normal(size=(1024, 4)).astype(np.float32)
  model = GaussianRBM(num_hidden=8, sigma=1.0, cd_steps=1)
  params = model.init(jax.random.key(0), data[:2])["params"]
  tx, term = optax.adam(0.02), contrastive_divergence()
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, key):
    def loss(p):
      logits, inter = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
      return term(p, None, ModelOutputs(logits, inter))

    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for i in range(400):
    params, opt_state = step(params, opt_state, data[rng.integers(0, 1024, 64)],
                             jax.random.key(i))
  log_prob = lambda x: np.asarray(model.apply({"params": params}, jnp.asarray(x, jnp.float32),
                                              method=GaussianRBM.log_prob))
  elsewhere = np.array([[0, 0, 0, 0],  # the midpoint between the clusters
                        [2, -2, -2, 2], [-2, -2, 2, 2], [2, 2, 2, 2], [-2, -2, -2, -2],
                        [4, 4, -4, -4], [6, 0, 0, 0]], np.float32)
  assert log_prob(centres).min() > log_prob(elsewhere).max() + 2.0  # e^2: over 7 times as likely
