"""The generative models through the standard train loop: null accuracies, the mean example loss
as validation and test loss, checkpoints and resume; and the steps' generative branch."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runs.configs.shapes import get_config
from xjax.data import pipeline
from xjax.nn import GaussianRBM
from xjax.train import losses
from xjax.train.checkpoint import load_params
from xjax.train.loop import build_model, load_sources, train_and_evaluate
from xjax.train.state import create_train_state
from xjax.train.step import make_eval_step, make_train_step

CASES = {  # model config, loss terms, normalization (tanh decoder: images in [-1, 1])
    "gaussian_rbm": ({"name": "gaussian_rbm", "num_hidden": 16},
                     {"contrastive_divergence": {}}, "standardize"),
    "adversarial_autoencoder": ({"name": "adversarial_autoencoder", "code_size": 2,
                                 "hidden": (16,)},
                                {"reconstruction": {}, "adversarial": {"generator_weight": 0.5}},
                                "symmetric"),
}


def tiny_config(name: str):
  model, terms, normalization = CASES[name]
  c = get_config("smoke")
  c.name = f"shapes_{name}"
  c.data.options = dict(image_size=16, num_classes=4, num_examples=128)
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.data.normalization = normalization
  c.model = model
  c.losses = terms
  c.train.epochs = 1
  c.train.log_every_steps, c.train.checkpoint_every_steps = 2, 2
  return c


@pytest.mark.parametrize("name", CASES)
def test_trains_tests_and_resumes_through_the_standard_loop(name, tmp_path, capsys):
  config = tiny_config(name)
  results = train_and_evaluate(config, tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["test_accuracy"] is None and saved["best_validation_accuracy"] is None
  assert math.isfinite(saved["test_loss"]) and saved["test_loss"] > 0
  assert saved["steps"] == 4 and saved["best_epoch"] == 1
  epoch = saved["history"][0]
  assert epoch["train_accuracy"] is None and epoch["validation_accuracy"] is None
  assert math.isfinite(epoch["train_loss"])
  assert epoch["validation_loss"] == pytest.approx(saved["best_validation_loss"])
  assert "test_loss" in (tmp_path / "results.md").read_text()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(r.get("train/accuracy", None) is None for r in rows)
  for term in config.losses:
    assert all(math.isfinite(r[f"train/loss/{term}"]) for r in rows if "train/loss" in r)
  # The test loss is the mean example loss of the best parameters, recomputed here.
  test = load_sources(config.data, ("test",))["test"]
  model = build_model(config, test.info)
  variables = {"params": load_params(tmp_path, "best")["params"]}
  example_losses = [
      np.asarray(model.apply(variables, jnp.asarray(b["image"]))[1]["example_loss"])[b["valid"]]
      for b in pipeline.eval_batches(test, batch_size=64, normalization=config.data.normalization,
                                     fields=("image", "label"))]
  assert saved["test_loss"] == pytest.approx(np.concatenate(example_losses).mean(), rel=1e-5)
  capsys.readouterr()
  again = train_and_evaluate(config, tmp_path)  # a finished run: nothing is trained again
  assert "Resuming from step 4" in capsys.readouterr().out
  assert again["steps"] == 4 and again["history"] == results["history"]
  assert again["test_loss"] == pytest.approx(results["test_loss"], rel=1e-6)


def test_build_model_gives_the_autoencoder_the_data_image_shape():
  config = tiny_config("adversarial_autoencoder")
  info = load_sources(config.data, ("train",))["train"].info
  assert build_model(config, info).image_shape == (16, 16, 3)
  config.model.image_shape = (8, 8, 1)  # a config that sets it wins
  assert build_model(config, info).image_shape == (8, 8, 1)
  assert not hasattr(build_model(tiny_config("gaussian_rbm"), info), "image_shape")


def test_steps_of_a_generative_model_count_no_accuracy_and_average_the_example_loss():
  model, tx = GaussianRBM(num_hidden=3), optax.sgd(0.1)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 2, 2, 1)).astype(np.float32),
           "label": np.array([0, 1, 2, 3], np.int32), "valid": np.array([1, 1, 1, 0], bool)}
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (2, 2, 1))
  terms = losses.build_loss_terms({"contrastive_divergence": {}})
  _, metrics = jax.jit(make_train_step(model, tx, terms))(state, batch)
  assert np.isnan(metrics["accuracy"]) and np.isfinite(metrics["loss/contrastive_divergence"])
  sums = jax.jit(make_eval_step(model))(state.variables, batch)
  assert "correct" not in sums and float(sums["count"]) == 3.0
  _, inter = model.apply(state.variables, jnp.asarray(batch["image"]))
  np.testing.assert_allclose(sums["loss_sum"], np.sum(inter["example_loss"][:3]), rtol=1e-6)
