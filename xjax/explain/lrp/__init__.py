"""Layer-wise relevance propagation and deep Taylor decomposition on any JAX function.

`lrp(apply_fn, params, x, target, composite=...)` traces `apply_fn`, finds its dense and
convolution layers (`program.py`), and takes the modified gradient in which each layer's backward
pass is its rule (`engine.py`). Rules are in `xjax.explain.rules`, composites in
`xjax.explain.composites`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.explain.lrp.engine import check_rules, propagate
from xjax.explain.lrp.program import LayerInfo, Program, trace
from xjax.explain.methods import METHODS, lrp_composite
from xjax.explain.targets import check_inputs, explanation_method, output_seed

Array = jax.Array

__all__ = ["LayerInfo", "Program", "layers", "lrp", "trace"]


@METHODS.register("lrp", binds={"composite": lrp_composite}, option="composite",
                  conservative=True, description="layer-wise relevance propagation; "
                  "lrp:COMPOSITE, default epsilon_plus")
@explanation_method
def lrp(apply_fn: Callable[[Any, Array], Array], params: Any, x: Array, target: Array,
        composite: Callable[[LayerInfo], Callable] | None = None, *,
        max_pool: str = "winner") -> Array:
  """Layer-wise relevance propagation (Bach et al. 2015; Montavon et al., DSP 2018, Sec. 5).

  Args:
    apply_fn: `(params, x) -> outputs (B, C)`, any JAX-traceable function (explain the logits:
      a softmax divides by an input-dependent value and is rejected).
    params: its parameters (any pytree).
    x: a batch of inputs (B, ...).
    target: class indices (B,) (relevance `onehot * f(x)` at the outputs) or the output relevance
      (B, C) itself (see `xjax.explain.targets`).
    composite: `LayerInfo -> rule`, e.g. `composites.dtd(low, high)`; default
      `composites.epsilon_plus()`.
    max_pool: "winner" (relevance to each window's maximum) or "average" (in proportion to the
      window's inputs, as the heatmapping.org VGG tutorial does).

  Returns:
    The relevance of each input element, with the shape of x. With z+ / z^B rules and the bias
    ignored, it sums to the explained output (relevance conservation, DSP 2018 Eq. 3).

  Raises:
    UnsupportedOperationError: `apply_fn` contains an operation relevance cannot pass.
    ConfigError: bad target, composite or option.
  """
  from xjax.explain import composites  # here: composites imports rules, which import the engine

  program = trace(apply_fn, params, x)
  outputs = program.avals[program.output_var]
  check_inputs(x, target, outputs.shape[-1])
  rules = check_rules(program, composite or composites.epsilon_plus())
  if target.ndim == 1:
    return propagate(program, params, x, None, rules, max_pool=max_pool,
                     seed=output_seed(outputs, target))
  return propagate(program, params, x, jnp.asarray(target), rules, max_pool=max_pool)


def layers(apply_fn: Callable[[Any, Array], Array], params: Any, x: Array) -> list[LayerInfo]:
  """The dense and convolution layers LRP finds in `apply_fn`, in evaluation order."""
  return trace(apply_fn, params, x).infos
