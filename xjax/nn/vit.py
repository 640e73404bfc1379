"""The Vision Transformer (ViT) of Dosovitskiy et al., "An image is worth 16x16 words:
transformers for image recognition at scale" (ICLR 2021), in torchvision's layout.

Parameter names and order of operations follow torchvision's `VisionTransformer`, so that its
weights map one to one (`xjax.nn.torch_import`).
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.nn.attention import MultiHeadAttention, check_heads
from xjax.nn.norms import layer_norm
from xjax.nn.registry import MODELS

Array = jax.Array

# torchvision: xavier-uniform Linear weights, truncated-normal patch embedding, N(0, 0.02)
# position embeddings, zero class token and zero head.
_DENSE_INIT = nn.initializers.xavier_uniform()


class EncoderBlock(nn.Module):
  """A pre-norm encoder block (ViT paper, Eq. 2-3):
  x + MSA(LN(x)), then x + MLP(LN(x)) with an erf GELU between the MLP's two layers.

  Names: "norm1", "attention" (`MultiHeadAttention`), "norm2", "mlp_in", "mlp_out".
  """

  num_heads: int
  mlp: int
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    dropout = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = layer_norm(self.layer_norm_epsilon, "norm1")(x)
    y = MultiHeadAttention(self.num_heads, kernel_init=_DENSE_INIT, name="attention")(
        y, train=train)
    x = x + dropout(y)
    y = layer_norm(self.layer_norm_epsilon, "norm2")(x)
    y = nn.Dense(self.mlp, kernel_init=_DENSE_INIT, name="mlp_in")(y)
    # torch's nn.GELU is the erf form; jax.nn.gelu defaults to the tanh approximation.
    y = dropout(jax.nn.gelu(y, approximate=False))
    y = nn.Dense(x.shape[-1], kernel_init=_DENSE_INIT, name="mlp_out")(y)
    return x + dropout(y)


@MODELS.register("vit")
class ViT(nn.Module):
  """Vision Transformer (Dosovitskiy et al. 2021, Eq. 1-4) for NHWC images.

  Patches of `patch_size` x `patch_size` are embedded by a strided convolution
  ("patch_embedding"), a learned class token ("class_token", (1, 1, hidden)) is prepended and
  learned position embeddings ("position_embedding", (1, patches + 1, hidden), sized from the
  image at `init`) added; `depth` pre-norm blocks ("layer_0", ...), a final LayerNorm ("norm") and
  a Dense classifier on the class token ("head").

  Intermediates: "tokens" (B, patches + 1, hidden), the output of the final norm, and "features"
  (B, hidden), its class token (the input of the head). Attention maps: sown per block as
  `intermediates/layer_<i>/attention/attention`.

  Attributes:
    patch_size: the side of a square patch (the image sides must be multiples of it).
    hidden: the token width.
    depth: the number of encoder blocks.
    num_heads: attention heads per block.
    mlp: the hidden width of the blocks' MLPs.
    num_classes: classes of the head; None: no head (`logits` = features).
    dropout_rate: dropout after the embeddings, inside each block and after each sublayer.
    layer_norm_epsilon: every LayerNorm's epsilon (torchvision: 1e-6).
    remat: recompute each block in the backward pass (`nn.remat`): less memory, same numbers.
  """

  patch_size: int = 4
  hidden: int = 64
  depth: int = 4
  num_heads: int = 4
  mlp: int = 128
  num_classes: int | None = 10
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  remat: bool = False

  INTERMEDIATES = ("tokens", "features")

  def __post_init__(self) -> None:
    check_heads("ViT", self.hidden, self.num_heads)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    height, width = x.shape[1:3]
    p = self.patch_size
    if height % p or width % p:
      raise ConfigError(f"The image size {height}x{width} is not a multiple of the ViT patch "
                        f"size {p}.")
    fan_in = p * p * x.shape[-1]
    x = nn.Conv(self.hidden, (p, p), strides=(p, p), padding="VALID",
                kernel_init=nn.initializers.truncated_normal((1.0 / fan_in) ** 0.5),
                name="patch_embedding")(x)
    x = x.reshape(x.shape[0], -1, self.hidden)  # (B, h*w, D), row-major as torchvision's
    token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden))
    x = jnp.concatenate([jnp.broadcast_to(token, (x.shape[0], 1, self.hidden)), x], axis=1)
    try:
      positions = self.param("position_embedding", nn.initializers.normal(0.02),
                             (1, x.shape[1], self.hidden))
    except flax.errors.ScopeParamShapeError as e:
      raise ConfigError(f"This ViT was initialised for another image size: {height}x{width} "
                        f"images give {x.shape[1] - 1} patches ({e.__class__.__name__}).") from e
    x = x + positions
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # `train` (argument 2, counting the module) is a Python bool: static under remat.
    block = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp, self.dropout_rate, self.layer_norm_epsilon,
                name=f"layer_{i}")(x, train)
    x = layer_norm(self.layer_norm_epsilon, "norm")(x)
    intermediates = {"tokens": x, "features": x[:, 0]}
    if self.num_classes is None:
      return x[:, 0], intermediates
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")
    return head(x[:, 0]), intermediates
