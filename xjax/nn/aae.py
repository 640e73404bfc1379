"""An adversarial autoencoder: the generator whose code space activation maximization searches.

Montavon, Samek & Müller, "Methods for interpreting and understanding deep neural networks" (DSP
2018), Sec. 3, Eq. 3.3 maximize f(g(z)) - lambda ||z||^2 over the code z of a generator g, so that
the prototype g(z*) stays on the data manifold. Here g is the decoder of an adversarial autoencoder
(Makhzani et al., "Adversarial autoencoders", ICLR workshop 2016): an autoencoder whose codes are
matched to the prior N(0, I) by a discriminator on the code space, so that decoding a code drawn
near the prior's mass gives a realistic image.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.nn.registry import MODELS

Array = jax.Array

OUTPUTS = {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "linear": lambda x: x}


def init_discriminator(key: Array, code_size: int, hidden: tuple[int, ...]) -> dict:
  """Parameters of the discriminator MLP: {"dense1": {"kernel", "bias"}, ..., "output": ...}.

  Kernels LeCun-normal (Flax's Dense default), biases 0.
  """
  sizes = (code_size, *hidden, 1)
  names = [f"dense{i + 1}" for i in range(len(hidden))] + ["output"]
  keys = jax.random.split(key, len(names))
  kernel_init = nn.initializers.lecun_normal()
  return {name: {"kernel": kernel_init(k, (fan_in, fan_out), jnp.float32),
                 "bias": jnp.zeros((fan_out,), jnp.float32)}
          for name, k, fan_in, fan_out in zip(names, keys, sizes[:-1], sizes[1:])}


def discriminate(params: dict, z: Array) -> Array:
  """The discriminator's logit (B,) that the codes z (B, code_size) come from the prior.

  A pure function of its parameters, so that the encoder's adversarial loss can apply the
  discriminator with `stop_gradient` on them (Makhzani et al. 2016, Sec. 2: the two phases of the
  regularisation update different networks).
  """
  names = sorted((k for k in params if k != "output"), key=lambda k: int(k[len("dense"):]))
  for name in names:
    z = jax.nn.relu(z @ params[name]["kernel"] + params[name]["bias"])
  return (z @ params["output"]["kernel"] + params["output"]["bias"])[:, 0]


@MODELS.register("adversarial_autoencoder")
class AdversarialAutoencoder(nn.Module):
  """An adversarial autoencoder with a Gaussian prior (Makhzani et al. 2016, Sec. 2).

  Encoder: Dense-ReLU x len(hidden) - Dense(code_size) (linear code). Decoder: Dense-ReLU x
  len(hidden) - Dense(prod(image_shape)) - `output` ("tanh": images in [-1, 1], the range of the
  DSP tutorial's inputs; "sigmoid": [0, 1]; "linear"). Discriminator on codes: the same hidden
  sizes and one logit, its weights one parameter pytree "discriminator" applied by the pure
  function `discriminate`.

  `__call__(x, train)` returns `(logits, intermediates)` with `logits` the code z = encode(x)
  (B, code_size): the model's representation (the decoder is `decode`, for Eq. 3.3 of Montavon et
  al. 2018, `model.apply(variables, z, method=AdversarialAutoencoder.decode)`). Intermediates
  (eval mode, `INTERMEDIATES`): `features` (the last hidden layer of the encoder, the input of the
  code layer) and `example_loss` (B,), the per-example mean squared reconstruction error (the
  validation loss of the train loop). In training mode also (`TRAIN_INTERMEDIATES`), for the loss
  terms `reconstruction` and `adversarial`:
    reconstruction_error       the per-example *sum* of squared errors over the pixels (the
                               negative log-likelihood of a Gaussian decoder up to constants):
                               trains the encoder and the decoder;
    discriminator_real_logits  D(z ~ N(0, I)) (B,), prior samples from the rng stream "dropout";
    discriminator_fake_logits  D(stop_gradient(z)): trains the discriminator only;
    generator_logits           D with `stop_gradient` on its parameters, of z: trains the
                               encoder only.
  So one optimizer on the summed loss updates each network by its own loss only.

  Why a sum over pixels: the adversarial loss is one log-probability per example (of its code), so
  the reconstruction must be one per example too. Averaged over MNIST's 1024 pixels instead, it is
  1024 times too weak: the encoder then follows the discriminator alone, its codes stop depending
  on the image, and the decoder learns the mean digit (validation MSE stuck at 0.21 on MNIST after
  5 epochs, against 0.06 after 3 with the sum).

  `image_shape` (H, W, C) is the decoder's output shape (the train loop sets it from the data);
  `num_classes` is accepted and ignored (the loop passes it to every model).
  """

  code_size: int = 8
  hidden: tuple[int, ...] = (512, 512)
  image_shape: tuple[int, ...] | None = None
  output: str = "tanh"
  num_classes: int | None = None

  INTERMEDIATES = ("features", "example_loss")
  TRAIN_INTERMEDIATES = ("reconstruction_error", "discriminator_real_logits",
                         "discriminator_fake_logits", "generator_logits")
  GENERATIVE = True

  def setup(self):
    if self.image_shape is None:
      raise ConfigError("AdversarialAutoencoder needs image_shape (H, W, C), the shape of the "
                        "images it reconstructs (the train loop sets it from the data).")
    if self.output not in OUTPUTS:
      raise ConfigError(f"Unknown output {self.output!r} of AdversarialAutoencoder; expected one "
                        f"of {', '.join(OUTPUTS)}.")
    self.encoder_layers = [nn.Dense(u, name=f"encoder_dense{i + 1}")
                           for i, u in enumerate(self.hidden)]
    self.code_layer = nn.Dense(self.code_size, name="encoder_code")
    self.decoder_layers = [nn.Dense(u, name=f"decoder_dense{i + 1}")
                           for i, u in enumerate(self.hidden)]
    self.image_layer = nn.Dense(int(np.prod(self.image_shape)), name="decoder_output")
    self.discriminator = self.param(
        "discriminator", lambda key: init_discriminator(key, self.code_size, self.hidden))

  def _encode(self, x: Array) -> tuple[Array, Array]:
    h = jnp.asarray(x, jnp.float32).reshape((x.shape[0], -1))
    for layer in self.encoder_layers:
      h = nn.relu(layer(h))
    return self.code_layer(h), h

  def encode(self, x: Array) -> Array:
    """The code z (B, code_size) of images x (B, *image_shape)."""
    return self._encode(x)[0]

  def decode(self, z: Array) -> Array:
    """The images (B, *image_shape) of codes z (B, code_size): the generator g(z) of Eq. 3.3."""
    h = jnp.asarray(z, jnp.float32)
    for layer in self.decoder_layers:
      h = nn.relu(layer(h))
    return OUTPUTS[self.output](self.image_layer(h)).reshape((z.shape[0], *self.image_shape))

  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    if self.image_shape is None or tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ConfigError(f"AdversarialAutoencoder(image_shape={self.image_shape}) got images of "
                        f"shape {tuple(x.shape[1:])}.")
    z, features = self._encode(x)
    squared = jnp.square(self.decode(z) - jnp.asarray(x, jnp.float32))
    pixels = tuple(range(1, x.ndim))
    intermediates = {"features": features, "example_loss": jnp.mean(squared, axis=pixels)}
    if train:
      prior = jax.random.normal(self.make_rng("dropout"), z.shape, z.dtype)
      intermediates.update(
          reconstruction_error=jnp.sum(squared, axis=pixels),
          discriminator_real_logits=discriminate(self.discriminator, prior),
          discriminator_fake_logits=discriminate(self.discriminator, jax.lax.stop_gradient(z)),
          generator_logits=discriminate(jax.lax.stop_gradient(self.discriminator), z))
    return z, intermediates
