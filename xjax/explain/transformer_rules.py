"""LRP rules for the units of a transformer: products, softmax, normalisations, activations.

The units are found in the traced program (`xjax.explain.lrp.units`); a composite chooses each
unit's rule as it chooses a layer's (`composites.by_kind(product=..., softmax=..., ...)`). Like
the layer rules, each is a modified gradient: relevance is `x * g` at every value, so a rule says
how the gradient `g` passes the unit. A rule is a small frozen dataclass with the unit kinds it
applies to (`KINDS`) and `apply(unit, args, source) -> output`, which computes the unit's output
from its operands `args` with the modified gradient attached.

The formulas are AttnLRP's (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
Propagation for Transformers", ICML 2024, Sec. 3) and CP-LRP's (Ali et al., "XAI for
Transformers: Better Explanations through Conservative Propagation", ICML 2022), in the
gradient-times-input form of AttnLRP's reference implementation (LXT's "efficient" mode):

* `Uniform`: a product of N input-dependent values, relevance split equally (AttnLRP Eq. 7 and
  Prop. 3.3; for `Q K^T` and `A V` the epsilon sits on `2 O`);
* `Gradient`: the ordinary gradient; for softmax this *is* AttnLRP's rule (Prop. 3.1,
  `R_in = x (R - s sum(R))`, whose gradient form is the softmax's own Jacobian);
* `Identity`: a norm's scale held constant (Prop. 3.4: relevance passes the normalisation
  unchanged, `R_in = R_out`), or an activation `y = f(s)` passing relevance unchanged (Eq. 9,
  the identity rule: GELU, SiLU);
* `Detach`: no relevance through the unit (CP-LRP's attention weights: a softmax detached);
* `ThroughValues`: CP-LRP's product rule, all relevance through the operands that are not
  attention weights or gates (Ali et al. 2022, Sec. 4: `A.detach() V`; a gated MLP's gate
  detached).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from xjax.explain.lrp.engine import bind, safe_divide, stabilize
from xjax.explain.lrp.units import Unit

Array = jax.Array


def _with_gradient_scale(unit: Unit, args: Sequence[Array], epsilon: float) -> Array:
  """The product with the incoming gradient scaled as the uniform rule says."""
  eqn = unit.eqn
  n = len(args)

  @jax.custom_vjp
  def product(*operands):
    return bind(eqn, operands)[0]

  def fwd(*operands):
    y = product(*operands)
    return y, (operands, y)

  def bwd(residuals, g):
    operands, y = residuals
    # R_k = x_k dy/dx_k R_y / (N y + eps) with R_y = y g: the gradient seeded with g / N, or
    # with y g / (N y + eps) when the output carries an epsilon (AttnLRP Eq. 7, Prop. 3.3).
    seed = g / n if epsilon == 0 else y * g / stabilize(n * y, epsilon)
    return jax.vjp(lambda *o: bind(eqn, o)[0], *operands)[1](seed)

  product.defvjp(fwd, bwd)
  return product(*args)


@dataclasses.dataclass(frozen=True)
class Uniform:
  """The uniform rule (AttnLRP Eq. 7, Prop. 3.3): each of the N input-dependent factors of a
  product gets 1/N of its relevance; `epsilon` stabilises the output's denominator."""
  epsilon: float = 0.0

  KINDS = ("product",)

  def apply(self, unit: Unit, args: Sequence[Array], source: Array | None) -> Array:
    del source
    return _with_gradient_scale(unit, args, self.epsilon)


@dataclasses.dataclass(frozen=True)
class Gradient:
  """The ordinary gradient. For softmax: AttnLRP Prop. 3.1 (not conservative: the bias of the
  Taylor expansion absorbs relevance)."""

  KINDS = ("product", "softmax")

  def apply(self, unit: Unit, args: Sequence[Array], source: Array | None) -> Array:
    del source
    return bind(unit.eqn, args)[0]


@dataclasses.dataclass(frozen=True)
class Detach:
  """No relevance through the unit: CP-LRP holds the attention weights constant."""

  KINDS = ("product", "softmax")

  def apply(self, unit: Unit, args: Sequence[Array], source: Array | None) -> Array:
    del source
    return jax.lax.stop_gradient(bind(unit.eqn, args)[0])


@dataclasses.dataclass(frozen=True)
class Identity:
  """Relevance passes the unit unchanged, `R_in = R_out`.

  * norm (AttnLRP Prop. 3.4): the scale, `1 / std` or `rsqrt(mean(x^2) + eps)` times the norm's
    weight, is held constant, so relevance flows through `x - mean` (or `x`) only;
  * activation `y = f(s)` (AttnLRP Eq. 9, the identity rule): the gradient at `s` is `f(s) / s`
    times the incoming one (0 where s = 0, where GELU and SiLU give y = 0).
  """

  KINDS = ("norm", "activation")

  def apply(self, unit: Unit, args: Sequence[Array], source: Array | None) -> Array:
    if unit.info.kind == "norm":
      args = list(args)
      args[unit.scale_position] = jax.lax.stop_gradient(args[unit.scale_position])
      return bind(unit.eqn, args)[0]
    return _identity(unit, source, args)


def _identity(unit: Unit, source: Array, args: Sequence[Array]) -> Array:
  eqn = unit.eqn

  @jax.custom_vjp
  def activation(s, *operands):
    del s
    return bind(eqn, operands)[0]

  def fwd(s, *operands):
    y = activation(s, *operands)
    return y, (s, y, operands)

  def bwd(residuals, g):
    s, y, operands = residuals
    return (safe_divide(y * g, s).astype(s.dtype), *(jnp.zeros_like(o) for o in operands))

  activation.defvjp(fwd, bwd)
  return activation(source, *args)


@dataclasses.dataclass(frozen=True)
class ThroughValues:
  """CP-LRP's product rule: the operands that are attention weights (a softmax's output) or
  gates (an activation's output) are held constant, and the others, the values, take all of
  the relevance with their ordinary gradient. A product with no such operand (`Q K^T`, whose
  softmax CP-LRP detaches anyway) falls back to the uniform rule."""

  KINDS = ("product",)

  def apply(self, unit: Unit, args: Sequence[Array], source: Array | None) -> Array:
    del source
    held = [origin in ("softmax", "activation") for origin in unit.info.operands]
    if not any(held) or all(held):
      return _with_gradient_scale(unit, args, 0.0)
    args = [jax.lax.stop_gradient(a) if h else a for a, h in zip(args, held)]
    return bind(unit.eqn, args)[0]


UNIT_RULES = (Uniform, Gradient, Detach, Identity, ThroughValues)


def rules_for(kind: str) -> list[str]:
  """The names of the rules that apply to a unit of `kind`."""
  return [rule.__name__ for rule in UNIT_RULES if kind in rule.KINDS]
