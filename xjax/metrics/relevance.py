"""The explanation a metric scores, checked against its inputs: one place for every metric.

Every metric takes `x` (B, H, W, C) and the relevance of each input element, (B, H, W, C), or of
each pixel, (B, H, W) (channels already summed).

The faithfulness, localisation and complexity metrics (decorated `per_example_metric(sequences=
True)`) also take token sequences: `x` (B, T, D) embeddings, relevance per token (B, T) or per
embedding element (B, T, D) (summed over D: a token is the unit, as a pixel is), a ground-truth
`mask` (B, T), and baselines that are a number, "mean", "uniform" or an embedding (D,) (e.g. the
[MASK] token's; also one per token (T, D) or per sequence (B, T, D)). A sequence is scored as an
image of T x 1 pixels with D channels: the same code, so the definitions cannot drift apart, and
`apply_fn` still receives (B, T, D). The layer below (`as_token_images`) checks what differs
(relevance, mask, baselines) in the sequence's terms, converts, and calls the image metric.

Every registered metric is decorated with `per_example_metric`: outside `jax.jit` a class index
outside the model's outputs or relevance holding NaN or infinity is a `ConfigError`; under `jit`
(where values cannot be looked at) the scores and curves of such an example are NaN, never a
finite number computed from a zero seed or from NaNs sorted somewhere into a ranking (the same
mechanism as the methods', `xjax.explain.targets`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import checked_examples, poison_examples, valid_examples


def check_images(x: Any) -> None:
  """Raises a ConfigError unless x is a batch of images (B, H, W, C)."""
  if jnp.ndim(x) != 4:
    raise ConfigError(f"x must be a batch of images (B, H, W, C); got shape {jnp.shape(x)}.")


def checked_relevance(x: Any, relevance: Any) -> jax.Array:
  """`relevance` as a float array after checking it fits the images `x`.

  Raises:
    ConfigError: x not (B, H, W, C); relevance neither x's shape nor (B, H, W); a concrete
      relevance (outside `jax.jit`) holding NaN or infinity (the message lists the examples).
  """
  check_images(x)
  x_shape, shape = tuple(jnp.shape(x)), tuple(jnp.shape(relevance))
  if shape not in (x_shape, x_shape[:3]):
    raise ConfigError(f"relevance must have the shape of x {x_shape} or, summed over channels, "
                      f"{x_shape[:3]}; got shape {shape}.")
  return _finite_float(relevance)


def _finite_float(relevance: Any) -> jax.Array:
  """`relevance` (of a checked shape) as a float array; a ConfigError where a concrete one holds
  NaN or infinity."""
  shape = tuple(jnp.shape(relevance))
  if not isinstance(relevance, jax.core.Tracer):
    # A NaN would sort anywhere in a ranking and spread through every sum: the score would be
    # quietly meaningless. A traced relevance cannot be inspected (its NaNs reach the scores).
    finite = np.isfinite(np.asarray(relevance, np.float64)).reshape(shape[0], -1).all(-1)
    if not finite.all():
      bad = np.flatnonzero(~finite)
      raise ConfigError(f"relevance holds NaN or infinity in example(s) {bad[:10].tolist()}"
                        f"{' ...' if bad.size > 10 else ''}: the method failed on them.")
  relevance = jnp.asarray(relevance)
  if not jnp.issubdtype(relevance.dtype, jnp.floating):
    relevance = relevance.astype(jnp.float32)
  return relevance


def per_example_metric(metric: Callable | None = None, *, sequences: bool = False) -> Any:
  """Decorates `metric(apply_fn, params, x, target, relevance, **options)` with the checks every
  metric shares; the result of an invalid example is NaN (see the module docstring).

  `apply_fn` or `target` may be None for the metrics that ignore them (localisation, complexity):
  then the target is not checked. With `sequences=True` (as `@per_example_metric(sequences=
  True)`) the metric also takes token sequences x (B, T, D), scored as images of T x 1 pixels
  (`as_token_images`); the metric itself is written for images only.
  """
  if metric is None:
    return functools.partial(per_example_metric, sequences=sequences)

  @functools.wraps(metric)
  def checked(apply_fn: Callable, params: Any, x: Any, target: Any, relevance: Any, *args: Any,
              **options: Any) -> Any:
    check_images(x)
    # The metric's own checks first (its options, the relevance's shape), then the target's.
    result = metric(apply_fn, params, x, target, relevance, *args, **options)
    valid = (valid_examples(x) if apply_fn is None or target is None
             else checked_examples(apply_fn, params, x, target))
    finite = jnp.isfinite(jnp.reshape(jnp.asarray(relevance), (jnp.shape(x)[0], -1))).all(-1)
    return poison_examples(result, valid & finite)

  return as_token_images(checked) if sequences else checked


def pixel_relevance(x: Any, relevance: Any) -> jax.Array:
  """(B, H, W) the relevance of each pixel: the sum of its channels' (after the checks above)."""
  relevance = checked_relevance(x, relevance)
  return relevance.sum(-1) if relevance.ndim == 4 else relevance


