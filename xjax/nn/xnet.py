"""The XNet network: a backbone, an explainable layer of k ReLU neurons and the output layer.

David & Liu, "XNet: Towards training explainable neural networks" (2019), Sec. 3: ResNet-18 +
global average pooling gives features g; h = ReLU(g W_h + b_h) is the explainable layer (k = 3
in the paper); the logits are `(h D) W_o + b_o`, where the X-layer D is the identity in ordinary
use and drops one neuron for the drop loss (`xjax.methods.xnet`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from xjax.errors import ConfigError
from xjax.nn.registry import MODELS, get_model

Array = jax.Array


NORMS = ("none", "batch")


class XNetHead(nn.Module):
  """The explainable layer ("explainable", k ReLU neurons) and the output layer ("output").

  `norm="batch"` puts a BatchNorm ("explainable_bn") between the explainable layer's affine map
  and its ReLU. [A] The paper does not say; with only k = 3 ReLU units and a backbone trained from
  scratch, all three die within the first epoch without it (their pre-activations are nearly
  the same sign for every image, and one step can push them all negative: test accuracy stays at
  chance), while BatchNorm keeps every unit active on part of each batch.
  """

  num_neurons: int
  num_classes: int
  norm: str = "none"

  @nn.compact
  def __call__(self, features: Array, train: bool = False,
               keep: Array | None = None) -> tuple[Array, Array]:
    """(logits, hidden); `keep` (k,) is the X-layer's diagonal (None: the identity)."""
    if self.norm not in NORMS:
      raise ConfigError(f"Unknown XNet head norm {self.norm!r}; expected one of {NORMS}.")
    z = nn.Dense(self.num_neurons, name="explainable")(features)
    if self.norm == "batch":
      z = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="explainable_bn")(z)
    hidden = nn.relu(z)
    passed = hidden if keep is None else hidden * keep
    return nn.Dense(self.num_classes, name="output")(passed), hidden


@MODELS.register("xnet")
class XNet(nn.Module):
  """Any registered model without its classifier ("backbone") under an `XNetHead` ("head").

  Returns `(logits, intermediates)`: the backbone's intermediates ("features", "conv_maps", ...)
  plus "xnet_hidden", the explainable layer's activations h (B, k) that the drop loss reads.

  Attributes:
    backbone: a name of `xjax.nn.MODELS`, e.g. "resnet18" (the paper) or "cnn_cifar10"; its
      intermediates come first, so `INTERMEDIATES` names only the ones every XNet returns.
    backbone_options: the backbone's fields, as a dict or (name, value) pairs, e.g.
      {"stem": "cifar", "width": 16}; `num_classes` is always None (no classifier).
    num_neurons: k, the explainable layer's width (one neuron per category).
    num_classes: the task's classes (2 for CelebA's Young).
    head_norm: "batch" normalises the explainable layer's pre-activations (see `XNetHead`).
  """

  backbone: str = "resnet18"
  backbone_options: Any = ()
  num_neurons: int = 3
  num_classes: int = 2
  head_norm: str = "none"

  INTERMEDIATES = ("features", "xnet_hidden")

  @nn.compact
  def __call__(self, x: Array, train: bool = False,
               keep: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """`keep` (k,): the X-layer's diagonal, e.g. 1 - e_j to drop neuron j (None: keep all)."""
    options = dict(self.backbone_options)
    backbone = get_model(self.backbone, "backbone", **{**options, "num_classes": None})
    features, intermediates = backbone(x, train=train)
    logits, hidden = XNetHead(self.num_neurons, self.num_classes, self.head_norm,
                              name="head")(features, train, keep)
    return logits, {**intermediates, "xnet_hidden": hidden}
