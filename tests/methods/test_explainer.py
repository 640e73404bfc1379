"""The explainer network's model and the loss terms of Eq. 1 (Zhang, Yang & Wu, AAAI 2019)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.methods import filter_loss as icnn
from xjax.methods.explainer import Explainer, ExplainerEncoder, NormLayer
from xjax.train.losses import LOSS_TERMS, ModelOutputs

PERFORMER = {"config": (4, "M", 6, "M"), "dense": (7, 5)}  # conv_maps 4x4, pooled 2x2


@functools.lru_cache(maxsize=1)
def _applied():
  """The model on 4 images: its outputs and the gradient of Eq. 1's three terms, one compile."""
  model = Explainer(performer="vgg", performer_options=PERFORMER, num_classes=3)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 8, 8, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  terms = [LOSS_TERMS.get(name) for name in ("explainer_reconstruction", "explainer_p",
                                             "filter_loss")]

  def loss(params):
    logits, out = model.apply({"params": params}, x)
    return sum(term(params, {}, ModelOutputs(logits, out)) for term in terms), (logits, out)
  (_, (logits, out)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables["params"])
  return variables, logits, out, grads


def test_the_head_reads_the_reconstruction_and_the_targets_are_the_performers_layers():
  variables, logits, out, _ = _applied()
  head = variables["params"]["performer"]["classifier"]
  np.testing.assert_allclose(logits, out["features"] @ head["kernel"] + head["bias"], rtol=1e-5,
                             atol=1e-6)
  performer = variables["params"]["performer"]
  # fc6* by hand from the performer's pooled conv maps: relu(flatten(pool(conv_maps)) W + b).
  pooled = jax.lax.reduce_window(out["conv_maps"], -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                 (1, 2, 2, 1), "VALID")
  fc6 = jax.nn.relu(pooled.reshape(4, -1) @ performer["dense1"]["kernel"]
                    + performer["dense1"]["bias"])
  np.testing.assert_allclose(out["target_dense1"], fc6, rtol=1e-5, atol=1e-6)
  assert out["reconstruction_dense1"].shape == (4, 7)
  assert out["reconstruction_dense2"].shape == out["features"].shape == (4, 5)
  # x_enc has the pooled conv output's shape (pool5 in the paper), p = sigmoid(0) at the start.
  assert out["x_enc"].shape == pooled.shape
  np.testing.assert_allclose(out["p"], 0.5)


def test_the_loss_gives_the_frozen_performer_no_gradient():
  grads = _applied()[-1]
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["performer"]))
  assert float(jnp.abs(grads["encoder"]["w_p"])) > 0
  assert float(jnp.abs(grads["fc_dec_1"]["kernel"]).max()) > 0


def test_the_encoder_mixes_the_two_tracks_by_p():
  maps = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 6, 6, 4)), jnp.float32)
  encoder = ExplainerEncoder(5, "argmax")
  variables = encoder.init(jax.random.key(1), maps)
  apply = jax.jit(encoder.apply)
  x_enc, _ = apply(variables, maps)
  ends = {}
  for name, w_p in (("interp", 40.0), ("ordin", -40.0)):
    params = jax.tree.map(lambda a: a, variables["params"])
    params["w_p"] = jnp.asarray(w_p)
    ends[name] = apply({"params": params}, maps)[0]
  # sigmoid(0) = 1/2: the mean of the two tracks (each p = 1 or 0 at +-40 to float precision).
  np.testing.assert_allclose(x_enc, 0.5 * ends["interp"] + 0.5 * ends["ordin"], rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(ends["interp"], ends["ordin"])


def test_norm_layer_scales_to_alpha():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3, 3, 2)), jnp.float32)
  layer = NormLayer()
  variables = {"params": {"alpha": jnp.asarray(2.5)}}
  y = layer.apply(variables, x)
  norms = np.sqrt(np.sum(np.square(np.asarray(y).reshape(5, -1)), 1))
  np.testing.assert_allclose(norms.mean(), 2.5, rtol=1e-5)


def test_loss_terms_by_hand():
  rng = np.random.default_rng(3)
  target = [rng.uniform(size=(4, 6)), rng.uniform(size=(4, 3))]
  recon = [rng.uniform(size=(4, 6)), rng.uniform(size=(4, 3))]
  maps = [np.maximum(rng.normal(size=(4, 5, 5, 2)), 0), np.maximum(rng.normal(size=(4, 3, 3, 2)),
                                                                   0)]
  inter = {"target_dense1": target[0], "target_dense2": target[1],
           "reconstruction_dense1": recon[0], "reconstruction_dense2": recon[1],
           "p": np.float32(0.8), "interp_1": maps[0], "interp_2": maps[1]}
  inter = {k: jnp.asarray(v, jnp.float32) for k, v in inter.items()}
  outputs = ModelOutputs(jnp.zeros((4, 3)), inter)
  expected = sum(w * np.mean(np.sum(np.square(r - t), -1)) / np.mean(np.sum(np.square(t), -1))
                 for w, r, t in zip((0.5, 2.0), recon, target))
  got = LOSS_TERMS.get("explainer_reconstruction", weights=(0.5, 2.0))(None, {}, outputs)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(LOSS_TERMS.get("explainer_p")(None, {}, outputs), -np.log(0.8),
                             rtol=1e-5)
  paper = sum(float(jnp.sum(icnn.filter_loss_paper(inter[n]))) for n in ("interp_1", "interp_2"))
  np.testing.assert_allclose(LOSS_TERMS.get("filter_loss")(None, {}, outputs), paper, rtol=1e-5)
  with pytest.raises(ConfigError, match="3 weights for 2 reconstructed layers"):
    LOSS_TERMS.get("explainer_reconstruction", weights=(1, 1, 1))(None, {}, outputs)
  with pytest.raises(ConfigError, match="Unknown filter_loss form 'mi'"):
    LOSS_TERMS.get("filter_loss", form="mi")
