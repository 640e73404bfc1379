"""The localisation and complexity metrics equal Quantus 0.6.0's on the same inputs.

Quantus (Hedstroem et al., "Quantus: An explainable AI toolkit for responsible evaluation of
neural network explanations and beyond", JMLR 2023) takes channel-first (NCHW) numpy batches:
x (B, C, H, W), attributions `a_batch` and masks `s_batch` (B, 1, H, W). None of these metrics
runs the model, and Quantus accepts `model=None` for them, so no PyTorch model is built. Its
defaults are switched off where they differ from xjax's: `normalise=False` (its default divides
by the largest |R| of the whole batch) and, for the localisation metrics, `abs=False` (its
AttributionLocalisation default `abs=True` scores |R|). The conventions that remain different
are asserted below as such, each with a comment.

Quantus is optional (`pip install quantus==0.6.0`); without it the module skips.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks.quantus_loader import hidden
from xjax.errors import ConfigError
from xjax.metrics.complexity import complexity, sparseness
from xjax.metrics.localisation import (
  attribution_localisation,
  pointing_game,
  relevance_mass_accuracy,
  relevance_rank_accuracy,
)

if importlib.util.find_spec("quantus") is None:
  pytest.skip("quantus is not installed (optional: pip install quantus==0.6.0); the metrics "
              "cannot be compared with it", allow_module_level=True)
with hidden():
  quantus = pytest.importorskip("quantus", reason="quantus does not import; the metrics cannot "
                                "be compared with it")
if quantus.__version__ != "0.6.0":
  pytest.skip(f"the parity is pinned to quantus 0.6.0; found {quantus.__version__}",
              allow_module_level=True)

B, C, H, W = 6, 3, 8, 8
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, H, W, C)).astype(np.float32)  # NHWC, as xjax
RELEVANCE = RNG.normal(size=(B, H, W, C)).astype(np.float32)
RELEVANCE[0] += 0.5  # mostly positive, so that the signed ratios stay in a sane range
MASKS = RNG.random((B, H, W)) < 0.3
MASKS[:, 2:4, 2:4] = True  # none empty
Y = RNG.integers(0, 10, B)
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def nchw(a):
  return np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2)))


def run_quantus(metric_cls, relevance, masks=MASKS, x=X, **options):
  """Quantus's scores (B,) for NHWC `relevance`; copies, as Quantus edits a_batch in place."""
  metric = metric_cls(normalise=False, disable_warnings=True, **options)
  a_batch = nchw(relevance if relevance.ndim == 4 else relevance[..., None]).copy()
  s_batch = None if masks is None else nchw(masks[..., None].astype(np.float32))
  scores = metric(model=None, x_batch=nchw(x), y_batch=Y, a_batch=a_batch, s_batch=s_batch,
                  channel_first=True, batch_size=B)
  return np.asarray(scores, np.float64)


def run_xjax(metric, relevance, masks=MASKS, **options):
  if masks is not None:
    options["mask"] = masks
  return np.asarray(metric(None, None, X, Y, relevance, **options), np.float64)


# Quantus's localisation metrics compare a_batch with the mask element by element, so they are
# given the channel-summed relevance (B, 1, H, W); xjax sums the channels itself.
SUMMED = RELEVANCE.sum(-1)


def test_pointing_game():
  expected = run_quantus(quantus.PointingGame, SUMMED, abs=False)
  assert 0 < expected.sum() < B  # both hits and misses
  np.testing.assert_array_equal(run_xjax(pointing_game, RELEVANCE), expected)


def test_pointing_game_ties_hit_if_any_maximum_hits_as_in_quantus():
  relevance = SUMMED.copy()
  for b in range(B):
    inside, outside = np.argwhere(MASKS[b])[0], np.argwhere(~MASKS[b])[0]
    peak = relevance[b].max() + 1
    relevance[b][tuple(inside)] = relevance[b][tuple(outside)] = peak
  expected = run_quantus(quantus.PointingGame, relevance, abs=False)
  np.testing.assert_array_equal(expected, np.ones(B))
  np.testing.assert_array_equal(run_xjax(pointing_game, relevance), expected)


def test_pointing_game_on_an_empty_mask_differs():
  # Quantus writes NaN into its boolean hits, which reads back as True: an empty mask "hits".
  # xjax refuses it eagerly (and returns NaN under jit).
  masks = MASKS.copy()
  masks[1] = False
  assert run_quantus(quantus.PointingGame, SUMMED, masks=masks, abs=False)[1] == 1.0
  with pytest.raises(ConfigError, match=r"mask is empty for example\(s\) \[1\]"):
    run_xjax(pointing_game, RELEVANCE, masks=masks)


