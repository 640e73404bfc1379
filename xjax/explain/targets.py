"""The `target` argument every explanation method shares, and the checks on its inputs.

Every method is called as `method(apply_fn, params, x, target, **options)`, where `target` is either

* class indices, an integer array of shape (B,): explain output `target[b]` of image `b`; or
* an explicit output vector, a float array of shape (B, C).

How an explicit vector is read depends on the family of the method:

* gradient methods (saliency, SmoothGrad, Integrated Gradients, Grad-CAM) take it as the weights
  of the explained output, `sum_c target[b, c] * f_c(x_b)` (the cotangent of the backward pass);
* relevance methods (LRP, DTD, excitation backprop) take it as the relevance at the output,
  `R_c` (Montavon et al., DSP 2018, Eq. 6). Class indices mean `R = onehot(target) * f(x)`, i.e.
  the explained logit with "all other outputs set to 0" (Rieger 2018, Sec. 2).

For class indices the two readings agree: the seed of the backward pass is `onehot(target)`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError

Array = jax.Array


def check_inputs(x: Array, target: Array, num_outputs: int | None = None) -> None:
  """Raises ConfigError unless `x` is batched and `target` is (B,) ints or (B, C) floats."""
  x_shape, t_shape = jnp.shape(x), jnp.shape(target)
  if len(x_shape) < 2:
    raise ConfigError(f"x must be a batch (B, ...) of inputs; got shape {x_shape}.")
  if len(t_shape) not in (1, 2) or t_shape[0] != x_shape[0]:
    raise ConfigError(f"target must be class indices (B,) or output vectors (B, C) with B = "
                      f"{x_shape[0]} (the batch of x); got shape {t_shape}.")
  integer = jnp.issubdtype(jnp.result_type(target), jnp.integer)
  if len(t_shape) == 1 and not integer:
    raise ConfigError(f"a target of shape {t_shape} must hold integer class indices; got dtype "
                      f"{jnp.result_type(target)}. Explicit output vectors have shape (B, C).")
  if len(t_shape) == 2 and num_outputs is not None and t_shape[1] != num_outputs:
    raise ConfigError(f"target has {t_shape[1]} outputs per image but the model has "
                      f"{num_outputs}.")
  if len(t_shape) == 1 and num_outputs is not None and not isinstance(target, jax.core.Tracer):
    # A class index out of range would one-hot to a zero seed and explain nothing, silently.
    # Only a concrete target can be looked at; under jax.jit the caller checks it.
    values = np.asarray(target)
    bad = np.flatnonzero((values < 0) | (values >= num_outputs))
    if bad.size:
      raise ConfigError(f"target must be class indices in [0, {num_outputs}) (the model's "
                        f"outputs); got {values[bad[:5]].tolist()} at example(s) "
                        f"{bad[:5].tolist()}.")


def check_model_target(apply_fn, params: Any, x: Array, target: Array) -> None:
  """`check_inputs` with the model's number of outputs, found by tracing `apply_fn` (no compile).

  For the functions that run the model on altered inputs (the metrics): a concrete class index
  outside the model's outputs is an error here rather than a zero seed later.
  """
  check_inputs(x, target)
  if jnp.ndim(target) == 1 and not isinstance(target, jax.core.Tracer):
    outputs = jax.eval_shape(apply_fn, params,
                             jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)))
    check_inputs(x, target, outputs.shape[-1])


def output_seed(outputs: Array, target: Array) -> Array:
  """The cotangent of the outputs (B, C): `onehot(target)` or `target` itself.

  `outputs` may be the outputs or just their shape and dtype (a `jax.ShapeDtypeStruct`/aval).
  For relevance methods with class indices this is also the relevance seed, `R / f(x)`.
  """
  check_inputs(outputs, target, outputs.shape[-1])
  if target.ndim == 1:
    return jax.nn.one_hot(target, outputs.shape[-1], dtype=outputs.dtype)
  return target.astype(outputs.dtype)



def check_count(name: str, value: Any, minimum: int = 1) -> int:
  """`value` as an int, or a ConfigError unless it is a Python int >= `minimum` (a count such as
  steps or samples, which fixes array shapes under jit)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ConfigError(f"{name} must be a Python int >= {minimum} (it fixes the shapes under jit); "
                      f"got {value!r}.")
  return int(value)
