"""Localisation: how much of an explanation falls on a ground-truth mask of the evidence.

Four metrics, each one score per example, all taking the ground truth as the keyword `mask`,
one boolean (or 0/1) mask (B, H, W) per image:

* `pointing_game`: does the most relevant pixel hit the mask (Zhang et al., ECCV 2016)?
* `attribution_localisation`: the share of the positive relevance inside the mask (Kohlbrenner
  et al., IJCNN 2020).
* `relevance_mass_accuracy`: the share of the relevance inside the mask (Arras et al., Information
  Fusion 2022).
* `relevance_rank_accuracy`: the share of the K most relevant pixels inside the mask, K its size
  (Arras et al. 2022).

The relevance of a pixel is the sum of its channels' relevance, as in `pixel_flipping`. The model
is not needed: `apply_fn`, `params` and `target` are taken (so that every metric is called the
same way) and ignored; `x` gives the shapes the relevance and the mask are checked against.

Token sequences x (B, T, D) are scored the same way with relevance (B, T) (or (B, T, D), summed
over D) and a mask (B, T) of the ground-truth tokens: a sequence is an image of T x 1 pixels
(`xjax.metrics.relevance`), so the pointing game's `tolerance` counts tokens to either side and
`weighted` divides by the share of the tokens in the mask.

Each metric follows Quantus 0.6.0 (Hedstroem et al., JMLR 2023) with `normalise=False` and
`abs=False`, the differences being named in each docstring. An empty mask makes every score
undefined: a concrete mask (outside `jax.jit`) with an empty example raises a `ConfigError`
naming it; a traced one cannot be inspected, and those examples score NaN (as in Quantus).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.heatmaps import positive_share
from xjax.metrics.registry import FLAG, METRICS, ApplyFn
from xjax.metrics.relevance import most_relevant, per_example_metric, pixel_relevance
from xjax.registry import non_negative

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# Checks shared by the four metrics.


def _check_mask(x: Any, mask: Any) -> Array:
  """The mask as a (B, H, W) boolean array.

  The values are checked only where the mask is concrete: a traced mask (inside `jax.jit`) has
  none to look at, and its empty examples score NaN instead.

  Raises:
    ConfigError: no mask; a mask of another shape than (B, H, W) of x; a concrete mask holding
      values other than 0 and 1, or empty for some example (the message lists which).
  """
  if mask is None:
    raise ConfigError("localisation metrics need the ground truth: pass mask=, one boolean (H, W) "
                      "mask per image (B, H, W), or one boolean per token (B, T) for sequences.")
  expected, shape = tuple(jnp.shape(x)[:3]), jnp.shape(mask)
  if shape != expected:
    raise ConfigError(f"mask must be one (H, W) mask per image, shape {expected}; got shape "
                      f"{shape}.")
  if not isinstance(mask, jax.core.Tracer):
    values = np.asarray(mask)
    if values.dtype != bool and not np.all((values == 0) | (values == 1)):
      raise ConfigError(f"mask must be boolean or hold only 0 and 1; got values in "
                        f"[{values.min()}, {values.max()}] of dtype {values.dtype}.")
    empty = np.flatnonzero(~values.reshape(len(values), -1).astype(bool).any(-1))
    if empty.size:
      raise ConfigError(f"mask is empty for example(s) {empty.tolist()}: localisation needs some "
                        f"ground truth in every image (under jax.jit such examples score NaN).")
  return jnp.asarray(mask).astype(bool)


def _undefined_if_empty(score: Array, mask: Array) -> Array:
  """`score`, NaN where the example's mask is empty (only reachable for a traced mask)."""
  return jnp.where(mask.any(axis=(1, 2)), score, jnp.nan)


def _disc(radius: float, limit: int) -> np.ndarray:
  """The offsets within `radius` pixels (Euclidean, centre to centre) as a 0/1 kernel (k, k).

  Offsets beyond `limit` (the image's larger side less 1) cannot reach a pixel of the image, so
  the kernel is cut there: a huge tolerance costs no more than one as large as the image.
  """
  half = min(math.floor(radius), limit)
  offsets = np.arange(-half, half + 1)
  return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).astype(np.float32)


def _dilate(mask: Array, radius: float) -> Array:
  """(B, H, W) bool: the pixels within `radius` pixels of the mask (a dilation by a disc)."""
  _, height, width = mask.shape
  kernel = _disc(radius, max(height, width) - 1)
  half = kernel.shape[0] // 2
  # A correlation with the (symmetric) disc counts the mask pixels near each pixel; the counts
  # are small integers, exact in float32, so "> 0.5" is "at least one".
  counts = jax.lax.conv_general_dilated(
      mask[:, None].astype(jnp.float32), jnp.asarray(kernel)[None, None], window_strides=(1, 1),
      padding=((half, half), (half, half)))
  return counts[:, 0] > 0.5


# --------------------------------------------------------------------------------------------------
# The metrics.