@pytest.mark.filterwarnings("ignore:Inside explanation is greater than total explanation")
def test_attribution_localisation_positive_and_signed():
  # positive_only=True is Quantus's positive_attributions=True (clip at 0) with abs=False.
  np.testing.assert_allclose(
      run_xjax(attribution_localisation, RELEVANCE),
      run_quantus(quantus.AttributionLocalisation, SUMMED, abs=False, positive_attributions=True),
      **TOLERANCE)
  # Signed: equal where Quantus's ratio is at most 1; where it exceeds 1 Quantus returns NaN and
  # xjax the ratio itself.
  expected = run_quantus(quantus.AttributionLocalisation, SUMMED, abs=False,
                         positive_attributions=False)
  signed = run_xjax(attribution_localisation, RELEVANCE, positive_only=False)
  finite = np.isfinite(expected)
  assert finite.any() and not finite.all()  # both cases occur in these inputs
  np.testing.assert_allclose(signed[finite], expected[finite], **TOLERANCE)
  assert np.all(signed[~finite] > 1)
  # Quantus's default abs=True scores |R|, which xjax gets from |relevance summed|.
  np.testing.assert_allclose(
      run_xjax(attribution_localisation, np.abs(SUMMED)),
      run_quantus(quantus.AttributionLocalisation, SUMMED), **TOLERANCE)


def test_attribution_localisation_weighted_differs_by_quantus_factor():
  # xjax: mu * H * W / |mask|. Quantus 0.6.0: mu * |mask| / x_batch[2:].size, i.e. over the
  # element count of all the images but the first two of the batch (a slicing slip).
  unweighted = run_quantus(quantus.AttributionLocalisation, SUMMED, abs=False,
                           positive_attributions=True)
  sizes = MASKS.reshape(B, -1).sum(-1)
  np.testing.assert_allclose(
      run_quantus(quantus.AttributionLocalisation, SUMMED, abs=False, positive_attributions=True,
                  weighted=True),
      unweighted * sizes / ((B - 2) * C * H * W), **TOLERANCE)
  np.testing.assert_allclose(run_xjax(attribution_localisation, RELEVANCE, weighted=True),
                             unweighted * H * W / sizes, **TOLERANCE)


def test_relevance_mass_accuracy_signed_as_quantus():
  expected = run_quantus(quantus.RelevanceMassAccuracy, SUMMED, abs=False)
  np.testing.assert_allclose(run_xjax(relevance_mass_accuracy, RELEVANCE), expected, **TOLERANCE)
  # The signed relevance is really what is compared: its share differs from the positive one.
  assert not np.allclose(expected, run_xjax(attribution_localisation, RELEVANCE), atol=1e-3)


def test_relevance_rank_accuracy():
  expected = run_quantus(quantus.RelevanceRankAccuracy, SUMMED, abs=False)
  assert len(np.unique(expected)) > 1
  np.testing.assert_allclose(run_xjax(relevance_rank_accuracy, RELEVANCE), expected, **TOLERANCE)


@pytest.mark.parametrize("xjax_metric, quantus_name", [(sparseness, "Sparseness"),
                                                       (complexity, "Complexity")])
def test_complexity_metrics_on_every_element_as_quantus(xjax_metric, quantus_name):
  metric_cls = getattr(quantus, quantus_name)
  # Quantus flattens the (B, C, H, W) attributions whole: every channel of every pixel is a
  # feature, as xjax's default. Its default abs=True is what xjax does in any case.
  expected = run_quantus(metric_cls, RELEVANCE, masks=None)
  np.testing.assert_allclose(run_xjax(xjax_metric, RELEVANCE, masks=None), expected, **TOLERANCE)
  # Per pixel: Quantus given the channel-summed relevance is xjax's sum_channels=True.
  np.testing.assert_allclose(run_xjax(xjax_metric, RELEVANCE, masks=None, sum_channels=True),
                             run_quantus(metric_cls, SUMMED, masks=None), **TOLERANCE)
  # Some exact zeros, where the epsilons matter.
  sparse = RELEVANCE * (RNG.random(RELEVANCE.shape) < 0.2)
  np.testing.assert_allclose(run_xjax(xjax_metric, sparse, masks=None),
                             run_quantus(metric_cls, sparse, masks=None), **TOLERANCE)


def test_quantus_default_normalisation_makes_sparseness_depend_on_the_batch():
  # Quantus's default normalise=True divides by the largest |R| of the batch before adding its
  # epsilon; xjax's scores are Quantus's with normalise=False. On zeros-heavy relevance at a
  # small scale the two differ visibly.
  tiny = RELEVANCE * (RNG.random(RELEVANCE.shape) < 0.2) * 1e-5
  plain = run_quantus(quantus.Sparseness, tiny, masks=None)
  metric = quantus.Sparseness(disable_warnings=True)
  normalised = np.asarray(metric(model=None, x_batch=nchw(X), y_batch=Y, a_batch=nchw(tiny),
                                 s_batch=None, channel_first=True, batch_size=B))
  np.testing.assert_allclose(run_xjax(sparseness, tiny, masks=None), plain, **TOLERANCE)
  assert not np.allclose(normalised, plain, atol=1e-3)
