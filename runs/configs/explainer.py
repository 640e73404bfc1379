"""Explainer networks (Zhang, Yang & Wu, AAAI 2019): `python -m runs.explainer
--config=runs/configs/explainer.py[:VARIANT] --workdir=W` trains (or reuses) the performer, then
the explainer on the frozen performer, and measures location instability.

The performer is a small VGG (3x3 convolutions, max pooling, two dense layers with ReLU and
dropout, like the paper's VGG performers). The explainer reads its last convolution
(`conv_maps`), reconstructs its two dense layers, and has as many interpretable filters as that
layer has channels.

[A] The paper gives neither the weights of Eq. 1 nor the explainer's training settings:
reconstruction weights 1 and 1 (each a relative squared error), eta = 1 on -log p, lambda_f = 1
on every filter's loss, Adam 1e-3, the epochs below; the mask of the public code (centroid,
learnable beta) and the paper's filter loss (minus mutual information) by default
(`explainer.mask`, `explainer.form`). Location instability over each filter's top 100 test
images (the public code's count), from up to `num_images` test images.

Variants (`--config=runs/configs/explainer.py:VARIANT[,smoke]`):
  shapes     (default) built-in shapes, 4 classes, 32x32: their 5 part keypoints (centre and the
             four extremes). No download.
  cub_local  the CUB-200-2011 folder layout under $XJAX_DATA_DIR (caltech_birds2011/CUB_200_2011;
             the offline subset: 15 classes, images at 1/4 scale), 64x64 object crops from the
             boxes, the parts of the paper's CUB evaluation (back, forehead, tail).
  cub        the full CUB-200-2011 in the same folder layout (the extracted CUB_200_2011.tgz), the
             same parts. (TFDS's caltech_birds2011 has no part locations.)
  smoke      (a modifier) tiny, on the chosen dataset: one epoch each, a small VGG; shapes at
             16x16 (256 images, 3 classes), CUB's crops at 32x32. For tests.
"""

import ml_collections

from runs.configs.common import base_config, cub_crops, parse_variants, smoke_network

VARIANTS = ("shapes", "cub_local", "cub")
# Table 3 of the paper (CUB, VGG-16) and Table 4 (p, VGG-16 on CUB).
PAPER = {"location_instability_performer": 0.1373, "location_instability_explainer": 0.0490,
         "p": 0.9579}
CUB_PARTS = (0, 5, 13)  # back, forehead, tail: part ids 1, 6 and 14 of CUB's parts.txt


def get_config(variant: str = "shapes"):
  dataset, modifiers = parse_variants(variant, "explainer.py", VARIANTS, ("smoke",))
  c = base_config()
  c.name = f"explainer_{dataset}"
  c.model = ml_collections.ConfigDict(dict(name="vgg", config=(16, 32, "M", 64, "M"),
                                           dense=(128, 128), dropout_rate=0.5))
  c.data.batch_size = 64
  c.train.epochs = 6
  c.train.log_every_steps = 50
  c.explainer = ml_collections.ConfigDict(dict(
      layer="conv_maps", reconstruct=("dense1", "dense2"), head="classifier",
      num_filters=ml_collections.FieldReference(None, field_type=int),
      mask="centroid", form="paper",
      reconstruction_weights=(1.0, 1.0), eta=1.0, filter_weight=1.0,
      epochs=6, learning_rate=1e-3,
      parts=ml_collections.FieldReference(None, field_type=tuple),  # None: every part
      top_n=100, num_images=1000, figure_filters=4, figure_images=4,
      performer_workdir=ml_collections.FieldReference(None, field_type=str),
      paper=PAPER))
  if dataset == "shapes":
    c.data.options = dict(image_size=32, num_classes=4, num_examples=6000)
  else:
    cub_crops(c, dataset)
    c.model.config = (32, "M", 64, "M", 128, "M")
    c.model.dense = (256, 256)
    c.explainer.epochs = 30
    c.explainer.parts = CUB_PARTS
  if "smoke" in modifiers:
    smoke_network(c, dataset, (8, "M", 16))
    c.explainer.update(dict(epochs=1, top_n=8, num_images=32, figure_filters=2,
                            figure_images=2))
  return c
