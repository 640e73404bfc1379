"""Insertion and deletion: the explained probability as pixels leave the image or enter a canvas.

Petsiuk, Das, Saenko, "RISE: Randomized input sampling for explanation of black-box models" (BMVC
2018, Sec. 4.1, "Deletion" and "Insertion" metrics): deletion removes the pixels, most relevant
first, to a baseline (0, a black image) and records the class probability, whose area under the
curve (AUC) should be small; insertion adds the pixels, most relevant first, to a blurred copy of
the image, and its AUC should be large.

Deletion is `pixel_flipping` with `score="probability"`, and insertion is pixel flipping of the
canvas with the image as its "baseline", `where(rank < count, x, canvas)`; both are computed by
`pixel_flipping` itself, so the two metrics share its ranking, schedule, chunking and area.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.metrics.pixel_flipping import (
  BASELINES,
  SCORES,
  ApplyFn,
  baseline_images,
  pixel_flipping,
)
from xjax.metrics.registry import COUNT, METRICS, OPTIONAL_COUNT
from xjax.metrics.relevance import check_images, per_example_metric
from xjax.registry import Check, at_least, in_range, one_of

Array = jax.Array

# The baselines of the perturbation metrics here and in `region_perturbation`: pixel flipping's
# plus "blur", a Gaussian-blurred copy of each image (RISE's insertion canvas).
CANVASES = (*BASELINES, "blur")
CANVAS = Check(lambda v: not isinstance(v, str) or v in CANVASES,
               f"a number, an array or one of {', '.join(CANVASES)}")


class InsertionDeletionResult(NamedTuple):
  """The outcome of `insertion_deletion` (a NamedTuple, so a pytree: it passes through `jax.jit`).

  Attributes:
    insertion: (B, steps + 1) the score as the most relevant pixels are inserted into the canvas;
      column 0 is the canvas, the last column the image (with the default fraction 1).
    deletion: (B, steps + 1) the score as the most relevant pixels are deleted to the baseline;
      column 0 is the image.
    fractions: (steps + 1,) the fraction of the H*W pixels inserted (deleted) at each step.
    insertion_area: (B,) the area under `insertion` against the fraction axis rescaled to [0, 1]
      (higher is better).
    deletion_area: (B,) the area under `deletion` likewise (lower is better).
  """

  insertion: Array
  deletion: Array
  fractions: Array
  insertion_area: Array
  deletion_area: Array

  # Where each per-example field has its examples (`xjax.explain.targets.poison_examples`).
  EXAMPLE_AXES = {"insertion": 0, "deletion": 0, "insertion_area": 0, "deletion_area": 0}


def gaussian_blur(x: Array, sigma: float) -> Array:
  """x (B, H, W, C) blurred per channel by a Gaussian of standard deviation `sigma` pixels.

  The kernel is truncated at `ceil(3 * sigma)` pixels and renormalised where it leaves the image
  (each output pixel is the weighted mean of the pixels it reaches), so a constant image stays
  constant and the border does not darken. Separable: one (H, H) and one (W, W) matrix of
  weights, which handles kernels wider than small images exactly. `sigma == 0` is the identity.
  """
  if sigma == 0:
    return jnp.asarray(x)

  def weights(n: int) -> np.ndarray:
    offsets = np.arange(n)[:, None] - np.arange(n)[None, :]
    kernel = np.exp(-offsets.astype(np.float64) ** 2 / (2 * sigma**2))
    kernel[np.abs(offsets) > math.ceil(3 * sigma)] = 0
    return kernel / kernel.sum(1, keepdims=True)

  x = jnp.asarray(x)
  rows = jnp.asarray(weights(x.shape[1]), x.dtype)
  cols = jnp.asarray(weights(x.shape[2]), x.dtype)
  return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x)


def _check_sigma(sigma: Any) -> float:
  if (isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating))
      or not sigma >= 0 or not math.isfinite(sigma)):
    raise ConfigError(f"blur_sigma must be a finite Python number >= 0 (pixels); got {sigma!r}.")
  return float(sigma)


def canvas_images(x: Array, baseline: Any, key: Array | None, blur_sigma: float) -> Array:
  """The images (B, H, W, C) perturbed pixels take their values from: `pixel_flipping`'s
  baselines (a number, an array, "mean", "uniform") or "blur", `gaussian_blur(x, blur_sigma)`.

  Raises:
    ConfigError: an unknown name, a bad array shape, "uniform" without a key, a bad blur_sigma.
  """
  sigma = _check_sigma(blur_sigma)
  if isinstance(baseline, str) and baseline not in CANVASES:
    raise ConfigError(f"Unknown baseline {baseline!r}; known: a number, an array, "
                      f"{', '.join(map(repr, CANVASES))}.")
  if isinstance(baseline, str) and baseline == "blur":
    return gaussian_blur(x, sigma)
  return baseline_images(jnp.asarray(x), baseline, key)


@METRICS.register(
    "insertion_deletion",
    checks={"steps": COUNT, "fraction": in_range(0, 1, include_low=False),
            "deletion_baseline": CANVAS, "insertion_baseline": CANVAS,
            "blur_sigma": at_least(0), "score": one_of(*SCORES), "max_batch": OPTIONAL_COUNT},
    description="insertion and deletion: the class probability as the most relevant pixels are "
                "inserted into a blurred canvas or deleted, and the areas (Petsiuk et al. 2018)",
    # For the insertion area; the result's `deletion_area` is lower-is-better.
    higher_is_better=True,
    score="insertion_area", curves=("insertion", "deletion"),
    field_higher_is_better={"deletion_area": False})
@per_example_metric(sequences=True)
def insertion_deletion(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                       relevance: Array, *, steps: int = 20, fraction: float = 1.0,
                       deletion_baseline: Any = 0.0, insertion_baseline: Any = "blur",
                       blur_sigma: float = 5.0, score: str = "probability",
                       key: Array | None = None,
                       max_batch: int | None = None) -> InsertionDeletionResult:
  """The deletion and insertion curves and their areas (Petsiuk et al., BMVC 2018, Sec. 4.1).

  Both rank the pixels by their relevance (summed over channels), most relevant first, ties to
  the lower row-major pixel index, and step k moves the first `flip_counts(H*W, steps,
  fraction)[k]` of them:

  * deletion: `where(rank < count_k, deletion_baseline, x)`, i.e. `pixel_flipping(...,
    baseline=deletion_baseline, score=score)`;
  * insertion: `where(rank < count_k, x, canvas)` with the canvas from `insertion_baseline`,
    i.e. `pixel_flipping` of the canvas with `baseline=x`.

  Each area is the trapezoid AUC against the fraction axis rescaled to [0, 1], as RISE's
  `auc(arr) = (sum(arr) - arr[0] / 2 - arr[-1] / 2) / (n - 1)`.

  Differences from RISE's code (github.com/eclique/RISE, evaluation.py): RISE moves 224 pixels
  per step (one row of a 224x224 image, 224 steps) where `steps` here is the number of steps;
  its blur is an 11x11 kernel of sigma 5 with zero padding (darkening the border), here the
  kernel is truncated at 3 sigma and renormalised at the border; its sort is not stable.

  Args:
    apply_fn, params, x, target, relevance: as for `pixel_flipping` (images or token
      sequences).
    steps: the number of steps; each curve has `steps + 1` points.
    fraction: the share of the H*W pixels moved by the last step, in (0, 1].
    deletion_baseline: what deleted pixels become: anything `pixel_flipping` takes as its
      baseline (default 0, RISE's), or "blur".
    insertion_baseline: the canvas the pixels are inserted into: "blur" (RISE's), or a number,
      "mean", "uniform" or an array as for `pixel_flipping`. "blur" is for images: token
      sequences need a number (e.g. 0) or an embedding (D,) (e.g. the [MASK] token's) here.
    blur_sigma: the standard deviation in pixels of the "blur" canvas (RISE: 5); >= 0.
    score: "probability" (of the softmax, as RISE) or "logit".
    key: a JAX PRNG key, required by a "uniform" baseline (deletion and insertion draw
      independent noise from it) and ignored otherwise.
    max_batch: the most images per call of `apply_fn`; None: B.

  Returns:
    `InsertionDeletionResult(insertion, deletion (B, steps + 1), fractions (steps + 1,),
    insertion_area, deletion_area (B,))`.

  Raises:
    ConfigError: as `pixel_flipping`, and an unknown baseline or a bad blur_sigma.
  """
  if score not in SCORES:
    raise ConfigError(f"Unknown score {score!r}; known: {', '.join(SCORES)}.")
  # The checks of x, target and relevance are pixel_flipping's; the canvases need a 4-D x first.
  check_images(x)
  keys = (None, None) if key is None else tuple(jax.random.split(key))
  x = jnp.asarray(x)
  deleted = canvas_images(x, deletion_baseline, keys[0], blur_sigma)
  canvas = canvas_images(x, insertion_baseline, keys[1], blur_sigma)
  common = dict(steps=steps, fraction=fraction, order="most_relevant_first", score=score,
                max_batch=max_batch)
  deletion = pixel_flipping(apply_fn, params, x, target, relevance, baseline=deleted, **common)
  insertion = pixel_flipping(apply_fn, params, canvas, target, relevance, baseline=x, **common)
  return InsertionDeletionResult(insertion.curves, deletion.curves, deletion.fractions,
                                 insertion.area, deletion.area)
