"""Randomisation sanity checks: does the explanation depend on the model and on the class?

* `model_parameter_randomisation`: Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity
  checks for saliency maps" (NeurIPS 2018), Sec. 3, cascading randomisation. The layers of the
  model are re-drawn at random one after the other, from the top (the logits) down, and after
  each step the explanation is recomputed and compared with the original. An explanation that
  explains the model should change; one that stays similar (an edge detector, the input itself)
  fails the check. `cascade=False` is the paper's independent randomisation: one layer at a time,
  the others trained.
* `random_logit`: Sixt, Granz, Landgraf, "When explanations lie: why many modified BP
  attributions fail" (ICML 2020): the explanation of a random other class compared with that of
  the target; a class-insensitive method scores high.

Lower similarity is the better explanation for both. The similarity is computed per example over
the flattened relevance: `"spearman"`, the rank correlation (ties get their average rank, as in
`scipy.stats.spearmanr`), or `"pearson"`. Both are plain jax and batched.

Differences from Quantus 0.6.0 (Hedstroem et al., JMLR 2023): Quantus re-initialises a layer with
its framework initialiser; here every floating leaf of the layer is replaced by normal noise of
zero mean and the leaf's own standard deviation (so all-zero biases stay zero), drawn from
`jax.random` with the given `key` (one split per layer). Quantus's default similarity is SSIM for
`RandomLogit` and Spearman for `ModelParameterRandomisation`; SSIM is not offered here. Quantus
compares the normalised absolute explanations by default; here the relevance is compared as
given (take `abs` in `explain` and in `relevance` for that variant).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import check_inputs
from xjax.metrics.correlation import pearson, ranks
from xjax.metrics.registry import AT_LEAST_TWO, EXPLAIN, FLAG, METRICS, ApplyFn, ExplainFn
from xjax.metrics.relevance import (
  check_explain,
  checked_relevance,
  per_example_metric,
  recomputed_relevance,
)
from xjax.registry import one_of

Array = jax.Array

LAYER_ORDERS = ("top_down", "bottom_up")
SIMILARITIES = ("spearman", "pearson")


class RandomisationResult(NamedTuple):
  """`similarity` (num_layers, B): row i after the i-th randomisation step, for the layers named
  in `layers` in the order they were randomised."""
  similarity: Array
  layers: tuple[str, ...]

  # Where each per-example field has its examples (`xjax.explain.targets.poison_examples`).
  EXAMPLE_AXES = {"similarity": 1}


def _pearson(a: Array, b: Array) -> Array:
  """`pearson`, with an unchanged explanation scoring exactly 1: rounding (XLA rewrites the
  division by a square root as a multiplication by rsqrt) would otherwise give 1 - 6e-8, and
  "similarity 1 at every layer" is the verdict the check exists to give for a model-blind
  explanation."""
  return jnp.where((a == b).all(-1), 1.0, pearson(a, b))


def similarity_of(a: Array, b: Array, similarity: str = "spearman") -> Array:
  """(B,) the similarity of the rows of `a` and `b` (B, ...), flattened per example."""
  if similarity not in SIMILARITIES:
    raise ConfigError(f"Unknown similarity {similarity!r}; expected one of "
                      f"{', '.join(SIMILARITIES)}.")
  a = jnp.asarray(a).reshape(jnp.shape(a)[0], -1).astype(jnp.float32)
  b = jnp.asarray(b).reshape(jnp.shape(b)[0], -1).astype(jnp.float32)
  return _similarity(a, b, similarity)


@functools.partial(jax.jit, static_argnums=2)
def _similarity(a: Array, b: Array, similarity: str) -> Array:
  # One compiled function rather than a dozen eagerly dispatched ops per call.
  if similarity == "spearman":
    a, b = ranks(a), ranks(b)
  return _pearson(a, b)


def _check_common(x, target, relevance, explain, key, similarity):
  relevance = checked_relevance(x, relevance)
  check_inputs(x, target)
  check_explain(explain)
  if similarity not in SIMILARITIES:
    raise ConfigError(f"Unknown similarity {similarity!r}; expected one of "
                      f"{', '.join(SIMILARITIES)}.")
  if key is None:
    raise ConfigError("randomisation needs a PRNG key (key=jax.random.key(0)).")
  return relevance


def _compare(explained: Any, x: Array, relevance: Array, similarity: str) -> Array:
  """(B,) the similarity of a recomputed explanation with the original `relevance`."""
  return similarity_of(recomputed_relevance(explained, x, relevance), relevance, similarity)


def _rebuild(original: Mapping, entries: dict) -> Any:
  """`entries` as a mapping of `original`'s type (a dict or, say, a flax FrozenDict)."""
  return entries if isinstance(original, dict) else type(original)(entries)


