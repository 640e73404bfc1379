"""SRAE: Eq. 1 by hand, the running MSE average, vmapped modules against a loop, baselines."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.errors import ConfigError
from xjax.methods import srae

RNG = np.random.default_rng(0)
N, S_Z, K, H = 8, 6, 3, 4


def _numpy_forward(p, z):
  """E, y-bar and Z-hat of one module, in numpy."""
  p = jax.tree.map(np.asarray, p)
  relu = lambda x: np.maximum(x, 0.0)
  e = relu(z @ p["encoder"][0]["kernel"] + p["encoder"][0]["bias"])
  e = e @ p["encoder"][1]["kernel"] + p["encoder"][1]["bias"]
  z_hat = relu(e @ p["decoder"][0]["kernel"] + p["decoder"][0]["bias"])
  z_hat = z_hat @ p["decoder"][1]["kernel"] + p["decoder"][1]["bias"]
  return e, e @ p["v"], z_hat


def _data(n=N, s_z=S_Z, c=2):
  z = RNG.normal(size=(n, s_z)).astype(np.float32)
  y = RNG.normal(size=(n, c)).astype(np.float32)
  return z, y


@pytest.mark.parametrize("mse", ["batch", "ema"])
def test_loss_equals_eq1_by_hand(mse):
  params = srae.init_module(jax.random.key(0), S_Z, K, H)
  z, y = _data(c=1)
  y = y[:, 0]
  ema = RNG.uniform(0.5, 2.0, size=S_Z).astype(np.float32)
  beta, q, d = 0.7, 3.0, 0.9
  loss, (aux, new_ema) = srae.srae_loss(params, z, y, ema, beta=beta, q=q, mse=mse, decay=d)
  _, y_bar, z_hat = _numpy_forward(params, z)
  faith = np.mean((y_bar - y) ** 2)
  batch_mse = np.mean((z_hat - z) ** 2, axis=0)
  used = batch_mse if mse == "batch" else d * ema + (1 - d) * batch_mse
  recon = beta / S_Z * np.sum(np.log(1 + q * used))
  np.testing.assert_allclose(aux["faithfulness"], faith, rtol=1e-5)
  np.testing.assert_allclose(aux["reconstruction"], recon, rtol=1e-5)
  np.testing.assert_allclose(loss, faith + recon, rtol=1e-5)
  np.testing.assert_allclose(new_ema, used if mse == "ema" else ema, rtol=1e-5)


def test_ema_gradient_is_the_batch_mse_gradient_weighted_by_the_average():
  params = srae.init_module(jax.random.key(1), S_Z, K, H)
  z, y = _data(c=1)
  ema = jnp.asarray(RNG.uniform(0.5, 2.0, size=S_Z), jnp.float32)
  beta, q, d = 0.7, 3.0, 0.9
  grad = jax.grad(lambda p: srae.srae_loss(p, z, y[:, 0], ema, beta=beta, q=q, decay=d)[0])(
      params)
  m = d * ema + (1 - d) * srae.reconstruction_mse(params, z)

  def surrogate(p):  # faithfulness + beta / S_z sum_k q / (1 + q m_k) MSE_k(batch), m fixed
    faith = jnp.mean(jnp.square(srae.predict_one(p, z) - y[:, 0]))
    weights = jax.lax.stop_gradient(q / (1 + q * m))
    return faith + beta / S_Z * jnp.sum(weights * srae.reconstruction_mse(p, z))

  expected = jax.grad(surrogate)(params)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_ema_converges_to_a_constant_batch_mse_and_batch_mode_ignores_it():
  params = srae.init_module(jax.random.key(2), S_Z, K, H)
  z, y = _data(c=1)
  target = np.asarray(srae.reconstruction_mse(params, z))
  d, ema = 0.8, jnp.zeros(S_Z)
  for _ in range(60):  # same params and batch: a constant batch MSE
    _, (_, ema) = srae.srae_loss(params, z, y[:, 0], ema, mse="ema", decay=d)
  np.testing.assert_allclose(ema, target * (1 - d ** 60), rtol=1e-5)
  np.testing.assert_allclose(ema, target, rtol=1e-5)
  losses = [srae.srae_loss(params, z, y[:, 0], jnp.full(S_Z, v), mse="batch")
            for v in (0.0, 5.0)]
  np.testing.assert_allclose(losses[0][0], losses[1][0], rtol=1e-7)
  np.testing.assert_array_equal(losses[1][1][1], jnp.full(S_Z, 5.0))  # returned unchanged


def test_vmapped_modules_equal_a_loop_of_single_module_trainings():
  c, b, steps, d = 3, 4, 5, 0.9
  z, y = _data(c=c)
  params = srae.init_modules(jax.random.key(3), c, S_Z, K, H)
  optimizer = optax.adam(1e-2)
  ema = jnp.asarray(RNG.uniform(0.5, 2.0, size=(c, S_Z)), jnp.float32)
  step = srae.make_train_step(optimizer, beta=0.5, q=2.0, decay=d)
  state = (params, srae.init_optimizer(optimizer, params), ema)
  rows = [np.arange(s * b, s * b + b) % N for s in range(steps)]
  for r in rows:
    *state, losses = step(*state, z[r], y[r])
  assert losses.shape == (c,)

  @jax.jit
  def one_step(p, o, m, zb, yb):
    (_, (_, m)), g = jax.value_and_grad(srae.srae_loss, has_aux=True)(
        p, zb, yb, m, beta=0.5, q=2.0, decay=d)
    u, o = optimizer.update(g, o, p)
    return optax.apply_updates(p, u), o, m

  for i in range(c):
    p = jax.tree.map(lambda a, i=i: a[i], params)
    o, m = optimizer.init(p), ema[i]
    for r in rows:
      p, o, m = one_step(p, o, m, z[r], y[r, i])
    for a, ref in zip(jax.tree.leaves(state[0]), jax.tree.leaves(p)):
      np.testing.assert_allclose(a[i], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state[2][i], m, rtol=1e-5)


def test_nn_baseline_has_no_decoder_and_only_the_faithfulness_loss():
  params = srae.init_module(jax.random.key(4), S_Z, K, H, reconstruction=False)
  assert "decoder" not in params
  z, y = _data(c=1)
  loss, (aux, _) = srae.srae_loss(params, z, y[:, 0], jnp.zeros(S_Z), beta=5.0)
  y_bar = np.asarray(srae.predict_one(params, z))
  np.testing.assert_allclose(loss, np.mean((y_bar - y[:, 0]) ** 2), rtol=1e-6)
  assert float(aux["reconstruction"]) == 0.0
  full = srae.init_module(jax.random.key(4), S_Z, K, H)  # beta = 0 with a decoder: the same
  loss0, _ = srae.srae_loss(full, z, y[:, 0], jnp.zeros(S_Z), beta=0.0)
  np.testing.assert_allclose(loss0, np.mean((_numpy_forward(full, z)[1] - y[:, 0]) ** 2),
                             rtol=1e-5)


def test_sae_v_is_the_least_squares_fit_on_its_code():
  z, y = _data(n=32, c=2)
  params = srae.train_sae(z, y, key=jax.random.key(5), steps=20, batch_size=8, k=K, hidden=H)
  e = np.asarray(srae.encode(params, z))
  np.testing.assert_array_equal(e[0], e[1])  # one autoencoder for all classes
  for c in range(2):
    v = np.linalg.lstsq(e[c].astype(np.float64), y[:, c].astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(params["v"][c], v, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(srae.predict(params, z), np.einsum("cnk,ck->nc", e, params["v"]),
                             rtol=1e-5, atol=1e-5)


def test_batch_order_is_deterministic_and_covers_each_epoch():
  a = srae.batch_order(jax.random.key(6), 10, 3, 7)
  np.testing.assert_array_equal(a, srae.batch_order(jax.random.key(6), 10, 3, 7))
  assert a.shape == (7, 3)
  assert len(set(a[:3].ravel())) == 9  # one epoch: 3 batches of distinct rows


def test_unknown_options_are_config_errors():
  with pytest.raises(ConfigError):
    srae.module_loss("pca")
  with pytest.raises(ConfigError):
    srae.make_train_step(optax.adam(1e-3), mse="full")
  with pytest.raises(ConfigError):
    srae.train_modules(np.zeros((4, 2)), np.zeros(4), key=jax.random.key(0))


@pytest.mark.parametrize("method", ["srae", "nn"])
def test_a_linear_output_is_learned_faithfully(method):
  n, s_z = 512, 16
  z = RNG.normal(size=(n, s_z)).astype(np.float32)
  w = np.zeros(s_z, np.float32)
  w[[1, 5, 9]] = [2.0, -1.5, 1.0]
  y = np.stack([z @ w, z @ -w], axis=1) + 0.05 * RNG.normal(size=(n, 2)).astype(np.float32)
  params = srae.train_modules(z, y, key=jax.random.key(7), steps=1000, batch_size=64,
                              hidden=32, method=method, optimizer=optax.adam(3e-3))
  error = np.asarray(srae.f_reg(params, z, y))
  assert np.all(error < 0.2 * y.std(axis=0)), (error, y.std(axis=0))
