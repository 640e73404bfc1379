"""Pixel flipping: how fast the explained output falls when the most relevant pixels are removed.

Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise
relevance propagation" (PLOS ONE 2015, its pixel-flipping experiments), and Samek, Binder,
Montavon, Lapuschkin, Mueller, "Evaluating the visualization of what a deep neural network has
learned" (IEEE TNNLS 2017, "MoRF" perturbation and AOPC): pixels are replaced in the order of
their relevance, most relevant first, and the explained output is recorded after each step. A
good explanation finds the evidence first, so its curve falls fast and the area under it is small.

Token sequences x (B, T, D) are flipped token by token: a token's whole embedding is replaced by
the baseline's (zero, or an embedding (D,) such as a [MASK] token's), as the pixel of an image of
T x 1 pixels with D channels (`xjax.metrics.relevance`).

All `B * (steps + 1)` perturbed images are evaluated inside one traced function, without a Python
loop over steps or images: the perturbed images of a chunk are built from their flat index where
they are needed (`x`, the baseline and the ranks are gathered per image), and the chunks run in a
`lax.map`. At most `max_batch` images exist at once, so memory does not grow with `steps`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import check_count, check_model_target, output_seed
from xjax.metrics.registry import COUNT, METRICS, OPTIONAL_COUNT, ApplyFn
from xjax.metrics.relevance import checked_relevance, per_example_metric, relevance_ranks
from xjax.registry import Check, in_range, one_of

Array = jax.Array

ORDERS = ("most_relevant_first", "least_relevant_first")
SCORES = ("logit", "probability")
BASELINES = ("mean", "uniform")
# The check of a `baseline` option (here and in `faithfulness_correlation`).
BASELINE = Check(lambda v: not isinstance(v, str) or v in BASELINES,
                 f"a number, an array or one of {', '.join(BASELINES)}")


class PixelFlippingResult(NamedTuple):
  """The outcome of `pixel_flipping` (a NamedTuple, so a pytree: it passes through `jax.jit`).

  Attributes:
    curves: (B, steps + 1) the explained score after each step; column 0 is the unperturbed image.
    fractions: (steps + 1,) the fraction of each image's H*W pixels flipped at each step.
    area: (B,) the trapezoid area under each curve against the flipped fraction rescaled to
      [0, 1], i.e. the average of the piecewise-linear curve, in the units of the score.
  """

  curves: Array
  fractions: Array
  area: Array

  # Where each per-example field has its examples (`xjax.explain.targets.poison_examples`).
  EXAMPLE_AXES = {"curves": 0, "area": 0}


# --------------------------------------------------------------------------------------------------
# Checks and the static schedule.


def _check_fraction(fraction: Any) -> None:
  if (isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating))
      or not 0 < fraction <= 1):
    raise ConfigError(f"fraction must be a Python number in (0, 1] (the share of pixels flipped "
                      f"by the last step); got {fraction!r}.")


def flip_counts(num_pixels: int, steps: int, fraction: float = 1.0) -> np.ndarray:
  """The number of pixels flipped after step k = 0..steps: `round(k * fraction * num_pixels /
  steps)`, rounded half up from the exact rational value (so 2.5 -> 3 on every platform).

  Computed with `fractions.Fraction` because `k * P / steps` in floating point lands just below
  a half (or an integer) for some k, and the counts fix the shapes under jit. The fraction is
  the decimal the user wrote, its shortest repr (0.3 is 3/10), not its binary value
  (0.29999999999999998889...), which would round the halves it makes down: 25 pixels, 3 steps
  and 0.3 flip 2.5 -> 3 pixels at the first step, not 2.
  """
  # int and Fraction are exact already; str() of a float (Python's or numpy's) is its shortest
  # repr, the number as written, and a Decimal's str() is its digits.
  exact = Fraction(fraction) if isinstance(fraction, numbers.Rational) else Fraction(str(fraction))
  share = exact * num_pixels / steps
  return np.array([math.floor(k * share + Fraction(1, 2)) for k in range(steps + 1)], np.int32)


def baseline_images(x: Array, baseline: Any, key: Array | None) -> Array:
  """The image each flipped pixel is taken from, (B, H, W, C) in x's dtype (see `pixel_flipping`).

  Raises:
    ConfigError: an unknown baseline name, "uniform" without a key, or an array of a shape that
      does not broadcast to one image (H, W, C) nor is one per image (B, ...).
  """
  if isinstance(baseline, str):
    if baseline == "mean":
      # Per image and channel, so that a flipped pixel takes the image's average colour.
      return jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
    if baseline == "uniform":
      if key is None:
        raise ConfigError("baseline='uniform' needs a PRNG key for its noise: pass "
                          "key=jax.random.key(0).")
      low = jnp.min(x, axis=(1, 2, 3), keepdims=True)
      high = jnp.max(x, axis=(1, 2, 3), keepdims=True)
      return jax.random.uniform(key, x.shape, x.dtype, low, high)
    raise ConfigError(f"Unknown baseline {baseline!r}; known: a number, an array, "
                      f"{', '.join(map(repr, BASELINES))}.")
  shape = jnp.shape(baseline)
  try:
    one_image = len(shape) <= 3 and np.broadcast_shapes(shape, x.shape[1:]) == x.shape[1:]
    per_image = len(shape) == 4 and np.broadcast_shapes(shape, x.shape) == x.shape
  except ValueError:
    one_image = per_image = False
  if not (one_image or per_image):
    raise ConfigError(f"baseline must be a number, 'mean', 'uniform', an array broadcastable to "
                      f"one image {x.shape[1:]}, or one per image {x.shape}; got shape {shape}.")
  return jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)


def _pixel_ranks(relevance: Array, order: str) -> Array:
  """(B, H*W) the step rank of each pixel, by the sum of its channels' relevance."""
  per_pixel = relevance.sum(-1) if relevance.ndim == 4 else relevance
  return relevance_ranks(per_pixel.reshape(per_pixel.shape[0], -1), order)


