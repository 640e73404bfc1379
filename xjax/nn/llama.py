"""A LLaMA-style decoder: Touvron et al., "LLaMA: open and efficient foundation language models"
(2023), Sec. 2.2, in the layout of Hugging Face's `LlamaForCausalLM` and
`LlamaForSequenceClassification`, whose weights map one to one (`xjax.nn.torch_import`).

Pre-normalisation with RMSNorm, SwiGLU MLP (Shazeer, "GLU variants improve transformer", 2020,
Eq. 6), rotary position embeddings, grouped-query attention, a causal mask.

Inputs: token ids (B, T), or word embeddings (B, T, D) (Hugging Face's `inputs_embeds`):

  e = model.apply(variables, ids, method=model.embed)
  logits = model.apply(variables, e)[0]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.nn.attention import MultiHeadAttention, check_heads
from xjax.nn.norms import RMSNorm
from xjax.nn.registry import MODELS

Array = jax.Array

POSITIONS = ("last", "all")

# Hugging Face's LLaMA initialiser: N(0, 0.02) for every weight matrix and the embedding table.
_INIT = nn.initializers.normal(0.02)


class GatedMLP(nn.Module):
  """SwiGLU (Shazeer 2020, Eq. 6): down_proj(silu(gate_proj(x)) * up_proj(x)), no biases."""

  mlp: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = lambda features, name: nn.Dense(features, use_bias=False, kernel_init=_INIT, name=name)
    gate = dense(self.mlp, "gate_proj")(x)
    up = dense(self.mlp, "up_proj")(x)
    return dense(x.shape[-1], "down_proj")(jax.nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  """x + attention(RMSNorm(x)), then x + MLP(RMSNorm(x)) (LLaMA's pre-norm layer).

  Names (Hugging Face's in brackets): "input_norm" (input_layernorm), "attention" (self_attn:
  q_proj, k_proj, v_proj, o_proj = query, key, value, out), "post_attention_norm"
  (post_attention_layernorm), "mlp" (`GatedMLP`).
  """

  num_heads: int
  num_kv_heads: int
  head_dim: int | None
  mlp: int
  rope_theta: float
  rms_norm_epsilon: float
  use_bias: bool

  @nn.compact
  def __call__(self, x: Array, mask: Array | None) -> Array:
    y = RMSNorm(self.rms_norm_epsilon, name="input_norm")(x)
    x = x + MultiHeadAttention(self.num_heads, self.num_kv_heads, self.head_dim,
                               use_bias=self.use_bias, rotary=True, rope_theta=self.rope_theta,
                               causal=True, kernel_init=_INIT, name="attention")(y, mask)
    y = RMSNorm(self.rms_norm_epsilon, name="post_attention_norm")(x)
    return x + GatedMLP(self.mlp, name="mlp")(y)


@MODELS.register("llama")
class Llama(nn.Module):
  """A LLaMA decoder (Touvron et al. 2023) with a language-model head or a classifier.

  "embed_tokens" (vocab_size, hidden), layers "layer_0", ... (`DecoderLayer`), a final RMSNorm
  ("norm") and a bias-free head: "lm_head" (hidden -> vocab_size) when `num_classes` is None
  (with `tie_embeddings`, the transposed embedding table instead), else "score"
  (hidden -> num_classes), as Hugging Face's `LlamaForSequenceClassification`.

  `__call__(x, train=False, token_types=None, mask=None)`: `x` is token ids (B, T) (any dtype,
  cast to int32) or word embeddings (B, T, hidden); `token_types` is accepted for a common
  signature with BERT and must be None; `mask` (B, T) marks the valid tokens (right padding).
  Logits: (B, C) at the last position when `positions="last"` (the last valid one under
  `mask`, as Hugging Face's classifier picks the last non-padding token), (B, T, C) for "all".

  Intermediates: "tokens" (B, T, hidden), the final norm's output, and "features", the head's
  input ((B, hidden) for "last", (B, T, hidden) for "all"). Attention maps: sown per layer as
  `intermediates/layer_<i>/attention/attention`.

  Attributes:
    vocab_size, hidden, depth, num_heads, num_kv_heads, mlp: sizes (Hugging Face's vocab_size,
      hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads (None: heads),
      intermediate_size).
    head_dim: the width of a head (None: hidden / num_heads).
    num_classes: None for a language-model head over the vocabulary, else a classifier.
    positions: "last" or "all" (which positions' logits are returned).
    rope_theta: the rotary base.
    rms_norm_epsilon: every RMSNorm's epsilon.
    tie_embeddings: the language-model head is the embedding table (Hugging Face's
      tie_word_embeddings).
    use_bias: biases on the attention projections (Hugging Face's attention_bias).
    remat: recompute each layer in the backward pass (`nn.remat`).
  """

  vocab_size: int = 32000
  hidden: int = 4096
  depth: int = 32
  num_heads: int = 32
  num_kv_heads: int | None = None
  mlp: int = 11008
  head_dim: int | None = None
  num_classes: int | None = None
  positions: str = "last"
  rope_theta: float = 10000.0
  rms_norm_epsilon: float = 1e-6
  tie_embeddings: bool = False
  use_bias: bool = False
  remat: bool = False

  INTERMEDIATES = ("tokens", "features")

  def __post_init__(self) -> None:
    if self.positions not in POSITIONS:
      raise ConfigError(f"Unknown LLaMA positions {self.positions!r}; expected one of "
                        f"{POSITIONS}.")
    check_heads("LLaMA", self.hidden, self.num_heads, self.num_kv_heads or self.num_heads,
                self.head_dim)
    super().__post_init__()

  def setup(self) -> None:
    # In `setup` so that `embed`, `__call__` and the tied head share the table.
    self.embed_tokens = nn.Embed(self.vocab_size, self.hidden, embedding_init=_INIT)

  def embed(self, ids: Array) -> Array:
    """The token embeddings (B, T, hidden) of ids (B, T): the input an explanation attributes
    to."""
    return self.embed_tokens(jnp.asarray(ids).astype(jnp.int32))

  @nn.compact
  def __call__(self, x: Array, train: bool = False, token_types: Array | None = None,
               mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    del train  # no dropout (LLaMA trains without it)
    if token_types is not None:
      raise ConfigError("LLaMA has no token types; pass token_types=None.")
    x = self.embed(x) if jnp.ndim(x) == 2 else jnp.asarray(x, jnp.float32)
    layer = nn.remat(DecoderLayer) if self.remat else DecoderLayer
    for i in range(self.depth):
      x = layer(self.num_heads, self.num_kv_heads or self.num_heads, self.head_dim, self.mlp,
                self.rope_theta, self.rms_norm_epsilon, self.use_bias, name=f"layer_{i}")(x, mask)
    x = RMSNorm(self.rms_norm_epsilon, name="norm")(x)
    features = x
    if self.positions == "last":
      if mask is None:
        features = x[:, -1]
      else:
        # The last valid position of each row (right padding).
        valid = jnp.asarray(mask).astype(bool)
        last = jnp.max(jnp.where(valid, jnp.arange(x.shape[1]), 0), axis=1)
        features = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
    intermediates = {"tokens": x, "features": features}
    if self.num_classes is not None:
      head = nn.Dense(self.num_classes, use_bias=False, kernel_init=_INIT, name="score")
      return head(features), intermediates
    if self.tie_embeddings:
      return self.embed_tokens.attend(features), intermediates
    head = nn.Dense(self.vocab_size, use_bias=False, kernel_init=_INIT, name="lm_head")
    return head(features), intermediates
