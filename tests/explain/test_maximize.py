"""Activation maximization against closed forms: concave objectives whose optimum is known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.errors import ConfigError
from xjax.explain.maximize import DivergenceError, jitter_and_scale, maximize, total_variation

SHAPE = (3, 3, 2)  # one input: 18 numbers
D = int(np.prod(SHAPE))
KEY = jax.random.key(0)


def linear_apply(weights, x):
  """A linear score per class: f_c(x) = w_c . x."""
  return x.reshape(x.shape[0], -1) @ weights


@pytest.fixture(scope="module")
def weights():
  return jax.random.normal(jax.random.key(1), (D, 4))


def sgd_maximize(apply_fn, params, target, **options):
  """Plain gradient ascent, few steps: the concave quadratics below converge geometrically."""
  options = {"optimizer": optax.sgd(0.25), "steps": 60, "segment_steps": 30, "progress": False,
             "key": KEY, "input_shape": SHAPE, **options}
  return maximize(apply_fn, params, target, **options)


def test_l2_prior_on_a_linear_score_reaches_w_over_2_lambda(weights):
  # argmax_x w_c . x - lambda ||x||^2 = w_c / (2 lambda) (Eq. 3.1 with a linear f).
  found = sgd_maximize(linear_apply, weights, [0, 1, 2, 3], objective="logit", weight=1.0)
  expected = (weights / 2.0).T.reshape(4, *SHAPE)
  np.testing.assert_allclose(found.x, expected, atol=1e-5)
  np.testing.assert_allclose(found.objective, np.sum(weights * weights, 0) / 2, rtol=1e-5)
  assert found.history.shape == (4, 60) and np.all(np.diff(found.total_history, axis=1) >= -1e-5)


def test_adam_default_converges_near_the_same_optimum(weights):
  found = maximize(linear_apply, weights, 2, input_shape=SHAPE, key=KEY, objective="logit",
                   weight=1.0, steps=400, progress=False)
  np.testing.assert_allclose(found.x[0], (weights[:, 2] / 2).reshape(SHAPE), atol=0.02)


def test_box_constraints_give_the_corner_of_the_box(weights):
  # With no prior, a linear score is maximized in the box [-1, 1] at x = sign(w_c).
  found = sgd_maximize(linear_apply, weights, 1, objective="logit", weight=0.0,
                       bounds=(-1.0, 1.0))
  np.testing.assert_array_equal(found.x[0], np.sign(weights[:, 1]).reshape(SHAPE))


def test_code_prior_through_a_linear_generator(weights):
  # x = A z: argmax_z w . A z - lambda ||z||^2 = A^T w / (2 lambda), and x* = A z*.
  a = jax.random.normal(jax.random.key(2), (D, 5))
  generator = lambda z: (z @ a.T).reshape(z.shape[0], *SHAPE)
  found = sgd_maximize(linear_apply, weights, [0, 3], objective="logit", prior="code",
                       generator=generator, code_shape=(5,), weight=4.0,
                       optimizer=optax.sgd(0.1))
  z_star = (a.T @ weights[:, [0, 3]]).T / 8.0
  np.testing.assert_allclose(found.code, z_star, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(found.x, (z_star @ a.T).reshape(2, *SHAPE), rtol=1e-3, atol=1e-4)


def test_expert_prior_with_a_gaussian_density(weights):
  # log p(x) = -||x - mu||^2 / 2: argmax_x w . x + lambda log p(x) = mu + w / lambda.
  mu = jnp.linspace(-1, 1, D).reshape(SHAPE)
  expert = lambda x: -0.5 * jnp.sum(jnp.square(x - mu), axis=(1, 2, 3))
  found = sgd_maximize(linear_apply, weights, [1, 2], objective="logit", prior="expert",
                       expert=expert, weight=2.0)
  np.testing.assert_allclose(found.x, mu + (weights[:, [1, 2]].T / 2.0).reshape(2, *SHAPE),
                             atol=1e-5)


def tiny_cnn(params, x):
  """conv 2x2 (4 channels) - ReLU - mean pool - dense (3 classes)."""
  h = jax.lax.conv_general_dilated(x, params["conv"], (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jax.nn.relu(h + params["bias"])
  return h.mean(axis=(1, 2)) @ params["dense"]


@pytest.fixture(scope="module")
def cnn_params():
  k1, k2 = jax.random.split(jax.random.key(3))
  return {"conv": jax.random.normal(k1, (2, 2, 2, 4)), "bias": jnp.ones(4),
          "dense": jax.random.normal(k2, (4, 3))}


def test_all_targets_in_one_call_equal_one_call_per_target(cnn_params):
  options = dict(input_shape=SHAPE, key=KEY, steps=40, segment_steps=20, weight=0.05,
                 init_scale=0.0, progress=False)
  together = maximize(tiny_cnn, cnn_params, [0, 1, 2], **options)
  for i in range(3):
    alone = maximize(tiny_cnn, cnn_params, i, **options)
    np.testing.assert_allclose(together.x[i], alone.x[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together.history[i], alone.history[0], rtol=1e-5, atol=1e-6)
  # The class log-probability rose for every target.
  assert np.all(together.history[:, -1] > together.history[:, 0])


def test_unit_and_channel_objectives_of_a_named_layer(cnn_params):
  # Layer 0 is the conv; its activation is relu(conv + bias), and bias = 1 keeps it active at 0.
  # A channel's mean over the 2x2 positions is linear in x there, so its l2 optimum is the
  # gradient of that mean over 2 lambda; check it against jax.grad at the solution.
  found = sgd_maximize(tiny_cnn, cnn_params, [1, 3], objective="channel", layer=0, weight=1.0)
  for row, channel in enumerate([1, 3]):
    def mean_channel(x, channel=channel):
      return jax.nn.relu(jax.lax.conv_general_dilated(
          x[None], cnn_params["conv"], (1, 1), "VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC")) + cnn_params["bias"])[..., channel].mean()
    gradient = jax.grad(mean_channel)(jnp.asarray(found.x[row]))
    np.testing.assert_allclose(found.x[row], gradient / 2.0, atol=1e-5)
  # Unit 0 of the flattened activation is position (0, 0), channel 0: only the 2x2 patch it sees
  # moves, to w / (2 lambda) of that channel's kernel.
  unit = sgd_maximize(tiny_cnn, cnn_params, 0, objective="unit", layer=0, weight=1.0)
  expected = np.zeros(SHAPE, np.float32)
  expected[:2, :2] = np.asarray(cnn_params["conv"][..., 0]) / 2
  np.testing.assert_allclose(unit.x[0], expected, atol=1e-5)


def test_random_starts_keep_the_best(cnn_params):
  found = maximize(tiny_cnn, cnn_params, [0, 2], input_shape=SHAPE, key=KEY, steps=5,
                   segment_steps=5, num_starts=3, init_scale=1.0, progress=False)
  assert found.final_totals.shape == (2, 3)
  np.testing.assert_array_equal(found.start, np.argmax(found.final_totals, axis=1))
  np.testing.assert_allclose(found.total_history[:, -1], found.final_totals.max(axis=1))


def test_total_variation_and_the_identity_transform():
  x = jnp.array([[0.0, 1.0], [3.0, 1.0]]).reshape(1, 2, 2, 1)
  assert float(total_variation(x)) == 3.0 + 0.0 + 1.0 + 2.0  # vertical 3, 0; horizontal 1, 2
  y = jax.random.normal(KEY, (1, 6, 6, 2))
  np.testing.assert_allclose(jitter_and_scale(y, KEY, 0, (1.0, 1.0)), y, atol=1e-6)
  shifted = jitter_and_scale(y, KEY, 2, None)
  matches = [np.allclose(shifted[0, 2:4, 2:4], y[0, 2 - dy:4 - dy, 2 - dx:4 - dx], atol=1e-5)
             for dy in range(-2, 3) for dx in range(-2, 3)]
  assert sum(matches) == 1  # an integer shift of at most 2 pixels


@pytest.mark.parametrize("options, message", [
    (dict(target=3), "target 3 is out of range: objective='log_prob' has 3 classes"),
    (dict(target=-1), "out of range"),
    (dict(objective="channel", layer="nope"), "No layer is named 'nope'"),
    (dict(objective="channel"), "needs layer="),
    (dict(objective="unit", layer=0, target=99), "has 16 units"),
    (dict(objective="softmax"), "Unknown objective 'softmax'"),
    (dict(prior="gan"), "Unknown prior 'gan'"),
    (dict(prior="code", generator=lambda z: jnp.zeros((z.shape[0], 4, 4, 2)), code_shape=(2,)),
     r"generator's images have shape \(4, 4, 2\) but the network takes \(3, 3, 2\)"),
    (dict(prior="expert"), "needs expert="),
    (dict(steps=0), "steps must be an int >= 1"),
])
def test_bad_options_are_one_line_errors(cnn_params, options, message):
  options = {"target": 0, "input_shape": SHAPE, "key": KEY, "progress": False, **options}
  target = options.pop("target")
  with pytest.raises(ConfigError, match=message) as info:
    maximize(tiny_cnn, cnn_params, target, **options)
  assert "\n" not in str(info.value)


def test_given_starting_points_are_used_and_checked(weights):
  init = np.stack([np.full(SHAPE, 0.25), np.full(SHAPE, -2.0)]).astype(np.float32)
  # A zero learning rate keeps the starts: the prototypes are the given points, clipped.
  kept = maximize(linear_apply, weights, [0, 1], input_shape=SHAPE, key=KEY, objective="logit",
                  optimizer=optax.sgd(0.0), steps=2, init=init, bounds=(-1.0, 1.0),
                  progress=False)
  np.testing.assert_array_equal(kept.x, np.clip(init, -1.0, 1.0))
  with pytest.raises(ConfigError, match=r"init must have shape \(targets, starts, \*"):
    maximize(linear_apply, weights, [0, 1], input_shape=SHAPE, key=KEY, init=init[:1],
             progress=False)


def test_divergence_names_the_target_and_step(weights):
  # The l2 prior with a negative effective curvature: the ascent runs off to infinity.
  with pytest.raises(DivergenceError, match=r"target 1 \(start 0\) became NaN or infinite at "
                     r"step \d+"):
    maximize(lambda w, x: jnp.exp(linear_apply(w, x) * 50.0), weights, 1, input_shape=SHAPE,
             key=KEY, objective="logit", weight=0.0, optimizer=optax.sgd(10.0), steps=20,
             segment_steps=10, progress=False)


@pytest.mark.parametrize("options, message", [
    (dict(input_shape=(3, 3)), r"input_shape=\(3, 3\) does not fit apply_fn: a batch of shape "
     r"\(1, 3, 3\) fails with: "),
    (dict(input_shape=(1, 3, 3, 2)), r"input_shape=\(1, 3, 3, 2\) does not fit apply_fn"),
    (dict(input_shape=(3, 3.5, 2)), r"input_shape must be a non-empty tuple of ints >= 1"),
    (dict(input_shape=3), r"input_shape must be a non-empty tuple of ints >= 1"),
    (dict(prior="code", generator=lambda z: z, code_shape=(0,)), "code_shape must be"),
    (dict(optimizer=optax.sgd(-0.1)), "optimizer's first step moves against the gradient"),
    (dict(optimizer=optax.adam(-1.0)), "optimizer's first step moves against the gradient"),
    (dict(optimizer=0.05), "optimizer must be an optax GradientTransformation"),
    (dict(segment_steps=0), "segment_steps must be an int >= 1"),
    (dict(weight="big"), r"weight \(the prior's lambda\) must be finite and >= 0"),
    (dict(tv_weight=-1.0), "tv_weight must be finite and >= 0"),
    (dict(init_scale=float("nan")), "init_scale must be finite and >= 0"),
    (dict(bounds=(1.0, -1.0)), "bounds must be None or"),
    (dict(bounds=(-np.inf, np.inf)), "bounds must be None or"),
    (dict(key=0), "key must be one PRNG key"),
])
def test_bad_arguments_are_one_line_errors_naming_the_argument(cnn_params, options, message):
  options = {"input_shape": SHAPE, "key": KEY, "steps": 2, "progress": False, **options}
  with pytest.raises(ConfigError, match=message) as info:
    maximize(tiny_cnn, cnn_params, 0, **options)
  assert "\n" not in str(info.value)


def test_image_regularizers_need_images():
  with pytest.raises(ConfigError, match=r"input_shape must be \(height, width, channels\)"):
    maximize(lambda w, x: x @ w, jnp.ones((4, 2)), 0, input_shape=(4,), key=KEY, steps=2,
             jitter=1, progress=False)
  with pytest.raises(ConfigError, match=r"x must be a batch of images \(B, H, W, C\)"):
    total_variation(jnp.ones((2, 3)))
