"""Pixel flipping against hand computations: a linear model's exact decomposition, probes that
read the flipped pixels back, and an independent numpy loop over steps and images."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.metrics.linear_model import TARGET, close, exact_relevance, images_and_weights, linear
from xjax.errors import ConfigError
from xjax.metrics import METRICS, flip_counts, get_metric, pixel_flipping

RNG = np.random.default_rng(0)
X, WEIGHTS = images_and_weights(RNG)
B, H, W, C = X.shape
P = H * W
K = WEIGHTS.shape[1]


def probe(params, x):
  """Outputs every pixel value: class j reads element j of the flattened image."""
  del params
  return x.reshape(x.shape[0], -1)


# The exact decomposition of the linear model: R = w_c * x, summing to f_c(x).
TRUE_RELEVANCE = exact_relevance(WEIGHTS, X)
CONTRIBUTIONS = TRUE_RELEVANCE.sum(-1).reshape(B, P).astype(np.float64)


def reference_curves(apply_np, x, target, pixel_relevance, counts, base, order, probability=False):
  """An independent loop: sort each image's pixels, overwrite the first count_k, evaluate."""
  curves = np.zeros((len(x), len(counts)))
  for b in range(len(x)):
    rel = pixel_relevance[b].reshape(-1)
    idx = np.argsort(-rel if order == "most_relevant_first" else rel, kind="stable")
    for k, count in enumerate(counts):
      image = x[b].reshape(P, -1).astype(np.float64).copy()
      image[idx[:count]] = base[b].reshape(P, -1)[idx[:count]]
      out = apply_np(image.reshape(1, -1))[0]
      if probability:
        out = np.exp(out - out.max()) / np.exp(out - out.max()).sum()
      curves[b, k] = out[target[b]]
  return curves


# --- the schedule ---------------------------------------------------------------------------------


