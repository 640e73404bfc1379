"""Derived tasks: a new label (and attributes) computed from another source's records.

XNet (David & Liu 2019) classifies CelebA's `Young` attribute and conditions neurons on other
attributes; its MNIST check turns the ten digits into a binary task whose categories are digits.
Both are a `Source` wrapping a `Source`, so the pipeline, sharding and checkpoints see nothing
new:

  `AttributeLabel(source, "Young")`   label = the attribute's column (classes `not_Young`, `Young`)
  `BinaryClasses(source, (5, ..., 9))`  label = 1 for the listed classes, else 0; attributes =
                                      one column per original class (`is_<class name>`), so the
                                      classes can serve as categories.

`apply_task(source, label_attribute=..., positive_classes=...)` builds one from a config's
`data.task`; with neither set it returns the source unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from xjax.data.source import DatasetInfo, Source
from xjax.errors import ConfigError


class AttributeLabel:
  """`source` with one of its binary attributes as the label (2 classes)."""

  def __init__(self, source: Source, attribute: str):
    names = source.info.attribute_names
    if attribute not in names:
      raise ConfigError(f"{source.info.name!r} has no attribute {attribute!r} to use as the label; "
                        f"its attributes: {', '.join(names) or 'none'}.")
    self.source, self.attribute, self.column = source, attribute, names.index(attribute)
    self.info: DatasetInfo = dataclasses.replace(
        source.info, num_classes=2, class_names=(f"not_{attribute}", attribute))

  def __len__(self) -> int:
    return len(self.source)

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = self.source.read_batch(indices)
    return {**batch, "label": batch["attributes"][:, self.column].astype(np.int32)}


class BinaryClasses:
  """`source` with label 1 for `positive_classes` and 0 otherwise; the classes become attributes."""

  def __init__(self, source: Source, positive_classes: Sequence[int]):
    info = source.info
    positive = sorted({int(c) for c in positive_classes})
    if not positive or positive[0] < 0 or positive[-1] >= info.num_classes:
      raise ConfigError(f"positive_classes must be a non-empty subset of 0..{info.num_classes - 1} "
                        f"(the classes of {info.name!r}), got {list(positive_classes)}.")
    if len(positive) == info.num_classes:
      raise ConfigError("positive_classes lists every class: the binary task would be constant.")
    class_names = info.class_names or tuple(str(c) for c in range(info.num_classes))
    self.source, self.positive = source, np.asarray(positive)
    self.info = dataclasses.replace(
        info, num_classes=2, class_names=("negative", "positive"),
        attribute_names=tuple(f"is_{name}" for name in class_names),
        fields=tuple(dict.fromkeys((*info.fields, "attributes"))))

  def __len__(self) -> int:
    return len(self.source)

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = self.source.read_batch(indices)
    classes = batch["label"]
    attributes = (classes[:, None] == np.arange(self.source.info.num_classes)).astype(np.int8)
    return {**batch, "label": np.isin(classes, self.positive).astype(np.int32),
            "attributes": attributes}


def apply_task(source: Source, label_attribute: str | None = None,
               positive_classes: Sequence[int] = ()) -> Source:
  """The task a config's `data.task` describes (module docstring), or `source` itself."""
  if label_attribute and len(positive_classes):
    raise ConfigError("data.task sets both label_attribute and positive_classes; choose one.")
  if label_attribute:
    return AttributeLabel(source, label_attribute)
  if len(positive_classes):
    return BinaryClasses(source, positive_classes)
  return source
