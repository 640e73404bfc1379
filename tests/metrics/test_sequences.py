"""Token sequences x (B, T, D) in the metrics, against values computed by hand.

The "model" is linear in the embeddings, logit_k = sum_t x_t . w_k with w the identity (D = K = 2),
so gradient x input summed over D is each token's exact share of the logit, r_t = x_t[target],
and ablating a token to a zero embedding removes exactly r_t (to an embedding m: adds m[target] -
r_t). The curves are then partial sums of r in the order of relevance, written out below.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.metrics import (
  METRICS,
  complexity,
  faithfulness_area,
  faithfulness_correlation,
  insertion_deletion,
  pixel_flipping,
  pointing_game,
  region_perturbation,
  relevance_mass_accuracy,
  sparseness,
)

# Two sequences of T = 4 tokens with D = 2 embedding dimensions.
X = jnp.array([[[3, 1], [-1, 0], [2, 5], [0, 2]],
               [[0, 1], [1, -2], [2, 4], [5, 0]]], jnp.float32)
W = jnp.eye(2, dtype=jnp.float32)
TARGET = jnp.array([0, 1])
# r_t = x_t[target]: [3, -1, 2, 0] (logit 4) and [1, -2, 4, 0] (logit 3).
RELEVANCE = X[jnp.arange(2), :, TARGET]
# Gradient x input per embedding element (B, T, D): sums over D to RELEVANCE.
ELEMENTS = X * W[:, TARGET].T[:, None, :]


def linear(w, e):
  assert e.ndim == 3, f"apply_fn got shape {e.shape}, not the sequences' (B, T, D)"
  return e.sum(1) @ w


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Faithfulness.

# Most relevant first, one token a step: example 0 removes 3, 2, 0, -1 from its logit 4; example
# 1 removes 4, 1, 0, -2 from 3. Least relevant first the reverse orders.
MORF = [[4, 1, -1, -1, 0], [3, -1, -2, -2, 0]]
LERF = [[4, 5, 5, 3, 0], [3, 5, 5, 4, 0]]


def trapezoid(curve):  # against k / 4, k = 0..4
  curve = np.asarray(curve, np.float64)
  return ((curve[..., 1:] + curve[..., :-1]) / 2).sum(-1) / 4


def test_pixel_flipping_flips_tokens_in_the_order_of_relevance():
  result = pixel_flipping(linear, W, X, TARGET, RELEVANCE, steps=4)
  close(result.curves, MORF)
  close(result.fractions, [0, 0.25, 0.5, 0.75, 1])
  close(result.area, [0.25, -0.875])
  assert np.allclose(trapezoid(MORF), [0.25, -0.875])
  lerf = pixel_flipping(linear, W, X, TARGET, RELEVANCE, steps=4, order="least_relevant_first")
  close(lerf.curves, LERF)


def test_relevance_per_embedding_element_is_summed_over_d_and_jit_gives_the_same():
  per_token = pixel_flipping(linear, W, X, TARGET, RELEVANCE, steps=4)
  per_element = pixel_flipping(linear, W, X, TARGET, ELEMENTS, steps=4)
  close(per_element.curves, per_token.curves)
  jitted = jax.jit(functools.partial(pixel_flipping, linear, steps=4))(W, X, TARGET, ELEMENTS)
  close(jitted.curves, MORF)


def test_faithfulness_area_is_the_area_between_the_lerf_and_morf_curves():
  result = faithfulness_area(linear, W, X, TARGET, RELEVANCE, steps=4)
  close(result.most_relevant_first, MORF)
  close(result.least_relevant_first, LERF)
  # AUC(LeRF) - AUC(MoRF): 3.75 - 0.25 and 3.875 - (-0.875).
  close(result.area, [3.5, 4.75])
  close(result.area, trapezoid(LERF) - trapezoid(MORF))
  # Relevance that ranks the tokens the wrong way round swaps the curves: the area's sign flips.
  close(faithfulness_area(linear, W, X, TARGET, -RELEVANCE, steps=4).area, [-3.5, -4.75])


def test_faithfulness_area_on_images_is_pixel_flippings_two_orders():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 3, 2)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(18, 3)), jnp.float32)
  model = lambda p, images: images.reshape(len(images), -1) @ p
  relevance = jnp.asarray(rng.normal(size=(2, 3, 3)), jnp.float32)
  area = faithfulness_area(model, w, x, TARGET, relevance, steps=3).area
  flip = functools.partial(pixel_flipping, model, w, x, TARGET, relevance, steps=3)
  close(area, flip(order="least_relevant_first").area - flip().area)


def test_faithfulness_area_is_registered_higher_is_better_with_its_curves():
  about = METRICS.metadata("faithfulness_area")
  assert about["higher_is_better"] is True and about["score"] == "area"
  assert about["curves"] == ("most_relevant_first", "least_relevant_first")
  names = METRICS.names()
  assert names.index("faithfulness_area") == names.index("pixel_flipping") + 1


def test_a_mask_token_embedding_replaces_the_whole_token():
  # Flipping token t adds m[target] - r_t with m = [1, 2]: example 0 (target 0) adds 1 - 3,
  # 1 - 2, 1 - 0, 1 + 1; example 1 (target 1) adds 2 - 4, 2 - 1, 2 - 0, 2 + 2.
  mask_token = jnp.array([1.0, 2.0])
  result = pixel_flipping(linear, W, X, TARGET, RELEVANCE, steps=4, baseline=mask_token)
  close(result.curves, [[4, 2, 1, 2, 4], [3, 1, 2, 4, 8]])
  # The same as the embedding written out per token (T, D) and per sequence (B, T, D).
  for shape in ((4, 2), (2, 4, 2)):
    spelled = pixel_flipping(linear, W, X, TARGET, RELEVANCE, steps=4,
                             baseline=jnp.broadcast_to(mask_token, shape))
    close(spelled.curves, result.curves)
  area = faithfulness_area(linear, W, X, TARGET, RELEVANCE, steps=4, baseline=mask_token)
  close(area.most_relevant_first, result.curves)


def test_region_perturbation_removes_spans_of_tokens():
  # Spans of 2 tokens: relevance [3 - 1, 2 + 0] = [2, 2] (a tie: the first span first) and
  # [1 - 2, 4 + 0] = [-1, 4].
  result = region_perturbation(linear, W, X, TARGET, RELEVANCE, patch_size=2)
  close(result.curves, [[4, 2, 0], [3, -1, 0]])


def test_insertion_inserts_tokens_into_a_zero_canvas_and_blur_is_refused():
  result = insertion_deletion(linear, W, X, TARGET, RELEVANCE, steps=4, score="logit",
                              insertion_baseline=0.0)
  close(result.insertion, [[0, 3, 5, 5, 4], [0, 4, 5, 5, 3]])
  close(result.deletion, MORF)
  with pytest.raises(ConfigError, match=r"insertion_baseline='blur' blurs images; token sequences"):
    insertion_deletion(linear, W, X, TARGET, RELEVANCE)  # the default canvas, "blur"


def test_faithfulness_correlation_of_exact_relevance_is_one():
  # A linear model, a zero baseline, exact relevance: the drop is the subset's relevance.
  scores = faithfulness_correlation(linear, W, X, TARGET, RELEVANCE, subset_size=2,
                                    num_samples=6, key=jax.random.key(0))
  close(scores, [1, 1])


# --------------------------------------------------------------------------------------------------
# Localisation and complexity: the model is not needed, x gives the shapes (B, T, D) = (2, 6, 3).

TOKENS = jnp.zeros((2, 6, 3))
SCORES = jnp.array([[0.1, 0.7, 0.2, 0.0, -0.5, 0.3],
                    [0.5, 0.1, 0.1, 0.9, 0.0, 0.2]])
MASK = jnp.array([[0, 1, 1, 0, 0, 0],
                  [1, 0, 0, 0, 0, 1]], bool)


def test_pointing_game_on_tokens_with_a_tolerance_in_tokens():
  # The maximum is token 1 (in the mask) and token 3 (two tokens from the mask's token 5).
  close(pointing_game(None, None, TOKENS, None, SCORES, mask=MASK), [1, 0])
  close(pointing_game(None, None, TOKENS, None, SCORES, mask=MASK, tolerance=1), [1, 0])
  close(pointing_game(None, None, TOKENS, None, SCORES, mask=MASK, tolerance=2), [1, 1])


def test_relevance_mass_accuracy_on_tokens():
  # (0.7 + 0.2) / 0.8 and (0.5 + 0.2) / 1.8.
  close(relevance_mass_accuracy(None, None, TOKENS, None, SCORES, mask=MASK),
        [0.9 / 0.8, 0.7 / 1.8])
  # Relevance per embedding element is summed over D first.
  spread = jnp.stack([SCORES, 2 * SCORES, -2 * SCORES], -1)  # sums to SCORES
  close(relevance_mass_accuracy(None, None, TOKENS, None, spread, mask=MASK),
        [0.9 / 0.8, 0.7 / 1.8])


def test_sparseness_and_complexity_count_tokens():
  relevance = jnp.array([[0.0, 0.0, 0.0, 4.0], [1.0, -1.0, 1.0, -1.0]])
  x = jnp.zeros((2, 4, 2))
  # All on one token of 4: the Gini index 1 - 1/4 (12 / (16 + 16e-7) with the epsilon); evenly
  # spread: 0. The entropy: 0 and log 4.
  close(sparseness(None, None, x, None, relevance), [12 / (16 + 16e-7), 0])
  close(complexity(None, None, x, None, relevance), [0, np.log(4)])
  # (B, T, D) relevance is summed over D to the tokens' whatever sum_channels says: token 3 holds
  # [1, 3], the others cancel ([1, -1]); per element it would be 8 features.
  elements = jnp.array([[[1.0, -1.0], [1.0, -1.0], [1.0, -1.0], [1.0, 3.0]],
                        [[1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [-2.0, 1.0]]])
  for sum_channels in (False, True):
    close(sparseness(None, None, x, None, elements, sum_channels=sum_channels),
          [12 / (16 + 16e-7), 0])


# --------------------------------------------------------------------------------------------------
# Errors: one line, in the sequence's terms.


def one_line_error(call, pattern):
  with pytest.raises(ConfigError, match=pattern) as error:
    call()
  assert "\n" not in str(error.value)


def test_relevance_of_the_wrong_length_is_one_line_naming_the_shapes():
  one_line_error(lambda: pixel_flipping(linear, W, X, TARGET, RELEVANCE[:, :3]),
                 r"relevance must have shape \(B, T\) = \(2, 4\), one score per token, or "
                 r"\(B, T, D\) = \(2, 4, 2\) .*; got shape \(2, 3\)\.")
  one_line_error(lambda: sparseness(None, None, TOKENS, None, SCORES[:, :5]),
                 r"relevance must have shape \(B, T\) = \(2, 6\).*got shape \(2, 5\)")


def test_a_token_mask_of_the_wrong_shape_is_one_line():
  one_line_error(lambda: pointing_game(None, None, TOKENS, None, SCORES, mask=MASK[:, :5]),
                 r"mask must be \(B, T\) = \(2, 6\), one boolean per token .*; got shape "
                 r"\(2, 5\)\.")
  one_line_error(lambda: relevance_mass_accuracy(None, None, TOKENS, None, SCORES,
                                                 mask=MASK[:, :, None]),
                 r"mask must be \(B, T\) = \(2, 6\).*got shape \(2, 6, 1\)")


def test_other_bad_sequence_input_is_one_line():
  one_line_error(lambda: pixel_flipping(linear, W, X, TARGET, RELEVANCE, baseline=jnp.zeros(3)),
                 r"baseline must be .* an embedding \(D,\) = \(2,\) .*got shape \(3,\)")
  one_line_error(lambda: pixel_flipping(linear, W, X, TARGET, RELEVANCE, fraction=0.01),
                 r"flips no pixel of 4x1 images.*token sequences x \(B, T, D\) = \(2, 4, 2\) "
                 r"are scored as images of T x 1 pixels")
  one_line_error(lambda: pixel_flipping(linear, W, X[0], TARGET, RELEVANCE),
                 r"x must be a batch of images \(B, H, W, C\) or of token sequences \(B, T, D\)")
  bad = RELEVANCE.at[1, 2].set(jnp.nan)
  one_line_error(lambda: faithfulness_area(linear, W, X, TARGET, bad, steps=4),
                 r"relevance holds NaN or infinity in example\(s\) \[1\]")


def test_invalid_examples_score_nan_under_jit():
  area = jax.jit(functools.partial(faithfulness_area, linear, steps=4))
  result = area(W, X, TARGET, RELEVANCE.at[1, 2].set(jnp.nan))
  assert np.isfinite(result.area[0]) and np.isnan(result.area[1])
  assert np.isnan(result.least_relevant_first[1]).all()


# --------------------------------------------------------------------------------------------------
# Images are untouched: numbers computed before sequences were added.


def test_image_results_are_unchanged():
  x = (jnp.arange(36, dtype=jnp.float32).reshape(2, 3, 3, 2) % 7 - 3) / 4
  w = (jnp.arange(54, dtype=jnp.float32).reshape(18, 3) % 5 - 2) / 3
  model = lambda p, images: images.reshape(images.shape[0], -1) @ p
  target = jnp.array([0, 2])
  relevance = w[:, target].T.reshape(x.shape) * x
  mask = jnp.zeros((2, 3, 3), bool).at[:, 1:, :2].set(True)
  area = pixel_flipping(model, w, x, target, relevance, steps=4,
                        baseline=jnp.array([0.5, -0.25])).area
  np.testing.assert_array_equal(area, np.float32([-0.5000000596046448, -0.6759258508682251]))
  mass = relevance_mass_accuracy(None, None, x, None, relevance, mask=mask)
  np.testing.assert_array_equal(mass, np.float32([0.9090908765792847, -5.999997138977051]))
  gini = sparseness(None, None, x, None, relevance)
  np.testing.assert_array_equal(gini, np.float32([0.5390387177467346, 0.5142447352409363]))
