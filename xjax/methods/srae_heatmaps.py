"""Heatmaps of SRAE's x-features on the images (Qi & Li, "Embedding deep networks into visual
explanations", arXiv 1709.05360, Sec. 3; "Learning explainable embeddings for deep networks",
2017).

An SRAE module (`xjax.methods.srae`) reads the activations Z (N, S_z) of one layer of a frozen
network and encodes them to k x-features E (N, k). The paper shows x-feature n on an image by
excitation backprop (Zhang et al., 2016) from a one-hot at E_n down through the encoder and the
frozen network to the image (c-MWP: contrastive, read at an intermediate layer). Here that is
`xjax.explain.excitation.excitation_backprop` on the composed function

    apply_fn(p, x) = encode_one(p["srae"], z_fn(p["net"], x)),      target = n,

with `z_fn(net_params, x) -> Z` the frozen network up to its layer (`features_fn` for xjax's
Flax models: the input of the classifier).

**The sign of an x-feature.** E is the linear output of the encoder, so E_n may be negative, and
its sign is arbitrary: flipping E_n and v_n together leaves y-bar = v^T E unchanged. Excitation
backprop does not look at the output's value at all: it starts from probability 1 at the target
(`xjax.explain.targets.output_seed`) and follows the positive weights w+ into E_n
(`rules.ZPlus(ignore_bias=True)`), i.e. it explains what *raises* E_n. (A negative seed, e.g.
sign(E_n) times the one-hot, would just negate the MWP, whose positive part is then empty.) So
the choice is made on the module, not the seed: with `orient=True` (default) x-feature n is first
flipped to s_n E_n with s_n = sign(v_n) (`orient_module`: the encoder's last kernel column and
bias n and v_n are negated where v_n < 0, the same y-bar), and the heatmap shows what raises the
x-feature's contribution v_n E_n to the prediction. `orient=False` explains E_n as trained.
(Contrastive MWP of -E_n is exactly minus that of E_n at the top layer, so with `contrastive` the
orientation decides which half of the c-MWP survives the positive part.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.explain.excitation import excitation_backprop
from xjax.methods.srae import encode_one
from xjax.nn.layers import captured_outputs, layer_names

Array = jax.Array
Params = dict[str, Any]
ZFn = Callable[[Any, Array], Array]


def features_fn(model: Any, name: str = "features") -> ZFn:
  """`(variables, x) -> Z (B, S_z)`: the activations of one layer of an xjax Flax model.

  `name` is one of the model's intermediates (xjax's models return `(logits, intermediates)`;
  `intermediates["features"]` is the input of the classification layer), or the name of a
  submodule, e.g. "dense1", whose output is read after a ReLU, as a Caffe blob such as VGG's
  fc6 is read after its in-place ReLU (the paper's Z). Maps (B, h, w, C) are flattened. The
  whole model is traced either way; what the layer does not need is dead code to jit and to
  excitation backprop.
  """
  def z_fn(variables: Any, x: Array) -> Array:
    (_, intermediates), state = model.apply(
        variables, x, capture_intermediates=lambda module, _: module.name == name,
        mutable=["intermediates"])
    if name in intermediates:
      z = intermediates[name]
    else:
      found = captured_outputs(state.get("intermediates", {}), name)
      if len(found) != 1:
        raise ConfigError(f"The network has {'no' if not found else 'more than one'} layer "
                          f"{name!r}; its layers: {', '.join(layer_names(model, x))}.")
      z = jax.nn.relu(found[0])
    return z.reshape(z.shape[0], -1)
  return z_fn


def orient_module(module_params: Params) -> Params:
  """One module with each x-feature n flipped to sign(v_n) E_n (v_n >= 0 after), same y-bar.

  The encoder's last kernel column n, its bias n and v_n are negated where v_n < 0 (v_n = 0 is
  left as is). See the module docstring.
  """
  if "v" not in module_params:
    raise ConfigError("orient_module needs the module's read-out v; pass orient=False to explain "
                      "E as trained.")
  sign = jnp.where(module_params["v"] < 0, -1.0, 1.0).astype(module_params["v"].dtype)
  last = module_params["encoder"][-1]
  oriented = dict(module_params)
  oriented["encoder"] = list(module_params["encoder"][:-1]) + [
      {"kernel": last["kernel"] * sign, "bias": last["bias"] * sign}]
  oriented["v"] = module_params["v"] * sign
  return oriented


def composed_apply(z_fn: ZFn) -> Callable[[Params, Array], Array]:
  """`apply_fn(p, x) = encode_one(p["srae"], z_fn(p["net"], x))`: images to x-features (B, k)."""
  def apply_fn(params: Params, x: Array) -> Array:
    return encode_one(params["srae"], z_fn(params["net"], x))
  return apply_fn


def xfeature_heatmaps(z_fn: ZFn, net_params: Any, module_params: Params, x: Array,
                      feature: int | None = None, *, contrastive: bool = False,
                      layer: int | str | None = None, orient: bool = True) -> Array:
  """Excitation-backprop heatmaps of one SRAE module's x-features on images (Qi & Li, Sec. 3).

  Args:
    z_fn: `(net_params, x) -> Z (B, S_z)`, the frozen network up to the layer SRAE reads
      (`features_fn` for an xjax Flax model).
    net_params: the network's parameters (Flax variables).
    module_params: ONE module's parameters (`srae.init_module` layout; for stacked modules take
      `jax.tree.map(lambda a: a[c], params)`).
    x: images (B, H, W, C).
    feature: the x-feature n to explain, or None for all k.
    contrastive, layer: as `excitation_backprop` (the paper's c-MWP: contrastive at a layer of the
      network, resized to x).
    orient: explain sign(v_n) E_n instead of E_n (`orient_module`, see the module docstring).

  Returns:
    (k, B, H, W, C) for all features, (B, H, W, C) for one: the (c-)MWP, the shape of x.

  Raises:
    ConfigError: `feature` outside [0, k).
  """
  if orient:
    module_params = orient_module(module_params)
  params = {"net": net_params, "srae": module_params}
  apply_fn = composed_apply(z_fn)
  batch = jnp.shape(x)[0]
  num_features = module_params["encoder"][-1]["kernel"].shape[-1]

  def one(n):
    target = jnp.full((batch,), n, jnp.int32)
    return excitation_backprop(apply_fn, params, x, target, contrastive=contrastive, layer=layer)

  if feature is not None:
    if isinstance(feature, bool) or not 0 <= int(feature) < num_features:
      raise ConfigError(f"feature must be an x-feature index in [0, {num_features}); got "
                        f"{feature!r}.")
    return one(int(feature))
  return jax.vmap(one)(jnp.arange(num_features))
