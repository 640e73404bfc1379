"""Activation maximization and explanations (Montavon, Samek, Mueller, DSP 2018): `runs.maximize`.

The classifier is the heatmapping.org tutorial CNN (`sumpool_cnn`: three 'VALID' convolutions with
sum pooling and a 1x1 convolution as classifier) on inputs in [-1, 1], MNIST padded to 32x32 with
black (-1). The density expert is a Gaussian RBM trained by CD-1, the generator the decoder of an
adversarial autoencoder with 8-dimensional N(0, I) codes, both on the same images.

[A] (the paper gives no optimizer, lambda, step count or training settings): Adam 0.05 for 500
steps of activation maximization from small random starts, box constraints [-1, 1] on x for the
l2 and expert priors; lambda = 0.01 for l2 on x (1024 pixels); lambda = 0.5 on z, which makes
Eq. 3.3's penalty the log-density of the codes' prior N(0, I), as Eq. 3.2 adds log p(x); 4 random
starts per class, the best kept (the code-space objective has local optima: with one start, one
or two classes of ten end at another class's image). The expert's lambda is 0.1,
not Eq. 3.2's 1: the RBM's density has its mode at a smooth mean-digit blob (on MNIST log p 604
there, above every test digit's, at most 584), and at lambda = 1 that mode swamps log p(class|x)
(min p(class) 0.16 on MNIST). `maximize.sweep` reports every prior at other lambdas, Eq. 3.2's
included, so the trade-off is in results.md, not hidden in this choice. The classifier and the
generator train with Adam 1e-3, the RBM with Adam 1e-4; every run stops when its validation loss
stalls for 3 epochs.

Variants (`--config=runs/configs/maximize.py:VARIANT[,smoke]`):
  mnist          (default) MNIST through TFDS (`python -m runs.prepare mnist --manual_dir DIR`).
  fashion_mnist  Fashion-MNIST, the same networks.
  shapes         built-in synthetic shapes (4 classes, 32x32 colour): no download.
  smoke          combined with any of them: tiny networks and few steps, for tests (on shapes:
                 16x16 images padded to 32x32, seconds on a CPU).
"""

import ml_collections

from runs.configs.common import base_config, parse_variants

VARIANTS = ("mnist", "fashion_mnist", "shapes")


def get_config(variant: str = "mnist"):
  dataset, modifiers = parse_variants(variant, "maximize.py", VARIANTS, ("smoke",))
  c = base_config()
  c.name = f"maximize_{dataset}"
  c.data.name = dataset
  c.data.normalization = "symmetric"  # the tutorial's [-1, 1]
  c.data.batch_size, c.data.eval_batch_size = 128, 512
  if dataset == "shapes":
    c.data.options = dict(image_size=32, num_classes=4, num_examples=6000)
  else:
    c.data.options = dict(pad_to=32)  # 28x28 digits on the tutorial's 32x32 canvas
  c.model = ml_collections.ConfigDict(dict(name="sumpool_cnn", pool_scale=0.5))
  c.train.epochs = 20
  c.train.early_stopping_patience = 3
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 1000
  c.maximize = ml_collections.ConfigDict(dict(
      expert=dict(model=dict(name="gaussian_rbm", num_hidden=500, sigma=1.0, cd_steps=1),
                  losses={"contrastive_divergence": {"weight": 1.0}},
                  optimizer=dict(name="adam", learning_rate=1e-4), epochs=20),
      generator=dict(model=dict(name="adversarial_autoencoder", code_size=8, hidden=(512, 512)),
                     losses={"reconstruction": {"weight": 1.0}, "adversarial": {"weight": 1.0}},
                     optimizer=dict(name="adam", learning_rate=1e-3), epochs=20),
      priors=("l2", "expert", "code"),
      weights=dict(l2=0.01, expert=0.1, code=0.5),
      sweep=dict(l2=(0.1, 0.001), expert=(1.0, 0.3, 0.03), code=(2.0, 0.05)),
      classes=ml_collections.FieldReference(None, field_type=tuple),  # None: every class
      steps=500, learning_rate=0.05, num_starts=4, init_scale=0.1, box_constraints=True,
      tv_weight=0.0, jitter=0))
  c.explain = ml_collections.ConfigDict(dict(
      methods=("sensitivity", "gradient_x_input", "lrp:alpha1_beta0", "lrp:alpha2_beta1",
               "lrp:alpha3_beta2"),
      num_figure_examples=8, num_flipping=500, flipping_steps=20, flipping_fraction=0.5,
      flipping_baseline="uniform", batch_size=100))
  if "smoke" in modifiers:
    c.name += "_smoke"
    if dataset == "shapes":
      c.data.options = dict(image_size=16, num_classes=4, num_examples=256, pad_to=32)
    c.data.batch_size, c.data.eval_batch_size = 32, 64
    c.train.epochs = 1
    m = c.maximize
    m.expert.model.num_hidden, m.expert.epochs = 16, 1
    m.generator.model.hidden, m.generator.model.code_size, m.generator.epochs = (32,), 2, 1
    m.steps, m.num_starts = 20, 2
    m.sweep = dict(expert=(0.1,))  # the configured lambda again: the test compares the two
    c.explain.num_figure_examples, c.explain.num_flipping = 4, 16
    c.explain.flipping_steps, c.explain.batch_size = 4, 16
  return c
