"""One input pipeline for every source: deterministic order, batching, augmentation, host sharding.

Built on grain's `MapDataset`, and made of random access all the way down: batch `k` of a run is
a pure function of `(seed, k)`. The iterator's checkpointable state is therefore one integer
(grain's `{"next_index": k}`), a restarted run reads exactly the batches it would have read, and
the order does not depend on how many threads prefetch or how many devices share the batch.

Epoch `e` visits the source in the order of a permutation drawn from `(seed, e)`; the global batch
`k` of that epoch is `perm[k * B:(k + 1) * B]` (a last incomplete batch is dropped); with several
hosts, process `p` of `P` reads rows `[p * B / P, (p + 1) * B / P)` of every global batch, so
together they read the same global batch as one host would.

Images leave the pipeline as float32, normalised (`unit`: [0, 1]; `symmetric`: [-1, 1];
`standardize`: per-channel mean / std of the dataset). `input_bounds` gives the per-channel range
of the normalised pixels, which the z^B rule of Deep Taylor Decomposition needs (Montavon et al.,
"Explaining nonlinear classification decisions with deep Taylor decomposition", 2017): the image
of the pixel box [0, 1] under the normalisation.

Token ids (a source whose `info.vocab_size` is set, e.g. `planted_text`) leave the pipeline as
they came, int32 (B, T), in the same field `image`, so the train and eval steps read them as
they read images: the normalisation does not apply to them, and augmentation is an error.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import grain
import numpy as np

from xjax.data.source import DatasetInfo, Source
from xjax.errors import ConfigError

NORMALIZATIONS = ("unit", "symmetric", "standardize")
# Fields that move with the pixels under a flip or shift; coordinates (keypoints, bbox) are not
# transformed, so augmented pipelines drop them rather than return wrong ones.
_PIXEL_FIELDS = ("image", "mask", "second_mask")
_COORDINATE_FIELDS = ("keypoints", "keypoints_visible", "bbox")


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Random horizontal flips and integer shifts of up to `shift` pixels (zero padded)."""

  flip: bool = False
  shift: int = 0

  @property
  def active(self) -> bool:
    return self.flip or self.shift > 0


def normalization_constants(info: DatasetInfo, normalization: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std), in [0, 1] pixel units, that `normalize` subtracts and divides by."""
  channels = info.image_shape[-1]
  if normalization == "unit":
    mean, std = (0.0,) * channels, (1.0,) * channels
  elif normalization == "symmetric":
    mean, std = (0.5,) * channels, (0.5,) * channels
  elif normalization == "standardize":
    if info.mean is None or info.std is None:
      raise ConfigError(
          f"normalization='standardize' needs the pixel mean and std of {info.name!r}, which its "
          f"source does not provide; use one of 'unit' or 'symmetric'.")
    mean, std = info.mean, info.std
  else:
    raise ConfigError(f"Unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}.")
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def input_bounds(info: DatasetInfo, normalization: str) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (low, high) of normalised pixels: the box of the z^B rule (deep Taylor)."""
  mean, std = normalization_constants(info, normalization)
  return (0.0 - mean) / std, (1.0 - mean) / std


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """uint8 images (..., C) -> float32 `(x / 255 - mean) / std`."""
  return ((images.astype(np.float32) / 255.0) - mean) / std


def input_transform(info: DatasetInfo, normalization: str):
  """The function from a source's `image` field to the model's input: `normalize` for uint8
  images, int32 ids passed through unchanged for a token dataset (`info.vocab_size` set)."""
  if normalization not in NORMALIZATIONS:
    raise ConfigError(f"Unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}.")
  if info.vocab_size is not None:
    return lambda ids: np.asarray(ids, np.int32)
  mean, std = normalization_constants(info, normalization)
  return lambda images: normalize(images, mean, std)


