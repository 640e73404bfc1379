"""Models: Flax modules returning `(logits, intermediates)`, and a registry of them by name.

The contract: `model.apply(variables, x, train=False, rngs={"dropout": key})` on float32 NHWC
images returns `(logits, intermediates)`; `intermediates["features"]` is the input of the final
classification layer and, for conv nets, `intermediates["conv_maps"]` the last convolutional
activation before pooling/flatten. `num_classes=None` drops the classifier (`logits` = features).
Each model class names what it returns in `INTERMEDIATES`.

Generative models (`GENERATIVE = True`: the Gaussian RBM, the adversarial autoencoder) predict no
label: they ignore `num_classes`, their `logits` are no class scores (the RBM's unnormalised
log-density, the autoencoder's code), and `intermediates["example_loss"]` (B,) is the per-example
loss the eval step averages in place of the cross-entropy.

Each model class registers itself in `MODELS` (`xjax.nn.registry`) with `@MODELS.register(name)`
above its definition; `MODELS` imports the model modules at its first lookup, so it is complete
(and in the same order) however it is imported.
"""

from xjax.nn.aae import AdversarialAutoencoder
from xjax.nn.cnn import MLP, CNNCifar10, CNNFashion, CNNMnist, SumPoolCNN, sum_pool
from xjax.nn.rbm import GaussianRBM
from xjax.nn.registry import MODELS, count_params, get_model, init_variables, logits_fn
from xjax.nn.resnet import BasicBlock, ResNet18
from xjax.nn.vgg import VGG, VGG_CONFIGS
from xjax.nn.xnet import XNet

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "VGG_CONFIGS",
    "AdversarialAutoencoder",
    "BasicBlock",
    "CNNCifar10",
    "CNNFashion",
    "CNNMnist",
    "GaussianRBM",
    "ResNet18",
    "SumPoolCNN",
    "XNet",
    "count_params",
    "get_model",
    "init_variables",
    "logits_fn",
    "sum_pool",
]
