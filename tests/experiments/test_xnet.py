"""The XNet protocol end to end on its `smoke` config (tiny shapes): results.json against an
independent computation, the matching ablation, the figures, resuming a finished run, and config
errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from runs.configs.xnet import VARIANTS, get_config
from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments import run_experiment
from xjax.experiments import xnet as run_xnet
from xjax.methods import xnet
from xjax.train.checkpoint import load_params
from xjax.train.loop import build_model, load_sources

FIGURES = ("fig1_drop_losses", "fig2_category_activation", "fig3_saliency", "fig4_gradcam",
           "fig5_top_images_xnet", "fig6_top_images_baseline", "fig8_matching")


def tiny_config():
  return get_config("smoke")


def main(config, workdir):
  return run_experiment(run_xnet.XNetProtocol(), config, workdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("xnet")
  config = tiny_config()
  return config, workdir, main(config, workdir)


def test_results_hold_every_run_with_its_drop_losses_and_activations(finished):
  config, workdir, results = finished
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["categories"] == ["large", "red", "striped"]
  for name in ("baseline", "xnet", "em_match"):
    run = saved[name]
    assert 0.0 <= run["test_accuracy"] <= 1.0
    assert np.shape(run["drop_loss_history"]) == (config.train.epochs + 1, 3)  # epoch 0 too
    activation = np.asarray(run["category_activation"])
    np.testing.assert_allclose(activation.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(run["drop_losses"], xnet_monitor_diagonal(run), rtol=1e-6)
  assert saved["baseline"]["neuron_of_category"] == [0, 1, 2]
  matchings = saved["em_match"]["matchings"]
  assert len(matchings) == config.train.epochs  # before every epoch
  assert all(sorted(m) == [0, 1, 2] for m in matchings)
  assert set(saved["checks"]) == {"min_drop_loss_ratio_xnet_over_baseline",
                                  "xnet_drop_losses_rose_from_init",
                                  "xnet_drop_losses_rose_from_epoch_1", "accuracy_gap_points"}
  assert "Table 1" in (workdir / "results.md").read_text()
  for name in FIGURES:
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 5000


def xnet_monitor_diagonal(run):
  matrix = np.asarray(run["drop_loss_matrix"])
  return [matrix[run["neuron_of_category"].index(j), j] for j in range(3)]


def test_final_drop_losses_equal_a_naive_loop_over_the_test_split(finished):
  """Recomputed from the checkpoint with k masked head passes per batch (no vmap, no monitor)."""
  config, workdir, results = finished
  test = load_sources(config.data, ("test",))["test"]
  model = build_model(config, test.info)
  state = load_params(workdir / "xnet", "latest")
  variables = {"params": state["params"], **state["model_state"]}
  columns = [test.info.attribute_names.index(n) for n in config.xnet.categories]
  totals, counts = np.zeros(3), np.zeros(3)
  for batch in pipeline.eval_batches(test, batch_size=64, fields=("image", "label", "attributes")):
    valid = batch["valid"]
    _, inter = model.apply(variables, jnp.asarray(batch["image"]), train=False)
    membership = (batch["attributes"][:, columns] > 0) & valid[:, None]
    losses, n = xnet.drop_losses_loop(state["params"]["head"]["output"], inter["xnet_hidden"],
                                      jnp.asarray(batch["label"]), jnp.asarray(membership))
    totals += np.asarray(losses) * np.asarray(n)
    counts += np.asarray(n)
  np.testing.assert_allclose(results["xnet"]["drop_losses"], totals / counts, rtol=1e-4)


def test_running_again_resumes_the_finished_runs(finished, capsys):
  config, workdir, results = finished
  steps = {name: json.loads((workdir / name / "results.json").read_text())["steps"]
           for name in ("baseline", "xnet", "em_match")}
  capsys.readouterr()
  again = main(config, workdir)
  assert capsys.readouterr().out.count("Resuming from step") == 3  # nothing trained from scratch
  assert {name: json.loads((workdir / name / "results.json").read_text())["steps"]
          for name in steps} == steps
  for name in ("baseline", "xnet", "em_match"):
    assert again[name]["test_accuracy"] == results[name]["test_accuracy"]
    np.testing.assert_allclose(again[name]["drop_losses"], results[name]["drop_losses"])


def test_config_errors_name_the_problem(tmp_path):
  c = tiny_config()
  c.xnet.categories = ("large", "Bald", "red")
  with pytest.raises(ConfigError, match="Bald"):
    main(c, tmp_path)
  c = tiny_config()
  c.xnet.categories = ("large", "red")
  with pytest.raises(ConfigError, match="one category per neuron"):
    main(c, tmp_path)
  c = tiny_config()
  c.xnet.ablations = ("max",)
  with pytest.raises(ConfigError, match="ablations"):
    main(c, tmp_path)
  assert not any(tmp_path.iterdir())  # refused before any data was loaded or written
  from runs.configs.shapes import get_config as shapes_config
  with pytest.raises(ConfigError, match="no section 'xnet'"):
    main(shapes_config("smoke"), tmp_path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds(variant):
  c = get_config(variant)
  assert c.model.name == "xnet" and len(c.xnet.categories) == c.model.num_neurons
  with pytest.raises(ValueError, match="Unknown variant"):
    get_config("cifar")


def test_the_celeba_local_variant_reads_the_paper_task_from_the_subset(monkeypatch):
  from tests.conftest import shared_data
  monkeypatch.setenv("XJAX_DATA_DIR", str(shared_data("celeb_a").parent))
  config = get_config("celeba_local")
  train = load_sources(config.data, ("train",))["train"]
  assert train.info.class_names == ("not_Young", "Young")
  columns = run_xnet.category_columns(config, train.info)
  batch = train.read_batch(np.arange(64))
  young = train.info.attribute_names.index("Young")
  np.testing.assert_array_equal(batch["label"], batch["attributes"][:, young])
  assert batch["image"].shape == (64, 64, 64, 3)
  assert [train.info.attribute_names[c] for c in columns] == ["5_o_Clock_Shadow", "Bald", "Bangs"]
