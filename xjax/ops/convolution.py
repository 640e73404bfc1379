"""`conv_general_dilated` with the CPU fast paths, and its linear-transposable form for LRP.

`conv_general_dilated` has exactly `jax.lax.conv_general_dilated`'s signature, so Flax takes it as
`nn.Conv(..., conv_general_dilated=conv_general_dilated)`. With the fast paths enabled
(`xjax.ops.fast_paths_enabled`: the CPU backend, no `XJAX_PLAIN_LAX`) it picks, at trace time:

* a 1x1 convolution: lax's forward pass, gradients as matrix products (`pointwise_conv`);
* at most `MAX_PATCH_VALUES` values per output pixel: lax's undifferentiated pass, differentiated
  through its patches (`patch_conv`);
* an unpadded stride-1 convolution with odd kernels: the padded one, cropped (`padded_crop`);
* anything else: lax's op unchanged.

The first two are `jax.custom_vjp`s, which keep a convolution in the program the LRP engine
traces; the engine's rules need ops `jax.linear_transpose` can transpose, so
`linear_conv_general_dilated` computes the same sums with those paths' matrix products outright.
With the fast paths disabled both are `lax.conv_general_dilated` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax

from xjax.ops.padded_crop import conv_with_crop
from xjax.ops.patch_conv import has_few_patch_values, patch_conv, patch_pads, through_patches
from xjax.ops.pointwise_conv import is_pointwise, pointwise_as_matmul, pointwise_conv, specs
from xjax.ops.switch import fast_paths_enabled

Array = jax.Array


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None,
                         out_sharding: Any = None) -> Array:
  """`jax.lax.conv_general_dilated`, with 1x1 convolutions taking their gradients as matrix
  products, convolutions over few values per pixel differentiated through their patches and
  unpadded stride-1 odd-kernel convolutions computed "SAME"-padded and cropped, when the fast
  paths are enabled (see the module docstring)."""
  return _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
               feature_group_count, batch_group_count, precision, preferred_element_type,
               out_sharding, pointwise=pointwise_conv, patches=patch_conv)


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
               out_sharding, pointwise=pointwise_as_matmul, patches=through_patches)


def _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type,
          out_sharding, pointwise: Callable, patches: Callable) -> Array:
  kwargs = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)
  if not fast_paths_enabled():
    if out_sharding is not None:
      kwargs["out_sharding"] = out_sharding
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
  # The matrix-product paths are plain jnp ops: no output sharding or accumulation type to carry.
  plain = out_sharding is None and preferred_element_type is None
  groups = (feature_group_count, batch_group_count)
  if plain and is_pointwise(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                            rhs_dilation, dimension_numbers, *groups):
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return pointwise(lhs, rhs, tuple(int(s) for s in window_strides), specs(dims), precision)
  if plain and has_few_patch_values(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, *groups):
    pads = patch_pads(lhs.shape, rhs.shape, window_strides, padding)
    if pads is not None:
      return patches(lhs, rhs, pads, precision)
  return conv_with_crop(lhs, rhs, window_strides, padding, out_sharding=out_sharding, **kwargs)


_PARAMS = ("window_strides", "padding", "lhs_dilation", "rhs_dilation", "dimension_numbers",
           "feature_group_count", "batch_group_count", "precision", "preferred_element_type",
           "out_sharding")


def conv_params(params: dict) -> dict:
  """The keyword arguments of `conv_general_dilated` for a traced equation's params."""
  return {k: params[k] for k in _PARAMS if k in params}
