"""XNet (David & Liu 2019): a baseline and XNet trained with the same seed, `runs.xnet`.

The paper's setup (Sec. 2.1-2.2): ResNet-18, global average pooling, an
explainable dense layer of 3 ReLU neurons, a softmax output; CelebA's `Young` as the task, the
neurons conditioned on `5_o_Clock_Shadow`, `Bald` and `Bangs`; SGD lr 0.1, momentum 0.9, lr / 10
every 2 epochs, batch 128, alpha 0.05, stopped after epoch 8 (and tested there: no model selection
is described, so `train.test_params = "last"`).

Variants:
  (default)     synthetic `shapes` (no download): circles vs squares, the neurons conditioned on
                the attributes `large`, `red`, `striped`; ResNet-18 with the CIFAR stem and width
                16 as backbone, Adam, alpha 0.3, 12 epochs; about 15 minutes on a 2-core CPU.
  mnist         real MNIST (`python -m runs.prepare mnist`): digits 5-9 vs 0-4, the neurons
                conditioned on the digits 3, 5 and 8; the Table-1 MNIST CNN as backbone.
  celeba        the paper's experiment on the full CelebA through TFDS (`runs.prepare celeb_a`);
                [A] 224 x 224 inputs, horizontal flips, weight decay 5e-4, no ImageNet weights.
  celeba_local  the same on the original CelebA folder layout under `$XJAX_DATA_DIR/celeb_a/`
                (e.g. a 2500-image subset), at 64 x 64 so that it runs on a CPU.
  smoke         combined with any of them (`:smoke`, `:mnist,smoke`): a tiny run for tests (2
                epochs, the FASHION CNN as backbone; on shapes 256 images of 16 x 16 and the
                "em_match" ablation, seconds on a CPU; on the real datasets their whole splits).

`xnet.ablations` adds the runs of Sec. 4: "sum" (Eq. 1, Fig. 7) and "initial_match" / "em_match"
(the sum objective with the matching of Alg. 1-2 once before training or before every epoch,
Fig. 8).
"""

import ml_collections

from runs.configs.common import base_config, parse_variants

VARIANTS = ("", "mnist", "celeba", "celeba_local")


def get_config(variant: str = ""):
  variant, modifiers = parse_variants(variant, "xnet.py", VARIANTS, ("smoke",))
  c = base_config()
  c.data.fields = ("image", "label", "attributes")
  c.data.task = ml_collections.ConfigDict(dict(
      label_attribute=ml_collections.FieldReference(None, field_type=str), positive_classes=()))
  c.model = ml_collections.ConfigDict(dict(
      name="xnet", backbone="resnet18", backbone_options={}, num_neurons=3,
      head_norm="batch"))  # [A] keeps the 3 ReLU units alive from scratch (see XNetHead)
  c.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, schedule="step",
                     decay_every_epochs=2, decay_factor=0.1)
  c.train.update(epochs=8, early_stopping_patience=0, test_params="last")
  c.xnet = ml_collections.ConfigDict(dict(
      categories=("5_o_Clock_Shadow", "Bald", "Bangs"),  # neuron j <-> category j
      alpha=0.05,  # the drop-loss weight of XNet (the baseline has 0)
      objective="min",  # Eq. 2; "sum" / "mean" is Eq. 1
      matching="none",  # of the XNet run: "none", "initial" or "em" (Alg. 1-2)
      match_examples=ml_collections.FieldReference(None, field_type=int),  # train images for M
      ablations=(),  # any of "sum", "initial_match", "em_match"
      figure_examples=4,  # images per category in the saliency / CAM figures
      top_images=9))  # images per neuron in the top-k figures
  c.paper = ml_collections.ConfigDict(dict(baseline_test_accuracy=0.8817,
                                           xnet_test_accuracy=0.8558))  # Table 1

  if variant == "":
    c.name = "xnet_shapes"
    c.data.name = "shapes"
    c.data.options = dict(image_size=32, num_classes=2, num_examples=6000)
    c.data.batch_size = 64
    c.model.backbone_options = {"stem": "cifar", "width": 16}
    # [A] From scratch on shapes, SGD 0.1 (and 0.01) stays at chance for the first epochs: Adam,
    # 3e-3, / 10 after epoch 6 of 12. alpha = 0.05 (the paper's, on CelebA) leaves the drop losses
    # where the baseline's are; 0.5 raises them but costs 9 points of accuracy; 0.3 does both.
    # With 8 epochs (/ 10 after 4) the drop losses were still below their start at the end.
    c.optimizer.update(name="adam", learning_rate=3e-3, schedule="step", decay_every_epochs=6)
    c.xnet.alpha = 0.3
    c.train.epochs = 12
    c.train.log_every_steps = 20
    c.train.checkpoint_every_steps = 200
    c.xnet.categories = ("large", "red", "striped")
  elif variant == "mnist":
    c.name = "xnet_mnist"
    c.data.name = "mnist"
    c.data.task.positive_classes = (5, 6, 7, 8, 9)
    c.model.backbone = "cnn_mnist"
    c.optimizer.learning_rate = 0.01
    c.train.epochs = 4
    c.train.log_every_steps = 50
    c.xnet.categories = ("is_3", "is_5", "is_8")
  elif variant in ("celeba", "celeba_local"):
    c.name = f"xnet_{variant}"
    c.data.task.label_attribute = "Young"
    c.model.backbone_options = {"stem": "imagenet"}
    c.optimizer.weight_decay = 5e-4
    c.data.augmentation = dict(flip=True, shift=0)
    if variant == "celeba":
      c.data.name = "celeb_a"
      c.data.options = dict(image_size=(224, 224))
      c.train.log_every_steps = 100
      c.train.checkpoint_every_steps = 1000
    else:
      c.data.name = "celeb_a_local"
      c.data.options = dict(image_size=(64, 64))
      c.train.log_every_steps = 5
  if "smoke" in modifiers:
    c.name += "_smoke"
    if variant == "":
      c.data.options = dict(image_size=16, num_classes=2, num_examples=256)
      c.xnet.ablations = ("em_match",)
    c.data.batch_size, c.data.eval_batch_size = 32, 64
    c.model.backbone = "cnn_fashion"
    c.model.backbone_options = {"dense_dropout_rate": 0.0}
    c.train.epochs = 2
    c.train.log_every_steps = 4
    c.xnet.figure_examples, c.xnet.top_images = 2, 4
  return c
