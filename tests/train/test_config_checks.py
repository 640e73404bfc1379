"""Every setting is checked before any data loads: one line naming the key, the value and the rule.

`check_config` (the sections of every training config) and each experiment's `Protocol.check`
(its own sections) on the shipped configs, with one bad value at a time; no data is read and
nothing trains. One subprocess checks the command line's `error: ...` line and exit status.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import xjax.plugins  # noqa: F401 (registers the experiments, their models and loss terms)
from tests.conftest import REPO
from xjax.errors import ConfigError
from xjax.experiments.registry import get_experiment
from xjax.train.config_checks import check_config

# Every config file with the variants to check; the experiment whose `check` reads it.
CONFIGS = {
    "shapes": (None, ("", "smoke")),
    "mnist": (None, ("", "quick")),
    "fashion_mnist": (None, ("", "quick")),
    "cifar10": (None, ("", "quick")),
    "tour": ("tour", ("", "smoke")),
    "xnet": ("xnet", ("", "smoke", "mnist", "mnist,smoke", "celeba", "celeba_local,smoke")),
    "separable": ("separable", ("shapes", "smoke", "mnist,smoke", "fashion_mnist", "cifar10")),
    "explainer": ("explainer", ("shapes", "smoke", "cub_local", "cub_local,smoke", "cub,smoke")),
    "srae": ("srae", ("shapes", "smoke", "cub_local", "cub_local,smoke", "cub,smoke")),
    "maximize": ("maximize", ("mnist", "smoke", "fashion_mnist,smoke", "shapes,smoke")),
    "evaluate": ("evaluate", ("shapes", "smoke", "full,smoke")),
}


def get_config(file: str, variant: str = ""):
  return importlib.import_module(f"runs.configs.{file}").get_config(variant)


def check(file: str, config) -> None:
  """What `run_experiment` (or `runs.train`) checks before it loads any data."""
  check_config(config)
  experiment = CONFIGS[file][0]
  if experiment is not None:
    get_experiment(experiment).check(config)


def fails(file: str, variant: str, key: str, value, *expected: str) -> None:
  """Setting `key` to `value` is one ConfigError line holding every string of `expected`."""
  config = get_config(file, variant)
  *parents, last = key.split(".")
  section = config
  for parent in parents:
    section = section[parent]
  with section.ignore_type():
    section[last] = value
  with pytest.raises(ConfigError) as error:
    check(file, config)
  message = str(error.value)
  assert "\n" not in message
  for part in expected:
    assert part in message, message


@pytest.mark.parametrize("file, variant", [(f, v) for f, (_, vs) in CONFIGS.items() for v in vs])
def test_every_shipped_config_passes_its_checks(file, variant):
  check(file, get_config(file, variant))


@pytest.mark.parametrize("key, value, expected", [
    ("data.batch_size", -4, "Bad value -4 for data.batch_size: expected an integer >= 1"),
    ("data.batch_size", 0, "Bad value 0 for data.batch_size"),
    ("data.batch_size", 32.0, "Bad value 32.0 for data.batch_size"),
    ("data.eval_batch_size", 0, "Bad value 0 for data.eval_batch_size"),
    ("data.validation_fraction", 1.0, "data.validation_fraction: expected a number in (0, 1)"),
    ("data.num_threads", -1, "data.num_threads: expected an integer >= 0"),
    ("data.normalization", "minmax", "data.normalization: expected one of unit, symmetric"),
    ("data.augmentation.shift", -2, "data.augmentation.shift: expected an integer >= 0"),
    ("data.options.image_size", 0, "data.options.image_size: expected an integer >= 1 or a pair"),
    ("data.options.num_examples", 0, "data.options.num_examples: expected None or an integer"),
    ("data.options.num_classes", 1, "data.options.num_classes: expected an integer >= 2"),
    ("data.name", "imagenet", "Unknown dataset 'imagenet'"),
    ("seed", -1, "Bad value -1 for seed: expected an integer in [0, 4294967295]"),
    ("model.name", "alexnet", "Unknown model 'alexnet'"),
    ("model.depth", 3, "Unknown field(s) 'depth' of model 'cnn_cifar10'"),
    ("optimizer.learning_rate", -0.1, "optimizer.learning_rate: expected a finite number > 0"),
    ("optimizer.learning_rate", float("nan"), "Bad value nan for optimizer.learning_rate"),
    ("optimizer.learning_rate", float("inf"), "Bad value inf for optimizer.learning_rate"),
    ("optimizer.momentum", 1.0, "optimizer.momentum: expected a number in [0, 1)"),
    ("optimizer.weight_decay", -1e-4, "optimizer.weight_decay: expected a finite number >= 0"),
    ("optimizer.decay_factor", 0.0, "optimizer.decay_factor: expected a number in (0, 1]"),
    ("optimizer.schedule", "linear", "optimizer.schedule: expected one of constant, step"),
    ("optimizer.name", "lbfgs", "Unknown optimizer 'lbfgs'"),
    ("losses.cross_entropy.weight", -1.0, "losses.cross_entropy.weight: expected a finite"),
    ("losses.cross_entropy.weight", 0.0, "no loss terms of weight > 0"),
    ("train.epochs", 0, "Bad value 0 for train.epochs: expected an integer >= 1"),
    ("train.log_every_steps", 0, "Bad value 0 for train.log_every_steps"),
    ("train.checkpoint_every_steps", -5, "Bad value -5 for train.checkpoint_every_steps"),
    ("train.early_stopping_patience", -1, "train.early_stopping_patience: expected None or"),
    ("train.test_params", "worst", "train.test_params: expected one of best, last"),
    ("train.validation_penalties", ("cross_entropy",), "is not a penalty of the parameters"),
])
def test_a_bad_common_setting_is_one_line_naming_its_key(key, value, expected):
  fails("shapes", "smoke", key, value, expected)


@pytest.mark.parametrize("file, variant, key, value, expected", [
    ("maximize", "smoke", "maximize.learning_rate", -1.0, "Bad value -1.0 for "
     "maximize.learning_rate: expected a number in (0, 1] (Adam moves each pixel"),
    ("maximize", "smoke", "maximize.learning_rate", 1e12, "expected a number in (0, 1]"),
    ("maximize", "smoke", "maximize.learning_rate", 0.0, "maximize.learning_rate"),
    ("maximize", "smoke", "maximize.steps", 0, "Bad value 0 for maximize.steps"),
    ("maximize", "smoke", "maximize.num_starts", 0, "maximize.num_starts"),
    ("maximize", "smoke", "maximize.jitter", -1, "maximize.jitter"),
    ("maximize", "smoke", "maximize.weights.l2", -0.5, "maximize.weights.l2"),
    ("maximize", "smoke", "maximize.expert.optimizer.learning_rate", 0.0,
     "maximize.expert.optimizer.learning_rate: expected a finite number > 0"),
    ("maximize", "smoke", "maximize.generator.epochs", 0, "maximize.generator.epochs"),
    ("maximize", "smoke", "maximize.expert.losses.contrastive_divergence.weight", -1.0,
     "maximize.expert.losses.contrastive_divergence.weight"),
    ("maximize", "smoke", "explain.flipping_fraction", 0.0, "explain.flipping_fraction"),
    ("maximize", "smoke", "explain.flipping_baseline", "zeros", "explain.flipping_baseline"),
    ("maximize", "smoke", "explain.batch_size", 0, "explain.batch_size"),
    ("srae", "smoke", "srae.k", 0, "Bad value 0 for srae.k: expected an integer >= 1"),
    ("srae", "smoke", "srae.steps", 2.5, "srae.steps"),
    ("srae", "smoke", "srae.q", 0.0, "srae.q: expected a finite number > 0"),
    ("srae", "smoke", "srae.classes", 0, "srae.classes"),
    ("explainer", "smoke", "explainer.learning_rate", -1e-3, "explainer.learning_rate"),
    ("explainer", "smoke", "explainer.epochs", 0, "explainer.epochs"),
    ("explainer", "smoke", "explainer.eta", -1.0, "explainer.eta"),
    ("explainer", "smoke", "explainer.num_filters", 0, "explainer.num_filters"),
    ("xnet", "smoke", "xnet.alpha", 0.0, "xnet.alpha: expected a finite number > 0"),
    ("xnet", "smoke", "xnet.match_examples", 0, "xnet.match_examples"),
    ("xnet", "smoke", "xnet.objective", "max", "xnet.objective: expected one of min, sum, mean"),
    ("separable", "smoke", "separable.num_examples", 0, "separable.num_examples"),
    ("separable", "smoke", "separable.finetune_learning_rate", -1.0,
     "separable.finetune_learning_rate"),
    ("evaluate", "smoke", "evaluate.num_examples", 0, "evaluate.num_examples"),
    ("evaluate", "smoke", "evaluate.block_l1", 0.0, "evaluate.block_l1"),
    ("evaluate", "smoke", "evaluate.finetune_epochs", 0, "evaluate.finetune_epochs"),
    ("tour", "smoke", "tour.batch_size", 0, "tour.batch_size"),
])
def test_a_bad_experiment_setting_is_one_line_naming_its_key(file, variant, key, value,
                                                             expected):
  fails(file, variant, key, value, expected)


@pytest.mark.parametrize("file, variants", [(f, vs) for f, (_, vs) in CONFIGS.items()])
def test_a_smoke_variant_keeps_the_dataset_it_was_given(file, variants):
  for variant in variants:
    parts = variant.split(",")
    if "smoke" in parts:
      base = ",".join(p for p in parts if p != "smoke")
      assert (get_config(file, variant).data.name == get_config(file, base).data.name), variant


def test_a_cub_smoke_run_reads_the_cub_folder_small():
  for file in ("srae", "explainer"):
    config = get_config(file, "cub_local,smoke")
    assert config.data.name == "caltech_birds2011_local"
    assert config.data.options["image_size"] == (32, 32)
    assert config.data.options["annotation_scale"] == 0.25


def test_the_command_line_prints_one_line_and_exits_2_before_any_data_loads(tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, "-m", "runs.train", "--config=runs/configs/shapes.py:smoke",
       f"--workdir={workdir}", "--config.data.batch_size=-4"], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: Bad value -4 for data.batch_size: expected an integer >= 1 (images per training "
      "step, over all devices).")
  assert "Traceback" not in result.stderr
  assert not workdir.exists()  # nothing written: it stopped before the run began
