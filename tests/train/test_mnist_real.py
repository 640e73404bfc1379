"""Real data: one epoch of the Table-1 MNIST network on TFDS MNIST reaches 97% test accuracy.

Runs where a prepared MNIST exists in `$XJAX_TFDS_DIR` (CI prepares it from shared/data/mnist);
skips otherwise. The full protocol (`runs/configs/mnist.py`) reaches >= 98.5%.
"""

from __future__ import annotations

import json
import os

import pytest

from runs.configs import mnist
from xjax.train.loop import train_and_evaluate


def test_one_epoch_of_mnist_reaches_97_percent(tmp_path):
  data_dir = os.environ.get("XJAX_TFDS_DIR")
  if not data_dir:
    pytest.skip("XJAX_TFDS_DIR is not set: no prepared MNIST to train on")
  config = mnist.get_config()
  config.data.data_dir = data_dir
  config.train.epochs = 1
  results = train_and_evaluate(config, tmp_path)
  assert results["test_accuracy"] >= 0.97, results
  assert results["num_params"] == 1_619_850  # the Table-1 MNIST network
  assert (json.loads((tmp_path / "results.json").read_text())["test_accuracy"]
          == results["test_accuracy"])
