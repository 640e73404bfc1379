"""A Gaussian-Bernoulli RBM: the density "expert" of activation maximization.

Montavon, Samek & Müller, "Methods for interpreting and understanding deep neural networks" (DSP
2018), Sec. 3, Eq. 3.2 regularise activation maximization with the log-density of a generative
model of the data, e.g. an RBM. This is the Gaussian-Bernoulli RBM of Welling et al. (2005) and
Hinton, "A practical guide to training restricted Boltzmann machines" (2010), Sec. 13.2, with
real-valued visible units of a fixed standard deviation `sigma` and binary hidden units:

  E(x, h) = ||x - b||^2 / (2 sigma^2) - c.h - (x / sigma)^T W h,
  F(x) = -log sum_h exp(-E(x, h)) = ||x - b||^2 / (2 sigma^2) - sum_j softplus(c_j + (x/sigma).W_j),
  log p(x) = -F(x) - log Z,
  p(h_j = 1 | x) = sigmoid(c_j + (x / sigma).W_j),   p(x | h) = N(b + sigma W h, sigma^2 I).

The DSP report writes log p(x) = sum_j log(1 + exp(w_j.x + b_j)) - lambda ||x||^2; the quadratic
term of the RBM's own density is -||x - b||^2 / (2 sigma^2), which we use (lambda = 1/(2 sigma^2),
centred at the visible bias).

Images (B, H, W, C) are flattened to D = H*W*C visible units. Parameters: `W` (D, num_hidden),
`b` (D,), `c` (num_hidden,). The pure functions below take these as a dict `params`.
"""

from __future__ import annotations

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xjax.nn.registry import MODELS

Array = jax.Array


def _flatten(x: Array) -> Array:
  x = jnp.asarray(x, jnp.float32)
  return x.reshape((x.shape[0], -1))


def energy(params: dict, x: Array, h: Array, sigma: float) -> Array:
  """The energy E(x, h) of Hinton 2010, Sec. 13.2 (our sign convention above), (B,).

  Args:
    params: {"W": (D, H), "b": (D,), "c": (H,)}.
    x: visible states (B, D) (or images, flattened).
    h: hidden states (B, H) in {0, 1} (any real values are accepted).
    sigma: the standard deviation of the visible units.
  """
  x = _flatten(x)
  quadratic = jnp.sum(jnp.square(x - params["b"]), -1) / (2.0 * sigma ** 2)
  return quadratic - h @ params["c"] - jnp.sum(((x / sigma) @ params["W"]) * h, -1)


def free_energy(params: dict, x: Array, sigma: float) -> Array:
  """F(x) = -log sum_h exp(-E(x, h)), the hidden units summed out in closed form, (B,)."""
  x = _flatten(x)
  quadratic = jnp.sum(jnp.square(x - params["b"]), -1) / (2.0 * sigma ** 2)
  return quadratic - jnp.sum(jax.nn.softplus(params["c"] + (x / sigma) @ params["W"]), -1)


def hidden_probs(params: dict, x: Array, sigma: float) -> Array:
  """p(h_j = 1 | x) = sigmoid(c_j + (x / sigma).W_j), (B, H)."""
  return jax.nn.sigmoid(params["c"] + (_flatten(x) / sigma) @ params["W"])


def visible_mean(params: dict, h: Array, sigma: float) -> Array:
  """E[x | h] = b + sigma W h, the mean of the Gaussian p(x | h), (B, D) (flat)."""
  return params["b"] + sigma * h @ params["W"].T


def gibbs_chain(params: dict, x: Array, sigma: float, steps: int, key: Array) -> Array:
  """The visible state after `steps` block-Gibbs sweeps from `x` (the CD-k chain, Hinton 2002).

  Each sweep samples h ~ Bernoulli(p(h | x)), then x ~ N(b + sigma W h, sigma^2 I). Returns (B, D).
  """
  x = _flatten(x)

  def sweep(i, x):
    key_h, key_x = jax.random.split(jax.random.fold_in(key, i))
    h = jax.random.bernoulli(key_h, hidden_probs(params, x, sigma)).astype(x.dtype)
    mean = visible_mean(params, h, sigma)
    return mean + sigma * jax.random.normal(key_x, mean.shape, x.dtype)

  return jax.lax.fori_loop(0, steps, sweep, x)


