"""The config every training run starts from; dataset configs change what differs."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="shapes", data_dir=ml_collections.FieldReference(None, field_type=str),
      batch_size=128, eval_batch_size=256, normalization="unit", validation_fraction=0.1,
      augmentation=dict(flip=False, shift=0), options={}, num_threads=2,
      # Local folders (CelebA, CUB): drop images that cannot be read (counted in results.json)
      # instead of stopping with an error that names the file.
      skip_unreadable=False,
      fields=("image", "label")))
  c.model = ml_collections.ConfigDict(dict(name="cnn_cifar10"))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, momentum=0.9, nesterov=False, weight_decay=0.0,
      schedule="constant", decay_every_epochs=2, decay_factor=0.1))
  c.losses = ml_collections.ConfigDict({"cross_entropy": {"weight": 1.0}})
  c.train = ml_collections.ConfigDict(dict(
      epochs=10, log_every_steps=50, checkpoint_every_steps=500, early_stopping_patience=3,
      # Fine-tuning: start from the best parameters of this workdir (a finished run).
      init_from=ml_collections.FieldReference(None, field_type=str),
      # Modules from other runs: {"backbone": WORKDIR} loads that run's best parameters into the
      # subtree "backbone"; `frozen` lists parameter path prefixes that are not trained.
      pretrained={}, frozen=(),
      # Loss terms of the parameters only (e.g. "block_l1") added, weighted, to the validation
      # loss that early stopping and the best checkpoint follow (as Keras's val_loss does).
      validation_penalties=()))
  # The paper's numbers, shown beside ours in results.md (None where the paper has none).
  c.paper = ml_collections.ConfigDict(
      {"test_accuracy": ml_collections.FieldReference(None, field_type=float)})
  return c


def parse_variants(arg: str, file: str, bases: Sequence[str], modifiers: Sequence[str] = ()
                   ) -> tuple[str, frozenset[str]]:
  """`"mnist,smoke"` -> `("mnist", {"smoke"})`: at most one base variant (default `bases[0]`)
  and any modifiers, in any order.

  Raises:
    ValueError: an unknown or a second base variant, naming the known ones.
  """
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  chosen = [p for p in parts if p in bases]
  unknown = [p for p in parts if p not in bases and p not in modifiers]
  if unknown or len(chosen) > 1:
    known = ", ".join(repr(b) if b else "'' (default)" for b in bases)
    raise ValueError(f"Unknown variant {arg!r} of {file}; known: {known}"
                     + (f", combined with any of {', '.join(modifiers)}" if modifiers else "")
                     + " (e.g. `:mnist,smoke`).")
  return (chosen[0] if chosen else bases[0]), frozenset(p for p in parts if p in modifiers)


# A small Vision Transformer for 28-32 pixel images (4 x 4 patches: 49-64 tokens and a class
# token), the transformer of the ground-truth benchmark's `vit` variant.
SMALL_VIT = dict(name="vit", patch_size=4, hidden=64, depth=4, num_heads=4, mlp=128)


def table1_config(dataset: str, model: str, paper_accuracy: float, variant: str = ""):
  """A Table-1 network of Rieger 2018 on a TFDS dataset, with the paper's stopping rule.

  The paper trains until the validation loss has not improved for three epochs (sec. 5.1).
  [A] Adam 1e-3, batch 128 (docs/assumptions.md). Variants: the default, `quick` (3 epochs,
  a check in minutes on a CPU) and `vit` (`SMALL_VIT` instead of the Table-1 network).
  """
  _, modifiers = parse_variants(variant, f"{dataset}.py", ("",), ("quick", "vit"))
  c = base_config()
  c.name = dataset
  c.data.name = dataset
  c.model.name = model
  if "vit" in modifiers:
    c.name += "_vit"
    c.model = ml_collections.ConfigDict(SMALL_VIT)
  c.train.epochs = 30
  c.train.early_stopping_patience = 3
  c.train.log_every_steps = 100
  c.train.checkpoint_every_steps = 1000
  c.paper.test_accuracy = paper_accuracy  # Rieger 2018, Table 3 (baseline)
  # The block-wise L1 penalty of Rieger 2018 (Eq. 5-6), declared but off (weight 0):
  # `--config.losses.block_l1.weight=0.1` trains with it (`python -m runs.separable` runs the
  # paper's whole protocol). Its class count is the data's (10 for the three Table-1 datasets).
  c.losses.block_l1 = dict(weight=0.0, num_classes=10, layers=None, channel_blocks=())
  if "quick" in modifiers:
    c.train.epochs = 3
  return c


def cub_crops(c: ml_collections.ConfigDict, dataset: str) -> None:
  """CUB-200-2011 as the explanation-module papers use it: 64x64 object crops from the boxes, with
  flips and shifts, 60 epochs (patience 10) for a performer trained from scratch, read from the
  original folder layout under $XJAX_DATA_DIR (caltech_birds2011/CUB_200_2011), which has the part
  locations (TFDS's caltech_birds2011 has boxes but no parts, so it cannot score parts).
  `dataset`: "cub_local" (the offline 15-class subset, its images downscaled by 4, so its
  annotations are scaled by 0.25) or "cub" (the full extracted CUB_200_2011 at full size)."""
  c.data.name = "caltech_birds2011_local"
  c.data.options = dict(image_size=(64, 64), crop="bbox",
                        annotation_scale=0.25 if dataset == "cub_local" else 1.0)
  c.data.augmentation = dict(flip=True, shift=4)
  c.data.batch_size = 32
  c.train.epochs = 60
  c.train.early_stopping_patience = 10
  c.train.log_every_steps = 20


def smoke_network(c: ml_collections.ConfigDict, dataset: str, vgg: tuple) -> None:
  """The `smoke` modifier of the CUB experiments: a tiny VGG (`vgg`) trained one epoch, on the
  dataset the user named (a smoke run of CUB reads the CUB folder, and fails with its
  data-not-found line when it is not there): never another dataset."""
  c.name += "_smoke"
  if dataset == "shapes":
    c.data.options = dict(image_size=16, num_classes=3, num_examples=256)
    c.data.augmentation = dict(flip=False, shift=0)
  else:  # every image of the folder (CUB has no size option), its crops at 32x32
    c.data.options = dict(c.data.options, image_size=(32, 32))
    c.data.augmentation = dict(flip=True, shift=2)
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.model.config, c.model.dense = vgg, (16, 16)
  c.train.epochs = 1
  c.train.log_every_steps = 4
