"""The mask layer and the filter loss of interpretable conv filters.

Zhang, Wu, Zhu, "Interpretable convolutional neural networks" (CVPR 2018), as used on the
explainer network of Zhang, Yang, Wu, "Unsupervised learning of neural networks to explain neural
networks" (AAAI 2019). Every filter's map x in R+^{n x n} (after ReLU; maps come as (B, n, n, D),
NHWC with D filters) should fire at one part position: near one peak or not at all.

* **Templates** (Sec. 3.1, Eq. 1): `t+_mu,ij = tau * max(1 - beta ||[i, j] - mu||_1 / n, -1)`
  for each of the n^2 positions mu, and `t- = -tau` everywhere; beta = 4, tau = 0.5 / n^2.
  Priors (Sec. 3.1): `p(T_mu) = alpha / n^2`, `p(T-) = 1 - alpha`, alpha = n^2 / (1 + n^2).
  [A] mu and [i, j] both count from 0 (only their difference enters).
* **Filter loss, paper form** (Eq. 2-3): `Loss_f = -MI(X; T)
  = -sum_T p(T) sum_x p(x|T) log[p(x|T) / p(x)]`, with `p(x|T) = exp(tr(x . T)) / Z_T` and
  `Z_T` summed over the minibatch (a batch estimate), in log space.
* **Mask layer** (Sec. 3.1, Fig. 2): `x_masked = max(x . m, 0)` with `m` a template centred on the
  map's peak mu_hat. The centre is held fixed (no gradient flows into the peak position). Mode
  "argmax" (the paper): mu_hat = argmax x, `m = max(1 - beta ||[i, j] - mu_hat||_1 / n, -1)`,
  beta = 4. [A] The mask is the positive template without tau: tau > 0 only scales the output.
  Mode "centroid" (the authors' public code): mu_hat = the activation-weighted centroid of x,
  rounded to the nearest map position (ties to even, as numpy), read on `linspace(-1, 1, n)`
  coordinates; `m = max(1 - beta_c (|X - mu_x| + |Y - mu_y|), -1)`, beta_c per filter, 2 at
  the start. [A] The centroid of an all-zero map is the map's centre. In both modes the backward
  pass gives x the gradient `upstream * max(m, 0)` (the public code's rule, also where x = 0),
  and beta the exact gradient of the forward pass.
* **Filter loss, code form**: the public code's surrogate gradient for the same loss; see
  `filter_loss_code`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError

Array = jax.Array

BETA = 4.0          # the templates' and the paper's mask's slope (Sec. 3.1)
CODE_BETA = 2.0     # the public code's initial per-filter slope on linspace(-1, 1, n) coordinates
CODE_ALPHA = 0.5    # the public code's temperature a of the surrogate gradient, not the prior alpha
CODE_STEP = 1e-5    # the public code's scale of the surrogate gradient
CODE_RATE = 0.1     # the public code's weight at epoch 1; it decays as 1 / epoch
MODES = ("argmax", "centroid")


def templates(n: int, *, beta: float = BETA, tau: float | None = None) -> np.ndarray:
  """(n^2 + 1, n, n): the positive templates, mu = (a, b) at row a * n + b, then the negative one.

  `tau` defaults to the paper's 0.5 / n^2.
  """
  tau = 0.5 / n**2 if tau is None else tau
  idx = np.arange(n)
  mu_i, mu_j = np.divmod(np.arange(n * n), n)
  dist = (np.abs(idx[None, :, None] - mu_i[:, None, None])
          + np.abs(idx[None, None, :] - mu_j[:, None, None]))
  positive = tau * np.maximum(1.0 - beta * dist / n, -1.0)
  negative = np.full((1, n, n), -tau)
  return np.concatenate([positive, negative]).astype(np.float32)


def log_priors(n: int) -> np.ndarray:
  """(n^2 + 1,): log p(T), n^2 times log(alpha / n^2), then log(1 - alpha)."""
  alpha = n**2 / (1.0 + n**2)
  priors = np.append(np.full(n * n, alpha / n**2), 1.0 - alpha)
  return np.log(priors).astype(np.float32)


def _check_maps(maps: Array, name: str = "maps") -> None:
  if maps.ndim != 4 or maps.shape[1] != maps.shape[2]:
    raise ConfigError(f"The filter loss needs square {name} of shape (B, n, n, D), got "
                      f"{tuple(maps.shape)}.")


def _mutual_information(x: Array, temps: Array, log_prior: Array) -> Array:
  """MI(X; T) of one filter's maps x (B, n, n), the batch estimate of Eq. 3."""
  scores = jnp.einsum("bij,tij->bt", x, temps)                           # tr(x . T)
  log_px_t = scores - jax.scipy.special.logsumexp(scores, axis=0)        # Z_T over the batch
  log_px = jax.scipy.special.logsumexp(log_prior + log_px_t, axis=1)     # p(x) = sum_T p(T) p(x|T)
  terms = jnp.exp(log_px_t) * (log_px_t - log_px[:, None])
  return jnp.sum(jnp.exp(log_prior) * jnp.sum(terms, axis=0))


