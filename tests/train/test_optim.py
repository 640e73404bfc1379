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


# --- the defaults and checks, in one place (`optim.DEFAULTS`, `optim.CHECKS`) ---------------------


def test_every_default_is_the_one_of_defaults():
  import inspect

  from xjax.train import optim
  for factory in (*(optim.OPTIMIZERS[name] for name in optim.OPTIMIZERS),
                  optim.learning_rate_schedule):
    for name, parameter in inspect.signature(factory).parameters.items():
      if parameter.default is not inspect.Parameter.empty:
        assert parameter.default == optim.DEFAULTS[name], (factory.__name__, name)
  # The base config of runs/ writes the same values (its keys are what the command line sets).
  from runs.configs.common import base_config
  section = base_config().optimizer.to_dict()
  assert {k: v for k, v in section.items() if k in optim.DEFAULTS} == {
      k: v for k, v in optim.DEFAULTS.items() if k in section}


def test_make_optimizer_leaves_the_defaults_to_the_factory():
  # SGD without options is momentum 0.9 (DEFAULTS): the same updates as with it written out.
  p = jnp.array([1.0, -2.0])
  given = make_optimizer("sgd", learning_rate=0.1, steps_per_epoch=1, momentum=0.9)
  default = make_optimizer("sgd", learning_rate=0.1, steps_per_epoch=1)
  states = [tx.init(p) for tx in (given, default)]
  for _ in range(3):
    (u1, states[0]), (u2, states[1]) = (tx.update(p, s, p) for tx, s in zip((given, default),
                                                                             states))
    np.testing.assert_array_equal(u1, u2)
  # An option of another optimizer is ignored (one config section serves them all), an option
  # of none is an error, and the values are checked by the registry.
  make_optimizer("adam", learning_rate=0.1, steps_per_epoch=1, momentum=0.5, nesterov=True)
  with pytest.raises(ConfigError, match=r"Unknown optimizer option\(s\) \['momentun'\]"):
    make_optimizer("sgd", learning_rate=0.1, steps_per_epoch=1, momentun=0.9)
  with pytest.raises(ConfigError, match="Bad value 1.0 for option 'momentum' of optimizer 'sgd'"):
    make_optimizer("sgd", learning_rate=0.1, steps_per_epoch=1, momentum=1.0)
  with pytest.raises(ConfigError, match="Bad value 'yes' for option 'nesterov'"):
    make_optimizer("sgd", learning_rate=0.1, steps_per_epoch=1, nesterov="yes")


def test_the_config_checks_are_the_registrys():
  from xjax.train import config_checks, optim
  assert {k: v for k, v in config_checks.OPTIMIZER.items() if k != "name"} == optim.CHECKS
  assert config_checks.make_optimizer_options() == {
      "name", "learning_rate", "momentum", "nesterov", "weight_decay", "schedule",
      "decay_every_epochs", "decay_factor"}
  with pytest.raises(ConfigError, match=r"Bad value 1.0 for optimizer.momentum: expected a "
                     r"number in \[0, 1\)"):
    config_checks.check_optimizer({"name": "adam", "learning_rate": 1e-3, "momentum": 1.0})
