"""`runs.evaluate --workdir` on a text model: the planted-text task (ground-truth token masks),
explained at the word embeddings, scored per token, drawn as coloured tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runs.configs import planted_text
from xjax.errors import ConfigError
from xjax.experiments.evaluate import evaluate_workdir
from xjax.experiments.explain import load_examples
from xjax.train.loop import train_and_evaluate

N = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("planted_text")
  config = planted_text.get_config("bert,agreement,smoke")
  config.train.epochs = 1
  train_and_evaluate(config, workdir)
  return workdir


def test_a_text_run_is_scored_per_token_against_the_planted_tokens(trained):
  results = evaluate_workdir(trained, ["lrp:attn_lrp", "random"],
                             ["attribution_localisation", "faithfulness_area"], n=N,
                             batch_size=N, log=lambda _: None)
  table = results["table"]
  examples = load_examples(trained, n=N, log=lambda _: None)
  assert examples.x.shape[:2] == examples.images.shape == (N, 24)  # embeddings of the ids
  assert examples.x.ndim == 3
  # The random control puts the mask's share of the tokens on them (1 subject of 24).
  mask = np.asarray(examples.records["mask"], bool)
  assert table["random"]["attribution_localisation"]["mean"] == pytest.approx(
      mask.mean(), abs=0.05)
  assert table["lrp:attn_lrp"]["attribution_localisation"]["mean"] > 3 * mask.mean()
  scores = np.load(trained / "evaluation" / "scores.npz")
  assert scores["lrp:attn_lrp/attribution_localisation"].shape == (N,)
  assert (trained / "evaluation" / "figures" / "heatmaps.png").stat().st_size > 10_000
  assert json.loads((trained / "evaluation" / "results.json").read_text())["n"] == N


def test_an_image_metric_option_on_tokens_is_one_line(trained):
  with pytest.raises(ConfigError, match="blur"):
    evaluate_workdir(trained, ["random"], ["insertion_deletion"], n=N, batch_size=N,
                     log=lambda _: None)