def check_explain(explain: Any) -> None:
  """Raises a ConfigError unless `explain` is callable: the method a metric re-runs."""
  if not callable(explain):
    raise ConfigError(f"explain must be a function explain(params, x, target) -> relevance; "
                      f"got {explain!r}.")


def recomputed_relevance(explained: Any, inputs: Any, relevance: jax.Array) -> jax.Array:
  """The output of a re-run method, `explained` for `inputs`, shaped like `relevance`'s examples.

  Where `relevance` is per pixel (B, H, W) and the method returns the inputs' shape, its channels
  are summed, so that like is compared with like.

  Raises:
    ConfigError: `explained` has neither shape.
  """
  explained = jnp.asarray(explained)
  if explained.shape == jnp.shape(inputs) and relevance.ndim == 3:
    explained = explained.sum(-1)
  expected = (jnp.shape(inputs)[0], *relevance.shape[1:])
  if explained.shape != expected:
    raise ConfigError(f"explain returned shape {explained.shape} for {expected[0]} images; "
                      f"expected the relevance's per-example shape {relevance.shape[1:]}.")
  return explained


def relevance_ranks(scores: jax.Array, order: str) -> jax.Array:
  """(B, N) the step rank of each of N scored items (pixels, patches): 0 is replaced first.

  `argsort` of the (negated) scores lists the items in order; `argsort` of that list inverts the
  permutation, giving each item its position. Both sorts are stable, so equal relevance is broken
  by the item's index (the lower first) in either order.
  """
  key = -scores if order == "most_relevant_first" else scores
  return jnp.argsort(jnp.argsort(key, axis=-1, stable=True), axis=-1, stable=True)


def most_relevant(scores: jax.Array, k: jax.Array) -> jax.Array:
  """(B, N) bool: the `k[b]` most relevant of each row's N scores, equal scores taken by index
  (the lower first), so exactly `relevance_ranks(scores, "most_relevant_first") < k[:, None]`.

  Without a sort: the k-th largest score of each row is found bit by bit (a radix select over the
  scores' order-preserving 32-bit keys, 32 passes of comparisons), and the ties at it are
  filled in index order. On 32 images of 224 x 224 this took 30 ms where the two stable argsorts
  of the ranks took 750 ms (2-core CPU, 2026-12-06), with the same result.
  """
  scores = scores.astype(jnp.float32)
  # -0.0 as +0.0: the sort's comparison takes them as equal (ties by index), their bits differ.
  bits = jax.lax.bitcast_convert_type(jnp.where(scores == 0, 0.0, scores), jnp.uint32)
  # The float order as unsigned order.
  keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))
  k = jnp.asarray(k)

  def next_bit(i, kth):
    candidate = kth | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    return jnp.where(jnp.sum(keys >= candidate[:, None], axis=-1) >= k, candidate, kth)

  kth = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros(keys.shape[:1], jnp.uint32))[:, None]
  above, tied = keys > kth, keys == kth
  places_left = k[:, None] - above.sum(-1, keepdims=True)
  return above | (tied & (jnp.cumsum(tied, axis=-1) <= places_left))


# --------------------------------------------------------------------------------------------------
# Token sequences, scored as images of T x 1 pixels with D channels.

