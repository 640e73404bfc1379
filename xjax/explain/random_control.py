"""The random control: uniform noise as a heatmap, blind to the model.

Registered as the method `random` (`xjax.explain.methods`), so that an evaluation scores it beside
the explanations: it is the chance level of every metric, and a method that scores no better
than `random` on a metric shows nothing that metric can see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.explain.methods import METHODS, prng_key
from xjax.explain.targets import explanation_method

Array = jax.Array


@METHODS.register("random", binds={"key": prng_key},
                  description="uniform noise in [0, 1): the chance level of every metric (a "
                  "control, not an explanation)")
@explanation_method
def random(apply_fn: Callable | None, params: Any, x: Array, target: Array, *,
           key: Array) -> Array:
  """Uniform noise in [0, 1) with the shape of `x`, the same for an image in any batch.

  Each image's noise comes from `key` folded with the bits of three of its pixels: the same image
  gets the same map in any batch (an evaluation in batches of 32 and one in 64 agree), and
  different images get different maps.

  Args:
    apply_fn, params, target: ignored (the calling convention of the methods); `apply_fn` may
      be None.
    x: a batch of inputs (B, ...).
    key: the PRNG key of the noise.

  Returns:
    The noise, shape of `x`.
  """
  del apply_fn, params, target  # blind to the model: what a metric gives an uninformed map
  flat = jnp.reshape(x, (jnp.shape(x)[0], -1)).astype(jnp.float32)
  picks = flat[:, jnp.array([0, flat.shape[1] // 2, flat.shape[1] - 1])]
  bits = jax.lax.bitcast_convert_type(picks, jnp.uint32)

  def one(image_bits: Array) -> Array:
    k = key
    for b in image_bits:
      k = jax.random.fold_in(k, b)
    return jax.random.uniform(k, jnp.shape(x)[1:])

  return jax.vmap(one)(bits)
