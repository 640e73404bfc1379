"""Gradient methods against closed forms and independent per-example computations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.explain import gradients as g
from xjax.nn.registry import get_model, init_variables, logits_fn

B, D, C = 4, 8, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(B, D)), jnp.float32)
TARGET = jnp.array([0, 2, 1, 2])

LINEAR = {"w": jnp.asarray(RNG.normal(size=(D, C)), jnp.float32),
          "b": jnp.asarray(RNG.normal(size=(C,)), jnp.float32)}
MLP = {"w1": jnp.asarray(RNG.normal(size=(D, 16)) / np.sqrt(D), jnp.float32),
       "b1": jnp.asarray(RNG.normal(size=(16,)) * 0.1, jnp.float32),
       "w2": jnp.asarray(RNG.normal(size=(16, C)) / 4, jnp.float32),
       "b2": jnp.asarray(RNG.normal(size=(C,)) * 0.1, jnp.float32)}


def linear(p, x):
  return x @ p["w"] + p["b"]


def relu_mlp(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def tanh_mlp(p, x):
  return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def per_example_grads(apply_fn, params, x, target):
  """The independent reference: jax.grad of one image's explained logit, in a Python loop."""
  return np.stack([
      jax.grad(lambda xi, c=c: apply_fn(params, xi[None])[0, int(c)])(x[b])
      for b, c in enumerate(target)])


def close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# --- plain gradients ------------------------------------------------------------------------------


def test_linear_model_closed_forms():
  w_c = LINEAR["w"][:, TARGET].T  # (B, D): the column of each image's class.
  close(g.gradient(linear, LINEAR, X, TARGET), w_c)
  close(g.saliency(linear, LINEAR, X, TARGET), jnp.abs(w_c))
  close(g.sensitivity(linear, LINEAR, X, TARGET), w_c ** 2)
  close(g.gradient_x_input(linear, LINEAR, X, TARGET), X * w_c)


def test_sensitivity_hand_computed_two_inputs():
  # f(x) = x1^2 + 3 x1 x2: grad = (2 x1 + 3 x2, 3 x1); at (1, 2): (8, 3), squared (64, 9).
  f = lambda p, x: (x[:, 0] ** 2 + 3 * x[:, 0] * x[:, 1])[:, None]
  x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
  r = g.sensitivity(f, None, x, jnp.array([0, 0]))
  close(r, [[64.0, 9.0], [0.25, 9.0]])


def test_mlp_gradient_is_each_images_own_gradient():
  close(g.gradient(relu_mlp, MLP, X, TARGET), per_example_grads(relu_mlp, MLP, X, TARGET))


def test_flax_model_through_logits_fn():
  model = get_model("mlp", hidden=(16,), num_classes=C)
  variables = init_variables(model, jax.random.key(1), (D,))
  apply_fn = logits_fn(model)
  close(g.gradient(apply_fn, variables, X, TARGET),
        per_example_grads(apply_fn, variables, X, TARGET))


def test_gradient_x_input_conserves_for_bias_free_relu():
  # DSP 2018: for a bias-free ReLU network f is 1-homogeneous, so sum_i x_i df/dx_i = f(x).
  params = {**MLP, "b1": jnp.zeros(16), "b2": jnp.zeros(C)}
  r = g.gradient_x_input(relu_mlp, params, X, TARGET)
  logits = relu_mlp(params, X)
  close(r.sum(axis=1), logits[jnp.arange(B), TARGET])


def test_explicit_target_vectors():
  onehot = jax.nn.one_hot(TARGET, C)
  close(g.gradient(relu_mlp, MLP, X, onehot), g.gradient(relu_mlp, MLP, X, TARGET))
  # A weight vector explains sum_c t_c f_c: its gradient is the weighted sum of the gradients.
  weights = jnp.asarray(RNG.normal(size=(B, C)), jnp.float32)
  per_class = jnp.stack([g.gradient(relu_mlp, MLP, X, jnp.full(B, c)) for c in range(C)], 1)
  close(g.gradient(relu_mlp, MLP, X, weights), jnp.einsum("bc,bcd->bd", weights, per_class))


# --- Integrated Gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("method", g.IG_METHODS)
def test_ig_linear_model_is_exact_for_every_quadrature(method):
  baseline = jnp.asarray(RNG.normal(size=(D,)), jnp.float32)
  ig = g.integrated_gradients(linear, LINEAR, X, TARGET, baseline=baseline, steps=3, method=method)
  close(ig, (X - baseline) * LINEAR["w"][:, TARGET].T)


A = jnp.asarray(RNG.normal(size=(D,)), jnp.float32)


def quadratic(p, x):
  """f(x) = sum_i a_i x_i^2 (one output): IG from 0 is exactly a_i x_i^2 (the integrand is
  linear)."""
  return jnp.sum(A * x ** 2, axis=1, keepdims=True)


