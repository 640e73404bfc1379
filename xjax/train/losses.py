"""Loss terms: named pure functions that one generic train step sums (docs/design.md).

A term is `term(params, batch, outputs) -> scalar`, where `outputs` holds the model's logits and
intermediate activations of the same forward pass. A training-time method (XNet's drop loss, the
block-wise L1 of separable DTD, ...) contributes terms; the train step weights and adds them,
differentiates the sum, and logs every term by name. `LOSS_TERMS` maps a config name to a factory
`make(**options) -> term`, so `config.losses = {"cross_entropy": {"weight": 1.0}}` builds the loss.

A term registered with `penalty=True` is a function of the parameters alone (`l2`, separable's
`block_l1`): it ignores `batch` and `outputs`, so it can be evaluated at any parameters, e.g.
added to the validation loss (`is_penalty`). The training-time methods register their terms when
imported (`xjax.methods.separable`, `xjax.methods.xnet`; `import xjax.plugins` imports them all,
as every `python -m runs...` command does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from xjax.errors import ConfigError
from xjax.registry import Registry, non_negative


@dataclasses.dataclass(frozen=True)
class ModelOutputs:
  """What one forward pass produced: logits and the model's named intermediate activations."""

  logits: jax.Array
  intermediates: Mapping[str, jax.Array]


LossTerm = Callable[[Any, Mapping[str, jax.Array], ModelOutputs], jax.Array]

# The training-time methods register their terms when imported (`import xjax.plugins`): training
# never imports the methods built on it.
LOSS_TERMS = Registry("loss term", hint="the training-time methods register theirs when "
                      "imported: `import xjax.plugins` imports them all")


@LOSS_TERMS.register("cross_entropy")
def cross_entropy() -> LossTerm:
  """Mean softmax cross-entropy of the logits against the integer `label` of the batch."""

  def term(params, batch, outputs: ModelOutputs) -> jax.Array:
    del params
    return optax.softmax_cross_entropy_with_integer_labels(outputs.logits, batch["label"]).mean()

  return term


@LOSS_TERMS.register("l2", penalty=True)
def l2_penalty() -> LossTerm:
  """Half the squared L2 norm of all parameters (weight decay written as a loss term)."""

  def term(params, batch, outputs) -> jax.Array:
    del batch, outputs
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))

  return term


def is_penalty(name: str) -> bool:
  """Whether the loss term `name` is a penalty: a function of the parameters alone.

  Raises:
    ConfigError: `name` is not a loss term (the message lists the known ones).
  """
  return bool(LOSS_TERMS.metadata(name).get("penalty", False))


def build_loss_terms(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, LossTerm]]:
  """`{"name": {"weight": w, **options}}` -> `{"name": (w, term)}`.

  Args:
    spec: loss term name -> its options, with its `weight` (default 1.0), as in `config.losses`.

  Returns:
    name -> (weight, term), in the order of `spec`, without the terms of weight 0: a config may
    declare a term switched off (`block_l1` in the Table-1 configs), so that the command line can
    switch it on with `--config.losses.block_l1.weight=0.1`.

  Raises:
    ConfigError: no terms, an unknown name, a weight that is not a finite number >= 0, or an
      option or value its factory does not take (the messages list the valid ones).
  """
  terms = {}
  for name, options in spec.items():
    options = dict(options)
    weight = options.pop("weight", 1.0)
    if not non_negative(weight):
      raise ConfigError(f"Bad weight {weight!r} of loss term {name!r}: expected "
                        f"{non_negative.requirement}.")
    if float(weight) > 0:  # a term of weight 0 is declared, not built (nor looked up)
      terms[name] = (float(weight), LOSS_TERMS.get(name, **options))
  if not terms:
    raise ConfigError("The config has no loss terms of weight > 0 (config.losses).")
  return terms
