"""The tour (`python -m runs.tour`): a small CNN trained on the built-in shapes, then explained.

Variants: the default (about two minutes on a 2-core CPU) and `smoke` (seconds, for tests).
"""

import ml_collections

from runs.configs.common import base_config, parse_variants


def get_config(variant: str = ""):
  _, modifiers = parse_variants(variant, "tour.py", ("",), ("smoke",))
  c = base_config()
  c.name = "tour"
  # 24 x 24 images: 2.5x faster to train than 32 x 32 on a 2-core CPU (61 s against 153 s).
  # 3072 images (2765 to train on): install and tour under three minutes together (57 + 108 s).
  c.data.options = dict(image_size=24, num_classes=4, num_examples=3072)
  c.data.batch_size, c.data.eval_batch_size = 64, 128
  c.model.name = "cnn_cifar10"  # Table 1 of Rieger 2018: 4 conv, 2 max-pool, 2 dense layers
  c.train.epochs = 4
  c.train.log_every_steps = 16
  c.train.checkpoint_every_steps = 64
  c.tour = ml_collections.ConfigDict(dict(
      methods=("saliency", "gradient_x_input", "smoothgrad", "integrated_gradients",
               "lrp:epsilon_plus", "lrp:dtd", "gradcam", "contrastive_excitation_backprop"),
      num_examples=16, batch_size=16))
  if "smoke" in modifiers:
    c.name = "tour_smoke"
    c.data.options = dict(image_size=16, num_classes=4, num_examples=512)
    c.data.batch_size, c.data.eval_batch_size = 32, 64
    c.train.epochs = 1
    c.tour.methods = ("saliency", "lrp:dtd", "gradcam")
    c.tour.num_examples, c.tour.batch_size = 4, 4
  return c