def log_partition_bruteforce(params: dict, sigma: float) -> Array:
  """log Z of a tiny RBM: all 2^H hidden states enumerated, the Gaussian integral over x exact.

  For each h, the integral over x of exp(-E(x, h)) is a Gaussian one:
  (2 pi sigma^2)^(D/2) exp(c.h + b^T W h / sigma + ||W h||^2 / 2), so
  log Z = D/2 log(2 pi sigma^2) + logsumexp_h [c.h + b^T W h / sigma + ||W h||^2 / 2].
  Only for tests and tiny models (2^H terms).
  """
  num_visible, num_hidden = params["W"].shape
  hs = jnp.asarray(list(itertools.product((0.0, 1.0), repeat=num_hidden)), jnp.float32)
  wh = hs @ params["W"].T  # (2^H, D)
  exponents = hs @ params["c"] + wh @ params["b"] / sigma + 0.5 * jnp.sum(jnp.square(wh), -1)
  return 0.5 * num_visible * math.log(2.0 * math.pi * sigma ** 2) + jax.nn.logsumexp(exponents)


@MODELS.register("gaussian_rbm")
class GaussianRBM(nn.Module):
  """A Gaussian-Bernoulli RBM (Hinton 2010, Sec. 13.2; Welling et al. 2005) trained by CD-k.

  The density "expert" of activation maximization (Montavon et al., DSP 2018, Eq. 3.2): its
  unnormalised log-density -F(x) (`log_prob`) is the regulariser. `sigma` is fixed, not learned
  (Hinton 2010 advises standardising the data and using sigma = 1). `num_classes` is accepted and
  ignored: the train loop passes the data's class count to every model.

  `__call__(x, train)` follows the model contract: `logits` = -F(x) (B,), the unnormalised
  log-density; intermediates (eval mode, `INTERMEDIATES`):
    features      p(h = 1 | x) (B, num_hidden), the hidden representation;
    example_loss  the per-example mean squared error of the mean-field reconstruction
                  visible_mean(hidden_probs(x)) (B,): the validation loss of the train loop.
  In training mode also (`TRAIN_INTERMEDIATES`), for the loss term `contrastive_divergence`:
    negative_sample     the end of a CD-`cd_steps` Gibbs chain started at the data (B, D), under
                        `stop_gradient`, drawn from the rng stream "dropout";
    free_energy_data    F(x) (B,);
    free_energy_sample  F(negative_sample) (B,).

  Initialisation (Hinton 2010, Sec. 8): W ~ N(0, 0.01^2), biases 0.
  """

  num_hidden: int = 500
  sigma: float = 1.0
  cd_steps: int = 1
  num_classes: int | None = None

  INTERMEDIATES = ("features", "example_loss")
  TRAIN_INTERMEDIATES = ("negative_sample", "free_energy_data", "free_energy_sample")
  GENERATIVE = True

  @nn.compact
  def weights(self, num_visible: int) -> dict[str, Array]:
    """The parameters {"W", "b", "c"} for `num_visible` visible units (declared on first use)."""
    return {"W": self.param("W", nn.initializers.normal(0.01), (num_visible, self.num_hidden)),
            "b": self.param("b", nn.initializers.zeros, (num_visible,)),
            "c": self.param("c", nn.initializers.zeros, (self.num_hidden,))}

  def _params(self, x: Array) -> dict[str, Array]:
    return self.weights(int(np.prod(x.shape[1:])))

  def free_energy(self, x: Array) -> Array:
    """F(x) (B,) of images or flat vectors x (B, ...)."""
    return free_energy(self._params(x), x, self.sigma)

  def log_prob(self, x: Array) -> Array:
    """The unnormalised log-density -F(x) = log p(x) + log Z (B,); Z is not computed."""
    return -self.free_energy(x)

  def hidden_probs(self, x: Array) -> Array:
    """p(h = 1 | x) (B, num_hidden)."""
    return hidden_probs(self._params(x), x, self.sigma)

  def visible_mean(self, h: Array) -> Array:
    """E[x | h] = b + sigma W h, flat (B, D); the parameters must exist (apply after init)."""
    params = {k: self.get_variable("params", k) for k in ("W", "b", "c")}
    return visible_mean(params, h, self.sigma)

  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = _flatten(x)
    params = self._params(x)
    probs = hidden_probs(params, x, self.sigma)
    reconstruction = visible_mean(params, probs, self.sigma)
    f_data = free_energy(params, x, self.sigma)
    intermediates = {"features": probs,
                     "example_loss": jnp.mean(jnp.square(x - reconstruction), -1)}
    if train:
      # The chain's end is a fixed sample: the CD gradient differentiates F at it, not the chain.
      sample = jax.lax.stop_gradient(gibbs_chain(params, x, self.sigma, self.cd_steps,
                                                 self.make_rng("dropout")))
      intermediates.update(negative_sample=sample, free_energy_data=f_data,
                           free_energy_sample=free_energy(params, sample, self.sigma))
    return -f_data, intermediates
