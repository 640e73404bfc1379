"""Loss terms of the generative models (`xjax.nn.rbm`, `xjax.nn.aae`), registered in `LOSS_TERMS`.

They read the intermediates the models return in training mode, so that the generative models
train with the same train step, loop, checkpoints and resume as the classifiers:

  contrastive_divergence  GaussianRBM: free_energy_data, free_energy_sample (Hinton 2002);
  reconstruction          AdversarialAutoencoder: reconstruction_error;
  adversarial             AdversarialAutoencoder: discriminator_real_logits,
                          discriminator_fake_logits, generator_logits (Makhzani et al. 2016).

Importing `xjax.train` imports this module, so the names always exist.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xjax.registry import non_negative
from xjax.train.losses import LOSS_TERMS, LossTerm, ModelOutputs


@LOSS_TERMS.register("contrastive_divergence")
def contrastive_divergence() -> LossTerm:
  """mean F(x_data) - mean F(x_sample): its gradient is the CD-k gradient (Hinton 2002).

  For an RBM, d log p(x) / d theta = -dF(x)/d theta + E_model[dF/d theta]; CD-k replaces the model
  expectation by the free energy at the end of a k-step Gibbs chain started at the data (held
  fixed by `stop_gradient` in the model), so descending this difference ascends the approximate
  log-likelihood. Its value is not a log-likelihood (it tends to 0 as the chain mixes poorly).
  """

  def term(params, batch, outputs: ModelOutputs) -> jax.Array:
    del params, batch
    inter = outputs.intermediates
    return jnp.mean(inter["free_energy_data"]) - jnp.mean(inter["free_energy_sample"])

  return term


@LOSS_TERMS.register("reconstruction")
def reconstruction() -> LossTerm:
  """The batch mean of the per-example reconstruction error, a sum over its pixels (Makhzani et
  al. 2016, Sec. 2, the reconstruction phase; `AdversarialAutoencoder` says why a sum)."""

  def term(params, batch, outputs: ModelOutputs) -> jax.Array:
    del params, batch
    return jnp.mean(outputs.intermediates["reconstruction_error"])

  return term


def discriminator_loss(outputs: ModelOutputs) -> jax.Array:
  """The discriminator's binary cross-entropy: prior samples labelled 1, encoder codes 0.

  -mean log D(z_prior) - mean log(1 - D(z_code)), with D = sigmoid(logit) (Makhzani et al. 2016,
  Sec. 2, the regularisation phase's discriminator update; Goodfellow et al. 2014, Eq. 1).
  """
  inter = outputs.intermediates
  return (jnp.mean(jax.nn.softplus(-inter["discriminator_real_logits"]))
          + jnp.mean(jax.nn.softplus(inter["discriminator_fake_logits"])))


def generator_loss(outputs: ModelOutputs) -> jax.Array:
  """The encoder's non-saturating adversarial loss -mean log D(z_code) (Goodfellow et al. 2014,
  Sec. 3: maximise log D(G(z)) rather than minimise log(1 - D(G(z))))."""
  return jnp.mean(jax.nn.softplus(-outputs.intermediates["generator_logits"]))


@LOSS_TERMS.register("adversarial", checks={"generator_weight": non_negative})
def adversarial(generator_weight: float = 1.0) -> LossTerm:
  """discriminator BCE + `generator_weight` x the encoder's non-saturating loss (Makhzani 2016).

  The model routes the gradients (`AdversarialAutoencoder`): the discriminator's loss reaches
  only the discriminator, the encoder's only the encoder, so one optimizer on the sum performs
  both updates of the paper's regularisation phase at once.
  """
  def term(params, batch, outputs: ModelOutputs) -> jax.Array:
    del params, batch
    return discriminator_loss(outputs) + float(generator_weight) * generator_loss(outputs)

  return term
