"""runs.evaluate end to end: the ground-truth benchmark on its `smoke` config (tiny shapes, 3
methods), its files against an independent computation of the second-object share, the same
scoring on a trained workdir (`evaluate_workdir`), and the errors of both commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from runs.configs.evaluate import METHODS, METRICS, get_config
from tests.conftest import REPO
from xjax.data import pipeline
from xjax.errors import ConfigError
from xjax.experiments import run_experiment
from xjax.experiments.evaluate import EvaluateProtocol, evaluate_workdir, two_object_source
from xjax.explain import heatmaps
from xjax.explain.gradients import saliency
from xjax.explain.methods import get_method
from xjax.nn.registry import logits_fn
from xjax.train.checkpoint import load_variables
from xjax.train.loop import build_model

N = 8


def main(config, workdir):
  return run_experiment(EvaluateProtocol(), config, workdir)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluate")
  config = get_config("smoke")
  return config, workdir, main(config, workdir)


def test_results_hold_the_table_and_the_second_object_shares(finished):
  config, workdir, results = finished
  saved = json.loads((workdir / "results.json").read_text())
  base, tuned = saved["baseline"], saved["block_l1"]
  methods = list(config.evaluate.methods)
  assert list(base["table"]) == methods and base["num_examples"] == N
  for spec in methods:
    row = base["table"][spec]
    assert set(METRICS) <= set(row)  # every metric of the config, plus extra columns
    assert {"region_perturbation.aopc", "insertion_deletion.deletion_area"} <= set(row)
    assert all(entry["n"] == N for entry in row.values())
    for metric in ("pointing_game", "attribution_localisation", "relevance_rank_accuracy"):
      assert 0 <= row[metric]["mean"] <= 1
    for run in (base, tuned):
      assert 0 <= run["second_object"][spec] <= 1
  assert "table" not in tuned  # the full table is the baseline's
  tuned_config = json.loads((workdir / "block_l1" / "config.json").read_text())
  assert tuned_config["train"]["init_from"] == str(workdir / "baseline")
  assert tuned_config["losses"]["block_l1"]["weight"] == config.evaluate.block_l1
  assert set(saved["checks"]) >= {"pointing_game_above_random",
                                  "second_object_share_rises_with_block_l1",
                                  "second_object_abs_share_rises_with_block_l1"}
  text = (workdir / "results.md").read_text()
  assert "| method | pixel_flipping ↓ |" in text and "| saliency |" in text
  assert "| method | R+ share, baseline | R+ share, block-wise L1 | abs share, baseline |" in text
  for name in ("curves", "heatmaps", "second_baseline_heatmaps", "second_block_l1_heatmaps"):
    assert (workdir / "figures" / f"{name}.png").stat().st_size > 5000


def test_second_object_share_equals_an_independent_computation(finished):
  """The share of saliency's (positive) map on the second object, recomputed with numpy."""
  config, workdir, results = finished
  source = two_object_source(config)
  batch = source.read_batch(np.arange(N))
  x = pipeline.normalize(batch["image"], *pipeline.normalization_constants(source.info, "unit"))
  for run in ("baseline", "block_l1"):
    variables = load_variables(workdir / run, "best")
    apply_fn = logits_fn(build_model(config, source.info))
    maps = np.asarray(saliency(apply_fn, variables, x, batch["second_label"])).sum(-1)
    share = (maps * batch["second_mask"]).sum((1, 2)) / maps.sum((1, 2))
    np.testing.assert_allclose(results[run]["second_object"]["saliency"], share.mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(
        share, np.asarray(heatmaps.relevance_share(maps, batch["second_mask"])), rtol=1e-5)
    scores = np.load(workdir / run / "scores.npz")
    np.testing.assert_allclose(scores["second/saliency/attribution_localisation"], share,
                               rtol=1e-4)
    np.testing.assert_array_equal(scores["second_labels"], batch["second_label"])
    # Saliency is |gradient| >= 0: the share of |R| is the share of R+.
    np.testing.assert_allclose(scores["second/saliency/abs_share"], share, rtol=1e-4)
    lrp = np.asarray(get_method("lrp:epsilon_plus")(apply_fn, variables, x,
                                                    batch["second_label"])).sum(-1)
    abs_share = (np.abs(lrp) * batch["second_mask"]).sum((1, 2)) / np.abs(lrp).sum((1, 2))
    np.testing.assert_allclose(scores["second/lrp:epsilon_plus/abs_share"], abs_share,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(results[run]["second_object_abs"]["lrp:epsilon_plus"],
                               abs_share.mean(), rtol=1e-4)
  scores = np.load(workdir / "baseline" / "scores.npz")
  assert scores["saliency/pixel_flipping/curves"].shape == (N, 17)
  np.testing.assert_allclose(scores["pixel_flipping/fractions"], np.linspace(0, 1, 17),
                             atol=1e-6)


def test_evaluate_workdir_scores_a_trained_run_into_its_evaluation_folder(finished, tmp_path):
  config, workdir, results = finished
  run = workdir / "baseline"
  before = (run / "results.json").read_text()
  out = evaluate_workdir(run, ["saliency", "random"], None, n=N, batch_size=4,
                         options={"pixel_flipping": {"steps": 4},
                                  "pointing_game": {"tolerance": 2.0}}, log=lambda _: None)
  assert (run / "results.json").read_text() == before  # the run's own results untouched
  saved = json.loads((run / "evaluation" / "results.json").read_text())
  assert saved == json.loads(json.dumps(out))
  # Shapes has masks: the default metrics include localisation.
  assert {"pointing_game", "pixel_flipping", "complexity"} <= set(saved["table"]["saliency"])
  assert saved["metrics"]["pixel_flipping"] == {"steps": 4}
  # The same images and metric (and tolerance) as the experiment's table, in other batches.
  np.testing.assert_allclose(saved["table"]["saliency"]["pointing_game"]["mean"],
                             results["baseline"]["table"]["saliency"]["pointing_game"]["mean"])
  arrays = np.load(run / "evaluation" / "scores.npz")
  assert arrays["saliency/pixel_flipping"].shape == (N,)
  assert arrays["targets"].shape == (N,)
  # The per-example heatmaps and curves, streamed to disk in chunks.
  assert saved["devices"] == 1 and saved["chunks"]["count"] == 1
  chunk = np.load(run / "evaluation" / "chunks" / "chunk_000000.npz")
  assert chunk["saliency/heatmap"].shape == (N, 32, 32)
  assert chunk["saliency/pixel_flipping/curves"].shape == (N, 5)
  assert (run / "evaluation" / "figures" / "curves.png").exists()
  assert "| saliency |" in (run / "evaluation" / "results.md").read_text()


def test_errors_are_one_line_before_any_work(finished, tmp_path):
  config, workdir, results = finished
  run = workdir / "baseline"
  with pytest.raises(ConfigError, match="Unknown metric 'flips'"):
    evaluate_workdir(run, ["saliency"], ["flips"])
  with pytest.raises(ConfigError, match="options given for metrics that are not scored: "
                     "pointing_game"):
    evaluate_workdir(run, ["saliency"], ["pixel_flipping"], options={"pointing_game": {}})
  with pytest.raises(ConfigError, match="Unknown explanation method 'deconvnet'"):
    evaluate_workdir(run, ["deconvnet"], ["pixel_flipping"])
  bad = get_config("smoke")
  bad.evaluate.metrics = {"pixel_flipping": {"steps": 0}}
  with pytest.raises(ConfigError, match="steps"):
    main(bad, tmp_path / "bad")
  assert not (tmp_path / "bad" / "baseline").exists()  # failed before training
  for args, message in (
      (["--workdir", str(run), "--metrics", "pixel_flipping", "--options", "steps=3"],
       "error: --options takes METRIC.OPTION=VALUE items; got 'steps=3'."),
      (["--workdir", str(run), "--metrics", "pointing_game,flips"],
       "error: Unknown metric 'flips'")):
    done = subprocess.run([sys.executable, "-m", "runs.evaluate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr


def test_the_default_config_scores_every_method_family():
  c = get_config("shapes")
  assert set(c.evaluate.methods) == set(METHODS)
  families = {spec.split(":")[0] for spec in METHODS}
  assert families == {"saliency", "gradient_x_input", "smoothgrad", "integrated_gradients", "lrp",
                      "gradcam", "excitation_backprop", "contrastive_excitation_backprop",
                      "random"}
  assert "lrp:dtd" in METHODS
  assert set(get_config("shapes,full").evaluate.metrics) > set(METRICS)
  with pytest.raises(ValueError, match="Unknown variant"):
    get_config("mnist")
