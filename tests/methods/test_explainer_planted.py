"""The explainer network's planted truth (Zhang, Yang & Wu, AAAI 2019): part filters from mixed
channels.

Three parts (Gaussian bumps at fixed offsets from a moving object centre, each with its own
amplitude per image) are summed in pairs into six channels (two noisy copies of each pair), so
every mixed channel fires at whichever of its two parts is stronger: its peak jumps between parts
and its location instability is high (0.107-0.109). The explainer's encoder, trained with Eq. 1
(the relative reconstruction error of the unmixed parts through a dense decoder on x_enc, the
filter loss on both interpretable layers, -log p), must find part-locked interpretable filters:
their instability under 0.7x the mixed channels'.

Measured on seeds 0-5 (150 steps of 64, argmax mask, filter-loss weight 0.01): ratios 0.15, 0.18,
0.15, 0.37, 0.15, 0.15, every filter alive. What does the work is the reconstruction and the mask:
the filter loss's weight changes little between 0 and 0.1 (0.15-0.43); at weight 1 it takes over
once the activations grow (seed 4: 1.19), since the minus mutual information rewards a peak that
moves between images, which a filter jumping to the strongest part does more than a locked one;
without the mask the ratios rise to 0.38-0.96 (seed 5 fails). With the filter loss alone (no
reconstruction) the filters jump on every seed (ratios 2.2-2.3).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.explain.receptive_field import receptive_field_centres
from xjax.methods import filter_loss as icnn
from xjax.methods.explainer import ExplainerEncoder
from xjax.metrics.location_instability import location_instability, peak_positions

N, P, C, D, M = 32, 3, 6, 6, 512


def planted_parts(seed, n=M):
  """maps (n, N, N, C); keypoints (n, P, 2) as (x, y); the parts pooled 2x2 (n, N/2, N/2, P).

  Each part is a Gaussian bump (sigma 2) with its own amplitude U(0.5, 1) per image, at a fixed
  offset from an object centre U(8, 24)^2; channel k = part k % 3 + part (k + 1) % 3 (a well
  conditioned mixing, det 2) plus |N(0, 0.05)| noise, so each channel fires at whichever of its
  two parts is stronger."""
  rng = np.random.default_rng(seed)
  centre = rng.uniform(8.0, 24.0, (n, 1, 2))
  offsets = np.array([[-7.0, -6.0], [7.0, -4.0], [0.0, 7.0]])
  kp = (centre + offsets[None] + 0.5 * rng.normal(size=(n, P, 2))).astype(np.float32)
  yy, xx = np.mgrid[0:N, 0:N] + 0.5
  amp = rng.uniform(0.5, 1.0, (n, P))
  parts = amp[..., None, None] * np.exp(
      -((xx - kp[..., 0, None, None]) ** 2 + (yy - kp[..., 1, None, None]) ** 2) / 8.0)
  mix = np.zeros((P, C))
  for k in range(C):
    mix[k % P, k] = mix[(k + 1) % P, k] = 1.0
  maps = np.einsum("nphw,pc->nhwc", parts, mix) + 0.05 * np.abs(rng.normal(size=(n, N, N, C)))
  pooled = parts.reshape(n, P, N // 2, 2, N // 2, 2).max(axis=(3, 5)).transpose(0, 2, 3, 1)
  return jnp.asarray(maps, jnp.float32), kp, jnp.asarray(pooled, jnp.float32)


def train_explainer(maps, targets, seed, steps=150, batch=64, lr=1e-2, filter_weight=0.01,
                    eta=1.0):
  """Eq. 1 on the planted maps: filter loss (paper form) on interp_1 and interp_2, the relative
  reconstruction error of the unmixed parts through a dense (ReLU) decoder on x_enc, -eta log p."""
  enc = ExplainerEncoder(D, "argmax")
  dec = nn.Dense(targets[0].size)
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"enc": enc.init(k1, maps[:2]),
            "dec": dec.init(k2, jnp.zeros((1, (N // 2) ** 2 * D)))}
  opt = optax.adam(lr)
  state = opt.init(params)

  def loss_fn(p, m, t):
    x_enc, out = enc.apply(p["enc"], m)
    filt = sum(jnp.sum(icnn.filter_loss_paper(out[f"interp_{i}"])) for i in (1, 2))
    rec = nn.relu(dec.apply(p["dec"], x_enc.reshape(x_enc.shape[0], -1)))
    t = t.reshape(t.shape[0], -1)
    recon = jnp.mean(jnp.sum((rec - t) ** 2, -1)) / jnp.mean(jnp.sum(t ** 2, -1))
    return recon + filter_weight * filt - eta * jnp.log(out["p"] + 1e-12)

  @jax.jit
  def step(p, s, m, t):
    g = jax.grad(loss_fn)(p, m, t)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  rng = np.random.default_rng(seed)
  for _ in range(steps):
    idx = rng.choice(len(maps), batch, replace=False)
    params, state = step(params, state, maps[idx], targets[idx])
  return enc, params["enc"]


@pytest.mark.parametrize("seed", [0, 3])  # the first and the hardest of seeds 0-5 (docstring)
def test_planted_parts_interpretable_filters_are_stable(seed):
  maps, kp, pooled = planted_parts(seed)
  enc, params = train_explainer(maps, pooled, seed)
  visible = np.ones((M, P), bool)
  centres = np.arange(N) + 0.5
  mixed = location_instability(*peak_positions(maps, centres, centres), kp, visible, (N, N))
  geometry = lambda p, m: ExplainerEncoder(D, "none").apply(p, m)[1]["interp_2"]
  cy, cx = receptive_field_centres(geometry, params, maps[:1].shape)
  x2 = jax.jit(enc.apply)(params, maps)[1]["interp_2"]
  ours = location_instability(*peak_positions(x2, cy, cx), kp, visible, (N, N))
  top = np.asarray(x2).max(axis=(0, 1, 2))
  assert (top > 0.01 * top.max()).sum() >= D // 2 + 1      # most filters are alive
  assert float(mixed["mean"]) > 0.08                       # the mixed channels do jump
  ratio = float(ours["mean"]) / float(mixed["mean"])
  assert ratio < 0.7, (ratio, np.asarray(ours["per_filter"]))
