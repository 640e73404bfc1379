"""The layers of a Flax model by name: what a method that reads a hidden layer can ask for.

A model's layers are its intermediates (xjax's models return `(logits, intermediates)`) and its
submodules, whose outputs Flax captures by name (`capture_intermediates`). `layer_names` lists
both by tracing (nothing runs); `check_layer` turns a name that is not there into a one-line
error that lists the names that are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from xjax.errors import ConfigError

Array = jax.Array


def captured_outputs(tree: Any, name: str) -> list[Array]:
  """The outputs captured for every submodule called `name` (at any depth) of a Flax
  `capture_intermediates` collection."""
  found = []
  for key, value in tree.items():
    if key == name and isinstance(value, Mapping) and "__call__" in value:
      found.append(value["__call__"][0])
    elif isinstance(value, Mapping):
      found += captured_outputs(value, name)
  return found


def layer_shapes(model: Any, x: Array) -> dict[str, tuple[int, ...]]:
  """The output shape of every layer of `model` on inputs shaped like `x`, in order: its
  intermediates, then its submodules by name (the first call of each), by tracing
  (`jax.eval_shape`, nothing runs)."""
  def outputs(x):
    (_, intermediates), state = model.init_with_output(
        jax.random.key(0), x, capture_intermediates=True)
    return intermediates, state.get("intermediates", {})
  intermediates, captured = jax.eval_shape(outputs, jnp.zeros(jnp.shape(x), jnp.float32))
  shapes = {name: tuple(value.shape) for name, value in intermediates.items()}

  def visit(tree: Any) -> None:
    for key, value in tree.items():
      if isinstance(value, Mapping):
        if "__call__" in value and key not in shapes:
          out = value["__call__"][0]
          shapes[key] = tuple(out.shape) if hasattr(out, "shape") else ()
        visit(value)
  visit(captured)
  return shapes


def layer_names(model: Any, x: Array) -> list[str]:
  """The names of `layer_shapes`: what a hidden-layer reader can ask for."""
  return list(layer_shapes(model, x))


def check_layer(model: Any, x: Array, name: str) -> None:
  """ConfigError (one line, with the names there are) unless `features_fn(model, name)` reads
  a layer of `model`."""
  names = layer_names(model, x)
  if name not in names:
    raise ConfigError(f"The network has no layer {name!r}; its layers: {', '.join(names)}.")
