"""TensorFlow Datasets (TFDS) sources: preparing them once, then reading them without TensorFlow.

Datasets: MNIST (LeCun et al. 1998), Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), CIFAR-10
(Krizhevsky 2009), CelebA (Liu et al., ICCV 2015) and Caltech-UCSD Birds-200-2011 (Wah et al. 2011).

`prepare` runs TFDS's builder with `file_format="array_record"` (TFDS needs TensorFlow for that
step only). `TfdsSource` then reads a split with `tfds.data_source`: ArrayRecord random access,
decoded by TFDS with numpy and Pillow, so TensorFlow is never imported while reading, even where it
is installed (TFDS imports it lazily; tested in tests/data/test_tfds_data.py).

With a `manual_dir`, TFDS looks there for the files named in its registered checksums
(`url_checksums/<name>.txt` or the dataset folder's `checksums.tsv`) instead of downloading them; a
file it cannot find there it tries to download, retrying for minutes. `prepare` therefore checks
first that every expected file is in `manual_dir` with the registered size, and fails at once
naming what is missing.

The data dir is `data_dir` if given, else the environment variable TFDS_DATA_DIR read at call time
(TFDS itself reads it only once, when it is imported), else ~/tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
import threading
from typing import Any

import numpy as np

from xjax.data import image_ops
from xjax.data.registry import DATASETS
from xjax.data.source import DatasetInfo
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

SUPPORTED = ("mnist", "fashion_mnist", "cifar10", "celeb_a", "caltech_birds2011")

# Small enough to decode a whole split into memory when first read.
_SMALL = ("mnist", "fashion_mnist", "cifar10")
# Per-channel statistics of the training pixels scaled to [0, 1] (the usual published constants).
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# The five CelebA landmarks, in TFDS's `landmarks` feature, as (x, y) keypoints.
CELEBA_LANDMARKS = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
_LOCAL_ALTERNATIVE = {
    "celeb_a": (
        "xjax.data.celeba_folder.CelebAFolder(root, split), which reads the original CelebA layout "
        "root/img_align_celeba/*.jpg + root/list_attr_celeba.txt (+ optional "
        "list_landmarks_align_celeba.txt, list_eval_partition.txt)"),
    "caltech_birds2011": (
        "xjax.data.cub_folder.CubFolder(root, split), which reads the extracted CUB_200_2011/ "
        "folder (images/, images.txt, image_class_labels.txt, train_test_split.txt, "
        "bounding_boxes.txt, classes.txt, parts/)"),
}
_CUB_DEFAULT_SIZE = (224, 224)
# What a damaged or missing array_record file raises when read (riegeli: RuntimeError).
_READ_ERRORS = (RuntimeError, OSError, ValueError)
# Modules TFDS's builders import lazily while preparing (module, pip package); checked up front so
# that a missing one fails before TFDS extracts gigabytes. TensorFlow: all of them.
_PREPARE_NEEDS = {
    "caltech_birds2011": (("cv2", "opencv-python-headless"),),
}


def _check_name(name: str) -> None:
  if name not in SUPPORTED:
    raise ConfigError(f"unknown TFDS dataset {name!r}; supported: {', '.join(SUPPORTED)}")


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (TFDS's own default)."""
  if data_dir is None:
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  return pathlib.Path(data_dir).expanduser()


@dataclasses.dataclass(frozen=True)
class ExpectedFile:
  """A file TFDS downloads for a dataset, as registered in its checksums."""
  filename: str
  size: int
  sha256: str


def expected_files(name: str) -> tuple[ExpectedFile, ...]:
  """The files TFDS expects in `manual_dir` for `name`, from its registered url checksums.

  Files registered under several URLs (mirrors) are listed once.
  """
  _check_name(name)
  url_infos = _tfds().builder_cls(name).url_infos or {}
  files = {}
  for url, info in url_infos.items():
    filename = info.filename or url.rstrip("/").rsplit("/", 1)[-1]
    files.setdefault(filename, ExpectedFile(filename, int(info.size), info.checksum))
  return tuple(sorted(files.values(), key=lambda f: f.filename))


def _files_listing(files) -> str:
  return "\n".join(f"  {f.filename} ({f.size} bytes, sha256 {f.sha256})" for f in files)


