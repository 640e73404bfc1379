"""Datasets by name: `get_source("mnist", "validation")` whatever the backend behind it.

* `shapes`: built-in synthetic (`xjax.data.shapes`), generated from the seed, nothing to
  download.
* `planted_text`: built-in synthetic token sequences with planted deciding tokens
  (`xjax.data.planted_text`), generated from the seed.
* `mnist`, `fashion_mnist`, `cifar10`, `celeb_a`, `caltech_birds2011`: TFDS (array_record), in
  `data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (`python -m runs.prepare NAME`).
* `celeb_a_local`: the original CelebA folder layout, in `root`, else `$XJAX_DATA_DIR/celeb_a/`.
* `caltech_birds2011_local`: the original CUB-200-2011 folder layout, in `root`, else
  `$XJAX_DATA_DIR/caltech_birds2011/CUB_200_2011/`.

Every dataset has the splits `train`, `validation` and `test`. Where the dataset itself has no
validation split, a fixed `validation_fraction` of its train split is held out: the same images
whatever the run's seed, so runs with different seeds are validated on the same data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xjax.data.padding import Padded
from xjax.data.source import DatasetInfo, Source
from xjax.errors import ConfigError, DataNotFoundError
from xjax.registry import Registry

SPLITS = ("train", "validation", "test")

# The modules that register sources, in the order of `DATASETS.names()`; imported at the first
# lookup (they import this module for `DATASETS`, so it imports none of them).
MODULES = ("xjax.data.shapes", "xjax.data.planted_text", "xjax.data.tfds_data",
           "xjax.data.celeba_folder", "xjax.data.cub_folder")
# name -> the source's constructor, called as `make(split, **options)`, or `make(root, split,
# **options)` for the local folders (metadata `subdir`: the folder under $XJAX_DATA_DIR).
# Metadata `holdout`: the dataset has no validation split, one is held out of train; `tfds`: the
# constructor takes `data_dir`. Each source registers itself where it is defined.
DATASETS = Registry("dataset", modules=MODULES)
_HOLDOUT_SEED = 20180517  # fixed: the held-out validation images never depend on the run's seed


class Subset:
  """The examples `indices` of another source, renumbered 0..len-1 (a held-out split)."""

  def __init__(self, source: Source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.info: DatasetInfo = source.info

  def __len__(self) -> int:
    return len(self.indices)

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    return {**self.source.read_batch(self.indices[indices]), "index": indices}


def holdout_split(source: Source, split: str, fraction: float) -> Subset:
  """Splits a train source into `train` and `validation` parts by a fixed random permutation."""
  if not 0.0 < fraction < 1.0:
    raise ConfigError(f"validation_fraction must be in (0, 1), got {fraction}.")
  order = np.random.default_rng(_HOLDOUT_SEED).permutation(len(source))
  num_validation = max(1, int(round(fraction * len(source))))
  part = order[:num_validation] if split == "validation" else order[num_validation:]
  return Subset(source, np.sort(part))


def local_root(name: str, root: str | os.PathLike | None) -> Path:
  """The folder of a `*_local` dataset: `root` if given, else under `$XJAX_DATA_DIR`."""
  if root is not None:
    return Path(root)
  subdir = DATASETS.metadata(name)["subdir"]
  base = os.environ.get("XJAX_DATA_DIR")
  if not base:
    raise DataNotFoundError(
        f"Dataset {name!r} reads a local folder: set XJAX_DATA_DIR so that "
        f"$XJAX_DATA_DIR/{subdir}/ holds it, or give its folder as the option "
        f"`root` (in a config: data.options.root).")
  return Path(base) / subdir


def get_source(name: str, split: str, *, data_dir: str | None = None,
               validation_fraction: float = 0.1, **options) -> Source:
  """The split `split` of dataset `name` (see the module docstring for names and locations).

  Args:
    name: one of `DATASETS`.
    split: one of `SPLITS`.
    data_dir: the TFDS data directory (TFDS datasets only).
    validation_fraction: the share of the train split held out where there is no validation split.
    **options: passed to the source: e.g. `image_size`, `num_examples`, `seed`, `root`; and
      `pad_to`, for every dataset: pad the images with black to `pad_to` x `pad_to`
      (`xjax.data.padding`; MNIST on the 32x32 input of the DSP 2018 tutorial network).

  Returns:
    A `Source`.

  Raises:
    ConfigError: an unknown dataset, split or option (listing the valid ones).
    DataNotFoundError: the data is not there.
  """
  pad_to = options.pop("pad_to", None)
  if pad_to is not None:
    return Padded(get_source(name, split, data_dir=data_dir,
                             validation_fraction=validation_fraction, **options), pad_to)
  make = DATASETS[name]
  if split not in SPLITS:
    raise ConfigError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  about = DATASETS.metadata(name)
  args = (local_root(name, options.pop("root", None)),) if "subdir" in about else ()
  if about.get("tfds"):
    options["data_dir"] = data_dir
  DATASETS.check(name, options, positional=len(args) + 1)  # + 1: the split
  if not about.get("holdout") or split == "test":
    return make(*args, split, **options)
  return holdout_split(make(*args, "train", **options), split, validation_fraction)
