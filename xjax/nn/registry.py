"""Models by name, and the few helpers every caller of a model needs.

`MODELS` is the registry of model classes; each model module registers its classes with
`@MODELS.register(name)` at their definitions. This module imports no model (the registry
imports `MODULES` at its first lookup), so a model may build others by name (XNet's backbone)
without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.registry import Registry

# name -> Flax module class; every class declares `INTERMEDIATES`, the names of the
# intermediate activations its `__call__` returns beside the logits.
# The modules that register models, in the order of `MODELS.names()` (plug-ins, e.g. the
# explainer of `xjax.methods.explainer`, come after them).
MODULES = ("xjax.nn.cnn", "xjax.nn.resnet", "xjax.nn.vgg", "xjax.nn.xnet", "xjax.nn.rbm",
           "xjax.nn.aae", "xjax.nn.vit", "xjax.nn.bert", "xjax.nn.llama")
MODELS = Registry("model", modules=MODULES)

_FLAX_FIELDS = ("parent", "name")


def model_fields(cls: type) -> tuple[str, ...]:
  """The settable fields of a model class (its dataclass fields, less flax's own)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _FLAX_FIELDS)


def _freeze(value: Any) -> Any:
  """Lists and dicts (as configs give them) to tuples, so module fields stay hashable."""
  if isinstance(value, Mapping):
    return tuple((k, _freeze(v)) for k, v in sorted(value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def get_model(name: str, module_name: str | None = None, **kwargs: Any) -> nn.Module:
  """The model registered as `name`, built with `kwargs` as its fields.

  Args:
    name: a name of `MODELS`, e.g. "resnet18".
    module_name: the module's name when it is built inside another one (Flax's `name`), as
      XNet's "backbone"; None at the top level.
    **kwargs: the model's dataclass fields; lists and dicts become (nested) tuples.

  Returns:
    The unbound Flax module.

  Raises:
    ConfigError: for an unknown name, an unknown field, or a value the model rejects.
  """
  cls = MODELS[name]
  fields = model_fields(cls)
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ConfigError(f"Unknown field(s) {', '.join(map(repr, unknown))} for model {name!r} "
                      f"({cls.__name__}); valid fields: {', '.join(fields)}.")
  try:
    return cls(**{k: _freeze(v) for k, v in kwargs.items()}, name=module_name)
  except TypeError as e:
    raise ConfigError(f"Cannot build model {name!r} from {kwargs}: {e}") from e


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
  """Fresh variables of `model` for inputs of shape `image_shape` (no batch axis), e.g. (32, 32, 3).

  Returns `{"params": ...}`, plus `"batch_stats"` for models with batch norm. Initialised in
  eval mode (no dropout rng needed) on a batch of one, under `jax.jit`.
  """
  x = jnp.zeros((1, *image_shape), jnp.float32)
  variables = jax.jit(lambda r, x: model.init(r, x, train=False))(rng, x)
  return dict(variables)


def logits_fn(model: nn.Module) -> Callable[[dict, jax.Array], jax.Array]:
  """The pure inference function `(variables, x) -> logits` (eval mode: no dropout, running BN)."""

  def apply(variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x, train=False)[0]

  return apply


def count_params(params: Any) -> int:
  """The number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s)."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))
