"""Relevance propagation as a modified gradient of the traced program.

The engine evaluates the flat program of `xjax.explain.lrp.program` with each layer wrapped in a
`jax.custom_vjp` whose backward pass applies the layer's rule. Relevance is carried as a gradient
`g` with `R = v * g` at every value `v` (docs/design.md: rules as modified gradients), so every
operation between layers - residual additions, concatenation, reshapes, sum / average / max
pooling, ReLU - splits relevance in proportion under ordinary automatic differentiation, with no
model-specific code:

* a layer's backward pass receives `g` at its output `y`, forms `R_out = y * g`, lets the rule
  compute `R_in`, and returns `g_in = R_in / x` (0 where `x = 0`, where every rule but the
  first-layer rules gives `R_in = 0` anyway);
* layers that read the model input return `R_in` itself through a zero "probe" input instead, so
  first-layer rules whose relevance is not `x * g` (z^B, w^2, flat) are exact; the relevance at
  the input is `x * g_x + g_probe`.

Montavon et al., "Methods for interpreting and understanding deep neural networks" (DSP 2018),
Sec. 5; Montavon et al., "Explaining nonlinear classification decisions with deep Taylor
decomposition" (Pattern Recognition 2017).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.lrp.program import PASS_ACTIVATIONS, Layer, Lit, Program
from xjax.ops import conv_params, linear_conv_general_dilated, max_pool_winners_backward

Array = jax.Array
MAX_POOL_MODES = ("winner", "average")


def stabilize(z: Array, epsilon: float) -> Array:
  """`z + epsilon * sign(z)` with sign(0) = +1: the LRP-epsilon denominator (as in zennit)."""
  return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def safe_divide(a: Array, b: Array) -> Array:
  """`a / b`, and 0 where `b == 0`."""
  zero = b == 0
  return jnp.where(zero, 0.0, a / jnp.where(zero, 1.0, b)).astype(a.dtype)


def bind(eqn, args: Sequence[Any]) -> list[Any]:
  """Evaluates one equation on `args`; always returns a list of outputs."""
  params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(params, tuple):  # older JAX: (subfuns, params)
    subfuns, params = params
    args = [*subfuns, *args]
  out = eqn.primitive.bind(*args, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _zero_cotangent(value: Any) -> Any:
  value = jnp.asarray(value)
  if jnp.issubdtype(value.dtype, jnp.inexact):
    return jnp.zeros_like(value)
  return np.zeros(value.shape, jax.dtypes.float0)


def _rearrange(layer: Layer, z: Array) -> Array:
  """Applies the layer's layout ops (reshape, transpose, ... of a vmapped layer) to `z`."""
  for eqn in layer.layout:
    z = bind(eqn, [z])[0]
  return z


def _linear(layer: Layer, x: Array, weight: Array) -> Array:
  """The layer's dense / convolution op (no bias): the model's own op, or the same sums faster.

  Its layout ops are applied too, so the result has the shape of the layer's output; they only
  rearrange, so this stays linear in `x` (the rules' `jax.linear_transpose` passes them).
  """
  eqn = layer.linear
  if eqn.primitive.name == "conv_general_dilated":  # its input is lhs (the program checks)
    # On CPU an unpadded convolution runs padded and cropped, and a 1x1 one as a matrix product
    # (`xjax.ops`, as the models do; plain lax with `XJAX_PLAIN_LAX`): the layer's forward pass
    # and the rules' modified ones alike. Others: lax's own op.
    return _rearrange(layer, linear_conv_general_dilated(x, weight, **conv_params(eqn.params)))
  args = [x, weight] if layer.input_position == 0 else [weight, x]
  return _rearrange(layer, bind(eqn, args)[0])


