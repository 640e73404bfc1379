"""Gradient-based explanations: saliency, sensitivity, gradient x input, SmoothGrad, IG.

Every method is `method(apply_fn, params, x, target, **options)` and returns relevance with the
shape of `x` (see `xjax.explain.targets` for `target`). All of them rest on one backward pass,
`input_gradient`: the pull-back of the seed `onehot(target)` (or the explicit output weights)
through `apply_fn(params, .)`. Because the images of a batch do not interact in eval mode, the
gradient of `sum_b seed_b . f(x_b)` with respect to the batch is each image's own gradient.
Each method registers by name in `xjax.explain.methods.METHODS` where it is defined.

SmoothGrad and Integrated Gradients evaluate the gradient at many points per image. The points
of a chunk are stacked into the batch dimension, `k` points of B images as one batch of `k x B`
inputs, and their gradient is one backward pass of the model (the images of a batch do not
interact); the chunks' sums are accumulated (unrolled, or in a `lax.scan` when there are many).
`k` is `chunk_size`, or by default the most points whose stacked pass fits `max_megabytes`
(`points_per_call`: the bytes of the model's intermediate values per input, from its traced
program, twice for the backward pass). The points themselves do not depend on the chunking, so
chunked and unchunked results agree up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.methods import METHODS, prng_key
from xjax.explain.targets import check_count, check_inputs, explanation_method, output_seed

Array = jax.Array
ApplyFn = Callable[[Any, Array], Array]


# --------------------------------------------------------------------------------------------------
# Checks.


def _check_x_and_target(x: Array, target: Array) -> None:
  check_inputs(x, target)
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    raise ConfigError(f"x must be a floating-point array to take its gradient; got dtype "
                      f"{jnp.result_type(x)}. Convert it, e.g. x.astype(jnp.float32) / 255.")


def _check_chunk_size(chunk_size: Any) -> int | None:
  return None if chunk_size is None else check_count("chunk_size", chunk_size)


# --------------------------------------------------------------------------------------------------
# Plain gradients.


def input_gradient(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  """The gradient of the explained output with respect to the input, without checks.

  Pulls `output_seed(f(x), target)` back through `x -> apply_fn(params, x)` with one `jax.vjp`.
  """
  outputs, pullback = jax.vjp(lambda inputs: apply_fn(params, inputs), x)
  (grad,) = pullback(output_seed(outputs, target))
  return grad


def _checked_gradient(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  _check_x_and_target(x, target)
  return input_gradient(apply_fn, params, x, target)


@METHODS.register("saliency", description="absolute input gradient (Simonyan et al. 2014)")
@explanation_method
def saliency(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  """Saliency map `|d f_c / d x|` per input element (Simonyan et al., ICLR-W 2014, Sec. 3.1).

  The paper reduces the colour channels with a max afterwards; that is a heatmap reduction
  (`xjax.explain.heatmaps.channel_max_abs`) and is not done here. Arguments as in `gradient`
  (below).
  """
  return jnp.abs(_checked_gradient(apply_fn, params, x, target))


@METHODS.register("gradient", description="signed input gradient")
@explanation_method
def gradient(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  """The signed input gradient `d f_c / d x` of the explained output (or `d (t . f) / d x`).

  Args:
    apply_fn: `(params, x) -> logits (B, C)`, any JAX-traceable function.
    params: the variables `apply_fn` takes.
    x: a batch of inputs (B, ...), floating point.
    target: class indices (B,) or output weights (B, C); see `xjax.explain.targets`.

  Returns:
    The gradient, shape of `x`.

  Raises:
    ConfigError: for a target that does not fit `x` or the model's outputs, or integer `x`.
  """
  return _checked_gradient(apply_fn, params, x, target)


@METHODS.register("sensitivity", description="squared input gradient (sensitivity analysis)")
@explanation_method
def sensitivity(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  """Sensitivity analysis `R_i = (d f_c / d x_i)^2` (Montavon, Samek, Mueller,
  DSP 2018, Sec. 3.1; seminar report Sec. 4.1).

  The squared gradient decomposes the squared gradient norm, `sum_i R_i = ||grad f||^2`, not `f`.
  Arguments as in `gradient`.
  """
  return jnp.square(_checked_gradient(apply_fn, params, x, target))


@METHODS.register("gradient_x_input", description="input times gradient")
@explanation_method
def gradient_x_input(apply_fn: ApplyFn, params: Any, x: Array, target: Array) -> Array:
  """Simple Taylor decomposition at the root point 0, `R = x * grad f(x)` (DSP 2018, Sec. 3.2;
  seminar report Sec. 4.2).

  For bias-free ReLU networks `f` is positively homogeneous, so `sum_i R_i = f_c(x)` exactly.
  Arguments as in `gradient`.
  """
  return x * _checked_gradient(apply_fn, params, x, target)


# --------------------------------------------------------------------------------------------------
# Sums over many gradient evaluations, in chunks.


# The default bound on the memory of one stacked gradient pass of SmoothGrad and IG.
DEFAULT_MAX_MEGABYTES = 512.0


def bytes_per_input(apply_fn: ApplyFn, params: Any, x: Array) -> int:
  """An estimate of the memory of one input's forward and backward pass, in bytes: twice the
  size of every value of the traced forward program for one input (the backward pass keeps the
  forward's values and makes as many cotangents). Traced, not compiled: no cost at run time."""
  one = jax.ShapeDtypeStruct((1, *jnp.shape(x)[1:]), jnp.result_type(x))
  program = jax.make_jaxpr(lambda inputs: apply_fn(params, inputs))(one)
  size = sum(np.prod(v.aval.shape, dtype=np.int64) * v.aval.dtype.itemsize
             for eqn in program.eqns for v in eqn.outvars if hasattr(v.aval, "shape"))
  return int(2 * max(size, np.prod(one.shape) * one.dtype.itemsize))


def points_per_call(apply_fn: ApplyFn, params: Any, x: Array, num_points: int,
                    chunk_size: int | None, max_megabytes: float | None) -> int:
  """The points stacked into one gradient pass: `chunk_size`, or the most whose `k x B` inputs
  fit `max_megabytes` (`bytes_per_input`), at least 1; all of them if both are None."""
  if chunk_size is not None:
    return min(chunk_size, num_points)
  if max_megabytes is None:
    return num_points
  per_point = jnp.shape(x)[0] * bytes_per_input(apply_fn, params, x)
  return int(min(num_points, max(1, max_megabytes * 2**20 // per_point)))


def _check_megabytes(max_megabytes: Any) -> float | None:
  if max_megabytes is not None and (isinstance(max_megabytes, bool) or not isinstance(
      max_megabytes, (int, float)) or not max_megabytes > 0):
    raise ConfigError(f"max_megabytes must be a number > 0 or None; got {max_megabytes!r}.")
  return max_megabytes


def stacked_gradient(apply_fn: ApplyFn, params: Any, inputs: Array, target: Array) -> Array:
  """The gradients of `inputs` (k, B, ...), k points of B images, in one backward pass of a
  batch of B x k inputs (target repeated for every point).

  The stacked batch is example-major (image b's k points are rows b k ... b k + k - 1): when the
  B images are split over devices, each device then stacks and differentiates only its own
  images' points, so memory per device falls with the number of devices (point-major, XLA would
  compute the whole stacked batch on every device).
  """
  k, batch = inputs.shape[:2]
  target = jnp.asarray(target)
  tiled = jnp.repeat(target, k, axis=0)
  stacked = jnp.swapaxes(inputs, 0, 1).reshape(batch * k, *inputs.shape[2:])
  grads = input_gradient(apply_fn, params, stacked, tiled)
  return jnp.swapaxes(grads.reshape(batch, k, *inputs.shape[2:]), 0, 1)


# Up to this many chunks are unrolled; more run in a `lax.scan` (see `_sum_over_points`).
MAX_UNROLLED_CHUNKS = 16


def _sum_over_points(chunk_sum: Callable[[Array], Array], points: Array, chunk_size: int) -> Array:
  """`sum_k contribution(points[k])`, where `chunk_sum(chunk)` sums the contributions of a chunk
  of at most `chunk_size` points in one stacked pass.

  Up to `MAX_UNROLLED_CHUNKS` chunks are unrolled: XLA:CPU runs the body of a `lax.scan` 2-3x
  slower than the same passes unrolled (measured on the CIFAR10 CNN, IG with 50 points of 32
  images in chunks of 7: 22-27 s scanned, 7-8.5 s unrolled, 6-11 s in one pass), and XLA
  reuses the memory of one unrolled pass for the next. Beyond that, the full chunks run in a
  `lax.scan` that carries the running sum, so the program does not grow with the number of
  points; a last, shorter chunk of the remainder is added after them.
  """
  num_points = points.shape[0]
  num_full = num_points // chunk_size
  if -(-num_points // chunk_size) <= MAX_UNROLLED_CHUNKS:
    total = chunk_sum(points[:chunk_size])
    for start in range(chunk_size, num_points, chunk_size):
      total = total + chunk_sum(points[start:start + chunk_size])
    return total
  full = points[:num_full * chunk_size].reshape(num_full, chunk_size, *points.shape[1:])
  first = chunk_sum(full[0])
  total, _ = jax.lax.scan(lambda acc, chunk: (acc + chunk_sum(chunk), None), first, full[1:])
  if num_points % chunk_size:
    total = total + chunk_sum(points[num_full * chunk_size:])
  return total


# --------------------------------------------------------------------------------------------------
# SmoothGrad.

SMOOTHGRAD_BASES: dict[str, Callable[[Array, Array], Array]] = {
    "gradient": lambda inputs, grad: grad,
    "saliency": lambda inputs, grad: jnp.abs(grad),
    "sensitivity": lambda inputs, grad: jnp.square(grad),
    "gradient_x_input": lambda inputs, grad: inputs * grad,
}


def smoothgrad_base(option: str | None, bounds: Any, key: Array) -> str:
  """Binds `base` to the base `smoothgrad:BASE` names (default "gradient"; see
  `xjax.explain.methods`).

  Raises:
    ConfigError: a base not in `SMOOTHGRAD_BASES` (listing them).
  """
  del bounds, key
  base = option or "gradient"
  if base not in SMOOTHGRAD_BASES:
    raise ConfigError(f"Unknown SmoothGrad base {base!r} in 'smoothgrad:{base}'; known: "
                      f"{', '.join(SMOOTHGRAD_BASES)}.")
  return base


@METHODS.register(
    "smoothgrad", binds={"base": smoothgrad_base, "key": prng_key}, option="SmoothGrad base",
    description="SmoothGrad, 50 noisy samples (Smilkov et al. 2017); smoothgrad:BASE")
@explanation_method
def smoothgrad(apply_fn: ApplyFn, params: Any, x: Array, target: Array, *, key: Array,
               num_samples: int = 50, noise_scale: float = 0.15, chunk_size: int | None = None,
               base: str = "gradient",
               max_megabytes: float | None = DEFAULT_MAX_MEGABYTES) -> Array:
  """SmoothGrad (Smilkov et al. 2017, Eq. 3): `mean_n M(x + eps_n)`, `eps_n ~ N(0, sigma^2)`.

  `sigma = noise_scale * (max(x_b) - min(x_b))` per image (the paper's "noise level" sigma / range,
  10-20% recommended). `M` is the base map: the gradient (the paper's default), its absolute value
  or square, or gradient x input evaluated at the noisy point, `(x + eps) * grad f(x + eps)`.

  The noise of sample `n` is drawn from `jax.random.fold_in(key, n)`, so the draws do not depend on
  `chunk_size` and the same `key` gives the same noise for every target (e.g. under `jax.vmap`).

  Args:
    apply_fn, params, x, target: as in `gradient`.
    key: a JAX PRNG key for the noise (required).
    num_samples: the number of noisy samples n.
    noise_scale: sigma relative to each image's value range; 0 gives the plain base map.
    chunk_size: stack this many samples (each a whole batch) into one gradient pass; None: as
      many as fit `max_megabytes`.
    base: one of `SMOOTHGRAD_BASES`: "gradient", "saliency", "sensitivity", "gradient_x_input".
    max_megabytes: the memory bound of one pass when `chunk_size` is None (`points_per_call`);
      None: every sample in one pass.

  Returns:
    The averaged map, shape of `x`.

  Raises:
    ConfigError: for bad inputs (see `gradient`), a missing key, num_samples or chunk_size < 1,
      a negative noise_scale, an unknown base, or max_megabytes not > 0.
  """
  _check_x_and_target(x, target)
  num_samples = check_count("num_samples", num_samples)
  chunk_size = _check_chunk_size(chunk_size)
  max_megabytes = _check_megabytes(max_megabytes)
  if key is None:
    raise ConfigError("smoothgrad needs a PRNG key for its noise: pass key=jax.random.key(0).")
  if base not in SMOOTHGRAD_BASES:
    raise ConfigError(f"Unknown SmoothGrad base {base!r}; known: {', '.join(SMOOTHGRAD_BASES)}.")
  if isinstance(noise_scale, (int, float)) and noise_scale < 0:
    raise ConfigError(f"noise_scale must be >= 0; got {noise_scale}.")
  base_map = SMOOTHGRAD_BASES[base]
  reduce_axes = tuple(range(1, x.ndim))
  value_range = jnp.max(x, reduce_axes, keepdims=True) - jnp.min(x, reduce_axes, keepdims=True)
  sigma = noise_scale * value_range

  def chunk_sum(indices: Array) -> Array:
    noise = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype))(
        indices)
    noisy = x + sigma * noise  # (k, B, ...)
    return jnp.sum(base_map(noisy, stacked_gradient(apply_fn, params, noisy, target)), axis=0)

  chunk = points_per_call(apply_fn, params, x, num_samples, chunk_size, max_megabytes)
  indices = jnp.arange(num_samples, dtype=jnp.uint32)
  return _sum_over_points(chunk_sum, indices, chunk) / num_samples


# --------------------------------------------------------------------------------------------------
# Integrated Gradients.


IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_right",
              "riemann_left")


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes `alpha_k` in [0, 1] and weights `w_k` with `int_0^1 g(a) da ~ sum_k w_k g(alpha_k)`.

  * "riemann_right": alpha_k = k/m, k = 1..m, w = 1/m (Sundararajan et al. 2017, Eq. 3);
  * "riemann_left": alpha_k = (k-1)/m; "riemann_middle": alpha_k = (k-1/2)/m; w = 1/m;
  * "riemann_trapezoid": alpha_k = (k-1)/(m-1), w = 1/(m-1), halved at both ends (m >= 2);
  * "gausslegendre": the m-point Gauss-Legendre rule mapped to [0, 1] (captum's default), exact for
    polynomials of degree < 2m.

  The same conventions (and names) as captum's `approximation_methods`, so results compare 1:1.
  """
  m = steps
  k = np.arange(m, dtype=np.float64)
  uniform = np.full(m, 1.0 / m)
  if method == "riemann_right":
    return (k + 1) / m, uniform
  if method == "riemann_left":
    return k / m, uniform
  if method == "riemann_middle":
    return (k + 0.5) / m, uniform
  if method == "riemann_trapezoid":
    if m < 2:
      raise ConfigError(f"riemann_trapezoid needs steps >= 2 (both end points); got {m}.")
    weights = np.full(m, 1.0 / (m - 1))
    weights[[0, -1]] /= 2
    return k / (m - 1), weights
  if method == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(m)
    return (nodes + 1) / 2, weights / 2
  raise ConfigError(f"Unknown quadrature {method!r} for integrated_gradients; known: "
                    f"{', '.join(IG_METHODS)}.")


def _broadcast_baseline(x: Array, baseline: Array | float | None) -> Array:
  if baseline is None:
    return jnp.zeros_like(x)
  shape = jnp.shape(baseline)
  if shape not in ((), x.shape[1:], x.shape):
    raise ConfigError(f"baseline must be a scalar, one input {x.shape[1:]} shared by the batch, or "
                      f"one per image {x.shape}; got shape {shape}.")
  return jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)


@METHODS.register(
    "integrated_gradients",
    description="Integrated Gradients from a zero baseline (Sundararajan et al. 2017)")
@explanation_method
def integrated_gradients(apply_fn: ApplyFn, params: Any, x: Array, target: Array, *,
                         baseline: Array | float | None = None, steps: int = 50,
                         chunk_size: int | None = None, method: str = "gausslegendre",
                         max_megabytes: float | None = DEFAULT_MAX_MEGABYTES) -> Array:
  """Integrated Gradients (Sundararajan, Taly, Yan, ICML 2017, Eq. 1, approximated as in Eq. 3).

  `IG_i(x) = (x_i - x'_i) * int_0^1 d f_c(x' + a (x - x')) / d x_i da`, with the integral replaced
  by the quadrature `method` over `steps` points (see `quadrature`). Completeness (Prop. 1):
  `sum_i IG_i = f_c(x) - f_c(x')` up to the quadrature error, which the caller can check.

  Args:
    apply_fn, params, x, target: as in `gradient`.
    baseline: the reference x'; None for zeros, a scalar, an input (shared), or one per image.
    steps: the number of points m on the straight path from x' to x.
    chunk_size: stack this many path points (each a whole batch) into one gradient pass; None:
      as many as fit `max_megabytes`.
    method: the quadrature: "gausslegendre" (default, as captum), "riemann_trapezoid",
      "riemann_middle", "riemann_right" (the paper's Eq. 3) or "riemann_left".
    max_megabytes: the memory bound of one pass when `chunk_size` is None (`points_per_call`);
      None: every point in one pass.

  Returns:
    The attributions, shape of `x`.

  Raises:
    ConfigError: for bad inputs (see `gradient`), steps or chunk_size < 1, a baseline of the wrong
      shape, an unknown method, or max_megabytes not > 0.
  """
  _check_x_and_target(x, target)
  steps = check_count("steps", steps)
  chunk_size = _check_chunk_size(chunk_size)
  max_megabytes = _check_megabytes(max_megabytes)
  baseline = _broadcast_baseline(x, baseline)
  alphas, weights = quadrature(method, steps)
  path = x - baseline

  def chunk_sum(nodes: Array) -> Array:
    expand = (slice(None),) + (None,) * x.ndim  # (k,) -> (k, 1, ..., 1)
    alpha, weight = nodes[:, 0][expand], nodes[:, 1][expand]
    grads = stacked_gradient(apply_fn, params, baseline + alpha * path, target)
    return jnp.sum(weight * grads, axis=0)

  chunk = points_per_call(apply_fn, params, x, steps, chunk_size, max_megabytes)
  nodes = jnp.asarray(np.stack([alphas, weights], axis=1), x.dtype)
  return path * _sum_over_points(chunk_sum, nodes, chunk)