# --------------------------------------------------------------------------------------------------
# The metric.


@METRICS.register(
    "pixel_flipping",
    checks={"steps": COUNT, "fraction": in_range(0, 1, include_low=False),
            "max_batch": OPTIONAL_COUNT, "baseline": BASELINE, "order": one_of(*ORDERS),
            "score": one_of(*SCORES)},
    description="pixel flipping: the explained output as the most relevant pixels are replaced, "
                "and the area under it (Samek et al. 2017)",
    # That of the default order, most relevant first; with order="least_relevant_first" a higher
    # area is the better explanation.
    higher_is_better=False,
    score="area", curves=("curves",))
@per_example_metric(sequences=True)
def pixel_flipping(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                   steps: int = 20, fraction: float = 1.0, baseline: Any = 0.0,
                   order: str = "most_relevant_first", score: str = "logit",
                   key: Array | None = None, max_batch: int | None = None) -> PixelFlippingResult:
  """Pixel-flipping curves and their area (Samek et al., IEEE TNNLS 2017; Bach et al., PLOS ONE
  2015).

  The relevance of a pixel is the sum of its channels' relevance; flipping a pixel replaces all
  its channels with the baseline's. The pixels are ranked once per image and step k flips the
  first `flip_counts(H*W, steps, fraction)[k]` of them, so the flipped sets are nested: the image
  of step k is `where(rank < count_k, baseline, x)`. Ties in relevance are broken by the
  row-major pixel index (the lower index is flipped first), for both orders, so least-relevant-
  first is not simply the reverse of most-relevant-first where relevance ties (e.g. zeros).

  The area is `trapezoid(curve, fractions / fractions[-1])`: the x axis is rescaled to [0, 1]
  whatever `fraction` is, so the area is the average of the piecewise-linear curve, in the
  score's units.
  Samek et al.'s AOPC is `curve[:, 0] - mean(curve, 1)` up to the end-point weights.
  For most-relevant-first lower is better; for least-relevant-first higher is.

  Wrap it in `jax.jit` with `apply_fn` and the options other than `key` (and an array baseline)
  static, e.g. `jax.jit(functools.partial(pixel_flipping, apply_fn, steps=10))`.

  Args:
    apply_fn: `(params, x) -> outputs (N, K)`, any JAX-traceable function of a batch.
    params: the variables `apply_fn` takes.
    x: the images (B, H, W, C), or token sequences (B, T, D) (embeddings; each token is a pixel).
    target: class indices (B,) or output weights (B, K); see `xjax.explain.targets`. The score
      is `sum_c seed_c * s_c` with `seed = output_seed(outputs, target)`, e.g. the target's logit.
    relevance: the explanation, (B, H, W, C) or already summed over channels (B, H, W); for
      sequences (B, T, D) or already summed over D (B, T).
    steps: the number of flipping steps; the curve has `steps + 1` points.
    fraction: the share of the H*W pixels flipped by the last step, in (0, 1].
    baseline: what flipped pixels become: a number (e.g. -1 for black in [-1, 1] MNIST), "mean"
      (each image's per-channel mean), "uniform" (one noise image per image, uniform in
      [min x_b, max x_b], drawn from `key` and shared by all steps), or an array broadcastable
      to one image (H, W, C), e.g. a colour (C,), or one per image (B, H, W, C). For sequences
      an embedding (D,) (e.g. the [MASK] token's), one per token (T, D) or per sequence
      (B, T, D). Cast to x's dtype.
    order: "most_relevant_first" (MoRF) or "least_relevant_first" (LeRF).
    score: "logit" (the raw output of `apply_fn`) or "probability" (of its softmax).
    key: a JAX PRNG key, required by baseline="uniform" and ignored otherwise.
    max_batch: the most images per call of `apply_fn`; None: B (one step's worth per call).
      The results do not depend on it (up to the float arithmetic of `apply_fn` per batch size).

  Returns:
    `PixelFlippingResult(curves (B, steps + 1), fractions (steps + 1,), area (B,))`.

  Raises:
    ConfigError: x not (B, H, W, C); a target that does not fit; relevance of another shape;
      steps or max_batch not an int >= 1; fraction not in (0, 1] or flipping no pixel; an unknown
      baseline, order or score; baseline="uniform" without a key.
  """
  relevance = checked_relevance(x, relevance)
  check_model_target(apply_fn, params, x, target)
  steps = check_count("steps", steps)
  _check_fraction(fraction)  # passed on as given: flip_counts rounds the decimal it was written as
  if order not in ORDERS:
    raise ConfigError(f"Unknown order {order!r}; known: {', '.join(ORDERS)}.")
  if score not in SCORES:
    raise ConfigError(f"Unknown score {score!r}; known: {', '.join(SCORES)}.")
  # numpy inputs become arrays: the chunks index them with traced image indices.
  x, target, relevance = jnp.asarray(x), jnp.asarray(target), jnp.asarray(relevance)
  batch, height, width, _ = x.shape
  chunk = batch if max_batch is None else check_count("max_batch", max_batch)
  num_pixels = height * width
  counts = flip_counts(num_pixels, steps, fraction)
  if counts[-1] == 0:
    raise ConfigError(f"fraction={fraction} flips no pixel of {height}x{width} images; raise it "
                      f"to at least {0.5 / num_pixels:.3g}.")
  base = baseline_images(x, baseline, key)
  ranks = _pixel_ranks(relevance, order).reshape(batch, height, width, 1)

  counts_of = jnp.asarray(counts)

  def flipped(step: Array, image: Array) -> Array:
    return jnp.where(ranks[image] < counts_of[step][:, None, None, None], base[image], x[image])

  curves = perturbed_scores(apply_fn, params, target, flipped, steps + 1, batch, score=score,
                            max_batch=chunk)
  fractions = jnp.asarray(counts / num_pixels, curves.dtype)
  return PixelFlippingResult(curves, fractions, curve_area(curves, counts))


