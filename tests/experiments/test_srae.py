"""The srae experiment on its smoke config: Table 1's numbers, the figures, rerun and errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from runs.configs import srae as srae_config
from tests.experiments.named_run import run_and_read, shared_run
from xjax.errors import ConfigError
from xjax.experiments.registry import get_experiment
from xjax.experiments.runner import run_experiment
from xjax.experiments.srae import chosen_classes
from xjax.metrics.locality import box_masks

METHODS = ("srae", "nn", "sae", "z", "excitation_backprop")


smoke = shared_run("srae", srae_config.get_config, "smoke")


def test_table1_numbers_for_every_method_and_class(smoke):
  workdir, results = smoke
  result = results["network"]
  classes = result["classes"]
  assert classes == [0, 1, 2]
  assert set(result["locality"]) == set(METHODS)
  for method in METHODS:
    values = np.asarray(result["locality"][method])
    assert values.shape == (3,)
    # An entropy over the 5 shapes parts: in [0, log 5].
    assert np.all((values >= 0) & (values <= np.log(5) + 1e-6)), (method, values)
    points = np.asarray(result["pointing_game"][method])
    assert np.all((points >= 0) & (points <= 1))
  for method in ("srae", "nn", "sae"):
    for split in ("train", "test"):
      assert np.all(np.asarray(result["f_reg"][method][split]) >= 0)
    entropies = np.asarray(result["feature_entropies"][method], dtype=float)  # None: NaN
    assert entropies.shape == (3, 3)  # classes x k x-features
    np.testing.assert_allclose(np.nanmean(entropies, 1), result["locality"][method], rtol=1e-6)
  assert np.asarray(result["feature_entropies"]["excitation_backprop"]).shape == (3, 1)
  checks = results["checks"]
  assert checks["srae_locality_below_nn"] == (np.mean(result["locality"]["srae"])
                                              < np.mean(result["locality"]["nn"]))
  markdown = (workdir / "results.md").read_text()
  assert "| Locality ↓, paper | 1.9694 | 2.3078 | 2.1492 | 1.9623 | 2.4934 |" in markdown
  for figure in ("fig2_important_xfeatures.png", "fig1b_xfeatures.png"):
    assert (workdir / "figures" / figure).stat().st_size > 0
  for method in ("srae", "nn", "sae"):
    assert (workdir / "modules" / method).is_dir()


def test_a_rerun_reads_the_modules_back_and_a_retrained_method_is_the_same(smoke):
  workdir, results = smoke
  (workdir / "results.json").unlink()
  shutil.rmtree(workdir / "modules" / "nn")  # as if killed before nn's modules were saved
  again = run_and_read("srae", srae_config.get_config("smoke"), workdir)
  np.testing.assert_allclose(again["network"]["f_reg"]["nn"]["test"],
                             results["network"]["f_reg"]["nn"]["test"], rtol=1e-5)
  for method in METHODS:
    np.testing.assert_allclose(again["network"]["locality"][method],
                               results["network"]["locality"][method], rtol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(classes=(0, 7)), r"outside \[0, 3\)"),
    (dict(layer="fc6"), "no layer 'fc6'; its layers: conv_maps, features"),
    (dict(methods=("nn",)), "must include 'srae'"),
    (dict(mse="median"), "srae.mse must be one of ema, batch"),
])
def test_bad_settings_fail_before_training(tmp_path, change, message):
  config = srae_config.get_config("smoke")
  config.srae.update(change)
  with pytest.raises(ConfigError, match=message):
    run_experiment(get_experiment("srae"), config, tmp_path)
  assert not (tmp_path / "network").exists()


def test_data_without_part_annotations_is_a_one_line_error(tmp_path):
  class NoParts:  # a source as CUB without parts/part_locs.txt gives it
    def __init__(self, source):
      self.source, self.info = source, source.info

    def __len__(self):
      return len(self.source)

    def read_batch(self, indices):
      record = self.source.read_batch(indices)
      return {k: v for k, v in record.items() if k not in ("keypoints", "keypoints_visible")}

  from xjax.train.loop import load_sources
  config = srae_config.get_config("smoke")
  sources = {k: NoParts(v) for k, v in load_sources(config.data).items()}
  with pytest.raises(ConfigError, match="needs part annotations; shapes gives no keypoints, "
                                        "keypoints_visible") as error:
    get_experiment("srae").runs(config, sources)
  assert "\n" not in str(error.value)


def test_chosen_classes():
  assert chosen_classes(None, 4, 0) == [0, 1, 2, 3]
  drawn = chosen_classes(3, 200, 0)
  assert len(set(drawn)) == 3 and drawn == sorted(drawn) and drawn == chosen_classes(3, 200, 0)
  with pytest.raises(ConfigError, match="has 4"):
    chosen_classes(5, 4, 0)
  with pytest.raises(ConfigError, match=r"outside \[0, 4\)"):
    chosen_classes((-1,), 4, 0)


def test_box_masks_by_hand():
  masks = box_masks(np.array([[1.0, 0.0, 3.0, 2.0]]), 3, 4)
  # Pixel centres (j + 0.5, i + 0.5) inside x in [1, 3], y in [0, 2]: columns 1, 2; rows 0, 1.
  expected = np.zeros((1, 3, 4), bool)
  expected[0, :2, 1:3] = True
  np.testing.assert_array_equal(masks, expected)


def test_the_cub_configs_build():
  for variant in ("cub_local", "cub"):
    config = srae_config.get_config(variant)
    assert config.srae.layer == "dense1" and config.data.options["crop"] == "bbox"
  assert srae_config.get_config("cub").srae.classes == 30
  assert srae_config.get_config("cub_local").data.options["annotation_scale"] == 0.25