class LayerCall:
  """A layer during the backward pass: what a rule needs to compute the layer's relevance.

  The layer computes `y = A * linear(x, W) + B`, where `A` and `B` come from the elementwise
  affine operations merged into it (bias, inference-mode BatchNorm) and `linear` includes the
  layout ops between the dense / convolution op and them (`Layer.layout`). The rules work with the
  effective weights `A * W`: `forward(x, "pos")` applies their positive part, which is
  `A+ * linear(x, W+) + A- * linear(x, W-)` (A broadcast over the output).
  """

  def __init__(self, layer: Layer, x: Array, weight: Array, chain_args: Sequence[Any],
               output: Array):
    self.layer, self.info, self.weight, self.output = layer, layer.info, weight, output
    self._x_like = jax.ShapeDtypeStruct(x.shape, x.dtype)
    self._chain_args = chain_args

  def linear(self, x: Array, weight: Array) -> Array:
    """The layer's dense / convolution op (no bias) with another weight."""
    return _linear(self.layer, x, weight)

  def _chain(self, z: Array) -> Array:
    return _run_chain(self.layer, z, self._chain_args)

  @functools.cached_property
  def scale(self) -> Array | None:
    """`A`, or None when the merged operations only shift (A = 1)."""
    if not self.layer.scaled:
      return None
    zeros = jnp.zeros(self.output.shape, self.output.dtype)
    return jax.jvp(self._chain, (zeros,), (jnp.ones_like(zeros),))[1]

  @functools.cached_property
  def shift(self) -> Array | float:
    """`B`, the effective bias (0 without merged operations)."""
    if not self.layer.chain:
      return 0.0
    return self._chain(jnp.zeros(self.output.shape, self.output.dtype))

  def bias(self, part: str = "all") -> Array | float:
    """The effective bias, or its positive ("pos") or negative ("neg") part."""
    b = self.shift
    return {"all": b, "pos": jnp.maximum(b, 0), "neg": jnp.minimum(b, 0)}[part]

  @functools.cached_property
  def _weight_and_scale(self) -> tuple[Array, Array | None]:
    """(W, A), or (A * W, None) when A is per output feature (BatchNorm) and folds into W."""
    a = self.scale
    if a is None or self.layer.feature_axes is None:
      return self.weight, a
    y_axis, w_axis = self.layer.feature_axes
    per_feature = jnp.moveaxis(a, y_axis, -1).reshape(-1, a.shape[y_axis])[0]
    shape = [1] * self.weight.ndim
    shape[w_axis] = per_feature.shape[0]
    return self.weight * per_feature.reshape(shape), None

  def forward(self, x: Array, mode: str = "w") -> Array:
    """`x` through the effective weights `A * W` modified by `mode`, without bias.

    Modes: "w" (unmodified), "pos" (positive part), "neg" (negative part), "sq" (squared),
    "ones" (all weights 1, the flat rule; `A` is ignored).
    """
    if mode == "ones":
      return self.linear(x, jnp.ones_like(self.weight))
    w, a = self._weight_and_scale
    if mode == "sq":
      z = self.linear(x, w * w)
      return z if a is None else a * a * z
    if mode == "w":
      z = self.linear(x, w)
      return z if a is None else a * z
    if mode not in ("pos", "neg"):
      raise ValueError(f"unknown weight mode {mode!r}")
    w_pos, w_neg = jnp.maximum(w, 0), jnp.minimum(w, 0)
    if mode == "neg":
      w_pos, w_neg = w_neg, w_pos
    if a is None:
      return self.linear(x, w_pos)
    return jnp.maximum(a, 0) * self.linear(x, w_pos) + jnp.minimum(a, 0) * self.linear(x, w_neg)

  def backward(self, s: Array, mode: str = "w") -> Array:
    """The transpose of `forward(., mode)` applied to `s`: `(A * W)_mode^T s`."""
    return jax.linear_transpose(functools.partial(self.forward, mode=mode), self._x_like)(s)[0]


def _chain_operands(layer: Layer) -> list[list[Any]]:
  """For each merged equation, its constant operands (None marks the running value)."""
  running, operands = layer.product, []
  for eqn in layer.chain:
    operands.append([None if v == running else v for v in eqn.invars])
    running = eqn.outvars[0]
  return operands


