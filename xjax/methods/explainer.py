"""The explainer network: a frozen performer's conv features disentangled into part filters.

Zhang, Yang & Wu, "Unsupervised learning of neural networks to explain neural networks" (AAAI
2019), Sec. 3, with the mask layer and filter loss of Zhang, Wu & Zhu, "Interpretable
convolutional neural networks" (CVPR 2018; `xjax.methods.filter_loss`). The performer (any
registered CNN with dense layers above its conv stack, here usually `vgg`) is pre-trained and
frozen; the explainer reads one of its conv layers and must reconstruct its upper dense layers:

  encoder   interpretable track: conv-interp-1, ReLU, mask, 2x2 max pooling, conv-interp-2, ReLU,
            mask (each filter's map kept near one peak); ordinary track: conv-ordin, ReLU, 2x2
            max pooling. Each track through a norm-layer, then
                x_enc = p x_interp + (1 - p) x_ordin,   p = sigmoid(w_p)                  (Sec. 3)
            x_enc has the shape of the performer's pooled conv output (pool5 in the paper).
  decoder   fc-dec-1, ReLU and fc-dec-2, ReLU: the reconstructions of the performer's two dense
            layers (fc6 and fc7, read after their ReLUs, as Caffe blobs are).
  loss      Eq. 1: sum_l lambda_l ||x_l - x_l*||^2 - eta log p + sum_f lambda_f Loss_f.
            The terms are registered here: `explainer_reconstruction`, `explainer_p`, and
            `filter_loss` (form "paper", the minus mutual information, or "code", the public
            code's surrogate gradient).

The model's logits are the performer's own classifier applied to the reconstructed fc7, so the
training loop's accuracy is the claim of the paper that explaining costs no discrimination: the
performer's head on the reconstructed features.

[A] The paper gives neither the norm-layer's form nor the weights of Eq. 1. The norm-layer here is
alpha x / stop_gradient(mean_b ||x_b||_2) with a learnable scalar alpha (initialised at 1): it
puts both tracks on one scale, so that p, not the tracks' magnitudes, decides their shares.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax import ops
from xjax.errors import ConfigError
from xjax.methods import filter_loss as icnn
from xjax.nn.registry import MODELS, get_model
from xjax.train.losses import LOSS_TERMS, ModelOutputs

Array = jax.Array
MASKS = (*icnn.MODES, "none")  # "none": no mask layer (an ablation; also the maps' geometry)
FORMS = ("paper", "code")


class NormLayer(nn.Module):
  """alpha x / stop_gradient(mean over the batch of ||x_b||_2), alpha learnable ([A], above)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    alpha = self.param("alpha", nn.initializers.ones, ())
    norms = jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1))
    return alpha * x / jax.lax.stop_gradient(jnp.mean(norms) + 1e-6)


class ExplainerEncoder(nn.Module):
  """The two tracks and their mix on feature maps (B, h, w, C) -> x_enc (B, h/2, w/2, D).

  Returns (x_enc, intermediates): "interp_1", "interp_2" (the interpretable filters' maps after
  ReLU, before their masks: what the filter loss reads), "mask_1", "mask_2" (the masks), "p".
  """

  num_filters: int
  mask: str = "centroid"
  beta_init: float = 2.0  # the public code's initial beta_c of the centroid mask

  @nn.compact
  def __call__(self, maps: Array) -> tuple[Array, dict[str, Array]]:
    if self.mask not in MASKS:
      raise ConfigError(f"Unknown explainer mask {self.mask!r}; expected one of "
                        f"{', '.join(MASKS)}.")
    conv = lambda name: nn.Conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)), name=name)
    out = {}
    x = maps
    for i in (1, 2):
      x = nn.relu(conv(f"conv_interp_{i}")(x))
      out[f"interp_{i}"] = x
      if self.mask == "none":
        out[f"mask_{i}"] = jnp.ones_like(x)
      else:
        # The public code learns beta per filter (centroid mask); the paper fixes it (argmax).
        beta = None if self.mask == "argmax" else self.param(
            f"beta_{i}", nn.initializers.constant(self.beta_init), (self.num_filters,))
        x, out[f"mask_{i}"] = icnn.mask(x, mode=self.mask, beta=beta)
      if i == 1:
        x = ops.max_pool(x, (2, 2), strides=(2, 2))
    interp = NormLayer(name="norm_interp")(x)
    ordin = nn.relu(conv("conv_ordin")(maps))
    ordin = NormLayer(name="norm_ordin")(ops.max_pool(ordin, (2, 2), strides=(2, 2)))
    w_p = self.param("w_p", nn.initializers.zeros, ())
    p = jax.nn.sigmoid(w_p)
    out["p"] = p
    return p * interp + (1.0 - p) * ordin, out


