"""ResNet-18 (He et al. 2016) with an ImageNet or a CIFAR stem, and the bottleneck ResNets
(ResNet-50: `get_model("resnet18", **RESNET50)`).

Layout and parameter names mirror torchvision's `resnet18` so weights map one to one (see
`benchmarks/torch_models.py`): paddings are explicit (7x7/2 conv pads 3, 3x3 convs pad 1, 3x3/2
max pool pads 1 with -inf), not 'SAME', which would pad stride-2 layers asymmetrically.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xjax.errors import ConfigError
from xjax.nn.registry import MODELS
from xjax.ops import conv_general_dilated as _fast_conv

Array = jax.Array

STEMS = ("imagenet", "cifar")
STAGE_SIZES = (2, 2, 2, 2)  # BasicBlocks per stage (ResNet-18)
# torchvision's resnet50: Bottleneck blocks (3, 4, 6, 3) per stage.
RESNET50 = {"stage_sizes": (3, 4, 6, 3), "bottleneck": True}

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every convolution.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  # PyTorch's defaults: running = 0.9 running + 0.1 batch, eps 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  pad = kernel // 2
  # On CPU the 1x1 projections take their gradients as matrix products, and the CIFAR stem's 3x3
  # convolution of the RGB image is differentiated through its patches (xjax.ops).
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_CONV_INIT,
                 conv_general_dilated=_fast_conv, name=name)


class BasicBlock(nn.Module):
  """The two-convolution residual block of He et al. 2016 (Fig. 2), with a projection shortcut.

  out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is the identity, or a
  1x1 strided convolution + batch norm ("proj_conv", "proj_bn") when the shape changes.
  """

  features: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = _conv(self.features, 3, self.stride, "conv1")(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    y = _conv(self.features, 3, 1, "conv2")(y)
    y = _batch_norm(train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, "proj_conv")(x)
      x = _batch_norm(train, "proj_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """The three-convolution residual block of He et al. 2016 (Fig. 5, right), as torchvision's
  `Bottleneck` (the stride on the 3x3 convolution, "ResNet v1.5").

  out = relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)): 1x1 to
  `features`, 3x3 (stride), 1x1 to 4 * `features`; the shortcut is the identity, or a 1x1
  strided convolution + batch norm ("proj_conv", "proj_bn") when the shape changes.
  """

  features: int = 64
  stride: int = 1

  EXPANSION = 4

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    out_features = self.features * self.EXPANSION
    y = _conv(self.features, 1, 1, "conv1")(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    y = _conv(self.features, 3, self.stride, "conv2")(y)
    y = nn.relu(_batch_norm(train, "bn2")(y))
    y = _conv(out_features, 1, 1, "conv3")(y)
    y = _batch_norm(train, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_features:
      x = _conv(out_features, 1, self.stride, "proj_conv")(x)
      x = _batch_norm(train, "proj_bn")(x)
    return nn.relu(y + x)


@MODELS.register("resnet18")
class ResNet18(nn.Module):
  """ResNet-18 of He et al., "Deep residual learning for image recognition" (CVPR 2016).

  Four stages of two BasicBlocks with `width * (1, 2, 4, 8)` channels (strides 1, 2, 2, 2),
  global average pooling and a Dense classifier. Convolutions have no bias; batch norm follows
  every convolution (momentum 0.9, epsilon 1e-5, collection "batch_stats").

  Stems: "imagenet" = 7x7/2 conv + BN + ReLU + 3x3/2 max pool (padding 1), as torchvision's
  `resnet18` (11,689,512 parameters with 1000 classes); "cifar" = 3x3/1 conv + BN + ReLU, no max
  pool, for 32x32 images (11,173,962 parameters with 10 classes).

  Intermediates: "block1".."block4" (stage outputs), "conv_maps" (= "block4", after its ReLU) and
  "features" (B, 8 * width), the globally averaged "block4".

  Deeper ResNets (He et al. 2016, Table 1): `stage_sizes` blocks per stage, `bottleneck=True` for
  `Bottleneck` blocks (4x wider outputs: "features" (B, 32 * width)). torchvision's `resnet50` is
  `stage_sizes=(3, 4, 6, 3), bottleneck=True` (`RESNET50`; 25,557,032 parameters with 1000
  classes).
  """

  num_classes: int | None = 1000
  stem: str = "imagenet"
  width: int = 64
  stage_sizes: tuple[int, ...] = STAGE_SIZES
  bottleneck: bool = False

  INTERMEDIATES = ("block1", "block2", "block3", "block4", "conv_maps", "features")

  def __post_init__(self) -> None:
    if self.stem not in STEMS:
      raise ConfigError(f"Unknown ResNet18 stem {self.stem!r}; expected one of {STEMS}.")
    if self.width < 1:
      raise ConfigError(f"ResNet18 width must be a positive int, got {self.width!r}.")
    if len(self.stage_sizes) != 4 or not all(isinstance(n, int) and n > 0
                                             for n in self.stage_sizes):
      raise ConfigError(f"ResNet stage_sizes must be four positive ints, got "
                        f"{self.stage_sizes!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
    x = jnp.asarray(x, jnp.float32)
    if self.stem == "imagenet":
      x = _conv(self.width, 7, 2, "stem_conv")(x)
      x = nn.relu(_batch_norm(train, "stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(self.width, 3, 1, "stem_conv")(x)
      x = nn.relu(_batch_norm(train, "stem_bn")(x))
    intermediates = {}
    block_cls = Bottleneck if self.bottleneck else BasicBlock
    for stage, num_blocks in enumerate(self.stage_sizes):
      features = self.width * 2**stage
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = block_cls(features, stride, name=f"layer{stage + 1}_{block}")(x, train)
      intermediates[f"block{stage + 1}"] = x
    intermediates["conv_maps"] = x
    x = jnp.mean(x, axis=(1, 2))
    intermediates["features"] = x
    if self.num_classes is None:
      return x, intermediates
    return nn.Dense(self.num_classes, name="classifier")(x), intermediates
