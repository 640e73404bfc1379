"""Fashion-MNIST with the Table-1 FASHION network of Rieger 2018: C32-AvgP-D256-D10.

Pixels in [0, 1]. Prepare the data first: `python -m runs.prepare fashion_mnist --manual_dir DIR`.
Variants: the default (until the validation loss stalls for 3 epochs) and `quick` (3 epochs).
"""

from runs.configs.common import table1_config


def get_config(variant: str = ""):
  return table1_config("fashion_mnist", "cnn_fashion", paper_accuracy=0.91, variant=variant)
