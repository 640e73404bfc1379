"""Activation maximization: the input a network finds most typical of a class, unit or channel.

Montavon, Samek, Mueller, "Methods for interpreting and understanding deep neural networks"
(DSP 2018), Sec. 3, finds a prototype x* of the concept w_c by maximizing its score under a prior:

* `l2` (Eq. 3.1): `max_x log p(w_c | x) - lambda ||x||^2`;
* `expert` (Eq. 3.2): `max_x log p(w_c | x) + lambda log p(x)`, `p` a density model ("expert")
  with `log_prob(x)`, e.g. a Gaussian RBM's negative free energy (`xjax.nn.rbm`); `lambda = 1`
  is the report's equation;
* `code` (Eq. 3.3): `max_z log p(w_c | g(z)) - lambda ||z||^2`, `x* = g(z*)`, for a generator `g`
  whose codes are N(0, I) (the decoder of an adversarial autoencoder, `xjax.nn.aae`).

The objective `log p(w_c | x)` is one of `OBJECTIVES`: the class log-probability (the report's),
a logit, or a unit or channel of any intermediate layer of the traced program, chosen by name or
index as Grad-CAM chooses its layer (`xjax.explain.cam`; the layer's activation after its ReLU).
Beside the priors, the regularizers that the feature-visualization libraries offer (Olah et al.,
"Feature visualization", Distill 2017): box constraints on x (projected gradient ascent), total
variation, and random jitter and scale of the input at each step (transformation robustness).

Every target (all ten classes, or a list of units) and every random start is one problem of one
`jax.vmap`-ed, jit-compiled optax optimization; the steps run in `lax.scan` segments between
which a progress bar moves and the history is checked, so a NaN or a diverging objective stops
with the target and the step that produced it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from xjax.errors import ConfigError, XjaxError
from xjax.registry import Check, in_range, non_negative

Array = jax.Array

OBJECTIVES = ("log_prob", "logit", "channel", "unit")
PRIORS = ("l2", "expert", "code")
finite = Check(in_range(-np.inf, np.inf).test, "a finite number")


class DivergenceError(XjaxError):
  """The maximization produced a NaN or infinite value."""


def diverged(targets: np.ndarray, num_starts: int, problem: int, step: int) -> DivergenceError:
  """The error for problem `problem` (target-major, `num_starts` per target) at `step`."""
  return DivergenceError(
      f"Activation maximization diverged: target {int(targets[problem // num_starts])} "
      f"(start {problem % num_starts}) became NaN or infinite at step {step}; lower the learning "
      f"rate, raise the prior's weight, or set bounds.")


@dataclasses.dataclass(frozen=True)
class Prototypes:
  """What `maximize` found, one row per target (the best of its random starts).

  Attributes:
    x: the prototypes (T, *input_shape).
    code: for `prior="code"`, the codes z* (T, *code_shape), with `x = g(z)`; else None.
    objective: the objective at the prototypes (T,), without the prior's term.
    history: the objective at every step (T, steps), of the start that was kept.
    total_history: objective plus the prior's term at every step (T, steps): what was maximized.
    start: the index of the random start that was kept (T,).
    final_totals: the final total of every start (T, num_starts).
  """

  x: np.ndarray
  code: np.ndarray | None
  objective: np.ndarray
  history: np.ndarray
  total_history: np.ndarray
  start: np.ndarray
  final_totals: np.ndarray


# --------------------------------------------------------------------------------------------------
# The objective: a class score or an intermediate unit / channel.


def _class_objective(apply_fn: Callable, params: Any, kind: str, num_outputs: int
                     ) -> Callable[[Array, Array], Array]:
  def value(x: Array, target: Array) -> Array:
    outputs = apply_fn(params, x)[0]
    scores = jax.nn.log_softmax(outputs) if kind == "log_prob" else outputs
    return scores[target]

  value.size = num_outputs
  return value


def _layer_objective(apply_fn: Callable, params: Any, kind: str, layer: int | str,
                     input_shape: tuple[int, ...]) -> Callable[[Array, Array], Array]:
  """A channel's mean activation or one unit of a layer found in the traced program."""
  from xjax.explain.cam import layer_maps
  from xjax.explain.lrp.engine import evaluate
  from xjax.explain.lrp.program import UnsupportedOperationError, trace

  program = trace(apply_fn, params, jnp.zeros((1, *input_shape), jnp.float32))
  try:
    if kind == "channel":
      var = layer_maps(program, layer)
    else:
      var = program.activation_of(program.find_layer(layer))
  except UnsupportedOperationError as e:
    raise ConfigError(str(e)) from None
  shape = program.avals[var].shape
  leaves = jax.tree.leaves(params)

  def value(x: Array, target: Array) -> Array:
    record = {var: None}
    evaluate(program, leaves, x, record=record)
    activation = record[var][0]
    if kind == "channel":
      return jnp.mean(activation, axis=tuple(range(activation.ndim - 1)))[target]
    return activation.reshape(-1)[target]

  value.size = shape[-1] if kind == "channel" else int(np.prod(shape[1:]))
  return value


