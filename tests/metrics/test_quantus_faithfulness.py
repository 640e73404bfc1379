"""Region perturbation and faithfulness correlation equal Quantus 0.6.0's on the same inputs.

Quantus (Hedstroem et al., JMLR 2023) runs a PyTorch model on channel-first (NCHW) numpy batches:
the model here is a bias-free `torch.nn.Linear` on the flattened NCHW image with the weights of
the JAX linear model on the flattened NHWC image, so both compute the same logits. Quantus's
"black" baseline is each image's minimum, given to xjax as the array `x.min((1, 2, 3))`.
Faithfulness correlation draws its subsets with `np.random`: they are recorded through a
`perturb_func` that wraps Quantus's own and handed to xjax's `subset_correlation`, so both
correlate over the same subsets.

Quantus and torch are optional; without them the module skips (Quantus is imported, with its
TensorFlow and zennit imports hidden (`benchmarks.quantus_loader.hidden`), by
`tests.metrics.test_quantus_parity`).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.quantus_loader import hidden
from tests.metrics.test_quantus_parity import quantus  # skips without quantus
from xjax.metrics.faithfulness_correlation import faithfulness_correlation, subset_correlation
from xjax.metrics.region_perturbation import region_perturbation

torch = pytest.importorskip("torch", reason="torch is not installed; Quantus needs a torch model")
from quantus.functions.perturb_func import batch_baseline_replacement_by_indices  # noqa: E402

B, K = 3, 4
RNG = np.random.default_rng(3)
TOLERANCE = dict(atol=1e-4, rtol=1e-4)


def call(metric, model, x, y, relevance, **options):
  """Quantus's scores (B,) as numpy; TensorFlow is hidden during the call too, as Quantus looks
  for it (`find_spec`) again when it wraps the model."""
  with hidden(("tensorflow", "keras")):
    scores = metric(model=model, x_batch=nchw(x), y_batch=y, a_batch=nchw(relevance),
                    channel_first=True, batch_size=B, **options)
  return np.asarray(scores, np.float64)


def nchw(a):
  return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def linear(w, x):
  return x.reshape(x.shape[0], -1) @ w


def models(height, width, channels):
  """The same linear model in JAX (NHWC flattening) and in torch (NCHW flattening)."""
  weights = RNG.normal(size=(height * width * channels, K)).astype(np.float32)
  layer = torch.nn.Linear(height * width * channels, K, bias=False)
  # Row (h, w, c) of the NHWC weights is column (c, h, w) of the NCHW layer.
  nchw_weights = weights.reshape(height, width, channels, K).transpose(3, 2, 0, 1)
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(nchw_weights.reshape(K, -1).copy()))
  return weights, torch.nn.Sequential(torch.nn.Flatten(), layer).eval()


def black(x):
  """Quantus's "black": each image's minimum."""
  return x.min((1, 2, 3), keepdims=True)


@pytest.mark.parametrize("height, width, channels, patch", [(4, 4, 2, 2), (5, 5, 1, 2),
                                                            (6, 7, 2, 4)])
def test_region_perturbation(height, width, channels, patch):
  # (5, 5) and (6, 7) leave partial patches that Quantus pads; distinct relevance, no ties.
  weights, model = models(height, width, channels)
  x = RNG.normal(size=(B, height, width, channels)).astype(np.float32)
  relevance = RNG.normal(size=x.shape).astype(np.float32)
  y = RNG.integers(0, K, B)
  result = region_perturbation(linear, weights, x, y, relevance, patch_size=patch,
                               baseline=black(x))
  steps = result.curves.shape[1] - 1
  assert steps == -(-height // patch) * -(-width // patch)
  metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=steps,
                                      normalise=False, disable_warnings=True)
  expected = call(metric, model, x, y, relevance, softmax=False)
  # Quantus records the drops f(x) - f(x^(k)), k = 1..steps.
  curves = np.asarray(result.curves)
  np.testing.assert_allclose(curves[:, :1] - curves[:, 1:], expected, **TOLERANCE)
  probability = region_perturbation(linear, weights, x, y, relevance, patch_size=patch,
                                    baseline=black(x), score="probability").curves
  expected = call(metric, model, x, y, relevance)  # softmax=True by default
  np.testing.assert_allclose(probability[:, :1] - probability[:, 1:], expected, **TOLERANCE)


def run_quantus_correlation(model, x, y, relevance, subset_size, num_samples, baseline):
  """Quantus's scores (B,) and the subsets it drew, (num_samples, B, subset_size)."""
  recorded = []

  def recording(arr, indices, **kwargs):
    recorded.append(np.array(indices))
    return batch_baseline_replacement_by_indices(arr=arr, indices=indices, **kwargs)

  np.random.seed(0)
  metric = quantus.FaithfulnessCorrelation(nr_runs=num_samples, subset_size=subset_size,
                                           perturb_func=recording, perturb_baseline=baseline,
                                           normalise=False, return_aggregate=False,
                                           disable_warnings=True)
  return call(metric, model, x, y, relevance), np.stack(recorded)


def test_faithfulness_correlation_over_quantus_subsets():
  # One channel: Quantus's subsets of C*H*W elements are subsets of pixels.
  height, width = 6, 6
  weights, model = models(height, width, 1)
  x = RNG.normal(size=(B, height, width, 1)).astype(np.float32)
  relevance = RNG.normal(size=x.shape).astype(np.float32)
  y = RNG.integers(0, K, B)
  expected, subsets = run_quantus_correlation(model, x, y, relevance, 7, 12, "black")
  assert subsets.shape == (12, B, 7)
  ours = subset_correlation(linear, weights, x, y, relevance, subsets, baseline=black(x))
  np.testing.assert_allclose(np.asarray(ours), expected, **TOLERANCE)


def test_gradient_times_input_of_a_linear_model_is_one_in_both():
  import jax

  height, width = 5, 5
  weights, model = models(height, width, 1)
  x = RNG.normal(size=(B, height, width, 1)).astype(np.float32)
  y = RNG.integers(0, K, B)
  relevance = weights[:, y].T.reshape(x.shape) * x
  expected, _ = run_quantus_correlation(model, x, y, relevance, 6, 10, 0.0)
  ours = faithfulness_correlation(linear, weights, x, y, relevance, subset_size=6,
                                  num_samples=10, key=jax.random.key(0))
  np.testing.assert_allclose(expected, np.ones(B), **TOLERANCE)
  np.testing.assert_allclose(np.asarray(ours), expected, **TOLERANCE)
