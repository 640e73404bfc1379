"""The train state: everything a run needs to continue, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct


class TrainState(struct.PyTreeNode):
  """Parameters, mutable model state (BatchNorm statistics), optimizer state, step and RNG.

  `rng` is the run's root key; step `t` uses `jax.random.fold_in(rng, t)`, so randomness depends
  only on the step and a resumed run draws the same dropout masks as an uninterrupted one.
  """

  step: jax.Array
  params: Any
  model_state: Any  # e.g. {"batch_stats": ...}; {} for models without mutable collections
  opt_state: optax.OptState
  rng: jax.Array

  @property
  def variables(self) -> dict:
    """The Flax variables for `model.apply`: params plus the model state."""
    return {"params": self.params, **self.model_state}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initialises the model on one example of shape `image_shape` (H, W, C) and the optimizer."""
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params), rng=state_rng)
