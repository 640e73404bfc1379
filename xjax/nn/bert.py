"""A BERT encoder for sequence classification: Devlin et al., "BERT: pre-training of deep
bidirectional transformers for language understanding" (NAACL 2019), in the layout of Hugging
Face's `BertForSequenceClassification`, whose weights map one to one (`xjax.nn.torch_import`).

Inputs: token ids (B, T), or word embeddings (B, T, D) (Hugging Face's `inputs_embeds`: the
word embeddings before the position and token-type embeddings are added). Explaining with
respect to the embeddings:

  e = model.apply(variables, ids, method=model.embed)
  logits = model.apply(variables, e)[0]
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.nn.attention import MultiHeadAttention, check_heads
from xjax.nn.norms import layer_norm
from xjax.nn.registry import MODELS

Array = jax.Array

# BERT's initialiser: N(0, 0.02) for every weight matrix and embedding table, zero biases.
_INIT = nn.initializers.normal(0.02)


class BertLayer(nn.Module):
  """A post-norm encoder layer (Vaswani et al. 2017, Sec. 3.1; BERT keeps its order):
  x = LN(x + dense(attention(x))), then x = LN(x + dense(gelu(dense(x)))), with the erf GELU.

  Names (Hugging Face's in brackets): "attention" (attention.self + attention.output.dense),
  "attention_norm" (attention.output.LayerNorm), "intermediate" (intermediate.dense), "output"
  (output.dense), "output_norm" (output.LayerNorm).
  """

  num_heads: int
  mlp: int
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-12

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, train: bool = False) -> Array:
    dropout = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = MultiHeadAttention(self.num_heads, dropout_rate=self.dropout_rate, kernel_init=_INIT,
                           name="attention")(x, mask, train)
    x = layer_norm(self.layer_norm_epsilon, "attention_norm")(x + dropout(y))
    y = nn.Dense(self.mlp, kernel_init=_INIT, name="intermediate")(x)
    # Hugging Face's "gelu" is the erf form; jax.nn.gelu defaults to the tanh approximation.
    y = nn.Dense(x.shape[-1], kernel_init=_INIT, name="output")(jax.nn.gelu(y, approximate=False))
    return layer_norm(self.layer_norm_epsilon, "output_norm")(x + dropout(y))


@MODELS.register("bert")
class Bert(nn.Module):
  """BERT (Devlin et al. 2019, Sec. 3) with a pooler and a classifier on the first token.

  Embeddings: "word_embeddings" (vocab_size, hidden), "position_embeddings" (max_positions,
  hidden) at positions 0..T-1, "token_type_embeddings" (type_vocab_size, hidden), summed, then
  "embedding_norm" (LayerNorm). Layers "layer_0", ... (`BertLayer`); "pooler" (Dense + tanh on
  token 0) and "classifier" (Dense).

  `__call__(x, train=False, token_types=None, mask=None)`: `x` is token ids (B, T) (any dtype,
  cast to int32) or word embeddings (B, T, hidden); `token_types` (B, T) ids (None: all 0);
  `mask` (B, T) marks the valid (non-padding) tokens (None: all valid).

  Intermediates: "tokens" (B, T, hidden), the last layer's output, and "features" (B, hidden),
  the pooler output (the input of the classifier). Attention maps: sown per layer as
  `intermediates/layer_<i>/attention/attention`.

  Attributes:
    vocab_size, hidden, depth, num_heads: sizes (BERT-base: 30522, 768, 12, 12).
    mlp: the intermediate width (BERT-base: 3072).
    max_positions: rows of the position table (Hugging Face's max_position_embeddings).
    type_vocab_size: rows of the token-type table.
    num_classes: classes of the classifier; None: no classifier (`logits` = pooled features).
    layer_norm_epsilon: every LayerNorm's epsilon (BERT: 1e-12).
    dropout_rate: dropout on embeddings, attention probabilities, sublayer outputs and the
      pooled features (Hugging Face's hidden and attention dropout, one rate).
    remat: recompute each layer in the backward pass (`nn.remat`).
  """

  vocab_size: int = 30522
  hidden: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  num_classes: int | None = 2
  layer_norm_epsilon: float = 1e-12
  dropout_rate: float = 0.0
  remat: bool = False

  INTERMEDIATES = ("tokens", "features")

  def __post_init__(self) -> None:
    check_heads("BERT", self.hidden, self.num_heads)
    super().__post_init__()

  def setup(self) -> None:
    # The word table lives in `setup` so that `embed` and `__call__` share it.
    self.word_embeddings = nn.Embed(self.vocab_size, self.hidden, embedding_init=_INIT)

  def embed(self, ids: Array) -> Array:
    """The word embeddings (B, T, hidden) of token ids (B, T): the input an explanation
    attributes to (position and token-type embeddings are added inside `__call__`)."""
    return self.word_embeddings(jnp.asarray(ids).astype(jnp.int32))

  @nn.compact
  def __call__(self, x: Array, train: bool = False, token_types: Array | None = None,
               mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    x = self.embed(x) if jnp.ndim(x) == 2 else jnp.asarray(x, jnp.float32)
    length = x.shape[1]
    if length > self.max_positions:
      raise ConfigError(f"The sequence length {length} exceeds BERT's max_positions "
                        f"({self.max_positions}).")
    if token_types is None:
      token_types = jnp.zeros(x.shape[:2], jnp.int32)
    x = x + nn.Embed(self.max_positions, self.hidden, embedding_init=_INIT,
                     name="position_embeddings")(jnp.arange(length))[None]
    x = x + nn.Embed(self.type_vocab_size, self.hidden, embedding_init=_INIT,
                     name="token_type_embeddings")(jnp.asarray(token_types).astype(jnp.int32))
    x = layer_norm(self.layer_norm_epsilon, "embedding_norm")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # `train` (argument 3, counting the module) is a Python bool: static under remat.
    layer = nn.remat(BertLayer, static_argnums=(3,)) if self.remat else BertLayer
    for i in range(self.depth):
      x = layer(self.num_heads, self.mlp, self.dropout_rate, self.layer_norm_epsilon,
                name=f"layer_{i}")(x, mask, train)
    pooled = jnp.tanh(nn.Dense(self.hidden, kernel_init=_INIT, name="pooler")(x[:, 0]))
    pooled = nn.Dropout(self.dropout_rate, deterministic=not train)(pooled)
    intermediates = {"tokens": x, "features": pooled}
    if self.num_classes is None:
      return pooled, intermediates
    return nn.Dense(self.num_classes, kernel_init=_INIT, name="classifier")(pooled), intermediates
