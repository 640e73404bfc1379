"""Datasets by name: `get_source("mnist", "validation")` whatever the backend behind it.

| name | backend | where the data is |
|---|---|---|
| `shapes` | built-in synthetic (`xjax.data.shapes`) | generated from the seed, nothing to download |
| `mnist`, `fashion_mnist`, `cifar10`, `celeb_a`, `caltech_birds2011` | TFDS, array_record | `data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (`python -m runs.prepare NAME`) |
| `celeb_a_local` | original CelebA folder layout | `root`, else `$XJAX_DATA_DIR/celeb_a/` |
| `caltech_birds2011_local` | original CUB-200-2011 folder layout | `root`, else `$XJAX_DATA_DIR/caltech_birds2011/CUB_200_2011/` |

Every dataset has the splits `train`, `validation` and `test`. Where the dataset itself has no
validation split, a fixed `validation_fraction` of its train split is held out: the same images
whatever the run's seed, so runs with different seeds are validated on the same data.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np

from xjax.data.source import DatasetInfo, Source
from xjax.errors import ConfigError, DataNotFoundError

SPLITS = ("train", "validation", "test")
_TFDS = ("mnist", "fashion_mnist", "cifar10", "celeb_a", "caltech_birds2011")
_TFDS_WITH_VALIDATION = ("celeb_a",)
DATASETS = ("shapes", *_TFDS, "celeb_a_local", "caltech_birds2011_local")
_LOCAL_SUBDIRS = {"celeb_a_local": "celeb_a", "caltech_birds2011_local": "caltech_birds2011/CUB_200_2011"}
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
  base = os.environ.get("XJAX_DATA_DIR")
  if not base:
    raise DataNotFoundError(
        f"Dataset {name!r} reads a local folder: set XJAX_DATA_DIR so that "
        f"$XJAX_DATA_DIR/{_LOCAL_SUBDIRS[name]}/ holds it, or give its folder as the option "
        f"`root` (in a config: data.options.root).")
  return Path(base) / _LOCAL_SUBDIRS[name]


def get_source(name: str, split: str, *, data_dir: str | None = None,
               validation_fraction: float = 0.1, **options) -> Source:
  """The split `split` of dataset `name` (see the module docstring for names and locations).

  Args:
    name: one of `DATASETS`.
    split: one of `SPLITS`.
    data_dir: the TFDS data directory (TFDS datasets only).
    validation_fraction: the share of the train split held out where there is no validation split.
    **options: passed to the source: e.g. `image_size`, `num_examples`, `seed`, `root`.

  Returns:
    A `Source`. Unknown names raise `ConfigError`; data that is not there `DataNotFoundError`.
  """
  if name not in DATASETS:
    raise ConfigError(f"Unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")
  if split not in SPLITS:
    raise ConfigError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  if name == "shapes":
    from xjax.data.shapes import ShapesSource
    return _checked(name, ShapesSource, split, **options)
  if name == "celeb_a_local":
    from xjax.data.celeba_folder import CelebAFolder
    return _checked(name, CelebAFolder, local_root(name, options.pop("root", None)), split, **options)
  if name == "caltech_birds2011_local":
    from xjax.data.cub_folder import CubFolder
    root = local_root(name, options.pop("root", None))
    return _with_validation(lambda s: _checked(name, CubFolder, root, s, **options), split,
                            validation_fraction)
  from xjax.data.tfds_data import TfdsSource
  if name in _TFDS_WITH_VALIDATION:
    return _checked(name, TfdsSource, name, split, data_dir=data_dir, **options)
  return _with_validation(lambda s: _checked(name, TfdsSource, name, s, data_dir=data_dir, **options),
                          split, validation_fraction)


def _checked(name: str, cls, *args, **options) -> Source:
  """`cls(*args, **options)`, with options it does not take reported as a `ConfigError`."""
  try:
    inspect.signature(cls).bind(*args, **options)
  except TypeError as e:
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "split", "name", "root")]
    raise ConfigError(f"Dataset {name!r} does not take the options {sorted(options)} ({e}); "
                      f"it takes: {', '.join(accepted)}.") from None
  return cls(*args, **options)


def _with_validation(make, split: str, fraction: float) -> Source:
  if split == "test":
    return make("test")
  return holdout_split(make("train"), split, fraction)
