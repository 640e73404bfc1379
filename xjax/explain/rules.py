"""LRP rules: how one dense or convolution layer redistributes the relevance of its outputs.

A rule is a callable `rule(layer, x, relevance_out) -> relevance_in`, where `layer` is an
`xjax.explain.lrp.engine.LayerCall` (effective weights `A * W`, bias `B`, output `y`), `x` the
layer's input and `relevance_out` the relevance of its outputs. Rules are small frozen
dataclasses, hashable, so composites and `jax.jit` can close over them; a rule is built by its
class, e.g. `ZBox(low, high)`, `Epsilon(0.0)` (LRP-0), `ZPlus(ignore_bias=True)`.

The formulas follow Montavon et al., "Methods for interpreting and understanding deep neural
networks" (DSP 2018), Table / Eqs. in Sec. 5.1, and Montavon et al. 2017 (deep Taylor
decomposition, z+ and z^B); the conventions (which bias enters which denominator, the sign of the
stabiliser) follow zennit (Anders et al. 2021, `zennit/rules.py`) so heatmaps agree with it:
`stabilize(z) = z + eps * sign(z)`, sign(0) = +1. `x+ = max(x, 0)`, `x- = min(x, 0)`, and for
weights likewise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.lrp.engine import LayerCall, stabilize

Array = jax.Array


def _split(x: Array) -> tuple[Array, Array]:
  return jnp.maximum(x, 0), jnp.minimum(x, 0)


def _hashable(value: Any) -> Any:
  """Bounds as floats or nested tuples (rules must be hashable)."""
  array = np.asarray(value, dtype=np.float32)
  return float(array) if array.ndim == 0 else tuple(array.tolist())


@dataclasses.dataclass(frozen=True)
class Epsilon:
  """LRP-epsilon (DSP 2018, Eq. 6; LRP-0 for epsilon = 0): R_i = sum_j x_i w_ij / (z_j + eps) R_j.

  `z = W x + b`, the layer's own output (the bias absorbs its share unless `ignore_bias`).
  With epsilon = 0 and the bias ignored the relevance is gradient x input.
  """
  epsilon: float = 1e-6
  ignore_bias: bool = False

  @property
  def is_gradient(self) -> bool:
    """LRP-0 with the bias in `z` is the plain gradient (`x W^T (R / z)` with `R = z g`): the
    engine then leaves the layer to automatic differentiation, with no division by `z`."""
    return self.epsilon == 0 and not self.ignore_bias

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    z = layer.output - layer.bias() if self.ignore_bias else layer.output
    return x * layer.backward(relevance / stabilize(z, self.epsilon), "w")


@dataclasses.dataclass(frozen=True)
class ZPlus:
  """The z+ rule (deep Taylor decomposition; = alpha1-beta0): R_i = sum_j z+_ij / sum_i' z+_i'j R_j.

  On inputs of either sign, as zennit: `z+_ij = x+_i w+_ij + x-_i w-_ij`; the positive part of the
  bias enters the denominator unless `ignore_bias` (DTD's z+ ignores it, so relevance is
  conserved exactly).
  """
  stabilizer: float = 1e-6
  ignore_bias: bool = False

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    bias = 0.0 if self.ignore_bias else layer.bias("pos")
    if layer.info.input_nonnegative:  # after a ReLU: the x- terms vanish
      s = relevance / stabilize(layer.forward(x, "pos") + bias, self.stabilizer)
      return x * layer.backward(s, "pos")
    x_pos, x_neg = _split(x)
    z = layer.forward(x_pos, "pos") + layer.forward(x_neg, "neg") + bias
    s = relevance / stabilize(z, self.stabilizer)
    return x_pos * layer.backward(s, "pos") + x_neg * layer.backward(s, "neg")


@dataclasses.dataclass(frozen=True)
class AlphaBeta:
  """LRP-alpha-beta (DSP 2018, Sec. 5.1; Bach et al. 2015), alpha - beta = 1.

  R_i = sum_j (alpha z+_ij / sum z+_j - beta z-_ij / sum z-_j) R_j with `z+` as in `ZPlus`,
  `z-_ij = x+_i w-_ij + x-_i w+_ij`; b+ and b- enter their denominators unless `ignore_bias`.
  """
  alpha: float = 2.0
  beta: float = 1.0
  stabilizer: float = 1e-6
  ignore_bias: bool = False

  def __post_init__(self):
    if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1.0) > 1e-9:
      raise ConfigError(f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1 (relevance "
                        f"conservation); got alpha={self.alpha}, beta={self.beta}.")

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    b_pos, b_neg = (0.0, 0.0) if self.ignore_bias else (layer.bias("pos"), layer.bias("neg"))
    x_pos, x_neg = _split(x)
    nonneg = layer.info.input_nonnegative
    z_pos = layer.forward(x_pos, "pos") + (0.0 if nonneg else layer.forward(x_neg, "neg")) + b_pos
    z_neg = layer.forward(x_pos, "neg") + (0.0 if nonneg else layer.forward(x_neg, "pos")) + b_neg
    s_pos = relevance / stabilize(z_pos, self.stabilizer)
    s_neg = relevance / stabilize(z_neg, self.stabilizer)
    r_pos = x_pos * layer.backward(s_pos, "pos")
    r_neg = x_pos * layer.backward(s_neg, "neg")
    if not nonneg:
      r_pos = r_pos + x_neg * layer.backward(s_pos, "neg")
      r_neg = r_neg + x_neg * layer.backward(s_neg, "pos")
    return self.alpha * r_pos - self.beta * r_neg


@dataclasses.dataclass(frozen=True)
class Gamma:
  """LRP-gamma (Montavon et al. 2019, "Layer-wise relevance propagation: an overview"), as zennit.

  Weights `W + gamma W+` favour positive contributions: outputs with `y > 0` split relevance by
  `x+ (W + gamma W+) + x- (W + gamma W-)`, outputs with `y < 0` by `x+ (W + gamma W-) +
  x- (W + gamma W+)`; biases `b + gamma b+` / `b + gamma b-` unless `ignore_bias`.
  """
  gamma: float = 0.25
  stabilizer: float = 1e-6
  ignore_bias: bool = False

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    g = self.gamma
    x_pos, x_neg = _split(x)

    def fwd(v, extra):  # v through W + gamma * W_extra
      return layer.forward(v, "w") + g * layer.forward(v, extra)

    def bwd(s, extra):
      return layer.backward(s, "w") + g * layer.backward(s, extra)

    b = layer.bias()
    b_up = 0.0 if self.ignore_bias else b + g * layer.bias("pos")
    b_down = 0.0 if self.ignore_bias else b + g * layer.bias("neg")
    y = layer.output
    s_up = jnp.where(y > 0, relevance, 0) / stabilize(fwd(x_pos, "pos") + fwd(x_neg, "neg") + b_up,
                                                      self.stabilizer)
    s_down = jnp.where(y < 0, relevance, 0) / stabilize(
        fwd(x_pos, "neg") + fwd(x_neg, "pos") + b_down, self.stabilizer)
    return (x_pos * (bwd(s_up, "pos") + bwd(s_down, "neg"))
            + x_neg * (bwd(s_up, "neg") + bwd(s_down, "pos")))


@dataclasses.dataclass(frozen=True)
class ZBox:
  """The z^B rule for inputs in a box [low, high] (deep Taylor decomposition, Montavon 2017).

  R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / sum_i' (...) R_j. `low` and `high` are scalars
  or per-channel sequences (the last axis of x), e.g. `xjax.data.pipeline.input_bounds`. The bias
  cancels (as in zennit, whose three terms carry b, b+ and b-).
  """
  low: Any = 0.0
  high: Any = 1.0
  stabilizer: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, "low", _hashable(self.low))
    object.__setattr__(self, "high", _hashable(self.high))
    if np.any(np.asarray(self.low) > np.asarray(self.high)):
      raise ConfigError(f"ZBox needs low <= high; got low={self.low}, high={self.high}.")

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    low = jnp.broadcast_to(jnp.asarray(self.low, x.dtype), x.shape)
    high = jnp.broadcast_to(jnp.asarray(self.high, x.dtype), x.shape)
    z = (layer.forward(x, "w") - layer.forward(low, "pos") - layer.forward(high, "neg"))
    s = relevance / stabilize(z, self.stabilizer)
    return x * layer.backward(s, "w") - low * layer.backward(s, "pos") - high * layer.backward(
        s, "neg")


@dataclasses.dataclass(frozen=True)
class WSquare:
  """The w^2 rule (DSP 2018; for unbounded inputs): R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j.

  The squared bias enters the denominator unless `ignore_bias` (as zennit).
  """
  stabilizer: float = 1e-6
  ignore_bias: bool = False

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    z = layer.forward(jnp.ones_like(x), "sq")
    if not self.ignore_bias:
      z = z + jnp.square(layer.bias())
    return layer.backward(relevance / stabilize(z, self.stabilizer), "sq")


@dataclasses.dataclass(frozen=True)
class Flat:
  """The flat rule (Lapuschkin et al. 2019): relevance spreads evenly over each receptive field."""
  stabilizer: float = 1e-6

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    z = layer.forward(jnp.ones_like(x), "ones")
    return layer.backward(relevance / stabilize(z, self.stabilizer), "ones")


@dataclasses.dataclass(frozen=True)
class ContrastiveZPlus:
  """z+ with the weights minus z+ with the negated weights: contrastive excitation backprop.

  Zhang et al., "Top-down neural attention by excitation backprop" (ECCV 2016), Sec. 3.3: the
  marginal winning probability of the target (z+ without bias) minus that of its "dual" unit,
  whose weights are negated (Caffe-ExcitationBP's `Demo.ipynb`). For nonnegative inputs only
  (after a ReLU).
  """
  stabilizer: float = 1e-6

  def __call__(self, layer: LayerCall, x: Array, relevance: Array) -> Array:
    x = jnp.maximum(x, 0)
    s_pos = relevance / stabilize(layer.forward(x, "pos"), self.stabilizer)
    s_neg = relevance / stabilize(-layer.forward(x, "neg"), self.stabilizer)  # (-W)+ = -(W-)
    return x * (layer.backward(s_pos, "pos") + layer.backward(s_neg, "neg"))

