"""Metrics by name, for configs and command lines: `METRICS.get("pixel_flipping", apply_fn, ...)`.

`METRICS` maps a name to the metric function itself, `metric(apply_fn, params, x, target,
relevance, **options)`, registered with the metadata `description` and `higher_is_better` and
with checks on its options. The metrics are registered by `xjax.metrics` (its `__init__`), as
the models by `xjax.nn`: importing this module imports the package first, so the registry is
always complete, and this module imports no metric.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from xjax.registry import Registry

METRICS = Registry("metric")

# The leading arguments every metric takes by position: apply_fn, params, x, target, relevance.
NUM_POSITIONAL = 5


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
