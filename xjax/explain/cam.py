"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

Both weight the feature maps `A_k` of a convolution layer of `apply_fn` - any JAX function; the
layer is found in its traced program (`xjax.explain.lrp.program`) - by the gradient of the
explained output with respect to them:

* Grad-CAM (Selvaraju et al., Eqs. 1-2): `alpha_k = mean_ij dy/dA_k(i, j)`,
  `L = ReLU(sum_k alpha_k A_k)`;
* CAM (Zhou et al., Eq. 2) for a head of global average pooling and one dense layer:
  `M(i, j) = sum_k w_ck A_k(i, j)`. There `dy/dA_k(i, j) = w_ck / (h w)` at every (i, j), so
  `M = h w sum_k alpha_k A_k`: Grad-CAM's weighted sum, scaled and without the ReLU. Its mean
  over (i, j) plus the class bias is the class score.

The layer's "feature maps" are its activation: the output after a following ReLU or residual
sum (`Program.activation_of`), by default of the last convolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.explain.lrp.engine import value_and_gradient_at
from xjax.explain.lrp.program import Program, trace
from xjax.explain.methods import METHODS
from xjax.explain.targets import check_inputs, explanation_method, output_seed

Array = jax.Array


def layer_maps(program: Program, layer: int | str | None) -> int:
  """The program variable of a conv layer's feature maps (default: the last conv layer)."""
  if layer is None:
    convs = [candidate for candidate in program.layers if candidate.info.kind == "conv"]
    if not convs:
      raise ConfigError("CAM / Grad-CAM need a convolution layer; apply_fn has none.")
    chosen = convs[-1]
  else:
    chosen = program.find_layer(layer)
  var = program.activation_of(chosen)
  if len(program.avals[var].shape) != 4:
    raise ConfigError(f"Layer {chosen.info.name or chosen.info.index} has outputs of shape "
                      f"{program.avals[var].shape}; CAM needs NHWC feature maps.")
  return var


def maps_and_gradients(apply_fn: Callable, params: Any, x: Array, target: Array,
                       layer: int | str | None = None) -> tuple[Array, Array]:
  """The feature maps `A` (B, h, w, K) of a layer and the gradient of the explained output."""
  program = trace(apply_fn, params, x)
  outputs = program.avals[program.output_var]
  check_inputs(x, target, outputs.shape[-1])
  seed = output_seed(outputs, target)
  var = layer_maps(program, layer)
  return value_and_gradient_at(program, jax.tree.leaves(params), x, seed, var)


def spread_over_input(maps: Array, x: Array, method: str = "bilinear") -> Array:
  """(B, h, w) maps resized to x's (H, W) and spread evenly over its C channels (shape of x).

  `xjax.explain.heatmaps.channel_sum` of the result is the resized map.
  """
  batch, height, width, channels = x.shape
  resized = jax.image.resize(maps, (batch, height, width), method)
  return jnp.broadcast_to(resized[..., None] / channels, x.shape).astype(x.dtype)


def _gradcam_maps(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                  layer: int | str | None = None, relu: bool = True) -> Array:
  maps, grads = maps_and_gradients(apply_fn, params, x, target, layer)
  weighted = jnp.einsum("bk,bhwk->bhw", grads.mean(axis=(1, 2)), maps)
  return jax.nn.relu(weighted) if relu else weighted


def _cam_maps(apply_fn: Callable, params: Any, x: Array, target: Array, *,
              layer: int | str | None = None) -> Array:
  maps, grads = maps_and_gradients(apply_fn, params, x, target, layer)
  height, width = maps.shape[1:3]
  return height * width * jnp.einsum("bk,bhwk->bhw", grads.mean(axis=(1, 2)), maps)


@explanation_method
def gradcam_maps(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                 layer: int | str | None = None, relu: bool = True) -> Array:
  """Grad-CAM at the layer's resolution (B, h, w): `ReLU(sum_k alpha_k A_k)`."""
  return _gradcam_maps(apply_fn, params, x, target, layer=layer, relu=relu)


@explanation_method
def cam_maps(apply_fn: Callable, params: Any, x: Array, target: Array, *,
             layer: int | str | None = None) -> Array:
  """CAM at the layer's resolution (B, h, w): `sum_k w_ck A_k` for global-average-pooling heads."""
  return _cam_maps(apply_fn, params, x, target, layer=layer)


@METHODS.register("cam", description="class activation map (Zhou et al. 2016)")
@explanation_method
def cam(apply_fn: Callable, params: Any, x: Array, target: Array, *,
        layer: int | str | None = None) -> Array:
  """CAM (Zhou et al. 2016, Eq. 2) for networks with a global-average-pooling head, resized to x.

  For other heads this is `h w` times Grad-CAM without its ReLU, not a CAM.
  """
  return spread_over_input(_cam_maps(apply_fn, params, x, target, layer=layer), x)


@METHODS.register("gradcam", description="Grad-CAM (Selvaraju et al. 2017)")
@explanation_method
def gradcam(apply_fn: Callable, params: Any, x: Array, target: Array, *,
            layer: int | str | None = None, relu: bool = True) -> Array:
  """Grad-CAM (Selvaraju et al. 2017, Eq. 2), resized bilinearly to x (see `spread_over_input`).

  Args:
    apply_fn, params, x, target: the common convention (`xjax.explain.targets`).
    layer: a layer index or module name (e.g. "conv4", "layer4_1/conv2"); default the last
      convolution. Its activation (after ReLU / residual sum) are the feature maps.
    relu: keep only positive evidence (the paper's choice).
  """
  return spread_over_input(_gradcam_maps(apply_fn, params, x, target, layer=layer, relu=relu), x)
