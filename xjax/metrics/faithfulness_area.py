"""AttnLRP's faithfulness: the area between the least- and the most-relevant-first curves.

Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin, Samek, "AttnLRP: Attention-aware
layer-wise relevance propagation for transformers" (ICML 2024, Sec. 4, the faithfulness of the
input attributions): the inputs (tokens, or image patches) are ablated to a baseline in the order
of their relevance, most relevant first (MoRF) and least relevant first (LeRF), and the target's
logit is recorded after each step. A faithful explanation makes the MoRF curve fall fast and the
LeRF curve stay high, so the score is the area between them, AUC(LeRF) - AUC(MoRF): higher is
better. Unlike either area alone it does not reward an explanation for a model whose output
falls under any ablation (both curves fall, and the difference stays small).

Both curves are `pixel_flipping`'s (its two `ORDERS`), with the same schedule, baseline and key,
so the measure shares its ranking, chunked evaluation and area; for images and token sequences
alike (see `xjax.metrics.relevance`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from xjax.metrics.pixel_flipping import BASELINE, SCORES, ApplyFn, pixel_flipping
from xjax.metrics.registry import COUNT, METRICS, OPTIONAL_COUNT
from xjax.metrics.relevance import per_example_metric
from xjax.registry import in_range, one_of

Array = jax.Array


class FaithfulnessAreaResult(NamedTuple):
  """The outcome of `faithfulness_area` (a NamedTuple, so a pytree: it passes through `jax.jit`).

  Attributes:
    most_relevant_first: (B, steps + 1) the score as the most relevant inputs are ablated first
      (MoRF); column 0 is the unperturbed input.
    least_relevant_first: (B, steps + 1) the same, least relevant first (LeRF).
    fractions: (steps + 1,) the fraction of the inputs (pixels, tokens) ablated at each step.
    area: (B,) AUC(LeRF) - AUC(MoRF), each area the trapezoid one against the fraction axis
      rescaled to [0, 1] (`pixel_flipping`'s `area`): higher is better.
  """

  most_relevant_first: Array
  least_relevant_first: Array
  fractions: Array
  area: Array

  # Where each per-example field has its examples (`xjax.explain.targets.poison_examples`).
  EXAMPLE_AXES = {"most_relevant_first": 0, "least_relevant_first": 0, "area": 0}


@METRICS.register(
    "faithfulness_area",
    checks={"steps": COUNT, "fraction": in_range(0, 1, include_low=False),
            "max_batch": OPTIONAL_COUNT, "baseline": BASELINE, "score": one_of(*SCORES)},
    description="faithfulness area: the area between the least- and the most-relevant-first "
                "ablation curves of the target logit (Achtibat et al. 2024, AttnLRP)",
    higher_is_better=True,
    score="area", curves=("most_relevant_first", "least_relevant_first"))
@per_example_metric(sequences=True)
def faithfulness_area(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array,
                      *, steps: int = 20, fraction: float = 1.0, baseline: Any = 0.0,
                      score: str = "logit", key: Array | None = None,
                      max_batch: int | None = None) -> FaithfulnessAreaResult:
  """AttnLRP's faithfulness, AUC(LeRF) - AUC(MoRF) (Achtibat et al., ICML 2024, Sec. 4).

  `pixel_flipping(..., order="least_relevant_first").area - pixel_flipping(...,
  order="most_relevant_first").area`, the two called with the same options: step k replaces the
  first `flip_counts(N, steps, fraction)[k]` of the N pixels (tokens) in either order by the
  baseline's, ties to the lower index in both orders. For a model linear in its inputs, a zero
  baseline and exact relevance (gradient x input), each curve is the target logit less the
  relevance removed so far, so the area is the trapezoid average over the steps of the relevance
  the MoRF order has removed less the relevance the LeRF order has.

  Differences from Achtibat et al.: they ablate the tokens of LLMs and the patches of ViTs and
  average over a dataset; here the unit is a token (x (B, T, D)) or a pixel (x (B, H, W, C)),
  and the score is per example.

  Wrap it in `jax.jit` like `pixel_flipping`, e.g. `jax.jit(functools.partial(
  faithfulness_area, apply_fn, steps=10))`.

  Args:
    apply_fn, params, target: as for `pixel_flipping`; the score is the target's logit by
      default.
    x: the images (B, H, W, C) or token sequences (B, T, D) (embeddings).
    relevance: (B, H, W, C) or (B, H, W) for images; (B, T) or (B, T, D) for sequences.
    steps: the number of ablation steps; each curve has `steps + 1` points.
    fraction: the share of the pixels (tokens) ablated by the last step, in (0, 1].
    baseline: what ablated inputs become, as `pixel_flipping`'s: a number (0: a zero
      embedding), "mean", "uniform", or an array (an embedding (D,), e.g. the [MASK] token's, or
      a colour (C,)).
    score: "logit" (AttnLRP's) or "probability".
    key: a JAX PRNG key, required by baseline="uniform" (one noise input for both orders).
    max_batch: the most inputs per call of `apply_fn`; None: B.

  Returns:
    `FaithfulnessAreaResult(most_relevant_first, least_relevant_first (B, steps + 1),
    fractions (steps + 1,), area (B,))`.

  Raises:
    ConfigError: as `pixel_flipping`.
  """
  common = dict(steps=steps, fraction=fraction, baseline=baseline, score=score, key=key,
                max_batch=max_batch)
  morf = pixel_flipping(apply_fn, params, x, target, relevance, order="most_relevant_first",
                        **common)
  lerf = pixel_flipping(apply_fn, params, x, target, relevance, order="least_relevant_first",
                        **common)
  return FaithfulnessAreaResult(morf.curves, lerf.curves, morf.fractions, lerf.area - morf.area)
