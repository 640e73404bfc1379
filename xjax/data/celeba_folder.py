"""CelebA read from a local folder in the original layout, without TFDS.

CelebA: Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015
(http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html). The layout under `root`, as distributed:

  img_align_celeba/NNNNNN.jpg      aligned and cropped faces, 178x218 (W x H); any uniform
                                   downscale works, e.g. the 89x109 offline subset
  list_attr_celeba.txt             line 1: count; line 2: the 40 attribute names;
                                   then `NNNNNN.jpg` and 40 values in {-1, 1}
  list_landmarks_align_celeba.txt  optional; line 1: count; line 2: `lefteye_x lefteye_y ...`;
                                   then `NNNNNN.jpg` and 10 ints, in pixels of the 178x218 image
  list_eval_partition.txt          optional; `NNNNNN.jpg 0|1|2` = train / validation / test

Line endings may be LF or CRLF. Without list_eval_partition.txt the rows are split by their order
in list_attr_celeba.txt: the first 80% train, the next 10% validation, the last 10% test (CelebA's
official partition is also by file number: 162770 / 19867 / 19962 of 202599).

A listed image that is absent, truncated or corrupt is an `UnreadableDataError` naming the file and
its line in list_attr_celeba.txt (absent files at construction, undecodable ones when read), unless
`skip_unreadable`: then every image of the split is decoded once at construction and the unreadable
ones are left out (`skipped`). The split is made before, so skipping never moves an image to
another split.

A list file cut short or damaged is an `UnreadableDataError` naming it and the line, whatever
`skip_unreadable`: list_attr_celeba.txt and the landmarks file must have as many rows as their count
line says, each with all its fields (integers) and no file twice; list_eval_partition.txt (which has
no count line) and the landmarks file must have a row for every row of list_attr_celeba.txt.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from xjax.data import image_ops
from xjax.data.registry import DATASETS
from xjax.data.source import DatasetInfo
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

SPLITS = ("train", "validation", "test", "all")
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
# Size (H, W) of the aligned images that the landmark coordinates refer to.
ALIGNED_SIZE = (218, 178)
_LAYOUT = ("img_align_celeba/NNNNNN.jpg, list_attr_celeba.txt, and optionally "
           "list_landmarks_align_celeba.txt and list_eval_partition.txt")


def _read_lines(path: pathlib.Path) -> list[tuple[int, str]]:
  """The non-blank lines of a text file, with their 1-based line numbers."""
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise UnreadableDataError(f"{path} is not a text file: byte {e.start} does not decode as "
                              f"{e.encoding}") from e
  return [(num, line) for num, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _read_table(path: pathlib.Path, width: int | None
                ) -> tuple[list[str], dict[str, list[int]], dict[str, int]]:
  """Parses a CelebA list file with a count line and a header.

  The checks catch a file cut short or damaged: the count line is a number, the rows are exactly
  that many, each is a file name and `width` integers (default: one per header name), and no file
  has two rows.

  Returns:
    (header names, {file: values}, {file: its line number}).

  Raises:
    UnreadableDataError: one of the checks fails; the message names the file and the line.
  """
  lines = _read_lines(path)
  if len(lines) < 2:
    what = "has no header line" if lines else "is empty"
    raise UnreadableDataError(f"{path} {what}; expected a count line, a header line and rows")
  (count_num, count_line), (_, header) = lines[:2]
  count = count_line.strip()
  if not (count.isascii() and count.isdigit()):
    raise UnreadableDataError(f"{path} line {count_num} should be the number of rows, got "
                              f"{count_line!r}")
  count = int(count)
  names = header.split()
  width = len(names) if width is None else width
  rows = lines[2:]
  if len(rows) != count:
    last_num, last_line = lines[-1]
    if len(rows) > count:
      hint = f"the extra rows start at line {rows[count][0]}"
    elif rows and len(last_line.split()) < width + 1:
      hint = f"cut short in line {last_num}?"  # the cut fell inside the last row
    else:
      hint = f"cut short after line {last_num}?"
    raise UnreadableDataError(f"{path} has {_count(len(rows), 'row')} but its count line says "
                              f"{count} ({hint})")
  values, line_of = {}, {}
  for num, line in rows:
    parts = line.split()
    if len(parts) != width + 1:
      raise UnreadableDataError(f"{path} line {num} has {_count(len(parts), 'field')}, expected "
                                f"{width + 1}: a file name and {width} values")
    try:
      values[parts[0]] = [int(v) for v in parts[1:]]
    except ValueError:
      k, bad = next((k, v) for k, v in enumerate(parts[1:], start=2) if not _is_int(v))
      raise UnreadableDataError(f"{path} line {num}: field {k} is {bad!r}, not an integer"
                                ) from None
    if parts[0] in line_of:
      raise UnreadableDataError(f"{path} line {num} repeats {parts[0]} of line "
                                f"{line_of[parts[0]]}")
    line_of[parts[0]] = num
  return names, values, line_of


def _count(n: int, noun: str) -> str:
  """`n` and the noun, plural unless n is 1: "1 field", "4 fields"."""
  return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _is_int(text: str) -> bool:
  try:
    int(text)
  except ValueError:
    return False
  return True


def _read_partition(path: pathlib.Path) -> dict[str, int]:
  """Parses list_eval_partition.txt: {file: 0|1|2}.

  Raises:
    UnreadableDataError: a row is not `NNNNNN.jpg 0|1|2`, or repeats a file; the message names the
      file and the line.
  """
  out, line_of = {}, {}
  for num, line in _read_lines(path):
    parts = line.split()
    if len(parts) != 2:
      raise UnreadableDataError(f"{path} line {num} has {_count(len(parts), 'field')}, expected 2: "
                                f"`NNNNNN.jpg 0|1|2`")
    if parts[1] not in ("0", "1", "2"):
      raise UnreadableDataError(f"{path} line {num}: the partition is {parts[1]!r}, not 0, 1 or 2")
    if parts[0] in line_of:
      raise UnreadableDataError(f"{path} line {num} repeats {parts[0]} of line "
                                f"{line_of[parts[0]]}")
    out[parts[0]], line_of[parts[0]] = int(parts[1]), num
  return out


@DATASETS.register("celeb_a_local", subdir="celeb_a")
class CelebAFolder:
  """A split of CelebA read from `root` (module docstring), with PIL and an optional decoded cache.

  Fields (xjax.data.source): image, label, index, attributes (n, 40) int8 in {0, 1} (the file's
  -1 -> 0), and keypoints (n, 5, 2) + keypoints_visible when the landmarks file exists: the 5
  landmarks (x, y) in pixels of the returned image. CelebA has no classes: label is 0 with
  num_classes 1, unless `label_attribute` makes one attribute the (binary) label.

  Args:
    root: the CelebA folder.
    split: "train", "validation", "test", or "all".
    image_size: (H, W) to resize the images to; None keeps the files' size (which must be uniform).
    label_attribute: an attribute name, e.g. "Young" (XNet's task): label = that attribute,
      num_classes 2, class_names ("not_<name>", "<name>").
    cache: keep decoded images in memory after their first read; default: on when the split's
      decoded images take less than 1 GiB.
    skip_unreadable: leave out the images of the split that are absent or do not decode (each is
      decoded once here, JPEGs at 1/8 scale); they are listed in `skipped` as (file, reason), and
      one line says how many. Off: such an image raises UnreadableDataError.

  Raises:
    ConfigError: an unknown split or attribute.
    DataNotFoundError: the folder lacks the image folder or the attribute file, or no listed image
      is there.
    UnreadableDataError: a list file is cut short or malformed (whatever `skip_unreadable`), or a
      listed image of the split is absent (here) or does not decode (when read) and
      `skip_unreadable` is off; the message names the file and its line.
  """

  def __init__(self, root: str | os.PathLike, split: str, *,
               image_size: tuple[int, int] | None = None, label_attribute: str | None = None,
               cache: bool | None = None, skip_unreadable: bool = False):
    self.root = pathlib.Path(root).expanduser()
    if split not in SPLITS:
      raise ConfigError(f"unknown CelebA split {split!r}; splits: {', '.join(SPLITS)}")
    self.split = split
    image_dir = self.root / "img_align_celeba"
    attr_path = self.root / "list_attr_celeba.txt"
    missing = [p.name for p in (image_dir, attr_path) if not p.exists()]
    if missing:
      raise DataNotFoundError(f"CelebA folder {self.root} lacks {', '.join(missing)}; expected "
                              f"under root: {_LAYOUT}")
    names, attrs, line_of = _read_table(attr_path, None)
    self.attribute_names = tuple(names)
    present = set(os.listdir(image_dir))
    files = list(attrs)  # dicts keep the file's row order
    if not present.intersection(files):
      raise DataNotFoundError(f"no image of {attr_path.name} found in {image_dir}; expected under "
                              f"root: {_LAYOUT}")
    partition_path = self.root / "list_eval_partition.txt"
    if partition_path.exists():
      partition = _read_partition(partition_path)
      # The file has no count line: a cut one shows as rows of list_attr_celeba.txt it lacks.
      if lacking := [f for f in files if f not in partition]:
        raise UnreadableDataError(
            f"{partition_path} has no row for {_count(len(lacking), 'image')} of "
            f"{attr_path.name}, e.g. {lacking[0]} ({attr_path.name} line "
            f"{line_of[lacking[0]]})")
      part_of = np.array([partition[f] for f in files], dtype=np.int64)
    else:
      n = len(files)
      part_of = np.full(n, 2, dtype=np.int64)
      part_of[: int(0.9 * n)] = 1
      part_of[: int(0.8 * n)] = 0
    if split != "all":
      files = [f for f, p in zip(files, part_of) if p == SPLITS.index(split)]
    self.skipped: list[tuple[str, str]] = []
    absent = [f for f in files if f not in present]
    if absent and not skip_unreadable:
      more = f"; {len(absent) - 1} more listed images are absent too" if len(absent) > 1 else ""
      raise image_ops.unreadable_error(image_dir / absent[0], f"no such file{more}",
                                       f"{attr_path.name} line {line_of[absent[0]]}")
    if skip_unreadable:
      reasons = dict.fromkeys(absent, "no such file")
      kept = [f for f in files if f in present]
      reasons.update((f, r) for f, r in zip(kept, image_ops.check_images(
          [image_dir / f for f in kept])) if r is not None)
      self.skipped = [(f, reasons[f]) for f in files if f in reasons]
      files = [f for f in files if f not in reasons]
      if self.skipped:
        print(image_ops.skipped_line(self.root, self.skipped), flush=True)
    self.files = tuple(files)
    self._lines = tuple(line_of[f] for f in files)
    self._attributes = (np.array([attrs[f] for f in files], dtype=np.int64)
                        .reshape(len(files), len(names)) > 0).astype(np.int8)

    landmarks_path = self.root / "list_landmarks_align_celeba.txt"
    self._landmarks = None
    if landmarks_path.exists():
      _, marks, _ = _read_table(landmarks_path, 2 * len(LANDMARK_NAMES))
      if lacking := [f for f in attrs if f not in marks]:  # all rows, whatever the split
        raise UnreadableDataError(
            f"{landmarks_path} has no row for {_count(len(lacking), 'image')} of "
            f"{attr_path.name}, e.g. {lacking[0]} ({attr_path.name} line "
            f"{line_of[lacking[0]]})")
      self._landmarks = np.array([marks[f] for f in files], dtype=np.float32).reshape(
          len(files), len(LANDMARK_NAMES), 2)

    if label_attribute is None:
      self._labels = np.zeros(len(files), dtype=np.int32)
      num_classes, class_names = 1, ()
    else:
      column = self.attribute_index(label_attribute)
      self._labels = self._attributes[:, column].astype(np.int32)
      num_classes, class_names = 2, (f"not_{label_attribute}", label_attribute)
    self.label_attribute = label_attribute

    if image_size is None:
      image_size = self._first_size() if files else ALIGNED_SIZE
      self._resize = False
    else:
      self._resize = True
    self.image_size = (int(image_size[0]), int(image_size[1]))
    shape = (*self.image_size, 3)
    fields = ("image", "label", "index", "attributes")
    if self._landmarks is not None:
      fields += ("keypoints", "keypoints_visible")
    self.info = DatasetInfo(
        name="celeb_a", image_shape=shape, num_classes=num_classes, class_names=class_names,
        attribute_names=self.attribute_names,
        part_names=LANDMARK_NAMES if self._landmarks is not None else (), fields=fields)
    self._cache = image_ops.ImageCache(len(files), shape,
                                       image_ops.cache_enabled(cache, len(files), shape))

  def attribute_index(self, name: str) -> int:
    """The column of attribute `name` in `attributes`."""
    if name not in self.attribute_names:
      raise ConfigError(f"unknown CelebA attribute {name!r}; attributes: "
                        f"{', '.join(self.attribute_names)}")
    return self.attribute_names.index(name)

  def __len__(self) -> int:
    return len(self.files)

  def _unreadable(self, i: int, error: BaseException) -> Exception:
    return image_ops.unreadable_error(self.root / "img_align_celeba" / self.files[i],
                                      image_ops.unreadable_reason(error),
                                      f"list_attr_celeba.txt line {self._lines[i]}")

  def _first_size(self) -> tuple[int, int]:
    try:
      return image_ops.image_size_of(self.root / "img_align_celeba" / self.files[0])
    except image_ops.DECODE_ERRORS as e:
      raise self._unreadable(0, e) from e

  def _load(self, i: int) -> np.ndarray:
    path = self.root / "img_align_celeba" / self.files[i]
    try:
      image = image_ops.load_rgb(path)
    except image_ops.DECODE_ERRORS as e:
      raise self._unreadable(i, e) from e
    if self._resize:
      return image_ops.resize_uint8(image, self.image_size)
    if image.shape[:2] != self.image_size:
      raise ConfigError(f"CelebA images in {path.parent} differ in size ({path.name} is "
                        f"{image.shape[0]}x{image.shape[1]}, the first is {self.image_size[0]}x"
                        f"{self.image_size[1]}); pass image_size=(H, W)")
    return image

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"indices out of range [0, {len(self)}) of CelebA {self.split}")
    batch = {
        "image": self._cache.get(indices, self._load),
        "label": self._labels[indices],
        "index": indices,
        "attributes": self._attributes[indices],
    }
    if self._landmarks is not None:
      # Landmarks are in pixels of the 178x218 aligned image, whatever the files' size.
      h, w = self.image_size
      scale = (w / ALIGNED_SIZE[1], h / ALIGNED_SIZE[0])
      batch["keypoints"] = image_ops.transform_points(self._landmarks[indices], (0.0, 0.0), scale)
      batch["keypoints_visible"] = np.ones(batch["keypoints"].shape[:2], dtype=bool)
    return batch

  def __repr__(self) -> str:
    return (f"CelebAFolder({str(self.root)!r}, {self.split!r}, n={len(self)}, "
            f"image_shape={self.info.image_shape}, label_attribute={self.label_attribute!r})")
