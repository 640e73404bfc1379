"""Optimizers by name, with learning-rate schedules counted in epochs.

`sgd` follows PyTorch's SGD exactly (coupled L2 weight decay added to the gradient, then the
momentum trace `b = m b + g`, then `-lr b`), as XNet trains with it (David & Liu 2019, sec. 2.2:
SGD, lr 0.1, momentum 0.9, lr / 10 every 2 epochs). `adam` is Kingma & Ba 2015 (Rieger 2018 does
not name an optimiser; [A] Adam with learning rate 1e-3, Keras's default, see
docs/assumptions.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import optax

from xjax.errors import ConfigError
from xjax.registry import Check, Registry, at_least, in_range, non_negative, one_of, positive

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = Registry("optimizer")

# The one place of the optimizers' defaults: the factories' signatures (and
# `learning_rate_schedule`'s) take them from here, and `make_optimizer` passes on only the options
# it is given. Momentum 0.9 and lr / 10 every 2 epochs are XNet's (David & Liu 2019, sec. 2.2).
DEFAULTS = {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0, "schedule": "constant",
            "decay_every_epochs": 2, "decay_factor": 0.1, "total_epochs": 1}
# The one place of the checks of the optimizers' options: each optimizer is registered with those
# of the options it takes, and `xjax.train.config_checks` checks a config's optimizer section
# with the same ones (its messages name the config's keys).
CHECKS = {"learning_rate": positive,
          "momentum": in_range(0, 1, include_high=False),
          "nesterov": Check(lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
          "weight_decay": non_negative,
          "schedule": one_of(*SCHEDULES),
          "decay_every_epochs": at_least(1),
          "decay_factor": in_range(0, 1, include_low=False)}


def _register(name: str) -> Callable[[Callable], Callable]:
  """Registers an optimizer factory in `OPTIMIZERS` with the `CHECKS` of the options it takes."""
  def register(factory: Callable) -> Callable:
    takes = inspect.signature(factory).parameters
    return OPTIMIZERS.register(name, factory,
                               checks={k: c for k, c in CHECKS.items() if k in takes})
  return register


def learning_rate_schedule(learning_rate: float, schedule: str, steps_per_epoch: int,
                           decay_every_epochs: int = DEFAULTS["decay_every_epochs"],
                           decay_factor: float = DEFAULTS["decay_factor"],
                           total_epochs: int = DEFAULTS["total_epochs"]) -> optax.Schedule:
  """`constant`; `step`: times `decay_factor` every `decay_every_epochs`; `cosine` to 0."""
  if schedule == "constant":
    return optax.constant_schedule(learning_rate)
  if schedule == "step":
    return optax.exponential_decay(learning_rate,
                                   transition_steps=decay_every_epochs * steps_per_epoch,
                                   decay_rate=decay_factor, staircase=True)
  if schedule == "cosine":
    return optax.cosine_decay_schedule(learning_rate, max(1, total_epochs * steps_per_epoch))
  raise ConfigError(f"Unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}.")


@_register("sgd")
def sgd(learning_rate: float, steps_per_epoch: int, momentum: float = DEFAULTS["momentum"],
        nesterov: bool = DEFAULTS["nesterov"], weight_decay: float = DEFAULTS["weight_decay"],
        schedule: str = DEFAULTS["schedule"],
        decay_every_epochs: int = DEFAULTS["decay_every_epochs"],
        decay_factor: float = DEFAULTS["decay_factor"],
        total_epochs: int = DEFAULTS["total_epochs"]) -> optax.GradientTransformation:
  """PyTorch's SGD: L2 `weight_decay` added to the gradient, then momentum (0: none), then -lr.

  The arguments are `make_optimizer`'s.
  """
  lr = learning_rate_schedule(learning_rate, schedule, steps_per_epoch, decay_every_epochs,
                              decay_factor, total_epochs)
  return optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))


@_register("adam")
def adam(learning_rate: float, steps_per_epoch: int,
         weight_decay: float = DEFAULTS["weight_decay"], schedule: str = DEFAULTS["schedule"],
         decay_every_epochs: int = DEFAULTS["decay_every_epochs"],
         decay_factor: float = DEFAULTS["decay_factor"],
         total_epochs: int = DEFAULTS["total_epochs"]) -> optax.GradientTransformation:
  """Adam (Kingma & Ba, "Adam: a method for stochastic optimization", 2015); with a
  `weight_decay`, AdamW (Loshchilov & Hutter, "Decoupled weight decay regularization", 2019).

  The arguments are `make_optimizer`'s.
  """
  lr = learning_rate_schedule(learning_rate, schedule, steps_per_epoch, decay_every_epochs,
                              decay_factor, total_epochs)
  return optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr)


def optimizer_options() -> tuple[str, ...]:
  """The options some registered optimizer takes, in the order of the factories' signatures."""
  names: dict[str, None] = {}
  for name in OPTIMIZERS:
    names.update(dict.fromkeys(OPTIMIZERS.options(name)))
  return tuple(names)


def make_optimizer(name: str, *, learning_rate: float, steps_per_epoch: int,
                   **options: Any) -> optax.GradientTransformation:
  """An optax optimizer from a config section (see the module docstring).

  Args:
    name: a name of `OPTIMIZERS`: `sgd` or `adam`.
    learning_rate: the initial learning rate, > 0.
    steps_per_epoch: converts the schedule's epochs to steps.
    **options: any of `optimizer_options()`; those the named optimizer does not take are ignored
      (one config section serves every optimizer), those not given take `DEFAULTS`:
      momentum: SGD's momentum, in [0, 1) (0: none).
      nesterov: SGD's Nesterov momentum.
      weight_decay: L2 coefficient >= 0, added to the gradient (`sgd`) or decoupled (`adam` ->
        AdamW).
      schedule: one of `SCHEDULES`, see `learning_rate_schedule`.
      decay_every_epochs: the `step` schedule's period, >= 1.
      decay_factor: the `step` schedule's factor, in (0, 1].
      total_epochs: the `cosine` schedule's length.

  Returns:
    The optax gradient transformation.

  Raises:
    ConfigError: an unknown optimizer (listing the known ones), an option no optimizer takes, or
      an invalid value (saying what is valid), e.g. a learning rate <= 0.
  """
  takes = OPTIMIZERS.options(name)  # an unknown name: ConfigError listing the known ones
  unknown = sorted(set(options) - set(optimizer_options()))
  if unknown:
    raise ConfigError(f"Unknown optimizer option(s) {unknown}; valid options: "
                      f"{', '.join(optimizer_options())}.")
  return OPTIMIZERS.get(name, learning_rate=learning_rate, steps_per_epoch=steps_per_epoch,
                        **{k: v for k, v in options.items() if k in takes})
