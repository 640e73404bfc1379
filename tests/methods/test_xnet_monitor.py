"""XNet over a dataset: per-neuron drop losses under a matching, category activations, top images,
the XNet model's structure, and the hooks' state in the training loop's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.methods import xnet_monitor as monitor
from xjax.methods.xnet import MEMBERSHIP_KEY
from xjax.nn.registry import get_model
from xjax.train.loop import LoopState


def test_neuron_drop_losses_read_the_matched_entries():
  matrix = np.array([[0.1, 0.9, 0.2],
                     [0.4, 0.3, 0.8],
                     [0.7, 0.5, 0.6]])  # M[category, neuron]
  np.testing.assert_allclose(monitor.neuron_drop_losses(matrix, [0, 1, 2]), [0.1, 0.3, 0.6])
  # category 0 -> neuron 1, 1 -> 2, 2 -> 0: neuron j reports its own category's entry.
  np.testing.assert_allclose(monitor.neuron_drop_losses(matrix, [1, 2, 0]), [0.7, 0.9, 0.8])


def test_category_activation_sums_per_category_and_normalises_per_neuron():
  hidden = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
  membership = np.array([[1, 0], [1, 1], [0, 1]], bool)  # image 1 is in both categories
  # neuron 0: category 0 gets 1 + 2, category 1 gets 2 -> (3, 2) / 5; neuron 1: (1, 4) / 5.
  np.testing.assert_allclose(monitor.category_activation(hidden, membership),
                             [[0.6, 0.2], [0.4, 0.8]])
  silent = monitor.category_activation(np.zeros((3, 2)), membership)
  np.testing.assert_array_equal(silent, 0.0)


def test_top_images_are_the_largest_scores_per_neuron():
  scores = np.array([[0.1, 5.0], [0.9, 1.0], [0.5, 3.0], [0.7, 2.0]])
  np.testing.assert_array_equal(monitor.top_images(scores, 2), [[1, 3], [0, 2]])


def test_per_image_drop_losses_agree_with_the_drop_loss_matrix():
  rng = np.random.default_rng(1)
  n, k = 40, 3
  output = {"kernel": jnp.asarray(rng.normal(size=(k, 2)), jnp.float32), "bias": jnp.zeros(2)}
  outputs = monitor.SplitOutputs(
      hidden=rng.random((n, k)).astype(np.float32), logits=np.zeros((n, 2)),
      labels=rng.integers(0, 2, n).astype(np.int32), membership=rng.random((n, k)) < 0.5,
      index=np.arange(n))
  per_image = monitor.per_image_drop_losses(output, outputs)  # (n, k)
  expected = (outputs.membership.T.astype(float) @ per_image) / outputs.membership.sum(0)[:, None]
  np.testing.assert_allclose(monitor.split_drop_loss_matrix(output, outputs, chunk=16), expected,
                             rtol=1e-5)
  np.testing.assert_allclose(monitor.category_means(per_image, outputs.membership), expected,
                             rtol=1e-5)


def test_the_xnet_model_puts_a_head_on_a_backbone_without_classifier():
  model = get_model("xnet", backbone="cnn_fashion", backbone_options={"dense_dropout_rate": 0.0},
                    num_neurons=4, num_classes=3, head_norm="batch")
  x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  params = variables["params"]
  assert sorted(params) == ["backbone", "head"]
  assert "classifier" not in params["backbone"]
  assert params["head"]["explainable"]["kernel"].shape == (256, 4)
  assert params["head"]["output"]["kernel"].shape == (4, 3)
  logits, inter = model.apply(variables, x)
  hidden = inter["xnet_hidden"]
  assert logits.shape == (2, 3) and hidden.shape == (2, 4) and float(hidden.min()) >= 0.0
  output = params["head"]["output"]
  np.testing.assert_allclose(logits, hidden @ output["kernel"] + output["bias"], rtol=1e-5)
  with pytest.raises(ConfigError, match="norm"):
    get_model("xnet", backbone="cnn_fashion", head_norm="layer").init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="Unknown model"):
    get_model("xnet", backbone="nope").init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="matching"):
    monitor.XNetHooks(model, {}, [0, 1, 2, 3], matching="greedy")


def test_the_hooks_keep_a_typed_state_in_the_loop_and_resume_from_the_old_layout():
  model = get_model("xnet", backbone="cnn_fashion", num_neurons=2, num_classes=2)
  hooks = monitor.XNetHooks(model, {}, [0, 1], matching="initial")
  batch = {"attributes": np.array([[1, 0], [1, 1], [0, 1]], np.int8)}
  loop = LoopState()
  np.testing.assert_array_equal(hooks.transform_batch(batch, loop)[MEMBERSHIP_KEY],
                                [[1, 0], [1, 1], [0, 1]])  # identity matching before any
  assert loop.hooks["xnet"] == monitor.XNetState([0, 1])
  assert loop.to_json()["hooks"] == {"xnet": {"neuron_of_category": [0, 1],
                                              "drop_loss_history": [], "matchings": []}}
  # A checkpoint written before `LoopState.hooks`: XNet's state beside the loop's keys.
  xnet = {"neuron_of_category": [1, 0], "drop_loss_history": [[0.3, 0.4]],
          "matchings": [{"epoch": 0, "neuron_of_category": [1, 0], "matrix": [[0, 1], [1, 0]]}]}
  resumed = LoopState.from_json({"history": [], "best_validation_loss": None,
                                 "best_epoch": None, "bad_epochs": 0, "stopped_early": False,
                                 "train_seconds": 1.0, "epoch_logs": [], "xnet": xnet})
  # The matching of epoch 0 and the drop losses before training were made: a resume at epoch 0
  # makes neither again (no train state is needed to find that out).
  hooks.on_epoch_start(None, 0, resumed)
  assert resumed.hooks["xnet"] == monitor.XNetState(**xnet)
  np.testing.assert_array_equal(hooks.transform_batch(batch, resumed)[MEMBERSHIP_KEY],
                                [[0, 1], [1, 1], [1, 0]])  # category 0 is neuron 1's
  assert hooks.results(resumed) == {"xnet": xnet}  # results.json's "xnet", as before
  assert LoopState.from_json(resumed.to_json()).hooks == {"xnet": xnet}
