"""Completeness: how far the relevance falls short of summing to the explained output's change.

Sundararajan, Taly, Yan, "Axiomatic attribution for deep networks" (ICML 2017), Sec. 3, Prop. 1:
an attribution is complete when `sum_i R_i(x) = f(x) - f(x')` for the baseline `x'`; Integrated
Gradients is, exactly in the limit of its path integral. Bach et al., "On pixel-wise explanations
for non-linear classifier decisions by layer-wise relevance propagation" (PLOS ONE 2015, Eq. 2)
call the same property conservation: `sum_i R_i = f(x)`, the zero-baseline case when `f(0) = 0`.

The score is the signed error of that identity per example,

  completeness = sum_i R_i - (f(x) - f(x')),

so 0 is perfect, a positive score means the relevance over-explains the change and a negative one
that it misses some of it. `relative=True` divides by `|f(x) - f(x')|`, the error as a share of
the change to explain (inf or nan where the change is 0). `f` is the explained score of
`xjax.explain.targets`, `sum_c seed_c * logits_c`, so an explicit output vector as `target` is
read as the weights of the outputs, as the gradient methods read it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import check_model_target, output_seed
from xjax.metrics.registry import FLAG, METRICS, ApplyFn
from xjax.metrics.relevance import checked_relevance, per_example_metric
from xjax.registry import Check

Array = jax.Array

# The check of `baseline`: a number or an array, not a name of pixel flipping's baselines.
_BROADCAST_BASELINE = Check(lambda v: v is not None and not isinstance(v, (str, bytes)),
                            "a number or an array broadcastable to x")


def _baseline_images(x: Array, baseline: Any) -> Array:
  """`baseline` broadcast to x's shape and dtype, or a ConfigError (strings are not baselines)."""
  if isinstance(baseline, (str, bytes)) or baseline is None:
    raise ConfigError(f"baseline must be a number or an array broadcastable to x "
                      f"{tuple(jnp.shape(x))}; got {baseline!r}.")
  try:
    np.broadcast_shapes(jnp.shape(baseline), jnp.shape(x))
  except ValueError:
    raise ConfigError(f"baseline of shape {tuple(jnp.shape(baseline))} does not broadcast to x "
                      f"{tuple(jnp.shape(x))}.") from None
  return jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)


@METRICS.register(
    "completeness",
    checks={"baseline": _BROADCAST_BASELINE, "relative": FLAG},
    description="completeness: the sum of the relevance minus the change of the explained output "
                "from the baseline (Sundararajan et al. 2017; Bach et al. 2015)",
    # A signed error, best at 0: neither higher nor lower is better.
    higher_is_better=None, score=None)
@per_example_metric
def completeness(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                 baseline: Any = 0.0, relative: bool = False) -> Array:
  """(B,) the completeness error `sum(relevance) - (f(x) - f(baseline))` of each example.

  Sundararajan et al., ICML 2017, Prop. 1 (completeness); Bach et al., PLOS ONE 2015, Eq. 2
  (conservation). See the module docstring.

  Args:
    apply_fn: `apply_fn(params, x) -> (B, C)` logits, as the explanation method was given.
    params: the model's parameters.
    x: (B, H, W, C) the explained images.
    target: (B,) class indices or (B, C) output weights (see `xjax.explain.targets`).
    relevance: (B, H, W, C) or (B, H, W) the explanation; only its sum per example matters.
    baseline: the reference input `x'`: a number or an array broadcastable to x (e.g. the
      baseline Integrated Gradients was run with). Static under jit only if a Python number.
    relative: divide the error by `|f(x) - f(x')|`.

  Raises:
    ConfigError: bad shapes of x, target or relevance, a baseline that does not broadcast to x,
      or `relative` not a bool.
  """
  relevance = checked_relevance(x, relevance)
  check_model_target(apply_fn, params, x, target)
  if not isinstance(relative, bool):
    raise ConfigError(f"relative must be True or False; got {relative!r}.")
  x = jnp.asarray(x)
  base = _baseline_images(x, baseline)
  # One forward pass over the images and their baselines, so the model is traced once.
  logits = apply_fn(params, jnp.concatenate([x, base]))
  seed = output_seed(logits[:x.shape[0]], jnp.asarray(target))
  scores = (jnp.concatenate([seed, seed]) * logits).sum(-1)
  change = scores[:x.shape[0]] - scores[x.shape[0]:]
  total = relevance.reshape(relevance.shape[0], -1).sum(-1)
  error = total - change
  return error / jnp.abs(change) if relative else error
