"""Metrics by name, for configs and command lines: `METRICS.get("pixel_flipping", apply_fn, ...)`.

`METRICS` maps a name to the metric function itself, `metric(apply_fn, params, x, target,
relevance, **options)`. Each metric module registers its metrics where they are defined, with
checks on their options and this metadata:

  description       one line: what the metric measures, and the paper.
  higher_is_better  of the score: True, False, or None (neither, e.g. a signed error best at 0).
  score             the field of the result that is the metric's score, one per example; None:
                    the result is an array, the score itself. A field that is a curve (the
                    randomisation's similarity per step) scores by its last point.
  curves            the fields of the result that are curves, one row per example (default none).
  field_higher_is_better  {field: True / False} for the result's other scores whose direction
                    differs from `higher_is_better` (e.g. region perturbation's `aopc`).

`xjax.experiments.scoring` reads `score` and `curves` to turn a result into table columns.

The decorator goes above `per_example_metric`, so that the registered object is the guarded
function. This module imports no metric (they import it, for `METRICS` and the shared checks
below); `METRICS` imports the metric modules at its first lookup, in the order of `MODULES`,
which is also the order of `METRICS.names()` (faithfulness, axiomatic, randomisation,
robustness, localisation, complexity), so it is complete and in order however it was imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from xjax.registry import Check, Registry, boolean, integer, optional

# The calling convention's functions: the model, and a method re-run by a metric (`explain=`).
ApplyFn = Callable[[Any, jax.Array], jax.Array]
ExplainFn = Callable[[Any, jax.Array, jax.Array], jax.Array]

# The modules that register metrics, in the order of `METRICS.names()`.
MODULES = ("xjax.metrics.pixel_flipping", "xjax.metrics.faithfulness_area",
           "xjax.metrics.region_perturbation", "xjax.metrics.insertion_deletion",
           "xjax.metrics.faithfulness_correlation", "xjax.metrics.completeness",
           "xjax.metrics.randomisation", "xjax.metrics.diffusion", "xjax.metrics.sensitivity",
           "xjax.metrics.localisation", "xjax.metrics.complexity")

METRICS = Registry("metric", modules=MODULES)

# The leading arguments every metric takes by position: apply_fn, params, x, target, relevance.
NUM_POSITIONAL = 5

# Checks of the options several metrics share.
COUNT = integer(1)
OPTIONAL_COUNT = optional(COUNT)
AT_LEAST_TWO = integer(2)
FLAG = boolean
EXPLAIN = Check(callable, "a function explain(params, x, target) -> relevance")


def get_metric(name: str, **options: Any) -> Callable[..., Any]:
  """The metric `name` with `options` bound: `(apply_fn, params, x, target, relevance) -> result`.

  The options are checked now (names and values, see `xjax.registry.Registry.check`), so a bad
  config fails before any model runs.

  Raises:
    ConfigError: an unknown metric (listing the known ones), or an option it does not take or a
      value its checks reject.
  """
  METRICS.check(name, options, positional=NUM_POSITIONAL)
  return functools.partial(METRICS[name], **options)