def _randomised(layer: Any, key: Array) -> Any:
  """`layer` with every floating leaf replaced by N(0, std(leaf)^2) noise of its shape."""
  leaves, tree = jax.tree_util.tree_flatten(layer)
  keys = jax.random.split(key, max(len(leaves), 1))
  new = []
  for leaf, k in zip(leaves, keys):
    leaf = jnp.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      leaf = jax.random.normal(k, leaf.shape, leaf.dtype) * jnp.std(leaf)
    new.append(leaf)
  return jax.tree_util.tree_unflatten(tree, new)


@METRICS.register(
    "model_parameter_randomisation",
    checks={"explain": EXPLAIN, "order": one_of(*LAYER_ORDERS),
            "similarity": one_of(*SIMILARITIES), "cascade": FLAG},
    description="model parameter randomisation: the similarity of the explanation to the "
                "original as the layers are randomised from the top (Adebayo et al. 2018)",
    # The similarity to the original explanation as layers are randomised: lower is better.
    # The score is the similarity after the last step (cascading: the whole model randomised;
    # independent: the last layer), each step kept as a curve.
    higher_is_better=False, score="similarity", curves=("similarity",))
@per_example_metric
def model_parameter_randomisation(apply_fn: ApplyFn, params: Any, x: Array, target: Array,
                                  relevance: Array, *, explain: ExplainFn, key: Array | None = None,
                                  order: str = "top_down", similarity: str = "spearman",
                                  cascade: bool = True) -> RandomisationResult:
  """The similarity of the explanation to the original as the model's layers are randomised.

  Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018, Sec. 3 (cascading and
  independent randomisation); Quantus 0.6.0's `ModelParameterRandomisation` (see the module
  docstring for the differences). Lower is better: an explanation of the model should lose its
  similarity once the model is destroyed.

  Args:
    apply_fn: `apply_fn(params, x) -> (B, C)`; unused, the model enters through `explain`.
    params: a mapping whose top-level keys are the layers, in order of definition (dict order);
      flax variables `{"params": {...}, ...}` are randomised under "params", the other
      collections kept.
    x: (B, H, W, C) the explained images.
    target: (B,) class indices or (B, C) output vectors (see `xjax.explain.targets`).
    relevance: (B, H, W, C) or (B, H, W) the explanation of x (`explain(params, x, target)`).
    explain: `explain(params, x, target) -> relevance`, re-run on each randomised model.
    key: the PRNG key of the random weights, split once per layer.
    order: "top_down" (the last layer first, the paper's order) or "bottom_up".
    similarity: "spearman" or "pearson".
    cascade: True keeps the earlier randomisations (cascading); False randomises one layer at a
      time on the trained model (independent).

  Returns:
    `RandomisationResult(similarity (num_layers, B), layers)`, row i after randomising
    `layers[i]`.

  Raises:
    ConfigError: bad shapes, an unknown option, no key, params that are not a mapping of layers,
      or an explanation of the wrong shape.
  """
  del apply_fn
  relevance = _check_common(x, target, relevance, explain, key, similarity)
  if order not in LAYER_ORDERS:
    raise ConfigError(f"Unknown order {order!r}; expected one of {', '.join(LAYER_ORDERS)}.")
  if not isinstance(cascade, bool):
    raise ConfigError(f"cascade must be True or False; got {cascade!r}.")
  flax_vars = isinstance(params, Mapping) and isinstance(params.get("params"), Mapping)
  layers = params["params"] if flax_vars else params
  if not isinstance(layers, Mapping) or not layers:
    raise ConfigError(f"params must be a non-empty mapping of layers (or flax variables with "
                      f"'params'); got {type(layers).__name__}.")
  names = list(layers)
  if order == "top_down":
    names.reverse()
  keys = jax.random.split(key, len(names))
  x = jnp.asarray(x)
  current = dict(layers)
  rows = []
  for name, k in zip(names, keys):
    if not cascade:
      current = dict(layers)  # independent: every other layer as trained
    current[name] = _randomised(layers[name], k)
    model = _rebuild(layers, dict(current))
    if flax_vars:
      model = _rebuild(params, {**params, "params": model})
    rows.append(_compare(explain(model, x, target), x, relevance, similarity))
  return RandomisationResult(jnp.stack(rows), tuple(str(n) for n in names))


