"""The input pipeline: deterministic order, epochs as permutations, resume, hosts, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import ArraySource
from xjax.data import pipeline, registry
from xjax.errors import ConfigError


def _indices(batches):
  return [b["index"].tolist() for b in batches]


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
  source = ArraySource(n=100)
  data = pipeline.train_pipeline(source, batch_size=16, seed=3)
  assert data.steps_per_epoch == 6  # 100 // 16: the incomplete last batch is dropped
  batches = _take(data.iterator(), 12)
  epoch0 = np.concatenate([b["index"] for b in batches[:6]])
  epoch1 = np.concatenate([b["index"] for b in batches[6:]])
  assert len(set(epoch0.tolist())) == 96 and len(set(epoch1.tolist())) == 96
  assert not np.array_equal(epoch0, epoch1)
  assert all(b["image"].shape == (16, 4, 4, 1) and b["image"].dtype == np.float32 for b in batches)


def test_order_depends_on_seed_only_not_threads():
  source = ArraySource(n=64)
  one = _take(pipeline.train_pipeline(source, batch_size=8, seed=1, num_threads=1).iterator(), 10)
  four = _take(pipeline.train_pipeline(source, batch_size=8, seed=1, num_threads=4).iterator(), 10)
  other = _take(pipeline.train_pipeline(source, batch_size=8, seed=2).iterator(), 10)
  assert _indices(one) == _indices(four)
  assert _indices(one) != _indices(other)


def test_iterator_state_resumes_at_the_same_batch():
  source = ArraySource(n=64)
  data = pipeline.train_pipeline(source, batch_size=8, seed=0,
                                 augmentation=pipeline.Augmentation(flip=True, shift=1))
  iterator = data.iterator()
  _take(iterator, 5)
  state = iterator.get_state()
  rest = _take(iterator, 6)
  resumed = _take(data.iterator(state), 6)
  for a, b in zip(rest, resumed):
    np.testing.assert_array_equal(a["image"], b["image"])  # augmentation draws too
    np.testing.assert_array_equal(a["index"], b["index"])


def test_hosts_read_disjoint_halves_of_the_same_global_batch():
  source = ArraySource(n=64)
  whole = _take(pipeline.train_pipeline(source, batch_size=8, seed=5).iterator(), 4)
  parts = [_take(pipeline.train_pipeline(source, batch_size=8, seed=5, process_index=p,
                                         process_count=2).iterator(), 4) for p in range(2)]
  for k in range(4):
    joined = np.concatenate([parts[0][k]["index"], parts[1][k]["index"]])
    np.testing.assert_array_equal(joined, whole[k]["index"])


def test_hosts_augment_their_rows_as_one_process_does():
  # Every process draws the flips and shifts of the whole global batch from the same generator
  # and keeps its rows: together they see the one-process run's augmented batch.
  source = ArraySource(n=64, size=6)
  augmentation = pipeline.Augmentation(flip=True, shift=2)
  whole = _take(pipeline.train_pipeline(source, batch_size=8, seed=5,
                                        augmentation=augmentation).iterator(), 3)
  parts = [_take(pipeline.train_pipeline(source, batch_size=8, seed=5, process_index=p,
                                         process_count=2, augmentation=augmentation).iterator(), 3)
           for p in range(2)]
  for k in range(3):
    joined = np.concatenate([parts[0][k]["image"], parts[1][k]["image"]])
    np.testing.assert_array_equal(joined, whole[k]["image"])
  unaugmented = _take(pipeline.train_pipeline(source, batch_size=8, seed=5).iterator(), 1)
  assert not np.array_equal(whole[0]["image"], unaugmented[0]["image"])  # the draws did act


class _FixedDraws:
  """A stand-in for np.random.Generator returning chosen flips and shifts."""

  def __init__(self, flips, shifts):
    self.flips, self.shifts = np.asarray(flips, float), np.asarray(shifts)

  def random(self, n):
    return self.flips[:n]

  def integers(self, low, high, size):
    return self.shifts


def test_augment_flip_and_shift_against_hand_computed_images():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) + 1
  batch = {"image": np.concatenate([image, image]), "mask": np.concatenate([image, image])[..., 0]}
  # Image 0: flipped, not shifted. Image 1: not flipped, shifted down 1 row and left 1 column.
  out = pipeline.augment(batch, _FixedDraws([0.1, 0.9], [[0, 1], [0, -1]]),
                         pipeline.Augmentation(flip=True, shift=1))
  np.testing.assert_array_equal(out["image"][0, ..., 0], image[0, :, ::-1, 0])
  expected = np.zeros((4, 4), np.uint8)
  expected[1:, :3] = image[0, :3, 1:, 0]
  np.testing.assert_array_equal(out["image"][1, ..., 0], expected)
  np.testing.assert_array_equal(out["mask"][1], expected)  # masks move with the pixels


def test_augmented_pipeline_drops_coordinates_it_does_not_transform():
  class WithBoxes(ArraySource):
    def read_batch(self, indices):
      return {**super().read_batch(indices), "bbox": np.zeros((len(indices), 4), np.float32)}
  data = pipeline.train_pipeline(WithBoxes(n=32), batch_size=8, seed=0, fields=("image", "bbox"),
                                 augmentation=pipeline.Augmentation(flip=True))
  assert set(next(data.iterator())) == {"image"}


def test_normalization_and_input_bounds_closed_form():
  info = ArraySource().info  # mean 0.5, std 0.25
  pixels = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1)
  for name, expected in (("unit", [0.0, 1.0]), ("symmetric", [-1.0, 1.0]),
                         ("standardize", [-2.0, 2.0])):
    mean, std = pipeline.normalization_constants(info, name)
    np.testing.assert_allclose(pipeline.normalize(pixels, mean, std).ravel(), expected, atol=1e-6)
    low, high = pipeline.input_bounds(info, name)
    np.testing.assert_allclose([low[0], high[0]], expected, atol=1e-6)
  with pytest.raises(ConfigError, match="Unknown normalization 'zscore'"):
    pipeline.normalization_constants(info, "zscore")


def test_eval_batches_cover_every_example_once_with_padding_flagged():
  source = ArraySource(n=37)
  batches = list(pipeline.eval_batches(source, batch_size=16))
  assert [b["image"].shape[0] for b in batches] == [16, 16, 16]
  valid = np.concatenate([b["index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(valid, np.arange(37))
  assert sum(int(b["valid"].sum()) for b in batches) == 37


def test_holdout_split_is_disjoint_complete_and_fixed():
  source = ArraySource(n=50)
  train = registry.holdout_split(source, "train", 0.2)
  val = registry.holdout_split(source, "validation", 0.2)
  assert (len(train), len(val)) == (40, 10)
  assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
  assert sorted(train.indices.tolist() + val.indices.tolist()) == list(range(50))
  np.testing.assert_array_equal(val.indices,
                                registry.holdout_split(source, "validation", 0.2).indices)
  np.testing.assert_array_equal(val.read_batch(np.array([0, 1]))["label"],
                                source.labels[val.indices[:2]])


def test_registry_errors_name_the_valid_choices():
  with pytest.raises(ConfigError, match="Unknown dataset 'imagenet'.*mnist"):
    registry.get_source("imagenet", "train")
  with pytest.raises(ConfigError, match="Unknown split 'dev'"):
    registry.get_source("shapes", "dev")


def test_batch_larger_than_the_data_is_a_clear_error():
  with pytest.raises(ConfigError, match="larger than the dataset"):
    pipeline.train_pipeline(ArraySource(n=10), batch_size=16, seed=0)


def test_an_option_the_source_does_not_take_lists_the_ones_it_does():
  with pytest.raises(ConfigError, match="does not take the options \\['colour'\\].*image_size"):
    registry.get_source("shapes", "train", colour="red")
