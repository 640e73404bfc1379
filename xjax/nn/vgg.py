"""VGG-style networks for small images (Simonyan & Zisserman 2015)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax import ops
from xjax.errors import ConfigError
from xjax.nn.registry import MODELS

Array = jax.Array

# Channels of the 3x3 convolutions, "M" = 2x2 max pooling (Simonyan & Zisserman 2015, Table 1).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
              "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
              512, 512, 512, "M"),
}


def resolve_config(config: str | tuple[int | str, ...]) -> tuple[int | str, ...]:
  """The layer list of a named VGG config, or `config` itself after checking it."""
  if isinstance(config, str):
    if config not in VGG_CONFIGS:
      raise ConfigError(f"Unknown VGG config {config!r}; expected one of {tuple(VGG_CONFIGS)} or a "
                        "tuple of channel counts and 'M'.")
    return VGG_CONFIGS[config]
  layers = tuple(config)
  if not any(isinstance(v, int) for v in layers) or not all(
      v == "M" or (isinstance(v, int) and v > 0) for v in layers):
    raise ConfigError(f"Invalid VGG config {config!r}: expected positive channel counts and 'M' "
                      "(max pooling), with at least one convolution.")
  return layers


def adaptive_avg_pool(x: Array, size: int) -> Array:
  """PyTorch's `AdaptiveAvgPool2d((size, size))` on NHWC maps: output cell i of an axis of length
  n averages the input cells floor(i n / size) .. ceil((i + 1) n / size) - 1 (bins overlap when n
  is not a multiple of `size`; an input smaller than `size` is repeated).

  The two axes are pooled one after the other: a mean over a rectangle is the mean over its rows
  of the means over its columns.
  """
  def pool_axis(x: Array, axis: int) -> Array:
    n = x.shape[axis]
    if n == size:
      return x
    if n % size == 0:  # equal, disjoint bins: one reshape and one mean
      shape = (*x.shape[:axis], size, n // size, *x.shape[axis + 1:])
      return jnp.mean(x.reshape(shape), axis=axis + 1)
    cells = [jnp.mean(jax.lax.slice_in_dim(x, (i * n) // size, -(-(i + 1) * n // size), axis=axis),
                      axis=axis, keepdims=True) for i in range(size)]
    return jnp.concatenate(cells, axis=axis)

  return pool_axis(pool_axis(x, 1), 2)


@MODELS.register("vgg")
class VGG(nn.Module):
  """VGG of Simonyan & Zisserman, "Very deep convolutional networks..." (ICLR 2015), small images.

  3x3 'SAME' convolutions (with bias) + ReLU, optionally batch norm before the ReLU
  (`batch_norm=True`; momentum 0.9, epsilon 1e-5), 2x2 max pooling at each "M" of `config`; then
  flatten, `dense` hidden layers with ReLU + dropout, and a Dense classifier. On 32x32 inputs the
  five pools of the named configs leave a 1x1x512 map, so the flatten is 512 wide.

  `pool_size` adds torchvision's adaptive average pooling to `pool_size` x `pool_size` before the
  flatten, whatever the image size; torchvision's `vgg16` is
  `VGG("vgg16", dense=(4096, 4096), pool_size=7, num_classes=1000)` (25088-wide flatten,
  138,357,544 parameters). The flatten is in NHWC order (PyTorch's is NCHW:
  `xjax.nn.torch_import` permutes the first dense kernel).

  Names: "conv1", "conv2", ... (and "bn1", ...), "dense1", ..., "classifier". Intermediates:
  "conv_maps" (ReLU output of the last convolution, before the trailing pooling) and "features"
  (the input of the classifier, after the last dropout).
  """

  config: str | tuple = "vgg11"
  num_classes: int | None = 10
  batch_norm: bool = False
  dense: tuple[int, ...] = (512, 512)
  dropout_rate: float = 0.5
  pool_size: int | None = None

  INTERMEDIATES = ("conv_maps", "features")

  def __post_init__(self) -> None:
    resolve_config(self.config)
    if self.pool_size is not None and self.pool_size < 1:
      raise ConfigError(f"VGG pool_size must be a positive int or None, got {self.pool_size!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    intermediates = {}
    num_convs = 0
    for v in resolve_config(self.config):
      if v == "M":
        x = ops.max_pool(x, (2, 2), strides=(2, 2))  # a mask gradient on CPU
        continue
      num_convs += 1
      x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{num_convs}")(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         name=f"bn{num_convs}")(x)
      x = nn.relu(x)
      intermediates["conv_maps"] = x
    if self.pool_size is not None:
      x = adaptive_avg_pool(x, self.pool_size)
    x = x.reshape((x.shape[0], -1))
    for i, units in enumerate(self.dense):
      x = nn.relu(nn.Dense(units, name=f"dense{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    intermediates["features"] = x
    if self.num_classes is None:
      return x, intermediates
    return nn.Dense(self.num_classes, name="classifier")(x), intermediates