def augment(batch: dict[str, np.ndarray], rng: np.random.Generator,
            augmentation: Augmentation, global_size: int | None = None,
            offset: int = 0) -> dict[str, np.ndarray]:
  """Flips and shifts every pixel field of a batch with the same per-image random draws.

  The draws are made for the whole global batch (`global_size` rows, default the batch's) and
  this process keeps rows `offset:offset + n`: every process draws from the same generator for
  the same step, so the processes' rows together get the one-process run's draws.
  """
  n, height, width = batch["image"].shape[:3]
  total = n if global_size is None else global_size
  rows_of_this_process = slice(offset, offset + n)
  flips = (rng.random(total) < 0.5 if augmentation.flip else np.zeros(total, bool))
  flips = flips[rows_of_this_process]
  s = augmentation.shift
  dy, dx = (rng.integers(-s, s + 1, size=(2, total)) if s > 0
            else np.zeros((2, total), np.int64))[:, rows_of_this_process]
  rows = np.arange(height)[None, :] - dy[:, None]  # (n, H): source row of each output row
  cols = np.arange(width)[None, :] - dx[:, None]
  cols = np.where(flips[:, None], width - 1 - cols, cols)
  inside = (((rows >= 0) & (rows < height))[:, :, None]
            & ((cols >= 0) & (cols < width))[:, None, :])
  rows, cols = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
  out = dict(batch)
  for name in _PIXEL_FIELDS:
    if name in batch:
      x = batch[name][np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
      keep = inside if x.ndim == 3 else inside[..., None]
      out[name] = np.where(keep, x, 0).astype(batch[name].dtype)
  return out


class _EpochBatchIndices:
  """Maps a step to the source indices this process reads (see the module docstring)."""

  def __init__(self, num_examples: int, global_batch_size: int, seed: int, shuffle: bool,
               process_index: int, process_count: int):
    if global_batch_size % process_count:
      raise ConfigError(f"The global batch size {global_batch_size} must be divisible by the "
                        f"number of processes {process_count}.")
    self.steps_per_epoch = num_examples // global_batch_size
    if self.steps_per_epoch == 0:
      raise ConfigError(f"The batch size {global_batch_size} is larger than the dataset "
                        f"({num_examples} examples).")
    self._n, self._batch, self._seed, self._shuffle = num_examples, global_batch_size, seed, shuffle
    self._local = global_batch_size // process_count
    self._offset = process_index * self._local

  # The plan lives exactly as long as its pipeline (only `read` holds it) and the cache holds at
  # most two orders (the epochs either side of a boundary, read by concurrent threads).
  @functools.lru_cache(maxsize=2)  # noqa: B019 (one plan per pipeline; cache bounded to 2 entries)
  def _order(self, epoch: int) -> np.ndarray:
    if not self._shuffle:
      return np.arange(self._n)
    return np.random.default_rng([self._seed, epoch]).permutation(self._n)

  def __call__(self, step: int) -> np.ndarray:
    epoch, k = divmod(int(step), self.steps_per_epoch)
    start = k * self._batch + self._offset
    return self._order(epoch)[start:start + self._local]


@dataclasses.dataclass
class TrainPipeline:
  """An endless, checkpointable stream of training batches (see `train_pipeline`)."""

  dataset: grain.MapDataset
  steps_per_epoch: int
  read_options: grain.ReadOptions

  def iterator(self, state: dict | None = None) -> grain.DatasetIterator:
    """A fresh iterator; `state` (from `iterator.get_state()`) resumes at that batch."""
    iterator = iter(self.dataset.to_iter_dataset(self.read_options))
    if state is not None:
      iterator.set_state(state)
    return iterator


def _select_fields(batch: dict[str, np.ndarray], fields: tuple[str, ...] | None):
  return batch if fields is None else {k: v for k, v in batch.items() if k in fields}


def train_pipeline(source: Source, *, batch_size: int, seed: int, normalization: str = "unit",
                   augmentation: Augmentation = Augmentation(), num_epochs: int = 1000,
                   fields: tuple[str, ...] | None = None, process_index: int = 0,
                   process_count: int = 1, num_threads: int = 2,
                   prefetch: int = 4) -> TrainPipeline:
  """Shuffled, augmented, normalised batches of `batch_size // process_count` for this process.

  Args:
    source: any `xjax.data.source.Source`.
    batch_size: the global batch size, summed over processes.
    seed: fixes the order of every epoch and every augmentation draw.
    normalization: one of `NORMALIZATIONS`.
    augmentation: flips / shifts applied to the pixel fields; coordinate fields are dropped.
    num_epochs: length of the stream in epochs (a run stops earlier by itself).
    fields: the record fields to keep (default: all the source provides).
    process_index, process_count: this host's place among the hosts (`jax.process_index()`).
    num_threads, prefetch: grain's reading threads and prefetch buffer, in batches.

  Returns:
    A `TrainPipeline`; batch `k` is the same whatever the threads, hosts or restarts.
  """
  plan = _EpochBatchIndices(len(source), batch_size, seed, True, process_index, process_count)
  transform = input_transform(source.info, normalization)
  if augmentation.active and source.info.vocab_size is not None:
    raise ConfigError(f"Augmentation flips and shifts images; {source.info.name!r} is token "
                      f"sequences: set data.augmentation to flip=False, shift=0.")
  if augmentation.active:
    fields = tuple(f for f in (fields or source.info.fields) if f not in _COORDINATE_FIELDS)

  def read(step: int) -> dict[str, np.ndarray]:
    return _select_fields(source.read_batch(plan(step)), fields)

  def finish(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**batch, "image": transform(batch["image"])}

  dataset = grain.MapDataset.range(num_epochs * plan.steps_per_epoch).map(read)
  if augmentation.active:
    dataset = dataset.random_map(
        lambda b, rng: augment(b, rng, augmentation, batch_size,
                               process_index * (batch_size // process_count)), seed=seed)
  dataset = dataset.map(finish)
  return TrainPipeline(dataset, plan.steps_per_epoch,
                       grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


def eval_batches(source: Source, *, batch_size: int, normalization: str = "unit",
                 fields: tuple[str, ...] | None = None, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in batches padded to `batch_size // process_count` rows.

  Each batch has a boolean field `valid` that is False on the padding rows, so metrics can weight
  them out and every batch has the same shape (one compilation, divisible by the device count).
  """
  if batch_size % process_count:
    raise ConfigError(f"The eval batch size {batch_size} must be divisible by the number of "
                      f"processes {process_count}.")
  transform = input_transform(source.info, normalization)
  local = batch_size // process_count
  n = len(source)
  for start in range(0, n, batch_size):
    indices = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = indices < n
    batch = _select_fields(source.read_batch(np.where(valid, indices, n - 1)), fields)
    batch["image"] = transform(batch["image"])
    batch["valid"] = valid
    yield batch
