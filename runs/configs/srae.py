"""SRAE x-features of a frozen network (Qi & Li, "Embedding deep networks into visual
explanations"): `python -m runs.srae --config=runs/configs/srae.py[:VARIANT] --workdir=W`.

The network is a small VGG (3x3 convolutions, max pooling, two dense layers with ReLU and
dropout, like the paper's VGG19 with fc6 and fc7), trained here; Z is its first dense layer after
the ReLU (the paper's fc6), y-hat each chosen class's logit. One SRAE module per class, one
against all, on every train image (`xjax.experiments.srae`).

[A] The paper gives neither the encoder's width, beta, q, the optimiser nor the schedule: k = 5
x-features (the paper's), hidden width 64 (half of Z's 128), beta = 1, q = 10 (MSE_k of a Z
dimension that is not reconstructed is its variance, about 0.5 to 2 here, so q MSE_k ~ 10: the
log's sparse regime), Adam 1e-3, 8000 steps of 64 images, MSE_k by running average. The c-MWP
maps are read at the second convolution (the paper reads GoogLeNet at pool2 or pool3: a middle
layer), the pointing game's tolerance is 15/224 of the image side (the excitation-backprop
evaluation's 15 pixels on 224).

Variants (`--config=runs/configs/srae.py:VARIANT[,smoke]`):
  shapes     (default) built-in shapes, 4 classes, 32x32, 6000 images: their 5 part keypoints
             (centre and the four extremes) and boxes. No download.
  cub_local  the CUB-200-2011 folder layout under $XJAX_DATA_DIR (caltech_birds2011/CUB_200_2011;
             the offline subset: 15 classes, images at 1/4 scale), object crops from the boxes
             at 64x64, the 15 CUB parts. One module per class: 30 positives and 420 negatives of
             the train split (the paper: 50 and 8000).
  cub        the full CUB-200-2011 in the same folder layout (the extracted CUB_200_2011.tgz), 30
             random classes as the paper. (TFDS's caltech_birds2011 has no part locations.)
  smoke      (a modifier) tiny, on the chosen dataset: one epoch, a small VGG, 100 SRAE steps;
             shapes at 16x16 (256 images, 3 classes), CUB's crops at 32x32 (3 random classes).
             For tests.
"""

import ml_collections

from runs.configs.common import base_config, cub_crops, parse_variants, smoke_network

VARIANTS = ("shapes", "cub_local", "cub")
# Qi & Li, Table 1 (CUB, 30 classes; SRAE, NN, SAE, Z, ExcitationBP on y-hat).
PAPER = {"f_reg_train": {"srae": 0.0831, "nn": 0.0657, "sae": 0.0987},
         "f_reg_test": {"srae": 0.1539, "nn": 0.1170, "sae": 0.1928},
         "locality": {"srae": 1.9694, "nn": 2.3078, "sae": 2.1492, "z": 1.9623,
                      "excitation_backprop": 2.4934}}


def get_config(variant: str = "shapes"):
  dataset, modifiers = parse_variants(variant, "srae.py", VARIANTS, ("smoke",))
  c = base_config()
  c.name = f"srae_{dataset}"
  c.model = ml_collections.ConfigDict(dict(name="vgg", config=(16, "M", 32, "M", 64, "M"),
                                           dense=(128, 128), dropout_rate=0.5))
  c.data.batch_size = 64
  c.train.epochs = 6
  c.train.log_every_steps = 50
  c.srae = ml_collections.ConfigDict(dict(
      methods=("srae", "nn", "sae", "z", "excitation_backprop"),
      layer="dense1", heatmap_layer="conv2",
      classes=ml_collections.FieldReference(None, field_type=object),  # None: every class
      k=5, hidden=64, beta=1.0, q=10.0, mse="ema", steps=8000, batch_size=64,
      num_images=32, z_features=64, pointing_tolerance=2.0, figure_images=4,
      paper=PAPER))
  if dataset == "shapes":
    c.data.options = dict(image_size=32, num_classes=4, num_examples=6000)
  else:
    cub_crops(c, dataset)
    c.model.config = (32, "M", 64, "M", 128, "M", 128, "M")
    c.srae.pointing_tolerance = 4.0  # 15 / 224 of 64 pixels
    c.srae.classes = 30 if dataset == "cub" else None
  if "smoke" in modifiers:
    smoke_network(c, dataset, (8, "M", 16, "M"))
    if dataset != "shapes":
      c.srae.pointing_tolerance = 2.0  # 15 / 224 of 32 pixels
    c.srae.update(dict(k=3, hidden=8, steps=100, batch_size=32, num_images=4, z_features=4,
                       figure_images=2, classes=None if dataset == "shapes" else 3))
  return c
