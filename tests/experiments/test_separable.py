"""The separable protocol end to end on its `shapes,smoke` config (tiny two-object shapes): the
protocol (fine-tuned from the baseline's best, stopped on the penalised validation loss),
results.json against an independent computation of d and of the second-object share, the
figures, resuming, and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runs.configs.separable import VARIANTS, get_config
from tests.conftest import ArraySource
from xjax.data import pipeline
from xjax.errors import ConfigError, DataNotFoundError
from xjax.experiments import run_experiment
from xjax.experiments import separable as run_separable
from xjax.explain import composites
from xjax.explain.lrp import lrp
from xjax.nn.registry import logits_fn
from xjax.train.checkpoint import load_params
from xjax.train.loop import build_model, load_sources

FIGURES = ("fig4_heatmaps", "fig5_heatmaps_ambiguous", "fig6_dense_weights")


def tiny_config():
  return get_config("shapes,smoke")


def main(config, workdir):
  return run_experiment(run_separable.SeparableProtocol(), config, workdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("separable")
  config = tiny_config()
  return config, workdir, main(config, workdir)


def test_results_hold_both_runs_and_the_fine_tuning_started_from_the_baseline(finished):
  config, workdir, results = finished
  saved = json.loads((workdir / "results.json").read_text())
  assert {"baseline", "lambda=1", "checks"} <= set(saved)
  for name in ("baseline", "lambda=1"):
    run = saved[name]
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["diffusion"] > 0
    assert 0.0 <= run["second_object_share"] <= 1.0 and run["num_examples"] == 40
  tuned = json.loads((workdir / "lambda=1" / "config.json").read_text())
  assert tuned["train"]["init_from"] == str(workdir / "baseline")
  assert tuned["losses"]["block_l1"]["weight"] == 1.0
  history = json.loads((workdir / "lambda=1" / "results.json").read_text())["history"]
  assert all(h["validation_loss"] > h["validation_cross_entropy"] + 1.0 for h in history)
  # The penalty pushed the positive weights into the class blocks.
  assert saved["lambda=1"]["off_block_positive_share"] < saved["baseline"][
      "off_block_positive_share"] - 0.2
  assert saved["checks"]["diffusion_ratio_lambda=1_over_baseline"] == pytest.approx(
      saved["lambda=1"]["diffusion"] / saved["baseline"]["diffusion"])
  text = (workdir / "results.md").read_text()
  assert "Table 2" in text and "Table 3" in text
  for name in FIGURES:
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 5000


def test_diffusion_and_second_object_share_equal_an_independent_computation(finished):
  """Eq. 7 and the share, from the checkpoint with explicit output relevances and numpy."""
  config, workdir, results = finished
  test = load_sources(config.data, ("test",))["test"]
  model = build_model(config, test.info)
  state = load_params(workdir / "lambda=1", "best")
  variables = {"params": state["params"]}
  batch = test.read_batch(np.arange(40))
  mean, std = pipeline.normalization_constants(test.info, "unit")
  x = pipeline.normalize(batch["image"], mean, std)
  apply_fn = logits_fn(model)
  logits = np.asarray(apply_fn(variables, x))
  order = np.argsort(-logits, axis=1)
  maps = []
  for rank in (0, 1):
    relevance = np.eye(4)[order[:, rank]] * logits  # onehot(c) * f(x): the other outputs 0
    r = lrp(apply_fn, variables, x, relevance, composites.dtd(0.0, 1.0))
    maps.append(np.asarray(r).sum(axis=-1))
  d_raw = np.mean([np.linalg.norm(a - b) for a, b in zip(*maps)])
  unit = [m / np.maximum(np.linalg.norm(m, axis=(1, 2), keepdims=True), 1e-30) for m in maps]
  d = np.mean(np.linalg.norm(unit[0] - unit[1], axis=(1, 2)))
  run = results["lambda=1"]
  np.testing.assert_allclose(run["diffusion_raw"], d_raw, rtol=1e-4)
  np.testing.assert_allclose(run["diffusion"], d, rtol=1e-4)
  assert 0 < run["diffusion"] <= 2
  top_logits = np.take_along_axis(logits, order[:, :2], 1)
  empty = np.stack([np.abs(m).sum((1, 2)) <= 1e-6 * np.abs(top_logits[:, i])
                    for i, m in enumerate(maps)], 1)
  np.testing.assert_allclose(run["empty_heatmap_share_top1_top2"], empty.mean(0))
  both = ~empty.any(1)
  assert run["nonempty_images"] == both.sum()
  np.testing.assert_allclose(run["diffusion_nonempty"], np.mean(
      np.linalg.norm(unit[0][both] - unit[1][both], axis=(1, 2))), rtol=1e-4)
  top2_logit = logits[np.arange(40), order[:, 1]]
  positive = np.maximum(maps[1] * np.sign(top2_logit)[:, None, None], 0)  # sign of the logit
  counted = positive.sum((1, 2)) > 0
  share = (positive * batch["second_mask"]).sum((1, 2))[counted] / positive.sum((1, 2))[counted]
  assert run["second_object_share_images"] == counted.sum() > 0
  np.testing.assert_allclose(run["second_object_share"], share.mean(), rtol=1e-4)
  np.testing.assert_allclose(run["top2_is_second_object"],
                             np.mean(order[:, 1] == batch["second_label"]))


def test_a_second_call_resumes_the_finished_runs_with_the_same_numbers(finished, capsys):
  config, workdir, results = finished
  steps = {name: json.loads((workdir / name / "results.json").read_text())["steps"]
           for name in ("baseline", "lambda=1")}
  again = main(config, workdir)
  out = capsys.readouterr().out
  assert out.count("Resuming from step") == 2 and "Starting from the best" not in out
  assert {name: json.loads((workdir / name / "results.json").read_text())["steps"]
          for name in steps} == steps  # no step trained again
  for name in ("baseline", "lambda=1"):
    assert again[name]["diffusion"] == pytest.approx(results[name]["diffusion"], rel=1e-6)
    assert again[name]["epochs_completed"] == results[name]["epochs_completed"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_builds_with_the_paper_protocol(variant):
  c = get_config(variant)
  assert c.separable.lambdas == (0.1, 0.5, 1.0, 5.0)
  assert c.train.early_stopping_patience == 3 and c.separable.num_examples == 1000
  assert set(run_separable.runs_of(c)) == {"baseline", "lambda=0.1", "lambda=0.5", "lambda=1",
                                          "lambda=5"}
  assert (c.data.augmentation["flip"], c.data.augmentation["shift"]) == (
      (True, 4) if variant == "cifar10" else (False, 0))


def test_bad_settings_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown variant"):
    get_config("svhn")
  c = get_config("shapes")
  c.separable.figure_lambda = 2.0
  with pytest.raises(ConfigError, match="figure_lambda"):
    main(c, tmp_path)
  c = get_config("shapes")
  c.separable.lambdas = (5.0, 0.1, 1.0, 1.0)  # sorted and deduplicated, as in Table 2
  c.separable.figure_lambda = 1.0
  assert list(run_separable.runs_of(c)) == ["baseline", "lambda=0.1", "lambda=1", "lambda=5"]
  c.separable.lambdas = (0.1, -1.0)
  with pytest.raises(ConfigError, match="positive"):
    main(c, tmp_path)
  c = get_config("mnist")
  c.data.data_dir = str(tmp_path / "no_tfds")
  with pytest.raises(DataNotFoundError, match="runs.prepare mnist"):
    main(c, tmp_path)


def test_fine_tuning_config_carries_the_penalty_options(tmp_path):
  c = get_config("fashion_mnist")
  c.separable.channel_blocks = (("dense1", 32),)
  c.separable.finetune_learning_rate = 1e-4
  tuned = run_separable.run_config(c, 0.5, 10)
  assert dict(tuned.losses.block_l1) == {"weight": 0.5, "num_classes": 10, "layers": None,
                                         "channel_blocks": (("dense1", 32),)}
  assert tuned.optimizer.learning_rate == 1e-4
  plan = run_separable.SeparableProtocol().runs(c, {"train": ArraySource(num_classes=10)})
  assert [run.init_from for run in plan] == [None, "baseline", "baseline", "baseline",
                                             "baseline"]
  base = run_separable.run_config(c, None, 10)
  assert set(base.losses) == {"cross_entropy"} and base.optimizer.learning_rate == 1e-3
  assert base.train.init_from is None and tuple(base.train.validation_penalties) == ()
  # Fig. 6 draws dense1's inputs sorted by the block of their channel.
  params = {"dense1": {"kernel": np.zeros((6272, 256))},
            "classifier": {"kernel": np.zeros((256, 10))}}
  blocks = run_separable.channel_input_blocks(c, params, 10)
  assert list(blocks) == ["dense1/kernel"]
  np.testing.assert_array_equal(blocks["dense1/kernel"][:64], np.tile(
      (np.arange(32) * 10) // 32, 2))
  assert tuple(tuned.train.validation_penalties) == ("block_l1",)
  c.separable.stop_on_penalised_loss = False  # stop on the validation cross-entropy alone
  assert tuple(run_separable.run_config(c, 0.5, 10).train.validation_penalties) == ()
