"""Composites: which LRP rule each layer of a network gets.

A composite is a function `LayerInfo -> rule` (see `xjax.explain.lrp.program.LayerInfo`: the
layer's index, kind "conv" / "dense", module name, whether it reads the input, ...). `by_kind`
builds the usual ones; the presets are the combinations of the papers and of zennit (Anders et
al. 2021), whose composites of the same names they reproduce:

* `dtd(low, high)`: deep Taylor decomposition as in Rieger 2018 (seed 001, Sec. 2) and Montavon
  2017: z^B on the first layer, z+ (bias ignored) on every other layer;
* `epsilon_plus`: z+ on convolutions, epsilon on dense layers;
* `epsilon_plus_flat`: the same with the flat rule on the first layer;
* `epsilon_alpha2_beta1`: alpha2-beta1 on convolutions, epsilon on dense layers;
* `epsilon_gamma_box(low, high)`: z^B first, gamma on convolutions, epsilon on dense layers
  (Montavon et al. 2019, "Layer-wise relevance propagation: an overview").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from xjax.errors import ConfigError
from xjax.explain import rules
from xjax.explain.lrp.program import LayerInfo

Rule = Callable
Composite = Callable[[LayerInfo], Rule]


@dataclasses.dataclass(frozen=True)
class ByKind:
  """The rule of a layer by position and kind; see `by_kind`."""
  first: Rule | None = None
  conv: Rule | None = None
  dense: Rule | None = None
  default: Rule = rules.Epsilon()
  names: tuple[tuple[str, Rule], ...] = ()

  def __call__(self, info: LayerInfo) -> Rule:
    for name, rule in self.names:
      if info.name == name or info.name.endswith("/" + name):
        return rule
    if info.is_input and self.first is not None:
      return self.first
    rule = self.conv if info.kind == "conv" else self.dense
    return self.default if rule is None else rule


def by_kind(*, first: Rule | None = None, conv: Rule | None = None, dense: Rule | None = None,
            default: Rule = rules.Epsilon(), names: Mapping[str, Rule] | None = None) -> ByKind:
  """A composite choosing rules by layer kind.

  Args:
    first: the rule of the layers that read the input (e.g. `rules.zbox(low, high)`).
    conv: the rule of the other convolution layers.
    dense: the rule of the other dense layers.
    default: the rule where `conv` / `dense` is None.
    names: rules for named layers (a module name or the end of its path, e.g. "classifier"),
      which take precedence over everything else.
  """
  return ByKind(first, conv, dense, default, tuple((names or {}).items()))


def dtd(low: Any = 0.0, high: Any = 1.0) -> ByKind:
  """Deep Taylor decomposition: z^B (box [low, high]) first, z+ without bias elsewhere."""
  plus = rules.ZPlus(ignore_bias=True)
  return by_kind(first=rules.ZBox(low, high), conv=plus, dense=plus)


def epsilon_plus(epsilon: float = 1e-6) -> ByKind:
  """z+ on convolutions, epsilon on dense layers (zennit's EpsilonPlus)."""
  return by_kind(conv=rules.ZPlus(), dense=rules.Epsilon(epsilon))


def epsilon_plus_flat(epsilon: float = 1e-6) -> ByKind:
  """Flat first layer, z+ on convolutions, epsilon on dense layers (zennit's EpsilonPlusFlat)."""
  return by_kind(first=rules.Flat(), conv=rules.ZPlus(), dense=rules.Epsilon(epsilon))


def epsilon_alpha2_beta1(epsilon: float = 1e-6) -> ByKind:
  """alpha2-beta1 on convolutions, epsilon on dense layers (zennit's EpsilonAlpha2Beta1)."""
  return by_kind(conv=rules.AlphaBeta(2.0, 1.0), dense=rules.Epsilon(epsilon))


def epsilon_gamma_box(low: Any = 0.0, high: Any = 1.0, gamma: float = 0.25,
                      epsilon: float = 1e-6) -> ByKind:
  """z^B first, gamma on convolutions, epsilon on dense layers (zennit's EpsilonGammaBox)."""
  return by_kind(first=rules.ZBox(low, high), conv=rules.Gamma(gamma),
                 dense=rules.Epsilon(epsilon))


def uniform(rule: Rule) -> ByKind:
  """The same rule on every layer (e.g. `uniform(rules.epsilon(0.0))`: LRP-0)."""
  return by_kind(default=rule)


# Presets by name; those taking the input box get `low` and `high`.
COMPOSITES: dict[str, Callable[..., ByKind]] = {
    "dtd": dtd,
    "epsilon_plus": epsilon_plus,
    "epsilon_plus_flat": epsilon_plus_flat,
    "epsilon_alpha2_beta1": epsilon_alpha2_beta1,
    "epsilon_gamma_box": epsilon_gamma_box,
}
NEEDS_BOUNDS = ("dtd", "epsilon_gamma_box")


def get_composite(name: str, low: Any = 0.0, high: Any = 1.0) -> ByKind:
  """The preset `name`; `low` / `high` (the input box) go to the presets with a z^B layer."""
  if name not in COMPOSITES:
    raise ConfigError(f"Unknown composite {name!r}; known composites: "
                      f"{', '.join(sorted(COMPOSITES))}.")
  return COMPOSITES[name](low, high) if name in NEEDS_BOUNDS else COMPOSITES[name]()
