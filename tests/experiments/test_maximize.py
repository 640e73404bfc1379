"""The maximize experiment on its smoke config: prototypes, heatmaps and pixel flipping."""

from __future__ import annotations

import numpy as np
import pytest

from runs.configs import maximize as maximize_config
from tests.experiments.named_run import shared_run
from xjax.errors import ConfigError
from xjax.experiments.maximize import nearest_distances
from xjax.experiments.registry import get_experiment
from xjax.experiments.runner import run_experiment

# In process (the command line's own path is `runs.cli`, tested with the other experiments);
# that a second run resumes the three trained runs is the runner's, tested there and, for
# generative models, in tests/train/test_generative.py.
maximized = shared_run("maximize", maximize_config.get_config, "shapes,smoke")


def test_three_runs_three_priors_and_every_method(maximized):
  workdir, results = maximized
  for run in ("classifier", "expert", "generator"):
    assert (workdir / run / "checkpoints").is_dir()
  assert results["expert"].get("test_accuracy") is None  # a density model has no accuracy
  prototypes = results["prototypes"]
  for prior in ("l2", "expert", "code"):
    p = prototypes[prior]
    assert len(p["probability"]) == 4 and all(0 <= q <= 1 for q in p["probability"])
    assert p["min_probability"] == pytest.approx(min(p["probability"]))
    assert np.all(np.isfinite(p["log_density"])) and min(p["nearest_distance"]) > 0
  # The sweep at the configured lambda repeats the seeded optimization: the same numbers.
  (swept,) = prototypes["sweep"]["expert"]
  assert swept["weight"] == prototypes["expert"]["weight"] == 0.1
  for key in ("min_probability", "mean_log_density", "mean_nearest_distance"):
    assert swept[key] == pytest.approx(prototypes["expert"][key], rel=1e-5)
  assert "The same at other lambdas" in (workdir / "results.md").read_text()
  methods = results["explanations"]["methods"]
  assert list(methods) == ["sensitivity", "gradient_x_input", "lrp:alpha1_beta0",
                           "lrp:alpha2_beta1", "lrp:alpha3_beta2", "random"]
  assert all(np.isfinite(v["flipping_area"]) for v in methods.values())
  checks = results["checks"]
  assert checks["expert_more_natural_than_l2"] == (
      prototypes["expert"]["mean_nearest_distance"] < prototypes["l2"]["mean_nearest_distance"])
  for figure in ("prototypes.png", "explanations.png", "pixel_flipping.png"):
    assert (workdir / "figures" / figure).stat().st_size > 0
  assert "## Pixel flipping" in (workdir / "results.md").read_text()


def test_nearest_distance_by_hand():
  images = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]]).reshape(3, 1, 2, 1)
  labels = np.array([0, 0, 1])
  prototypes = np.array([[3.0, 0.0], [1.0, 2.0]]).reshape(2, 1, 2, 1)
  np.testing.assert_allclose(nearest_distances(prototypes, np.array([0, 1]), images, labels),
                             [3.0, 1.0])


def test_an_unknown_prior_fails_before_any_training(tmp_path):
  config = maximize_config.get_config("shapes,smoke")
  config.maximize.priors = ("l2", "gan")
  with pytest.raises(ConfigError, match="maximize.priors must name some of l2, expert, code"):
    run_experiment(get_experiment("maximize"), config, tmp_path)
  assert not any(tmp_path.iterdir())


def test_a_negative_swept_lambda_fails_before_any_training(tmp_path):
  config = maximize_config.get_config("shapes,smoke")
  config.maximize.sweep = dict(code=(0.1, -1.0))
  with pytest.raises(ConfigError, match="maximize.sweep lambdas must be >= 0; got code=-1.0"):
    run_experiment(get_experiment("maximize"), config, tmp_path)
  assert not any(tmp_path.iterdir())