def _run_chain(layer: Layer, z: Array, chain_args: Sequence[Any]) -> Array:
  """Applies the merged affine equations to `z`; `chain_args` are their constant operands."""
  args = iter(chain_args)
  for eqn, operands in zip(layer.chain, _chain_operands(layer)):
    values = [z if v is None else (v.value if isinstance(v, Lit) else next(args))
              for v in operands]
    z = bind(eqn, values)[0]
  return z


def _layer_with_rule(layer: Layer, rule: Callable, probe: bool) -> Callable:
  """`f(x, weight, chain_args, probe) = y` whose backward pass applies `rule` to the layer."""

  def forward(x, weight, chain_args, probe_value):
    del probe_value
    return _run_chain(layer, _linear(layer, x, weight), chain_args)

  def fwd(x, weight, chain_args, probe_value):
    y = forward(x, weight, chain_args, probe_value)
    return y, (x, weight, chain_args, probe_value, y)

  def bwd(residuals, g):
    x, weight, chain_args, probe_value, y = residuals
    relevance_in = rule(LayerCall(layer, x, weight, chain_args, y), x, y * g)
    zeros = (_zero_cotangent(weight), [_zero_cotangent(a) for a in chain_args])
    if probe:
      return (jnp.zeros_like(x), *zeros, relevance_in.astype(x.dtype))
    return (safe_divide(relevance_in, x), *zeros, jnp.zeros_like(probe_value))

  f = jax.custom_vjp(forward)
  f.defvjp(fwd, bwd)
  return f


def _with_backward(eqn, backward: Callable[[Array, Array, Array], Array]) -> Callable:
  """The one-operand equation `eqn` with `backward(x, y, g) -> g_x` as its gradient."""

  @jax.custom_vjp
  def op(x):
    return bind(eqn, [x])[0]

  def fwd(x):
    y = op(x)
    return y, (x, y)

  def bwd(residuals, g):
    return (backward(*residuals, g),)

  op.defvjp(fwd, bwd)
  return op


def _max_pool_as_average(eqn) -> Callable:
  """Max pooling whose relevance splits in proportion to the inputs, as for sum pooling."""
  params = eqn.params
  if eqn.primitive.name == "reduce_window_max":
    def window_sum(v):
      return jax.lax.reduce_window(v, jnp.array(0, v.dtype), jax.lax.add,
                                   params["window_dimensions"], params["window_strides"],
                                   params["padding"], params["base_dilation"],
                                   params["window_dilation"])
  else:  # reduce_max
    def window_sum(v):
      return jnp.sum(v, axis=tuple(params["axes"]))

  def backward(x, y, g):
    s = (y * g) / stabilize(window_sum(x), 1e-6)
    return jax.linear_transpose(window_sum, x)(s)[0]

  return _with_backward(eqn, backward)


def _tiles_windows(eqn) -> bool:
  """True for max pooling whose windows tile the input (stride = window, no padding/dilation)."""
  p = eqn.params
  return (eqn.primitive.name == "reduce_window_max"
          and tuple(p["window_dimensions"]) == tuple(p["window_strides"])
          and all(tuple(pad) == (0, 0) for pad in p["padding"])
          and all(d == 1 for d in (*p["base_dilation"], *p["window_dilation"])))


def _max_pool_to_winners(eqn) -> Callable:
  """Max pooling over tiling windows whose relevance goes to the window's maximum, ties split
  evenly: `xjax.ops.max_pool_winners_backward`, the same routing as the gradient by an equality
  mask, on every backend (it also spares XLA:CPU's select-and-scatter)."""
  window = tuple(eqn.params["window_dimensions"])
  return _with_backward(eqn, lambda x, y, g: max_pool_winners_backward(x, y, g, window))


