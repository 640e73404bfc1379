"""Separable explanations (Rieger et al. 2018): `runs.separable`, Tables 2 and 3.

The protocol of Sec. 5.1: the Table-1 network of each dataset, with dropout, is pre-trained until
its validation loss has not improved for 3 epochs (the baseline); it is then fine-tuned from the
baseline's best parameters with the block-wise L1 penalty (Eq. 5-6) for each lambda in
`separable.lambdas`, under the same stopping rule. The fine-tuning runs stop on the validation
loss *with* the penalty (Keras's `val_loss` includes regularisation losses), or on the
cross-entropy alone with `separable.stop_on_penalised_loss = False`. [A] Adam 1e-3, batch 128.

Variants (`--config=runs/configs/separable.py:VARIANT[,smoke]`):
  shapes         (default) synthetic two-object shapes, no download: every image has a second,
                 smaller object of another class (`second_object=True`), whose mask gives the
                 share of the top-2 heatmap's positive relevance on it (`second_object_share`);
                 the Table-1 MNIST network on 32 x 32 colour images.
  mnist          real MNIST (`python -m runs.prepare mnist --manual_dir DIR`), Table-1 MNIST CNN;
                 the dataset's own config, `configs/mnist.py`.
  fashion_mnist  real Fashion-MNIST, the Table-1 FASHION CNN (`configs/fashion_mnist.py`).
  cifar10        real CIFAR-10, the Table-1 CIFAR10 CNN, flips and shifts of up to 4 pixels
                 (`configs/cifar10.py`).
  smoke          combined with any of them: a tiny run for tests (2 epochs, the FASHION CNN,
                 one lambda, d on 40 images; on shapes 256 images: seconds on a CPU; on the real
                 datasets the whole training split).
"""

import ml_collections

from runs.configs import cifar10, fashion_mnist, mnist
from runs.configs.common import parse_variants, table1_config

RUNS = ("baseline", "lambda=0.1", "lambda=0.5", "lambda=1", "lambda=5")
# Rieger 2018, Table 2 (diffusion d) and Table 3 (test accuracy), per dataset, in the order of RUNS.
PAPER = {
    "cifar10": {"diffusion": (.13, .12, .59, .58, .56),
                "run_test_accuracy": (.80, .80, .81, .81, .81)},
    "fashion_mnist": {"diffusion": (.42, .76, 1.80, 1.85, 1.72),
                      "run_test_accuracy": (.91, .91, .91, .91, .91)},
    "mnist": {"diffusion": (.28, 1.06, .98, .97, 1.02),
              "run_test_accuracy": (.99, .99, .99, .99, .99)},
}
DATASET_CONFIGS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10}
VARIANTS = ("shapes", "mnist", "fashion_mnist", "cifar10")


def get_config(variant: str = "shapes"):
  dataset, modifiers = parse_variants(variant, "separable.py", VARIANTS, ("smoke",))
  if dataset == "shapes":
    c = table1_config("shapes", "cnn_mnist", paper_accuracy=None)
    c.data.options = dict(image_size=32, num_classes=4, second_object=True, num_examples=8000)
  else:
    c = DATASET_CONFIGS[dataset].get_config()
  c.name = f"separable_{dataset}"
  c.paper.table_runs = RUNS if dataset in PAPER else ()
  c.paper.diffusion = PAPER.get(dataset, {}).get("diffusion", ())
  c.paper.run_test_accuracy = PAPER.get(dataset, {}).get("run_test_accuracy", ())
  c.paper.source = f"Rieger 2018 ({dataset})" if dataset in PAPER else "none for this dataset"
  if dataset != "cifar10":
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
  if "smoke" in modifiers:
    c.name += "_smoke"
    c.data.options = dict(c.data.options, num_examples=256) if dataset == "shapes" else dict(
        c.data.options)
    c.data.batch_size, c.data.eval_batch_size = 32, 64
    c.model.name = "cnn_fashion"
    c.train.epochs = 2
    c.train.log_every_steps = 4
    c.separable.lambdas = (1.0,)
    c.separable.num_examples = 40  # in batches of 32: one padded batch
    c.separable.explain_batch_size = 32
    c.separable.figure_examples = 2
  return c