def as_token_images(metric: Callable) -> Callable:
  """`metric` (checked, for images) that also takes token sequences x (B, T, D).

  For a sequence: the relevance (B, T), or (B, T, D) summed over D, is checked in the sequence's
  terms and becomes (B, T, 1); x becomes (B, T, 1, D); the `mask` option (B, T) becomes
  (B, T, 1); an array option named `baseline` or `*_baseline` of one token per position, (T, D)
  or (B, T, D), gains the width axis (an embedding (D,) broadcasts as it is); and `apply_fn` is
  wrapped to receive (B, T, D) back. Images pass through untouched, so their results are those
  of the image metric, bit for bit. A `ConfigError` the image metric raises for a sequence says
  how the sequence was read, so that its "T x 1 images" make sense.
  """

  # The baseline options' defaults are converted (or refused, "blur") like given ones.
  baselines = {name: parameter.default
               for name, parameter in inspect.signature(metric).parameters.items()
               if _is_baseline(name) and parameter.default is not inspect.Parameter.empty}

  @functools.wraps(metric)
  def on_images_or_tokens(apply_fn: Callable | None, params: Any, x: Any, target: Any,
                          relevance: Any, *args: Any, **options: Any) -> Any:
    if jnp.ndim(x) == 4:
      return metric(apply_fn, params, x, target, relevance, *args, **options)
    if jnp.ndim(x) != 3:
      raise ConfigError(f"x must be a batch of images (B, H, W, C) or of token sequences "
                        f"(B, T, D); got shape {jnp.shape(x)}.")
    if jnp.ndim(relevance) == 4:  # e.g. one image (H, W, C) for x: not a sequence's relevance
      raise ConfigError(f"x must be a batch of images (B, H, W, C), as the relevance of shape "
                        f"{jnp.shape(relevance)} is, or of token sequences (B, T, D); got shape "
                        f"{jnp.shape(x)}.")
    x = jnp.asarray(x)
    per_token = token_relevance(x, relevance)
    options = {name: _token_option(name, value, x.shape)
               for name, value in {**baselines, **options}.items()}
    on_tokens = None if apply_fn is None else _tokens_apply_fn(apply_fn)
    try:
      return metric(on_tokens, params, x[:, :, None], target, per_token[:, :, None], *args,
                    **options)
    except ConfigError as e:
      raise ConfigError(f"{str(e).rstrip('.')} (token sequences x (B, T, D) = {x.shape} are "
                        f"scored as images of T x 1 pixels with D channels).") from e

  return on_images_or_tokens


def _tokens_apply_fn(apply_fn: Callable) -> Callable:
  """`apply_fn` of token sequences (B, T, D) as a function of their images (B, T, 1, D)."""
  def on_images(params: Any, images: jax.Array) -> jax.Array:
    return apply_fn(params, images[:, :, 0])

  return on_images


def token_relevance(x: Any, relevance: Any) -> jax.Array:
  """(B, T) the relevance of each token of the sequences x (B, T, D): as given, or the sum over
  D of relevance (B, T, D).

  Raises:
    ConfigError: relevance neither (B, T) nor (B, T, D) of x; a concrete relevance holding NaN or
      infinity (the message lists the examples).
  """
  x_shape, shape = tuple(jnp.shape(x)), tuple(jnp.shape(relevance))
  if shape not in (x_shape[:2], x_shape):
    raise ConfigError(f"relevance must have shape (B, T) = {x_shape[:2]}, one score per token, or "
                      f"(B, T, D) = {x_shape} (summed over D) for token sequences x (B, T, D); "
                      f"got shape {shape}.")
  relevance = _finite_float(relevance)  # before the sum: an inf - inf is named, not a NaN
  return relevance.sum(-1) if relevance.ndim == 3 else relevance


def _is_baseline(name: str) -> bool:
  return name == "baseline" or name.endswith("_baseline")


def _token_option(name: str, value: Any, x_shape: tuple[int, ...]) -> Any:
  """A metric's option for token sequences x (B, T, D) in its image form (see `as_token_images`).

  Raises:
    ConfigError: a mask not (B, T); a baseline "blur" (of images), or an array baseline of a
      shape that is none of (D,), (T, D), (B, T, D) (or broadcastable to them).
  """
  batch, length, dim = x_shape
  if name == "mask" and value is not None:
    if tuple(jnp.shape(value)) != (batch, length):
      raise ConfigError(f"mask must be (B, T) = {(batch, length)}, one boolean per token of the "
                        f"sequences x (B, T, D); got shape {jnp.shape(value)}.")
    return jnp.expand_dims(jnp.asarray(value), 2)
  if not _is_baseline(name) or value is None:
    return value
  if isinstance(value, str):
    if value == "blur":
      raise ConfigError(f"{name}='blur' blurs images; token sequences x (B, T, D) take a "
                        f"number, 'mean', 'uniform' or an embedding (D,) = ({dim},) (e.g. the "
                        f"[MASK] token's).")
    return value  # the metric checks the name
  shape = tuple(jnp.shape(value))

  def fits(target: tuple[int, ...]) -> bool:
    try:
      return np.broadcast_shapes(shape, target) == target
    except ValueError:
      return False

  if len(shape) <= 1 and fits((dim,)):
    return value  # a number or an embedding: broadcasts to (T, 1, D) as it is
  if 2 <= len(shape) <= 3 and fits((batch, length, dim)[-len(shape):]):
    return jnp.expand_dims(jnp.asarray(value), -2)
  raise ConfigError(f"{name} must be a number, 'mean', 'uniform', an embedding (D,) = ({dim},) "
                    f"(e.g. the [MASK] token's), one per token (T, D) = {(length, dim)} or one "
                    f"per sequence (B, T, D) = {x_shape}; got shape {shape}.")