def _paper_one(x: Array) -> Array:
  n = x.shape[1]
  temps = jnp.asarray(templates(n), x.dtype)
  return -_mutual_information(x, temps, jnp.asarray(log_priors(n), x.dtype))


@jax.jit
def _paper(maps: Array) -> Array:
  return jax.vmap(_paper_one, in_axes=3)(maps)


def filter_loss_paper(maps: Array) -> Array:
  """(D,): `Loss_f = -MI(X; T)` of each filter over the batch (Eq. 3), differentiable.

  `maps` (B, n, n, D) are the filters' maps after ReLU. The MI is at least 0 and is 0 when all
  images' maps are equal; a lower loss means the filter fires at one position per image.
  """
  maps = jnp.asarray(maps)
  _check_maps(maps)
  return _paper(maps)


@jax.custom_vjp
def _apply_mask(x: Array, m: Array) -> Array:
  return jnp.maximum(x * m, 0.0)


def _apply_mask_fwd(x, m):
  return _apply_mask(x, m), (x, m)


def _apply_mask_bwd(res, g):
  x, m = res
  # The public code passes the gradient through wherever the mask is positive, even at x = 0
  # (where max(x . m, 0) has no slope), so that a silent position near the peak can wake up.
  return g * jnp.maximum(m, 0.0), g * x * (x * m > 0)


_apply_mask.defvjp(_apply_mask_fwd, _apply_mask_bwd)


def _argmax_masks(x: Array, beta: Array) -> Array:
  b, n, _, d = x.shape
  peak = jnp.argmax(x.reshape(b, n * n, d), axis=1)                     # (B, D)
  mu_i, mu_j = peak // n, peak % n
  idx = jnp.arange(n)
  dist = (jnp.abs(idx[None, :, None, None] - mu_i[:, None, None, :])
          + jnp.abs(idx[None, None, :, None] - mu_j[:, None, None, :]))
  return jnp.maximum(1.0 - beta * dist / n, -1.0)


def _centroid_masks(x: Array, beta: Array) -> Array:
  n = x.shape[1]
  idx = jnp.arange(n, dtype=x.dtype)
  total = jnp.sum(x, axis=(1, 2))                                        # (B, D)
  safe = jnp.where(total > 0, total, 1.0)
  centre = (n - 1) / 2.0
  mu_i = jnp.where(total > 0, jnp.einsum("bijd,i->bd", x, idx) / safe, centre)
  mu_j = jnp.where(total > 0, jnp.einsum("bijd,j->bd", x, idx) / safe, centre)
  coords = jnp.linspace(-1.0, 1.0, n, dtype=x.dtype)
  mu_x, mu_y = coords[jnp.round(mu_i).astype(int)], coords[jnp.round(mu_j).astype(int)]
  dist = (jnp.abs(coords[None, :, None, None] - mu_x[:, None, None, :])
          + jnp.abs(coords[None, None, :, None] - mu_y[:, None, None, :]))
  return jnp.maximum(1.0 - beta * dist, -1.0)


@functools.partial(jax.jit, static_argnames="mode")
def _mask(maps: Array, beta: Array, mode: str) -> tuple[Array, Array]:
  centres_from = jax.lax.stop_gradient(maps)     # the centre is fixed: no gradient into the peak
  build = _argmax_masks if mode == "argmax" else _centroid_masks
  masks = build(centres_from, beta)
  return _apply_mask(maps, masks), masks


def mask(maps: Array, *, mode: str = "argmax", beta: float | Array | None = None
         ) -> tuple[Array, Array]:
  """The mask layer: (masked maps `max(x . m, 0)`, masks m), both (B, n, n, D).

  `beta` is a scalar or one value per filter (D,), learnable; it defaults to 4 for "argmax" (on
  `||.||_1 / n` in map positions) and 2 for "centroid" (on linspace(-1, 1, n) coordinates).
  """
  if mode not in MODES:
    raise ConfigError(f"Unknown mask mode {mode!r}; use one of {', '.join(MODES)}.")
  maps = jnp.asarray(maps)
  _check_maps(maps)
  beta = (BETA if mode == "argmax" else CODE_BETA) if beta is None else beta
  beta = jnp.asarray(beta, maps.dtype)
  if beta.ndim > 1 or (beta.ndim == 1 and beta.shape[0] != maps.shape[3]):
    raise ConfigError(f"The mask's beta must be a scalar or have one value per filter "
                      f"({maps.shape[3]}), got shape {tuple(beta.shape)}.")
  return _mask(maps, jnp.broadcast_to(beta, (maps.shape[3],)), mode)


