"""Caltech-UCSD Birds-200-2011 (CUB) read from a local folder in the original layout, without TFDS.

CUB: Wah, Branson, Welinder, Perona & Belongie, "The Caltech-UCSD Birds-200-2011 Dataset", Caltech
technical report CNS-TR-2011-001 (https://www.vision.caltech.edu/datasets/cub_200_2011/). The layout
under `root` (the extracted CUB_200_2011/ folder):

  images/<class>/<name>.jpg     images of varying size
  images.txt                    `<image_id> <class>/<name>.jpg`
  image_class_labels.txt        `<image_id> <class_id>` (1..200)
  train_test_split.txt          `<image_id> <is_training_image>` (1 train, 0 test)
  bounding_boxes.txt            `<image_id> <x> <y> <width> <height>` in pixels
  classes.txt                   `<class_id> <class_name>`
  parts/parts.txt               `<part_id> <part name>` (15 parts; names with spaces); optional
  parts/part_locs.txt           `<image_id> <part_id> <x> <y> <visible>` in pixels; optional

Boxes and parts are in pixels of the original images; `annotation_scale` converts them to the
pixels of the files at hand (0.25 for the offline subset, whose images were downscaled by 4).

A listed image that is absent, truncated or corrupt is an `UnreadableDataError` naming the file and
its line in images.txt (absent files at construction, undecodable ones when read), unless
`skip_unreadable`: then every image of the split is decoded once at construction and the unreadable
ones are left out (`skipped`).

An annotation file cut short or damaged is an `UnreadableDataError` naming it and the line (or the
image_id), whatever `skip_unreadable`: each row must have all the fields of its format, numbers
where numbers belong, and no id twice; the per-image files (and part_locs.txt, one row per image and
part) must list exactly the images of images.txt; the class ids and part ids must be in classes.txt
and parts.txt.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from xjax.data import image_ops
from xjax.data.registry import DATASETS
from xjax.data.source import DatasetInfo
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

SPLITS = ("train", "test", "all")
_REQUIRED = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt",
             "classes.txt", "images")
_LAYOUT = ("images/<class>/<name>.jpg, images.txt, image_class_labels.txt, train_test_split.txt, "
           "bounding_boxes.txt, classes.txt, and optionally parts/parts.txt + parts/part_locs.txt")
# The annotation files: the kind of each field ("n" a positive integer, as ids are; "f" a finite
# number; "b" 0 or 1; "s" text) and the format that the error messages show.
_FORMATS = {
    "images.txt": ("ns", "<image_id> <class>/<name>.jpg"),
    "image_class_labels.txt": ("nn", "<image_id> <class_id>"),
    "train_test_split.txt": ("nb", "<image_id> <is_training_image>"),
    "bounding_boxes.txt": ("nffff", "<image_id> <x> <y> <width> <height>"),
    "classes.txt": ("ns", "<class_id> <class_name>"),
    "parts/parts.txt": ("ns", "<part_id> <part_name>"),
    "parts/part_locs.txt": ("nnffb", "<image_id> <part_id> <x> <y> <visible>"),
}
_KIND_NAMES = {"n": "a positive integer", "f": "a number", "b": "0 or 1"}
# The annotation_scale check: images sampled, tolerance, fraction of images allowed outside.
_CHECK_SAMPLE, _CHECK_TOLERANCE, _CHECK_FRACTION = 256, 1.05, 0.05


def _read_table(root: pathlib.Path, name: str, key: int = 1
                ) -> dict[str | tuple[str, ...], tuple[int, list]]:
  """Parses annotation file `name` of `_FORMATS` under `root`.

  The checks catch a file cut short or damaged: each non-blank line has the fields of the format,
  numbers where it has numbers, and no key (the first `key` fields) twice.

  Returns:
    {key: (its 1-based line number, its fields converted)}, in file order; the key is the first
    field as written (an id), or with key > 1 the tuple of the first `key` fields.

  Raises:
    UnreadableDataError: one of the checks fails; the message names the file and the line.
  """
  path = root / name
  kinds, form = _FORMATS[name]
  labels = [f.strip("<>") for f in form.split()]
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise UnreadableDataError(f"{path} is not a text file: byte {e.start} does not decode as "
                              f"{e.encoding}") from e
  # A text field last takes the rest of the line: CUB's part names have spaces.
  maxsplit = len(kinds) - 1 if kinds[-1] == "s" else -1
  rows = {}
  for num, line in enumerate(text.splitlines(), start=1):
    parts = line.split(maxsplit=maxsplit)
    if not parts:
      continue
    if len(parts) != len(kinds):
      raise UnreadableDataError(f"{path} line {num} has {_count(len(parts), 'field')}, expected "
                                f"{len(kinds)}: `{form}`")
    values = []
    for kind, label, field in zip(kinds, labels, parts):
      if kind == "s":
        values.append(field)
        continue
      try:
        value = float(field) if kind == "f" else int(field)
      except ValueError:
        value = None
      if (value is None or not math.isfinite(value) or (kind == "b" and value not in (0, 1))
          or (kind == "n" and value < 1)):
        raise UnreadableDataError(f"{path} line {num}: {label} is {field!r}, not "
                                  f"{_KIND_NAMES[kind]}")
      values.append(value)
    k = parts[0] if key == 1 else tuple(parts[:key])
    if k in rows:
      ids = " ".join(f"{label} {v}" for label, v in zip(labels, parts[:key]))
      raise UnreadableDataError(f"{path} line {num} repeats {ids} of line {rows[k][0]}")
    rows[k] = (num, values)
  return rows


def _count(n: int, noun: str) -> str:
  """`n` and the noun, plural unless n is 1: "1 field", "4 fields"."""
  return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _check_images(root: pathlib.Path, name: str, ids: dict[str, int],
                  image_ids: dict[str, int]) -> None:
  """Raises UnreadableDataError unless annotation file `name` has rows for exactly the images of
  images.txt: the check that catches either file cut short.

  Args:
    root: the CUB folder.
    name: the file, as in `_FORMATS`.
    ids: {image_id: its first line} in file `name`.
    image_ids: {image_id: its line} in images.txt.
  """
  if lacking := [i for i in image_ids if i not in ids]:
    raise UnreadableDataError(
        f"{root / name} has no row for {_count(len(lacking), 'image')} of images.txt, e.g. "
        f"image_id {lacking[0]} (images.txt line {image_ids[lacking[0]]})")
  if extra := [i for i in ids if i not in image_ids]:
    raise UnreadableDataError(
        f"{root / name} has rows for {_count(len(extra), 'image')} not in images.txt, e.g. "
        f"image_id {extra[0]} at line {ids[extra[0]]} (images.txt cut short?)")


def _nice_scale(scale: float) -> float:
  """Snaps a suggested scale to the nearest power of two within 5%, else to 3 significant digits."""
  power = 2.0 ** np.round(np.log2(scale))
  return float(power) if abs(scale / power - 1) < 0.05 else float(f"{scale:.3g}")


@DATASETS.register("caltech_birds2011_local", subdir="caltech_birds2011/CUB_200_2011",
                   holdout=True)
class CubFolder:
  """A split of CUB-200-2011 read from `root` (module docstring), with PIL and an optional cache.

  Fields (xjax.data.source): image, label, index, bbox (x_min, y_min, x_max, y_max) and, with the
  parts files, keypoints (n, 15, 2) + keypoints_visible, all in pixels of the returned image. Boxes
  are clipped to the image (some reach a fraction of a pixel beyond it after scaling). Parts that
  are not visible have (0, 0); with crop="bbox", a part outside the crop is marked not visible.

  Args:
    root: the CUB_200_2011 folder.
    split: "train" or "test" (train_test_split.txt), or "all".
    image_size: (H, W) of the returned images.
    crop: "none", or "bbox" to crop each image to its bounding box before resizing.
    annotation_scale: factor from the annotation files' pixels to the image files' pixels.
    classes: "present": the class ids in image_class_labels.txt for the images of images.txt, mapped
      to 0..K-1 in sorted order; "all": class_id - 1, with all classes of classes.txt (200).
    cache: keep decoded (cropped, resized) images in memory; default: on below 1 GiB.
    skip_unreadable: leave out the images of the split that are absent or do not decode (each is
      decoded once here, JPEGs at 1/8 scale); they are listed in `skipped` as (file, reason), and
      one line says how many. Off: such an image raises UnreadableDataError.

  Raises:
    ConfigError: bad options, or an annotation_scale under which more than 5% of the (sampled)
      images have boxes reaching beyond 1.05 times their size; the message suggests a scale.
    DataNotFoundError: files missing under root.
    UnreadableDataError: an annotation file is cut short or malformed (whatever
      `skip_unreadable`; the message names it and the line or the image_id), or a listed image of
      the split is absent (here) or does not decode (when read or sampled for the scale check) and
      `skip_unreadable` is off (the message names the file and its line in images.txt).
  """

  def __init__(self, root: str | os.PathLike, split: str, *,
               image_size: tuple[int, int] = (224, 224), crop: str = "none",
               annotation_scale: float = 1.0, classes: str = "present", cache: bool | None = None,
               skip_unreadable: bool = False):
    self.root = pathlib.Path(root).expanduser()
    if split not in SPLITS:
      raise ConfigError(f"unknown CUB split {split!r}; splits: {', '.join(SPLITS)}")
    if crop not in ("none", "bbox"):
      raise ConfigError(f"unknown crop {crop!r}; use 'none' or 'bbox'")
    if classes not in ("present", "all"):
      raise ConfigError(f"unknown classes {classes!r}; use 'present' or 'all'")
    if not annotation_scale > 0:
      raise ConfigError(f"annotation_scale must be positive, got {annotation_scale}")
    missing = [name for name in _REQUIRED if not (self.root / name).exists()]
    if missing:
      raise DataNotFoundError(f"CUB folder {self.root} lacks {', '.join(missing)}; expected under "
                              f"root: {_LAYOUT}")
    self.split, self.crop, self.annotation_scale = split, crop, float(annotation_scale)
    self.image_size = (int(image_size[0]), int(image_size[1]))

    images = _read_table(self.root, "images.txt")
    paths = {i: v[1] for i, (_, v) in images.items()}
    line_of = {i: num for i, (num, _) in images.items()}
    tables = {}
    for name in ("image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt"):
      tables[name] = _read_table(self.root, name)
      _check_images(self.root, name, {i: num for i, (num, _) in tables[name].items()}, line_of)
    labels = {i: v[1] for i, (_, v) in tables["image_class_labels.txt"].items()}
    is_train = {i: v[1] == 1 for i, (_, v) in tables["train_test_split.txt"].items()}
    boxes = {i: v[1:5] for i, (_, v) in tables["bounding_boxes.txt"].items()}
    class_rows = {v[0]: v[1] for _, v in _read_table(self.root, "classes.txt").values()}
    if unnamed := [i for i in paths if labels[i] not in class_rows]:
      num, _ = tables["image_class_labels.txt"][unnamed[0]]
      more = f" ({len(unnamed)} images in all)" if len(unnamed) > 1 else ""
      raise UnreadableDataError(
          f"{self.root / 'image_class_labels.txt'} line {num}: class_id {labels[unnamed[0]]} is "
          f"not in {self.root / 'classes.txt'}{more}")

    if classes == "present":
      class_ids = sorted({labels[i] for i in paths})
    else:
      class_ids = list(range(1, max(class_rows) + 1))
    to_label = {c: k for k, c in enumerate(class_ids)}
    self.classes = classes
    class_names = tuple(class_rows.get(c, str(c)) for c in class_ids)

    image_dir = self.root / "images"
    ids = list(paths)
    if split != "all":
      ids = [i for i in ids if is_train[i] == (split == "train")]
    absent = [i for i in ids if not (image_dir / paths[i]).is_file()]
    if len(absent) == len(ids) and not any((image_dir / p).is_file() for p in paths.values()):
      raise DataNotFoundError(f"no image of images.txt found under {image_dir}; "
                              f"expected under root: {_LAYOUT}")
    self.skipped: list[tuple[str, str]] = []
    if absent and not skip_unreadable:
      more = f"; {len(absent) - 1} more listed images are absent too" if len(absent) > 1 else ""
      raise image_ops.unreadable_error(image_dir / paths[absent[0]], f"no such file{more}",
                                       f"images.txt line {line_of[absent[0]]}")
    if skip_unreadable:
      reasons = dict.fromkeys(absent, "no such file")
      kept = [i for i in ids if i not in reasons]
      reasons.update((i, r) for i, r in zip(kept, image_ops.check_images(
          [image_dir / paths[i] for i in kept])) if r is not None)
      self.skipped = [(paths[i], reasons[i]) for i in ids if i in reasons]
      ids = [i for i in ids if i not in reasons]
      if self.skipped:
        print(image_ops.skipped_line(self.root, self.skipped), flush=True)
    self.image_ids = tuple(ids)
    self._lines = tuple(line_of[i] for i in ids)
    self.files = tuple(paths[i] for i in ids)
    n = len(ids)
    self._labels = np.array([to_label[labels[i]] for i in ids], dtype=np.int32).reshape(n)
    b = np.array([boxes[i] for i in ids], dtype=np.float64).reshape(n, 4)
    # (x, y, width, height) -> (x_min, y_min, x_max, y_max), in pixels of the image files.
    self._boxes = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1) * self.annotation_scale

    self.part_names: tuple[str, ...] = ()
    self._parts = self._visible = None
    parts_dir = self.root / "parts"
    if (parts_dir / "parts.txt").is_file() and (parts_dir / "part_locs.txt").is_file():
      part_rows = sorted(v for _, v in _read_table(self.root, "parts/parts.txt").values())
      self.part_names = tuple(name for _, name in part_rows)
      part_ids = [pid for pid, _ in part_rows]
      locs = _read_table(self.root, "parts/part_locs.txt", key=2)
      first_line: dict[str, int] = {}
      for (i, _), (num, _) in locs.items():
        first_line.setdefault(i, num)
      _check_images(self.root, "parts/part_locs.txt", first_line, line_of)
      known = set(part_ids)
      at = {}  # (image_id, part_id) -> (x, y, visible)
      for (i, _), (num, (_, pid, x, y, visible)) in locs.items():
        if pid not in known:
          raise UnreadableDataError(f"{parts_dir / 'part_locs.txt'} line {num}: part_id {pid} is "
                                    f"not in {parts_dir / 'parts.txt'}")
        at[i, pid] = (x, y, visible)
      # CUB lists every part of every image (x = y = 0, visible = 0 where not seen): a gap is a
      # damaged file, not a part that was never seen.
      if missing := len(paths) * len(part_ids) - len(at):
        i, pid = next((i, p) for i in paths for p in part_ids if (i, p) not in at)
        more = f" nor for {missing - 1} more" if missing > 1 else ""
        raise UnreadableDataError(
            f"{parts_dir / 'part_locs.txt'} has no row for image_id {i} part_id {pid}{more}; it "
            f"needs one per image of images.txt and part of parts.txt")
      self._parts = np.array([[at[i, p][:2] for p in part_ids] for i in ids],
                             dtype=np.float64).reshape(n, len(part_ids), 2) * self.annotation_scale
      self._visible = np.array([[at[i, p][2] == 1 for p in part_ids] for i in ids],
                               dtype=bool).reshape(n, len(part_ids))

    # (H, W) of each image file, read when the image is first loaded (or by the scale check).
    self._sizes = np.zeros((n, 2), dtype=np.int64)
    self._check_scale()

    shape = (*self.image_size, 3)
    fields = ("image", "label", "index", "bbox")
    if self._parts is not None:
      fields += ("keypoints", "keypoints_visible")
    self.info = DatasetInfo(name="caltech_birds2011", image_shape=shape, num_classes=len(class_ids),
                            class_names=class_names, part_names=self.part_names, fields=fields)
    self._cache = image_ops.ImageCache(n, shape, image_ops.cache_enabled(cache, n, shape))

  def _unreadable(self, k: int, error: BaseException) -> Exception:
    return image_ops.unreadable_error(self.root / "images" / self.files[k],
                                      image_ops.unreadable_reason(error),
                                      f"images.txt line {self._lines[k]}")

  def _size(self, k: int) -> np.ndarray:
    if not self._sizes[k, 0]:
      try:
        self._sizes[k] = image_ops.image_size_of(self.root / "images" / self.files[k])
      except image_ops.DECODE_ERRORS as e:
        raise self._unreadable(k, e) from e
    return self._sizes[k]

  def _check_scale(self) -> None:
    """Raises ConfigError if the scaled boxes of many (sampled) images reach beyond the images."""
    n = len(self.files)
    if not n:
      return
    sample = np.unique(np.linspace(0, n - 1, min(n, _CHECK_SAMPLE)).round().astype(np.int64))
    sizes = np.array([self._size(k) for k in sample], dtype=np.float64)  # (H, W)
    extent = np.maximum(self._boxes[sample, 2] / sizes[:, 1], self._boxes[sample, 3] / sizes[:, 0])
    if np.mean(extent > _CHECK_TOLERANCE) > _CHECK_FRACTION:
      # The largest scale at which 95% of the sampled boxes fit in their images.
      suggested = _nice_scale(self.annotation_scale / np.percentile(extent, 95))
      raise ConfigError(
          f"CUB boxes in {self.root} do not fit the image files with annotation_scale="
          f"{self.annotation_scale:g}: {np.mean(extent > _CHECK_TOLERANCE):.0%} of {len(sample)} "
          f"sampled images have x_max or y_max beyond {_CHECK_TOLERANCE:g} times the image size "
          f"(median ratio of box extent to image size {np.median(extent):.2f}); the images look "
          f"downscaled from the annotated originals: try annotation_scale={suggested:g}")

  def __len__(self) -> int:
    return len(self.files)

  def _window(self, k: int):
    """(offset, scale, window): the map from file pixels of image k to returned pixels, and the
    crop window (x0, y0, x1, y1) in file pixels."""
    h, w = (int(v) for v in self._size(k))
    if self.crop == "bbox":
      x0, y0, x1, y1 = image_ops.crop_box(self._boxes[k], (h, w))
    else:
      x0, y0, x1, y1 = 0, 0, w, h
    out_h, out_w = self.image_size
    return (x0, y0), (out_w / (x1 - x0), out_h / (y1 - y0)), (x0, y0, x1, y1)

  def _load(self, k: int) -> np.ndarray:
    try:
      image = image_ops.load_rgb(self.root / "images" / self.files[k])
    except image_ops.DECODE_ERRORS as e:
      raise self._unreadable(k, e) from e
    self._sizes[k] = image.shape[:2]
    _, _, (x0, y0, x1, y1) = self._window(k)
    return image_ops.resize_uint8(image[y0:y1, x0:x1], self.image_size)

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"indices out of range [0, {len(self)}) of CUB {self.split}")
    images = self._cache.get(indices, self._load)
    out_h, out_w = self.image_size
    boxes = np.empty((len(indices), 4), dtype=np.float32)
    limits = np.array([out_w, out_h, out_w, out_h], np.float32)
    n, num_parts = len(indices), len(self.part_names)
    parts = None if self._parts is None else np.zeros((n, num_parts, 2), np.float32)
    visible = None if self._visible is None else np.zeros((n, num_parts), bool)
    for j, k in enumerate(indices):
      h, w = self._size(int(k))
      offset, scale, _ = self._window(int(k))
      box = np.clip(self._boxes[k], 0, [w, h, w, h])
      boxes[j] = np.clip(image_ops.transform_boxes(box, offset, scale), 0, limits)
      if parts is not None:
        pts = image_ops.transform_points(self._parts[k], offset, scale)
        vis = self._visible[k].copy()
        if self.crop == "bbox":
          vis &= (pts[:, 0] >= 0) & (pts[:, 0] <= out_w) & (pts[:, 1] >= 0) & (pts[:, 1] <= out_h)
        parts[j] = np.where(vis[:, None], pts, 0.0)
        visible[j] = vis
    batch = {"image": images, "label": self._labels[indices], "index": indices, "bbox": boxes}
    if parts is not None:
      batch["keypoints"], batch["keypoints_visible"] = parts, visible
    return batch

  def __repr__(self) -> str:
    return (f"CubFolder({str(self.root)!r}, {self.split!r}, n={len(self)}, crop={self.crop!r}, "
            f"annotation_scale={self.annotation_scale:g}, classes={self.classes!r})")
