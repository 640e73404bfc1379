"""AdversarialAutoencoder: each loss reaches only its own network, decoder shapes and ranges, the
reconstruction error, and the configuration errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.nn import AdversarialAutoencoder, get_model
from xjax.nn.aae import discriminate
from xjax.train.generative import adversarial, discriminator_loss, generator_loss, reconstruction
from xjax.train.losses import ModelOutputs

IMAGE_SHAPE = (4, 4, 2)


@pytest.fixture(scope="module")
def setup():
  model = AdversarialAutoencoder(code_size=3, hidden=(8, 6), image_shape=IMAGE_SHAPE)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(5, *IMAGE_SHAPE)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  return model, variables, x


def gradients(model, params, x, loss):
  """d loss(outputs) / d params of one training-mode forward pass."""
  def objective(p):
    z, inter = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
    return loss(ModelOutputs(z, inter))
  return jax.jit(jax.grad(objective))(params)  # compiled: eager Flax op by op is slower here


def norms(grads) -> dict[str, float]:
  """The gradient norm of each top-level parameter group (encoder_*, decoder_*, discriminator)."""
  return {k: float(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(v)))
          for k, v in grads.items()}


ENCODER = ("encoder_dense1", "encoder_dense2", "encoder_code")
DECODER = ("decoder_dense1", "decoder_dense2", "decoder_output")


def test_each_loss_reaches_only_its_own_network(setup):
  model, variables, x = setup
  params = variables["params"]
  assert set(params) == {*ENCODER, *DECODER, "discriminator"}
  generator = norms(gradients(model, params, x, generator_loss))
  assert generator["discriminator"] == 0.0  # exactly: stop_gradient on its parameters
  assert all(generator[k] == 0.0 for k in DECODER)
  assert all(generator[k] > 0.0 for k in ENCODER)
  disc = norms(gradients(model, params, x, discriminator_loss))
  assert all(disc[k] == 0.0 for k in ENCODER + DECODER)  # the codes enter under stop_gradient
  assert disc["discriminator"] > 0.0
  recon = norms(gradients(model, params, x,
                          lambda outputs: reconstruction()(None, None, outputs)))
  assert recon["discriminator"] == 0.0 and all(recon[k] > 0.0 for k in ENCODER + DECODER)
  # The registered term is their weighted sum, and so is its gradient.
  total = gradients(model, params, x, lambda o: adversarial(generator_weight=0.5)(None, None, o))
  parts = jax.tree.map(lambda d, g: d + 0.5 * g,
                       gradients(model, params, x, discriminator_loss),
                       gradients(model, params, x, generator_loss))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), total, parts)


def test_training_intermediates_are_the_discriminator_on_prior_and_codes(setup):
  model, variables, x = setup
  z, inter = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert set(inter) == {*AdversarialAutoencoder.INTERMEDIATES,
                        *AdversarialAutoencoder.TRAIN_INTERMEDIATES}
  disc = variables["params"]["discriminator"]
  np.testing.assert_allclose(inter["discriminator_fake_logits"], discriminate(disc, z), rtol=1e-6)
  np.testing.assert_allclose(inter["generator_logits"], discriminate(disc, z), rtol=1e-6)
  # The reconstruction term is per example, like the adversarial one: a sum over the pixels.
  decoded = model.apply(variables, z, method=AdversarialAutoencoder.decode)
  np.testing.assert_allclose(inter["reconstruction_error"],
                             np.sum((decoded - x) ** 2, axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(inter["reconstruction_error"] / np.prod(IMAGE_SHAPE),
                             inter["example_loss"], rtol=1e-5)
  real = inter["discriminator_real_logits"]
  assert real.shape == (5,) and not np.allclose(real, inter["discriminator_fake_logits"])
  # BCE by hand: -log sigmoid(real) - log(1 - sigmoid(fake)); -log sigmoid(generator).
  sig = jax.nn.sigmoid
  np.testing.assert_allclose(
      discriminator_loss(ModelOutputs(z, inter)),
      -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(inter["discriminator_fake_logits"]))),
      rtol=1e-5)
  np.testing.assert_allclose(generator_loss(ModelOutputs(z, inter)),
                             -np.mean(np.log(sig(inter["generator_logits"]))), rtol=1e-5)


def test_code_reconstruction_error_and_decode(setup):
  model, variables, x = setup
  z, inter = model.apply(variables, x)
  assert z.shape == (5, 3) and set(inter) == set(AdversarialAutoencoder.INTERMEDIATES)
  np.testing.assert_allclose(z, model.apply(variables, x, method=AdversarialAutoencoder.encode))
  decoded = model.apply(variables, z, method=AdversarialAutoencoder.decode)
  assert decoded.shape == (5, *IMAGE_SHAPE)
  np.testing.assert_allclose(inter["example_loss"], np.mean((decoded - x) ** 2, axis=(1, 2, 3)),
                             rtol=1e-5)


@pytest.mark.parametrize("output, low, high", [("tanh", -1.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_decoder_output_range(setup, output, low, high):
  _, variables, _ = setup
  model = AdversarialAutoencoder(code_size=3, hidden=(8, 6), image_shape=IMAGE_SHAPE,
                                 output=output)
  z = 100.0 * jax.random.normal(jax.random.key(2), (64, 3))  # far codes saturate the output
  images = np.asarray(model.apply(variables, z, method=AdversarialAutoencoder.decode))
  assert images.shape == (64, *IMAGE_SHAPE)
  assert images.min() >= low and images.max() <= high
  assert images.min() < low + 0.1 and images.max() > high - 0.1  # the whole range is used
  linear = AdversarialAutoencoder(code_size=3, hidden=(8, 6), image_shape=IMAGE_SHAPE,
                                  output="linear")
  assert np.abs(linear.apply(variables, z, method=AdversarialAutoencoder.decode)).max() > 2.0


def test_configuration_errors():
  x = jnp.zeros((2, *IMAGE_SHAPE))
  model = get_model("adversarial_autoencoder", code_size=2, hidden=[4], image_shape=[4, 4, 2],
                    num_classes=10)  # lists from a config; num_classes ignored
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match=r"image_shape=\(4, 4, 2\)\) got images of shape "
                                        r"\(4, 4, 3\)"):
    model.apply(variables, jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(ConfigError, match="needs image_shape"):
    get_model("adversarial_autoencoder").init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="Unknown output 'relu'"):
    AdversarialAutoencoder(image_shape=IMAGE_SHAPE, output="relu").init(jax.random.key(0), x)
