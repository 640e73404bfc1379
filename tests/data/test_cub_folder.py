"""Tests of xjax.data.cub_folder on a tiny hand-made CUB folder, and on the offline subset."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xjax.data.cub_folder import CubFolder
from xjax.data.source import Source
from xjax.errors import ConfigError, DataNotFoundError, UnreadableDataError

# The image files are 40x30 (W x H); the annotations are in pixels of 80x60 originals (scale 0.5).
FW, FH = 40, 30
# image_id: (path, class_id, is_training_image, box x y w h in original pixels).
IMAGES = {
    1: ("003.C/c1.jpg", 3, 1, (11, 9, 38, 30)),
    2: ("003.C/c2.jpg", 3, 0, (10, 10, 40, 30)),
    3: ("007.G/g1.jpg", 7, 1, (0, 0, 80, 60)),
    4: ("007.G/g2.jpg", 7, 0, (20, 20, 20, 20)),
    5: ("007.G/g3.jpg", 7, 1, (60, 40, 22, 22)),
    6: ("009.I/i1.jpg", 9, 1, (0, 0, 10, 10)),
}
PARTS = ["1 back", "2 left eye", "3 tail"]
# (image_id, part_id): x y visible, in original pixels; like CUB, part_locs.txt has a row for every
# image and part, "0 0 0" where the part is not seen.
SEEN = {(1, 1): "20 16 1", (1, 3): "70 50 1", (2, 1): "40 30 1", (4, 3): "50 44 1"}
PART_LOCS = [f"{i} {p} {SEEN.get((i, p), '0 0 0')}" for i in IMAGES for p in (1, 2, 3)]


@pytest.fixture
def cub(tmp_path: Path) -> Path:
  root = tmp_path / "CUB_200_2011"
  for path, _, _, (x, y, w, h) in IMAGES.values():
    (root / "images" / path).parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((FH, FW, 3), np.uint8)
    img[int(y / 2):int((y + h) / 2), int(x / 2):int((x + w) / 2)] = 255  # the box is white
    Image.fromarray(img).save(root / "images" / path, quality=95)
  def write(name, lines):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n")
  write("images.txt", [f"{i} {v[0]}" for i, v in IMAGES.items()])
  write("image_class_labels.txt", [f"{i} {v[1]}" for i, v in IMAGES.items()])
  write("train_test_split.txt", [f"{i} {v[2]}" for i, v in IMAGES.items()])
  write("bounding_boxes.txt",
        [f"{i} " + " ".join(f"{c:.1f}" for c in v[3]) for i, v in IMAGES.items()])
  write("classes.txt", [f"{c} {c:03d}.{chr(64 + c)}" for c in range(1, 11)])
  write("parts/parts.txt", PARTS)
  write("parts/part_locs.txt", PART_LOCS)
  return root


def test_splits_and_class_remapping(cub):
  train = CubFolder(cub, "train", annotation_scale=0.5)
  test = CubFolder(cub, "test", annotation_scale=0.5)
  assert isinstance(train, Source)
  assert train.image_ids == ("1", "3", "5", "6") and test.image_ids == ("2", "4")
  assert train.skipped == [] and test.skipped == []
  # "present": the classes of images.txt (3, 7, 9) -> 0, 1, 2.
  assert train.info.num_classes == 3
  assert train.info.class_names == ("003.C", "007.G", "009.I")
  np.testing.assert_array_equal(train.read_batch(np.arange(3))["label"], [0, 1, 1])
  np.testing.assert_array_equal(test.read_batch(np.arange(2))["label"], [0, 1])
  every = CubFolder(cub, "all", annotation_scale=0.5, classes="all")
  assert every.info.num_classes == 10 and every.info.class_names[2] == "003.C"
  np.testing.assert_array_equal(every.read_batch(np.arange(5))["label"], [2, 2, 6, 6, 6])
  with pytest.raises(ConfigError, match="train, test"):
    CubFolder(cub, "validation", annotation_scale=0.5)


def test_bbox_and_parts_scaled_to_returned_image(cub):
  source = CubFolder(cub, "train", image_size=(45, 100), annotation_scale=0.5)
  assert source.info.image_shape == (45, 100, 3)
  assert source.info.part_names == ("back", "left eye", "tail")
  batch = source.read_batch(np.array([0, 2]))
  assert batch["image"].shape == (2, 45, 100, 3)
  sx, sy = 100 / FW, 45 / FH  # 2.5, 1.5
  # Image 1: box (11, 9)-(49, 39) in original pixels -> (5.5, 4.5)-(24.5, 19.5) in the file.
  np.testing.assert_allclose(batch["bbox"][0], [5.5 * sx, 4.5 * sy, 24.5 * sx, 19.5 * sy],
                             rtol=1e-6)
  np.testing.assert_allclose(batch["keypoints"][0], [[10 * sx, 8 * sy], [0, 0], [35 * sx, 25 * sy]],
                             rtol=1e-6)
  np.testing.assert_array_equal(batch["keypoints_visible"][0], [True, False, True])
  # Image 5: the box (30, 20)-(41, 31) reaches past the 40x30 file and is clipped to it.
  np.testing.assert_allclose(batch["bbox"][1], [30 * sx, 20 * sy, 100, 45], rtol=1e-6)
  assert not batch["keypoints_visible"][1].any() and not batch["keypoints"][1].any()


def test_bbox_crop(cub):
  source = CubFolder(cub, "train", image_size=(45, 100), crop="bbox", annotation_scale=0.5)
  batch = source.read_batch(np.array([0]))
  # The box (5.5, 4.5)-(24.5, 19.5) is cropped to the pixel window (5, 4)-(25, 20): 20 x 16.
  sx, sy = 100 / 20, 45 / 16
  np.testing.assert_allclose(batch["bbox"][0], [0.5 * sx, 0.5 * sy, 19.5 * sx, 15.5 * sy],
                             rtol=1e-6)
  np.testing.assert_allclose(batch["keypoints"][0, 0], [(10 - 5) * sx, (8 - 4) * sy], rtol=1e-6)
  # The tail (35, 25) lies outside the crop: not visible there.
  np.testing.assert_array_equal(batch["keypoints_visible"][0], [True, False, False])
  np.testing.assert_array_equal(batch["keypoints"][0, 2], [0, 0])
  # The crop is the white box; the whole image is mostly black.
  assert batch["image"].mean() > 200
  whole = CubFolder(cub, "train", image_size=(45, 100), annotation_scale=0.5)
  assert whole.read_batch(np.array([0]))["image"].mean() < 150


def test_cache_returns_the_same_annotations_and_images(cub):
  source = CubFolder(cub, "all", image_size=(32, 32), annotation_scale=0.5, cache=True)
  first = source.read_batch(np.array([3, 0, 3]))
  second = source.read_batch(np.array([3, 0, 3]))
  uncached = CubFolder(cub, "all", image_size=(32, 32), annotation_scale=0.5, cache=False)
  for other in (second, uncached.read_batch(np.array([3, 0, 3]))):
    for key in first:
      np.testing.assert_array_equal(first[key], other[key])


def test_annotation_scale_sanity_check(cub):
  with pytest.raises(ConfigError,
                     match=r"annotation_scale=1.*median ratio.*try annotation_scale=0.5\b"):
    CubFolder(cub, "train")
  CubFolder(cub, "train", annotation_scale=0.5)  # fits


def test_missing_files(tmp_path, cub):
  with pytest.raises(DataNotFoundError,
                     match=r"lacks images.txt.*bounding_boxes.txt.*expected under root"):
    CubFolder(tmp_path / "nowhere", "train")
  (cub / "bounding_boxes.txt").unlink()
  with pytest.raises(DataNotFoundError, match=r"lacks bounding_boxes.txt"):
    CubFolder(cub, "train", annotation_scale=0.5)


def test_without_parts_files(cub):
  (cub / "parts" / "part_locs.txt").unlink()
  source = CubFolder(cub, "train", annotation_scale=0.5)
  assert "keypoints" not in source.info.fields
  assert set(source.read_batch(np.arange(2))) == {"image", "label", "index", "bbox"}


def test_bad_options(cub):
  with pytest.raises(ConfigError, match="crop"):
    CubFolder(cub, "train", crop="center", annotation_scale=0.5)
  with pytest.raises(ConfigError, match="classes"):
    CubFolder(cub, "train", classes="some", annotation_scale=0.5)


# ------------------------------------------------------- annotation files cut short or damaged
# images.txt and the per-image files: line k is image_id k; part_locs.txt: line 3 (i - 1) + p is
# image_id i, part_id p.


def _edit(path: Path, edit) -> None:
  """Rewrites the lines of `path` (without line ends) by `edit`."""
  path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _replace(number: int, line: str | None):
  """An edit that replaces line `number` (1-based) by `line`, or removes it (None)."""
  return lambda lines: lines[:number - 1] + ([] if line is None else [line]) + lines[number:]


BOXES_FORM = "`<image_id> <x> <y> <width> <height>`"
LOCS_FORM = "`<image_id> <part_id> <x> <y> <visible>`"


@pytest.mark.parametrize("name, edit, message", [
    ("bounding_boxes.txt", _replace(3, "3 0.0 0.0 80.0"),
     f" line 3 has 4 fields, expected 5: {BOXES_FORM}"),
    ("bounding_boxes.txt", _replace(2, "2 10 10 abc 30"), " line 2: width is 'abc', not a number"),
    ("bounding_boxes.txt", lambda lines: lines[:4],
     " has no row for 2 images of images.txt, e.g. image_id 5 (images.txt line 5)"),
    ("images.txt", _replace(2, "2"),
     " line 2 has 1 field, expected 2: `<image_id> <class>/<name>.jpg`"),
    ("images.txt", _replace(6, "2 009.I/i1.jpg"), " line 6 repeats image_id 2 of line 2"),
    ("images.txt", _replace(1, "x 003.C/c1.jpg"),
     " line 1: image_id is 'x', not a positive integer"),
    ("image_class_labels.txt", _replace(4, None),
     " has no row for 1 image of images.txt, e.g. image_id 4 (images.txt line 4)"),
    ("train_test_split.txt", _replace(4, "4 2"), " line 4: is_training_image is '2', not 0 or 1"),
    ("classes.txt", _replace(5, "5"), " line 5 has 1 field, expected 2: `<class_id> <class_name>`"),
    ("parts/parts.txt", _replace(2, "2"),
     " line 2 has 1 field, expected 2: `<part_id> <part_name>`"),
    ("parts/part_locs.txt", lambda lines: lines[:-1] + ["6 3 0"],
     f" line 18 has 3 fields, expected 5: {LOCS_FORM}"),
    ("parts/part_locs.txt", lambda lines: lines[:-1],
     " has no row for image_id 6 part_id 3; it needs one per image of images.txt and part of "
     "parts.txt"),
    ("parts/part_locs.txt", _replace(7, None),  # image 3, part 1
     " has no row for image_id 3 part_id 1; it needs one per image of images.txt and part of "
     "parts.txt"),
    ("parts/part_locs.txt", lambda lines: lines[:-3],
     " has no row for 1 image of images.txt, e.g. image_id 6 (images.txt line 6)"),
    ("parts/part_locs.txt", _replace(5, "2 4 0 0 0"),
     " line 5: part_id 4 is not in {root}/parts/parts.txt"),
    ("parts/part_locs.txt", _replace(7, "3 1 nan 0 0"), " line 7: x is 'nan', not a number"),
])
def test_annotation_file_cut_short_or_damaged(cub, name, edit, message):
  _edit(cub / name, edit)
  pattern = "^" + re.escape(f"{cub / name}{message.format(root=cub)}") + "$"
  with pytest.raises(UnreadableDataError, match=pattern) as err:
    CubFolder(cub, "all", annotation_scale=0.5)
  assert "\n" not in str(err.value)


def test_images_file_cut_short(cub):
  # The per-image files then list images that images.txt lacks.
  _edit(cub / "images.txt", lambda lines: lines[:4])
  with pytest.raises(UnreadableDataError, match="^" + re.escape(
      f"{cub / 'image_class_labels.txt'} has rows for 2 images not in images.txt, e.g. image_id 5 "
      f"at line 5 (images.txt cut short?)") + "$"):
    CubFolder(cub, "all", annotation_scale=0.5)


def test_class_not_in_classes_file(cub):
  _edit(cub / "classes.txt", lambda lines: lines[:5])  # classes 7 and 9 are gone
  with pytest.raises(UnreadableDataError, match="^" + re.escape(
      f"{cub / 'image_class_labels.txt'} line 3: class_id 7 is not in {cub / 'classes.txt'} "
      f"(4 images in all)") + "$"):
    CubFolder(cub, "all", annotation_scale=0.5)


# ---------------------------------------------------------------- the offline subset (837 images)


def _shared_cub() -> Path:
  base = os.environ.get("XJAX_SHARED_DATA")
  base = Path(base) if base else Path(__file__).resolve().parents[3] / "shared" / "data"
  root = base / "caltech_birds2011" / "CUB_200_2011"
  if not (root / "images.txt").exists():
    pytest.skip(f"offline CUB subset not found in {root} (set XJAX_SHARED_DATA)")
  return root


def test_real_subset():
  root = _shared_cub()
  with pytest.raises(ConfigError, match=r"try annotation_scale=0.25\b"):
    CubFolder(root, "train")
  train = CubFolder(root, "train", annotation_scale=0.25)
  test = CubFolder(root, "test", annotation_scale=0.25)
  assert (len(train), len(test)) == (450, 387)
  assert train.info.num_classes == 15 and len(train.info.part_names) == 15
  assert train.info.class_names[0] == "001.Black_footed_Albatross"
  for source in (train, test):
    batch = source.read_batch(np.arange(len(source)))
    assert batch["image"].shape == (len(source), 224, 224, 3)
    assert set(np.unique(batch["label"])) == set(range(15))
    kp, vis = batch["keypoints"], batch["keypoints_visible"]
    assert vis.mean() > 0.5
    assert (kp[vis] >= 0).all() and (kp[vis] <= 224).all()
    box = batch["bbox"]
    assert (box >= 0).all() and (box <= 224).all()
    assert (box[:, 2] > box[:, 0] + 10).all() and (box[:, 3] > box[:, 1] + 10).all()
    # Visible parts lie in (or within a few pixels of) the bird's box.
    inside = ((kp[..., 0] >= box[:, None, 0] - 5) & (kp[..., 0] <= box[:, None, 2] + 5)
              & (kp[..., 1] >= box[:, None, 1] - 5) & (kp[..., 1] <= box[:, None, 3] + 5))
    assert inside[vis].mean() > 0.97
