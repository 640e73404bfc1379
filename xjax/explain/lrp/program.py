"""The traced program of `apply_fn(params, x)`, flattened and analysed for relevance propagation.

LRP works on the program, not on a module library (docs/design.md): `apply_fn` is traced
to a jaxpr, calls (`jit`, `custom_jvp_call`, ...) are inlined, and the analysis finds

* the **layers**: every `dot_general` / `conv_general_dilated` with one input-dependent operand
  and constant weights, together with the chain of elementwise affine operations with constant
  operands that follows it (bias, inference-mode BatchNorm). The chain is merged into the layer
  (canonization): the layer computes `y = A * (x @ W) + B`, and the rules see the effective
  weights `A * W` and bias `B`, so BatchNorm after a convolution conserves relevance. Ops that
  only rearrange the linear op's output one-to-one (reshape, squeeze, transpose, a broadcast
  that adds unit axes) may stand between it and the chain, as in a vmapped single-example layer
  (Equinox: `conv -> reshape -> squeeze -> + b`, `dot_general -> transpose -> + b`); they join
  the linear op (`x @ W` is then the rearranged product, still linear in `x` and `W`);
* which values depend on the input `x`, which are statically non-negative (ReLU outputs and what
  pooling or reshaping makes of them; the rules skip the negative-input terms there), and which
  layers read the input itself (`LayerInfo.is_input`, for first-layer rules such as z^B);
* the **units** of a transformer (`units.py`): products of two input-dependent values, softmax,
  LayerNorm / RMSNorm and GELU / SiLU-like activations, each with a rule of its own;
* operations relevance cannot pass (a nonlinear function such as `exp` outside a softmax, a
  division by an input-dependent value that is not a norm's or softmax's):
  `UnsupportedOperationError` names the operation and its source line.

Everything else (additions, concatenation, reshapes, sum / average / max pooling, ReLU) is left
to automatic differentiation: relevance is `x * modified_gradient`, which splits in proportion
through any of them (see `xjax.explain.lrp.engine`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from xjax.errors import UnsupportedOperationError
from xjax.explain.lrp.units import UnitInfo, find_units

LINEAR_PRIMITIVES = ("dot_general", "conv_general_dilated")
# Calls whose body is inlined; the key of the body in the equation's params.
_CALL_BODIES = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
                "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr", "remat2": "jaxpr",
                "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr",
                "remat": "jaxpr", "checkpoint": "jaxpr"}
# Ops that only move or copy values: a layer fed through them still reads the input.
_LAYOUT = {"reshape", "transpose", "squeeze", "expand_dims", "convert_element_type", "copy",
           "copy_p", "reduce_precision", "sharding_constraint", "broadcast_in_dim"}
# Ops through which `x * gradient` splits relevance in proportion (linear in the input-dependent
# operands, or positively homogeneous like ReLU, abs and max pooling), or that carry no gradient.
_PROPORTIONAL = _LAYOUT | {
    "add", "add_any", "sub", "neg", "concatenate", "slice", "dynamic_slice", "gather", "pad",
    "rev", "select_n", "reduce_sum", "reduce_window_sum", "cumsum", "reduce_max",
    "reduce_window_max", "reduce_min", "max", "min", "abs", "stop_gradient", "clamp",
    "squeeze", "dynamic_update_slice", "mul", "div", "sign", "floor", "ceil", "round",
    "gt", "lt", "ge", "le", "eq", "ne", "argmax", "argmin", "and", "or", "not", "is_finite",
    "iota", "optimization_barrier", "split"}
# Elementwise nonlinear activations: relevance passes through them unchanged (zennit's Pass).
PASS_ACTIVATIONS = {"tanh", "logistic", "erf"}
# Elementwise affine ops with one constant operand, merged into the layer before them.
_AFFINE_CHAIN = {"add", "sub", "mul", "div", "neg", "convert_element_type"}
# One-operand ops that can join a linear op when they rearrange its output one-to-one (same
# number of elements; `broadcast_in_dim` then only adds unit axes): the layer stays linear in x,
# and each output element is still one element of the product, so the chain stays elementwise.
_REARRANGE = {"reshape", "squeeze", "transpose", "broadcast_in_dim", "copy", "copy_p"}
# A `slice` with unit strides that keeps the output features whole joins a linear op too (the
# spatial crop of an unpadded convolution computed "SAME"-padded, `xjax.nn.fast_ops`): it is
# linear and each of its output elements is still one element of the product.
# Ops whose output is >= 0 when all their input-dependent operands are.
_KEEPS_NONNEG = _LAYOUT | {"concatenate", "slice", "dynamic_slice", "gather", "rev", "add",
                           "add_any", "reduce_sum", "reduce_window_sum", "reduce_max",
                           "reduce_window_max", "reduce_min", "min", "mul", "select_n", "cumsum"}


@dataclasses.dataclass(frozen=True)
class Lit:
  """A literal operand of an equation."""
  value: Any


Atom = Any  # an int (a variable of the flat program) or a Lit


@dataclasses.dataclass
class Eqn:
  """One equation of the flat program: `outvars = primitive.bind(*invars, **params)`."""
  primitive: Any
  invars: list[Atom]
  outvars: list[int]
  params: dict
  name: str  # the name stack, e.g. "CNNCifar10/conv1" for Flax modules
  source: str  # file:line of the user code that produced it

  def describe(self) -> str:
    where = f" in {self.name}" if self.name else ""
    return f"`{self.primitive.name}`{where} (at {self.source})"


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """What a composite sees of a layer when it chooses the layer's rule.

  Attributes:
    index: position among the program's layers, in evaluation order.
    kind: "conv" or "dense".
    name: the name stack of the linear op (the Flax module path, e.g. "ResNet18/layer1_0/conv1").
    is_input: the layer reads the model input (through reshapes only): the first layer.
    is_output: the layer's output is an output of the program (the classifier).
    input_nonnegative: the layer's input is >= 0 by construction (after a ReLU).
    input_shape, output_shape: shapes of the layer's input and output (with the batch axis).
  """
  index: int
  kind: str
  name: str
  is_input: bool
  is_output: bool
  input_nonnegative: bool
  input_shape: tuple[int, ...]
  output_shape: tuple[int, ...]


@dataclasses.dataclass
class Layer:
  """A linear op and the affine chain merged into it: `y = chain(layout(linear(x, w)))`."""
  info: LayerInfo
  linear: Eqn
  input_position: int  # which operand of `linear` is the input (the other is the weight)
  # Ops that rearrange `linear`'s output before the chain (vmapped layers); part of the product.
  layout: list[Eqn]
  chain: list[Eqn]
  output: int  # the variable holding y
  scaled: bool  # the chain multiplies or divides (so A != 1)
  # (axis of y, axis of the weight) of the output features when every scaling in the chain is
  # per output feature (BatchNorm), so A can be folded into the weight; else None.
  feature_axes: tuple[int, int] | None = None

  @property
  def eqns(self) -> list[Eqn]:
    """The merged equations, in evaluation order."""
    return [self.linear, *self.layout, *self.chain]

  @property
  def product(self) -> int:
    """The variable holding `layout(linear(x, w))`, which the chain starts from."""
    return (self.layout or [self.linear])[-1].outvars[0]


class Program:
  """`apply_fn(params, x)` traced, flattened and analysed. Build with `trace`."""

  def __init__(self, eqns, consts, param_vars, input_var, output_var, avals):
    self.eqns: list[Eqn] = eqns
    self.consts: dict[int, Any] = consts
    self.param_vars: list[Atom] = param_vars
    self.input_var: int = input_var
    self.output_var: Atom = output_var
    self.avals: dict[int, Any] = avals
    self._analyse()

  # ---------------------------------------------------------------------------------------------
  # Analysis
  # ---------------------------------------------------------------------------------------------

  def _analyse(self) -> None:
    live = {self.output_var} if isinstance(self.output_var, int) else set()
    kept = []
    for eqn in reversed(self.eqns):  # dead code elimination: keep what the output needs
      if any(v in live for v in eqn.outvars):
        kept.append(eqn)
        live.update(v for v in eqn.invars if isinstance(v, int))
    self.eqns = kept[::-1]
    self.uses: dict[int, list[Eqn]] = {}
    for eqn in self.eqns:
      for v in eqn.invars:
        if isinstance(v, int):
          self.uses.setdefault(v, []).append(eqn)
    self.producer = {v: eqn for eqn in self.eqns for v in eqn.outvars}

    self.dependent = {self.input_var}
    self.reads_input = {self.input_var}  # the input, through layout ops only
    self.nonnegative: set[int] = set()
    for eqn in self.eqns:
      dep = [v for v in eqn.invars if isinstance(v, int) and v in self.dependent]
      if not dep:
        continue
      self.dependent.update(eqn.outvars)
      name = eqn.primitive.name
      if name in _LAYOUT and dep[0] in self.reads_input:
        self.reads_input.update(eqn.outvars)
      if self._output_nonnegative(eqn, dep):
        self.nonnegative.update(eqn.outvars)
    self._find_layers()
    self.units, self.softmax_exps, self.live = find_units(self)
    self.unit_at = {id(unit.eqn): unit for unit in self.units}
    self._check_supported()

  def _is_nonneg_atom(self, atom: Atom) -> bool:
    if isinstance(atom, Lit):
      # numpy, not jnp: under an outer jax.jit a jnp comparison would be staged, not evaluated.
      return bool(np.all(np.asarray(atom.value) >= 0))
    return atom in self.nonnegative

  def _output_nonnegative(self, eqn: Eqn, dep: list[int]) -> bool:
    name = eqn.primitive.name
    if name == "max":  # max(a, b) >= each operand: ReLU is max(x, 0.0)
      return any(self._is_nonneg_atom(v) for v in eqn.invars)
    if name in ("abs", "logistic", "exp"):
      return True
    if name == "pad":
      return self._is_nonneg_atom(eqn.invars[0]) and self._is_nonneg_atom(eqn.invars[1])
    if name == "select_n":
      return all(self._is_nonneg_atom(v) for v in eqn.invars[1:])
    if name in ("mul", "div"):
      return all(self._is_nonneg_atom(v) for v in eqn.invars)
    if name in _KEEPS_NONNEG:
      return all(self._is_nonneg_atom(v) for v in dep)
    return False

  def depends(self, atom: Atom) -> bool:
    """True for a variable that depends on the input."""
    return isinstance(atom, int) and atom in self.dependent

  def _is_float(self, var: int) -> bool:
    return jnp.issubdtype(self.avals[var].dtype, jnp.inexact)

  def _constant_operand(self, eqn: Eqn) -> bool:
    """True when exactly one operand of a binary op depends on the input."""
    return sum(isinstance(v, int) and v in self.dependent for v in eqn.invars) == 1

  def _find_layers(self) -> None:
    self.layers: list[Layer] = []
    merged: set[int] = set()
    for eqn in self.eqns:
      if eqn.primitive.name not in LINEAR_PRIMITIVES:
        continue
      dep = [i for i, v in enumerate(eqn.invars) if isinstance(v, int) and v in self.dependent]
      if len(dep) != 1:  # two: a product of input-dependent values (a unit, units.py)
        continue
      position = dep[0]
      if eqn.primitive.name == "conv_general_dilated" and position != 0:
        raise UnsupportedOperationError(
            f"LRP cannot propagate relevance through {eqn.describe()}: its kernel depends on "
            "the input.")
      layout, chain, out, scaled = [], [], eqn.outvars[0], False
      feature = (self._linear_feature_axes(eqn, position) or (None,))[0]  # through the layout
      while True:
        users = self.uses.get(out, [])
        if len(users) != 1 or out == self.output_var:
          break
        user = users[0]
        if not chain and self._rearranges(user, feature):
          layout.append(user)
          out = user.outvars[0]
          feature = None if feature is None else self._layout_axis(user, feature)
          continue
        if (user.primitive.name not in _AFFINE_CHAIN or not self._constant_operand(user)
            or (user.primitive.name == "div" and user.invars[0] != out)
            or self.avals[user.outvars[0]].shape != self.avals[out].shape):
          break
        scaled |= user.primitive.name in ("mul", "div", "neg") or (
            user.primitive.name == "sub" and user.invars[1] == out)
        chain.append(user)
        out = user.outvars[0]
      if layout and not chain and out != self.output_var:
        # Nothing to merge after the rearrangement: leave it outside, so the layer's output (the
        # feature maps CAM reads) keeps the linear op's layout; but up to a crop, which belongs
        # to the convolution (its output is the unpadded convolution's feature maps).
        layout = layout[:max((i + 1 for i, op in enumerate(layout)
                              if op.primitive.name == "slice"), default=0)]
        out = (layout or [eqn])[-1].outvars[0]
      x_var = eqn.invars[position]
      info = LayerInfo(
          index=len(self.layers),
          kind="conv" if eqn.primitive.name == "conv_general_dilated" else "dense",
          name=eqn.name, is_input=x_var in self.reads_input, is_output=out == self.output_var,
          input_nonnegative=x_var in self.nonnegative, input_shape=tuple(self.avals[x_var].shape),
          output_shape=tuple(self.avals[out].shape))
      layer = Layer(info, eqn, position, layout, chain, out, scaled)
      if scaled:
        layer.feature_axes = self._feature_axes(layer)
      self.layers.append(layer)
      merged.update(id(e) for e in layer.eqns)
    self.merged = merged
    # A layer is evaluated where its last merged equation was (its constants, e.g. a reshaped
    # bias, may be computed after the linear op); its other equations are skipped.
    self.layer_at = {id(layer.eqns[-1]): layer for layer in self.layers}
    self.chain_eqns = {id(e) for layer in self.layers for e in layer.eqns}
    self.chain_eqns -= set(self.layer_at)

  def _rearranges(self, eqn: Eqn, feature: int | None = None) -> bool:
    """True for an op that moves the elements of its one operand one-to-one (see _REARRANGE),
    or a unit-stride `slice` that keeps the output feature axis `feature` whole."""
    if len(eqn.invars) != 1 or len(eqn.outvars) != 1:
      return False
    if eqn.primitive.name == "slice":
      return (feature is not None and all(s == 1 for s in eqn.params.get("strides") or ())
              and self._slice_keeps(eqn, feature))
    if eqn.primitive.name not in _REARRANGE:
      return False
    before, after = self.avals[eqn.invars[0]], self.avals[eqn.outvars[0]]
    return before.dtype == after.dtype and before.size == after.size

  def _layout_axis(self, eqn: Eqn, axis: int) -> int | None:
    """Where the rearrangement `eqn` moves axis `axis` of its operand; None if it is merged
    with others or the feature axis has size 1 (then unit axes cannot be told apart)."""
    shape = self.avals[eqn.invars[0]].shape
    if shape[axis] == 1:
      return None
    name = eqn.primitive.name
    if name == "slice":
      return axis if self._slice_keeps(eqn, axis) else None
    if name == "transpose":
      return list(eqn.params["permutation"]).index(axis)
    if name == "squeeze":
      return axis - sum(d < axis for d in eqn.params["dimensions"])
    if name == "broadcast_in_dim":
      return int(eqn.params["broadcast_dimensions"][axis])
    if name == "reshape":  # only adding or removing unit axes keeps an axis whole
      new_shape = self.avals[eqn.outvars[0]].shape
      if eqn.params.get("dimensions") is not None or (
          [n for n in shape if n != 1] != [n for n in new_shape if n != 1]):
        return None
      rank = sum(n != 1 for n in shape[:axis])  # the axis is the rank-th non-unit one
      return [i for i, n in enumerate(new_shape) if n != 1][rank]
    return axis  # copy

  def _slice_keeps(self, eqn: Eqn, axis: int) -> bool:
    """True when the `slice` equation keeps axis `axis` of its operand whole."""
    size = self.avals[eqn.invars[0]].shape[axis]
    strides = eqn.params.get("strides")
    return (eqn.params["start_indices"][axis] == 0 and eqn.params["limit_indices"][axis] == size
            and (strides is None or strides[axis] == 1))

  def _linear_feature_axes(self, eqn: Eqn, position: int) -> tuple[int, int] | None:
    """(output axis, weight axis) of the output features of a conv or a plain dense op."""
    if eqn.primitive.name == "conv_general_dilated":
      dims = eqn.params["dimension_numbers"]
      return (dims.out_spec[1], dims.rhs_spec[0])
    (contract_x, contract_w), (batch_x, batch_w) = eqn.params["dimension_numbers"]
    x_rank = len(self.avals[eqn.invars[position]].shape)
    w_var = eqn.invars[1 - position]
    w_rank = len(w_var.value.shape) if isinstance(w_var, Lit) else len(self.avals[w_var].shape)
    if (position, tuple(contract_x), tuple(contract_w), batch_x, batch_w, w_rank) != (
        0, (x_rank - 1,), (0,), (), (), 2):
      return None
    return (x_rank - 1, 1)

  def _feature_axes(self, layer: Layer) -> tuple[int, int] | None:
    """(y axis, weight axis) of the output features if the chain scales per feature only."""
    chain = layer.chain
    axes = self._linear_feature_axes(layer.linear, layer.input_position)
    if axes is None:
      return None
    for op in layer.layout:
      y_axis = self._layout_axis(op, axes[0])
      if y_axis is None:
        return None
      axes = (y_axis, axes[1])
    for user in chain:
      if user.primitive.name not in ("mul", "div"):
        continue
      for v in user.invars:
        if not self.depends(v):
          shape = np.shape(v.value) if isinstance(v, Lit) else self.avals[v].shape
          if any(size != 1 for axis, size in enumerate(shape) if axis != axes[0]):
            return None
    return axes

  def _check_supported(self) -> None:
    """Refuses an operation relevance reaches that no rule covers (one line: op and source)."""
    for eqn in self.eqns:
      name = eqn.primitive.name
      dep = [v for v in eqn.invars if isinstance(v, int) and v in self.dependent]
      if (not dep or id(eqn) in self.merged or id(eqn) in self.unit_at
          or id(eqn) in self.softmax_exps or not any(v in self.live for v in eqn.outvars)
          or not any(self._is_float(v) for v in dep)):
        continue
      if name == "div" and self.depends(eqn.invars[1]):
        raise UnsupportedOperationError(
            f"LRP cannot propagate relevance through {eqn.describe()}: it divides by an "
            "input-dependent value that is neither a softmax's sum nor a norm's scale.")
      if name not in _PROPORTIONAL and name not in PASS_ACTIVATIONS:
        raise UnsupportedOperationError(
            f"LRP cannot propagate relevance through {eqn.describe()} of an input-dependent "
            "value. Supported: dense and convolution layers with constant weights, elementwise "
            "affine maps, ReLU / abs / max (piecewise linear), tanh / sigmoid / GELU / SiLU, "
            "products of input-dependent values, softmax, LayerNorm / RMSNorm, sum / average / "
            "max pooling, reshapes and concatenation.")

  @property
  def unit_infos(self) -> list[UnitInfo]:
    return [unit.info for unit in self.units]

  # ---------------------------------------------------------------------------------------------
  # Lookup
  # ---------------------------------------------------------------------------------------------

  @property
  def infos(self) -> list[LayerInfo]:
    return [layer.info for layer in self.layers]

  def find_layer(self, layer: int | str) -> Layer:
    """The layer at an index (negative counts from the end) or with a name (suffix match)."""
    if isinstance(layer, int):
      if not -len(self.layers) <= layer < len(self.layers):
        raise UnsupportedOperationError(
            f"layer {layer} does not exist: the program has {len(self.layers)} layers.")
      return self.layers[layer]
    matches = [candidate for candidate in self.layers
               if candidate.info.name == layer or candidate.info.name.endswith("/" + layer)]
    if len(matches) != 1:
      names = ", ".join(candidate.info.name for candidate in self.layers)
      raise UnsupportedOperationError(
          f"{'No' if not matches else 'More than one'} layer is named {layer!r}; layers: {names}.")
    return matches[0]

  def activation_of(self, layer: Layer) -> int:
    """The variable of a layer's activation: its output after a following ReLU / residual sum.

    Follows single consumers that are `max` with a constant (ReLU), `add` of two input-dependent
    values (a residual connection) or a pass activation; this is what Grad-CAM calls the layer's
    feature maps (for a ResNet block's last convolution: the block's output).
    """
    out = layer.output
    while True:
      users = self.uses.get(out, [])
      if len(users) != 1 or out == self.output_var:
        return out
      user = users[0]
      name = user.primitive.name
      dep = [v for v in user.invars if isinstance(v, int) and v in self.dependent]
      if not ((name == "max" and len(dep) == 1) or (name == "add" and len(dep) == 2)
              or name in PASS_ACTIVATIONS):
        return out
      out = user.outvars[0]


def _source(eqn) -> str:
  try:
    from jax._src import source_info_util
    return source_info_util.summarize(eqn.source_info)
  except Exception:  # pragma: no cover - private API; the message only loses the line
    return "unknown location"


class _Flattener:
  """Inlines calls so the program is one list of equations over integer variables."""

  def __init__(self):
    self.eqns: list[Eqn] = []
    self.consts: dict[int, Any] = {}
    self.avals: dict[int, Any] = {}

  def new_var(self, aval) -> int:
    var = len(self.avals)
    self.avals[var] = aval
    return var

  def inline(self, jaxpr, consts: Sequence[Any], inputs: Sequence[Atom], scope: str) -> list[Atom]:
    env: dict[Any, Atom] = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = self.new_var(v.aval)
      self.consts[env[v]] = c
    env.update(zip(jaxpr.invars, inputs))

    def read(v):
      return Lit(v.val) if isinstance(v, jcore.Literal) else env[v]

    for eqn in jaxpr.eqns:
      ins = [read(v) for v in eqn.invars]
      name = str(eqn.source_info.name_stack)
      name = f"{scope}/{name}" if scope and name else (scope or name)
      body = _CALL_BODIES.get(eqn.primitive.name)
      if body is not None and body in eqn.params:
        sub = eqn.params[body]
        sub_jaxpr, sub_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
        if eqn.primitive.name == "custom_vjp_call_jaxpr":
          ins = ins[:len(sub_jaxpr.invars)]
        outs = self.inline(sub_jaxpr, sub_consts, ins, name)
      else:
        outs = [self.new_var(v.aval) for v in eqn.outvars]
        params = dict(eqn.params)
        if eqn.primitive.name in LINEAR_PRIMITIVES and params.get("precision") is None:
          # Full float32 products on GPUs too (their default is TF32, whose 10-bit mantissa
          # moves relevance by 1e-3): explanations are compared to 1e-5.
          params["precision"] = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
        self.eqns.append(Eqn(eqn.primitive, ins, outs, params, name, _source(eqn)))
      for v, o in zip(eqn.outvars, outs):
        if not isinstance(v, jcore.DropVar):
          env[v] = o
    return [read(v) for v in jaxpr.outvars]


def trace(apply_fn: Callable, params: Any, x: jax.Array) -> Program:
  """Traces `apply_fn(params, x)` (one array out) into an analysed `Program`.

  Raises:
    UnsupportedOperationError: `apply_fn` returns more than one array, does not depend on `x`,
      or uses an operation relevance cannot pass (named, with its source line).
  """
  closed = jax.make_jaxpr(apply_fn)(params, x)
  flat = _Flattener()
  invars = [flat.new_var(v.aval) for v in closed.jaxpr.invars]
  outs = flat.inline(closed.jaxpr, closed.consts, invars, "")
  if len(outs) != 1:
    raise UnsupportedOperationError(
        f"apply_fn must return one array of outputs (B, C); it returns {len(outs)} arrays. "
        "Wrap it, e.g. `lambda p, x: model.apply(p, x)[0]`.")
  program = Program(flat.eqns, flat.consts, invars[:-1], invars[-1], outs[0], flat.avals)
  if program.output_var not in program.dependent:
    raise UnsupportedOperationError("apply_fn's output does not depend on its input x.")
  return program
