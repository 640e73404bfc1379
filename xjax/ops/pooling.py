"""Max pooling over tiling windows, with its gradient by an equality mask.

XLA:CPU differentiates max pooling with select-and-scatter, several times slower than the mask
that sends each window's gradient to its maximum (timings: docs/benchmarks_cpu_fast_paths.md).
`max_pool_winners_backward` is that mask; it is also how the LRP engine routes relevance through
max pooling ("winner" mode, on every backend: it is the rule, not only a faster path).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from xjax.ops._params import is_unpadded
from xjax.ops.switch import fast_paths_enabled

Array = jax.Array


def max_pool_winners_backward(x: Array, y: Array, g: Array, window: Sequence[int]) -> Array:
  """The cotangent of `x` for max pooling over tiling windows (stride = window, no padding),
  `window` one size per axis of x: each window's `g` goes to its maximum, split evenly among
  ties (lrp_toolbox `maxpool.py`; lax's select-and-scatter gives it to one of them). Rows and
  columns no window covers get 0."""
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
  """`flax.linen.max_pool` (inputs (B, ..., C)); with the fast paths enabled
  (`xjax.ops.fast_paths_enabled`, checked at trace time), windows that tile the input (strides
  equal to the window, no padding) take their gradient by an equality mask,
  `max_pool_winners_backward`, instead of XLA's select-and-scatter. The same values; the
  gradient differs only where a window holds several equal maxima (split here, one there)."""
  from flax import linen as nn  # the models' dependency already; imported here to stay light
  window = tuple(int(w) for w in window_shape)
  strides = window if strides is None else tuple(int(s) for s in strides)
  if not fast_paths_enabled() or strides != window or not is_unpadded(padding):
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
  return _tiling_max_pool(x, (1, *window, 1))
