"""The pure train and eval steps, and their jit compilation over a device mesh."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from xjax.data import sharding
from xjax.train.frozen import keep_frozen
from xjax.train.losses import LossTerm, ModelOutputs
from xjax.train.state import TrainState

Metrics = dict[str, jax.Array]


def is_generative(model: nn.Module) -> bool:
  """Whether `model` is a generative model (`GENERATIVE = True`, e.g. `xjax.nn.GaussianRBM`).

  It predicts no label: its accuracy is undefined, and its per-example evaluation loss is its
  `intermediates["example_loss"]` instead of the cross-entropy of its logits.
  """
  return bool(getattr(type(model), "GENERATIVE", False))


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    terms: Mapping[str, tuple[float, LossTerm]], frozen: dict | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, Metrics]]:
  """One SGD step on the weighted sum of loss terms: `(state, batch) -> (state, metrics)`.

  The model runs in training mode (dropout on, BatchNorm on batch statistics, its running
  averages updated); dropout draws from `fold_in(state.rng, state.step)`. Metrics: `loss` (the
  weighted sum), `loss/<term>` (each unweighted term), `accuracy` (NaN for a generative model,
  which predicts no label) and `grad_norm`.

  `frozen` ({"params": mask, "model_state": mask}, `xjax.train.frozen.frozen_mask`) names leaves
  whose values the step keeps exactly (a frozen pre-trained network); `tx` should give them no
  update (`xjax.train.frozen.freeze`).
  """

  generative = is_generative(model)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    mutable = list(state.model_state)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      if mutable:
        (logits, inter), model_state = model.apply(variables, batch["image"], train=True,
                                                   rngs={"dropout": rng}, mutable=mutable)
      else:
        (logits, inter), model_state = model.apply(variables, batch["image"], train=True,
                                                   rngs={"dropout": rng}), {}
      outputs = ModelOutputs(logits, inter)
      values = {name: term(params, batch, outputs) for name, (_, term) in terms.items()}
      total = sum(weight * values[name] for name, (weight, _) in terms.items())
      return total, (values, model_state, logits)

    (loss, (values, model_state, logits)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if frozen is not None:
      params = keep_frozen(frozen["params"], state.params, params)
      model_state = keep_frozen(frozen["model_state"], state.model_state, model_state)
    accuracy = (jnp.float32(jnp.nan) if generative
                else jnp.mean(jnp.argmax(logits, -1) == batch["label"]))
    metrics = {"loss": loss, **{f"loss/{k}": v for k, v in values.items()},
               "accuracy": accuracy,
               "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[dict, dict], Metrics]:
  """Sums over the valid rows of a batch: `loss_sum`, `correct` and `count`.

  The loss is the cross-entropy of the logits; for a generative model (`is_generative`) it is the
  model's `example_loss`, and there is no `correct` (it predicts no label).
  """
  generative = is_generative(model)

  def eval_step(variables: dict, batch: dict) -> Metrics:
    logits, intermediates = model.apply(variables, batch["image"], train=False)
    weight = batch["valid"].astype(jnp.float32)
    if generative:
      return {"loss_sum": jnp.sum(intermediates["example_loss"] * weight),
              "count": jnp.sum(weight)}
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weight), "correct": jnp.sum(correct * weight),
            "count": jnp.sum(weight)}

  return eval_step


def compile_train_step(train_step, mesh: Mesh):
  """jit over the mesh: state replicated and donated, batch split along its first axis."""
  repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, data), out_shardings=(repl, repl),
                 donate_argnums=(0,))


def compile_eval_step(eval_step, mesh: Mesh):
  repl, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(repl, data), out_shardings=repl)
