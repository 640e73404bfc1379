"""Training new modules on a frozen, pre-trained network, through a protocol of a dozen lines.

The protocol below is all a new paper needs to write to train on top of another network: two
`Run`s, the second loading the first into its "backbone" and freezing it. The runner does the rest
(workdirs, resume, results). After training, every frozen leaf must be bit-identical to the
checkpoint it came from, the new head must have changed, and the optimizer must hold no state for
the frozen leaves.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from runs.configs.shapes import get_config
from xjax.errors import ConfigError
from xjax.experiments import Protocol, Run, run_experiment
from xjax.experiments.runner import copy_config
from xjax.nn.registry import count_params
from xjax.train.checkpoint import load_params
from xjax.train.frozen import frozen_mask
from xjax.train.loop import build_model, load_sources
from xjax.train.state import create_train_state


class ProbeProtocol(Protocol):
  """A performer CNN, then an XNet head trained on its frozen convolutional features."""

  title = "probe on a frozen performer"

  def runs(self, config, sources):
    probe = copy_config(config, model={"name": "xnet", "backbone": config.model.name,
                                       "backbone_options": {"dense_dropout_rate": 0.0},
                                       "num_neurons": 3})
    return [Run("performer", config),
            Run("probe", probe, pretrained={"backbone": "performer"}, frozen=("backbone",))]


def tiny_config():
  c = get_config("smoke")
  c.data.options = dict(image_size=16, num_classes=4, num_examples=256)
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.model.name = "cnn_fashion"
  c.train.epochs = 1
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("frozen")
  results = run_experiment(ProbeProtocol(), tiny_config(), workdir)
  return workdir, results


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_frozen_leaves_are_bit_identical_to_the_performer_checkpoint(finished):
  workdir, results = finished
  performer = _leaves(load_params(workdir / "performer", "best")["params"])
  for which in ("latest", "best"):
    probe = _leaves(load_params(workdir / "probe", which)["params"])
    backbone = {k[len("backbone/"):]: v for k, v in probe.items() if k.startswith("backbone/")}
    assert backbone and set(backbone) < set(performer)  # the performer's classifier is not loaded
    for path, value in backbone.items():
      assert value.dtype == performer[path].dtype
      assert value.tobytes() == performer[path].tobytes(), path
  assert {"performer", "probe", "checks"} <= set(results)


def test_the_new_head_changed_and_has_the_only_optimizer_state(finished):
  workdir, _ = finished
  state = load_params(workdir / "probe", "latest")
  head = _leaves(state["params"]["head"])
  c = tiny_config()  # the probe's initial parameters, by the loop's own create_train_state
  c.model = {"name": "xnet", "backbone": "cnn_fashion", "num_neurons": 3,
             "backbone_options": {"dense_dropout_rate": 0.0}}
  info = load_sources(c.data, ("test",))["test"].info
  fresh = create_train_state(build_model(c, info), optax.identity(), jax.random.PRNGKey(c.seed),
                             info.image_shape)
  fresh_head = _leaves(fresh.params["head"])
  assert set(head) == set(fresh_head)
  assert all(not np.array_equal(head[k], fresh_head[k]) for k in head if k.endswith("kernel"))
  # Adam keeps two moments per trainable scalar (plus counts): none for the frozen backbone.
  moments = count_params(state["opt_state"])
  assert 2 * count_params(state["params"]["head"]) <= moments < 2 * count_params(
      state["params"]["head"]) + 16


def test_a_misspelt_frozen_path_is_a_config_error():
  params = {"backbone": {"conv1": {"kernel": np.zeros(3)}}, "head": {"w": np.zeros(2)}}
  mask = frozen_mask(params, ("backbone",))
  assert mask == {"backbone": {"conv1": {"kernel": True}}, "head": {"w": False}}
  with pytest.raises(ConfigError, match="backbone, head"):
    frozen_mask(params, ("backbon",))
