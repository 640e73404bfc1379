"""Drop-in replacements for `jax.lax` ops that XLA runs slowly on some backends (same values).

`conv_general_dilated` has exactly `jax.lax.conv_general_dilated`'s signature, so Flax takes it as
`nn.Conv(..., conv_general_dilated=conv_general_dilated)`. On the CPU backend it computes an
unpadded ("VALID") stride-1 convolution with odd kernels as the "SAME"-padded convolution cropped
back with a plain slice: the same sums, about 4x faster on XLA:CPU (25 ms against 6.6 ms with the
crop, 64x32x32x32 input, 3x3x32x32 kernel, 2 cores; the VALID conv of the Table-1 CIFAR10 CNN
took 44% of a train step). A 1x1 convolution (ResNet's projections) keeps lax's forward pass but
takes its two gradients as the matrix products they are (a `jax.custom_vjp`), instead of XLA:CPU's
transposed convolutions. A convolution over few values per output pixel (at most
`MAX_PATCH_VALUES` = kernel size x input channels: an RGB or grey image's first layer) runs, when
differentiated, through its patches, a stack of slices and one matrix product (another
`jax.custom_vjp`, whose undifferentiated pass stays lax's). Both keep a convolution in the program
the LRP engine traces; `linear_conv_general_dilated` computes the same sums with the matrix
products outright, for `jax.linear_transpose` (the engine's rules). On GPU and TPU, and for every
other convolution, it is lax's op unchanged. The backend is checked once, when the op is traced.

`crop_padding` is the shared decision: it is also what the LRP engine needs for a traced
`conv_general_dilated` equation (`conv_general_dilated(x, w, **conv_params(eqn.params))`).

`max_pool` is `flax.linen.max_pool` whose gradient, for windows that tile the input, is an
equality mask (`max_pool_winners_backward`, shared with the LRP engine's routing) rather than
XLA:CPU's select-and-scatter, about ten times slower.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _ones(values: Sequence[int] | None) -> bool:
  # Strides / dilations that change nothing: absent or all 1.
  return values is None or all(int(v) == 1 for v in values)


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
  if not (_ones(window_strides) and _ones(lhs_dilation) and _ones(rhs_dilation)
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
  "SAME"-padded and cropped, 1x1 convolutions taking their gradients as matrix products and
  convolutions over few values per pixel differentiated through their patches, on the CPU
  backend (see the module docstring)."""
  return _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count, precision, preferred_element_type,
               out_sharding, pointwise=_pointwise_conv, patches=_patch_conv)


def linear_conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                                padding: Any, lhs_dilation: Sequence[int] | None = None,
                                rhs_dilation: Sequence[int] | None = None,
                                dimension_numbers: Any = None, feature_group_count: int = 1,
                                batch_group_count: int = 1, precision: Any = None,
                                preferred_element_type: Any = None,
                                out_sharding: Any = None) -> Array:
  """`conv_general_dilated` built only from ops `jax.linear_transpose` can transpose (no
  `custom_vjp`): a 1x1 convolution, and one over few values per pixel, is computed as its matrix
  product outright. The LRP engine uses it for its rules' forward and transposed passes."""
  return _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count, precision, preferred_element_type,
               out_sharding, pointwise=_pointwise_as_matmul, patches=_through_patches)


def _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type,
          out_sharding, pointwise: Callable, patches: Callable) -> Array:
  # Both paths are plain jnp ops: no output sharding or accumulation type to carry.
  plain = out_sharding is None and preferred_element_type is None
  groups = (feature_group_count, batch_group_count)
  if plain and is_pointwise(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                            rhs_dilation, dimension_numbers, *groups):
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return pointwise(lhs, rhs, tuple(int(s) for s in window_strides), _specs(dims), precision)
  if plain and has_few_patch_values(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, *groups):
    pads = tuple(tuple(int(p) for p in pair) for pair in (lax.padtype_to_pads(
        lhs.shape[1:-1], rhs.shape[:-2], window_strides, padding)
        if isinstance(padding, str) else padding))
    fits = all(lo >= 0 and hi >= 0 and n + lo + hi >= k for (lo, hi), n, k
               in zip(pads, lhs.shape[1:-1], rhs.shape[:-2]))
    if fits:  # else lax's op says what is wrong
      return patches(lhs, rhs, pads, precision)
  return _lax_conv(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                   rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                   feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                   precision=precision, preferred_element_type=preferred_element_type,
                   out_sharding=out_sharding)


