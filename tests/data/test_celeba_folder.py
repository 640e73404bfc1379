"""Tests of xjax.data.celeba_folder on a tiny hand-made CelebA folder, and on the offline subset."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xjax.data.celeba_folder import CelebAFolder
from xjax.data.source import Source
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

NAMES = ("Bald", "Male", "Smiling", "Young")
# 11 rows: (file, attributes in {-1, 1}); absent and unreadable files: test_unreadable.py.
ATTRS = [(f"{i:06d}.jpg", [(-1) ** (i + k) for k in range(4)]) for i in range(1, 12)]
# Landmarks in pixels of the 178x218 aligned image.
MARKS = {f"{i:06d}.jpg": [10 * i, 20, 100, 30, 89, 109, 40 + i, 150, 140, 178]
         for i in range(1, 12)}
H, W = 109, 89  # the files are the aligned faces downscaled by 2, like the offline subset


def _shade(name: str) -> int:
  return 20 * int(name[:6])


@pytest.fixture
def celeba(tmp_path: Path) -> Path:
  root = tmp_path / "celeba"
  (root / "img_align_celeba").mkdir(parents=True)
  for name, _ in ATTRS:
    image = Image.new("RGB", (W, H), (_shade(name),) * 3)
    image.save(root / "img_align_celeba" / name, quality=95)
  # The attribute file has CRLF line endings and double spaces, like the original.
  lines = [str(len(ATTRS)), " ".join(NAMES)] + [
      f"{name} " + " ".join(f"{v:2d}" for v in values) for name, values in ATTRS]
  (root / "list_attr_celeba.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
  return root


def _add_landmarks(root: Path) -> None:
  header = " ".join(f"{p}_{c}" for p in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
                    for c in "xy")
  lines = [str(len(MARKS)), header] + [f"{n} " + " ".join(map(str, v)) for n, v in MARKS.items()]
  (root / "list_landmarks_align_celeba.txt").write_text("\n".join(lines) + "\n")


def _files(split: str, root: Path, **kwargs) -> list[str]:
  return list(CelebAFolder(root, split, **kwargs).files)


def test_attributes_labels_and_images(celeba):
  source = CelebAFolder(celeba, "all")
  assert isinstance(source, Source)
  assert len(source) == 11 and source.files == tuple(n for n, _ in ATTRS)
  assert source.skipped == []
  info = source.info
  assert info.image_shape == (H, W, 3) and info.num_classes == 1
  assert info.attribute_names == NAMES
  assert set(info.fields) == {"image", "label", "index", "attributes"}
  idx = np.array([4, 0, 9])
  batch = source.read_batch(idx)
  expected = [[1 if v > 0 else 0 for v in dict(ATTRS)[source.files[i]]] for i in idx]
  np.testing.assert_array_equal(batch["attributes"], np.array(expected, np.int8))
  assert batch["attributes"].dtype == np.int8
  np.testing.assert_array_equal(batch["label"], [0, 0, 0])
  np.testing.assert_array_equal(batch["index"], idx)
  assert batch["image"].shape == (3, H, W, 3) and batch["image"].dtype == np.uint8
  shades = [_shade(source.files[i]) for i in idx]
  np.testing.assert_allclose(batch["image"].mean(axis=(1, 2, 3)), shades, atol=2)


def test_split_by_row_order_without_partition_file(celeba):
  rows = [n for n, _ in ATTRS]  # 11 rows: 8 / 1 / 2
  assert _files("train", celeba) == rows[:8]
  assert _files("validation", celeba) == rows[8:9]
  assert _files("test", celeba) == rows[9:]
  with pytest.raises(ConfigError, match="validation"):
    CelebAFolder(celeba, "val")


def test_split_by_partition_file(celeba):
  parts = {1: 2, 2: 0, 3: 1, 4: 0, 5: 0, 6: 2, 7: 0, 8: 1, 9: 0, 10: 0, 11: 0}
  (celeba / "list_eval_partition.txt").write_text(
      "".join(f"{i:06d}.jpg {p}\r\n" for i, p in parts.items()))
  assert _files("train", celeba) == [f"{i:06d}.jpg" for i in (2, 4, 5, 7, 9, 10, 11)]
  assert _files("validation", celeba) == ["000003.jpg", "000008.jpg"]
  assert _files("test", celeba) == ["000001.jpg", "000006.jpg"]


def test_landmarks_scaled_to_returned_image(celeba):
  _add_landmarks(celeba)
  source = CelebAFolder(celeba, "all")
  assert source.info.part_names == ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
  batch = source.read_batch(np.array([2]))  # 000003.jpg
  # Files are 89x109, half the aligned 178x218: the landmarks halve.
  expected = np.array(MARKS["000003.jpg"], np.float32).reshape(5, 2) * 0.5
  np.testing.assert_allclose(batch["keypoints"][0], expected, rtol=1e-6)
  assert batch["keypoints_visible"].all()
  resized = CelebAFolder(celeba, "all", image_size=(50, 40)).read_batch(np.array([2]))
  assert resized["image"].shape == (1, 50, 40, 3)
  raw = np.array(MARKS["000003.jpg"], np.float32).reshape(5, 2)
  np.testing.assert_allclose(resized["keypoints"][0], raw * [40 / 178, 50 / 218], rtol=1e-6)


def test_label_attribute(celeba):
  source = CelebAFolder(celeba, "all", label_attribute="Young")
  assert source.info.num_classes == 2
  assert source.info.class_names == ("not_Young", "Young")
  batch = source.read_batch(np.arange(len(source)))
  np.testing.assert_array_equal(batch["label"], batch["attributes"][:, NAMES.index("Young")])
  assert batch["label"].dtype == np.int32 and set(batch["label"]) == {0, 1}
  with pytest.raises(ConfigError, match=r"'Old'.*Bald, Male, Smiling, Young"):
    CelebAFolder(celeba, "all", label_attribute="Old")


def test_cache_returns_the_same_images(celeba):
  cached = CelebAFolder(celeba, "train", cache=True)
  uncached = CelebAFolder(celeba, "train", cache=False)
  idx = np.array([3, 1, 3])
  first = cached.read_batch(idx)["image"]
  np.testing.assert_array_equal(first, cached.read_batch(idx)["image"])
  np.testing.assert_array_equal(first, uncached.read_batch(idx)["image"])
  np.testing.assert_array_equal(first[0], first[2])


def test_non_uniform_sizes_need_image_size(celeba):
  Image.new("RGB", (50, 60)).save(celeba / "img_align_celeba" / "000002.jpg")
  source = CelebAFolder(celeba, "all")
  with pytest.raises(ConfigError, match="image_size"):
    source.read_batch(np.arange(len(source)))
  resized = CelebAFolder(celeba, "all", image_size=(40, 30)).read_batch(np.arange(3))
  assert resized["image"].shape == (3, 40, 30, 3)


def test_missing_files(tmp_path, celeba):
  with pytest.raises(DataNotFoundError,
                     match=r"lacks img_align_celeba, list_attr_celeba.txt.*expected under root"):
    CelebAFolder(tmp_path / "nowhere", "train")
  (celeba / "list_attr_celeba.txt").unlink()
  with pytest.raises(DataNotFoundError, match=r"lacks list_attr_celeba.txt"):
    CelebAFolder(celeba, "train")


def test_no_images_at_all(celeba):
  for f in (celeba / "img_align_celeba").iterdir():
    f.unlink()
  with pytest.raises(DataNotFoundError, match="no image of list_attr_celeba.txt"):
    CelebAFolder(celeba, "train")


# ---------------------------------------------------------------- list files cut short or damaged
# The attribute file: line 1 the count (11), line 2 the header, lines 3..13 the rows.


def _edit(path: Path, edit) -> None:
  """Rewrites the lines of `path` (without line ends) by `edit`, keeping LF line ends."""
  path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _raises(root: Path, name: str, message: str) -> None:
  """CelebAFolder(root) raises UnreadableDataError with exactly `message` after `root/name`."""
  pattern = "^" + re.escape(f"{root / name}{message}") + "$"
  with pytest.raises(UnreadableDataError, match=pattern) as err:
    CelebAFolder(root, "all")
  assert "\n" not in str(err.value)


ATTR = "list_attr_celeba.txt"
LANDMARKS = "list_landmarks_align_celeba.txt"
PARTITION = "list_eval_partition.txt"


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:9], " has 7 rows but its count line says 11 (cut short after line 9?)"),
    (lambda lines: lines[:8] + [lines[8][:16]],
     " has 7 rows but its count line says 11 (cut short in line 9?)"),
    (lambda lines: ["10"] + lines[1:], " has 11 rows but its count line says 10 (the extra rows "
                                       "start at line 13)"),
    (lambda lines: lines[:4] + [lines[4][:-3]] + lines[5:],
     " line 5 has 4 fields, expected 5: a file name and 4 values"),
    (lambda lines: lines[:5] + [lines[5].replace(" 1", " y", 1)] + lines[6:],
     " line 6: field 2 is 'y', not an integer"),
    (lambda lines: lines[:7] + [lines[2]] + lines[8:], " line 8 repeats 000001.jpg of line 3"),
    (lambda lines: lines[1:],
     " line 1 should be the number of rows, got 'Bald Male Smiling Young'"),
    (lambda lines: lines[:1], " has no header line; expected a count line, a header line and rows"),
    (lambda lines: [], " is empty; expected a count line, a header line and rows"),
])
def test_attr_file_cut_short_or_damaged(celeba, edit, message):
  _edit(celeba / ATTR, edit)
  _raises(celeba, ATTR, message)


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:7], " has 5 rows but its count line says 11 (cut short after line 7?)"),
    (lambda lines: lines[:3] + [lines[3].rsplit(" ", 1)[0]] + lines[4:],
     " line 4 has 10 fields, expected 11: a file name and 10 values"),
    (lambda lines: ["5"] + lines[1:7],
     " has no row for 6 images of list_attr_celeba.txt, e.g. 000006.jpg (list_attr_celeba.txt "
     "line 8)"),
])
def test_landmarks_file_cut_short_or_damaged(celeba, edit, message):
  _add_landmarks(celeba)
  _edit(celeba / LANDMARKS, edit)
  _raises(celeba, LANDMARKS, message)


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:8],
     " has no row for 3 images of list_attr_celeba.txt, e.g. 000009.jpg (list_attr_celeba.txt "
     "line 11)"),
    (lambda lines: lines[:3] + ["000004.jpg"] + lines[4:],
     " line 4 has 1 field, expected 2: `NNNNNN.jpg 0|1|2`"),
    (lambda lines: lines[:4] + ["000005.jpg 3"] + lines[5:],
     " line 5: the partition is '3', not 0, 1 or 2"),
    (lambda lines: lines + ["000002.jpg 1"], " line 12 repeats 000002.jpg of line 2"),
])
def test_partition_file_cut_short_or_damaged(celeba, edit, message):
  (celeba / PARTITION).write_text("".join(f"{n} {i % 3}\n" for i, (n, _) in enumerate(ATTRS)))
  _edit(celeba / PARTITION, edit)
  _raises(celeba, PARTITION, message)


# ---------------------------------------------------------------- the offline subset (2500 images)


def _shared_celeba() -> Path:
  base = os.environ.get("XJAX_SHARED_DATA")
  base = Path(base) if base else Path(__file__).resolve().parents[3] / "shared" / "data"
  root = base / "celeb_a"
  if not (root / "list_attr_celeba.txt").exists():
    pytest.skip(f"offline CelebA subset not found in {root} (set XJAX_SHARED_DATA)")
  return root


def test_real_subset():
  root = _shared_celeba()
  sizes = {s: len(CelebAFolder(root, s)) for s in ("train", "validation", "test", "all")}
  assert sizes == {"train": 2000, "validation": 250, "test": 250, "all": 2500}
  source = CelebAFolder(root, "train", label_attribute="Young")
  assert source.info.image_shape == (109, 89, 3)
  assert len(source.info.attribute_names) == 40
  assert source.info.attribute_names[0] == "5_o_Clock_Shadow"
  assert source.info.attribute_names[-1] == "Young"
  assert "keypoints" not in source.info.fields  # the subset has no landmarks file
  batch = source.read_batch(np.arange(0, 2000, 4))
  assert batch["image"].shape == (500, 109, 89, 3)
  assert 0.6 < batch["label"].mean() < 0.9  # CelebA: 77% Young
  assert set(np.unique(batch["attributes"])) == {0, 1}
  male = batch["attributes"][:, source.attribute_index("Male")].mean()
  assert 0.3 < male < 0.55  # CelebA: 42% Male
  resized = CelebAFolder(root, "test", image_size=(64, 64)).read_batch(np.arange(2))
  assert resized["image"].shape == (2, 64, 64, 3)