def _pass_activation(eqn) -> Callable:
  """A nonlinear elementwise activation that passes relevance unchanged (R_in = R_out)."""
  return _with_backward(eqn, lambda z, y, g: safe_divide(y * g, z))


def _relevance_op(eqn, program: Program, max_pool: str) -> Callable | None:
  """The one-operand equation with its relevance backward pass, or None to keep its gradient."""
  if not eqn.invars or not program.depends(eqn.invars[0]):
    return None
  name = eqn.primitive.name
  if max_pool == "average" and name in ("reduce_window_max", "reduce_max"):
    return _max_pool_as_average(eqn)
  if max_pool == "winner" and _tiles_windows(eqn):
    return _max_pool_to_winners(eqn)
  if name in PASS_ACTIVATIONS:
    return _pass_activation(eqn)
  return None


def evaluate(program: Program, param_leaves: Sequence[Any], x: Array, *,
             rules: Sequence[Callable] | None = None, probe: Array | None = None,
             max_pool: str = "winner", taps: dict[int, Array] | None = None,
             record: dict[int, Array] | None = None) -> Array:
  """Runs the program on `x`; with `rules`, its gradient is the relevance gradient.

  Args:
    program: the traced program.
    param_leaves: the leaves of `params`, in `jax.tree.leaves` order.
    x: the input.
    rules: one rule per layer (`program.layers`), or None for the plain program.
    probe: zeros shaped like `x`: input layers return their relevance as its cotangent.
    max_pool: "winner" (relevance to the maximum, the gradient) or "average" (in proportion to
      the inputs of the window, as if the pooling were sum pooling).
    taps: values added to program variables as they are computed (zeros, to take the gradient
      with respect to an intermediate value).
    record: a dict whose keys are program variables; their values are stored in it.

  Returns:
    The program's output.
  """
  if max_pool not in MAX_POOL_MODES:
    raise ConfigError(f"max_pool must be one of {MAX_POOL_MODES}; got {max_pool!r}.")
  env: dict[int, Any] = dict(program.consts)
  env.update(zip(program.param_vars, param_leaves))
  env[program.input_var] = x
  twins = {program.input_var: probe} if probe is not None else {}
  taps = taps or {}

  def read(atom):
    return atom.value if isinstance(atom, Lit) else env[atom]

  chain_skip = program.chain_eqns
  for eqn in program.eqns:
    if id(eqn) in chain_skip:
      continue
    layer = program.layer_at.get(id(eqn))
    if layer is not None:
      linear = layer.linear
      x_var = linear.invars[layer.input_position]
      weight = read(linear.invars[1 - layer.input_position])
      chain_args = [read(v) for operands in _chain_operands(layer)
                    for v in operands if v is not None and not isinstance(v, Lit)]
      rule = None if rules is None else rules[layer.info.index]
      if rule is None or getattr(rule, "is_gradient", False):
        args = [read(v) for v in linear.invars]
        outs = [_run_chain(layer, _rearrange(layer, bind(linear, args)[0]), chain_args)]
      else:
        use_probe = x_var in twins
        fn = _layer_with_rule(layer, rule, use_probe)
        probe_value = twins[x_var] if use_probe else jnp.zeros((), read(x_var).dtype)
        outs = [fn(read(x_var), weight, chain_args, probe_value)]
      outvars = [layer.output]
    elif rules is not None and (unit := program.unit_at.get(id(eqn))) is not None:
      source = None if unit.source is None else read(unit.source)
      outs = [rules[unit.info.index].apply(unit, [read(v) for v in eqn.invars], source)]
      outvars = eqn.outvars
    elif rules is not None and (op := _relevance_op(eqn, program, max_pool)) is not None:
      outs, outvars = [op(read(eqn.invars[0]))], eqn.outvars
    else:
      outs, outvars = bind(eqn, [read(v) for v in eqn.invars]), eqn.outvars
      first = eqn.invars[0] if eqn.invars else None
      if twins and isinstance(first, int) and first in twins and first in program.reads_input \
          and eqn.outvars[0] in program.reads_input:
        twins[eqn.outvars[0]] = bind(eqn, [twins[first]] + [read(v) for v in eqn.invars[1:]])[0]
    for var, value in zip(outvars, outs):
      env[var] = value + taps[var] if var in taps else value
      if record is not None and var in record:
        record[var] = env[var]
  return read(program.output_var)