class Explainer(nn.Module):
  """A frozen performer ("performer"), the explainer's encoder ("encoder") and decoder.

  Attributes:
    performer: a name of `xjax.nn.MODELS` with dense layers above its conv stack (`vgg`).
    performer_options: its fields, e.g. {"config": (16, "M", 32, "M"), "dense": (128, 128)}.
    num_classes: the performer's classes.
    layer: the explained conv layer: an intermediate of the performer ("conv_maps", its last
      conv's ReLU output) or a conv module's name (read after a ReLU).
    reconstruct: the performer's two dense layers the decoder reconstructs (read after ReLU).
    head: the performer's classifier (a Dense module), applied to the reconstructed last layer.
    num_filters: the interpretable filters (D); default the explained layer's channels.
    mask: "centroid" (the public code), "argmax" (the paper) or "none" (no mask layer: an
      ablation, and the maps' geometry without their data-dependent masks).

  Returns `(logits, intermediates)`: the head on the reconstructed features; "features" (the
  reconstructed last layer), "conv_maps" (the explained layer), "target_<name>" and
  "reconstruction_<name>" for each reconstructed layer, the encoder's "interp_1", "interp_2",
  "mask_1", "mask_2", "p", and "x_enc".
  """

  performer: str = "vgg"
  performer_options: Any = ()
  num_classes: int = 10
  layer: str = "conv_maps"
  reconstruct: tuple[str, ...] = ("dense1", "dense2")
  head: str = "classifier"
  num_filters: int | None = None
  mask: str = "centroid"

  INTERMEDIATES = ("features", "conv_maps", "p", "interp_1", "interp_2", "mask_1", "mask_2",
                   "x_enc")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    del train  # the performer is frozen and runs in eval mode; the explainer has no dropout
    if len(self.reconstruct) != 2:
      raise ConfigError(f"The explainer reconstructs two dense layers of the performer; got "
                        f"reconstruct = {tuple(self.reconstruct)}.")
    performer = get_model(self.performer, "performer", **{**dict(self.performer_options),
                                                          "num_classes": self.num_classes})
    captured: dict[str, Array] = {}
    names = (self.layer, *self.reconstruct)

    def capture(next_fun, args, kwargs, context):
      result = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name in names:
        captured[context.module.name] = result
      return result

    with nn.intercept_methods(capture):
      _, intermediates = performer(x, train=False)
    if self.layer in intermediates:
      captured[self.layer] = intermediates[self.layer]
    elif self.layer in captured:
      captured[self.layer] = nn.relu(captured[self.layer])
    missing = [n for n in names if n not in captured]
    if missing:
      raise ConfigError(f"The performer {self.performer} has no layer named "
                        f"{', '.join(map(repr, missing))} (explained: {self.layer!r}, "
                        f"reconstructed: {tuple(self.reconstruct)}).")
    maps = jax.lax.stop_gradient(captured[self.layer])
    if maps.ndim != 4:
      raise ConfigError(f"The explained layer {self.layer!r} must be conv maps (B, h, w, C); "
                        f"its output has shape {maps.shape}.")
    targets = [jax.lax.stop_gradient(nn.relu(captured[n])) for n in self.reconstruct]
    if any(t.ndim != 2 for t in targets):
      raise ConfigError(f"The reconstructed layers {tuple(self.reconstruct)} must be dense "
                        f"layers (B, units); got shapes {[t.shape for t in targets]}.")
    x_enc, out = ExplainerEncoder(self.num_filters or maps.shape[-1], self.mask,
                                  name="encoder")(maps)
    h = x_enc.reshape(x_enc.shape[0], -1)
    reconstructions = []
    for i, target in enumerate(targets):
      h = nn.relu(nn.Dense(target.shape[-1], name=f"fc_dec_{i + 1}")(h))
      reconstructions.append(h)
    params = performer.variables["params"]
    if self.head not in params:
      raise ConfigError(f"The performer {self.performer} has no classifier {self.head!r}; its "
                        f"modules: {', '.join(params)}.")
    head = jax.lax.stop_gradient(params[self.head])
    logits = reconstructions[-1] @ head["kernel"] + head["bias"]
    out.update({"features": reconstructions[-1], "conv_maps": maps, "x_enc": x_enc})
    for name, target, rec in zip(self.reconstruct, targets, reconstructions):
      out[f"target_{name}"], out[f"reconstruction_{name}"] = target, rec
    return logits, out


