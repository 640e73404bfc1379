"""Separable explanations (Rieger 2018, seed 001): `runs.separable`, Tables 2 and 3.

The protocol of Sec. 5.1: the Table-1 network of each dataset, with dropout, is pre-trained until
its validation loss has not improved for 3 epochs (the baseline); it is then fine-tuned from the
baseline's best parameters with the block-wise L1 penalty (Eq. 5-6) for each lambda in
`separable.lambdas`, under the same stopping rule. The fine-tuning runs stop on the validation
loss *with* the penalty (Keras's `val_loss` includes regularisation losses), or on the
cross-entropy alone with `separable.stop_on_penalised_loss = False`. [A] Adam 1e-3, batch
128 (spec/METHODS.md Sec. 2).

Variants (`--config=runs/configs/separable.py:VARIANT`):
  shapes         (default) synthetic two-object shapes, no download: every image has a second,
                 smaller object of another class (`second_object=True`), whose mask gives the
                 share of the top-2 heatmap's positive relevance on it (`second_object_share`);
                 the Table-1 MNIST network on 32 x 32 colour images.
  mnist          real MNIST (`python -m runs.prepare mnist --manual_dir DIR`), Table-1 MNIST CNN.
  fashion_mnist  real Fashion-MNIST, the Table-1 FASHION CNN.
  cifar10        real CIFAR-10, the Table-1 CIFAR10 CNN, flips and shifts of up to 4 pixels.
"""

import ml_collections

from runs.configs.common import table1_config

# Rieger 2018, Table 2 (diffusion d) and Table 3 (test accuracy), per dataset and run.
PAPER = {
    "cifar10": {"diffusion": {"baseline": .13, "lambda=0.1": .12, "lambda=0.5": .59,
                              "lambda=1": .58, "lambda=5": .56},
                "test_accuracy": {"baseline": .80, "lambda=0.1": .80, "lambda=0.5": .81,
                                  "lambda=1": .81, "lambda=5": .81}},
    "fashion_mnist": {"diffusion": {"baseline": .42, "lambda=0.1": .76, "lambda=0.5": 1.80,
                                    "lambda=1": 1.85, "lambda=5": 1.72},
                      "test_accuracy": {"baseline": .91, "lambda=0.1": .91, "lambda=0.5": .91,
                                        "lambda=1": .91, "lambda=5": .91}},
    "mnist": {"diffusion": {"baseline": .28, "lambda=0.1": 1.06, "lambda=0.5": .98,
                            "lambda=1": .97, "lambda=5": 1.02},
              "test_accuracy": {"baseline": .99, "lambda=0.1": .99, "lambda=0.5": .99,
                                "lambda=1": .99, "lambda=5": .99}},
}
MODELS = {"mnist": "cnn_mnist", "fashion_mnist": "cnn_fashion", "cifar10": "cnn_cifar10",
          "shapes": "cnn_mnist"}
VARIANTS = ("shapes", "mnist", "fashion_mnist", "cifar10")


def get_config(variant: str = "shapes"):
  variant = variant or "shapes"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r} of separable.py; known: {', '.join(VARIANTS)}.")
  dataset = variant
  c = table1_config(dataset, MODELS[dataset],
                    paper_accuracy=PAPER.get(dataset, {}).get("test_accuracy", {}).get("baseline"))
  c.name = f"separable_{dataset}"
  c.train.epochs = 30  # a cap: every run stops when its validation loss stalls for 3 epochs
  c.separable = ml_collections.ConfigDict(dict(
      lambdas=(0.1, 0.5, 1.0, 5.0),
      layers=ml_collections.FieldReference(None, field_type=tuple),  # None: every dense layer
      # ((layer, channels), ...): block that layer's inputs by the channel of the flattened map
      # they come from, not by their flat index (which gives each class a band of image rows).
      channel_blocks=(),
      num_examples=1000,  # N of Eq. 7: the first N test images
      explain_batch_size=250,
      # Fine-tuning stops on the validation loss with the penalty (True, as Keras's val_loss), or
      # on the validation cross-entropy alone (False).
      stop_on_penalised_loss=True,
      # The fine-tuning runs' learning rate; None: the pre-training's ([A], not in the paper).
      finetune_learning_rate=ml_collections.FieldReference(None, field_type=float),
      figure_lambda=1.0,  # the fine-tuned run shown beside the baseline in Fig. 4 / 5
      figure_examples=6))
  if dataset == "cifar10":
    c.data.normalization = "standardize"
    c.data.augmentation = dict(flip=True, shift=4)
    c.train.epochs = 100
  elif dataset == "shapes":
    c.data.options = dict(image_size=32, num_classes=4, second_object=True, num_examples=8000)
  return c
