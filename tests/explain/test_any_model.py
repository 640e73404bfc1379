"""Any JAX model: a Flax NNX and an Equinox model are explained and scored with the same calls as
a Linen model, because xjax only ever sees `apply_fn(params, x) -> logits`.

NNX goes through `graphdef, state = nnx.split(model)` and `nnx.merge(graphdef, state)(x)`,
Equinox through `eqx.partition(model, eqx.is_array)` and `eqx.combine`. Each gets a Linen twin
with the same weights (the NNX state copied across), so every method and metric must give the
twin's numbers; closed forms on linear models check that those numbers are also the right ones.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from xjax.explain.lrp import layers
from xjax.explain.methods import get_method
from xjax.metrics import pixel_flipping, pointing_game, relevance_mass_accuracy

B, H, W, FEATURES, CLASSES = 4, 8, 8, 4, 3
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(B, H, W, 1)), jnp.float32)
TARGET = jnp.array([0, 2, 1, 2])
# Ground truth for the localisation metrics: the top-left quadrant, and one image's right half.
MASK = np.zeros((B, H, W), bool)
MASK[:, :4, :4] = True
MASK[3, :, 4:] = True

GRADIENT_SPECS = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad")
# LRP traces apply_fn to a jaxpr and finds the conv and dense layers there, not in a module
# library, so it runs on NNX and Equinox models unchanged.
SPECS = (*GRADIENT_SPECS, "lrp:epsilon_plus")
# The non-Linen frameworks, each checked against the Linen twin.
FRAMEWORKS = ("nnx", "equinox")
# Equinox layers act on one example, and vmap batches them with a reshape + squeeze after the
# convolution and a transpose after the dot_general, before the bias add: LRP merges the bias
# through those layout ops (`program.Layer.layout`), so z+ ignores it as on the Linen twin and the
# classifier is the output layer.
METHOD_CASES = [(framework, spec) for framework in FRAMEWORKS for spec in SPECS]
# SmoothGrad's fixed key. An "rbg" key: its noise compiles in a fraction of the time of the
# default threefry key's on CPU (seconds per shape here), and the twins share it all the same.
SMOOTHGRAD_KEY = jax.random.key(7, impl="rbg")


def close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def import_equinox():
  return pytest.importorskip(
      "equinox", reason="equinox is not installed: `pip install equinox` (in the `test` extra) "
      "to run the Equinox half of these tests")


# --- the models -----------------------------------------------------------------------------------


class NNXNet(nnx.Module):
  """conv 3x3 (4 features) -> ReLU -> flatten -> dense (3 classes), on (B, 8, 8, 1) images."""

  def __init__(self, rngs: nnx.Rngs):
    # Non-zero biases, so that the twins must also agree on where the bias enters.
    bias_init = nnx.initializers.normal(0.1)
    self.conv = nnx.Conv(1, FEATURES, (3, 3), bias_init=bias_init, rngs=rngs)
    self.dense = nnx.Linear(H * W * FEATURES, CLASSES, bias_init=bias_init, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.conv(x))
    return self.dense(h.reshape(h.shape[0], -1))


class LinenNet(nn.Module):
  """The Linen twin of NNXNet; its submodules carry the same names, so its parameters are
  `{"params": nnx.to_pure_dict(state)}` of the NNX model."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(FEATURES, (3, 3), name="conv")(x))
    return nn.Dense(CLASSES, name="dense")(h.reshape(h.shape[0], -1))


