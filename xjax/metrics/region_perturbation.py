"""Region perturbation: pixel flipping of whole patches, most relevant patch first, and AOPC.

Samek, Binder, Montavon, Lapuschkin, Mueller, "Evaluating the visualization of what a deep neural
network has learned" (IEEE TNNLS 2017, Sec. III, "MoRF" region perturbation and AOPC, Eq. 12):
regions are removed in the order of their relevance and the explained output is recorded after
each; a good explanation makes it fall fast. As in Quantus 0.6.0's `RegionPerturbation`, the
regions are the tiles of a grid of non-overlapping `patch_size` x `patch_size` patches, ranked
by the sum of their relevance.

The perturbed images are built and evaluated by `pixel_flipping`'s loop (`perturbed_scores`):
pixel flipping in which every pixel carries the rank of its patch and step k replaces k patches.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import check_count, check_model_target
from xjax.metrics.insertion_deletion import CANVAS, canvas_images
from xjax.metrics.pixel_flipping import (
  ORDERS,
  SCORES,
  ApplyFn,
  curve_area,
  perturbed_scores,
)
from xjax.metrics.registry import COUNT, METRICS, OPTIONAL_COUNT
from xjax.metrics.relevance import per_example_metric, pixel_relevance, relevance_ranks
from xjax.registry import at_least, one_of

Array = jax.Array


class RegionPerturbationResult(NamedTuple):
  """The outcome of `region_perturbation` (a NamedTuple, so a pytree: it passes through `jax.jit`).

  Attributes:
    curves: (B, steps + 1) the explained score after k = 0..steps patches are replaced; column 0
      is the unperturbed image.
    fractions: (steps + 1,) the fraction of the image's patches replaced at each step, k / N.
    area: (B,) the trapezoid area under each curve against k / steps (the curve's average).
    aopc: (B,) Samek et al.'s AOPC (Eq. 12) of each image, `mean_{k=0..steps} (curve_0 -
      curve_k)`: higher is better for most-relevant-first.
  """

  curves: Array
  fractions: Array
  area: Array
  aopc: Array

  # Where each per-example field has its examples (`xjax.explain.targets.poison_examples`).
  EXAMPLE_AXES = {"curves": 0, "area": 0, "aopc": 0}


def _check_patch_size(patch_size: Any, height: int, width: int) -> int:
  patch = check_count("patch_size", patch_size)
  if patch > max(height, width):
    raise ConfigError(f"patch_size={patch} exceeds the {height}x{width} images; at most "
                      f"{max(height, width)}.")
  return patch


def _grid_offset(size: int, patch: int) -> int:
  """Where the grid starts before pixel 0: Quantus pads `patch - size % patch` pixels, the floor
  of half of them before the image (utils.get_padding_size), so the partial patches are split
  between both borders and the grid stays centred."""
  return (patch - size % patch) % patch // 2


def patch_ids(height: int, width: int, patch_size: int) -> np.ndarray:
  """(H, W) the row-major index of the patch each pixel belongs to, on the centred grid of
  `ceil(H / p) x ceil(W / p)` patches (partial patches at the borders where p does not divide)."""
  rows = (np.arange(height) + _grid_offset(height, patch_size)) // patch_size
  cols = (np.arange(width) + _grid_offset(width, patch_size)) // patch_size
  per_row = -(-(width + _grid_offset(width, patch_size)) // patch_size)
  return rows[:, None] * per_row + cols[None, :]


@METRICS.register(
    "region_perturbation",
    checks={"patch_size": COUNT, "steps": OPTIONAL_COUNT, "order": one_of(*ORDERS),
            "baseline": CANVAS, "blur_sigma": at_least(0), "score": one_of(*SCORES),
            "max_batch": OPTIONAL_COUNT},
    description="region perturbation: the explained output as the most relevant patches are "
                "replaced, its area and AOPC (Samek et al. 2017)",
    # The area under the most-relevant-first curve; the result's `aopc` is higher-is-better.
    higher_is_better=False,
    score="area", curves=("curves",), field_higher_is_better={"aopc": True})
@per_example_metric(sequences=True)
def region_perturbation(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array,
                        *, patch_size: int = 8, steps: int | None = None,
                        order: str = "most_relevant_first", baseline: Any = 0.0,
                        blur_sigma: float = 5.0, score: str = "logit", key: Array | None = None,
                        max_batch: int | None = None) -> RegionPerturbationResult:
  """Region-perturbation curves, their area and AOPC (Samek et al., IEEE TNNLS 2017, Sec. III).

  The image is tiled by a grid of non-overlapping `patch_size` x `patch_size` patches; a patch's
  relevance is the sum of the relevance of its pixels and channels. Patches are ranked once per
  image (ties to the lower row-major patch index, in either order) and the image of step k has
  its first k patches, all channels, replaced by the baseline's pixels, so the replaced sets are
  nested. Where `patch_size` does not divide H (or W) the grid is centred as Quantus pads it:
  `(p - H % p) // 2` rows of the first patch row lie outside the image, so the border patches
  are partial (smaller) and count as one patch each.

  AOPC (Eq. 12) is `mean_{k=0..L} (f(x^(0)) - f(x^(k)))` with L = steps (the k = 0 term is 0);
  Samek et al. average it over images as well, here it is per image.

  Differences from Samek et al.: they perturb a 9x9 region centred on each of the ordered pixel
  locations (regions may overlap) with uniform noise; here, as Quantus, a fixed grid of patches
  and a baseline. Differences from Quantus 0.6.0's `RegionPerturbation(patch_size=8,
  regions_evaluation=100, perturb_baseline="black")`: Quantus returns the drops `f(x) - f(x^(k))`
  for k = 1..regions_evaluation (i.e. `curves[:, :1] - curves[:, 1:]` here), scores softmax
  probabilities by default (`softmax=True` in its call; here `score="logit"`, as pixel_flipping),
  takes "black" as each image's minimum (here pass `baseline=x.min((1, 2, 3), keepdims=True)`),
  sorts with an unstable argsort (ties differ) and truncates regions_evaluation silently to the
  number of patches (here `steps` larger than that is an error; None means all patches).

  Args:
    apply_fn, params, x, target, relevance: as for `pixel_flipping` (images or token
      sequences).
    patch_size: the side of the square patches in pixels, an int in [1, max(H, W)]. For token
      sequences (images of T x 1 pixels) a patch is a span of `patch_size` consecutive tokens,
      on the same centred grid (Samek et al.'s regions carry over as spans).
    steps: the number of patches replaced, in [1, N] for N patches; None: all N. The curve has
      `steps + 1` points.
    order: "most_relevant_first" (MoRF) or "least_relevant_first" (LeRF).
    baseline: as `pixel_flipping`'s (a number, "mean", "uniform", an array), or "blur": a
      Gaussian-blurred copy of each image (`insertion_deletion.gaussian_blur`; not for
      sequences).
    blur_sigma: the standard deviation in pixels of the "blur" baseline; >= 0.
    score: "logit" or "probability".
    key: a JAX PRNG key, required by baseline="uniform" and ignored otherwise.
    max_batch: the most images per call of `apply_fn`; None: B.

  Returns:
    `RegionPerturbationResult(curves (B, steps + 1), fractions (steps + 1,), area (B,),
    aopc (B,))`.

  Raises:
    ConfigError: x, target or relevance that do not fit; patch_size not an int in [1, max(H,
      W)]; steps not an int in [1, N]; an unknown order, score or baseline; a bad blur_sigma;
      baseline="uniform" without a key; max_batch not an int >= 1.
  """
  per_pixel = pixel_relevance(x, relevance)
  check_model_target(apply_fn, params, x, target)
  if order not in ORDERS:
    raise ConfigError(f"Unknown order {order!r}; known: {', '.join(ORDERS)}.")
  if score not in SCORES:
    raise ConfigError(f"Unknown score {score!r}; known: {', '.join(SCORES)}.")
  x, target = jnp.asarray(x), jnp.asarray(target)
  batch, height, width, _ = x.shape
  patch = _check_patch_size(patch_size, height, width)
  ids = patch_ids(height, width, patch)
  num_patches = int(ids.max()) + 1
  steps = num_patches if steps is None else check_count("steps", steps)
  if steps > num_patches:
    raise ConfigError(f"steps={steps} exceeds the {num_patches} patches of {patch}x{patch} in "
                      f"{height}x{width} images; at most {num_patches} (or None).")
  chunk = batch if max_batch is None else check_count("max_batch", max_batch)
  base = canvas_images(x, baseline, key, blur_sigma)

  # (B, N) the relevance of each patch: a segment sum over the flat pixels.
  sums = jax.vmap(lambda r: jax.ops.segment_sum(r, ids.reshape(-1), num_patches))(
      per_pixel.reshape(batch, -1))
  # Each patch's position in the order, then each pixel's: its patch's.
  ranks = relevance_ranks(sums, order)[:, ids][..., None]  # (B, H, W, 1)

  def perturbed(step: Array, image: Array) -> Array:
    return jnp.where(ranks[image] < step[:, None, None, None], base[image], x[image])

  curves = perturbed_scores(apply_fn, params, target, perturbed, steps + 1, batch, score=score,
                            max_batch=chunk)
  counts = np.arange(steps + 1)
  fractions = jnp.asarray(counts / num_patches, curves.dtype)
  aopc = jnp.mean(curves[:, :1] - curves, axis=-1)
  return RegionPerturbationResult(curves, fractions, curve_area(curves, counts), aopc)
