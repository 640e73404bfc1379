"""PyTorch twins of xjax models, and copying Flax weights into them.

The benchmarks compare xjax with PyTorch (train-step throughput; LRP heatmaps against zennit) on
the same weights: build a twin with `make_torch_model(name, **fields)` and fill it with
`flax_to_torch(name, variables, torch_model)`. torch is imported only here; xjax never needs it.

Conventions of the twins:
  * Inputs are NCHW (`x_nhwc.permute(0, 3, 1, 2)`); the forward returns the logits only.
  * Flatten order: before flattening, the twins permute their (N, C, H, W) maps to (N, H, W, C),
    so they flatten in Flax's NHWC order and dense kernels copy with a plain transpose (no row
    permutation of the first dense layer).
  * Submodules carry the Flax module names ("conv1", "layer2_0.proj_bn", "classifier", ...), so
    the copy is by name: conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in), batch
    norm scale/bias -> weight/bias and batch_stats mean/var -> running_mean/running_var.
  * Paddings equal the Flax ones: 'SAME' 3x3 -> padding 1; the 2x2 'SAME' conv of CNNMnist pads
    one row/column at the bottom/right (`F.pad`); ResNet paddings are explicit in both.
  * Batch norm uses PyTorch's defaults (momentum 0.1, eps 1e-5), i.e. Flax momentum 0.9. In
    training PyTorch updates `running_var` with the unbiased batch variance, Flax with the biased
    one; eval-mode outputs are identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xjax.errors import ConfigError


def _flatten_nhwc(x: torch.Tensor) -> torch.Tensor:
  return x.permute(0, 2, 3, 1).flatten(1)


class CNNCifar10Torch(nn.Module):
  """Twin of `xjax.nn.CNNCifar10` (Keras cifar10_cnn layout)."""

  def __init__(self, num_classes: int = 10, dropout_rate: float = 0.25,
               dense_dropout_rate: float = 0.5, image_size: int = 32, in_channels: int = 3):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
    self.conv2 = nn.Conv2d(32, 32, 3)
    self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
    self.conv4 = nn.Conv2d(64, 64, 3)
    side = ((image_size - 2) // 2 - 2) // 2
    self.dense1 = nn.Linear(side * side * 64, 512)
    self.classifier = nn.Linear(512, num_classes)
    self.drop_conv = nn.Dropout(dropout_rate)
    self.drop_dense = nn.Dropout(dense_dropout_rate)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.conv2(F.relu(self.conv1(x))))
    x = self.drop_conv(F.max_pool2d(x, 2))
    x = F.relu(self.conv4(F.relu(self.conv3(x))))
    x = self.drop_conv(F.max_pool2d(x, 2))
    x = self.drop_dense(F.relu(self.dense1(_flatten_nhwc(x))))
    return self.classifier(x)


class CNNFashionTorch(nn.Module):
  """Twin of `xjax.nn.CNNFashion`."""

  def __init__(self, num_classes: int = 10, dropout_rate: float = 0.25,
               dense_dropout_rate: float = 0.5, image_size: int = 28, in_channels: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
    side = image_size // 2
    self.dense1 = nn.Linear(side * side * 32, 256)
    self.classifier = nn.Linear(256, num_classes)
    self.drop_conv = nn.Dropout(dropout_rate)
    self.drop_dense = nn.Dropout(dense_dropout_rate)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.drop_conv(F.avg_pool2d(F.relu(self.conv1(x)), 2))
    x = self.drop_dense(F.relu(self.dense1(_flatten_nhwc(x))))
    return self.classifier(x)


class CNNMnistTorch(nn.Module):
  """Twin of `xjax.nn.CNNMnist`."""

  def __init__(self, num_classes: int = 10, dropout_rate: float = 0.25,
               dense_dropout_rate: float = 0.5, image_size: int = 28, in_channels: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
    self.conv2 = nn.Conv2d(32, 64, 2)
    side = image_size // 2 // 2
    self.dense1 = nn.Linear(side * side * 64, 512)
    self.classifier = nn.Linear(512, num_classes)
    self.drop_conv = nn.Dropout(dropout_rate)
    self.drop_dense = nn.Dropout(dense_dropout_rate)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.drop_conv(F.avg_pool2d(F.relu(self.conv1(x)), 2))
    x = F.relu(self.conv2(F.pad(x, (0, 1, 0, 1))))  # lax 'SAME' for an even kernel
    x = self.drop_conv(F.avg_pool2d(x, 2))
    x = self.drop_dense(F.relu(self.dense1(_flatten_nhwc(x))))
    return self.classifier(x)


class SumPoolCNNTorch(nn.Module):
  """Twin of `xjax.nn.SumPoolCNN` (sum pooling = `pool_scale` x 4 x average pooling)."""

  def __init__(self, num_classes: int = 10, pool_scale: float = 1.0, in_channels: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 10, 5)
    self.conv2 = nn.Conv2d(10, 25, 5)
    self.conv3 = nn.Conv2d(25, 100, 4)
    self.classifier = nn.Conv2d(100, num_classes, 1)
    self.pool_factor = 4.0 * pool_scale

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv in (self.conv1, self.conv2, self.conv3):
      x = F.avg_pool2d(F.relu(conv(x)), 2) * self.pool_factor
    return self.classifier(x).flatten(1)


class BasicBlockTorch(nn.Module):
  """Twin of `xjax.nn.BasicBlock`."""

  def __init__(self, in_features: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.has_proj = stride != 1 or in_features != features
    if self.has_proj:
      self.proj_conv = nn.Conv2d(in_features, features, 1, stride, bias=False)
      self.proj_bn = nn.BatchNorm2d(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.has_proj:
      x = self.proj_bn(self.proj_conv(x))
    return F.relu(y + x)


class ResNet18Torch(nn.Module):
  """Twin of `xjax.nn.ResNet18` (torchvision resnet18 layout, Flax names)."""

  def __init__(self, num_classes: int = 1000, stem: str = "imagenet", width: int = 64,
               in_channels: int = 3):
    super().__init__()
    if stem == "imagenet":
      self.stem_conv = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    elif stem == "cifar":
      self.stem_conv = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    else:
      raise ConfigError(f"Unknown ResNet18 stem {stem!r}; expected 'imagenet' or 'cifar'.")
    self.stem = stem
    self.stem_bn = nn.BatchNorm2d(width)
    blocks, in_features = [], width
    for stage in range(4):
      features = width * 2**stage
      for block in range(2):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f"layer{stage + 1}_{block}"
        self.add_module(name, BasicBlockTorch(in_features, features, stride))
        blocks.append(name)
        in_features = features
    self.block_names = blocks
    self.classifier = nn.Linear(in_features, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem_conv(x)))
    if self.stem == "imagenet":
      x = F.max_pool2d(x, 3, 2, 1)
    for name in self.block_names:
      x = getattr(self, name)(x)
    return self.classifier(x.mean(dim=(2, 3)))


TWINS: dict[str, type[nn.Module]] = {
    "cnn_cifar10": CNNCifar10Torch,
    "cnn_fashion": CNNFashionTorch,
    "cnn_mnist": CNNMnistTorch,
    "sumpool_cnn": SumPoolCNNTorch,
    "resnet18": ResNet18Torch,
}


def make_torch_model(name: str, **kwargs: Any) -> nn.Module:
  """The PyTorch twin of the xjax model registered as `name`, with the same field values."""
  if name not in TWINS:
    raise ConfigError(f"No PyTorch twin for model {name!r}; twins exist for {sorted(TWINS)}.")
  return TWINS[name](**kwargs)


def _to_torch(value: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


def _walk(tree: dict, prefix: tuple[str, ...] = ()):
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, "items"):
      yield from _walk(value, prefix + (key,))
    else:
      yield prefix, key, value


def flax_to_torch(name: str, variables: dict, torch_model: nn.Module) -> nn.Module:
  """Copies Flax `variables` ({"params", maybe "batch_stats"}) into `torch_model`, in place.

  Every parameter and running statistic of the twin must be written exactly once, with matching
  shapes; otherwise a ValueError names what does not fit. Returns `torch_model`.
  """
  if name not in TWINS:
    raise ConfigError(f"No PyTorch twin for model {name!r}; twins exist for {sorted(TWINS)}.")
  if not isinstance(torch_model, TWINS[name]):
    raise ValueError(f"Model {name!r} needs a {TWINS[name].__name__}, got "
                     f"{type(torch_model).__name__}.")
  targets = dict(torch_model.named_parameters())
  targets.update((k, v) for k, v in torch_model.named_buffers() if "num_batches" not in k)
  written = set()
  renames = {"params": {"kernel": "weight", "bias": "bias", "scale": "weight"},
             "batch_stats": {"mean": "running_mean", "var": "running_var"}}
  with torch.no_grad():
    for collection, rename in renames.items():
      for path, leaf, value in _walk(variables.get(collection, {})):
        key = ".".join(path + (rename[leaf],))
        if key not in targets:
          raise ValueError(f"Flax variable {collection}/{'/'.join(path)}/{leaf} has no "
                           f"counterpart {key!r} in {type(torch_model).__name__}.")
        tensor = _to_torch(value)
        if leaf == "kernel":
          tensor = tensor.permute(3, 2, 0, 1) if tensor.ndim == 4 else tensor.T
        if tuple(tensor.shape) != tuple(targets[key].shape):
          raise ValueError(f"Shape mismatch for {key!r}: Flax gives {tuple(tensor.shape)}, "
                           f"torch has {tuple(targets[key].shape)}.")
        targets[key].copy_(tensor)
        written.add(key)
  missing = sorted(set(targets) - written)
  if missing:
    raise ValueError(f"Flax variables leave these torch tensors unset: {missing}.")
  return torch_model
