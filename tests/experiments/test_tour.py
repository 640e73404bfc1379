"""The tour (the README's first command) on its smoke config: results against the saved arrays."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def toured(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tour")
  result = subprocess.run([sys.executable, "-m", "runs.tour", "--config=runs/configs/tour.py:smoke",
                           f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result


def test_every_method_is_scored_against_the_object_masks(toured):
  workdir, result = toured
  results = json.loads((workdir / "results.json").read_text())
  methods = results["model"]["methods"]
  assert list(methods) == ["saliency", "lrp:dtd", "gradcam"]
  arrays = np.load(workdir / "model" / "explanations.npz")
  mask = arrays["mask"].astype(bool)
  for spec, scores in methods.items():
    heatmap = arrays[spec.replace(":", "_")]
    positive = np.maximum(heatmap, 0)
    share = (positive * mask).sum((1, 2)) / np.maximum(positive.sum((1, 2)), 1e-30)
    np.testing.assert_allclose(scores["mask_share"], share.mean(), rtol=1e-5)
    hits = [m[h == h.max()].any() for h, m in zip(heatmap, mask)]  # any maximum hits (ties)
    assert scores["pointing_game"] == pytest.approx(np.mean(hits))
    assert scores["seconds_per_image"] > 0
  dtd = arrays["lrp_dtd_relevance"].reshape(4, -1).sum(-1) / arrays["target_logits"]
  assert methods["lrp:dtd"]["conservation"] == pytest.approx(dtd.mean(), rel=1e-5)
  assert results["checks"]["conservation_error_lrp:dtd"] < 1e-3
  assert results["model"]["object_share_of_pixels"] == pytest.approx(mask.mean())


def test_the_table_and_the_side_by_side_figure_are_written(toured):
  workdir, result = toured
  text = (workdir / "results.md").read_text()
  assert "## Each method against the ground truth" in text
  assert all(f"| {m} |" in text for m in ("saliency", "lrp:dtd", "gradcam"))
  assert (workdir / "figures" / "methods.png").stat().st_size > 5000
  assert (workdir / "model" / "figures" / "training_curves.png").exists()
  assert '"workdir"' in result.stdout.splitlines()[-1]
