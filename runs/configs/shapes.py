"""The built-in synthetic shapes data (no download) with the Table-1 CIFAR10 CNN.

Variants: the default (10000 images of 32x32, 10 epochs) and `smoke` (192 steps on 4096 images,
under a minute on a 2-core CPU, about 85% test accuracy).
"""

from runs.configs.common import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.name = "shapes"
  c.data.name = "shapes"
  c.data.options = dict(image_size=32, num_classes=4)
  c.model.name = "cnn_cifar10"
  c.train.epochs = 10
  if variant == "smoke":
    c.name = "shapes_smoke"
    c.data.options = dict(image_size=32, num_classes=4, num_examples=4096)
    c.data.batch_size = 64
    c.data.eval_batch_size = 128
    c.train.epochs = 3
    c.train.log_every_steps = 16
    c.train.checkpoint_every_steps = 32
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of shapes.py; known: '' (default), 'smoke'.")
  return c