@pytest.mark.parametrize("method, steps, factor", [
    ("gausslegendre", 1, 1.0),         # exact for polynomials of degree < 2.
    ("riemann_middle", 1, 1.0),        # the midpoint rule is exact for linear integrands.
    ("riemann_trapezoid", 2, 1.0),     # so is the trapezoid rule.
    ("riemann_right", 4, 5 / 4),       # sum_k (k/m) / m = (m + 1) / (2m) instead of 1/2.
    ("riemann_left", 4, 3 / 4),        # sum_k ((k-1)/m) / m = (m - 1) / (2m).
])
def test_ig_quadrature_error_on_quadratic_model(method, steps, factor):
  ig = g.integrated_gradients(quadratic, None, X, jnp.zeros(B, int), steps=steps, method=method)
  close(ig, factor * A * X ** 2)


@pytest.mark.parametrize("method", g.IG_METHODS)
def test_quadrature_rules_integrate_constants(method):
  alphas, weights = g.quadrature(method, 5)
  assert np.isclose(weights.sum(), 1.0) and np.all((alphas >= 0) & (alphas <= 1))


def test_ig_completeness_smooth_and_relu():
  target = TARGET
  gap = lambda f, ig: ig.sum(1) - (f(MLP, X) - f(MLP, jnp.zeros_like(X)))[jnp.arange(B), target]
  # tanh: the integrand is analytic, so 32-point Gauss-Legendre is exact to float32 round-off.
  ig = g.integrated_gradients(tanh_mlp, MLP, X, target, steps=32)
  close(gap(tanh_mlp, ig), 0.0, atol=1e-5)
  # ReLU: the integrand is piecewise constant with at most 16 kinks on the path (one per hidden
  # unit); the midpoint rule errs by at most |jump| * 1/m at each kink, with |jump| =
  # |w1_i . x| * |w2_ic| <~ 3 * 0.5 here, so m = 2000 bounds the gap by ~16 * 1.5 / 2000 ~ 1e-2.
  ig = g.integrated_gradients(relu_mlp, MLP, X, target, steps=2000, method="riemann_middle")
  close(gap(relu_mlp, ig), 0.0, atol=1e-2)


def test_ig_baseline_equal_to_input_gives_zero():
  ig = g.integrated_gradients(relu_mlp, MLP, X, TARGET, baseline=X, steps=4)
  close(ig, 0.0)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_ig_chunked_equals_unchunked(chunk_size):
  kwargs = dict(steps=7, method="riemann_trapezoid")
  full = g.integrated_gradients(tanh_mlp, MLP, X, TARGET, **kwargs)
  close(g.integrated_gradients(tanh_mlp, MLP, X, TARGET, chunk_size=chunk_size, **kwargs), full,
        atol=1e-6)


def test_points_per_call_from_the_memory_bound():
  # linear: x (1, D) @ w (D, C) + b: the traced program's values for one input are the product
  # (C), the bias broadcast to (1, C) and the sum (C): twice that for the backward pass (and at
  # least twice the input's D floats).
  per_input = g.bytes_per_input(linear, LINEAR, X)
  assert per_input == 2 * 4 * max(3 * C, D)
  per_point = B * per_input  # bytes of one point's stacked batch
  assert g.points_per_call(linear, LINEAR, X, 50, None, 10 * per_point / 2**20) == 10
  assert g.points_per_call(linear, LINEAR, X, 50, None, 0.5 * per_point / 2**20) == 1
  assert g.points_per_call(linear, LINEAR, X, 50, None, 1e6) == 50
  assert g.points_per_call(linear, LINEAR, X, 50, None, None) == 50
  assert g.points_per_call(linear, LINEAR, X, 50, 7, 1e-9) == 7  # chunk_size wins


@pytest.mark.parametrize("megabytes", [1e-9, 3 * B * 2 * 4 * D / 2**20])
def test_memory_bounded_chunks_equal_one_pass(megabytes):
  # 1e-9 MB: one point per pass (a scan of 7 passes); the other: 3 points per pass, a remainder.
  kwargs = dict(steps=7, method="riemann_trapezoid")
  full = g.integrated_gradients(tanh_mlp, MLP, X, TARGET, max_megabytes=None, **kwargs)
  close(g.integrated_gradients(tanh_mlp, MLP, X, TARGET, max_megabytes=megabytes, **kwargs),
        full, atol=1e-6)
  sg = dict(key=KEY, num_samples=7, noise_scale=0.3)
  close(g.smoothgrad(tanh_mlp, MLP, X, TARGET, max_megabytes=megabytes, **sg),
        g.smoothgrad(tanh_mlp, MLP, X, TARGET, max_megabytes=None, **sg), atol=1e-6)


def test_stacked_gradient_is_each_points_own_gradient():
  points = jnp.stack([X, 2 * X, -X])  # (3, B, D)
  stacked = g.stacked_gradient(tanh_mlp, MLP, points, TARGET)
  for k in range(3):
    close(stacked[k], per_example_grads(tanh_mlp, MLP, points[k], TARGET))


# --- SmoothGrad -----------------------------------------------------------------------------------

KEY = jax.random.key(42)


