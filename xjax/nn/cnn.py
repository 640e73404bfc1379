"""Small convolutional networks and an MLP.

Every model follows the xjax model contract: `__call__(x, train=False)` takes float32 NHWC images
and returns `(logits, intermediates)`, where `intermediates["features"]` is the input of the final
classification layer (B, F) and, for conv nets, `intermediates["conv_maps"]` is the output of the
last convolution after its activation, before pooling/flatten (B, h, w, c). With
`num_classes=None` there is no classification layer and `logits` are the features.

Dropout uses the rng stream "dropout" and is active only when `train=True`. `features` is exactly
what enters the classifier, so in training it includes the dropout in front of the classifier.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax import ops
from xjax.errors import ConfigError
from xjax.nn.registry import MODELS
from xjax.ops import conv_general_dilated as _fast_conv

Array = jax.Array

# Keras' default initialisers (Rieger 2018 trained its Table-1 networks with Keras).
_KERAS_KERNEL_INIT = nn.initializers.glorot_uniform()


def sum_pool(x: Array, window: int = 2, scale: float = 1.0) -> Array:
  """Non-overlapping sum pooling of NHWC maps: `scale` times the sum over `window`x`window` cells.

  `scale=1` is a true sum (4 times the 2x2 average pool); the heatmapping.org tutorial's `Pooling`
  layer uses `scale=0.5`.
  """
  # A Python 0.0 as the initial value makes this `reduce_window_sum`, which has a gradient (the
  # generic `reduce_window` that an array initial value gives cannot be differentiated).
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1),
                                 (1, window, window, 1), "VALID")
  return summed * scale if scale != 1.0 else summed


def _classifier(x: Array, num_classes: int | None, intermediates: dict[str, Array],
                kernel_init: Any = nn.initializers.lecun_normal()
                ) -> tuple[Array, dict[str, Array]]:
  """Records `x` as the features and puts the final Dense layer ("classifier") on top of it."""
  intermediates["features"] = x
  if num_classes is None:
    return x, intermediates
  return nn.Dense(num_classes, kernel_init=kernel_init, name="classifier")(x), intermediates


def _flatten(x: Array) -> Array:
  return x.reshape((x.shape[0], -1))


def _table1_head(x: Array, units: int, num_classes: int | None, intermediates: dict[str, Array],
                 dropout_rate: float, dense_dropout_rate: float, train: bool):
  """The shared tail of the Table-1 CNNs: Dropout-Flatten-Dense(units)-ReLU-Dropout-classifier."""
  x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  x = nn.relu(nn.Dense(units, kernel_init=_KERAS_KERNEL_INIT, name="dense1")(_flatten(x)))
  x = nn.Dropout(dense_dropout_rate, deterministic=not train)(x)
  return _classifier(x, num_classes, intermediates, _KERAS_KERNEL_INIT)


@MODELS.register("cnn_cifar10")
class CNNCifar10(nn.Module):
  """The CIFAR10 network of Rieger 2018, Table 1: C32-C32-MaxP-C64-C64-MaxP-D512-D10.

  Table 1 of Rieger, "Separable explanations of neural network decisions" (2018) gives only the
  layer list (3x3 convolutions, "dropout was applied"). We use exactly the Keras `cifar10_cnn.py`
  example that list comes from:
  Conv32(SAME)-ReLU-Conv32(VALID)-ReLU-MaxPool2-Dropout(.25)-Conv64(SAME)-ReLU-Conv64(VALID)-ReLU-
  MaxPool2-Dropout(.25)-Flatten-Dense512-ReLU-Dropout(.5)-Dense(num_classes);
  1,250,858 parameters on 32x32x3 inputs. Kernels use Keras' glorot-uniform initialisation.

  `conv_maps` is the ReLU output of the last convolution (13x13x64 on 32x32 inputs), before the
  max pooling; `features` the 512 units entering the classifier.
  """

  num_classes: int | None = 10
  dropout_rate: float = 0.25  # after each pooling block
  dense_dropout_rate: float = 0.5  # before the classifier

  INTERMEDIATES = ("conv_maps", "features")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    # The VALID convolutions run "SAME"-padded and cropped on CPU, and the max pooling takes its
    # gradient by a mask (xjax.ops).
    conv = lambda c, pad, name: nn.Conv(c, (3, 3), padding=pad, kernel_init=_KERAS_KERNEL_INIT,
                                        conv_general_dilated=_fast_conv, name=name)
    x = nn.relu(conv(32, "SAME", "conv1")(x))
    x = nn.relu(conv(32, "VALID", "conv2")(x))
    x = ops.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(conv(64, "SAME", "conv3")(x))
    x = nn.relu(conv(64, "VALID", "conv4")(x))
    intermediates = {"conv_maps": x}
    x = ops.max_pool(x, (2, 2), strides=(2, 2))
    return _table1_head(x, 512, self.num_classes, intermediates, self.dropout_rate,
                        self.dense_dropout_rate, train)


@MODELS.register("cnn_fashion")
class CNNFashion(nn.Module):
  """The Fashion-MNIST network of Rieger 2018, Table 1: C32(3x3)-AvgP-D256-D10.

  Rieger, "Separable explanations of neural network decisions" (2018), Table 1 gives the layers
  and says dropout was used; the rest is our choice ([A], docs/assumptions.md), following the Keras
  CIFAR10 example of the same table: 'SAME' padding, ReLU, 2x2 average pooling,
  Dropout(`dropout_rate`=.25) after the pooling block and Dropout(`dense_dropout_rate`=.5) before
  the classifier:
  Conv32(SAME)-ReLU-AvgPool2-Dropout(.25)-Flatten-Dense256-ReLU-Dropout(.5)-Dense(num_classes).
  """

  num_classes: int | None = 10
  dropout_rate: float = 0.25
  dense_dropout_rate: float = 0.5

  INTERMEDIATES = ("conv_maps", "features")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    x = nn.relu(nn.Conv(32, (3, 3), padding="SAME", kernel_init=_KERAS_KERNEL_INIT,
                        name="conv1")(x))
    intermediates = {"conv_maps": x}
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return _table1_head(x, 256, self.num_classes, intermediates, self.dropout_rate,
                        self.dense_dropout_rate, train)


@MODELS.register("cnn_mnist")
class CNNMnist(nn.Module):
  """The MNIST network of Rieger 2018, Table 1: C32(3x3)-AvgP-C64(2x2)-AvgP-D512-D10.

  Rieger, "Separable explanations of neural network decisions" (2018), Table 1 gives the layers
  and says dropout was used; the rest is our choice ([A], docs/assumptions.md): 'SAME' padding for
  both convolutions (the 2x2 one pads one row/column at the bottom/right, as `lax` 'SAME' does),
  ReLU, 2x2 average pooling, Dropout(`dropout_rate`=.25) after each pooling block and
  Dropout(`dense_dropout_rate`=.5) before the classifier:
  Conv32(3x3)-ReLU-AvgPool2-Dropout(.25)-Conv64(2x2)-ReLU-AvgPool2-Dropout(.25)-Flatten-Dense512-
  ReLU-Dropout(.5)-Dense(num_classes).
  """

  num_classes: int | None = 10
  dropout_rate: float = 0.25
  dense_dropout_rate: float = 0.5

  INTERMEDIATES = ("conv_maps", "features")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    x = nn.relu(nn.Conv(32, (3, 3), padding="SAME", kernel_init=_KERAS_KERNEL_INIT,
                        name="conv1")(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.relu(nn.Conv(64, (2, 2), padding="SAME", kernel_init=_KERAS_KERNEL_INIT,
                        name="conv2")(x))
    intermediates = {"conv_maps": x}
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return _table1_head(x, 512, self.num_classes, intermediates, self.dropout_rate,
                        self.dense_dropout_rate, train)


@MODELS.register("sumpool_cnn")
class SumPoolCNN(nn.Module):
  """The sum-pooling CNN of the heatmapping.org LRP tutorial (Montavon, Samek & Müller 2018).

  Montavon et al., "Methods for interpreting and understanding deep neural networks" (DSP 2018)
  recommend sum pooling and few dense layers; their tutorial CNN takes MNIST scaled to [-1, 1] and
  padded to 32x32x1 with -1:
  Conv5x5x10(VALID)-ReLU-SumPool2-Conv5x5x25-ReLU-SumPool2-Conv4x4x100-ReLU-SumPool2-
  Conv1x1x(num_classes), flattened to (B, num_classes) logits. All convolutions are 'VALID' with
  bias (later code may constrain the biases to be <= 0).

  Sum pooling is `pool_scale` times the sum over each 2x2 cell. The default `pool_scale=1.0` is a
  true sum (4 x average pooling); the tutorial's `Pooling` layer computes 0.5 x the sum, so use
  `pool_scale=0.5` to run the tutorial's weights with the tutorial's activations (LRP's
  proportional pooling rule does not depend on the scale).

  `conv_maps` is the ReLU output of the 4x4 convolution (B, 2, 2, 100); `features` is the pooled
  (B, 100) vector that enters the final 1x1 convolution ("classifier").
  """

  num_classes: int | None = 10
  pool_scale: float = 1.0

  INTERMEDIATES = ("conv_maps", "features")

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    del train  # no dropout or batch norm
    x = jnp.asarray(x, jnp.float32)
    if x.shape[1:3] != (32, 32):
      raise ConfigError(f"SumPoolCNN expects 32x32 inputs (MNIST padded to 32x32), got "
                        f"{x.shape[1:3]}.")
    # The 5x5 convolutions run "SAME"-padded and cropped on CPU (xjax.ops).
    x = nn.relu(nn.Conv(10, (5, 5), padding="VALID", conv_general_dilated=_fast_conv,
                        name="conv1")(x))
    x = sum_pool(x, 2, self.pool_scale)
    x = nn.relu(nn.Conv(25, (5, 5), padding="VALID", conv_general_dilated=_fast_conv,
                        name="conv2")(x))
    x = sum_pool(x, 2, self.pool_scale)
    x = nn.relu(nn.Conv(100, (4, 4), padding="VALID", name="conv3")(x))
    intermediates = {"conv_maps": x}
    x = sum_pool(x, 2, self.pool_scale)  # (B, 1, 1, 100)
    intermediates["features"] = _flatten(x)
    if self.num_classes is None:
      return intermediates["features"], intermediates
    logits = nn.Conv(self.num_classes, (1, 1), padding="VALID", name="classifier")(x)
    return _flatten(logits), intermediates


@MODELS.register("mlp")
class MLP(nn.Module):
  """A multi-layer perceptron on flattened inputs: [Dense-ReLU-Dropout] x len(hidden) - Dense.

  The fully connected baseline of the seed papers (e.g. the tutorial MLP of Montavon et al. 2018);
  dense layers are named "dense1", "dense2", ... and "classifier".
  """

  hidden: tuple[int, ...] = (256, 256)
  num_classes: int | None = 10
  dropout_rate: float = 0.0

  INTERMEDIATES = ("features",)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = _flatten(jnp.asarray(x, jnp.float32))
    for i, units in enumerate(self.hidden):
      x = nn.relu(nn.Dense(units, name=f"dense{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return _classifier(x, self.num_classes, {})
