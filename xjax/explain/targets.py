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

Invalid examples under `jax.jit`: a class index outside the model's outputs would one-hot to a
zero seed (an all-zero heatmap that looks like "no evidence"), and `jnp` indexing clamps it to the
last class (a heatmap of the wrong class). Outside `jit` these are `ConfigError`s; a traced
target cannot be looked at, and a check that stops a compiled program (`checkify`, a host
callback) would need every caller to wrap its own `jit`. So every public method and metric goes
through one guard, `explanation_method` here and `xjax.metrics.relevance.per_example_metric`:
the result of each invalid example is NaN (`poison_examples`), whatever the transformation
(`jit`, `vmap`, sharding), and the valid examples of the same batch keep their numbers. Invalid
means a class index outside [0, C), an explicit output vector holding NaN or infinity, an input
holding NaN or infinity, and, for the metrics, relevance holding NaN or infinity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
  if len(t_shape) not in (1, 2):
    raise ConfigError(f"target must be class indices (B,) or output vectors (B, C); got shape "
                      f"{t_shape}.")
  if t_shape[0] != x_shape[0]:
    raise ConfigError(f"x of shape {x_shape} is a batch of {x_shape[0]} input(s) of shape "
                      f"{x_shape[1:]}, but target has {t_shape[0]}: x must have its batch axis "
                      f"first (one image: x[None]) and target one entry per input.")
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
    check_inputs(x, target, model_outputs(apply_fn, params, x))


def model_outputs(apply_fn: Callable, params: Any, x: Array) -> int:
  """The model's number of outputs C, by tracing `apply_fn(params, x)` (no compile, no FLOPs).

  Raises:
    ConfigError: `apply_fn` fails on `params` and `x` (its error's first line is in the message).
  """
  x_shape = tuple(jnp.shape(x))
  try:
    outputs = jax.eval_shape(apply_fn, params,
                             jax.ShapeDtypeStruct(x_shape, jnp.result_type(x)))
  except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    raise ConfigError(f"apply_fn(params, x) fails for x of shape {x_shape} (a batch of "
                      f"{x_shape[0]} input(s) of shape {x_shape[1:]}): {type(e).__name__}: "
                      f"{first.strip()}") from e
  return int(jnp.shape(outputs)[-1])


def valid_examples(x: Array, target: Array | None = None,
                   num_outputs: int | None = None) -> Array:
  """(B,) bool: the examples whose input is finite and whose target is a class index in
  [0, num_outputs) or a finite output vector (traceable: a mask, never an error)."""
  b = jnp.shape(x)[0]
  valid = jnp.isfinite(jnp.reshape(jnp.asarray(x), (b, -1))).all(-1)
  if target is None:
    return valid
  target = jnp.asarray(target)
  if target.ndim == 1:
    in_range = target >= 0
    if num_outputs is not None:
      in_range &= target < num_outputs
    return valid & in_range
  return valid & jnp.isfinite(target).all(-1)


def _poison(value: Any, valid: Array, axis: int) -> Array:
  value = jnp.asarray(value)
  if not jnp.issubdtype(value.dtype, jnp.inexact):
    value = value.astype(jnp.float32)
  shape = [1] * value.ndim
  shape[axis] = valid.shape[0]
  return jnp.where(jnp.reshape(valid, shape), value, jnp.nan)


def poison_examples(result: Any, valid: Array) -> Any:
  """`result` with every number of an invalid example NaN (`valid`: (B,) bool).

  `result` is an array (or pytree of arrays) with the examples on axis 0, or a NamedTuple that
  says where its examples are by a class attribute `EXAMPLE_AXES = {field: axis}` (its other
  fields, e.g. the flipped fractions of a curve, are not per example and are kept).
  """
  axes = getattr(type(result), "EXAMPLE_AXES", None)
  if axes is not None:
    return result._replace(**{field: _poison(getattr(result, field), valid, axis)
                              for field, axis in axes.items()})
  return jax.tree.map(lambda leaf: _poison(leaf, valid, 0), result)


def checked_examples(apply_fn: Callable, params: Any, x: Array, target: Array) -> Array:
  """The checks every method and metric makes of `(apply_fn, params, x, target)`.

  Raises `ConfigError` for what can be seen now (shapes, dtypes, a concrete class index out of
  range, a model that cannot take `x`) and returns the (B,) mask of `valid_examples` for what
  can only be seen at run time under `jit`.
  """
  check_inputs(x, target)
  if apply_fn is None:  # a method blind to the model (the random control): no range to check
    return valid_examples(x, target)
  num_outputs = model_outputs(apply_fn, params, x)
  check_inputs(x, target, num_outputs)
  return valid_examples(x, target, num_outputs)


def explanation_method(method: Callable) -> Callable:
  """Decorates `method(apply_fn, params, x, target, **options) -> relevance` with the checks of
  `checked_examples`; the relevance of an invalid example is NaN (see the module docstring)."""

  @functools.wraps(method)
  def checked(apply_fn: Callable, params: Any, x: Array, target: Array, *args: Any,
              **options: Any) -> Any:
    valid = checked_examples(apply_fn, params, x, target)
    return poison_examples(method(apply_fn, params, x, target, *args, **options), valid)

  return checked


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