@METRICS.register(
    "random_logit",
    checks={"explain": EXPLAIN, "num_classes": AT_LEAST_TWO,
            "similarity": one_of(*SIMILARITIES)},
    description="random logit: the similarity of the explanation of a random other class to "
                "that of the target (Sixt et al. 2020)",
    higher_is_better=False, score=None)
@per_example_metric
def random_logit(apply_fn: ApplyFn, params: Any, x: Array, target: Array, relevance: Array, *,
                 explain: ExplainFn, key: Array | None = None, num_classes: int | None = None,
                 similarity: str = "spearman") -> Array:
  """(B,) the similarity of the explanation of a random other class to that of the target.

  Sixt, Granz, Landgraf, "When explanations lie: why many modified BP attributions fail", ICML
  2020; Quantus 0.6.0's `RandomLogit`, whose default similarity, SSIM, is not offered here.
  Lower is better: a class-sensitive explanation differs between classes. The other class is
  drawn uniformly among the `num_classes - 1` classes other than the target, per example.

  Args:
    apply_fn: `apply_fn(params, x) -> (B, C)`; unused, the model enters through `explain`.
    params: the model's parameters, passed to `explain`.
    x: (B, H, W, C) the explained images.
    target: (B,) class indices (output vectors have no "other class").
    relevance: (B, H, W, C) or (B, H, W) the explanation of x for `target`.
    explain: `explain(params, x, target) -> relevance`, re-run for the random classes.
    key: the PRNG key of the random classes.
    num_classes: the number of classes, >= 2.
    similarity: "spearman" or "pearson".

  Raises:
    ConfigError: bad shapes, vector targets, an unknown option, no key, num_classes < 2, or an
      explanation of the wrong shape.
  """
  del apply_fn
  relevance = _check_common(x, target, relevance, explain, key, similarity)
  if (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
      or num_classes < 2):
    raise ConfigError(f"num_classes must be a Python int >= 2 (there must be another class); "
                      f"got {num_classes!r}.")
  if jnp.ndim(target) != 1:
    raise ConfigError(f"random_logit needs class indices (B,) as target; got shape "
                      f"{jnp.shape(target)}.")
  x = jnp.asarray(x)
  other = random_classes(target, key, int(num_classes))
  return _compare(explain(params, x, other), x, relevance, similarity)


def random_classes(target: Array, key: Array, num_classes: int) -> Array:
  """(B,) the classes `random_logit` explains for `target` with `key` (for inspection)."""
  return _other_classes(jnp.asarray(target), key, int(num_classes))


@functools.partial(jax.jit, static_argnums=2)
def _other_classes(target: Array, key: Array, num_classes: int) -> Array:
  # An offset in 1..num_classes-1 added modulo num_classes: uniform over the other classes.
  offset = jax.random.randint(key, target.shape, 1, num_classes, target.dtype)
  return (target + offset) % num_classes