@METRICS.register(
    "pointing_game",
    checks={"tolerance": non_negative},
    description="pointing game: 1 where the most relevant pixel lies within `tolerance` pixels of "
                "the ground-truth mask (Zhang et al. 2016)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def pointing_game(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                  mask: Array | None = None, tolerance: float = 0) -> Array:
  """The pointing game (Zhang, Lin, Brandt, Shen, Sclaroff, "Top-down neural attention by
  excitation backprop", ECCV 2016): 1.0 where the most relevant pixel hits the ground truth.

  hit_b = 1 if some pixel p with R_p = max_q R_q lies within `tolerance` pixels (Euclidean distance
  between pixel centres) of a mask pixel, else 0, with R_p the channel-summed relevance. Zhang et
  al. count a hit within 15 pixels of the annotation; `tolerance=0` (the default) asks for the
  maximum inside the mask, which is what Quantus 0.6.0's `PointingGame` computes.

  Ties of the maximum: a hit if ANY maximal pixel hits, as Quantus 0.6.0 (`np.any(s * (a ==
  a.max()))`). This is the one tie rule of xjax (`runs.explain`, the tour and `runs.evaluate` all
  score with this function). It does not depend on the order the pixels are stored in, as
  "the first argmax" would (a tie resolved row-major scores differently on a transposed or
  flipped image), and it keeps the scores equal to Quantus's. Its price: relevance that is
  constant (e.g. all zero, an empty heatmap) hits every non-empty mask, and a heatmap with
  plateaus (e.g. an upsampled CAM) hits if any pixel of its top plateau touches the mask; read
  such scores beside a measure of how concentrated the relevance is.

  Differences from Quantus 0.6.0: Quantus has no tolerance; its empty-mask NaN is assigned into
  a boolean array and so reads back as a hit (1.0), where here an empty mask is an error (NaN
  under jit); its `weighted` option writes into the same boolean array and is not offered.

  Args:
    apply_fn, params, target: ignored (the calling convention of `xjax.metrics`).
    x: the images (B, H, W, C) or token sequences (B, T, D); only their shape is used.
    relevance: the explanation, (B, H, W, C) or already summed over channels (B, H, W); for
      sequences (B, T) or (B, T, D) (summed over D).
    mask: the ground truth, (B, H, W) boolean or 0/1 ((B, T) for sequences); required (None
      only so that a metric can be bound by name without it, see `xjax.metrics.get_metric`).
    tolerance: the largest distance in pixels from the mask that still counts as a hit, a Python
      number >= 0 (it fixes the shape of the dilation under jit).

  Returns:
    (B,) 1.0 for a hit, 0.0 for a miss (NaN for an empty traced mask).

  Raises:
    ConfigError: x not (B, H, W, C); no mask, or relevance or mask of another shape; a tolerance
      that is not a finite Python number >= 0; a concrete mask not 0/1 or empty for some example.
  """
  del apply_fn, params, target
  scores = pixel_relevance(x, relevance)
  ground_truth = _check_mask(x, mask)
  if (isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real)
      or not math.isfinite(tolerance) or tolerance < 0):
    raise ConfigError(f"tolerance must be a finite Python number >= 0 (a distance in pixels); "
                      f"got {tolerance!r}.")
  near = _dilate(ground_truth, float(tolerance)) if tolerance >= 1 else ground_truth
  is_max = scores == scores.max(axis=(1, 2), keepdims=True)
  hit = jnp.any(is_max & near, axis=(1, 2)).astype(scores.dtype)
  return _undefined_if_empty(hit, ground_truth)


