"""The localisation metrics against hand computations on 3x3 and 4x4 images, an independent numpy
loop over examples, jax.jit, and their one-line errors."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics.localisation import (
  attribution_localisation,
  pointing_game,
  relevance_mass_accuracy,
  relevance_rank_accuracy,
)

METRICS = (pointing_game, attribution_localisation, relevance_mass_accuracy,
           relevance_rank_accuracy)
RNG = np.random.default_rng(0)


def close(a, b, atol=1e-6, rtol=1e-6):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


def images(batch, height, width, channels=1):
  """Only the shape of x is read by these metrics."""
  return np.zeros((batch, height, width, channels), np.float32)


def score(metric, relevance, mask, **options):
  """`metric` on (B, H, W) or (B, H, W, C) relevance, the model arguments left out."""
  relevance = np.asarray(relevance, np.float32)
  x = images(*relevance.shape[:3], relevance.shape[3] if relevance.ndim == 4 else 1)
  return np.asarray(metric(None, None, x, None, relevance, mask=np.asarray(mask), **options))


def grid(*rows):
  return np.array(rows, np.float32)


# A 3x3 case worked by hand. Positive relevance: 1, 3, 0.5, 2, 0.5 (sum 7), of which 1 + 3 lies
# in the mask; signed relevance sums to 4, of which 1 - 2 + 3 = 2 in the mask. Most relevant
# first: 3 (1,0), 2 (2,1), 1 (0,0): K = 3, two of the top three in the mask.
R3 = grid([1, -2, 0],
          [3, 0.5, -1],
          [0, 2, 0.5])
M3 = grid([1, 1, 0],
          [1, 0, 0],
          [0, 0, 0]).astype(bool)


# --- by hand --------------------------------------------------------------------------------------


def test_the_3x3_case_by_hand():
  assert score(pointing_game, R3[None], M3[None]).tolist() == [1.0]
  close(score(attribution_localisation, R3[None], M3[None]), [4 / 7])
  close(score(attribution_localisation, R3[None], M3[None], weighted=True), [4 / 7 * 9 / 3])
  close(score(attribution_localisation, R3[None], M3[None], positive_only=False), [2 / 4])
  close(score(relevance_mass_accuracy, R3[None], M3[None]), [2 / 4])
  close(score(relevance_rank_accuracy, R3[None], M3[None]), [2 / 3])


def test_signed_mass_accuracy_counts_negative_relevance_as_quantus_does():
  # Inside 2, outside -1: the signed share is 2 / 1, beyond 1; the positive share is 1.
  relevance = grid([2, -1], [0, 0])
  mask = grid([1, 0], [0, 0])
  close(score(relevance_mass_accuracy, relevance[None], mask[None]), [2.0])
  close(score(attribution_localisation, relevance[None], mask[None]), [1.0])
  # Negative relevance inside the mask lowers the signed share below that of the positive part.
  relevance = grid([2, -1], [1, 0])
  mask = grid([1, 1], [0, 0])
  close(score(relevance_mass_accuracy, relevance[None], mask[None]), [1 / 2])
  close(score(attribution_localisation, relevance[None], mask[None]), [2 / 3])


def test_attribution_localisation_without_positive_relevance_scores_zero():
  relevance = -np.ones((1, 3, 3), np.float32)
  close(score(attribution_localisation, relevance, M3[None]), [0.0])


def test_channels_are_summed_first():
  # Channel 0 alone peaks at (0, 0), outside the mask; the channel sum peaks at (1, 1), inside.
  relevance = np.zeros((1, 3, 3, 2), np.float32)
  relevance[0, 0, 0] = [5, -4]
  relevance[0, 1, 1] = [2, 1]
  mask = np.zeros((1, 3, 3), bool)
  mask[0, 1, 1] = True
  assert score(pointing_game, relevance, mask).tolist() == [1.0]
  close(score(relevance_mass_accuracy, relevance, mask), [3 / 4])
  close(score(attribution_localisation, relevance, mask), [3 / 4])
  assert score(relevance_rank_accuracy, relevance, mask).tolist() == [1.0]
  for metric in METRICS:
    close(score(metric, relevance, mask), score(metric, relevance.sum(-1), mask))


# --- the pointing game's tolerance and ties -------------------------------------------------------


def one_pixel(height, width, row, col, value=1.0):
  image = np.zeros((1, height, width), np.float32)
  image[0, row, col] = value
  return image


@pytest.mark.parametrize("peak, target, tolerance, hit", [
    ((0, 0), (0, 0), 0, 1.0),
    ((0, 0), (0, 1), 0, 0.0),
    ((0, 0), (0, 1), 0.99, 0.0),  # below one pixel: the mask itself
    ((0, 0), (0, 1), 1, 1.0),
    ((0, 0), (0, 2), 1.9, 0.0),
    ((0, 0), (0, 2), 2, 1.0),  # the distance is inclusive
    ((1, 1), (2, 2), 1, 0.0),  # diagonal neighbours are sqrt(2) apart
    ((1, 1), (2, 2), 1.5, 1.0),
    ((0, 0), (3, 3), 4.24, 0.0),  # corner to corner of 4x4: sqrt(18) = 4.243
    ((0, 0), (3, 3), 4.25, 1.0),
    ((0, 0), (3, 3), 100, 1.0),  # far beyond the image: the kernel is cut to the image
    ((3, 0), (0, 3), 15, 1.0),  # Zhang et al.'s 15 pixels
])
def test_pointing_game_tolerance_is_a_euclidean_distance(peak, target, tolerance, hit):
  relevance = one_pixel(4, 4, *peak) + 0.1 * RNG.random((1, 4, 4)).astype(np.float32) - 0.2
  mask = one_pixel(4, 4, *target).astype(bool)
  assert score(pointing_game, relevance, mask, tolerance=tolerance).tolist() == [hit]


def test_pointing_game_tolerance_on_a_non_square_image():
  # 2x5: peak at (0, 0), mask at (1, 4): sqrt(1 + 16) = 4.12 apart.
  relevance, mask = one_pixel(2, 5, 0, 0), one_pixel(2, 5, 1, 4).astype(bool)
  assert score(pointing_game, relevance, mask, tolerance=4.1).tolist() == [0.0]
  assert score(pointing_game, relevance, mask, tolerance=4.2).tolist() == [1.0]


def test_pointing_game_hits_if_any_tied_maximum_hits():
  relevance = one_pixel(3, 3, 0, 0, 2.0) + one_pixel(3, 3, 2, 2, 2.0)
  assert score(pointing_game, relevance, one_pixel(3, 3, 2, 2).astype(bool)).tolist() == [1.0]
  assert score(pointing_game, relevance, one_pixel(3, 3, 0, 0).astype(bool)).tolist() == [1.0]
  assert score(pointing_game, relevance, one_pixel(3, 3, 1, 1).astype(bool)).tolist() == [0.0]
  # Constant relevance: every pixel is maximal, so any non-empty mask is hit.
  assert score(pointing_game, np.zeros((1, 3, 3)), one_pixel(3, 3, 1, 2)).tolist() == [1.0]


def test_rank_ties_go_to_the_lower_pixel_index():
  # No relevance at all, K = 1: the stable sort ranks pixel 0 first.
  zeros = np.zeros((2, 3, 3), np.float32)
  masks = np.concatenate([one_pixel(3, 3, 0, 0), one_pixel(3, 3, 2, 2)]).astype(bool)
  assert score(relevance_rank_accuracy, zeros, masks).tolist() == [1.0, 0.0]


def test_masks_may_be_0_1_numbers():
  for metric in METRICS:
    close(score(metric, R3[None], M3[None].astype(np.float32)), score(metric, R3[None], M3[None]))
    close(score(metric, R3[None], M3[None].astype(np.int32)), score(metric, R3[None], M3[None]))


# --- random batches: a numpy loop, per-example calls, jit -----------------------------------------


B, H, W, C = 5, 4, 4, 2
RELEVANCE = RNG.normal(size=(B, H, W, C)).astype(np.float32)
MASKS = RNG.random((B, H, W)) < 0.4
MASKS[:, 0, 0] = True  # none empty


def reference(name, relevance, mask):
  """An independent loop over examples, in float64."""
  out = []
  for r, m in zip(relevance.sum(-1).astype(np.float64), mask):
    r, m = r.reshape(-1), m.reshape(-1)
    if name == "pointing_game":
      out.append(float(m[np.argmax(r)]))
    elif name == "attribution_localisation":
      out.append(np.clip(r, 0, None)[m].sum() / np.clip(r, 0, None).sum())
    elif name == "relevance_mass_accuracy":
      out.append(r[m].sum() / r.sum())
    else:
      top = np.argsort(-r, kind="stable")[:m.sum()]
      out.append(m[top].mean())
  return np.array(out)


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_random_batches_match_a_numpy_loop_per_example_calls_and_jit(metric):
  expected = reference(metric.__name__, RELEVANCE, MASKS)
  batch = score(metric, RELEVANCE, MASKS)
  assert batch.shape == (B,)
  close(batch, expected, atol=1e-5, rtol=1e-5)
  per_example = [score(metric, RELEVANCE[i:i + 1], MASKS[i:i + 1])[0] for i in range(B)]
  close(batch, per_example)
  x = images(B, H, W, C)
  jitted = jax.jit(lambda x, r, m: metric(None, None, x, None, r, mask=m))
  close(jitted(x, RELEVANCE, MASKS), batch)


def test_jit_with_a_static_tolerance():
  jitted = jax.jit(functools.partial(pointing_game, None, None, tolerance=1.5))
  x = images(B, H, W, C)
  eager = pointing_game(None, None, x, None, RELEVANCE, mask=MASKS, tolerance=1.5)
  close(jitted(x, None, RELEVANCE, mask=MASKS), eager)
  # Tolerance 1.5 reaches the 8 neighbours: the hit is the 3x3 dilated mask at the maximum.
  peaks = RELEVANCE.sum(-1).reshape(B, -1).argmax(-1)
  rows, cols = np.divmod(peaks, W)
  padded = np.pad(MASKS, ((0, 0), (1, 1), (1, 1)))
  near = [padded[b, rows[b]:rows[b] + 3, cols[b]:cols[b] + 3].any() for b in range(B)]
  close(eager, np.array(near, np.float32))


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
def test_an_empty_mask_is_an_error_eagerly_and_nan_under_jit(metric):
  masks = MASKS.copy()
  masks[[1, 3]] = False
  with pytest.raises(ConfigError, match=r"mask is empty for example\(s\) \[1, 3\]") as info:
    score(metric, RELEVANCE, masks)
  assert "\n" not in str(info.value)
  jitted = jax.jit(lambda r, m: metric(None, None, images(B, H, W, C), None, r, mask=m))
  out = np.asarray(jitted(RELEVANCE, masks))
  assert np.isnan(out[[1, 3]]).all() and np.isfinite(out[[0, 2, 4]]).all()
  close(out[[0, 2, 4]], score(metric, RELEVANCE, MASKS)[[0, 2, 4]])


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("change, match", [
    (dict(x=np.zeros((B, H, W))), r"x must be a batch of images \(B, H, W, C\)"),
    (dict(relevance=np.zeros((B, H, W, 3))), r"relevance must have the shape of x"),
    (dict(relevance=np.zeros((B, H * W))), r"relevance must have the shape of x"),
    (dict(mask=MASKS[..., None]), r"mask must be one \(H, W\) mask per image, shape \(5, 4, 4\)"),
    (dict(mask=MASKS[:, :3]), r"mask must be one \(H, W\) mask per image"),
    (dict(mask=MASKS[:2]), r"mask must be one \(H, W\) mask per image"),
    (dict(mask=MASKS * 0.5), r"mask must be boolean or hold only 0 and 1"),
    (dict(mask=None), r"localisation metrics need the ground truth: pass mask="),
])
def test_bad_inputs_raise_one_line_config_errors(metric, change, match):
  args = dict(x=images(B, H, W, C), relevance=RELEVANCE, mask=MASKS)
  args.update(change)
  with pytest.raises(ConfigError, match=match) as info:
    metric(None, None, args["x"], None, args["relevance"], mask=args["mask"])
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("tolerance", [-1, float("inf"), float("nan"), "1", True, None])
def test_bad_tolerance(tolerance):
  with pytest.raises(ConfigError, match=r"tolerance must be a finite Python number >= 0") as info:
    score(pointing_game, RELEVANCE, MASKS, tolerance=tolerance)
  assert "\n" not in str(info.value)


def test_most_relevant_is_the_top_k_of_the_stable_ranking_with_ties_and_signed_zeros():
  import jax.numpy as jnp

  from xjax.metrics.relevance import most_relevant, relevance_ranks
  rng = np.random.default_rng(7)
  scores = np.round(rng.normal(size=(6, 40)), 1).astype(np.float32)  # many ties
  scores[1] = 0.0
  scores[2, ::2] = -0.0
  scores[3] = -np.abs(scores[3])
  k = np.array([0, 5, 13, 40, 1, 17])
  expected = np.asarray(relevance_ranks(jnp.asarray(scores), "most_relevant_first")) < k[:, None]
  got = np.asarray(jax.jit(most_relevant)(jnp.asarray(scores), jnp.asarray(k)))
  np.testing.assert_array_equal(got, expected)
  assert got.sum(-1).tolist() == k.tolist()
