"""The methods x metrics engine of runs.evaluate, on a linear model whose right answers are known.

The model is `f(x) = x . W` on 4x4 one-channel images, 2 classes, and W_c is planted: class 0
reads only the top-left 2x2 block and class 1 only the bottom-right one. Gradient x input is then
the exact contribution of each pixel, its relevance lies wholly on the block of its class (the
ground-truth mask), and the random control scores the chance level. The batched engine is
checked against the metrics called directly on the whole batch (7 examples in batches of 3: the
last batch padded), and the table against numpy.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.experiments import scoring
from xjax.experiments.explain import localisation_scores
from xjax.explain.methods import get_method
from xjax.metrics import (
  METRICS,
  RandomisationResult,
  attribution_localisation,
  pixel_flipping,
  pointing_game,
  relevance_mass_accuracy,
)
from xjax.metrics.insertion_deletion import InsertionDeletionResult
from xjax.metrics.region_perturbation import RegionPerturbationResult

H = W = 4
N = 7
RNG = np.random.default_rng(0)
X = RNG.uniform(0.1, 1.0, size=(N, H, W, 1)).astype(np.float32)
TARGETS = np.array([0, 1, 0, 1, 1, 0, 1], np.int32)
BLOCKS = np.zeros((2, H, W), bool)
BLOCKS[0, :2, :2] = True
BLOCKS[1, 2:, 2:] = True
WEIGHTS = np.stack([BLOCKS[c].reshape(-1) * RNG.uniform(1, 2, H * W) for c in range(2)],
                   1).astype(np.float32)
MASK = BLOCKS[TARGETS]


def linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


METHODS = {spec: get_method(spec) for spec in ("gradient_x_input", "saliency", "random")}
PLANS = scoring.plan_metrics({"relevance_mass_accuracy": {}, "pixel_flipping": {"steps": 4},
                              "pointing_game": {}})


@pytest.fixture(scope="module")
def scored():
  return scoring.score_methods(linear, WEIGHTS, X, TARGETS, METHODS, PLANS,
                               ground_truth={"mask": MASK}, batch_size=3, log=lambda _: None)


def test_plans_follow_the_registry_order_and_say_what_they_need():
  assert [p.name for p in PLANS] == ["pixel_flipping", "pointing_game", "relevance_mass_accuracy"]
  needs = {p.name: p.needs for p in PLANS}
  assert needs == {"pixel_flipping": ("key",), "pointing_game": ("mask",),
                   "relevance_mass_accuracy": ("mask",)}
  reruns = {p.name: p for p in scoring.plan_metrics(["max_sensitivity", "random_logit"])}
  assert all(p.reruns_method for p in reruns.values())
  assert reruns["random_logit"].needs == ("key", "explain", "num_classes")


def test_batched_scores_equal_the_metrics_on_the_whole_batch(scored):
  scores, fractions = scored
  for spec, method in METHODS.items():
    relevance = np.asarray(method(linear, WEIGHTS, X, TARGETS))
    np.testing.assert_allclose(scores[spec].relevance, relevance, rtol=1e-6)
    flipped = pixel_flipping(linear, WEIGHTS, X, TARGETS, relevance, steps=4)
    columns = scores[spec].columns
    np.testing.assert_allclose(columns["pixel_flipping"], flipped.area, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores[spec].curves["pixel_flipping"]["curves"], flipped.curves,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        columns["pointing_game"], pointing_game(linear, WEIGHTS, X, TARGETS, relevance,
                                                mask=MASK))
    np.testing.assert_allclose(
        columns["relevance_mass_accuracy"],
        relevance_mass_accuracy(linear, WEIGHTS, X, TARGETS, relevance, mask=MASK), rtol=1e-6)
  np.testing.assert_allclose(fractions["pixel_flipping"], [0, .25, .5, .75, 1])


def test_planted_truth_gradient_x_input_localises_perfectly_and_beats_random(scored):
  scores, _ = scored
  exact = scores["gradient_x_input"].columns
  # Every pixel outside the class's block has weight 0: all relevance is on the mask.
  np.testing.assert_allclose(exact["relevance_mass_accuracy"], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(exact["pointing_game"], 1.0)
  chance = scores["random"].columns
  assert chance["relevance_mass_accuracy"].mean() < 0.5  # the block is 1/4 of the image
  # Flipping the true contributions first drops the logit fastest: the smallest area.
  assert exact["pixel_flipping"].mean() < chance["pixel_flipping"].mean()


def test_runs_explain_scores_the_heatmaps_as_runs_evaluate_does(scored):
  # runs.explain scores the channel-summed heatmaps with `localisation_scores`; runs.evaluate
  # scores the relevance with the engine (jit, in batches): one answer for the same heatmaps.
  scores, _ = scored
  for s in scores.values():
    shares, hits = localisation_scores(s.relevance.sum(-1), MASK.astype(np.uint8))
    np.testing.assert_array_equal(hits, s.columns["pointing_game"])
    np.testing.assert_allclose(shares, attribution_localisation(None, None, X, None, s.relevance,
                                                                mask=MASK), rtol=1e-6)


def test_ties_of_the_maximum_are_scored_alike_by_runs_explain_and_runs_evaluate():
  heat = np.zeros((3, 4, 4), np.float32)  # 0: constant, every pixel is a maximum
  heat[1:, 0, 0] = heat[1:, 3, 3] = 1.0  # 1, 2: two maxima, (0, 0) first in row-major order
  masks = np.zeros((3, 4, 4), np.uint8)
  masks[0, 2, 1] = 1  # one pixel: a constant map hits it (the first argmax, (0, 0), would not)
  masks[1, 3, 3] = 1  # the second maximum inside, the first outside: a hit
  masks[2, 1:3, 1:3] = 1  # neither maximum inside: a miss
  shares, hits = localisation_scores(heat, masks)
  np.testing.assert_array_equal(hits, [1.0, 1.0, 0.0])
  np.testing.assert_allclose(shares, [0.0, 0.5, 0.0], rtol=1e-6)
  x = heat[..., None]
  np.testing.assert_array_equal(hits, pointing_game(None, None, x, None, heat, mask=masks))
  # The evaluate engine, with a "method" that returns the heatmaps themselves (x), in batches.
  engine, _ = scoring.score_methods(
      lambda w, x: x.reshape(len(x), -1) @ w, np.ones((16, 2), np.float32), x,
      np.zeros(3, np.int32), {"heat": lambda apply_fn, params, x, target: x},
      scoring.plan_metrics(["pointing_game", "attribution_localisation"]),
      ground_truth={"mask": masks}, batch_size=2, log=lambda _: None)
  np.testing.assert_array_equal(engine["heat"].columns["pointing_game"], hits)
  np.testing.assert_allclose(engine["heat"].columns["attribution_localisation"], shares,
                             rtol=1e-6)


def test_mean_table_and_markdown(scored):
  scores, _ = scored
  table = scoring.mean_table({spec: s.columns for spec, s in scores.items()})
  values = scores["random"].columns["pixel_flipping"]
  entry = table["random"]["pixel_flipping"]
  assert entry["n"] == N
  np.testing.assert_allclose(entry["mean"], values.mean(), rtol=1e-6)
  np.testing.assert_allclose(entry["sem"], values.std(ddof=1) / np.sqrt(N), rtol=1e-5)
  text = scoring.markdown_table(table)
  lines = text.splitlines()
  assert lines[0] == ("| method | pixel_flipping ↓ | pointing_game ↑ | relevance_mass_accuracy "
                      "↑ |")
  assert lines[2].startswith("| gradient_x_input | ") and "1 ± 0" in lines[2]
  assert len(lines) == 2 + len(METHODS)


def test_score_columns_of_each_result_kind():
  pf = pixel_flipping(linear, WEIGHTS, X[:2], TARGETS[:2], X[:2], steps=2)
  columns, curves = scoring.score_columns("pixel_flipping", pf)
  assert list(columns) == ["pixel_flipping"] and set(curves) == {"curves", "fractions"}
  assert curves["fractions"].shape == (2, 3)
  columns, curves = scoring.score_columns("sparseness", jnp.ones(2))
  assert list(columns) == ["sparseness"] and curves == {}


def test_every_metric_declares_its_score_and_curves():
  # scoring reads these instead of lists of field names of its own.
  for name in METRICS:
    about = METRICS.metadata(name)
    assert {"description", "higher_is_better", "score"} <= set(about), name
    assert about["score"] is None or isinstance(about["score"], str), name
    assert all(isinstance(field, str) for field in about.get("curves", ())), name


def test_score_columns_follow_the_registration():
  b, steps = 2, 3
  curve = jnp.arange(b * (steps + 1), dtype=jnp.float32).reshape(b, steps + 1)
  fractions = jnp.linspace(0, 1, steps + 1)
  region = RegionPerturbationResult(curve, fractions, jnp.ones(b), jnp.full(b, 2.0))
  columns, curves = scoring.score_columns("region_perturbation", region)
  assert list(columns) == ["region_perturbation", "region_perturbation.aopc"]
  np.testing.assert_array_equal(columns["region_perturbation.aopc"], [2.0, 2.0])
  assert set(curves) == {"curves", "fractions"} and curves["fractions"].shape == (b, steps + 1)
  both = InsertionDeletionResult(curve, -curve, fractions, jnp.ones(b), jnp.zeros(b))
  columns, curves = scoring.score_columns("insertion_deletion", both)
  assert list(columns) == ["insertion_deletion", "insertion_deletion.deletion_area"]
  np.testing.assert_array_equal(columns["insertion_deletion"], [1.0, 1.0])
  assert set(curves) == {"insertion", "deletion", "fractions"}
  # The randomisation's similarity is (steps, B): its score is the last step's, each step a curve
  # point against the step number.
  similarity = jnp.array([[0.9, 0.8], [0.5, 0.4], [0.1, 0.2]])
  randomised = RandomisationResult(similarity, ("a", "b", "c"))
  columns, curves = scoring.score_columns("model_parameter_randomisation", randomised)
  np.testing.assert_allclose(columns["model_parameter_randomisation"], [0.1, 0.2])
  np.testing.assert_allclose(curves["similarity"], similarity.T)
  np.testing.assert_array_equal(curves["fractions"], [[1, 2, 3], [1, 2, 3]])
  assert scoring.direction("region_perturbation.aopc") == "↑"
  assert scoring.direction("insertion_deletion.deletion_area") == "↓"
  assert scoring.direction("insertion_deletion") == "↑" and scoring.direction("completeness") == ""


def test_errors_name_the_problem():
  with pytest.raises(ConfigError, match="pointing_game, relevance_mass_accuracy need "
                     "ground-truth masks"):
    scoring.score_methods(linear, WEIGHTS, X, TARGETS, METHODS, PLANS, log=lambda _: None)
  with pytest.raises(ConfigError, match=r"targets must be classes in \[0, 2\); got values in "
                     r"\[0, 2\]"):
    scoring.score_methods(linear, WEIGHTS, X, np.where(TARGETS == 1, 2, 0), METHODS, PLANS,
                          ground_truth={"mask": MASK}, log=lambda _: None)

  def broken(apply_fn, params, x, target):
    return jnp.full(x.shape, jnp.nan).at[:, 0].set(0)

  with pytest.raises(ConfigError, match=r"method broken: relevance holds NaN or infinity in "
                     r"example\(s\) \[0, 1, 2, 3, 4, 5, 6\]"):
    scoring.score_methods(linear, WEIGHTS, X, TARGETS, {"broken": broken}, PLANS,
                          ground_truth={"mask": MASK}, log=lambda _: None)
  with pytest.raises(ConfigError, match="Unknown metric 'aopc'"):
    scoring.plan_metrics(["aopc"])
  with pytest.raises(ConfigError, match=r"does not take the options \['step'\]"):
    scoring.plan_metrics({"pixel_flipping": {"step": 3}})
  with pytest.raises(ConfigError, match="No metrics given"):
    scoring.plan_metrics([])