def equinox_net(weights: dict):
  """The Equinox twin, with the NNX weights in Equinox's layouts: Conv2d is channel-first with an
  (out, in, kh, kw) kernel and (out, 1, 1) bias, Linear holds (out, in); both act on one image."""
  eqx = import_equinox()

  class EquinoxNet(eqx.Module):
    conv: eqx.nn.Conv2d
    dense: eqx.nn.Linear

    def __call__(self, image):  # (H, W, 1) -> (CLASSES,)
      h = jax.nn.relu(self.conv(image.transpose(2, 0, 1)))
      # Flatten in the (H, W, C) order of the Flax models, so the dense kernel is the same one.
      return self.dense(h.transpose(1, 2, 0).reshape(-1))

  def build(key):
    conv_key, dense_key = jax.random.split(key)
    return EquinoxNet(eqx.nn.Conv2d(1, FEATURES, 3, padding=1, key=conv_key),
                      eqx.nn.Linear(H * W * FEATURES, CLASSES, key=dense_key))

  # Only the structure: the weights are replaced below, so skip drawing random ones.
  model = eqx.filter_eval_shape(build, jax.random.key(1))
  conv, dense = weights["conv"], weights["dense"]
  return eqx.tree_at(
      lambda m: (m.conv.weight, m.conv.bias, m.dense.weight, m.dense.bias), model,
      (conv["kernel"].transpose(3, 2, 0, 1), conv["bias"][:, None, None], dense["kernel"].T,
       dense["bias"]))