def _lax_conv(lhs, rhs, window_strides, padding, out_sharding=None, **kwargs) -> Array:
  """lax's convolution, an unpadded one computed "SAME"-padded and cropped (`crop_padding`)."""
  if out_sharding is not None:
    kwargs["out_sharding"] = out_sharding
  crop = crop_padding(lhs.shape, rhs.shape, window_strides, padding, kwargs.get("lhs_dilation"),
                      kwargs.get("rhs_dilation"), kwargs.get("dimension_numbers"),
                      kwargs.get("feature_group_count", 1), kwargs.get("batch_group_count", 1))
  if crop is None:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  dims, half = crop
  out = lax.conv_general_dilated(lhs, rhs, window_strides, tuple((h, h) for h in half),
                                 **kwargs)
  start, limit = [0] * out.ndim, list(out.shape)
  for axis, h in zip(dims.out_spec[2:], half):
    start[axis], limit[axis] = h, out.shape[axis] - h
  return lax.slice(out, start, limit)


# --------------------------------------------------------------------------------------------------
# Convolutions over few input values (an RGB or grey image's first layer), through their patches.

# The most values per output pixel (kernel size x input channels) for which the patches are
# faster: 27 (3x3 on RGB) and 25 (5x5 on grey) are 2-4x faster than lax's forward and input
# gradient; 288 (3x3 over 32 channels) is 2x slower (batch 128, 2 cores).
MAX_PATCH_VALUES = 64