def objective_function(apply_fn: Callable, params: Any, *, objective: str = "log_prob",
                       layer: int | str | None = None, input_shape: tuple[int, ...]
                       ) -> Callable[[Array, Array], Array]:
  """`value(x, target) -> scalar` for one input `x` (1, *input_shape); `value.size` is the
  number of targets (classes, channels or units) there are.

  Raises:
    ConfigError: an unknown objective, a layer objective without a layer, or an unknown layer;
      an `input_shape` that is no shape, or of a rank or size `apply_fn` cannot take.
  """
  if objective not in OBJECTIVES:
    raise ConfigError(f"Unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}.")
  input_shape = _check_shape("input_shape", input_shape)
  try:  # a wrong rank or size fails in apply_fn's first layer: say which argument it was
    outputs = jax.eval_shape(lambda x: apply_fn(params, x),
                             jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  except XjaxError:
    raise
  except Exception as e:  # noqa: BLE001 - any failure here is an input_shape / apply_fn mismatch
    raise ConfigError(f"input_shape={input_shape} does not fit apply_fn: a batch of shape "
                      f"{(1, *input_shape)} fails with: {str(e).splitlines()[0]}") from None
  if objective in ("log_prob", "logit"):
    if layer is not None:
      raise ConfigError(f"objective={objective!r} takes no layer (got layer={layer!r}); use "
                        f"objective='channel' or 'unit' for an intermediate layer.")
    if len(outputs.shape) != 2:
      raise ConfigError(f"apply_fn must return outputs (B, C) for objective={objective!r}; it "
                        f"returns shape {outputs.shape}.")
    return _class_objective(apply_fn, params, objective, outputs.shape[-1])
  if layer is None:
    raise ConfigError(f"objective={objective!r} needs layer=NAME or an index (e.g. 'conv2'), "
                      f"as Grad-CAM's layer.")
  return _layer_objective(apply_fn, params, objective, layer, input_shape)


# --------------------------------------------------------------------------------------------------
# Regularizers and input transformations.


def _check_images(x: Array) -> None:
  if np.ndim(x) != 4:
    raise ConfigError(f"x must be a batch of images (B, H, W, C); got shape {np.shape(x)}.")


def total_variation(x: Array) -> Array:
  """Anisotropic total variation of NHWC images, `sum |x[i+1, j] - x[i, j]| + |x[i, j+1] - ...|`
  (Mahendran & Vedaldi, CVPR 2015, Eq. 11 with beta = 1)."""
  _check_images(x)
  return (jnp.sum(jnp.abs(jnp.diff(x, axis=1))) + jnp.sum(jnp.abs(jnp.diff(x, axis=2))))


def jitter_and_scale(x: Array, key: Array, jitter: int, scale: tuple[float, float] | None
                     ) -> Array:
  """A random translation of up to `jitter` pixels and a random zoom in `scale` about the centre,
  keeping the image's shape (Olah et al. 2017, "transformation robustness")."""
  _check_images(x)
  if not _is_int(jitter, 0):
    raise ConfigError(f"jitter must be an int >= 0 (pixels); got {jitter!r}.")
  height, width = x.shape[1:3]
  shift_key, scale_key = jax.random.split(key)
  shift = jax.random.randint(shift_key, (2,), -jitter, jitter + 1).astype(jnp.float32)
  factor = (jnp.float32(1.0) if scale is None
            else jax.random.uniform(scale_key, (), jnp.float32, scale[0], scale[1]))
  centre = jnp.array([height, width], jnp.float32) / 2
  translation = centre * (1 - factor) + shift
  return jax.image.scale_and_translate(x, x.shape, (1, 2), jnp.stack([factor, factor]),
                                       translation, "linear", antialias=False)


# --------------------------------------------------------------------------------------------------
# Checks.


def _is_int(value: Any, minimum: int) -> bool:
  return (not isinstance(value, bool) and isinstance(value, (int, np.integer))
          and value >= minimum)


def _real(value: Any) -> float | None:
  """`value` as a float if it is one real number (Python, NumPy or JAX), else None."""
  if isinstance(value, (bool, str)) or np.ndim(value) != 0:
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def _pair(value: Any) -> tuple[float, float] | None:
  """`value` as two finite numbers (low, high), or None if it is not that."""
  try:
    low, high = (_real(v) for v in value)
  except (TypeError, ValueError):
    return None
  return (low, high) if finite(low) and finite(high) else None


def _check_shape(name: str, shape: Any, what: str = "one input") -> tuple[int, ...]:
  """`shape` as a tuple of ints, or a ConfigError naming the argument `name`."""
  try:
    dims = tuple(shape)
  except TypeError:
    dims = ()
  if not dims or not all(_is_int(d, 1) for d in dims):
    raise ConfigError(f"{name} must be a non-empty tuple of ints >= 1, the shape of {what} "
                      f"without the batch axis (e.g. (32, 32, 1)); got {shape!r}.")
  return tuple(int(d) for d in dims)


def _check_options(prior, steps, num_starts, weight, jitter, scale, bounds, expert, generator,
                   code_shape, init_scale, tv_weight, segment_steps):
  if prior not in PRIORS:
    raise ConfigError(f"Unknown prior {prior!r}; known: {', '.join(PRIORS)}.")
  for name, value in (("steps", steps), ("num_starts", num_starts),
                      ("segment_steps", segment_steps)):
    if not _is_int(value, 1):
      raise ConfigError(f"{name} must be an int >= 1; got {value!r}.")
  for name, value in (("weight (the prior's lambda)", weight), ("init_scale", init_scale),
                      ("tv_weight", tv_weight)):
    if not non_negative(_real(value)):
      raise ConfigError(f"{name} must be finite and >= 0; got {value!r}.")
  if not _is_int(jitter, 0):
    raise ConfigError(f"jitter must be an int >= 0 (pixels); got {jitter!r}.")
  scale_pair, bounds_pair = _pair(scale), _pair(bounds)
  if scale is not None and not (scale_pair and 0 < scale_pair[0] <= scale_pair[1]):
    raise ConfigError(f"scale must be None or (low, high) with 0 < low <= high; got {scale!r}.")
  if bounds is not None and not (bounds_pair and bounds_pair[0] < bounds_pair[1]):
    raise ConfigError(f"bounds must be None or (low, high), finite, with low < high; got "
                      f"{bounds!r}.")
  if prior == "expert" and not callable(expert):
    raise ConfigError("prior='expert' needs expert=log_prob, a function x (B, ...) -> (B,).")
  if prior == "code" and (not callable(generator) or code_shape is None):
    raise ConfigError("prior='code' needs generator=g, a function z (B, *code_shape) -> x, and "
                      "code_shape.")


def _check_key(key: Any) -> None:
  legacy = getattr(key, "dtype", None) == jnp.uint32 and getattr(key, "shape", None) == (2,)
  typed = (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
           and key.shape == ())
  if not (legacy or typed):
    raise ConfigError(f"key must be one PRNG key, e.g. jax.random.key(0); got {key!r}.")


def _check_optimizer(optimizer: Any, variable_shape: tuple[int, ...]) -> None:
  """An optax transformation whose first step climbs: `maximize` hands it the negative
  gradient, so a negative learning rate would silently turn the ascent into a descent."""
  if not (callable(getattr(optimizer, "init", None))
          and callable(getattr(optimizer, "update", None))):
    raise ConfigError(f"optimizer must be an optax GradientTransformation, e.g. "
                      f"optax.adam(0.05); got {optimizer!r}.")
  # One update of a zero variable for the ascent direction +1 everywhere (handed over as -1):
  # any optimizer that ascends moves along it (Adam and SGD by the learning rate).
  zero = jnp.zeros(variable_shape, jnp.float32)
  updates, _ = optimizer.update(-jnp.ones_like(zero), optimizer.init(zero), zero)
  step = float(sum(jnp.sum(u) for u in jax.tree.leaves(updates)))
  if not np.isfinite(step) or step < 0:
    raise ConfigError(f"optimizer's first step moves against the gradient it is given (a "
                      f"negative or non-finite learning rate?): its update for an ascent "
                      f"direction of +1 sums to {step:.3g}; give it a learning rate > 0.")


def _check_init(init: Any, num_targets: int, num_starts: int,
                variable_shape: tuple[int, ...]) -> Array:
  """`init` as the (targets x starts, *variable_shape) starting points of the problems."""
  init = jnp.asarray(init, jnp.float32)
  if num_starts == 1 and init.shape == (num_targets, *variable_shape):
    init = init[:, None]
  if init.shape != (num_targets, num_starts, *variable_shape):
    raise ConfigError(f"init must have shape (targets, starts, *{variable_shape}) = "
                      f"{(num_targets, num_starts, *variable_shape)} (or without the starts axis "
                      f"for one start); got {tuple(init.shape)}.")
  return init.reshape((num_targets * num_starts, *variable_shape))


def _check_targets(target: Any, size: int, objective: str) -> np.ndarray:
  targets = np.atleast_1d(np.asarray(target))
  if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
    raise ConfigError(f"target must be an int or a 1-D list of ints; got {target!r}.")
  bad = targets[(targets < 0) | (targets >= size)]
  if bad.size:
    what = {"log_prob": "classes", "logit": "outputs", "channel": "channels",
            "unit": "units"}[objective]
    raise ConfigError(f"target {int(bad[0])} is out of range: objective={objective!r} has {size} "
                      f"{what} (0..{size - 1}).")
  return targets


def _check_generator(generator: Callable, code_shape: tuple[int, ...],
                     input_shape: tuple[int, ...]) -> None:
  try:
    out = jax.eval_shape(generator, jax.ShapeDtypeStruct((1, *code_shape), jnp.float32))
  except Exception as e:  # noqa: BLE001 - any failure here is a generator/code_shape mismatch
    raise ConfigError(f"The generator cannot take codes of shape {tuple(code_shape)}: "
                      f"{str(e).splitlines()[0]}") from None
  if tuple(out.shape) != (1, *input_shape):
    raise ConfigError(f"The generator's images have shape {tuple(out.shape[1:])} but the network "
                      f"takes {tuple(input_shape)}; train the generator on the network's inputs.")


# --------------------------------------------------------------------------------------------------
# The optimization.


def maximize(apply_fn: Callable, params: Any, target: Any, *, input_shape: tuple[int, ...],
             key: Array, objective: str = "log_prob", layer: int | str | None = None,
             prior: str = "l2", weight: float = 0.01,
             expert: Callable[[Array], Array] | None = None,
             generator: Callable[[Array], Array] | None = None,
             code_shape: tuple[int, ...] | None = None, steps: int = 500,
             optimizer: optax.GradientTransformation | None = None, num_starts: int = 1,
             init_scale: float = 0.1, bounds: tuple[float, float] | None = None,
             tv_weight: float = 0.0, jitter: int = 0, scale: tuple[float, float] | None = None,
             init: Any = None, segment_steps: int = 50, progress: bool = True) -> Prototypes:
  """Activation maximization (Montavon et al., DSP 2018, Eqs. 3.1-3.3) of every target at once.

  Args:
    apply_fn: `(params, x) -> outputs (B, C)`, any JAX-traceable function.
    params: the variables `apply_fn` takes.
    target: an int or a list of ints: classes (`log_prob`, `logit`), channels or units.
    input_shape: the shape of one input of `apply_fn` (no batch axis), e.g. (32, 32, 1).
    key: a PRNG key: the random starts and the jitter / scale transformations.
    objective: one of `OBJECTIVES`: "log_prob" (Eq. 3.1's log p(w_c|x)), "logit", "channel" (the
      mean over positions of a channel of `layer`'s activation) or "unit" (one element of it,
      indexed in the flattened activation of one input).
    layer: for "channel" / "unit": a layer's name (suffix match, e.g. "conv2") or index.
    prior: "l2" (`- weight ||x||^2`), "expert" (`+ weight expert(x)`) or "code"
      (`x = generator(z)`, `- weight ||z||^2`).
    weight: the prior's lambda.
    expert: for "expert": `log_prob(x (B, *input_shape)) -> (B,)`, up to a constant.
    generator: for "code": `g(z (B, *code_shape)) -> x (B, *input_shape)`.
    code_shape: for "code": the shape of one code z.
    steps: optimizer steps.
    optimizer: an optax transformation; default `optax.adam(0.05)` ([A]: the report gives none).
      It updates every target's variable as a separate problem (vmapped), so its state and any
      global norm are per target.
    num_starts: random starts per target; the one with the highest final total is kept.
    init_scale: the starts are `init_scale * N(0, 1)` in x, or N(0, I) codes for "code".
    bounds: (low, high): x is clipped into the box after every step (not for "code").
    tv_weight: the weight of the total variation penalty on x.
    jitter: each step, shift the network's input by a random integer of up to `jitter` pixels.
    scale: each step, zoom the network's input by a random factor in (low, high).
    init: the starting points instead of random ones: x (or z for "code") of shape
      (targets, num_starts, *shape), or (targets, *shape) for one start; clipped into `bounds`.
    segment_steps: the steps run in one compiled `lax.scan` between progress and NaN checks.
    progress: show a progress bar.

  Returns:
    `Prototypes`, one row per target in the order given.

  Raises:
    ConfigError: an unknown objective, prior or layer; a target out of range; an `input_shape`
      or `code_shape` of a rank or size the network or generator cannot take (naming the
      argument); a generator whose images do not fit the network; an optimizer whose first step
      descends (a negative learning rate); bad option values (each naming its argument).
    DivergenceError: the objective or x became NaN or infinite (names the target and the step).
  """
  input_shape = _check_shape("input_shape", input_shape)
  _check_options(prior, steps, num_starts, weight, jitter, scale, bounds, expert, generator,
                 code_shape, init_scale, tv_weight, segment_steps)
  _check_key(key)
  if (jitter or scale is not None or tv_weight) and len(input_shape) != 3:
    raise ConfigError(f"jitter, scale and tv_weight act on images: input_shape must be "
                      f"(height, width, channels); got {input_shape}.")
  value_fn = objective_function(apply_fn, params, objective=objective, layer=layer,
                                input_shape=input_shape)
  targets = _check_targets(target, value_fn.size, objective)
  if prior == "code":
    code_shape = _check_shape("code_shape", code_shape, "one code")
    _check_generator(generator, code_shape, input_shape)
    variable_shape = code_shape
  else:
    variable_shape = input_shape
  if prior == "expert":
    try:
      out = jax.eval_shape(expert, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    except Exception as e:  # noqa: BLE001 - any failure here is an expert / input_shape mismatch
      raise ConfigError(f"expert cannot take inputs of input_shape={input_shape}: "
                        f"{str(e).splitlines()[0]}") from None
    if tuple(out.shape) != (1,):
      raise ConfigError(f"expert must return one log-density per input, shape (B,); it returns "
                        f"{tuple(out.shape)} for a batch of one.")
  optimizer = optax.adam(0.05) if optimizer is None else optimizer
  _check_optimizer(optimizer, variable_shape)
  transform = jitter > 0 or scale is not None

  def image_of(variable: Array) -> Array:
    return generator(variable[None]) if prior == "code" else variable[None]

  def total_and_value(variable: Array, problem_target: Array, step_key: Array):
    x = image_of(variable)
    seen = jitter_and_scale(x, step_key, jitter, scale) if transform else x
    value = value_fn(seen, problem_target)
    if prior == "expert":
      regularizer = weight * expert(x)[0]
    else:  # l2 on x, or on the code z
      regularizer = -weight * jnp.sum(jnp.square(variable))
    if tv_weight:
      regularizer = regularizer - tv_weight * total_variation(x)
    return value + regularizer, (value + regularizer, value)

  grad_fn = jax.grad(total_and_value, has_aux=True)

  def one_step(variable, opt_state, problem_target, step_key):
    grad, (total, value) = grad_fn(variable, problem_target, step_key)
    # Ascent: optax minimizes, so it is handed the negative gradient.
    updates, opt_state = optimizer.update(jax.tree.map(jnp.negative, grad), opt_state, variable)
    variable = optax.apply_updates(variable, updates)
    if bounds is not None and prior != "code":
      variable = jnp.clip(variable, bounds[0], bounds[1])
    if transform:
      # The history is of the prototype itself, not of its transformed view: one more pass.
      total, value = total_and_value(variable, problem_target, step_key)[1]
    # Without transformations the gradient's own forward pass gives the objective, one step
    # late (the point before this update); `maximize` shifts it back, saving a pass per step.
    return variable, opt_state, total, value

  problem_targets = jnp.asarray(np.repeat(targets, num_starts), jnp.int32)
  num_problems = problem_targets.shape[0]
  start_key, step_key = jax.random.split(key)
  if init is None:
    starts = jax.random.normal(start_key, (num_problems, *variable_shape), jnp.float32)
    variables = starts if prior == "code" else init_scale * starts
  else:
    variables = _check_init(init, len(targets), num_starts, variable_shape)
  if bounds is not None and prior != "code":
    variables = jnp.clip(variables, bounds[0], bounds[1])
  opt_states = jax.vmap(optimizer.init)(variables)

  @functools.partial(jax.jit, static_argnums=(4,))
  def segment(variables, opt_states, first_step, targets_, length):
    def body(carry, step):
      variables, opt_states = carry
      keys = jax.random.split(jax.random.fold_in(step_key, step), num_problems)
      variables, opt_states, totals, values = jax.vmap(one_step)(variables, opt_states,
                                                                 targets_, keys)
      bad = ~(jnp.isfinite(totals) & jnp.all(jnp.isfinite(
          variables.reshape(num_problems, -1)), axis=1))
      return (variables, opt_states), (totals, values, bad)

    steps_ = first_step + jnp.arange(length)
    (variables, opt_states), (totals, values, bad) = jax.lax.scan(body, (variables, opt_states),
                                                                  steps_)
    return variables, opt_states, totals, values, bad

  totals, values = [], []
  bar = tqdm(total=steps, desc=f"maximize {objective}/{prior}", unit="step",
             disable=not progress or None, dynamic_ncols=True, leave=False)
  done = 0
  while done < steps:
    length = min(segment_steps, steps - done)
    variables, opt_states, seg_totals, seg_values, bad = segment(
        variables, opt_states, jnp.int32(done), problem_targets, length)
    bad = np.asarray(bad)
    if bad.any():
      step, problem = map(int, np.argwhere(bad)[0])
      bar.close()
      raise diverged(targets, num_starts, problem, done + step + 1)
    totals.append(np.asarray(seg_totals))
    values.append(np.asarray(seg_values))
    done += length
    bar.update(length)
  bar.close()

  totals, values = np.concatenate(totals), np.concatenate(values)
  if not transform:  # the objective at the point after the last step, then shift by one
    final_totals, final_values = jax.jit(jax.vmap(
        lambda v, t: total_and_value(v, t, step_key)[1]))(variables, problem_targets)
    if not np.all(np.isfinite(final_totals)):
      problem = int(np.argwhere(~np.isfinite(np.asarray(final_totals)))[0, 0])
      raise diverged(targets, num_starts, problem, steps)
    totals = np.concatenate([totals[1:], np.asarray(final_totals)[None]])
    values = np.concatenate([values[1:], np.asarray(final_values)[None]])
  totals = totals.T.reshape(len(targets), num_starts, steps)
  values = values.T.reshape(len(targets), num_starts, steps)
  best = np.argmax(totals[:, :, -1], axis=1)
  rows = np.arange(len(targets))
  kept = np.asarray(variables).reshape(len(targets), num_starts, *variable_shape)[rows, best]
  if prior == "code":
    x = np.asarray(jax.jit(generator)(jnp.asarray(kept)))
    code = kept
  else:
    x, code = kept, None
  return Prototypes(x=x, code=code, objective=values[rows, best, -1],
                    history=values[rows, best], total_history=totals[rows, best], start=best,
                    final_totals=totals[:, :, -1])