@METRICS.register(
    "attribution_localisation",
    checks={"positive_only": FLAG, "weighted": FLAG},
    description="attribution localisation: the share of the positive relevance inside the "
                "ground-truth mask (Kohlbrenner et al. 2020)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def attribution_localisation(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                             relevance: Array, *, mask: Array | None = None,
                             positive_only: bool = True, weighted: bool = False) -> Array:
  """Attribution localisation (Kohlbrenner, Bauer, Nakajima, Binder, Samek, Lapuschkin, "Towards
  best practice in explaining neural network decisions with LRP", IJCNN 2020): the share of the
  positive relevance that falls inside the mask.

  mu_b = sum_{p in mask} R+_p / (sum_p R+_p + 1e-9), with R+ = max(R, 0) of the channel-summed
  relevance; the epsilon (Quantus's) makes an example without positive relevance score 0 (the
  computation is `xjax.explain.heatmaps.positive_share`, which `relevance_share` also calls). With
  `weighted`, mu_b * (H * W) / |mask_b|: the ratio to what relevance spread evenly would score,
  so that large objects do not score high by size alone (Kohlbrenner et al.'s weighted variant).

  Differences from Quantus 0.6.0 `AttributionLocalisation`: its default `abs=True` scores |R|
  (here `positive_only` clips instead, the paper's positive relevance; `abs=False,
  positive_attributions=True` in Quantus is this default); it returns NaN where the ratio exceeds
  1 (possible only with `positive_only=False`), here the ratio is returned as it is; its
  `weighted=True` multiplies by |mask_b| / x_batch[2:].size, the mask's size over the element
  count of all images but the first two of the batch (a slicing slip for one image's size), so
  it depends on the batch; here the factor is H * W / |mask_b|.

  Args:
    apply_fn, params, target: ignored (the calling convention of `xjax.metrics`).
    x: the images (B, H, W, C) or token sequences (B, T, D); only their shape is used.
    relevance: the explanation, (B, H, W, C) or already summed over channels (B, H, W); for
      sequences (B, T) or (B, T, D) (summed over D).
    mask: the ground truth, (B, H, W) boolean or 0/1 ((B, T) for sequences); required (None
      only so that a metric can be bound by name without it, see `xjax.metrics.get_metric`).
    positive_only: clip the relevance at 0 first (the paper's definition); False: signed.
    weighted: multiply by the ratio of the image's size to the mask's, H * W / |mask_b|.

  Returns:
    (B,) the share, in [0, 1] with `positive_only` (up to H * W / |mask| if `weighted`).

  Raises:
    ConfigError: x not (B, H, W, C); no mask, or relevance or mask of another shape; a concrete
      mask not 0/1 or empty for some example.
  """
  del apply_fn, params, target
  scores = pixel_relevance(x, relevance)
  ground_truth = _check_mask(x, mask)
  # The computation `xjax.explain.heatmaps.relevance_share` (runs.explain's share) shares.
  share = positive_share(scores, ground_truth, positive_only=positive_only)
  if weighted:
    _, height, width = ground_truth.shape
    share = share * (height * width) / ground_truth.sum(axis=(1, 2))
  return _undefined_if_empty(share, ground_truth)


@METRICS.register(
    "relevance_mass_accuracy",
    description="relevance mass accuracy: the share of the (signed) relevance inside the "
                "ground-truth mask (Arras et al. 2022)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def relevance_mass_accuracy(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                            relevance: Array, *, mask: Array | None = None) -> Array:
  """Relevance mass accuracy (Arras, Osman, Samek, "CLEVR-XAI: A benchmark dataset for the ground
  truth evaluation of neural network explanations", Information Fusion 2022): the share of the
  relevance that falls inside the mask.

  mass_b = sum_{p in mask} R_p / sum_p R_p with R the channel-summed, SIGNED relevance, as
  Quantus 0.6.0 `RelevanceMassAccuracy` computes it (its default `abs=False`; its default
  normalisation divides by a positive number and cancels). Negative relevance therefore counts:
  inside the mask it lowers the score, outside it raises it, and the score can leave [0, 1] (and
  is +-inf or NaN where the relevance sums to 0). Arras et al. score positive relevance only;
  for that, clip it first (this is then `attribution_localisation` without its epsilon).
  Arguments and errors as in `attribution_localisation`, less its options.

  Returns:
    (B,) the relevance inside the mask over the total relevance.
  """
  del apply_fn, params, target
  scores = pixel_relevance(x, relevance)
  ground_truth = _check_mask(x, mask)
  inside = jnp.sum(jnp.where(ground_truth, scores, 0), axis=(1, 2))
  return _undefined_if_empty(inside / scores.sum(axis=(1, 2)), ground_truth)


@METRICS.register(
    "relevance_rank_accuracy",
    description="relevance rank accuracy: the share of the K most relevant pixels inside the "
                "ground-truth mask of K pixels (Arras et al. 2022)",
    higher_is_better=True, score=None)
@per_example_metric(sequences=True)
def relevance_rank_accuracy(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                            relevance: Array, *, mask: Array | None = None) -> Array:
  """Relevance rank accuracy (Arras, Osman, Samek, "CLEVR-XAI: A benchmark dataset for the ground
  truth evaluation of neural network explanations", Information Fusion 2022): the share of the K
  most relevant pixels that lie inside the mask, K = |mask_b| the number of mask pixels.

  rank_b = |top_K(R) & mask_b| / K with R the channel-summed, signed relevance (as Quantus 0.6.0
  `RelevanceRankAccuracy`). Ties in relevance are broken by the row-major pixel index, the lower
  index ranking higher (a stable sort, as in `pixel_flipping`); Quantus's `np.argsort` does not
  specify its order of ties, so the two can differ on tied relevance only (e.g. zeros). K varies
  per example: `most_relevant` selects each example's top K without sorting. Arguments
  and errors as in `relevance_mass_accuracy`.

  Returns:
    (B,) the share in [0, 1].
  """
  del apply_fn, params, target
  scores = pixel_relevance(x, relevance)
  ground_truth = _check_mask(x, mask)
  batch = scores.shape[0]
  flat, inside = scores.reshape(batch, -1), ground_truth.reshape(batch, -1)
  size = inside.sum(-1)
  hits = jnp.sum(inside & most_relevant(flat, size), axis=-1)
  # An empty mask gives 0 / 0 = NaN by itself.
  return (hits / size).astype(scores.dtype)
