"""The normalisations of the transformers: RMSNorm, and LayerNorm as PyTorch computes it.

Both are written so that an LRP engine sees their structure in the traced program: the
normalising factor (`rsqrt` of a mean) multiplies the input, and AttnLRP (Achtibat et al.,
"AttnLRP: attention-aware layer-wise relevance propagation for transformers", 2024, Prop. 3.4)
holds that factor constant.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class RMSNorm(nn.Module):
  """Root-mean-square normalisation of Zhang & Sennrich, "Root mean square layer normalization"
  (NeurIPS 2019), Eq. 4, as LLaMA uses it: `x / sqrt(mean(x^2) + eps) * scale`, no bias, no
  mean subtraction.

  The statistic is computed in float32 whatever the input dtype, and the normalised value is cast
  back before the scale, as Hugging Face's `LlamaRMSNorm` does (the same numbers for bf16 models).
  The parameter is "scale" (Flax's name for LayerNorm's weight; PyTorch's "weight").
  """

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def layer_norm(epsilon: float, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm of Ba et al., "Layer normalization" (2016), Eq. 4, over the last axis, with the
  variance in two passes (mean of (x - mean)^2) as PyTorch computes it.

  Flax's default one-pass variance E[x^2] - E[x]^2 differs from PyTorch's by rounding that grows
  with |mean| / std; with `use_fast_variance=False` both agree to float32 rounding.
  """
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)