@functools.cache
def twin(framework: str):
  """`(apply_fn, params)` of the conv net in `framework`; all three hold the same weights."""
  model = NNXNet(nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  if framework == "nnx":
    return (lambda state, x: nnx.merge(graphdef, state)(x)), state
  weights = nnx.to_pure_dict(state)
  if framework == "linen":
    return LinenNet().apply, {"params": weights}
  eqx = import_equinox()
  params, static = eqx.partition(equinox_net(weights), eqx.is_array)
  # Equinox layers take one example: vmap makes the batched apply_fn xjax calls.
  return (lambda params, x: jax.vmap(eqx.combine(params, static))(x)), params


@functools.cache
def linear_model(framework: str):
  """`(apply_fn, params, kernel (H*W, CLASSES))` of a linear classifier on the flattened image."""
  model = nnx.Linear(H * W, CLASSES, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(2))
  graphdef, state = nnx.split(model)
  kernel = np.asarray(nnx.to_pure_dict(state)["kernel"])
  if framework == "nnx":
    return (lambda state, x: nnx.merge(graphdef, state)(x.reshape(x.shape[0], -1))), state, kernel
  eqx = import_equinox()
  dense = eqx.filter_eval_shape(eqx.nn.Linear, H * W, CLASSES, key=jax.random.key(3))
  dense = eqx.tree_at(lambda m: (m.weight, m.bias), dense,
                      (jnp.asarray(kernel.T), nnx.to_pure_dict(state)["bias"]))
  params, static = eqx.partition(dense, eqx.is_array)
  return (lambda params, x: jax.vmap(eqx.combine(params, static))(x.reshape(x.shape[0], -1)),
          params, kernel)


# --- explanations ---------------------------------------------------------------------------------


@functools.cache
def explained(framework: str) -> dict[str, np.ndarray]:
  """Every method of SPECS on the twin of `framework`, in one jax.jit: the call a user jits."""
  apply_fn, params = twin(framework)
  methods = {spec: get_method(spec, key=SMOOTHGRAD_KEY) for spec in SPECS}
  explain = jax.jit(lambda p, x, t: {spec: m(apply_fn, p, x, t) for spec, m in methods.items()})
  return {spec: np.asarray(r) for spec, r in explain(params, X, TARGET).items()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_twins_compute_the_same_logits(framework):
  # Everything below compares relevance; it means something only if the weights came across.
  apply_fn, params = twin(framework)
  linen_fn, linen_params = twin("linen")
  logits = linen_fn(linen_params, X)
  assert logits.shape == (B, CLASSES)
  close(apply_fn(params, X), logits)
  # The biases are non-zero, so the twins also agree on the affine part.
  assert np.abs(np.asarray(linen_params["params"]["conv"]["bias"])).min() > 0


@pytest.mark.parametrize(("framework", "spec"), METHOD_CASES)
def test_every_method_gives_the_linen_twins_relevance(framework, spec):
  relevance, reference = explained(framework)[spec], explained("linen")[spec]
  assert relevance.shape == X.shape
  assert np.abs(reference).max() > 1e-2  # a real heatmap, not zeros that trivially agree
  close(relevance, reference)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_eager_calls_equal_the_jitted_ones(framework):
  # No jit needed either: the method is a plain function of (apply_fn, params, x, target). (The
  # closed forms below call every method eagerly, LRP included.)
  apply_fn, params = twin(framework)
  method = get_method("gradient_x_input")
  close(method(apply_fn, params, X, TARGET), explained(framework)["gradient_x_input"])


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_lrp_finds_the_conv_and_the_dense_layer(framework):
  # LRP reads the layers off the traced program: the conv and the classifier, whatever module
  # library wrote them (Equinox's vmapped per-image conv becomes one batched convolution). The
  # dense layer reads the ReLU's output, which the rules may take as non-negative.
  apply_fn, params = twin(framework)
  found = [(info.kind, info.is_input, info.input_nonnegative)
           for info in layers(apply_fn, params, X)]
  assert found == [("conv", True, False), ("dense", False, True)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_lrp_sees_the_classifier_as_the_output_layer(framework):
  # Composites may choose the output layer's rule by `is_output`; the Linen twin's is the dense.
  apply_fn, params = twin(framework)
  assert [info.is_output for info in layers(apply_fn, params, X)] == [False, True]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_linear_model_closed_forms(framework):
  # f_c(x) = x . w_c + b_c: the gradient is w_c everywhere, so saliency = |w_c|, gradient x input
  # = IG from zero = w_c * x (the quadrature weights sum to 1), SmoothGrad of the gradient = w_c
  # whatever the noise, and LRP-epsilon (one dense layer, epsilon = 1e-6) splits f_c = z_c into
  # x_i w_ic z_c / (z_c + eps) = w_c * x up to eps.
  apply_fn, params, kernel = linear_model(framework)
  w_c = jnp.asarray(kernel[:, TARGET].T.reshape(X.shape))
  expected = {"saliency": jnp.abs(w_c), "gradient_x_input": w_c * X,
              "integrated_gradients": w_c * X, "smoothgrad": w_c, "lrp:epsilon_plus": w_c * X}
  for spec, want in expected.items():
    method = get_method(spec, key=SMOOTHGRAD_KEY)
    close(method(apply_fn, params, X, TARGET), want, atol=1e-5, rtol=1e-4)


# --- metrics --------------------------------------------------------------------------------------


@functools.cache
def scored(framework: str) -> dict[str, np.ndarray]:
  """The metrics on each twin's own gradient x input relevance, under jax.jit."""
  apply_fn, params = twin(framework)
  relevance = explained(framework)["gradient_x_input"]
  flip = jax.jit(functools.partial(pixel_flipping, apply_fn, steps=8))
  localise = jax.jit(lambda r, mask: {
      "pointing_game": pointing_game(apply_fn, params, X, TARGET, r, mask=mask),
      "relevance_mass_accuracy": relevance_mass_accuracy(apply_fn, params, X, TARGET, r,
                                                         mask=mask)})
  flipped = flip(params, X, TARGET, relevance)
  return {"curves": np.asarray(flipped.curves), "area": np.asarray(flipped.area),
          **{name: np.asarray(s) for name, s in localise(relevance, MASK).items()}}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_metrics_give_the_linen_twins_scores(framework):
  scores, reference = scored(framework), scored("linen")
  assert scores.keys() == reference.keys()
  for name, want in reference.items():
    close(scores[name], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("framework", ("linen", *FRAMEWORKS))
def test_metric_scores_against_independent_computations(framework):
  apply_fn, params = twin(framework)
  scores = scored(framework)
  pixels = explained(framework)["gradient_x_input"].sum(-1).reshape(B, -1)
  # Pixel flipping: step 0 is the untouched image, the last step (fraction 1) the all-zero
  # baseline, both read off the model's own logits.
  rows = np.arange(B)
  close(scores["curves"][:, 0], np.asarray(apply_fn(params, X))[rows, TARGET])
  close(scores["curves"][:, -1], np.asarray(apply_fn(params, jnp.zeros_like(X)))[rows, TARGET])
  # Localisation: the argmax pixel in the mask, and the mask's share of the signed relevance.
  mask = MASK.reshape(B, -1)
  close(scores["pointing_game"], mask[rows, pixels.argmax(-1)].astype(np.float32))
  close(scores["relevance_mass_accuracy"], (pixels * mask).sum(-1) / pixels.sum(-1), rtol=1e-4)
