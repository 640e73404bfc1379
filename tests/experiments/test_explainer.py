"""The explainer experiment on its smoke config: two runs, Tables 2-4's numbers, figure, errors."""

from __future__ import annotations

import numpy as np
import pytest

from runs.configs import explainer as explainer_config
from tests.experiments.named_run import run_and_read, shared_run
from xjax.errors import ConfigError, DataNotFoundError
from xjax.experiments.registry import get_experiment
from xjax.experiments.runner import run_experiment
from xjax.train import checkpoint

smoke = shared_run("explainer", explainer_config.get_config, "smoke")


def test_two_runs_and_the_papers_numbers(smoke):
  workdir, results = smoke
  result = results["explainer"]
  assert 0 < result["p"] < 1
  for name in ("dense1", "dense2"):
    assert result["relative_reconstruction_error"][name] >= 0
  for who in ("performer", "explainer"):
    value = result[f"location_instability_{who}"]
    assert 0 <= value < 1  # a share of the diagonal
    per_part = np.asarray(result[f"location_instability_{who}_per_part"], dtype=float)
    assert per_part.shape == (5,)  # the five shapes parts
  checks = results["checks"]
  assert checks["head_accuracy_drop"] == pytest.approx(
      results["performer"]["test_accuracy"] - result["test_accuracy"])
  assert checks["instability_reduction"] == pytest.approx(
      1 - result["location_instability_explainer"] / result["location_instability_performer"])
  for figure in ("fig3_filters.png", "fig3_maps.png", "fig4_gradcam.png"):
    assert (workdir / "figures" / figure).stat().st_size > 0
  assert "| p (Table 4) |" in (workdir / "results.md").read_text()


def test_the_performer_is_frozen_and_the_explainer_reads_it(smoke):
  workdir, _ = smoke
  performer = checkpoint.load_variables(workdir / "performer")["params"]
  explainer = checkpoint.load_variables(workdir / "explainer")["params"]
  assert set(explainer) == {"performer", "encoder", "fc_dec_1", "fc_dec_2"}
  for name in performer:
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(explainer["performer"][name][leaf], performer[name][leaf])


def test_a_rerun_reads_both_runs_back(smoke):
  workdir, results = smoke
  (workdir / "results.json").unlink()
  again = run_and_read("explainer", explainer_config.get_config("smoke"), workdir)
  for key in ("p", "location_instability_performer", "location_instability_explainer"):
    assert again["explainer"][key] == results["explainer"][key]


@pytest.mark.parametrize("change, error, message", [
    (dict(layer="conv9"), ConfigError, "no layer 'conv9' to explain; its layers: conv_maps"),
    (dict(reconstruct=("dense1", "dense3")), ConfigError,
     r"asked for \('dense1', 'dense3'\), the performer's dense layers are dense1, dense2 "
     r"\(no 'dense3'\)"),
    (dict(performer_workdir="/nonexistent/performer"), DataNotFoundError,
     "/nonexistent/performer has no trained performer"),
    (dict(mask="gaussian"), ConfigError, "explainer.mask must be one of argmax, centroid, none"),
])
def test_bad_settings_fail_before_training(tmp_path, change, error, message):
  config = explainer_config.get_config("smoke")
  config.explainer.update(change)
  with pytest.raises(error, match=message) as raised:
    run_experiment(get_experiment("explainer"), config, tmp_path)
  assert "\n" not in str(raised.value)
  assert not (tmp_path / "performer").exists()


def test_a_performer_with_one_dense_layer_is_a_one_line_error(tmp_path):
  config = explainer_config.get_config("smoke")
  config.model.dense = (16,)
  with pytest.raises(ConfigError, match="the performer's dense layers are dense1 "
                                        r"\(no 'dense2'\)"):
    run_experiment(get_experiment("explainer"), config, tmp_path)


def test_the_cub_configs_build():
  for variant in ("cub_local", "cub"):
    config = explainer_config.get_config(variant)
    assert config.explainer.parts == (0, 5, 13)  # back, forehead, tail
    assert config.data.options["crop"] == "bbox"


def test_gradcam_at_module_by_hand():
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from xjax.experiments.explainer import gradcam_at_module

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      maps = nn.relu(nn.Conv(2, (3, 3), name="c")(x))
      return nn.Dense(3, name="d")(maps.mean(axis=(1, 2))), {}

  model = Tiny()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  target = jnp.array([2, 0])
  got = np.asarray(gradcam_at_module(model, variables, x, target, "c"))
  # By hand: out = conv(x); d logit_t / d out_hwk = [out_hwk > 0] W_kt / 36; alpha_k its mean over
  # positions; the map relu(sum_k alpha_k relu(out_k)) (6x6 already: no resize).
  out = np.asarray(nn.Conv(2, (3, 3)).apply({"params": variables["params"]["c"]}, x))
  w = np.asarray(variables["params"]["d"]["kernel"])[:, np.asarray(target)].T  # (B, K)
  alpha = ((out > 0) * w[:, None, None, :] / 36).mean(axis=(1, 2))
  expected = np.maximum(np.einsum("bk,bhwk->bhw", alpha, np.maximum(out, 0)), 0)
  assert expected.max() > 0
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
