"""Optimizers by name, with learning-rate schedules counted in epochs.

`sgd` follows PyTorch's SGD exactly (coupled L2 weight decay added to the gradient, then the
momentum trace `b = m b + g`, then `-lr b`), as XNet trains with it (David & Liu 2019, sec. 2.2:
SGD, lr 0.1, momentum 0.9, lr / 10 every 2 epochs). `adam` is Kingma & Ba 2015 (Rieger 2018 does
not name an optimiser; [A] Adam with learning rate 1e-3, Keras's default, see
docs/assumptions.md).
"""

from __future__ import annotations

import optax

from xjax.errors import ConfigError
from xjax.registry import Registry, at_least, in_range, non_negative, one_of, positive

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = Registry("optimizer")
# The checks every optimizer makes of its learning rate and schedule.
_SCHEDULE_CHECKS = {"learning_rate": positive, "schedule": one_of(*SCHEDULES),
                    "decay_every_epochs": at_least(1),
                    "decay_factor": in_range(0, 1, include_low=False),
                    "weight_decay": non_negative}


def learning_rate_schedule(learning_rate: float, schedule: str, steps_per_epoch: int,
                           decay_every_epochs: int = 2, decay_factor: float = 0.1,
                           total_epochs: int = 1) -> optax.Schedule:
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


@OPTIMIZERS.register("sgd", checks={**_SCHEDULE_CHECKS,
                                    "momentum": in_range(0, 1, include_high=False)})
def sgd(learning_rate: float, steps_per_epoch: int, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0, schedule: str = "constant", decay_every_epochs: int = 2,
        decay_factor: float = 0.1, total_epochs: int = 1) -> optax.GradientTransformation:
  """PyTorch's SGD: L2 `weight_decay` added to the gradient, then momentum (0: none), then -lr.

  The arguments are `make_optimizer`'s.
  """
  lr = learning_rate_schedule(learning_rate, schedule, steps_per_epoch, decay_every_epochs,
                              decay_factor, total_epochs)
  return optax.chain(optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     optax.sgd(lr, momentum=momentum or None, nesterov=nesterov))


@OPTIMIZERS.register("adam", checks=_SCHEDULE_CHECKS)
def adam(learning_rate: float, steps_per_epoch: int, weight_decay: float = 0.0,
         schedule: str = "constant", decay_every_epochs: int = 2, decay_factor: float = 0.1,
         total_epochs: int = 1) -> optax.GradientTransformation:
  """Adam (Kingma & Ba, "Adam: a method for stochastic optimization", 2015); with a
  `weight_decay`, AdamW (Loshchilov & Hutter, "Decoupled weight decay regularization", 2019).

  The arguments are `make_optimizer`'s.
  """
  lr = learning_rate_schedule(learning_rate, schedule, steps_per_epoch, decay_every_epochs,
                              decay_factor, total_epochs)
  return optax.adamw(lr, weight_decay=weight_decay) if weight_decay else optax.adam(lr)


def make_optimizer(name: str, *, learning_rate: float, steps_per_epoch: int, momentum: float = 0.9,
                   nesterov: bool = False, weight_decay: float = 0.0, schedule: str = "constant",
                   decay_every_epochs: int = 2, decay_factor: float = 0.1,
                   total_epochs: int = 1) -> optax.GradientTransformation:
  """An optax optimizer from a config section (see the module docstring).

  Args:
    name: a name of `OPTIMIZERS`: `sgd` or `adam`.
    learning_rate: the initial learning rate, > 0.
    steps_per_epoch: converts the schedule's epochs to steps.
    momentum: SGD's momentum, in [0, 1) (0: none); other optimizers ignore it.
    nesterov: SGD's Nesterov momentum; other optimizers ignore it.
    weight_decay: L2 coefficient >= 0, added to the gradient (`sgd`) or decoupled (`adam` ->
      AdamW).
    schedule: one of `SCHEDULES`, see `learning_rate_schedule`.
    decay_every_epochs: the `step` schedule's period, >= 1.
    decay_factor: the `step` schedule's factor, in (0, 1].
    total_epochs: the `cosine` schedule's length.

  Returns:
    The optax gradient transformation.

  Raises:
    ConfigError: an unknown optimizer (listing the known ones) or an invalid value (saying what
      is valid), e.g. a learning rate <= 0.
  """
  options = dict(learning_rate=learning_rate, steps_per_epoch=steps_per_epoch, momentum=momentum,
                 nesterov=nesterov, weight_decay=weight_decay, schedule=schedule,
                 decay_every_epochs=decay_every_epochs, decay_factor=decay_factor,
                 total_epochs=total_epochs)
  takes = OPTIMIZERS.options(name)
  return OPTIMIZERS.get(name, **{k: v for k, v in options.items() if k in takes})
