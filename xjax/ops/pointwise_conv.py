"""1x1 convolutions (ResNet's projections) with their gradients as matrix products.

A 1x1 convolution is a matrix product over the pixels it reads. XLA:CPU runs its forward pass
well but differentiates it with transposed convolutions that cost several times the forward
pass; `pointwise_conv` keeps lax's forward pass and takes both gradients as the matrix products
they are (a `jax.custom_vjp`). `pointwise_as_matmul` is the same sums written as the product
outright, which `jax.linear_transpose` can transpose (the LRP engine's rules). Timings:
docs/benchmarks_cpu_fast_paths.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from xjax.ops._params import is_unit, is_unpadded
from xjax.ops.switch import fast_paths_enabled

Array = jax.Array
Specs = tuple[tuple[int, ...], ...]  # (lhs, rhs, out) specs of lax.ConvDimensionNumbers


def is_pointwise(lhs_shape: Sequence[int], rhs_shape: Sequence[int],
                 window_strides: Sequence[int], padding: Any,
                 lhs_dilation: Sequence[int] | None = None,
                 rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
  """Whether the convolution is a 1x1 one (any strides, no padding, dilation or groups) whose
  gradients `xjax.ops.conv_general_dilated` takes as matrix products: with the fast paths
  enabled (`xjax.ops.fast_paths_enabled`, checked here, at trace time)."""
  if not fast_paths_enabled():
    return False
  if not (is_unit(lhs_dilation) and is_unit(rhs_dilation) and feature_group_count == 1
          and batch_group_count == 1 and is_unpadded(padding)):
    return False
  dims = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
  return all(int(rhs_shape[d]) == 1 for d in dims.rhs_spec[2:])


def specs(dims: lax.ConvDimensionNumbers) -> Specs:
  """The dimension numbers as plain tuples: hashable, for custom_vjp's non-differentiable
  arguments."""
  return tuple(tuple(int(a) for a in spec) for spec in (dims.lhs_spec, dims.rhs_spec,
                                                         dims.out_spec))


def _letters(spec: Sequence[int], first: str, second: str, spatial: str) -> str:
  """An einsum subscript for an array laid out by a dimension-numbers spec (which axis holds
  batch / feature, then the spatial axes)."""
  names = [""] * len(spec)
  for axis, name in zip(spec, first + second + spatial):
    names[axis] = name
  return "".join(names)


def pointwise_as_matmul(lhs: Array, rhs: Array, strides: tuple[int, ...], specs: Specs,
                        precision: Any) -> Array:
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
def pointwise_conv(lhs: Array, rhs: Array, strides: tuple[int, ...], specs: Specs,
                   precision: Any) -> Array:
  """lax's 1x1 convolution, differentiated as `pointwise_as_matmul`."""
  # The forward pass is lax's own convolution: XLA:CPU runs it well, and the LRP program, which
  # inlines this custom_vjp, keeps seeing a convolution.
  lhs_spec, rhs_spec, out_spec = specs
  return lax.conv_general_dilated(
      lhs, rhs, strides, "VALID", precision=precision,
      dimension_numbers=lax.ConvDimensionNumbers(lhs_spec, rhs_spec, out_spec))


def _pointwise_conv_fwd(lhs, rhs, strides, specs, precision):
  return pointwise_conv(lhs, rhs, strides, specs, precision), (lhs, rhs)


def _pointwise_conv_bwd(strides, specs, precision, residuals, g):
  # The matrix products instead of XLA:CPU's transposed convolutions, which cost several times
  # the forward pass for these.
  lhs, rhs = residuals
  _, vjp = jax.vjp(functools.partial(pointwise_as_matmul, strides=strides, specs=specs,
                                     precision=precision), lhs, rhs)
  return vjp(g)


pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)