def _surrogate_weights(s: Array, s_ref: Array, chosen: Array, epoch: Array) -> Array:
  """(B,): `exp(s/a) (s - logZ + a)` over its mean on the chosen images, times 0.1 / epoch.

  `logZ = a log mean exp(s_ref / a)`, both means over the chosen images only; 0 elsewhere.
  """
  count = jnp.sum(chosen)
  log_z = CODE_ALPHA * (jax.scipy.special.logsumexp(jnp.where(chosen, s_ref / CODE_ALPHA, -jnp.inf))
                        - jnp.log(jnp.maximum(count, 1.0)))
  # exp(s / a) can overflow at large activations; the ratio to its mean is unchanged when the
  # largest chosen s is factored out, so factor it out before exponentiating.
  top = jnp.where(count > 0, jnp.max(jnp.where(chosen, s, -jnp.inf)), 0.0)
  raw = jnp.exp((s - top) / CODE_ALPHA) * (s - log_z + CODE_ALPHA)
  mean = jnp.sum(jnp.where(chosen, raw, 0.0)) / jnp.maximum(count, 1.0)
  weights = jnp.nan_to_num(raw / mean) * CODE_RATE / epoch
  return jnp.where(chosen, weights, 0.0)


@jax.custom_vjp
def _code_one(x: Array, m: Array, m_other: Array, positive: Array, epoch: Array) -> Array:
  del m, m_other, positive, epoch
  return _paper_one(x)


def _code_one_fwd(x, m, m_other, positive, epoch):
  return _code_one(x, m, m_other, positive, epoch), (x, m, m_other, positive, epoch)


def _code_one_bwd(res, ct):
  x, m, m_other, positive, epoch = res
  pos, neg = positive > 0, positive <= 0
  s = jnp.mean(x * m, axis=(1, 2))
  s_other = jnp.mean(x * m_other, axis=(1, 2))    # Z+ from the masks of other images and filters
  g_pos = _surrogate_weights(s, s_other, pos, epoch)
  s_neg = -jnp.mean(x, axis=(1, 2))               # no mask: the negative template is flat
  g_neg = _surrogate_weights(s_neg, s_neg, neg, epoch)
  dx = CODE_STEP * (g_neg[:, None, None] - m * g_pos[:, None, None])
  dx = jnp.nan_to_num(ct * dx)
  zero = jnp.zeros_like
  return dx, zero(m), zero(m_other), zero(positive), zero(epoch)


_code_one.defvjp(_code_one_fwd, _code_one_bwd)


@jax.jit
def _code(maps: Array, masks: Array, positive: Array, epoch: Array) -> Array:
  others = jnp.flip(masks, axis=(0, 3))
  one = lambda x, m, mo: _code_one(x, m, mo, positive, epoch)
  return jax.vmap(one, in_axes=(3, 3, 3))(maps, masks, others)


def filter_loss_code(maps: Array, masks: Array, positive: Array | None = None,
                     epoch: float = 1.0) -> Array:
  """(D,): the paper's -MI (as `filter_loss_paper`), with the public code's surrogate gradient.

  The value is for logging only. The gradient w.r.t. `maps` x (B, n, n, D) is replaced, per
  filter and with a = 0.5, `s = mean_ij(x . m)`, by
    logZ+ = a log mean_b exp(s'_b / a), s' from the masks flipped over batch and filters (the
      masks of other images and filters);
    positive images: g = exp(s/a) (s - logZ+ + a) / its mean * 0.1 / epoch, dx = -1e-5 m g;
    negative images: the same with s- = -mean_ij x (and s- itself for s'), dx = +1e-5 g on every
      position of the map;
  inf clamped to the largest float and NaN to 0. `masks` are the mask layer's (B, n, n, D) and
  get no gradient. `positive` (B,) marks the images of the filters' category (all by default);
  [A] each kind's means (logZ and the normaliser of g) run over the images of that kind only.
  """
  maps, masks = jnp.asarray(maps), jnp.asarray(masks)
  _check_maps(maps)
  if masks.shape != maps.shape:
    raise ConfigError(f"The masks {tuple(masks.shape)} must have the maps' shape "
                      f"{tuple(maps.shape)}.")
  b = maps.shape[0]
  positive = jnp.ones(b, bool) if positive is None else jnp.asarray(positive)
  if positive.shape != (b,):
    raise ConfigError(f"`positive` needs one flag per image ({b}), got shape "
                      f"{tuple(positive.shape)}.")
  if isinstance(epoch, int | float) and epoch <= 0:
    raise ConfigError(f"The epoch of the filter loss counts from 1, got {epoch}.")
  return _code(maps, masks, positive.astype(maps.dtype), jnp.asarray(epoch, maps.dtype))
