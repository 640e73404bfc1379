"""MNIST with the Table-1 MNIST network of Rieger 2018: C32-AvgP-C64(2x2)-AvgP-D512-D10.

Pixels in [0, 1]. Prepare the data first: `python -m runs.prepare mnist --manual_dir DIR`.
Variants: the default (until the validation loss stalls for 3 epochs) and `quick` (3 epochs).
"""

from runs.configs.common import table1_config


def get_config(variant: str = ""):
  return table1_config("mnist", "cnn_mnist", paper_accuracy=0.99, variant=variant)
