"""Convolutions over few values per output pixel (an RGB or grey image's first layer), through
their patches.

When each output pixel reads few values (kernel size x input channels), the convolution is
faster, forward and differentiated, as a stack of its patches (one slice per kernel offset) times
the kernel matrix than as XLA:CPU's convolution kernels; past a cache-sized bound the patches lose.
`patch_conv` keeps lax's undifferentiated pass (so the program the LRP engine traces still holds
a convolution) and, differentiated, runs forward and backward through the patches (a
`jax.custom_vjp`); `through_patches` is the same sums outright, which `jax.linear_transpose` can
transpose (the LRP engine's rules). Timings: docs/benchmarks_cpu_fast_paths.md.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from xjax.ops._params import is_unit
from xjax.ops.padded_crop import conv_with_crop
from xjax.ops.switch import fast_paths_enabled

Array = jax.Array
Pads = tuple[tuple[int, int], ...]

# The most values per output pixel (kernel size x input channels) for which the patches beat
# XLA:CPU's convolution: 3x3 on RGB (27) and 5x5 on grey (25) are well inside, 3x3 over 32
# channels (288) is well past it (measured in docs/benchmarks_cpu_fast_paths.md).
MAX_PATCH_VALUES = 64


def has_few_patch_values(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                         window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1) -> bool:
  """Whether `xjax.ops.conv_general_dilated` computes the convolution through its patches: with
  the fast paths enabled (`xjax.ops.fast_paths_enabled`, checked here, at trace time), unit
  strides and dilations, no groups, channels last (Flax's layout), at most `MAX_PATCH_VALUES`
  values per output pixel."""
  if not fast_paths_enabled():
    return False
  if not (is_unit(window_strides) and is_unit(lhs_dilation) and is_unit(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1):
    return False
  n = len(lhs_shape)
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  channels_last = (tuple(dims.lhs_spec) == (0, n - 1, *range(1, n - 1)) == tuple(dims.out_spec)
                   and tuple(dims.rhs_spec) == (n - 1, n - 2, *range(n - 2)))
  return channels_last and math.prod(int(k) for k in rhs_shape[:-1]) <= MAX_PATCH_VALUES


def patch_pads(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
               window_strides: Sequence[int], padding: Any) -> Pads | None:
  """The explicit (low, high) padding per spatial axis of a channels-last convolution, or None
  when it is negative or leaves the kernel larger than the padded input (lax's op then says
  what is wrong)."""
  pads = tuple(tuple(int(p) for p in pair) for pair in (lax.padtype_to_pads(
      lhs_shape[1:-1], rhs_shape[:-2], window_strides, padding)
      if isinstance(padding, str) else padding))
  fits = all(lo >= 0 and hi >= 0 and n + lo + hi >= k for (lo, hi), n, k
             in zip(pads, lhs_shape[1:-1], rhs_shape[:-2]))
  return pads if fits else None


def through_patches(lhs: Array, rhs: Array, pads: Pads, precision: Any) -> Array:
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
def patch_conv(lhs: Array, rhs: Array, pads: Pads, precision: Any) -> Array:
  """lax's convolution (channels last, unit strides, explicit `pads`), differentiated through
  its patches (`through_patches`)."""
  # Without differentiation, and in the program the LRP engine traces (it inlines this), the
  # convolution is lax's (cropped when unpadded).
  return conv_with_crop(lhs, rhs, (1,) * (lhs.ndim - 2), pads, precision=precision,
                        dimension_numbers=_channels_last(lhs.ndim))


def _patch_conv_fwd(lhs, rhs, pads, precision):
  # The residuals are the pullback's own (the patches among them), so the backward pass does not
  # build the patches again: rebuilding them costs several times the weight gradient itself.
  return jax.vjp(functools.partial(through_patches, pads=pads, precision=precision), lhs, rhs)


def _patch_conv_bwd(pads, precision, pullback, g):
  return pullback(g)


patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def _channels_last(ndim: int) -> tuple[str, str, str]:
  spatial = "HWDTUV"[:ndim - 2]
  return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"