def propagate(program: Program, params: Any, x: Array, output_relevance: Array | None,
              rules: Sequence[Callable], *, max_pool: str = "winner",
              seed: Array | None = None, at: int | None = None) -> Array:
  """Relevance at the input (or at program variable `at`) by the modified gradient.

  Exactly one of `output_relevance` (R at the outputs, (B, C)) and `seed` (the gradient at the
  outputs, R / f(x)) is given; class-index targets give `seed = onehot`, which avoids dividing by
  the logits.
  """
  leaves = jax.tree.leaves(params)
  if at is None:
    def run(x, probe):
      return evaluate(program, leaves, x, rules=rules, probe=probe, max_pool=max_pool)
    y, pullback = jax.vjp(run, x, jnp.zeros_like(x))
  else:
    shape, record = program.avals[at], {at: None}
    def run(x, tap):  # the tapped value comes out of the same forward pass, as aux
      out = evaluate(program, leaves, x, rules=rules, max_pool=max_pool, taps={at: tap},
                     record=record)
      return out, record[at]
    y, pullback, value = jax.vjp(run, x, jnp.zeros(shape.shape, shape.dtype), has_aux=True)
  if seed is None:
    seed = safe_divide(output_relevance.astype(y.dtype), y)
  g_x, g_probe = pullback(seed.astype(y.dtype))
  if at is None:
    return x * g_x + g_probe
  return value * g_probe


def value_and_gradient_at(program: Program, leaves: Sequence[Any], x: Array,
                          seed: Array | None, var: int) -> tuple[Array, Array | None]:
  """The value of program variable `var` and (for a `seed` at the outputs) the gradient there.

  The plain program (no rules): what CAM and Grad-CAM need at a layer's feature maps.
  """
  aval = program.avals[var]
  record = {var: None}

  def run(tap):
    out = evaluate(program, leaves, x, taps={var: tap}, record=record)
    return out, record[var]

  tap = jnp.zeros(aval.shape, aval.dtype)
  if seed is None:
    return run(tap)[1], None
  y, pullback, value = jax.vjp(run, tap, has_aux=True)
  return value, pullback(seed.astype(y.dtype))[0]


def check_rules(program: Program, composite: Callable) -> list[Callable]:
  """The rule of every layer and then of every unit (`program.units`), chosen by `composite`.

  An activation unit the composite leaves alone passes relevance unchanged (as tanh does);
  a layer, product, softmax or norm without a rule is a one-line `ConfigError`.
  """
  from xjax.explain import transformer_rules  # it imports this module

  rules = []
  for info in program.infos:
    rule = composite(info)
    if not callable(rule):
      raise ConfigError(f"The composite returned {rule!r} for layer {info.index} ({info.name}); "
                        "expected a rule from xjax.explain.rules.")
    rules.append(rule)
  for unit in program.units:
    kind = unit.info.kind
    rule = composite(unit.info)
    if rule is None and kind == "activation":
      rule = transformer_rules.Identity()
    if rule is None:
      raise ConfigError(
          f"The composite chooses no rule for {unit.describe()}: a transformer needs rules for "
          f"its products, softmax and norms; use the preset 'attn_lrp' or 'cp_lrp', or add "
          f"by_kind({kind}=...) with a rule of xjax.explain.transformer_rules.")
    if kind not in getattr(rule, "KINDS", ()):
      raise ConfigError(f"The composite chose {rule!r} for {unit.describe()}, which is not a "
                        f"rule for a {kind}; rules for it: "
                        f"{', '.join(transformer_rules.rules_for(kind))}.")
    rules.append(rule)
  return rules
