"""The operations of a transformer that LRP treats as units, found in the traced program.

AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024, Sec. 3) gives rules for the operations of a transformer that are not
layers with constant weights. They are recognised here from the program's data flow, never from
module classes, so hand-written, Flax, NNX and Equinox transformers are all covered:

* **product**: `mul` or `dot_general` of two input-dependent values (`Q K^T`, `A V`, a gated
  MLP's `silu(gate) * up`), when none of the cases below applies;
* **softmax**: `exp(s) / sum(exp(s))`, the `div` whose numerator is an `exp` and whose
  denominator is a sum of that same `exp` (what `jax.nn.softmax` lowers to); the `exp` belongs
  to the unit;
* **norm**: a product (or quotient) whose other factor is computed from a reduction over the
  same value, as `(x - mean) * rsqrt(var + eps)` in LayerNorm and `x * rsqrt(mean(x^2) + eps)`
  in RMSNorm; the factor is the *scale*, and what computes it belongs to the unit;
* **activation**: a product of two elementwise functions of one value `s`, as `s * logistic(s)`
  (SiLU) and GELU's `s * cdf(s)` in its erf and tanh forms: the unit is `y = f(s)`.

Each unit gets a rule chosen by the composite (`xjax.explain.transformer_rules`). The
subgraph that computes a norm's scale or an activation's second factor receives no relevance
under any rule, so its operations (`rsqrt`, `integer_pow`, `erfc`, ...) are never refused.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
  from xjax.explain.lrp.program import Eqn, Program

UNIT_KINDS = ("product", "softmax", "norm", "activation")
# Operations through which the elementwise walk goes: a value computed by them from `s` alone is
# an elementwise function of `s` (or of a reduction, which ends the walk).
_ELEMENTWISE = {
    "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "erfc", "erf_inv",
    "integer_pow", "square", "sqrt", "rsqrt", "cbrt", "abs", "sign", "sin", "cos",
    "convert_element_type", "copy", "copy_p", "add", "add_any", "sub", "mul", "div", "max", "min",
    "pow", "select_n", "clamp", "reduce_precision", "stop_gradient"}
_SHAPE = {"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose"}
_REDUCTIONS = {"reduce_sum", "reduce_max"}
_CASTS = {"convert_element_type", "copy"}  # ops that change nothing a unit cares about
_MAX_WALK = 4096  # values visited by one walk; more means "not a unit"


@dataclasses.dataclass(frozen=True)
class UnitInfo:
  """What a composite sees of a unit when it chooses the unit's rule.

  Attributes:
    index: the unit's position among the rules (after the program's layers).
    kind: "product", "softmax", "norm" or "activation" (`UNIT_KINDS`).
    name: the name stack of the operation (e.g. "ViT/block1/attention/bqhd,bkhd->bhqk").
    is_input: always False (the rules of input layers are chosen by `first_layer`).
    is_output: the unit's output is the program's output.
    operands: for a product, where each operand comes from: "softmax" (attention weights),
      "activation" (a gate, e.g. `silu(gate)`), "layer", "input" or "other".
    output_shape: the unit's output shape (with the batch axis).
  """
  index: int
  kind: str
  name: str
  is_input: bool
  is_output: bool
  operands: tuple[str, ...]
  output_shape: tuple[int, ...]


@dataclasses.dataclass
class Unit:
  """A unit of the program: the equation its rule replaces, and what the rule needs."""
  info: UnitInfo
  eqn: Eqn
  # norm: the operand position of the scale (held constant by the identity rule).
  scale_position: int | None = None
  # activation: the variable s of y = f(s).
  source: int | None = None

  def describe(self) -> str:
    return f"the {self.info.kind} {self.eqn.describe()}"


def _traced_back(program: Program, var, names: set[str], stops: set[int] = frozenset()):
  """(value, its producer): `var` followed back through the one-operand ops of `names`, up to a
  value of `stops`."""
  eqn = program.producer.get(var) if isinstance(var, int) else None
  while (var not in stops and eqn is not None and eqn.primitive.name in names
         and len(eqn.invars) == 1):
    var = eqn.invars[0]
    eqn = program.producer.get(var) if isinstance(var, int) else None
  return var, eqn


def _producer_through(program: Program, var, names: set[str]):
  """The equation producing `var`, looking through the one-operand ops of `names`."""
  return _traced_back(program, var, names)[1]


def elementwise_walk(program: Program, var: int, stops: set[int]
                     ) -> tuple[frozenset[int], frozenset[int]] | None:
  """(sources, visited): the values `var` is an elementwise function of, walking back through
  elementwise and broadcasting operations: the input-dependent values where the walk ends (layer
  outputs, the input, `stops`, the results of reductions, contractions and other operations);
  and every value the walk passed. None when the walk is too long to decide."""
  sources, seen, todo = set(), set(), [var]
  while todo:
    v = todo.pop()
    if v in seen:
      continue
    seen.add(v)
    if len(seen) > _MAX_WALK:
      return None
    eqn = program.producer.get(v)
    if (v in stops or eqn is None or id(eqn) in program.merged
        or eqn.primitive.name not in _ELEMENTWISE | _SHAPE
        or (eqn.primitive.name in _SHAPE and v in program.reads_input)
        or _joins_two_values(program, eqn)):
      sources.add(v)
      continue
    todo.extend(u for u in eqn.invars if program.depends(u))
  return frozenset(sources), frozenset(seen)


def _joins_two_values(program: Program, eqn: Eqn) -> bool:
  """A product or quotient of two different input-dependent values (a unit of its own, e.g. the
  previous block's norm): the walk ends there, so its length does not grow with depth."""
  return (eqn.primitive.name in ("mul", "div") and len(eqn.invars) == 2
          and all(program.depends(v) for v in eqn.invars) and eqn.invars[0] != eqn.invars[1])


class UnitFinder:
  """Classifies the equations of `program` that multiply or divide input-dependent values."""

  def __init__(self, program: Program):
    self.program = program
    self.stops = {layer.output for layer in program.layers} | {program.input_var}

  def sources(self, var, also_stop: int | None = None) -> frozenset[int] | None:
    stops = self.stops if also_stop is None else self.stops | {also_stop}
    walk = elementwise_walk(self.program, var, stops)
    return None if walk is None else walk[0]

  def softmax_exp(self, eqn: Eqn) -> Eqn | None:
    """For `div(n, d)` of a softmax, the `exp` producing `n`; else None."""
    program = self.program
    numerator, denominator = eqn.invars
    exp = _producer_through(program, numerator, _CASTS)
    total = _producer_through(program, denominator, _SHAPE | _CASTS)
    if exp is None or exp.primitive.name != "exp" or total is None:
      return None
    if total.primitive.name != "reduce_sum":
      return None
    summed = _producer_through(program, total.invars[0], _CASTS)
    return exp if summed is exp else None

  def norm_scale(self, eqn: Eqn) -> int | None:
    """The operand position of a norm's scale in `mul(a, f)` / `div(a, f)`; else None."""
    program = self.program
    positions = (1,) if eqn.primitive.name == "div" else (0, 1)
    for position in positions:
      scale, value = eqn.invars[position], eqn.invars[1 - position]
      scale_sources = self.sources(scale)
      value_sources = self.sources(value)
      if not scale_sources or value_sources is None:
        continue
      reductions = [program.producer.get(v) for v in scale_sources]
      if not all(r is not None and r.primitive.name in _REDUCTIONS for r in reductions):
        continue
      related = value_sources | {value}
      if all(((self.sources(r.invars[0]) or frozenset()) | {r.invars[0]}) & related
             for r in reductions):
        return position
    return None

  def activation_source(self, eqn: Eqn) -> int | None:
    """For `mul(a, b)` of two elementwise functions of one value s, the latest such s (e.g.
    `s * logistic(s)`, `0.5 s * erfc(-s / sqrt(2))`); else None."""
    walks = [elementwise_walk(self.program, v, self.stops) for v in eqn.invars]
    if None in walks:
      return None
    for candidate in sorted(walks[0][1] & walks[1][1], reverse=True):  # the latest first
      if all(self.sources(v, also_stop=candidate) == {candidate} for v in eqn.invars):
        return candidate
    return None

  def origin(self, var, units: dict[int, Unit]) -> str:
    """Where a product's operand comes from (see `UnitInfo.operands`)."""
    program = self.program
    if var == program.input_var:
      return "input"
    var, eqn = _traced_back(program, var, _SHAPE | _CASTS, self.stops)
    if var in self.stops:
      return "input" if var == program.input_var else "layer"
    if eqn is None:
      return "other"
    unit = units.get(id(eqn))
    if unit is not None and unit.info.kind in ("softmax", "activation"):
      return unit.info.kind
    if eqn.primitive.name in ("tanh", "logistic", "erf"):
      return "activation"
    return "other"


def find_units(program: Program) -> tuple[list[Unit], set[int], set[int]]:
  """The units of `program`, the ids of the `exp` equations inside softmax units, and the
  variables relevance reaches (the others only compute a norm's scale or an activation's
  second factor, or are constants).

  Walks the program from its output back, so the equations that compute a scale are met after
  the norm that holds it constant, and are not classified themselves.
  """
  finder = UnitFinder(program)
  live = {program.output_var}
  found: dict[int, Unit] = {}
  exps: set[int] = set()
  for eqn in reversed(program.eqns):
    if not any(v in live for v in eqn.outvars):
      continue
    inputs = list(enumerate(eqn.invars))
    unit = _classify(finder, eqn) if id(eqn) not in program.merged else None
    if unit is not None:
      found[id(eqn)] = unit
      if unit.info.kind == "softmax":
        exps.add(id(finder.softmax_exp(eqn)))
      elif unit.info.kind == "norm":
        inputs = [(i, v) for i, v in inputs if i != unit.scale_position]
      elif unit.info.kind == "activation":
        inputs = [(None, unit.source)]
    live.update(v for _, v in inputs if program.depends(v))
  units = sorted(found.values(), key=lambda u: program.eqns.index(u.eqn))
  for index, unit in enumerate(units):
    operands = tuple(finder.origin(v, found) for v in unit.eqn.invars) \
        if unit.info.kind == "product" else ()
    unit.info = dataclasses.replace(unit.info, index=len(program.layers) + index,
                                    operands=operands)
  return units, exps, live


def _classify(finder: UnitFinder, eqn: Eqn) -> Unit | None:
  program = finder.program
  name = eqn.primitive.name
  dependent = [v for v in eqn.invars if program.depends(v)]
  if name not in ("mul", "div", "dot_general") or not any(
      program._is_float(v) for v in dependent):
    return None
  if name == "div":
    if not program.depends(eqn.invars[1]):
      return None
    if finder.softmax_exp(eqn) is not None:
      return _unit(program, eqn, "softmax")
    position = finder.norm_scale(eqn)
    return None if position is None else _unit(program, eqn, "norm", scale_position=position)
  if len(dependent) != 2:
    return None
  if name == "mul":
    position = finder.norm_scale(eqn)
    if position is not None:
      return _unit(program, eqn, "norm", scale_position=position)
    source = finder.activation_source(eqn)
    if source is not None:
      return _unit(program, eqn, "activation", source=source)
  return _unit(program, eqn, "product")


def _unit(program: Program, eqn: Eqn, kind: str, **fields) -> Unit:
  out = eqn.outvars[0]
  info = UnitInfo(index=-1, kind=kind, name=eqn.name, is_input=False,
                  is_output=out == program.output_var, operands=(),
                  output_shape=tuple(program.avals[out].shape))
  return Unit(info, eqn, **fields)