MODELS.register("explainer", Explainer)


# ---------------------------------------------------------------------------------------------
# The loss terms of Eq. 1.


@LOSS_TERMS.register("explainer_reconstruction")
def reconstruction_term(weights: Any = (1.0, 1.0)):
  """sum_l lambda_l ||x_l - x_l*||^2 (Eq. 1), each a mean over the batch of the squared error
  summed over the layer's units, divided by the mean ||x_l*||^2 ([A]: a relative error, so the
  two layers and any network's scale weigh alike)."""
  weights = tuple(float(w) for w in weights)

  def term(params, batch, outputs: ModelOutputs) -> Array:
    del params, batch
    names = sorted(k[len("target_"):] for k in outputs.intermediates if k.startswith("target_"))
    if len(names) != len(weights):
      raise ConfigError(f"explainer_reconstruction has {len(weights)} weights for "
                        f"{len(names)} reconstructed layers ({', '.join(names)}).")
    total = 0.0
    for weight, name in zip(weights, names):
      target = outputs.intermediates[f"target_{name}"]
      error = jnp.sum(jnp.square(outputs.intermediates[f"reconstruction_{name}"] - target), -1)
      total = total + weight * jnp.mean(error) / (jnp.mean(jnp.sum(jnp.square(target), -1))
                                                  + 1e-6)
    return total

  return term


@LOSS_TERMS.register("explainer_p")
def p_term():
  """-log p (Eq. 1; the config's weight is eta): pushes the encoder to the interpretable track."""

  def term(params, batch, outputs: ModelOutputs) -> Array:
    del params, batch
    return -jnp.log(outputs.intermediates["p"] + 1e-12)

  return term


@LOSS_TERMS.register("filter_loss")
def filter_loss_term(form: str = "paper", layers: Any = ("interp_1", "interp_2")):
  """sum_f Loss_f over the interpretable filters of `layers` (Eq. 1's lambda_f is the config's
  weight, the same for every filter): the minus mutual information ("paper") or the public
  code's surrogate gradient ("code"), summed over the filters and the layers."""
  if form not in FORMS:
    raise ConfigError(f"Unknown filter_loss form {form!r}; expected one of {', '.join(FORMS)}.")
  layers = tuple(layers)

  def term(params, batch, outputs: ModelOutputs) -> Array:
    del params, batch
    total = 0.0
    for name in layers:
      maps = outputs.intermediates[name]
      if form == "paper":
        total = total + jnp.sum(icnn.filter_loss_paper(maps))
      else:
        mask = outputs.intermediates["mask_" + name.rsplit("_", 1)[-1]]
        total = total + jnp.sum(icnn.filter_loss_code(maps, mask))
    return total

  return term
