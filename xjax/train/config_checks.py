"""Checks of a config's values that need no data: run before anything is loaded or trained.

`check_config` (called by `runs.train` and `run_experiment`) checks the sections
every training config has, `data`, `model`, `optimizer`, `losses`, `train`, and the seed; each
experiment's `Protocol.check` checks its own sections with the same helpers. A bad value is one
`ConfigError` line that names the dotted key, the value and what is expected, e.g.

  Bad value -4 for data.batch_size: expected an integer >= 1.

The rules are `xjax.registry.Check`s (`positive`, `non_negative`, `in_range`, `one_of`, ...);
`integer`, `optional` and `sequence` below build the forms config keys need from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from xjax.data import pipeline
from xjax.data import registry as datasets
from xjax.errors import ConfigError
from xjax.nn import registry as models
from xjax.registry import (
  Check,
  boolean,
  in_range,
  integer,
  non_negative,
  one_of,
  optional,
  positive,
)
from xjax.train import optim
from xjax.train.losses import LOSS_TERMS, is_penalty
from xjax.train.optim import OPTIMIZERS

# A rule: a `Check`, or a `Check` and why it is the rule (added to the message in parentheses).
Rule = Check | tuple[Check, str]


# --------------------------------------------------------------------------------------------------
# Checks built from the registry's.


def is_mapping(value: Any) -> bool:
  """A dict or a `ConfigDict` (which is no `Mapping`)."""
  return isinstance(value, (Mapping, ml_collections.ConfigDict))


def sequence(check: Check, *, length: int | None = None, empty: bool = False,
             text: str | None = None) -> Check:
  """A list or tuple of values `check` accepts: `length` of them, or any non-empty number (any
  number with `empty`); `text` replaces the generated requirement."""
  def test(v):
    sized = len(v) == length if length is not None else (empty or len(v) > 0)
    return isinstance(v, (list, tuple)) and sized and all(check(x) for x in v)

  if text is None:
    what = {2: "a pair"}.get(length, f"{length} values") if length else (
        "a list" if empty else "a non-empty list")
    text = f"{what}, each {check.requirement}"
  return Check(test, text)


finite = Check(in_range(-math.inf, math.inf).test, "a finite number")
string = Check(lambda v: isinstance(v, str), "a string")
name = Check(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
counts = integer(1)
# jax.random.PRNGKey, numpy's Generator and grain all take an unsigned 32-bit seed.
seed = integer(0, 2**32 - 1)
image_size = Check(lambda v: counts(v) or sequence(counts, length=2)(v),
                   "an integer >= 1 or a pair (height, width) of them")


# --------------------------------------------------------------------------------------------------
# Applying them.


def check_value(key: str, value: Any, rule: Rule) -> None:
  """Raises a one-line `ConfigError` naming `key` unless `rule` accepts `value`."""
  check, why = rule if isinstance(rule, tuple) else (rule, "")
  if not check(value):
    raise ConfigError(f"Bad value {value!r} for {key}: expected {check.requirement}"
                      + (f" ({why})" if why else "") + ".")


def check_section(section: Mapping[str, Any], prefix: str, rules: Mapping[str, Rule],
                  required: tuple[str, ...] = ()) -> None:
  """Checks every key of `rules` that `section` (the config's `prefix`) has; `required` keys must
  be there."""
  for key in required:
    if key not in section:
      check = rules[key][0] if isinstance(rules[key], tuple) else rules[key]
      raise ConfigError(f"The config has no {prefix}.{key} (expected {check.requirement}).")
  for key, rule in rules.items():
    if key in section:
      check_value(f"{prefix}.{key}" if prefix else key, section[key], rule)


# --------------------------------------------------------------------------------------------------
# The sections of every training config.

DATA = {
    "name": name,
    "batch_size": (counts, "images per training step, over all devices"),
    "eval_batch_size": (counts, "images per evaluation step, over all devices"),
    "normalization": one_of(*pipeline.NORMALIZATIONS),
    "validation_fraction": (in_range(0, 1, include_low=False, include_high=False),
                            "the share of the train split held out where there is no validation "
                            "split"),
    "num_threads": (integer(0), "grain's reading threads; 0 reads in the main thread"),
    "skip_unreadable": boolean,
    "fields": sequence(name),
    "data_dir": optional(name),
}
# `data.options` are the dataset's own; these names mean the same for every dataset that takes
# them (the dataset checks which it takes when its source is made, still before any data loads).
DATA_OPTIONS = {
    "image_size": image_size,
    "num_examples": optional(counts),
    "num_classes": integer(2),
    "pad_to": counts,
    "seed": seed,
    "annotation_scale": positive,
    "noise": non_negative,
    "second_object": boolean,
    "second_object_prob": in_range(0, 1),
    "dark_object_prob": in_range(0, 1),
    "cache": optional(boolean),
    "in_memory": optional(boolean),
}
AUGMENTATION = {"flip": boolean, "shift": (integer(0), "pixels")}
TASK = {"label_attribute": optional(name), "positive_classes": sequence(integer(0), empty=True)}
# Options of loss terms that mean the same for every term that takes them (the terms register
# the checks of their other options).
LOSS_OPTIONS = {"num_classes": (integer(2), "the data's class count")}
# The checks the optimizers are registered with (`xjax.train.optim.CHECKS`, their one place),
# under the config's keys.
OPTIMIZER = {"name": name, **optim.CHECKS}
TRAIN = {
    "epochs": counts,
    "log_every_steps": counts,
    "checkpoint_every_steps": counts,
    "early_stopping_patience": (optional(integer(0)), "epochs without a better validation loss; "
                                "0 or None: no early stopping"),
    "test_params": one_of("best", "last"),
    "init_from": optional(name),
    "frozen": (sequence(string, empty=True), "parameter path prefixes; \"\" is every parameter"),
    "validation_penalties": sequence(name, empty=True),
}


def check_data(data: Mapping[str, Any], prefix: str = "data") -> None:
  """`data`: sizes, fractions, the normalization, the dataset's name and its options' values."""
  check_section(data, prefix, DATA, required=("name", "batch_size", "eval_batch_size",
                                              "normalization"))
  datasets.DATASETS[data["name"]]  # an unknown name: ConfigError listing the known ones
  for key, rules in (("options", DATA_OPTIONS), ("augmentation", AUGMENTATION), ("task", TASK)):
    section = data.get(key) or {}
    if not is_mapping(section):
      raise ConfigError(f"Bad value {section!r} for {prefix}.{key}: expected a dict.")
    check_section(section, f"{prefix}.{key}", rules)
  fields = [f.name for f in dataclasses.fields(pipeline.Augmentation)]
  unknown = sorted(set(data.get("augmentation") or {}) - set(fields))
  if unknown:
    raise ConfigError(f"Unknown {prefix}.augmentation option(s) {unknown}; valid options: "
                      f"{', '.join(fields)}.")


def check_model(model: Mapping[str, Any], prefix: str = "model") -> None:
  """`model`: a registered name, and only fields that model has."""
  check_section(model, prefix, {"name": name}, required=("name",))
  cls = models.MODELS[model["name"]]
  fields = models.model_fields(cls)
  unknown = sorted(set(model) - {"name"} - set(fields))
  if unknown:
    raise ConfigError(f"Unknown field(s) {', '.join(map(repr, unknown))} of {prefix} "
                      f"{model['name']!r} ({cls.__name__}); valid fields: {', '.join(fields)}.")


def make_optimizer_options() -> set[str]:
  """The options a config's optimizer section can set: `name` and those of the registered
  optimizers (`xjax.train.optim.optimizer_options`), less those the loop derives from the data."""
  return {"name", *optim.optimizer_options()} - {"steps_per_epoch", "total_epochs"}


def check_optimizer(optimizer: Mapping[str, Any], prefix: str = "optimizer",
                    known: set[str] | None = None) -> None:
  """`optimizer`: only options in `known` (default `make_optimizer_options()`), each in range (a
  learning rate finite and > 0, ...), and a registered name."""
  known = make_optimizer_options() if known is None else known
  unknown = sorted(set(optimizer) - known)
  if unknown:
    raise ConfigError(f"Unknown {prefix} option(s) {unknown}; valid options: "
                      f"{', '.join(sorted(known))}.")
  check_section(optimizer, prefix, OPTIMIZER, required=("name", "learning_rate"))
  OPTIMIZERS[optimizer["name"]]  # an unknown name: ConfigError listing the known ones


def check_losses(losses: Mapping[str, Any], prefix: str = "losses") -> tuple[str, ...]:
  """`losses`: every term's weight finite and >= 0, and the options of those of weight > 0 (the
  terms that are built). Returns the names of those terms."""
  built = []
  for term, options in losses.items():
    if options is not None and not is_mapping(options):
      raise ConfigError(f"Bad value {options!r} for {prefix}.{term}: expected a dict of the "
                        f"term's options, e.g. {{'weight': 1.0}}.")
    options = dict(options or {})
    weight = options.pop("weight", 1.0)
    check_value(f"{prefix}.{term}.weight", weight, non_negative)
    if weight > 0:  # a term of weight 0 is declared, not built (`build_loss_terms`)
      try:
        LOSS_TERMS.check(term, options)
      except ConfigError as e:
        raise ConfigError(f"{prefix}.{term}: {e}") from None
      check_section(options, f"{prefix}.{term}", LOSS_OPTIONS)
      built.append(term)
  if not built:
    raise ConfigError(f"The config has no loss terms of weight > 0 ({prefix}).")
  return tuple(built)


def check_train(train: Mapping[str, Any], terms: tuple[str, ...], prefix: str = "train") -> None:
  """`train`: epochs, intervals, patience; its validation penalties among the built `terms`."""
  check_section(train, prefix, TRAIN, required=("epochs", "log_every_steps",
                                                "checkpoint_every_steps"))
  pretrained = train.get("pretrained") or {}
  if not is_mapping(pretrained) or not all(
      string(k) and name(v) for k, v in pretrained.items()):
    raise ConfigError(f"Bad value {pretrained!r} for {prefix}.pretrained: expected a dict of "
                      f"parameter path prefix -> workdir.")
  check_validation_penalties(tuple(train.get("validation_penalties") or ()), terms,
                             f"{prefix}.validation_penalties")


def check_validation_penalties(penalties: tuple[str, ...], terms, key: str) -> None:
  """Each of `penalties` is one of the loss `terms` and a penalty of the parameters alone."""
  unknown = sorted(set(penalties) - set(terms))
  if unknown:
    raise ConfigError(f"{key} {unknown} are not loss terms of this config; its terms: "
                      f"{', '.join(terms)}.")
  batch_terms = [term for term in penalties if not is_penalty(term)]
  if batch_terms:
    raise ConfigError(f"{key}: {', '.join(map(repr, batch_terms))} is not a penalty of the "
                      f"parameters alone (it needs a batch).")


def check_config(config: Mapping[str, Any], optimizer_options: set[str] | None = None) -> None:
  """Every setting of a training config's sections, before any data is loaded (module docstring).

  `optimizer_options`: the options the optimizer section may set (`check_optimizer`).

  Raises:
    ConfigError: a missing section, an unknown name, or a value out of range (one line, naming
      the key).
  """
  for key in ("data", "model", "optimizer", "train", "losses"):
    if key not in config:
      raise ConfigError(f"The config has no section {key!r}.")
  check_section(config, "", {"seed": seed, "name": name})
  check_data(config["data"])
  check_model(config["model"])
  check_optimizer(config["optimizer"], known=optimizer_options)
  check_train(config["train"], check_losses(config["losses"]))
