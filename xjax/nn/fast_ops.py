"""Drop-in replacements for `jax.lax` ops that XLA runs slowly on some backends (same values).

`conv_general_dilated` has exactly `jax.lax.conv_general_dilated`'s signature, so Flax takes it as
`nn.Conv(..., conv_general_dilated=conv_general_dilated)`. On the CPU backend it computes an
unpadded ("VALID") stride-1 convolution with odd kernels as the "SAME"-padded convolution cropped
back with a plain slice: the same sums, about 4x faster on XLA:CPU (25 ms against 6.6 ms with the
crop, 64x32x32x32 input, 3x3x32x32 kernel, 2 cores; the VALID conv of the Table-1 CIFAR10 CNN
took 44% of a train step). On GPU and TPU, and for every other convolution, it is lax's op
unchanged. The backend is checked once, when the op is traced.

`crop_padding` is the shared decision: it is also what the LRP engine needs for a traced
`conv_general_dilated` equation (`conv_general_dilated(x, w, **conv_params(eqn.params))`).

`max_pool` is `flax.linen.max_pool` whose gradient, for windows that tile the input, is an
equality mask (`max_pool_winners_backward`, shared with the LRP engine's routing) rather than
XLA:CPU's select-and-scatter, about ten times slower.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _is_unpadded(padding: Any) -> bool:
  if isinstance(padding, str):
    return padding.upper() == "VALID"
  try:
    return all(tuple(int(p) for p in pair) == (0, 0) for pair in padding)
  except TypeError:  # not a sequence of (low, high) pairs
    return False


def crop_padding(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                 window_strides: Sequence[int], padding: Any,
                 lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1, batch_group_count: int = 1
                 ) -> tuple[lax.ConvDimensionNumbers, tuple[int, ...]] | None:
  """(dimension numbers, half kernel per spatial dim) when the convolution should be computed
  "SAME"-padded and cropped; None when lax's own op is the fast one.

  That is an unpadded convolution with unit strides and dilations, no feature / batch groups and
  odd spatial kernel sizes (not all 1) no larger than the input, on the CPU backend (checked
  here, i.e. at trace time).
  """
  if jax.default_backend() != "cpu":
    return None
  ones = lambda v: v is None or all(int(s) == 1 for s in v)
  if not (ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1 and _is_unpadded(padding)):
    return None
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  sizes = [int(rhs_shape[d]) for d in dims.rhs_spec[2:]]
  inputs = [int(lhs_shape[d]) for d in dims.lhs_spec[2:]]
  if all(k == 1 for k in sizes) or any(k % 2 == 0 or k > n for k, n in zip(sizes, inputs)):
    return None
  return dims, tuple((k - 1) // 2 for k in sizes)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None,
                         out_sharding: Any = None) -> Array:
  """`jax.lax.conv_general_dilated`, with unpadded stride-1 odd-kernel convolutions computed
  "SAME"-padded and cropped on the CPU backend (see the module docstring)."""
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  if out_sharding is not None:
    kwargs["out_sharding"] = out_sharding
  crop = crop_padding(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                      dimension_numbers, feature_group_count, batch_group_count)
  if crop is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  dims, half = crop
  out = lax.conv_general_dilated(lhs, rhs, window_strides, tuple((h, h) for h in half),
                                 **kwargs)
  start, limit = [0] * out.ndim, list(out.shape)
  for axis, h in zip(dims.out_spec[2:], half):
    start[axis], limit[axis] = h, out.shape[axis] - h
  return lax.slice(out, start, limit)


_PARAMS = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
           "feature_group_count", "batch_group_count", "precision", "preferred_element_type",
           "out_sharding")


def conv_params(params: dict) -> dict:
  """The keyword arguments of `conv_general_dilated` for a traced equation's params."""
  return {k: params[k] for k in _PARAMS if k in params}


# --------------------------------------------------------------------------------------------------
# Max pooling over tiling windows, with its gradient by an equality mask.


def max_pool_winners_backward(x: Array, y: Array, g: Array, window: Sequence[int]) -> Array:
  """The cotangent of `x` for max pooling over tiling windows (stride = window, no padding),
  `window` one size per axis of x: each window's `g` goes to its maximum, split evenly among
  ties (lrp_toolbox `maxpool.py`; lax's select-and-scatter gives it to one of them). Rows and
  columns no window covers get 0. XLA:CPU's select-and-scatter costs about ten times this mask
  (25 ms against 2 ms for a 64x30x30x32 input, 2 cores); the LRP engine routes relevance the
  same way."""
  window = tuple(int(w) for w in window)

  def upsample(v):
    for axis, size in enumerate(window):
      if size > 1:
        v = jnp.repeat(v, size, axis=axis)
    return jnp.pad(v, [(0, n - m) for n, m in zip(x.shape, v.shape)])  # rows no window covers

  covered = upsample(jnp.ones_like(y, dtype=bool))
  winners = (covered & (x == upsample(y))).astype(x.dtype)
  count = lax.reduce_window(winners, jnp.array(0, x.dtype), lax.add, window, window, "VALID")
  return winners * upsample(g / jnp.maximum(count, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiling_max_pool(x: Array, window: tuple[int, ...]) -> Array:
  # A Python -inf (not an array) makes this `reduce_window_max`, the op LRP recognises.
  return lax.reduce_window(x, -jnp.inf, lax.max, window, window, "VALID")


def _tiling_max_pool_fwd(x, window):
  y = _tiling_max_pool(x, window)
  return y, (x, y)


def _tiling_max_pool_bwd(window, residuals, g):
  x, y = residuals
  return (max_pool_winners_backward(x, y, g, window),)


_tiling_max_pool.defvjp(_tiling_max_pool_fwd, _tiling_max_pool_bwd)


def max_pool(x: Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Any = "VALID") -> Array:
  """`flax.linen.max_pool` (inputs (B, ..., C)); on the CPU backend, windows that tile the input
  (strides equal to the window, no padding) take their gradient by an equality mask,
  `max_pool_winners_backward`, instead of XLA's select-and-scatter. The same values; the
  gradient differs only where a window holds several equal maxima (split here, one there)."""
  from flax import linen as nn  # the models' dependency already; imported here to stay light
  window = tuple(int(w) for w in window_shape)
  strides = window if strides is None else tuple(int(s) for s in strides)
  if jax.default_backend() != "cpu" or strides != window or not _is_unpadded(padding):
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
  return _tiling_max_pool(x, (1, *window, 1))
