"""The contract every data source satisfies: random access to batches of records.

A source is a finite, indexable collection of examples of one split. The input pipeline
(`xjax.data.pipeline`) only ever calls `len(source)` and `source.read_batch(indices)`, so a new
dataset needs nothing else. Record fields (arrays with a leading batch axis `n`):

  image         uint8  (n, H, W, C)   always; every image of a source has the same shape. A
                                      token dataset (`info.vocab_size` set) has token ids
                                      here instead: int32 (n, T), 0 <= id < info.vocab_size
  label         int32  (n,)           always; the class, 0 <= label < info.num_classes
  index         int64  (n,)           always; the indices that were asked for
  attributes    int8   (n, A)         per-image binary attributes in {0, 1} (CelebA, shapes, ...)
  keypoints     float32 (n, P, 2)     part locations (x, y) in pixels of the returned image
  keypoints_visible bool (n, P)       whether each part is annotated / visible
  bbox          float32 (n, 4)        object box (x_min, y_min, x_max, y_max) in pixels of the image
  mask          uint8  (n, H, W)      ground-truth relevance mask: the pixels that decide the class
                                      ((n, T) for tokens: the tokens that decide it)
  second_label  int32  (n,)           class of a second object, -1 where there is none (shapes)
  second_mask   uint8  (n, H, W)      pixels of the second object (shapes)

Only `image`, `label` and `index` are required; a source lists what else it provides in
`info.fields`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np

REQUIRED_FIELDS = ("image", "label", "index")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and an analysis need to know about a source, independent of the split."""

  name: str
  image_shape: tuple[int, ...]  # (H, W, C) of the uint8 images a source returns; (T,) for tokens
  num_classes: int
  class_names: tuple[str, ...] = ()
  attribute_names: tuple[str, ...] = ()
  part_names: tuple[str, ...] = ()
  fields: tuple[str, ...] = REQUIRED_FIELDS
  # Per-channel mean and std of the pixels scaled to [0, 1]; used by `normalization="standardize"`.
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  # Token datasets only: the number of token ids; set, it says that `image` holds int32 ids
  # (n, T), which the pipeline passes to the model as they are (no normalisation, no
  # augmentation). `token_names[i]` is the name of id i (for figures and tables).
  vocab_size: int | None = None
  token_names: tuple[str, ...] = ()


@runtime_checkable
class Source(Protocol):
  """A split of a dataset with random access to batches (see the module docstring)."""

  info: DatasetInfo

  def __len__(self) -> int:
    ...

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the records at `indices` (1-D int array) stacked along a leading axis."""
    ...
