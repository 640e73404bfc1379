"""Excitation backprop (Zhang et al., "Top-down neural attention by excitation backprop", 2016).

The marginal winning probability (MWP) of a unit is `P(a_j) = sum_i a_j w+_ji / (sum_j' a_j'
w+_j'i) P(a_i)` (Eq. 7): the z+ rule with the bias ignored, started from a probability of 1 at
the target class instead of its score (as Caffe-ExcitationBP does). It runs on the LRP engine with
`ZPlus(ignore_bias=True)` on every layer, so it needs no model-specific code either.

Contrastive MWP (Sec. 3.3; `Demo.ipynb` of Caffe-ExcitationBP): through the top layer, the MWP
of the target minus that of its dual unit with negated weights (`rules.ContrastiveZPlus`), then
ordinary MWP further down; the map is `max(sum_channels, 0)` at an intermediate layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from xjax.explain import rules
from xjax.explain.cam import layer_maps, spread_over_input
from xjax.explain.lrp.engine import check_rules, propagate
from xjax.explain.lrp.program import trace
from xjax.explain.methods import METHODS
from xjax.explain.targets import check_inputs, explanation_method, output_seed

Array = jax.Array
# Tiny: MWP divides probabilities, and conservation matters more than smoothing here.
_STABILIZER = 1e-12


@explanation_method
def winning_probability(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                        contrastive: bool = False, layer: int | str | None = None) -> Array:
  """The (contrastive) marginal winning probability at the input, or at a layer's activation.

  Args:
    apply_fn, params, x: the common convention (`xjax.explain.targets`).
    target: class indices (B,) (probability 1 on the class) or a distribution over the outputs
      (B, C).
    contrastive: the contrastive MWP (negated top-layer weights subtracted).
    layer: None for the input; else a layer index or module name, whose activation (B, h, w, K)
      receives the probabilities.

  Returns:
    Probabilities with the shape of x, or of the layer's activation.
  """
  return _winning_probability(apply_fn, params, x, target, contrastive=contrastive, layer=layer)


def _winning_probability(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                         contrastive: bool, layer: int | str | None) -> Array:
  program = trace(apply_fn, params, x)
  outputs = program.avals[program.output_var]
  check_inputs(x, target, outputs.shape[-1])
  top = program.layers[-1].info.index if program.layers else None
  plain = rules.ZPlus(_STABILIZER, ignore_bias=True)
  dual = rules.ContrastiveZPlus(_STABILIZER)

  def composite(info):
    return dual if contrastive and info.index == top else plain

  probability = output_seed(outputs, target)  # probability 1 on the class, or the distribution
  at = None if layer is None else layer_maps(program, layer)
  return propagate(program, params, x, probability, check_rules(program, composite), at=at)


@METHODS.register("contrastive_excitation_backprop", fixed={"contrastive": True},
                  description="contrastive excitation backprop (Zhang et al. 2016)")
@METHODS.register("excitation_backprop", description="excitation backprop (Zhang et al. 2016)")
@explanation_method
def excitation_backprop(apply_fn: Callable, params: Any, x: Array, target: Array, *,
                        contrastive: bool = False, layer: int | str | None = None) -> Array:
  """Excitation backprop heatmap with the shape of x.

  Without `layer`: the MWP of each input element. With `layer`: `max(sum_channels MWP, 0)` at
  the layer's activation, resized bicubically to x (as Caffe-ExcitationBP's demo does) and spread
  over its channels (`heatmaps.channel_sum` gives the map).
  """
  probability = _winning_probability(apply_fn, params, x, target, contrastive=contrastive,
                                     layer=layer)
  if layer is None:
    return probability
  summed = probability.sum(-1)
  # `where`, not `maximum(summed, 0)`: under jit of a vmap over targets, XLA:CPU (jax 0.10.2)
  # computed `maximum(sum(...), 0)` of this program wrongly on 64x64 VGG maps (up to all-zero
  # maps; eager and per-target jit were right), `where` of the same values right
  # (tests/explain/test_excitation_jit.py).
  return spread_over_input(jnp.where(summed > 0, summed, 0.0), x, method="bicubic")
