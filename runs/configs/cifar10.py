"""CIFAR-10 with the Table-1 CIFAR10 network of Rieger 2018: C32-C32-MaxP-C64-C64-MaxP-D512-D10.

The paper adds horizontal flips and shifts (sec. 5.1); [A] shifts of up to 4 pixels and
per-channel standardised pixels. Prepare the data first:
`python -m runs.prepare cifar10 --manual_dir DIR` (TFDS wants `cifar-10-binary.tar.gz`).
Variants: the default (until the validation loss stalls for 3 epochs) and `quick` (3 epochs).
"""

from runs.configs.common import table1_config


def get_config(variant: str = ""):
  c = table1_config("cifar10", "cnn_cifar10", paper_accuracy=0.80, variant=variant)
  c.data.normalization = "standardize"
  c.data.augmentation = dict(flip=True, shift=4)
  if not variant:
    c.train.epochs = 100
  return c