def check_manual_dir(name: str, manual_dir: str | os.PathLike) -> None:
  """Raises DataNotFoundError unless every expected file is in `manual_dir` with the right size.

  The sha256 is left to TFDS, which checks it while preparing.
  """
  manual_dir = pathlib.Path(manual_dir).expanduser()
  problems = []
  for f in expected_files(name):
    path = manual_dir / f.filename
    if not path.is_file():
      problems.append(f"  {f.filename} ({f.size} bytes): missing")
    elif (size := path.stat().st_size) != f.size:
      problems.append(f"  {f.filename} ({f.size} bytes): has {size} bytes")
  if problems:
    where = manual_dir if manual_dir.is_dir() else f"{manual_dir} (which does not exist)"
    msg = (f"cannot prepare TFDS dataset {name!r} from manual_dir {where}: these files are missing "
           "or have the wrong size:\n" + "\n".join(problems))
    if name in _LOCAL_ALTERNATIVE:
      msg += f"\nWithout these files, use {_LOCAL_ALTERNATIVE[name]}."
    raise DataNotFoundError(msg)


def _builder(name: str, data_dir: pathlib.Path, **kwargs):
  return _tfds().builder(name, data_dir=os.fspath(data_dir), **kwargs)


def _is_prepared(builder) -> bool:
  # What `builder.is_prepared()` checks, without its warning about a missing folder.
  path = pathlib.Path(os.fspath(builder.data_path))
  return (path / "dataset_info.json").is_file() and (path / "features.json").is_file()