def has_few_patch_values(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                         window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1) -> bool:
  """Whether `conv_general_dilated` computes the convolution through its patches on CPU (checked
  here, at trace time): unit strides and dilations, no groups, channels last (Flax's layout), at
  most `MAX_PATCH_VALUES` values per output pixel."""
  if jax.default_backend() != "cpu":
    return False
  if not (_ones(window_strides) and _ones(lhs_dilation) and _ones(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1):
    return False
  n = len(lhs_shape)
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  channels_last = (tuple(dims.lhs_spec) == (0, n - 1, *range(1, n - 1)) == tuple(dims.out_spec)
                   and tuple(dims.rhs_spec) == (n - 1, n - 2, *range(n - 2)))
  return channels_last and math.prod(int(k) for k in rhs_shape[:-1]) <= MAX_PATCH_VALUES


def _through_patches(lhs: Array, rhs: Array, pads: tuple[tuple[int, int], ...],
                     precision: Any) -> Array:
  """The convolution (channels last, unit strides) as the product of each output pixel's
  patch, (offsets, in) values stacked, with the kernel: slices, a stack and a matrix product,
  whose gradients are the same."""
  x = jnp.pad(lhs, ((0, 0), *pads, (0, 0)))
  kernel = rhs.shape[:-2]
  out = [x.shape[1 + a] - k + 1 for a, k in enumerate(kernel)]
  offsets = itertools.product(*(range(k) for k in kernel))
  patches = jnp.stack([x[(slice(None), *(slice(o, o + m) for o, m in zip(offset, out)))]
                       for offset in offsets], axis=-2)  # (batch, *out, offsets, in)
  weights = rhs.reshape(-1, rhs.shape[-2], rhs.shape[-1])  # (offsets, in, out), row-major alike
  return jnp.einsum("...tc,tco->...o", patches, weights, precision=precision).astype(lhs.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_conv(lhs: Array, rhs: Array, pads: tuple[tuple[int, int], ...],
                precision: Any) -> Array:
  # Without differentiation, and in the program the LRP engine traces (it inlines this), the
  # convolution is lax's (cropped when unpadded). Differentiated, the forward and backward
  # passes are those of `_through_patches`.
  return _lax_conv(lhs, rhs, (1,) * (lhs.ndim - 2), pads, precision=precision,
                   dimension_numbers=_channels_last(lhs.ndim))


def _patch_conv_fwd(lhs, rhs, pads, precision):
  # The residuals are the pullback's own (the patches among them): the backward pass does not
  # build the patches again (conv1 of the CIFAR10 CNN, weight gradient from recorded residuals,
  # batch 128: 19.4 ms rebuilding them, 4.7 ms keeping them).
  return jax.vjp(functools.partial(_through_patches, pads=pads, precision=precision), lhs, rhs)


def _patch_conv_bwd(pads, precision, pullback, g):
  return pullback(g)


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def _channels_last(ndim: int) -> tuple[str, str, str]:
  spatial = "HWDTUV"[:ndim - 2]
  return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


# --------------------------------------------------------------------------------------------------
# 1x1 convolutions, with their gradients as matrix products.


def is_pointwise(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                 window_strides: Sequence[int], padding: Any,
                 lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
  """Whether the convolution is a 1x1 one (any strides, no padding, dilation or groups) on the
  CPU backend (checked here, at trace time), whose gradients `conv_general_dilated` takes as
  matrix products."""
  if jax.default_backend() != "cpu":
    return False
  if not (_ones(lhs_dilation) and _ones(rhs_dilation) and feature_group_count == 1
          and batch_group_count == 1 and _is_unpadded(padding)):
    return False
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  return all(int(rhs_shape[d]) == 1 for d in dims.rhs_spec[2:])


def _specs(dims: lax.ConvDimensionNumbers) -> tuple[tuple[int, ...], ...]:
  # Hashable, for custom_vjp's non-differentiable arguments.
  return tuple(tuple(int(a) for a in spec) for spec in (dims.lhs_spec, dims.rhs_spec,
                                                         dims.out_spec))


def _letters(spec: Sequence[int], first: str, second: str, spatial: str) -> str:
  """An einsum subscript for an array laid out by a dimension-numbers spec (which axis holds
  batch / feature, then the spatial axes)."""
  names = [""] * len(spec)
  for axis, name in zip(spec, first + second + spatial):
    names[axis] = name
  return "".join(names)


def _pointwise_as_matmul(lhs: Array, rhs: Array, strides: tuple[int, ...],
                         specs: tuple[tuple[int, ...], ...], precision: Any) -> Array:
  """A 1x1 convolution as what it is: every stride-th pixel (a strided slice) times the
  (in, out) kernel matrix. Its gradients are then matrix products and a pad."""
  lhs_spec, rhs_spec, out_spec = specs
  step = [1] * lhs.ndim
  for axis, s in zip(lhs_spec[2:], strides):
    step[axis] = s
  seen = lax.slice(lhs, [0] * lhs.ndim, lhs.shape, step)
  kernel = jnp.transpose(rhs, rhs_spec).reshape(rhs.shape[rhs_spec[0]], rhs.shape[rhs_spec[1]])
  spatial = "hwdtuv"[:len(lhs_spec) - 2]
  x, y = _letters(lhs_spec, "n", "c", spatial), _letters(out_spec, "n", "o", spatial)
  return jnp.einsum(f"{x},oc->{y}", seen, kernel, precision=precision).astype(lhs.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _pointwise_conv(lhs: Array, rhs: Array, strides: tuple[int, ...],
                    specs: tuple[tuple[int, ...], ...], precision: Any) -> Array:
  # The forward pass is lax's own convolution: XLA:CPU runs it well, and the LRP program, which
  # inlines this custom_vjp, keeps seeing a convolution.
  lhs_spec, rhs_spec, out_spec = specs
  return lax.conv_general_dilated(
      lhs, rhs, strides, "VALID", precision=precision,
      dimension_numbers=lax.ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec))


def _pointwise_conv_fwd(lhs, rhs, strides, specs, precision):
  return _pointwise_conv(lhs, rhs, strides, specs, precision), (lhs, rhs)


def _pointwise_conv_bwd(strides, specs, precision, residuals, g):
  # XLA:CPU's transposed convolutions for these cost 25.8 and 49.6 ms against a 7.8 ms forward
  # pass (ResNet's stride-2 projections, batch 128, 2 cores); the matrix products much less.
  lhs, rhs = residuals
  _, vjp = jax.vjp(functools.partial(_pointwise_as_matmul, strides=strides, specs=specs,
                                     precision=precision), lhs, rhs)
  return vjp(g)


_pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


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
