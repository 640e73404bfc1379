"""Max- and avg-sensitivity: how much an explanation changes when its input is slightly perturbed.

Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (in)fidelity and sensitivity of explanations"
(NeurIPS 2019), Sec. 3, the definition of SENS_MAX: the largest change of the explanation `Phi`
over inputs within radius r of x,

  SENS_MAX(Phi, f, x, r) = max_{||y - x|| <= r} ||Phi(f, y) - Phi(f, x)||,

estimated by Monte-Carlo sampling. As Quantus 0.6.0 (Hedstroem et al., JMLR 2023) does in
`MaxSensitivity` and `AvgSensitivity`, the samples are `y = x + u` with every element of `u`
drawn uniformly from [-radius, radius] (an L-inf ball, its `uniform_noise` with `lower_bound =
radius`), and each change is divided by the norm of the unperturbed explanation,

  s_k = ||Phi(x + u_k) - Phi(x)|| / ||Phi(x)||,    k = 1..num_samples,

so that rescaling an explanation does not change its score. `max_sensitivity` is `max_k s_k`,
`avg_sensitivity` the mean (Quantus's `AvgSensitivity`, the Monte-Carlo form of Yeh et al.'s
SENS_AVG in spirit: the expected change rather than the worst). Lower is better; 0 for an
explanation that ignores its input. `norm="fro"` is the Frobenius (L2) norm of the flattened
explanation, Quantus's default `fro_norm`; `"linf"` its `linf_norm`.

Differences from Quantus 0.6.0: the noise comes from `jax.random` with the given `key` (Quantus
draws from numpy's global state); its defaults are `lower_bound=0.2` and `nr_samples=200`
(here `radius=0.02`, `num_samples=10`); `return_nan_when_prediction_changes` is not offered (every
sample counts); an explanation with zero norm gives inf or nan, as in Quantus. With its
`normalise` and `abs` off the scores are equal for equal noise.

The `num_samples` perturbed copies of the batch are stacked into one batch of `num_samples * B`
images and explained by a single call of `explain`, so there is no Python loop over samples.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import check_count, check_inputs
from xjax.metrics.registry import COUNT, EXPLAIN, METRICS, ApplyFn, ExplainFn
from xjax.metrics.relevance import (
  check_explain,
  checked_relevance,
  per_example_metric,
  recomputed_relevance,
)
from xjax.registry import one_of, positive

Array = jax.Array

NORMS = ("fro", "linf")
# The options of both metrics, and their checks.
_CHECKS = {"explain": EXPLAIN, "radius": positive, "num_samples": COUNT, "norm": one_of(*NORMS)}


def _norm(a: Array, norm: str) -> Array:
  """The norm of each row of `a` (..., N), as Quantus's `fro_norm` / `linf_norm`."""
  return jnp.linalg.norm(a, axis=-1) if norm == "fro" else jnp.abs(a).max(-1)


def sensitivities(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                  explain: ExplainFn, radius: float = 0.02, num_samples: int = 10,
                  key: Array | None = None, norm: str = "fro") -> Array:
  """(num_samples, B) the relative change `s_k` of each example's explanation under each sample.

  `max_sensitivity` and `avg_sensitivity` reduce it over the samples; the arguments are theirs.
  `apply_fn` is unused (the model enters through `explain`) and kept for the calling convention.
  """
  del apply_fn
  relevance = checked_relevance(x, relevance)
  check_inputs(x, target)
  check_explain(explain)
  if (isinstance(radius, bool) or not isinstance(radius, (int, float, np.floating))
      or not np.isfinite(radius) or radius <= 0):
    raise ConfigError(f"radius must be a finite Python number > 0 (the half-width of the "
                      f"uniform noise); got {radius!r}.")
  num_samples = check_count("num_samples", num_samples)
  if norm not in NORMS:
    raise ConfigError(f"Unknown norm {norm!r}; expected one of {', '.join(NORMS)}.")
  if key is None:
    raise ConfigError("sensitivity needs a PRNG key for its noise (key=jax.random.key(0)).")
  x, target = jnp.asarray(x), jnp.asarray(target)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  batch = x.shape[0]
  noise = jax.random.uniform(key, (num_samples, *x.shape), x.dtype, -radius, radius)
  # Samples stacked into the batch: one call of `explain`, however it is built. Example-major
  # (example b's samples are rows b S ... b S + S - 1), so that when the examples are split over
  # devices each device explains only its own examples' samples.
  perturbed = jnp.swapaxes(x[None] + noise, 0, 1).reshape(batch * num_samples, *x.shape[1:])
  targets = jnp.repeat(target, num_samples, axis=0)
  explained = recomputed_relevance(explain(params, perturbed, targets), perturbed, relevance)
  flat = relevance.reshape(batch, -1)
  change = jnp.swapaxes(explained.reshape(batch, num_samples, -1), 0, 1) - flat[None]
  return _norm(change, norm) / _norm(flat, norm)


@METRICS.register(
    "max_sensitivity",
    checks=_CHECKS,
    description="max-sensitivity: the largest relative change of the explanation under uniform "
                "input noise (Yeh et al. 2019)",
    higher_is_better=False, score=None)
@per_example_metric
def max_sensitivity(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                    explain: ExplainFn, radius: float = 0.02, num_samples: int = 10,
                    key: Array | None = None, norm: str = "fro") -> Array:
  """(B,) the largest relative change of each explanation over the noise samples.

  Yeh et al., NeurIPS 2019, Sec. 3 (SENS_MAX), normalised as Quantus 0.6.0's `MaxSensitivity`
  (see the module docstring).

  Args:
    apply_fn: `apply_fn(params, x) -> (B, C)`; unused, the model enters through `explain`.
    params: the model's parameters, passed to `explain`.
    x: (B, H, W, C) the explained images.
    target: (B,) class indices or (B, C) output vectors (see `xjax.explain.targets`).
    relevance: (B, H, W, C) or (B, H, W) the explanation of x (`explain(params, x, target)`).
    explain: `explain(params, x, target) -> relevance`, the method re-run on perturbed inputs;
      x's shape or, summed over channels, (B, H, W). Bind its options first (functools.partial).
    radius: the noise is uniform in [-radius, radius], per input element.
    num_samples: the number of perturbed copies of each image.
    key: the PRNG key of the noise.
    norm: "fro" (L2 of the flattened explanation) or "linf".

  Raises:
    ConfigError: bad shapes, a bad option, no key, or an explanation of the wrong shape.
  """
  return sensitivities(apply_fn, params, x, target, relevance, explain=explain, radius=radius,
                       num_samples=num_samples, key=key, norm=norm).max(0)


@METRICS.register(
    "avg_sensitivity",
    checks=_CHECKS,
    description="avg-sensitivity: the mean relative change of the explanation under uniform "
                "input noise (Yeh et al. 2019)",
    higher_is_better=False, score=None)
@per_example_metric
def avg_sensitivity(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                    explain: ExplainFn, radius: float = 0.02, num_samples: int = 10,
                    key: Array | None = None, norm: str = "fro") -> Array:
  """(B,) the mean relative change of each explanation over the noise samples.

  Quantus 0.6.0's `AvgSensitivity`, after Yeh et al., NeurIPS 2019 (Sec. 3); the arguments are
  those of `max_sensitivity`.
  """
  return sensitivities(apply_fn, params, x, target, relevance, explain=explain, radius=radius,
                       num_samples=num_samples, key=key, norm=norm).mean(0)