def is_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
  """Whether TFDS's current version of `name` is prepared under the data dir."""
  _check_name(name)
  return _is_prepared(_builder(name, resolve_data_dir(data_dir)))


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Downloads (or takes from `manual_dir`) and prepares a TFDS dataset in ArrayRecord format.

  Args:
    name: one of SUPPORTED.
    data_dir: where TFDS writes the prepared dataset (see `resolve_data_dir`). Downloaded and
      extracted files go to <data_dir>/downloads/<name>: one folder per dataset, since TFDS reuses
      extracted files by name across datasets (Fashion-MNIST would silently get MNIST's pixels).
    manual_dir: a folder holding the files of `expected_files(name)`; checked before TFDS starts, so
      a missing file fails at once instead of after minutes of network retries. None: download.

  Returns:
    The prepared dataset's folder, <data_dir>/<name>/<version>. Already prepared: returned at once.

  Raises:
    ConfigError: unknown name, TensorFlow missing, or the data was prepared in a format without
      random access (tfrecord).
    DataNotFoundError: files missing from `manual_dir`.
  """
  _check_name(name)
  data_dir = resolve_data_dir(data_dir)
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
  if _is_prepared(builder):
    _check_random_access(builder)
    return pathlib.Path(os.fspath(builder.data_path))
  if manual_dir is not None:
    check_manual_dir(name, manual_dir)
  if importlib.util.find_spec("tensorflow") is None:
    raise ConfigError(
        f"preparing TFDS dataset {name!r} needs TensorFlow (TFDS's builders use tf.io / tf.image); "
        "install it with `pip install tensorflow-cpu` (the `prepare` extra of xjax). Reading the "
        "prepared data does not need it.")
  for module, package in _PREPARE_NEEDS.get(name, ()):
    if importlib.util.find_spec(module) is None:
      raise ConfigError(f"preparing TFDS dataset {name!r} needs the module {module!r} "
                        f"(`pip install {package}`)")
  config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(pathlib.Path(manual_dir).expanduser()),
      try_download_gcs=False)
  checksum_error = tfds.core.download.download_manager.NonMatchingChecksumError
  try:
    builder.download_and_prepare(download_dir=os.fspath(data_dir / "downloads" / name),
                                 download_config=config)
  except checksum_error as e:
    raise DataNotFoundError(
        f"a file for TFDS dataset {name!r} does not have the registered sha256 (TFDS: {e}); "
        f"expected:\n{_files_listing(expected_files(name))}") from e
  return pathlib.Path(os.fspath(builder.data_path))


def _check_random_access(builder) -> None:
  formats = {f.value for f in builder.info.available_file_formats()}
  if "array_record" not in formats:
    raise ConfigError(
        f"TFDS dataset {builder.name!r} in {builder.data_path} was prepared as "
        f"{', '.join(sorted(formats)) or 'an unknown format'}, which has no random access; "
        f"delete that folder and run `python -m runs.prepare {builder.name} --data_dir "
        f"{builder.data_dir_root}` (which writes array_record)")


def not_prepared_message(name: str, data_dir: pathlib.Path, data_path: str) -> str:
  """The DataNotFoundError message for an unprepared dataset: where, the command, the files."""
  msg = (f"TFDS dataset {name!r} is not prepared in data_dir {data_dir} (looked for {data_path}). "
         f"Prepare it once with:\n"
         f"  python -m runs.prepare {name} --manual_dir DIR --data_dir {data_dir}\n"
         f"where DIR holds these files (TFDS's registered checksums), or leave out --manual_dir to "
         f"let TFDS download them:\n{_files_listing(expected_files(name))}")
  if name in _LOCAL_ALTERNATIVE:
    msg += f"\nWithout TFDS, use {_LOCAL_ALTERNATIVE[name]}."
  return msg


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
  # TFDS's split syntax allows slices and unions ("train[:10%]+test"); check the names in it.
  for part in split.split("+"):
    base = part.strip().split("[", 1)[0]
    if base not in splits:
      raise ConfigError(
          f"unknown split {split!r} of TFDS dataset {name!r}; splits: {', '.join(splits)}")


class TfdsSource:
  """A split of a prepared TFDS dataset, read by random access without TensorFlow.

  Fields (see xjax.data.source): image, label, index for all; celeb_a adds attributes (40, in TFDS's
  order, which is the order of list_attr_celeba.txt) and keypoints / keypoints_visible (its 5
  landmarks); caltech_birds2011 adds bbox. celeb_a has no classes: label is 0 and num_classes 1 (its
  attributes are the labels).

  Args:
    name: one of SUPPORTED.
    split: a split of the dataset ("train", "test", "validation" where it has one; TFDS's slice
      syntax such as "train[:10%]" works too).
    data_dir: see `resolve_data_dir`.
    image_size: (H, W) to resize the images to with PIL (keypoints and boxes are scaled with them).
      caltech_birds2011 needs it (its images vary in size; default (224, 224)).
    in_memory: decode the whole split into uint8 arrays on first use and serve batches from memory.
      Default: True for mnist, fashion_mnist and cifar10, False (decode each batch) otherwise.

  Raises:
    ConfigError: an unknown dataset or split, or data prepared without random access.
    DataNotFoundError: the dataset is not prepared in the data dir.
    UnreadableDataError: (from `read_batch`) a record file of the split is missing, truncated or
      corrupt; the message names it and the command that prepares the dataset again.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | os.PathLike | None = None,
               image_size: tuple[int, int] | None = None, in_memory: bool | None = None):
    _check_name(name)
    self.name = name
    self.split = split
    self.data_dir = resolve_data_dir(data_dir)
    if image_size is None and name == "caltech_birds2011":
      image_size = _CUB_DEFAULT_SIZE
    self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    self.in_memory = name in _SMALL if in_memory is None else bool(in_memory)
    builder = _builder(name, self.data_dir)
    if not _is_prepared(builder):
      raise DataNotFoundError(
          not_prepared_message(name, self.data_dir, os.fspath(builder.data_path)))
    _check_random_access(builder)
    _check_split(name, split, tuple(builder.info.splits.keys()))
    self._data_path = os.fspath(builder.data_path)
    self.info = self._make_info(builder.info.features)
    self._source = None
    self._memory: dict[str, np.ndarray] | None = None
    self._lock = threading.Lock()
    self._len = len(self._data_source())

  def _make_info(self, features) -> DatasetInfo:
    shape = tuple(features["image"].shape)
    if self.image_size is not None:
      shape = (*self.image_size, shape[2])
    fields = ("image", "label", "index")
    class_names, attribute_names, part_names = (), (), ()
    num_classes = 1
    if self.name == "celeb_a":
      attribute_names = tuple(features["attributes"].keys())
      part_names = CELEBA_LANDMARKS
      fields += ("attributes", "keypoints", "keypoints_visible")
    else:
      num_classes = features["label"].num_classes
      class_names = tuple(features["label"].names)
    if self.name == "caltech_birds2011":
      fields += ("bbox",)
    mean, std = _MEAN_STD.get(self.name, (None, None))
    return DatasetInfo(name=self.name, image_shape=shape, num_classes=num_classes,
                       class_names=class_names, attribute_names=attribute_names,
                       part_names=part_names, fields=fields, mean=mean, std=std)

  def _data_source(self):
    if self._source is None:
      self._source = _tfds().data_source(self.name, split=self.split,
                                         data_dir=os.fspath(self.data_dir), download=False)
    return self._source

  def __len__(self) -> int:
    return self._len

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and (indices.min() < 0 or indices.max() >= self._len):
      raise IndexError(f"indices out of range [0, {self._len}) of {self.name}:{self.split}")
    if not self.in_memory:
      return self._decode(indices)
    memory = self._load_all()
    batch = {k: v[indices] for k, v in memory.items()}
    batch["index"] = indices
    return batch

  def _load_all(self, chunk: int = 2048) -> dict[str, np.ndarray]:
    with self._lock:
      if self._memory is None:
        parts = [self._decode(np.arange(s, min(s + chunk, self._len)))
                 for s in range(0, max(self._len, 1), chunk)]
        self._memory = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return self._memory

  def _decode(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Reads records with the data source's batched access; maps them to the contract's fields."""
    ds = self._data_source()
    keys = [int(i) for i in indices]
    try:
      if hasattr(ds, "__getitems__"):
        records = ds.__getitems__(keys)
      else:
        records = [ds[k] for k in keys]
    except _READ_ERRORS as e:
      raise self._unreadable(keys, e) from e
    return records_to_batch(self.name, records, indices, self.info)

  def _unreadable(self, keys: list[int], error: BaseException) -> UnreadableDataError:
    """The one-line error for a failed read: the record file that fails, and how to redo it."""
    ds = self._data_source()
    for key in keys:  # read one by one to find the record that fails (the batch read does not say)
      try:
        ds[key]
      except _READ_ERRORS as e:
        error = e
        break
    else:
      key = keys[0] if keys else None
    try:  # array_record's data source, behind TFDS's, knows the file of each record
      inner = ds.data_source
      where = f"record file {inner._paths[inner._reader_idx_and_position(key)[0]]}"
    except (AttributeError, IndexError, TypeError, ValueError):
      where = f"a record file of split {self.split!r} in {self._data_path}"
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return UnreadableDataError(
        f"cannot read TFDS dataset {self.name!r}: {where} is missing, truncated or corrupt "
        f"({reason}); prepare the dataset again: delete {self._data_path} and run `python -m "
        f"runs.prepare {self.name} --data_dir {self.data_dir}` (with --manual_dir DIR if it was "
        f"prepared from local files)")

  def __getstate__(self) -> dict[str, Any]:
    # Picklable for multiprocess loaders: workers reopen the data source and reload their memory.
    state = self.__dict__.copy()
    state["_source"] = None
    state["_memory"] = None
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return (f"TfdsSource({self.name!r}, {self.split!r}, n={self._len}, "
            f"image_shape={self.info.image_shape}, in_memory={self.in_memory})")


# Every supported TFDS dataset, by its TFDS name; the constructor takes `data_dir` (`tfds`), and
# where the dataset has no validation split, one is held out of train (`holdout`).
for _name in SUPPORTED:
  DATASETS.register(_name, functools.partial(TfdsSource, _name), tfds=True,
                    holdout=_name != "celeb_a")
del _name


def records_to_batch(name: str, records: list[dict[str, Any]], indices: np.ndarray,
                     info: DatasetInfo) -> dict[str, np.ndarray]:
  """Maps decoded TFDS records of dataset `name` to the fields of the Source contract.

  Images are resized to info.image_shape; CelebA landmarks and CUB boxes (TFDS: normalised
  [ymin, xmin, ymax, xmax]) become pixels of the returned image.
  """
  n = len(records)
  h, w, c = info.image_shape
  images = np.empty((n, h, w, c), np.uint8)
  sizes = np.empty((n, 2), np.float32)  # (H, W) of each decoded image before resizing
  for k, rec in enumerate(records):
    img = np.asarray(rec["image"], np.uint8)
    sizes[k] = img.shape[:2]
    images[k] = image_ops.resize_uint8(img, (h, w)) if img.shape[:2] != (h, w) else img
  batch: dict[str, np.ndarray] = {"image": images, "index": indices.astype(np.int64)}
  if name == "celeb_a":
    batch["label"] = np.zeros(n, np.int32)
    names = info.attribute_names
    batch["attributes"] = np.array([[rec["attributes"][a] for a in names] for rec in records],
                                   dtype=np.int8).reshape(n, len(names))
    pts = np.array([[[rec["landmarks"][f"{p}_x"], rec["landmarks"][f"{p}_y"]]
                     for p in CELEBA_LANDMARKS] for rec in records],
                   dtype=np.float32).reshape(n, len(CELEBA_LANDMARKS), 2)
    # Landmarks are in pixels of the decoded image: scale them with the resize.
    pts[..., 0] *= w / sizes[:, 1:2]
    pts[..., 1] *= h / sizes[:, 0:1]
    batch["keypoints"] = pts
    batch["keypoints_visible"] = np.ones(pts.shape[:2], dtype=bool)
  else:
    batch["label"] = np.array([rec["label"] for rec in records], dtype=np.int32).reshape(n)
  if name == "caltech_birds2011":
    # TFDS's BBoxFeature is [ymin, xmin, ymax, xmax] normalised to [0, 1].
    b = np.array([rec["bbox"] for rec in records], dtype=np.float32).reshape(n, 4)
    batch["bbox"] = np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], axis=1)
  return batch
