"""Loss terms: named pure functions that one generic train step sums (DESIGN.md principle 3).

A term is `term(params, batch, outputs) -> scalar`, where `outputs` holds the model's logits and
intermediate activations of the same forward pass. A training-time method (XNet's drop loss, the
block-wise L1 of separable DTD, ...) contributes terms; the train step weights and adds them,
differentiates the sum, and logs every term by name. `LOSS_TERMS` maps a config name to a factory
`make(**options) -> term`, so `config.losses = {"cross_entropy": {"weight": 1.0}}` builds the loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from xjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelOutputs:
  """What one forward pass produced: logits and the model's named intermediate activations."""

  logits: jax.Array
  intermediates: Mapping[str, jax.Array]


LossTerm = Callable[[Any, Mapping[str, jax.Array], ModelOutputs], jax.Array]


def cross_entropy() -> LossTerm:
  """Mean softmax cross-entropy of the logits against the integer `label` of the batch."""

  def term(params, batch, outputs: ModelOutputs) -> jax.Array:
    del params
    return optax.softmax_cross_entropy_with_integer_labels(outputs.logits, batch["label"]).mean()

  return term


def l2_penalty() -> LossTerm:
  """Half the squared L2 norm of all parameters (weight decay written as a loss term)."""

  def term(params, batch, outputs) -> jax.Array:
    del batch, outputs
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))

  return term


LOSS_TERMS: dict[str, Callable[..., LossTerm]] = {
    "cross_entropy": cross_entropy,
    "l2": l2_penalty,
}


def register_loss_term(name: str, factory: Callable[..., LossTerm]) -> None:
  """Makes a term available to configs by name (used by the training-time methods)."""
  LOSS_TERMS[name] = factory


def build_loss_terms(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, LossTerm]]:
  """`{"name": {"weight": w, **options}}` -> `{"name": (w, term)}`; unknown names raise."""
  terms = {}
  for name, options in spec.items():
    if name not in LOSS_TERMS:
      raise ConfigError(f"Unknown loss term {name!r}; known terms: {', '.join(sorted(LOSS_TERMS))}.")
    options = dict(options)
    weight = float(options.pop("weight", 1.0))
    try:
      terms[name] = (weight, LOSS_TERMS[name](**options))
    except TypeError as e:
      raise ConfigError(f"Bad options {sorted(options)} for loss term {name!r}: {e}") from e
  if not terms:
    raise ConfigError("The config has no loss terms (config.losses is empty).")
  return terms