@pytest.mark.parametrize("base, reference", [
    ("gradient", g.gradient), ("saliency", g.saliency), ("sensitivity", g.sensitivity),
    ("gradient_x_input", g.gradient_x_input)])
def test_smoothgrad_without_noise_is_its_base(base, reference):
  sg = g.smoothgrad(relu_mlp, MLP, X, TARGET, key=KEY, num_samples=3, noise_scale=0.0, base=base)
  close(sg, reference(relu_mlp, MLP, X, TARGET))


def test_smoothgrad_matches_a_loop_over_noisy_inputs():
  # Independent: draw sample n's noise from fold_in(key, n), take per-image grads in a loop.
  n, scale = 5, 0.2
  sigma = scale * (X.max(1, keepdims=True) - X.min(1, keepdims=True))
  expected = np.mean([
      per_example_grads(tanh_mlp, MLP, X + sigma * jax.random.normal(jax.random.fold_in(KEY, i),
                                                                     X.shape), TARGET)
      for i in range(n)], axis=0)
  sg = g.smoothgrad(tanh_mlp, MLP, X, TARGET, key=KEY, num_samples=n, noise_scale=scale)
  close(sg, expected)
  assert not np.allclose(sg, g.gradient(tanh_mlp, MLP, X, TARGET), atol=1e-3)  # noise did act.


def test_smoothgrad_linear_model_gradient_is_constant():
  sg = g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, num_samples=4, noise_scale=0.5)
  close(sg, LINEAR["w"][:, TARGET].T)


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_smoothgrad_chunked_equals_unchunked(chunk_size):
  kwargs = dict(key=KEY, num_samples=7, noise_scale=0.3, base="saliency")
  full = g.smoothgrad(tanh_mlp, MLP, X, TARGET, **kwargs)
  close(g.smoothgrad(tanh_mlp, MLP, X, TARGET, chunk_size=chunk_size, **kwargs), full, atol=1e-6)


# --- jit and vmap ---------------------------------------------------------------------------------

METHODS = {
    "gradient": g.gradient,
    "saliency": g.saliency,
    "sensitivity": g.sensitivity,
    "gradient_x_input": g.gradient_x_input,
    "smoothgrad": functools.partial(g.smoothgrad, key=KEY, num_samples=4, chunk_size=3),
    "integrated_gradients": functools.partial(g.integrated_gradients, steps=5, chunk_size=2),
}


@pytest.mark.parametrize("name", METHODS)
def test_jit_and_vmap_over_targets(name):
  method = METHODS[name]
  eager = method(relu_mlp, MLP, X, TARGET)
  jitted = jax.jit(lambda p, x, t: method(relu_mlp, p, x, t))
  close(jitted(MLP, X, TARGET), eager)
  # All classes in one call: vmap over a leading target axis equals a loop over it.
  all_targets = jnp.tile(jnp.arange(C)[:, None], (1, B))  # (C, B)
  batched = jax.jit(jax.vmap(lambda t: method(relu_mlp, MLP, X, t)))(all_targets)
  assert batched.shape == (C, B, D)
  close(batched, np.stack([jitted(MLP, X, t) for t in all_targets]))  # jitted == eager above.


@pytest.mark.parametrize("name", METHODS)
def test_all_zero_input_is_finite(name):
  r = METHODS[name](relu_mlp, MLP, jnp.zeros_like(X), TARGET)
  assert r.shape == X.shape and np.all(np.isfinite(r))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda: g.gradient(linear, LINEAR, X, jnp.zeros(B + 1, int)),              # wrong batch.
    lambda: g.gradient(linear, LINEAR, X, jnp.zeros(B)),                       # float (B,).
    lambda: g.gradient(linear, LINEAR, X, jnp.zeros((B, C + 1))),              # wrong C.
    lambda: g.gradient(linear, LINEAR, X[0], TARGET[:1]),                      # unbatched x.
    lambda: g.saliency(linear, LINEAR, jnp.ones((B, D), int), TARGET),         # integer x.
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, steps=0),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, steps=2.0),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, chunk_size=0),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, baseline=jnp.zeros(D + 1)),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, method="simpson"),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, steps=1, method="riemann_trapezoid"),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, num_samples=0),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, chunk_size=0),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, base="grad_cam"),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, noise_scale=-0.1),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=None),
    lambda: g.smoothgrad(linear, LINEAR, X, TARGET, key=KEY, max_megabytes=0),
    lambda: g.integrated_gradients(linear, LINEAR, X, TARGET, max_megabytes="1GB"),
])
def test_bad_inputs_raise_config_error(call):
  with pytest.raises(ConfigError):
    call()


def test_baseline_shapes_accepted():
  per_image = jnp.asarray(RNG.normal(size=(B, D)), jnp.float32)
  expected = (X - per_image) * LINEAR["w"][:, TARGET].T
  close(g.integrated_gradients(linear, LINEAR, X, TARGET, baseline=per_image, steps=2), expected)
  close(g.integrated_gradients(linear, LINEAR, X, TARGET, baseline=0.5, steps=2),
        (X - 0.5) * LINEAR["w"][:, TARGET].T)
