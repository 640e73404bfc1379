"""SRAE x-feature heatmaps (Qi & Li, "Embedding deep networks into visual explanations", 2017):
the composition with excitation backprop, and a planted truth: Z of local part detectors and
distractors, y-hat a sum of two detectors; SRAE's x-features must be functions of those two only,
with heatmaps on their parts. (That SRAE is also *more local* than NN, the paper's Table 1, does
not hold on this construction for every seed: Eq. 1 is unchanged by invertible maps of E, so its
two features mix the two parts, and NN's can fall on one part by chance.)"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.explain.excitation import excitation_backprop
from xjax.methods import srae
from xjax.methods.srae_heatmaps import composed_apply, features_fn, orient_module, xfeature_heatmaps
from xjax.metrics.locality import locality, part_histograms

SIZE, PARTS, DISTRACTORS = 12, 4, 20
# (x, y) of the part keypoints: the quadrant centres, so the Voronoi cells are the quadrants.
CENTRES = np.array([[3.0, 3.0], [9.0, 3.0], [3.0, 9.0], [9.0, 9.0]], np.float32)


def _blobs():
  """(P, H, W) a Gaussian blob (sigma 1 pixel) at each part keypoint."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
  d2 = (xx[None] - CENTRES[:, 0, None, None]) ** 2 + (yy[None] - CENTRES[:, 1, None, None]) ** 2
  return np.exp(-d2 / 2.0).astype(np.float32)


def _planted(seed: int, n: int, noise: float = 0.3):
  """Images, part intensities and the frozen "network" `Z(x) = relu(x D)` of the planted test.

  Image m is sum_p a_p blob_p + noise, a_p ~ U(0, 1), non-negative noise |N(0, noise)|. The first
  P columns of D are matched filters of the blobs (local part detectors, Z_p ~ a_p); the other
  DISTRACTORS columns are random global read-outs with the blobs' span projected out, so they see
  only the background noise (global dimensions that carry nothing about the parts).
  """
  rng = np.random.default_rng(seed)
  blobs = _blobs()
  flat = blobs.reshape(PARTS, -1).T  # (H W, P)
  detectors = flat / np.square(flat).sum(0)
  distractors = rng.normal(size=(SIZE * SIZE, DISTRACTORS)) / SIZE
  basis, _ = np.linalg.qr(flat)
  distractors = distractors - basis @ (basis.T @ distractors)
  net = {"kernel": jnp.asarray(np.concatenate([detectors, distractors], 1), jnp.float32),
         "bias": jnp.zeros((PARTS + DISTRACTORS,), jnp.float32)}
  a = rng.uniform(0, 1, (n, PARTS)).astype(np.float32)
  x = np.einsum("np,phw->nhw", a, blobs) + noise * np.abs(rng.normal(size=(n, SIZE, SIZE)))
  return jnp.asarray(x[..., None], jnp.float32), a, net


def _z_fn(net, x):
  return jax.nn.relu(x.reshape(x.shape[0], -1) @ net["kernel"] + net["bias"])


def _parts(m: int):
  keypoints = np.broadcast_to(CENTRES, (m, PARTS, 2))
  visible = np.ones((m, PARTS), bool)
  bbox = np.broadcast_to(np.array([0, 0, SIZE, SIZE], np.float32), (m, 4))
  return dict(keypoints=keypoints, keypoints_visible=visible, bbox=bbox)


@pytest.mark.parametrize("contrastive", [False, True])
def test_heatmap_is_excitation_backprop_of_the_composition(contrastive):
  x, _, net = _planted(0, 4)
  module = srae.init_module(jax.random.key(0), PARTS + DISTRACTORS, k=3, hidden=8)
  maps = xfeature_heatmaps(_z_fn, net, module, x, contrastive=contrastive, orient=False)
  assert maps.shape == (3,) + x.shape
  params = {"net": net, "srae": module}
  for n in range(3):
    direct = excitation_backprop(composed_apply(_z_fn), params, x, jnp.full((4,), n),
                                 contrastive=contrastive)
    np.testing.assert_allclose(maps[n], direct, rtol=1e-5, atol=1e-7)
    one = xfeature_heatmaps(_z_fn, net, module, x, n, contrastive=contrastive, orient=False)
    np.testing.assert_allclose(one, direct, rtol=1e-5, atol=1e-7)


def test_orient_keeps_the_prediction_and_makes_v_non_negative():
  module = srae.init_module(jax.random.key(1), 6, k=4, hidden=5)
  module["v"] = jnp.array([1.0, -2.0, 0.5, -0.1])
  z = jnp.asarray(np.random.default_rng(0).normal(size=(7, 6)), jnp.float32)
  oriented = orient_module(module)
  assert bool(jnp.all(oriented["v"] >= 0))
  np.testing.assert_allclose(srae.predict_one(oriented, z), srae.predict_one(module, z),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(srae.encode_one(oriented, z)[:, 1], -srae.encode_one(module, z)[:, 1],
                             rtol=1e-6)


def test_features_fn_reads_the_intermediates():
  class Model:
    def apply(self, variables, x):
      return x.sum(-1), {"features": x * variables["w"]}
  z = features_fn(Model())({"w": 2.0}, jnp.ones((2, 3)))
  np.testing.assert_allclose(z, 2.0 * np.ones((2, 3)))


@functools.lru_cache(maxsize=1)
def _planted_run(seed: int = 0):
  """Trains SRAE (k = 2) on the planted Z, y-hat = Z_0 + Z_1; its locality of the
  c-MWP heatmaps, F_reg, the heatmaps' share on the two used parts, and the R^2 of each x-feature
  by least squares on (Z_0, Z_1, 1) (1 = a function of the used detectors only)."""
  x, _, net = _planted(seed, 512)
  z = _z_fn(net, x)
  y = (z[:, 0] + z[:, 1])[:, None]
  common = dict(key=jax.random.key(seed), steps=20000, batch_size=64, k=2, hidden=16)
  m = 64
  basis = np.concatenate([np.asarray(z[:, :2]), np.ones((z.shape[0], 1))], 1)
  results = {}
  for method, options in (("srae", dict(beta=1.0, q=100.0)),):
    params = srae.train_modules(z, y, method=method, **common, **options)
    module = jax.tree.map(lambda t: t[0], params)
    maps = xfeature_heatmaps(_z_fn, net, module, x[:m], contrastive=True)
    hist = jnp.stack([part_histograms(None, None, x[:m], None, h, **_parts(m)) for h in maps])
    e = np.asarray(srae.encode_one(module, z))
    residual = e - basis @ np.linalg.lstsq(basis, e, rcond=None)[0]
    r2 = 1 - np.square(residual).sum(0) / np.square(e - e.mean(0)).sum(0)
    results[method] = {"locality": float(locality(hist)),
                       "f_reg": float(srae.f_reg(params, z, y)[0]),
                       "used_share": float(hist[:, :, :2].sum() / hist.sum()),
                       "r2_used": r2.round(4).tolist()}
  print("planted SRAE:", results)
  return results


def test_srae_xfeatures_recover_the_used_parts():
  """The planted truth Eq. 1 identifies (Qi & Li, Eq. 1: E reconstructs only the part of Z the
  prediction uses): SRAE's two x-features are faithful functions of the two used detectors only,
  and their c-MWP heatmaps lie on those two parts."""
  got = _planted_run()["srae"]
  assert got["f_reg"] < 0.02  # y-hat has std ~0.44
  assert min(got["r2_used"]) > 0.99
  assert got["used_share"] > 0.9
