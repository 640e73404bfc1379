"""The generic train step: weighted loss terms, gradients, no recompilation, sharded == local."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.data import sharding
from xjax.errors import ConfigError
from xjax.train import losses
from xjax.train.state import create_train_state
from xjax.train.step import compile_eval_step, compile_train_step, make_eval_step, make_train_step


class TinyNet(nn.Module):
  """A linear classifier with the model contract: (logits, intermediates)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    features = x.reshape(x.shape[0], -1)
    return nn.Dense(3, name="head")(features), {"features": features}


@pytest.fixture(scope="module")
def setup():
  model, tx = TinyNet(), optax.sgd(0.5)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(8, 2, 2, 1)).astype(np.float32),
           "label": rng.integers(0, 3, 8).astype(np.int32)}
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (2, 2, 1))
  return model, tx, batch, state


def test_weighted_terms_and_gradient_match_a_hand_written_loss(setup):
  model, tx, batch, state = setup
  terms = losses.build_loss_terms({"cross_entropy": {"weight": 1.0}, "l2": {"weight": 0.1}})
  new_state, metrics = jax.jit(make_train_step(model, tx, terms))(state, batch)

  def reference(params):
    logits = batch["image"].reshape(8, -1) @ params["head"]["kernel"] + params["head"]["bias"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    l2 = 0.5 * sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
    return ce + 0.1 * l2, (ce, l2)

  (total, (ce, l2)), grads = jax.value_and_grad(reference, has_aux=True)(state.params)
  np.testing.assert_allclose(metrics["loss"], total, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss/cross_entropy"], ce, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss/l2"], l2, rtol=1e-6)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.params, expected)
  assert int(new_state.step) == 1


def test_second_step_does_not_recompile(setup):
  model, tx, batch, state = setup
  mesh = sharding.make_mesh()
  step = compile_train_step(make_train_step(model, tx, losses.build_loss_terms(
      {"cross_entropy": {}})), mesh)
  state = jax.device_put(jax.tree.map(jnp.copy, state), sharding.replicated(mesh))  # donated
  for _ in range(3):
    state, _ = step(state, sharding.shard_batch(batch, mesh))
  assert step._cache_size() == 1


def test_eval_step_ignores_padding_rows(setup):
  model, _, batch, state = setup
  mesh = sharding.make_mesh()
  eval_step = compile_eval_step(make_eval_step(model), mesh)
  valid = np.array([True] * 5 + [False] * 3)
  sums = eval_step(state.variables, sharding.shard_batch({**batch, "valid": valid}, mesh))
  logits = model.apply(state.variables, batch["image"])[0][:5]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:5])
  np.testing.assert_allclose(sums["loss_sum"], ce.sum(), rtol=1e-5)
  assert float(sums["count"]) == 5.0
  assert float(sums["correct"]) == float((logits.argmax(-1) == batch["label"][:5]).sum())


def test_unknown_loss_term_lists_the_known_ones():
  with pytest.raises(ConfigError, match="Unknown loss term 'focal'.*cross_entropy"):
    losses.build_loss_terms({"focal": {}})
  with pytest.raises(ConfigError, match="no loss terms"):
    losses.build_loss_terms({})
