"""Excitation backprop at a layer under `jax.jit` of a `jax.vmap` over targets (how the SRAE
experiment draws every x-feature at once) equals it one target at a time, eagerly.

On a VGG with 64x64 inputs, XLA:CPU (jax 0.10.2) computed `maximum(sum_channels(MWP), 0)` wrongly
in that setting (relative error 0.9, some maps all zero); `excitation_backprop` now takes the
positive part with `where`. Small models did not show it: this test needs the size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xjax.explain.excitation import excitation_backprop
from xjax.nn.registry import get_model, logits_fn


def test_contrastive_map_at_a_layer_under_jit_of_vmap_over_targets():
  model = get_model("vgg", config=(8, "M", 16, "M", 32, "M"), dense=(16, 16), num_classes=5)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(4, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  apply_fn = logits_fn(model)

  @jax.jit
  def one(params, x, n):
    return excitation_backprop(apply_fn, params, x, jnp.full((4,), n), contrastive=True,
                               layer="conv2")

  every = jax.jit(lambda p, x: jax.vmap(lambda n: one(p, x, n))(jnp.arange(5)))(variables, x)
  for n in range(5):
    alone = np.asarray(one(variables, x, n))
    assert alone.max() > 0
    np.testing.assert_allclose(every[n], alone, rtol=1e-4, atol=1e-5 * alone.max())
