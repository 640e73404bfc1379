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
| `attention_rollout` | attention rollout, blind to the target (`xjax.explain.attention_maps`) |
| `generic_attention` | Chefer et al.'s gradient-weighted attention (`attention_maps`) |
| `random` | uniform noise from `key`: the chance level of every metric (`random_control`) |

Every method comes back as `method(apply_fn, params, x, target) -> relevance (shape of x)`, with
its options bound, so a caller can `jax.jit(lambda p, x, t: method(apply_fn, p, x, t))`.

`bounds = (low, high)` is the input box of the composites with a z^B first layer (`dtd`,
`epsilon_gamma_box`): scalars or per-channel arrays, e.g.
`xjax.data.pipeline.input_bounds(info, normalization)`. SmoothGrad and `random` draw their noise
from `key`, by default the fixed `jax.random.key(0)`, so the same spec gives the same heatmaps run
after run.

`METHODS` maps a name to the method function itself. Each method registers where it is defined,
with the decorator above `@explanation_method`:

    @METHODS.register("smoothgrad", binds={"base": smoothgrad_base, "key": prng_key},
                      option="SmoothGrad base", description="SmoothGrad ...")
    @explanation_method
    def smoothgrad(apply_fn, params, x, target, *, key, base="gradient", ...): ...

with this metadata:

* `description`: one line, what the method computes and the paper.
* `option`: what `NAME:OPTION` names (e.g. "composite"), for the methods that take one.
* `conservative`: True if the relevance sums to the explained output (tested so).
* `binds`: {parameter: binder}; `get_method` binds `parameter=binder(option, bounds, key)`, from
  the spec's option (None without one), the input box and the key. `prng_key` binds the key,
  `lrp_composite` the composite `lrp:COMPOSITE` names in the box `bounds`.
* `fixed`: {parameter: value} bound as they are, for one function under a second name with an
  option set (`contrastive_excitation_backprop` is `excitation_backprop` with
  `contrastive=True`).
* `needs`: what the model must have, for methods that do not apply to every model (e.g.
  "attention": the attention maps of a transformer).

This module imports no method (they import it, for `METHODS`); `METHODS` imports `MODULES` at its
first lookup, in the order of `METHODS.names()`, so it is complete and in order however it was
imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from xjax.errors import ConfigError
from xjax.registry import Registry

Method = Callable[[Callable, Any, jax.Array, jax.Array], jax.Array]
# `binder(option, bounds, key) -> value` of a parameter (metadata `binds`).
Binder = Callable[[str | None, tuple[Any, Any], jax.Array], Any]

# The modules that register methods, in the order of `METHODS.names()`.
MODULES = ("xjax.explain.gradients", "xjax.explain.lrp", "xjax.explain.cam",
           "xjax.explain.excitation", "xjax.explain.attention_maps",
           "xjax.explain.random_control")
METHODS = Registry("explanation method", modules=MODULES)
DEFAULT_COMPOSITE = "epsilon_plus"
# The leading arguments every method takes by position: apply_fn, params, x, target.
NUM_POSITIONAL = 4


def prng_key(option: str | None, bounds: tuple[Any, Any], key: jax.Array) -> jax.Array:
  """Binds `get_method`'s `key` (default `jax.random.key(0)`): for a method that draws noise."""
  del option, bounds
  return key


def lrp_composite(option: str | None, bounds: tuple[Any, Any], key: jax.Array) -> Any:
  """Binds the composite `lrp:COMPOSITE` names (default `DEFAULT_COMPOSITE`) in the box `bounds`.

  Raises:
    ConfigError: an unknown composite (listing the known ones).
  """
  del key
  from xjax.explain import composites  # here: composites imports the LRP engine, which imports us
  return composites.get_composite(option or DEFAULT_COMPOSITE, *bounds)


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
    key: the PRNG key of the noise of SmoothGrad and `random`; None: `jax.random.key(0)`.

  Returns:
    A function `(apply_fn, params, x, target) -> relevance` with the shape of `x`.

  Raises:
    ConfigError: an unknown method, composite or SmoothGrad base (listing the known ones), an
      option given to a method that takes none, or `bounds` not a (low, high) pair.
  """
  name, option = parse_spec(spec)
  _check_bounds(bounds)
  about = METHODS.metadata(name)
  key = jax.random.key(0) if key is None else key
  binds: Mapping[str, Binder] = about.get("binds", {})
  options = {**about.get("fixed", {}),
             **{parameter: bind(option, bounds, key) for parameter, bind in binds.items()}}
  METHODS.check(name, options, positional=NUM_POSITIONAL)  # a registration's mistake, said early
  method = METHODS[name]
  return functools.partial(method, **options) if options else method


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
