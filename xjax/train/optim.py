"""Optimizers by name, with learning-rate schedules counted in epochs.

`sgd` follows PyTorch's SGD exactly (coupled L2 weight decay added to the gradient, then the
momentum trace `b = m b + g`, then `-lr b`), as XNet trains with it (David & Liu 2019, sec. 2.2: SGD,
lr 0.1, momentum 0.9, lr / 10 every 2 epochs). `adam` is Kingma & Ba 2015 (Rieger 2018's networks
are Keras defaults, [A] Adam 1e-3 in spec/METHODS.md).
"""

from __future__ import annotations

import optax

from xjax.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine")


def learning_rate_schedule(learning_rate: float, schedule: str, steps_per_epoch: int,
                           decay_every_epochs: int = 2, decay_factor: float = 0.1,
                           total_epochs: int = 1) -> optax.Schedule:
  """`constant`; `step`: times `decay_factor` every `decay_every_epochs`; `cosine` to 0."""
  if schedule == "constant":
    return optax.constant_schedule(learning_rate)
  if schedule == "step":
    return optax.exponential_decay(learning_rate, transition_steps=decay_every_epochs * steps_per_epoch,
                                   decay_rate=decay_factor, staircase=True)
  if schedule == "cosine":
    return optax.cosine_decay_schedule(learning_rate, max(1, total_epochs * steps_per_epoch))
  raise ConfigError(f"Unknown learning-rate schedule {schedule!r}; expected one of {SCHEDULES}.")


def make_optimizer(name: str, *, learning_rate: float, steps_per_epoch: int, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0, schedule: str = "constant",
                   decay_every_epochs: int = 2, decay_factor: float = 0.1,
                   total_epochs: int = 1) -> optax.GradientTransformation:
  """An optax optimizer from a config section (see the module docstring).

  Args:
    name: `sgd` or `adam`.
    learning_rate: the initial learning rate.
    steps_per_epoch: converts the schedule's epochs to steps.
    momentum, nesterov: SGD only.
    weight_decay: L2 coefficient added to the gradient (`sgd`) or decoupled (`adam` -> AdamW).
    schedule, decay_every_epochs, decay_factor, total_epochs: see `learning_rate_schedule`.
  """
  lr = learning_rate_schedule(learning_rate, schedule, steps_per_epoch, decay_every_epochs,
                              decay_factor, total_epochs)
  if name == "sgd":
    return optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                       optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))
  if name == "adam":
    if weight_decay:
      return optax.adamw(lr, weight_decay=weight_decay)
    return optax.adam(lr)
  raise ConfigError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