# --------------------------------------------------------------------------------------------------
# The evaluation loop and the area, shared with the other perturbation metrics.


def perturbed_scores(apply_fn: ApplyFn, params: Any, target: Array,
                     perturbed: Callable[[Array, Array], Array], steps: int, batch: int, *,
                     score: str, max_batch: int) -> Array:
  """(B, steps) the explained score of `perturbed(step, image)` for every step and image.

  `perturbed` maps int vectors `step` (N,) and `image` (N,) to the N images to evaluate; it is
  called on chunks of at most `max_batch` indices, so only that many perturbed images exist at
  once. `score` is "logit" or "probability"; the score is `sum_c seed_c * s_c` with
  `seed = output_seed(outputs, target[image])`.
  """
  # Flat index i = k * B + b: image b after step k (steps-major, so that with a chunk of B
  # images one call of apply_fn evaluates one step). The last chunk is padded by repeating the
  # last image; its scores are dropped.
  total = batch * steps
  chunk = min(max_batch, total)
  num_chunks = -(-total // chunk)
  flat = np.minimum(np.arange(num_chunks * chunk), total - 1).reshape(num_chunks, chunk)

  def scores(indices: Array) -> Array:
    step, image = indices // batch, indices % batch
    outputs = apply_fn(params, perturbed(step, image))
    if score == "probability":
      outputs = jax.nn.softmax(outputs, axis=-1)
    return jnp.sum(output_seed(outputs, target[image]) * outputs, axis=-1)

  flat = jnp.asarray(flat, jnp.int32)
  values = scores(flat[0]) if num_chunks == 1 else jax.lax.map(scores, flat)
  return values.reshape(-1)[:total].reshape(steps, batch).T


def curve_area(curves: Array, counts: np.ndarray) -> Array:
  """(B,) the trapezoid area under `curves` (B, K) against `counts` (K,) rescaled to [0, 1]: the
  average of the piecewise-linear curve, in the score's units."""
  dx = jnp.asarray(np.diff(counts) / counts[-1], curves.dtype)
  return jnp.sum(dx * (curves[:, 1:] + curves[:, :-1]) / 2, axis=-1)
