"""Optimizers against hand-computed updates (PyTorch SGD semantics) and schedule values."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xjax.errors import ConfigError
from xjax.train.optim import learning_rate_schedule, make_optimizer


def test_sgd_momentum_weight_decay_matches_pytorch_recurrence():
  # PyTorch SGD: g += wd * p; b = m * b + g; p -= lr * b. f(p) = 0.5 * p^2, so grad = p.
  lr, m, wd = 0.1, 0.9, 0.01
  tx = make_optimizer("sgd", learning_rate=lr, momentum=m, weight_decay=wd, steps_per_epoch=10)
  p = jnp.array([1.0, -2.0])
  state = tx.init(p)
  p_ref, b_ref = np.array([1.0, -2.0]), np.zeros(2)
  for _ in range(3):
    updates, state = tx.update(p, state, p)  # grad of 0.5 p^2 is p
    p = optax.apply_updates(p, updates)
    b_ref = m * b_ref + (p_ref + wd * p_ref)
    p_ref = p_ref - lr * b_ref
  np.testing.assert_allclose(p, p_ref, rtol=1e-6)


def test_step_schedule_divides_by_ten_every_two_epochs():
  schedule = learning_rate_schedule(0.1, "step", steps_per_epoch=5, decay_every_epochs=2)
  np.testing.assert_allclose([schedule(s) for s in (0, 9, 10, 19, 20)],
                             [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)


def test_unknown_optimizer_and_schedule_are_config_errors():
  with pytest.raises(ConfigError, match="Unknown optimizer 'rmsprop'"):
    make_optimizer("rmsprop", learning_rate=0.1, steps_per_epoch=1)
  with pytest.raises(ConfigError, match="Unknown learning-rate schedule 'linear'"):
    learning_rate_schedule(0.1, "linear", 1)
