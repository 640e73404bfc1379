"""Unpadded ("VALID") stride-1 convolutions computed "SAME"-padded and cropped back.

XLA:CPU runs an unpadded convolution with odd kernels much slower than the padded one of the same
kernel; the padded convolution followed by a plain slice gives the same sums (the crop drops
exactly the outputs that read the padding). Timings: docs/benchmarks_cpu_fast_paths.md.

`crop_padding` is the decision, shared with the LRP engine (through
`xjax.ops.convolution.linear_conv_general_dilated`), whose program sees the slice as part of the
layer (`xjax.explain.lrp.program`) and the receptive fields as a shift of the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax import lax

from xjax.ops._params import is_unit, is_unpadded
from xjax.ops.switch import fast_paths_enabled

Array = jax.Array


def crop_padding(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                 window_strides: Sequence[int], padding: Any,
                 lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1, batch_group_count: int = 1
                 ) -> tuple[lax.ConvDimensionNumbers, tuple[int, ...]] | None:
  """(dimension numbers, half kernel per spatial dim) when the convolution should be computed
  "SAME"-padded and cropped; None when lax's own op is the fast one.

  That is an unpadded convolution with unit strides and dilations, no feature / batch groups and
  odd spatial kernel sizes (not all 1) no larger than the input, with the fast paths enabled
  (`xjax.ops.fast_paths_enabled`: the CPU backend, no `XJAX_PLAIN_LAX`; checked here, i.e. at
  trace time).
  """
  if not fast_paths_enabled():
    return None
  if not (is_unit(window_strides) and is_unit(lhs_dilation) and is_unit(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1 and is_unpadded(padding)):
    return None
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  sizes = [int(rhs_shape[d]) for d in dims.rhs_spec[2:]]
  inputs = [int(lhs_shape[d]) for d in dims.lhs_spec[2:]]
  if all(k == 1 for k in sizes) or any(k % 2 == 0 or k > n for k, n in zip(sizes, inputs)):
    return None
  return dims, tuple((k - 1) // 2 for k in sizes)


def conv_with_crop(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                   out_sharding: Any = None, **kwargs) -> Array:
  """`lax.conv_general_dilated`, an unpadded one computed "SAME"-padded and cropped when
  `crop_padding` says so."""
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
