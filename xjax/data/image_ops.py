"""Small image helpers shared by the real-data sources: PIL loading and resizing, point transforms.

Coordinates follow the continuous pixel convention of the `Source` contract: a point (x, y) lies
in the image [0, W] x [0, H]; resizing an image from (H, W) to (H', W') maps it to
(x * W'/W, y * H'/H), and cropping the box [x0, x1] x [y0, y1] first subtracts (x0, y0).
"""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from xjax.errors import UnreadableDataError

# Decoded caches larger than this are off by default (the sources' `cache=None`).
DEFAULT_CACHE_BYTES = 1 << 30
# What PIL raises for a missing, truncated or corrupt file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# The setting that skips unreadable images, as the error messages name it.
SKIP_OPTION = "data.skip_unreadable=True"


def load_rgb(path: str | pathlib.Path) -> np.ndarray:
  """Reads an image file as uint8 RGB (H, W, 3); grayscale / CMYK / palette files are converted."""
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def image_size_of(path: str | pathlib.Path) -> tuple[int, int]:
  """Returns (H, W) of an image file, reading only its header."""
  with Image.open(path) as img:
    w, h = img.size
  return h, w


def unreadable_reason(error: BaseException) -> str:
  """A short one-line reason for a decoding error (PIL's own messages may repeat the path)."""
  if isinstance(error, FileNotFoundError):
    return "no such file"
  if isinstance(error, UnidentifiedImageError):
    return "not an image file PIL can identify"
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def check_image(path: str | pathlib.Path) -> str | None:
  """None if the image file decodes, else the reason (`unreadable_reason`).

  JPEGs are decoded at 1/8 scale (PIL's draft mode), which still reads every byte of the file, so a
  truncated or corrupt one fails as it would at full size, at a fraction of the cost.
  """
  try:
    with Image.open(path) as img:
      img.draft("RGB", (1, 1))
      img.load()
  except DECODE_ERRORS as e:
    return unreadable_reason(e)
  return None


def check_images(paths: Sequence[str | pathlib.Path], num_threads: int = 8) -> list[str | None]:
  """`check_image` of every path, in order, decoded by `num_threads` threads."""
  with ThreadPoolExecutor(max_workers=num_threads) as pool:
    return list(pool.map(check_image, paths))


def unreadable_error(path: str | pathlib.Path, reason: str, listed_at: str) -> UnreadableDataError:
  """The one-line error for an image file that cannot be read.

  Args:
    path: the image file.
    reason: why it cannot be read, e.g. from `unreadable_reason`.
    listed_at: the annotation line that lists it, e.g. "images.txt line 56".
  """
  return UnreadableDataError(f"cannot read image {path}: {reason} (listed at {listed_at}); restore "
                             f"the file, or set {SKIP_OPTION} to skip unreadable images")


def skipped_line(root: str | pathlib.Path, skipped: Sequence[tuple[str, str]]) -> str:
  """The line a source prints after skipping unreadable images: how many, where, the first."""
  file, reason = skipped[0]
  return f"skipped {len(skipped)} unreadable images in {root} (first: {file}: {reason})"


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 (H, W, C) image to size=(H', W') with PIL's antialiased bilinear filter."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  if image.ndim == 3 and image.shape[2] == 1:
    out = Image.fromarray(image[:, :, 0]).resize((w, h), Image.BILINEAR)
    return np.asarray(out, dtype=np.uint8)[:, :, None]
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def crop_box(box: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
  """The integer pixel window (x0, y0, x1, y1) that covers a float box, clipped to an (H, W) image.

  The window is at least one pixel wide and high, so a degenerate box still gives an image.
  """
  h, w = hw
  x0 = int(np.clip(np.floor(box[0]), 0, w - 1))
  y0 = int(np.clip(np.floor(box[1]), 0, h - 1))
  x1 = int(np.clip(np.ceil(box[2]), x0 + 1, w))
  y1 = int(np.clip(np.ceil(box[3]), y0 + 1, h))
  return x0, y0, x1, y1


def transform_points(points: np.ndarray, offset: tuple[float, float],
                     scale: tuple[float, float]) -> np.ndarray:
  """Maps (..., 2) points (x, y) to ((x - ox) * sx, (y - oy) * sy): a crop followed by a resize."""
  out = np.asarray(points, np.float32).copy()
  out[..., 0] = (out[..., 0] - offset[0]) * scale[0]
  out[..., 1] = (out[..., 1] - offset[1]) * scale[1]
  return out


def transform_boxes(boxes: np.ndarray, offset: tuple[float, float],
                    scale: tuple[float, float]) -> np.ndarray:
  """Maps (..., 4) boxes (x_min, y_min, x_max, y_max) like `transform_points`."""
  pts = np.asarray(boxes, np.float32).reshape(*np.shape(boxes)[:-1], 2, 2)
  return transform_points(pts, offset, scale).reshape(np.shape(boxes))


class ImageCache:
  """Decoded images of a source, filled lazily by index, so later epochs skip the JPEG decoding.

  `get(indices, load)` returns the (n, H, W, C) batch, calling `load(i)` only for images not seen
  before. Concurrent readers (threads of a data loader) may decode the same image twice, which is
  harmless: both write the same pixels. With `enabled=False` every call decodes.
  """

  def __init__(self, num: int, shape: tuple[int, int, int], enabled: bool):
    self.shape = tuple(shape)
    self.enabled = enabled
    self._num = num
    self._images: np.ndarray | None = None
    self._filled = np.zeros(num if enabled else 0, dtype=bool)
    self._lock = threading.Lock()

  def get(self, indices: np.ndarray, load: Callable[[int], np.ndarray]) -> np.ndarray:
    out = np.empty((len(indices), *self.shape), dtype=np.uint8)
    if not self.enabled:
      for k, i in enumerate(indices):
        out[k] = load(int(i))
      return out
    if self._images is None:
      with self._lock:
        if self._images is None:
          # np.empty only reserves memory; pages are committed as images are filled in.
          self._images = np.empty((self._num, *self.shape), dtype=np.uint8)
    for k, i in enumerate(indices):
      i = int(i)
      if not self._filled[i]:
        self._images[i] = load(i)
        self._filled[i] = True
      out[k] = self._images[i]
    return out

  def __getstate__(self):
    # Worker processes of a data loader start with an empty cache instead of a copy of the pixels.
    state = self.__dict__.copy()
    state["_images"] = None
    state["_filled"] = np.zeros_like(self._filled)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()


def cache_enabled(cache: bool | None, num: int, shape: tuple[int, int, int]) -> bool:
  """`cache` if given, else whether the decoded images fit in `DEFAULT_CACHE_BYTES`."""
  if cache is not None:
    return bool(cache)
  return num * int(np.prod(shape)) < DEFAULT_CACHE_BYTES
