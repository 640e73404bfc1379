"""Explanation methods by name, for command lines and configs: `get_method("lrp:dtd", bounds=...)`.

A spec is `NAME` or `NAME:OPTION`:

| spec | method |
|---|---|
| `saliency` | `|d f_c / d x|` (`gradients.saliency`) |
| `gradient` | the signed gradient (`gradients.gradient`) |
| `sensitivity` | the squared gradient (`gradients.sensitivity`) |
| `gradient_x_input` | `x * grad f` (`gradients.gradient_x_input`) |
| `smoothgrad[:BASE]` | SmoothGrad of `BASE` (default `gradient`, see `SMOOTHGRAD_BASES`) |
| `integrated_gradients` | IG from a zero baseline, 50 Gauss-Legendre points |
| `lrp[:COMPOSITE]` | LRP with a preset of `composites.COMPOSITES` (default `epsilon_plus`) |
| `cam` / `gradcam` | class activation maps (`xjax.explain.cam`) |
| `excitation_backprop` | excitation backprop (`xjax.explain.excitation`) |
| `contrastive_excitation_backprop` | the same with `contrastive=True` |
| `random` | uniform noise from `key`: a control, the chance level of every metric |

Every method comes back as `method(apply_fn, params, x, target) -> relevance (shape of x)`, with
its options bound, so a caller can `jax.jit(lambda p, x, t: method(apply_fn, p, x, t))`.

`bounds = (low, high)` is the input box of the composites with a z^B first layer (`dtd`,
`epsilon_gamma_box`): scalars or per-channel arrays, e.g.
`xjax.data.pipeline.input_bounds(info, normalization)`. SmoothGrad draws its noise from `key`,
by default the fixed `jax.random.key(0)`, so the same spec gives the same heatmaps run after run.

`METHODS` registers a factory per name, `make(option, bounds, key) -> method`, with the metadata
`description` (shown in error messages and `--help`), `option` (what `NAME:OPTION` names, for the
methods that take one) and `conservative` (the relevance sums to the explained output). The
modules behind the methods are imported when a method is asked for, so the registry works (and
lists them) before or without those modules.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from xjax.errors import ConfigError
from xjax.explain.targets import explanation_method
from xjax.registry import Registry

Method = Callable[[Callable, Any, jax.Array, jax.Array], jax.Array]

METHODS = Registry("explanation method")
DEFAULT_COMPOSITE = "epsilon_plus"


def _gradients():
  return importlib.import_module("xjax.explain.gradients")


def _gradient_method(name: str) -> Callable[..., Method]:
  """The factory of the gradient method `name` of `xjax.explain.gradients` (no options)."""

  def make(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
    del option, bounds, key
    return getattr(_gradients(), name)

  return make


METHODS.register("saliency", _gradient_method("saliency"),
                 description="absolute input gradient (Simonyan et al. 2014)")
METHODS.register("gradient", _gradient_method("gradient"), description="signed input gradient")
METHODS.register("sensitivity", _gradient_method("sensitivity"),
                 description="squared input gradient (sensitivity analysis)")
METHODS.register("gradient_x_input", _gradient_method("gradient_x_input"),
                 description="input times gradient")


@METHODS.register("smoothgrad", option="SmoothGrad base",
                  description="SmoothGrad, 50 noisy samples (Smilkov et al. 2017); smoothgrad:BASE")
def _smoothgrad(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
  gradients = _gradients()
  base = option or "gradient"
  if base not in gradients.SMOOTHGRAD_BASES:
    raise ConfigError(f"Unknown SmoothGrad base {base!r} in 'smoothgrad:{base}'; known: "
                      f"{', '.join(gradients.SMOOTHGRAD_BASES)}.")
  return functools.partial(gradients.smoothgrad, key=jax.random.key(0) if key is None else key,
                           base=base)


METHODS.register(
    "integrated_gradients", _gradient_method("integrated_gradients"),
    description="Integrated Gradients from a zero baseline (Sundararajan et al. 2017)")


@METHODS.register("lrp", option="composite", conservative=True,
                  description="layer-wise relevance propagation; lrp:COMPOSITE, default "
                  "epsilon_plus")
def _lrp(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
  del key
  from xjax.explain import composites
  from xjax.explain.lrp import lrp
  return functools.partial(lrp, composite=composites.get_composite(option or DEFAULT_COMPOSITE,
                                                                   *bounds))


def _cam_method(name: str) -> Callable[..., Method]:
  def make(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
    del option, bounds, key
    return getattr(importlib.import_module("xjax.explain.cam"), name)

  return make


METHODS.register("cam", _cam_method("cam"), description="class activation map (Zhou et al. 2016)")
METHODS.register("gradcam", _cam_method("gradcam"),
                 description="Grad-CAM (Selvaraju et al. 2017)")


def _excitation_method(name: str, contrastive: bool) -> Callable[..., Method]:
  def make(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
    del option, bounds, key
    excitation = importlib.import_module("xjax.explain.excitation")
    return functools.partial(excitation.excitation_backprop, contrastive=contrastive)

  return make


METHODS.register("excitation_backprop", _excitation_method("excitation_backprop", False),
                 description="excitation backprop (Zhang et al. 2016)")
METHODS.register("contrastive_excitation_backprop",
                 _excitation_method("contrastive_excitation_backprop", True),
                 description="contrastive excitation backprop (Zhang et al. 2016)")


@METHODS.register("random", description="uniform noise in [0, 1): the chance level of every "
                  "metric (a control, not an explanation)")
def _random(option: str | None = None, bounds: Any = (0.0, 1.0), key: Any = None) -> Method:
  del option, bounds
  key = jax.random.key(0) if key is None else key

  @explanation_method
  def random(apply_fn: Callable, params: Any, x: jax.Array, target: jax.Array) -> jax.Array:
    del apply_fn, params, target  # blind to the model: what a metric gives an uninformed map
    # Each image's noise comes from the key folded with the bits of three of its pixels: the
    # same image gets the same map in any batch (an evaluation in batches of 32 and one in 64
    # agree), and different images get different maps.
    flat = jax.numpy.reshape(x, (jax.numpy.shape(x)[0], -1)).astype(jax.numpy.float32)
    picks = flat[:, jax.numpy.array([0, flat.shape[1] // 2, flat.shape[1] - 1])]
    bits = jax.lax.bitcast_convert_type(picks, jax.numpy.uint32)

    def one(image_bits):
      k = key
      for b in image_bits:
        k = jax.random.fold_in(k, b)
      return jax.random.uniform(k, jax.numpy.shape(x)[1:])

    return jax.vmap(one)(bits)

  return random


def _option_names() -> dict[str, str]:
  """The methods that take `:OPTION`, and what the option is."""
  return {name: METHODS.metadata(name)["option"] for name in METHODS
          if "option" in METHODS.metadata(name)}


def parse_spec(spec: str) -> tuple[str, str | None]:
  """`"lrp:dtd"` -> `("lrp", "dtd")`, `"saliency"` -> `("saliency", None)`; checks the names.

  Raises:
    ConfigError: an unknown method (listing the known ones), an option given to a method that
      takes none, or an empty option.
  """
  name, sep, option = str(spec).strip().partition(":")
  options = _option_names()
  if name not in METHODS:
    raise ConfigError(f"Unknown explanation method {spec!r}; known explanation methods: "
                      f"{', '.join(METHODS)} (lrp:COMPOSITE, smoothgrad:BASE).")
  if sep and name not in options:
    raise ConfigError(f"Method {name!r} takes no option; got {spec!r}. Options exist for: "
                      f"{', '.join(f'{k}:<{v}>' for k, v in options.items())}.")
  if sep and not option:
    raise ConfigError(f"Empty {options[name]} in {spec!r}; write {name} or {name}:NAME.")
  return name, (option if sep else None)


def canonical_spec(spec: str) -> str:
  """The spec with its default option filled in: `"lrp"` -> `"lrp:epsilon_plus"`."""
  name, option = parse_spec(spec)
  if name == "lrp" and option is None:
    option = DEFAULT_COMPOSITE
  return name if option is None else f"{name}:{option}"


def is_conservative(spec: str) -> bool:
  """Whether the method means its relevance to sum to the explained output (LRP, DTD)."""
  return bool(METHODS.metadata(parse_spec(spec)[0]).get("conservative", False))


def get_method(spec: str, *, bounds: tuple[Any, Any] = (0.0, 1.0),
               key: jax.Array | None = None) -> Method:
  """The explanation method named by `spec`, as `method(apply_fn, params, x, target)`.

  Args:
    spec: `NAME` or `NAME:OPTION`, see the module docstring, e.g. "lrp:dtd", "saliency".
    bounds: (low, high) of the input box, scalars or per-channel arrays; used by the LRP
      composites with a z^B layer ("dtd", "epsilon_gamma_box"), ignored by the others.
    key: the PRNG key of SmoothGrad's noise; None: `jax.random.key(0)`.

  Returns:
    A function `(apply_fn, params, x, target) -> relevance` with the shape of `x`.

  Raises:
    ConfigError: an unknown method, composite or SmoothGrad base (listing the known ones), an
      option given to a method that takes none, or `bounds` not a (low, high) pair.
  """
  name, option = parse_spec(spec)
  _check_bounds(bounds)
  return METHODS.get(name, option=option, bounds=bounds, key=key)


def _check_bounds(bounds: Any) -> None:
  """Raises a one-line ConfigError unless `bounds` is a (low, high) pair of finite scalars or
  per-channel arrays (C,) with low <= high: checked for every method, so that a mistake shows
  whichever method the spec names (the others ignore the box), before any is built."""
  try:
    low, high = (np.asarray(b, np.float64) for b in bounds)
    valid = (low.ndim <= 1 and high.ndim <= 1 and bool(np.all(np.isfinite(low)))
             and bool(np.all(np.isfinite(high))) and bool(np.all(low <= high)))
  except (TypeError, ValueError):  # not a pair, not numbers, or shapes that do not broadcast
    valid = False
  if not valid:
    got = " ".join(repr(bounds).split())  # one line, also for arrays
    raise ConfigError(f"bounds must be a (low, high) pair of finite scalars or per-channel arrays "
                      f"(C,) with low <= high (the input box of z^B); got {got}.")