def test_flip_counts_round_half_up_from_exact_fractions():
  assert flip_counts(16, 4).tolist() == [0, 4, 8, 12, 16]
  assert flip_counts(16, 3, 0.5).tolist() == [0, 3, 5, 8]  # 2.67, 5.33
  assert flip_counts(10, 4).tolist() == [0, 3, 5, 8, 10]  # 2.5 -> 3, 7.5 -> 8
  assert flip_counts(3, 1, 0.3).tolist() == [0, 1]  # 0.9 -> 1
  assert flip_counts(4, 8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # 0.5 -> 1, 1.5 -> 2


def test_flip_counts_round_the_decimal_fraction_as_written():
  # 25 * 0.3 / 3 = 2.5 -> 3 and 7.5 -> 8; the binary 0.3 (0.29999...) would round both down.
  from decimal import Decimal
  from fractions import Fraction
  for fraction in (0.3, np.float32(0.3), np.float64(0.3), Decimal("0.3"), Fraction(3, 10)):
    assert flip_counts(25, 3, fraction).tolist() == [0, 3, 5, 8], fraction
  assert flip_counts(10, 3, 0.15).tolist() == [0, 1, 1, 2]  # 0.5 -> 1, 1.5 -> 2
  # pixel_flipping passes the fraction on as given (a float32 one too).
  x = np.ones((1, 5, 5, 1), np.float32)
  result = pixel_flipping(lambda w, x: x.reshape(1, -1) @ w, np.ones((25, 1), np.float32), x,
                          np.zeros(1, np.int32), x, steps=3, fraction=np.float32(0.3))
  np.testing.assert_allclose(result.fractions, np.array([0, 3, 5, 8]) / 25, rtol=1e-6)


# --- the linear model: curves by hand -------------------------------------------------------------


@pytest.mark.parametrize("steps, fraction", [(4, 1.0), (3, 0.5), (16, 1.0)])
def test_linear_model_morf_and_lerf_remove_sorted_contributions(steps, fraction):
  counts = flip_counts(P, steps, fraction)
  f = CONTRIBUTIONS.sum(1, keepdims=True)
  removed = {
      "most_relevant_first": np.cumsum(-np.sort(-CONTRIBUTIONS, axis=1), axis=1),
      "least_relevant_first": np.cumsum(np.sort(CONTRIBUTIONS, axis=1), axis=1),
  }
  for order, cumulative in removed.items():
    result = pixel_flipping(linear, WEIGHTS, X, TARGET, TRUE_RELEVANCE, steps=steps,
                            fraction=fraction, order=order)
    expected = f - np.concatenate([np.zeros((B, 1)), cumulative], axis=1)[:, counts]
    close(result.curves, expected)
    close(result.curves[:, 0], linear(WEIGHTS, X)[np.arange(B), TARGET])
    close(result.fractions, counts / P)
    close(result.area, np.trapezoid(expected, counts / counts[-1], axis=1))
    assert result.curves.shape == (B, steps + 1) and result.area.shape == (B,)


def test_probability_score_and_weight_targets_against_a_numpy_loop():
  counts = flip_counts(P, 4)
  base = np.zeros_like(X)
  apply_np = lambda image: image @ WEIGHTS.astype(np.float64)
  relevance = RNG.normal(size=(B, H, W))
  result = pixel_flipping(linear, WEIGHTS, X, TARGET, relevance, steps=4, score="probability")
  close(result.curves, reference_curves(apply_np, X, TARGET, relevance, counts, base,
                                        "most_relevant_first", probability=True))
  # Output weights: score = sum_c t_c f_c, here 2 * f_target - f_0.
  weights = 2 * np.eye(K, dtype=np.float32)[TARGET] - np.eye(K, dtype=np.float32)[[0, 0, 0]]
  weighted = pixel_flipping(linear, WEIGHTS, X, jnp.asarray(weights), relevance, steps=4)
  by_class = [pixel_flipping(linear, WEIGHTS, X, jnp.full((B,), c), relevance, steps=4).curves
              for c in range(K)]
  close(weighted.curves,
        sum(weights[:, c:c + 1] * np.asarray(by_class[c]) for c in range(K)), atol=1e-4)


def test_the_true_explanation_beats_a_random_one():
  random = RNG.normal(size=X.shape).astype(np.float32)
  morf = functools.partial(pixel_flipping, linear, WEIGHTS, X, TARGET, steps=16)
  assert np.all(np.asarray(morf(TRUE_RELEVANCE).area) < np.asarray(morf(random).area))
  lerf = functools.partial(morf, order="least_relevant_first")
  assert np.all(np.asarray(lerf(TRUE_RELEVANCE).area) > np.asarray(lerf(random).area))


# --- a 4x4x1 case by hand -------------------------------------------------------------------------


def test_the_most_relevant_pixel_is_flipped_first_and_ties_go_by_pixel_index():
  x = (jnp.arange(16, dtype=jnp.float32) / 16).reshape(1, 4, 4, 1)
  relevance = jnp.zeros((1, 4, 4, 1)).at[0, 2, 1, 0].set(5.0)  # pixel index 2 * 4 + 1 = 9
  target = jnp.array([9])  # the probe's output 9 reads pixel (2, 1)
  flip = functools.partial(pixel_flipping, probe, None, x, target, steps=16, baseline=-1.0)
  close(flip(relevance).curves[0], [9 / 16] + [-1.0] * 16)
  close(flip(relevance, order="least_relevant_first").curves[0], [9 / 16] * 16 + [-1.0])
  # No relevance at all: the stable sort flips pixels 0, 1, 2, ... so pixel 9 goes at step 10.
  for order in ("most_relevant_first", "least_relevant_first"):
    close(flip(jnp.zeros((1, 4, 4)), order=order).curves[0], [9 / 16] * 10 + [-1.0] * 7)
  # A negative-relevance pixel goes first under LeRF.
  negative = jnp.zeros((1, 4, 4)).at[0, 2, 1].set(-1.0)
  close(flip(negative, order="least_relevant_first").curves[0], [9 / 16] + [-1.0] * 16)


# --- baselines ------------------------------------------------------------------------------------


def _first_pixel_channel_targets(relevance, channels):
  """Probe classes that read channel `channels[b]` of image b's most relevant pixel."""
  first = np.argmax(np.asarray(relevance).sum(-1).reshape(B, P), axis=1)
  return jnp.asarray(first * C + np.asarray(channels))


def test_mean_and_array_baselines_fill_flipped_pixels():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  channels = np.array([0, 1, 1])
  target = _first_pixel_channel_targets(relevance, channels)
  flip = functools.partial(pixel_flipping, probe, None, X, target, relevance, steps=P)
  first_value = X.reshape(B, -1)[np.arange(B), np.asarray(target)]
  mean = flip(baseline="mean").curves
  close(mean[:, 0], first_value)
  close(mean[:, 1:], np.broadcast_to(X.mean((1, 2))[np.arange(B), channels][:, None], (B, P)))
  per_channel = np.array([0.25, -0.5], np.float32)
  close(flip(baseline=jnp.asarray(per_channel)).curves[:, 1], per_channel[channels])
  per_image = RNG.normal(size=(B, 1, 1, C)).astype(np.float32)
  close(flip(baseline=per_image).curves[:, 1], per_image[np.arange(B), 0, 0, channels])


def test_uniform_baseline_draws_once_per_image_within_its_range():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  target = _first_pixel_channel_targets(relevance, [0, 1, 0])
  flip = functools.partial(pixel_flipping, probe, None, X, target, relevance, steps=4,
                           baseline="uniform")
  curves = np.asarray(flip(key=jax.random.key(1)).curves)
  low, high = X.reshape(B, -1).min(1), X.reshape(B, -1).max(1)
  assert np.all((curves[:, 1] >= low) & (curves[:, 1] <= high))
  assert np.all(curves[:, 1] != curves[:, 0])
  close(curves[:, 1:], np.broadcast_to(curves[:, 1:2], (B, 4)))  # one noise image for all steps
  close(flip(key=jax.random.key(1)).curves, curves)
  assert not np.allclose(flip(key=jax.random.key(2)).curves[:, 1], curves[:, 1])
  # Every pixel flipped: the image's min and max stay inside the original range.
  minmax = lambda params, x: jnp.stack([x.min((1, 2, 3)), x.max((1, 2, 3))], axis=-1)
  for c, inside in ((0, lambda v: v >= low), (1, lambda v: v <= high)):
    flipped = pixel_flipping(minmax, None, X, jnp.full((B,), c), relevance, steps=1,
                             baseline="uniform", key=jax.random.key(3)).curves[:, 1]
    assert np.all(inside(np.asarray(flipped)))
  with pytest.raises(ConfigError, match="baseline='uniform' needs a PRNG key"):
    flip()


# --- chunks, jit, relevance shapes ----------------------------------------------------------------


def test_chunked_unchunked_jit_and_eager_agree():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  run = functools.partial(pixel_flipping, linear, WEIGHTS, X, TARGET, relevance, steps=5,
                          baseline="uniform", key=jax.random.key(0))
  full = run()
  for max_batch in (1, 7, 1000):  # 7 leaves a padded last chunk; 1000 > B * (steps + 1) images
    chunked = run(max_batch=max_batch)
    close(chunked.curves, full.curves, atol=1e-6, rtol=1e-6)
    close(chunked.area, full.area, atol=1e-6, rtol=1e-6)
  jitted = jax.jit(functools.partial(pixel_flipping, linear, steps=5, baseline="uniform",
                                     max_batch=4))
  out = jitted(WEIGHTS, X, TARGET, relevance, key=jax.random.key(0))
  for a, b in zip(out, full):
    close(a, b, atol=1e-6, rtol=1e-6)


def test_channel_summed_relevance_gives_the_same_result():
  relevance = RNG.normal(size=X.shape).astype(np.float32)
  run = functools.partial(pixel_flipping, linear, WEIGHTS, X, TARGET, steps=4)
  close(run(relevance.sum(-1)).curves, run(relevance).curves, atol=1e-6)
  gray = X[..., :1]
  w_gray = WEIGHTS[::C]
  rel_gray = relevance[..., :1]
  close(pixel_flipping(linear, w_gray, gray, TARGET, rel_gray[..., 0], steps=4).curves,
        pixel_flipping(linear, w_gray, gray, TARGET, rel_gray, steps=4).curves, atol=1e-6)


# --- errors and the registry ----------------------------------------------------------------------


@pytest.mark.parametrize("change, match", [
    (dict(x=X[0]), r"x must be a batch of images \(B, H, W, C\)"),
    (dict(relevance=np.zeros((B, H, W, 3))), r"relevance must have the shape of x"),
    (dict(relevance=np.zeros((B, P))), r"relevance must have the shape of x"),
    (dict(target=TARGET[:2]), r"but target has 2"),
    # An index past the model's K outputs would one-hot to a zero seed: every curve flat at 0.
    (dict(target=np.array([0, K, -1])), rf"target must be class indices in \[0, {K}\) \(the "
     rf"model's outputs\); got \[{K}, -1\] at example\(s\) \[1, 2\]"),
    (dict(relevance=np.where(np.arange(B)[:, None, None, None] == 1, np.nan, TRUE_RELEVANCE)),
     r"relevance holds NaN or infinity in example\(s\) \[1\]: the method failed on them"),
    (dict(steps=0), r"steps must be a Python int >= 1"),
    (dict(steps=2.0), r"steps must be a Python int >= 1"),
    (dict(fraction=0.0), r"fraction must be a Python number in \(0, 1\]"),
    (dict(fraction=1.5), r"fraction must be a Python number in \(0, 1\]"),
    (dict(fraction=0.01), r"flips no pixel of 4x4 images"),
    (dict(baseline="black"), r"Unknown baseline 'black'; known: a number, an array, 'mean'"),
    (dict(baseline=np.zeros((H, W, 3))), r"baseline must be a number, 'mean', 'uniform'"),
    (dict(baseline=np.zeros((2, H, W, C))), r"baseline must be a number, 'mean', 'uniform'"),
    (dict(order="morf"), r"Unknown order 'morf'; known: most_relevant_first, least_relevant"),
    (dict(score="prob"), r"Unknown score 'prob'; known: logit, probability"),
    (dict(max_batch=0), r"max_batch must be a Python int >= 1"),
])
def test_bad_inputs_raise_one_line_config_errors(change, match):
  args = dict(x=X, target=TARGET, relevance=TRUE_RELEVANCE)
  options = {k: change.pop(k) for k in list(change) if k not in args}
  args.update(change)
  with pytest.raises(ConfigError, match=match) as info:
    pixel_flipping(linear, WEIGHTS, args["x"], args["target"], args["relevance"], **options)
  assert "\n" not in str(info.value)


def test_registered_with_metadata_and_checks():
  assert METRICS["pixel_flipping"] is pixel_flipping
  assert METRICS.metadata("pixel_flipping")["higher_is_better"] is False
  assert "pixel flipping" in METRICS.metadata("pixel_flipping")["description"]
  result = METRICS.get("pixel_flipping", linear, WEIGHTS, X, TARGET, TRUE_RELEVANCE, steps=2)
  assert result.curves.shape == (B, 3)
  metric = get_metric("pixel_flipping", steps=2)
  close(metric(linear, WEIGHTS, X, TARGET, TRUE_RELEVANCE).area, result.area)
  for options, match in ((dict(steps=0), "Bad value 0 for option 'steps'"),
                         (dict(fraction=2), "Bad value 2 for option 'fraction'"),
                         (dict(max_batch=-1), "Bad value -1 for option 'max_batch'"),
                         (dict(order="up"), "expected one of most_relevant_first"),
                         (dict(baseline="zero"), "expected a number, an array or one of mean"),
                         (dict(smoothing=1), r"does not take the options \['smoothing'\]")):
    with pytest.raises(ConfigError, match=match):
      get_metric("pixel_flipping", **options)
  with pytest.raises(ConfigError,
                     match="Unknown metric 'aopc'; known metrics: .*, pixel_flipping, pointing"):
    get_metric("aopc")
