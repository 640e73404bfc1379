"""Post-hoc explanations as pure functions: `method(apply_fn, params, x, target, **options)`.

`apply_fn(params, x) -> logits` is any JAX-traceable function; every method returns relevance
with the shape of x and works under `jax.jit` and `jax.vmap` over targets. See
`xjax.explain.targets` for the meaning of `target`, `xjax.explain.methods` for methods by name.

* gradients: `saliency`, `sensitivity`, `gradient_x_input`, `smoothgrad`, `integrated_gradients`;
* LRP / deep Taylor decomposition: `lrp(..., composite=composites.dtd(low, high))`, with the
  rules in `xjax.explain.rules` and the composites in `xjax.explain.composites`;
* class activation maps: `cam`, `gradcam`;
* excitation backprop: `excitation_backprop` (marginal winning probability, contrastive).
"""

from xjax.explain import composites, rules
from xjax.explain.cam import cam, gradcam
from xjax.explain.excitation import excitation_backprop
from xjax.explain.gradients import (
  gradient,
  gradient_x_input,
  integrated_gradients,
  saliency,
  sensitivity,
  smoothgrad,
)
from xjax.explain.lrp import layers, lrp

__all__ = ["cam", "composites", "excitation_backprop", "gradcam", "gradient", "gradient_x_input",
           "integrated_gradients", "layers", "lrp", "rules", "saliency", "sensitivity",
           "smoothgrad"]
