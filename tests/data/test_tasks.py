"""Derived tasks: an attribute as the label, and a binary task whose classes become attributes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ArraySource
from xjax.data.registry import get_source
from xjax.data.tasks import AttributeLabel, BinaryClasses, apply_task
from xjax.errors import ConfigError


def test_attribute_label_takes_the_attribute_column_as_a_two_class_label():
  shapes = get_source("shapes", "validation", image_size=16, num_examples=64)
  task = AttributeLabel(shapes, "striped")
  column = shapes.info.attribute_names.index("striped")
  batch, original = task.read_batch(np.arange(64)), shapes.read_batch(np.arange(64))
  np.testing.assert_array_equal(batch["label"], original["attributes"][:, column])
  np.testing.assert_array_equal(batch["image"], original["image"])
  assert 0 < batch["label"].sum() < 64
  assert task.info.num_classes == 2 and task.info.class_names == ("not_striped", "striped")
  with pytest.raises(ConfigError, match="no attribute 'Young'"):
    AttributeLabel(shapes, "Young")


def test_binary_classes_labels_and_one_attribute_per_class():
  source = ArraySource(n=12, num_classes=4)  # labels 0, 1, 2, 3, 0, 1, ...
  task = BinaryClasses(source, positive_classes=[3, 1])
  batch = task.read_batch(np.arange(12))
  np.testing.assert_array_equal(batch["label"], [0, 1, 0, 1] * 3)
  np.testing.assert_array_equal(batch["attributes"], np.eye(4, dtype=np.int8)[np.arange(12) % 4])
  assert task.info.attribute_names == ("is_0", "is_1", "is_2", "is_3")
  assert task.info.num_classes == 2 and "attributes" in task.info.fields
  for bad in ([], [4], [0, 1, 2, 3]):
    with pytest.raises(ConfigError, match="positive_classes"):
      BinaryClasses(source, bad)


def test_apply_task_chooses_one_or_none():
  source = ArraySource(n=8)
  assert apply_task(source) is source
  assert isinstance(apply_task(source, positive_classes=(1,)), BinaryClasses)
  with pytest.raises(ConfigError, match="both"):
    apply_task(source, label_attribute="x", positive_classes=(1,))
