"""Sources padded to a larger square: MNIST's 28x28 digits on the 32x32 canvas of LeNet-style nets.

The heatmapping.org tutorial networks (Montavon, Samek, Mueller, DSP 2018) take MNIST "padded to
32x32 with -1", i.e. with black pixels: padding the uint8 images with 0 gives exactly that after
the `symmetric` normalization, and 0 after `unit`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xjax.data.source import DatasetInfo, Source
from xjax.errors import ConfigError


class Padded:
  """`source` with every image padded with zeros (black) to `size` x `size`, centred.

  Keypoints and boxes move with the image; masks are padded with zeros like it.
  """

  def __init__(self, source: Source, size: int):
    height, width, channels = source.info.image_shape
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < max(height,
                                                                                         width):
      raise ConfigError(f"pad_to must be an int >= the images' size {height}x{width} of "
                        f"{source.info.name!r}; got {size!r}.")
    self.source = source
    self.top, self.left = (size - height) // 2, (size - width) // 2
    self.pads = ((self.top, size - height - self.top), (self.left, size - width - self.left))
    self.info: DatasetInfo = dataclasses.replace(source.info, image_shape=(size, size, channels))

  def __len__(self) -> int:
    return len(self.source)

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    batch = dict(self.source.read_batch(indices))
    no_pad = ((0, 0),)
    batch["image"] = np.pad(batch["image"], no_pad + self.pads + no_pad)
    for name in ("mask", "second_mask"):
      if name in batch:
        batch[name] = np.pad(batch[name], no_pad + self.pads)
    offset = np.array([self.left, self.top], np.float32)  # (x, y)
    if "keypoints" in batch:
      batch["keypoints"] = batch["keypoints"] + offset
    if "bbox" in batch:
      batch["bbox"] = batch["bbox"] + np.tile(offset, 2)
    return batch
