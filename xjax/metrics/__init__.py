"""Scores of explanations, one calling convention beside the methods'.

`metric(apply_fn, params, x, target, relevance, **options)` returns one score per example (plus
curves where the metric has them); batched and jit-compatible (the caller jits it with the
options static); ground truth comes in as options. `apply_fn`, `params`, `x` and `target` are
those the explanation method was called with (see `xjax.explain.targets`).

* `pixel_flipping`: flip pixels in the order of relevance and record the explained output
  (Bach et al. 2015; Samek et al., IEEE TNNLS 2017); the area under the curve, lower is better.

This package registers the metrics in `METRICS` (`xjax.metrics.registry`, which imports no
metric): importing any module of `xjax.metrics` imports this one first, so the registry is
always complete.
"""

from xjax.metrics.pixel_flipping import (
  BASELINES,
  ORDERS,
  SCORES,
  PixelFlippingResult,
  flip_counts,
  pixel_flipping,
)
from xjax.metrics.registry import METRICS, get_metric
from xjax.registry import Check, in_range, one_of

_count = Check(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
               "a Python int >= 1")

METRICS.register(
    "pixel_flipping", pixel_flipping,
    checks={"steps": _count,
            "fraction": in_range(0, 1, include_low=False),
            "max_batch": Check(lambda v: v is None or _count(v), "None or a Python int >= 1"),
            "baseline": Check(lambda v: not isinstance(v, str) or v in BASELINES,
                              f"a number, an array or one of {', '.join(BASELINES)}"),
            "order": one_of(*ORDERS),
            "score": one_of(*SCORES)},
    # higher_is_better is that of the default order, most relevant first; with
    # order="least_relevant_first" a higher area is the better explanation.
    description="pixel flipping: the explained output as the most relevant pixels are replaced, "
                "and the area under it (Samek et al. 2017)",
    higher_is_better=False)

__all__ = ["BASELINES", "METRICS", "ORDERS", "SCORES", "PixelFlippingResult", "flip_counts",
           "get_metric", "pixel_flipping"]
