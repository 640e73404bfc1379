"""Multi-head dot-product attention: the one attention module of the ViT, BERT and LLaMA models.

Vaswani et al., "Attention is all you need" (NeurIPS 2017), Eq. 1 and Sec. 3.2.2:
softmax(Q K^T / sqrt(d)) V per head, heads concatenated and projected. Options cover the three
families: grouped-query attention (Ainslie et al., "GQA: training generalized multi-query
transformer models from multi-head checkpoints", 2023: several query heads share one key/value
head), rotary position embeddings (Su et al., "RoFormer: enhanced transformer with rotary position
embedding", 2021, Eq. 34, in LLaMA's "rotate half" layout), a causal mask and a padding mask.

The module is plain `jnp` / `lax` on purpose: an LRP engine recognises its operations in the
traced program, where Q K^T and probs V are products of two input-dependent values (AttnLRP,
Achtibat et al. 2024, Prop. 3.3) and the softmax keeps its own gradient (Prop. 3.1). No
`custom_vjp`, no `flax.linen.dot_product_attention`, no fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xjax.errors import ConfigError

Array = jax.Array
Initializer = Callable[..., Any]


def check_heads(model: str, hidden: int, num_heads: int, num_kv_heads: int | None = None,
                head_dim: int | None = None) -> None:
  """Raises a one-line ConfigError unless `hidden` splits into `num_heads` heads (or `head_dim`
  is given) and `num_heads` into `num_kv_heads` groups."""
  kv_heads = num_kv_heads or num_heads
  if num_heads % kv_heads:
    raise ConfigError(f"{model} num_heads ({num_heads}) must be a multiple of num_kv_heads "
                      f"({kv_heads}).")
  if head_dim is None and hidden % num_heads:
    raise ConfigError(f"{model} hidden ({hidden}) must be a multiple of num_heads "
                      f"({num_heads}){', or set head_dim' if num_kv_heads else ''}.")


def rotate_half(x: Array) -> Array:
  """(x1, x2) -> (-x2, x1) on the two halves of the last axis (LLaMA's rotary layout)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rotary_embedding(x: Array, theta: float = 10000.0) -> Array:
  """Rotary position embedding (Su et al., RoFormer 2021, Eq. 34) of `x` (B, T, heads, head_dim)
  at positions 0..T-1, in the "rotate half" form of Hugging Face's LLaMA.

  Dimension i of the first half rotates with dimension i of the second half by the angle
  t * theta^(-2i / head_dim). Angles are computed in float32, as Hugging Face does.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ConfigError(f"Rotary position embeddings need an even head dimension, got {head_dim}.")
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, hd/2)
  angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]  # (1, T, 1, hd)
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  return x * cos + rotate_half(x) * sin


def attention_mask(length: int, causal: bool, padding_mask: Array | None) -> Array | None:
  """The boolean mask (B or 1, 1, T, T) of allowed query-key pairs, or None (all allowed).

  `padding_mask` (B, T) marks the valid tokens; a padded key receives no attention. Causal:
  query t sees keys 0..t.
  """
  mask = None
  if causal:
    mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if padding_mask is not None:
    keys = jnp.asarray(padding_mask).astype(bool)[:, None, None, :]
    mask = keys if mask is None else mask & keys
  return mask


class MultiHeadAttention(nn.Module):
  """Multi-head self-attention with optional GQA, rotary positions and causal/padding masks.

  Projections (nn.Dense, names as in the checkpoints' layouts): "query" (D -> heads * head_dim),
  "key" and "value" (D -> kv_heads * head_dim), "out" (heads * head_dim -> D). A Dense kernel's
  output axis is (head, head_dim) in that order, which is PyTorch's layout of the same weights.

  Attention probabilities (B, heads, T, T) are sown as `intermediates/.../attention` (read them
  with `model.apply(..., mutable=["intermediates"])`), except during `init`, so that the
  variables of a fresh model hold no intermediates.

  Attributes:
    num_heads: the number of query heads.
    num_kv_heads: the number of key/value heads (None: `num_heads`); each serves
      num_heads / num_kv_heads consecutive query heads.
    head_dim: the width of a head (None: input width / num_heads).
    use_bias: biases on the four projections.
    rotary: rotary position embeddings on queries and keys.
    rope_theta: the rotary base.
    causal: each position attends to itself and earlier positions only.
    dropout_rate: dropout on the attention probabilities (training only).
    kernel_init: the projections' kernel initialiser.
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  use_bias: bool = True
  rotary: bool = False
  rope_theta: float = 10000.0
  causal: bool = False
  dropout_rate: float = 0.0
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: Array, padding_mask: Array | None = None, train: bool = False) -> Array:
    batch, length, width = x.shape
    heads = self.num_heads
    kv_heads = self.num_kv_heads or heads
    head_dim = self.head_dim or width // heads
    if heads % kv_heads:
      raise ConfigError(f"num_heads ({heads}) must be a multiple of num_kv_heads ({kv_heads}).")
    if self.head_dim is None and width % heads:
      raise ConfigError(f"The width {width} is not a multiple of num_heads ({heads}); "
                        "set head_dim.")
    dense = lambda features, name: nn.Dense(features, use_bias=self.use_bias,
                                            kernel_init=self.kernel_init, name=name)
    q = dense(heads * head_dim, "query")(x).reshape(batch, length, heads, head_dim)
    k = dense(kv_heads * head_dim, "key")(x).reshape(batch, length, kv_heads, head_dim)
    v = dense(kv_heads * head_dim, "value")(x).reshape(batch, length, kv_heads, head_dim)
    if self.rotary:
      q, k = rotary_embedding(q, self.rope_theta), rotary_embedding(k, self.rope_theta)
    if kv_heads != heads:
      # Query head h reads key/value head h // (heads / kv_heads), as Hugging Face's `repeat_kv`.
      k = jnp.repeat(k, heads // kv_heads, axis=2)
      v = jnp.repeat(v, heads // kv_heads, axis=2)

    # The scale multiplies the scores (Q K^T), as PyTorch and Hugging Face apply it; scaling q
    # first (Flax's order) gives the same value up to float32 rounding.
    scores = jnp.einsum("bthd,bshd->bhts", q, k) * np.float32(1.0 / np.sqrt(head_dim))
    mask = attention_mask(length, self.causal, padding_mask)
    if mask is not None:
      # The most negative finite number (not -inf): a row with every key masked gets uniform
      # probabilities instead of NaN, as Hugging Face's additive finfo.min mask does.
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if not self.is_initializing():
      self.sow("intermediates", "attention", probs)
    probs = nn.Dropout(self.dropout_rate, deterministic=not train)(probs)
    out = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(batch, length, heads * head_dim)
    return dense(width, "out")(out)
