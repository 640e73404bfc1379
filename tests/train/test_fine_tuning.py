"""`train.init_from` (fine-tuning from another run's best parameters) and
`train.validation_penalties` (parameter penalties in the validation loss), in process."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from runs.configs.shapes import get_config
from xjax.errors import CheckpointMismatchError, ConfigError, XjaxError
from xjax.methods.separable import block_l1
from xjax.train.checkpoint import load_params
from xjax.train.loop import train_and_evaluate


def tiny_config():
  c = get_config("smoke")
  c.data.options = dict(image_size=16, num_classes=4, num_examples=256)
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.model.name = "cnn_fashion"
  c.train.epochs = 1
  c.train.log_every_steps = 4
  return c


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrained")
  train_and_evaluate(tiny_config(), workdir)
  return workdir


def test_fine_tuning_starts_from_the_best_parameters_and_adds_the_penalty(pretrained, tmp_path):
  """With every parameter frozen (the path prefix "") the fine-tuned run keeps the pre-trained
  parameters exactly, and its validation loss is the cross-entropy plus lambda times the penalty
  of those parameters."""
  c = tiny_config()
  c.train.frozen = ("",)
  c.train.init_from = str(pretrained)
  c.losses = {"cross_entropy": {"weight": 1.0},
              "block_l1": {"weight": 0.5, "num_classes": 4, "layers": None}}
  c.train.validation_penalties = ("block_l1",)
  results = train_and_evaluate(c, tmp_path)
  before = load_params(pretrained, "best")["params"]
  after = load_params(tmp_path, "latest")["params"]
  jax.tree.map(np.testing.assert_array_equal, before, after)
  epoch = results["history"][0]
  penalty = 0.5 * float(block_l1(before, 4))
  assert penalty > 1.0  # the penalty is not negligible next to the cross-entropy
  np.testing.assert_allclose(epoch["validation_loss"] - epoch["validation_cross_entropy"],
                             penalty, rtol=1e-5)


def test_fine_tuning_a_different_model_names_the_arrays(pretrained, tmp_path):
  c = tiny_config()
  c.model.name = "cnn_mnist"
  c.train.init_from = str(pretrained)
  with pytest.raises(CheckpointMismatchError, match="conv2"):
    train_and_evaluate(c, tmp_path)


def test_fine_tuning_from_an_untrained_run_is_a_clear_error(tmp_path):
  c = tiny_config()
  c.train.init_from = str(tmp_path / "never_trained")
  with pytest.raises(XjaxError, match="no best checkpoint"):
    train_and_evaluate(c, tmp_path / "run")


@pytest.mark.parametrize("name, message", [("block_l2", "not loss terms"),
                                           ("cross_entropy", "not a penalty")])
def test_a_validation_penalty_must_be_a_penalty_of_the_parameters(tmp_path, name, message):
  c = tiny_config()
  c.train.validation_penalties = (name,)
  with pytest.raises(ConfigError, match=message):
    train_and_evaluate(c, tmp_path)
