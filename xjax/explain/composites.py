"""Composites: which LRP rule each layer of a network gets.

A composite is a function `LayerInfo -> rule or None` (see `xjax.explain.lrp.program.LayerInfo`:
the layer's index, kind "conv" / "dense", module name, whether it reads the input, ...); None
means "not mine". Small pieces choose the rule of some layers, and `first_of` chains them, the
first piece with a rule for a layer winning (as `optax.chain` chains transformations):

    first_of(by_name({"classifier": rules.Epsilon(0.0)}),  # a module name or its path's end
             first_layer(rules.ZBox(low, high)),           # the layers that read the input
             by_kind(conv=rules.ZPlus(), dense=rules.Epsilon()),
             uniform(rules.Epsilon()))                     # every layer: the fallback

LRP needs a rule for every layer: a layer no piece chooses is a `ConfigError` naming it, so a
composite that does not cover every kind of layer ends with `uniform(...)`. The presets are the
combinations of the papers and of zennit (Anders et al. 2021), whose composites of the same
names they reproduce, and are registered in `COMPOSITES` by name:

* `dtd(low, high)`: deep Taylor decomposition as in Rieger 2018 ("Separable explanations of
  neural network decisions", Sec. 2) and Montavon et al. 2017 ("Explaining nonlinear
  classification decisions with deep Taylor decomposition"): z^B on the first layer, z+ (bias
  ignored) on every other layer;
* `epsilon_plus`: z+ on convolutions, epsilon on dense layers;
* `epsilon_plus_flat`: the same with the flat rule on the first layer;
* `epsilon_alpha2_beta1`: alpha2-beta1 on convolutions, epsilon on dense layers;
* `epsilon_gamma_box(low, high)`: z^B first, gamma on convolutions, epsilon on dense layers
  (Montavon et al. 2019, "Layer-wise relevance propagation: an overview");
* `alpha1_beta0`, `alpha2_beta1`, `alpha3_beta2`: alpha-beta on every layer, the input layer
  too, biases ignored: the three rules of Montavon, Samek, Mueller (DSP 2018, Sec. 5.1) as its
  heatmapping.org tutorial computes them (the figures comparing them, Sec. 4.4 of the report).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from xjax.explain import rules, transformer_rules
from xjax.explain.lrp.program import LayerInfo
from xjax.registry import Registry, non_negative, optional

Rule = Callable
Composite = Callable[[LayerInfo], "Rule | None"]


@dataclasses.dataclass(frozen=True)
class ByName:
  """The rule of named layers; see `by_name`."""
  names: tuple[tuple[str, Rule], ...]

  def __call__(self, info: LayerInfo) -> Rule | None:
    for name, rule in self.names:
      if info.name == name or info.name.endswith("/" + name):
        return rule
    return None


@dataclasses.dataclass(frozen=True)
class FirstLayer:
  """The rule of the layers that read the input; see `first_layer`."""
  rule: Rule

  def __call__(self, info: LayerInfo) -> Rule | None:
    return self.rule if info.is_input else None


@dataclasses.dataclass(frozen=True)
class ByKind:
  """The rule of a layer or unit by its kind; see `by_kind`."""
  conv: Rule | None = None
  dense: Rule | None = None
  product: Rule | None = None
  softmax: Rule | None = None
  norm: Rule | None = None
  activation: Rule | None = None

  def __call__(self, info: LayerInfo) -> Rule | None:
    return getattr(self, info.kind, None)


@dataclasses.dataclass(frozen=True)
class FirstOf:
  """The first rule the composites choose; see `first_of`."""
  composites: tuple[Composite, ...]

  def __call__(self, info: LayerInfo) -> Rule | None:
    for composite in self.composites:
      rule = composite(info)
      if rule is not None:
        return rule
    return None


def by_name(mapping: Mapping[str, Rule]) -> ByName:
  """Rules for named layers: a module name or the end of its path (e.g. "classifier",
  "layer4_1/conv2") -> rule; other layers get None."""
  return ByName(tuple(mapping.items()))


def first_layer(rule: Rule) -> FirstLayer:
  """`rule` for the layers that read the input (e.g. `rules.ZBox(low, high)`), None elsewhere."""
  return FirstLayer(rule)


def by_kind(*, conv: Rule | None = None, dense: Rule | None = None,
            product: Rule | None = None, softmax: Rule | None = None, norm: Rule | None = None,
            activation: Rule | None = None) -> ByKind:
  """`conv` for convolution layers, `dense` for dense layers, and the rules of a transformer's
  units (`xjax.explain.lrp.units`: products, softmax, norms, activations; rules from
  `xjax.explain.transformer_rules`). None: not chosen."""
  return ByKind(conv, dense, product, softmax, norm, activation)


def uniform(rule: Rule) -> ByKind:
  """The same rule on every layer (e.g. `uniform(rules.Epsilon(0.0))`: LRP-0)."""
  return ByKind(rule, rule)


def first_of(*composites: Composite) -> FirstOf:
  """For each layer, the rule of the first of `composites` that chooses one (None if none does)."""
  return FirstOf(composites)


COMPOSITES = Registry("composite")
_EPSILON = {"epsilon": non_negative}


@COMPOSITES.register("dtd")
def dtd(low: Any = 0.0, high: Any = 1.0) -> FirstOf:
  """Deep Taylor decomposition: z^B (box [low, high]) first, z+ without bias elsewhere."""
  return first_of(first_layer(rules.ZBox(low, high)), uniform(rules.ZPlus(ignore_bias=True)))


@COMPOSITES.register("epsilon_plus", checks=_EPSILON)
def epsilon_plus(epsilon: float = 1e-6) -> ByKind:
  """z+ on convolutions, epsilon on dense layers (zennit's EpsilonPlus)."""
  return by_kind(conv=rules.ZPlus(), dense=rules.Epsilon(epsilon))


@COMPOSITES.register("epsilon_plus_flat", checks=_EPSILON)
def epsilon_plus_flat(epsilon: float = 1e-6) -> FirstOf:
  """Flat first layer, z+ on convolutions, epsilon on dense layers (zennit's EpsilonPlusFlat)."""
  return first_of(first_layer(rules.Flat()), epsilon_plus(epsilon))


@COMPOSITES.register("epsilon_alpha2_beta1", checks=_EPSILON)
def epsilon_alpha2_beta1(epsilon: float = 1e-6) -> ByKind:
  """alpha2-beta1 on convolutions, epsilon on dense layers (zennit's EpsilonAlpha2Beta1)."""
  return by_kind(conv=rules.AlphaBeta(2.0, 1.0), dense=rules.Epsilon(epsilon))


@COMPOSITES.register("epsilon_gamma_box", checks={**_EPSILON, "gamma": non_negative})
def epsilon_gamma_box(low: Any = 0.0, high: Any = 1.0, gamma: float = 0.25,
                      epsilon: float = 1e-6) -> FirstOf:
  """z^B first, gamma on convolutions, epsilon on dense layers (zennit's EpsilonGammaBox)."""
  return first_of(first_layer(rules.ZBox(low, high)),
                  by_kind(conv=rules.Gamma(gamma), dense=rules.Epsilon(epsilon)))


def _alpha_beta(alpha: float, beta: float):
  def make() -> ByKind:
    return uniform(rules.AlphaBeta(alpha, beta, ignore_bias=True))

  make.__doc__ = f"alpha{alpha:g}-beta{beta:g} on every layer, biases ignored (DSP 2018)."
  return make


for _alpha in (1, 2, 3):
  COMPOSITES.register(f"alpha{_alpha}_beta{_alpha - 1}", _alpha_beta(float(_alpha), _alpha - 1.0))
del _alpha

@COMPOSITES.register("attn_lrp", checks={**_EPSILON, "gamma": optional(non_negative)})
def attn_lrp(epsilon: float = 0.0, gamma: float | None = None) -> FirstOf:
  """AttnLRP (Achtibat et al., ICML 2024, Sec. 3): the uniform rule on products of
  input-dependent values (Eq. 7, Prop. 3.3), softmax's own gradient (Prop. 3.1), the identity
  on norms (Prop. 3.4) and activations (Eq. 9), epsilon on dense and convolution layers
  (epsilon 0 with the bias in the denominator, as its reference implementation's efficient
  mode: the plain gradient), or gamma on them (`gamma`, the paper's choice for ViTs)."""
  layer = rules.Epsilon(epsilon) if gamma is None else rules.Gamma(gamma)
  return first_of(by_kind(product=transformer_rules.Uniform(epsilon),
                          softmax=transformer_rules.Gradient(),
                          norm=transformer_rules.Identity(),
                          activation=transformer_rules.Identity()),
                  uniform(layer))


@COMPOSITES.register("cp_lrp", checks=_EPSILON)
def cp_lrp(epsilon: float = 0.0) -> FirstOf:
  """CP-LRP (Ali et al., "XAI for Transformers: Better Explanations through Conservative
  Propagation", ICML 2022, Sec. 4): attention weights and gates held constant (relevance through
  the values only), norms' scales held constant, activations pass relevance unchanged, epsilon
  on dense and convolution layers."""
  return first_of(by_kind(product=transformer_rules.ThroughValues(),
                          softmax=transformer_rules.Detach(),
                          norm=transformer_rules.Identity(),
                          activation=transformer_rules.Identity()),
                  uniform(rules.Epsilon(epsilon)))


# The presets that take the input box [low, high] (a z^B layer).
NEEDS_BOUNDS = tuple(name for name in COMPOSITES if "low" in COMPOSITES.options(name))


def get_composite(name: str, low: Any = 0.0, high: Any = 1.0) -> Composite:
  """The preset `name` of `COMPOSITES`.

  Args:
    name: e.g. "dtd", "epsilon_plus".
    low, high: the input box (scalars or per-channel), for the presets with a z^B layer
      (`NEEDS_BOUNDS`); the others ignore it.

  Returns:
    The composite.

  Raises:
    ConfigError: an unknown name (the message lists the known ones).
  """
  if name in NEEDS_BOUNDS:
    return COMPOSITES.get(name, low=low, high=high)
  return COMPOSITES.get(name)
