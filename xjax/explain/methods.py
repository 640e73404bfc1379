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

Every method comes back as `method(apply_fn, params, x, target) -> relevance (shape of x)`, with
its options bound, so a caller can `jax.jit(lambda p, x, t: method(apply_fn, p, x, t))`.

`bounds = (low, high)` is the input box of the composites with a z^B first layer (`dtd`,
`epsilon_gamma_box`): scalars or per-channel arrays, e.g.
`xjax.data.pipeline.input_bounds(info, normalization)`. SmoothGrad draws its noise from `key`,
by default the fixed `jax.random.key(0)`, so the same spec gives the same heatmaps run after run.

`cam`, `gradcam` and the excitation methods are imported when asked for, so the registry works
(and lists them) before or without those modules.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

from xjax.errors import ConfigError

Method = Callable[[Callable, Any, jax.Array, jax.Array], jax.Array]

# name -> what it is (shown in error messages and `--help`).
METHODS: dict[str, str] = {
    "saliency": "absolute input gradient (Simonyan et al. 2014)",
    "gradient": "signed input gradient",
    "sensitivity": "squared input gradient (sensitivity analysis)",
    "gradient_x_input": "input times gradient",
    "smoothgrad": "SmoothGrad, 50 noisy samples (Smilkov et al. 2017); smoothgrad:BASE",
    "integrated_gradients": "Integrated Gradients from a zero baseline (Sundararajan et al. 2017)",
    "lrp": "layer-wise relevance propagation; lrp:COMPOSITE, default epsilon_plus",
    "cam": "class activation map (Zhou et al. 2016)",
    "gradcam": "Grad-CAM (Selvaraju et al. 2017)",
    "excitation_backprop": "excitation backprop (Zhang et al. 2016)",
    "contrastive_excitation_backprop": "contrastive excitation backprop (Zhang et al. 2016)",
}
DEFAULT_COMPOSITE = "epsilon_plus"
# The methods that take `:OPTION`, and what the option is.
_OPTION_NAMES = {"lrp": "composite", "smoothgrad": "SmoothGrad base"}


def parse_spec(spec: str) -> tuple[str, str | None]:
  """`"lrp:dtd"` -> `("lrp", "dtd")`, `"saliency"` -> `("saliency", None)`; checks the names."""
  name, sep, option = str(spec).strip().partition(":")
  if name not in METHODS:
    raise ConfigError(f"Unknown explanation method {spec!r}; known methods: "
                      f"{', '.join(METHODS)} (lrp:COMPOSITE, smoothgrad:BASE).")
  if sep and name not in _OPTION_NAMES:
    raise ConfigError(f"Method {name!r} takes no option; got {spec!r}. Options exist for: "
                      f"{', '.join(f'{k}:<{v}>' for k, v in _OPTION_NAMES.items())}.")
  if sep and not option:
    raise ConfigError(f"Empty {_OPTION_NAMES[name]} in {spec!r}; write {name} or {name}:NAME.")
  return name, (option if sep else None)


def canonical_spec(spec: str) -> str:
  """The spec with its default option filled in: `"lrp"` -> `"lrp:epsilon_plus"`."""
  name, option = parse_spec(spec)
  if name == "lrp" and option is None:
    option = DEFAULT_COMPOSITE
  return name if option is None else f"{name}:{option}"


def is_conservative(spec: str) -> bool:
  """Whether the method means its relevance to sum to the explained output (LRP, DTD)."""
  return parse_spec(spec)[0] == "lrp"


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
    ConfigError: an unknown method, composite or SmoothGrad base (listing the known ones), or an
      option given to a method that takes none.
  """
  from xjax.explain import gradients

  name, option = parse_spec(spec)
  if name in ("saliency", "gradient", "sensitivity", "gradient_x_input"):
    return getattr(gradients, name)
  if name == "smoothgrad":
    base = option or "gradient"
    if base not in gradients.SMOOTHGRAD_BASES:
      raise ConfigError(f"Unknown SmoothGrad base {base!r} in {spec!r}; known: "
                        f"{', '.join(gradients.SMOOTHGRAD_BASES)}.")
    return functools.partial(gradients.smoothgrad, key=jax.random.key(0) if key is None else key,
                             base=base)
  if name == "integrated_gradients":
    return gradients.integrated_gradients
  if name == "lrp":
    from xjax.explain import composites
    from xjax.explain.lrp import lrp
    composite = composites.get_composite(option or DEFAULT_COMPOSITE, *bounds)
    return functools.partial(lrp, composite=composite)
  if name in ("cam", "gradcam"):
    cam = _lazy_import("xjax.explain.cam", name)
    return getattr(cam, name)
  excitation = _lazy_import("xjax.explain.excitation", name)
  return functools.partial(excitation.excitation_backprop,
                           contrastive=name == "contrastive_excitation_backprop")


def _lazy_import(module: str, name: str):
  import importlib
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise
    raise ConfigError(f"Method {name!r} needs {module}, which this installation does not "
                      f"have yet.") from None
