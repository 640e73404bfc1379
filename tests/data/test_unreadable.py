"""Absent, truncated and corrupt image files in the local CelebA and CUB folders.

Without `skip_unreadable` each costs one line (an UnreadableDataError naming the file and the
annotation line that lists it); with it the image is left out at construction and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.test_celeba_folder import ATTRS, H, W, celeba  # noqa: F401 (fixture)
from tests.data.test_cub_folder import cub  # noqa: F401 (fixture)
from xjax.data import pipeline
from xjax.data.celeba_folder import CelebAFolder
from xjax.data.cub_folder import CubFolder
from xjax.errors import DataNotFoundError, UnreadableDataError, XjaxError

KINDS = ("truncated", "not_an_image", "absent")
REASONS = {"truncated": "truncated", "not_an_image": "not an image file", "absent": "no such file"}
# The damaged files and the lines that list them: list_attr_celeba.txt has a count and a header
# line before its rows; images.txt has one line per image_id.
CELEBA_FILE, CELEBA_LINE = "000005.jpg", "list_attr_celeba.txt line 7"
CUB_FILE, CUB_LINE = "007.G/g1.jpg", "images.txt line 3"


def _damage(path: Path, kind: str) -> None:
  """Replaces an image file by a truncated JPEG, a text file, or nothing."""
  if kind == "truncated":
    # Noise, so that the cut falls in the compressed data: the header still reads.
    noise = np.random.default_rng(0).integers(0, 256, (*Image.open(path).size[::-1], 3), np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  elif kind == "not_an_image":
    path.write_text("this is not a JPEG\n")
  else:
    path.unlink()


def _check_message(err: pytest.ExceptionInfo, path: Path, listed_at: str, kind: str) -> None:
  msg = str(err.value)
  assert isinstance(err.value, XjaxError) and isinstance(err.value, DataNotFoundError)
  assert "\n" not in msg
  assert msg.startswith(f"cannot read image {path}: ")
  assert REASONS[kind] in msg
  assert f"(listed at {listed_at})" in msg
  assert "data.skip_unreadable=True" in msg


@pytest.mark.parametrize("kind", KINDS)
def test_celeba_unreadable_is_one_line(celeba, kind):  # noqa: F811
  _damage(celeba / "img_align_celeba" / CELEBA_FILE, kind)
  with pytest.raises(UnreadableDataError) as err:
    source = CelebAFolder(celeba, "all")  # absent: raised here
    source.read_batch(np.arange(len(source)))  # undecodable: raised when read
  _check_message(err, celeba / "img_align_celeba" / CELEBA_FILE, CELEBA_LINE, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_celeba_skip_unreadable(celeba, kind, capsys):  # noqa: F811
  _damage(celeba / "img_align_celeba" / CELEBA_FILE, kind)
  source = CelebAFolder(celeba, "all", skip_unreadable=True)
  rows = [name for name, _ in ATTRS]
  assert source.files == tuple(n for n in rows if n != CELEBA_FILE)
  assert len(source.skipped) == 1 and source.skipped[0][0] == CELEBA_FILE
  assert REASONS[kind] in source.skipped[0][1]
  out = capsys.readouterr().out
  assert out == f"skipped 1 unreadable images in {celeba} (first: {CELEBA_FILE}: " \
                f"{source.skipped[0][1]})\n"
  batch = source.read_batch(np.arange(len(source)))
  assert batch["image"].shape == (len(rows) - 1, H, W, 3)
  # The attributes stay with their images.
  expected = [[int(v > 0) for v in dict(ATTRS)[f]] for f in source.files]
  np.testing.assert_array_equal(batch["attributes"], expected)
  # The split is made before skipping: the other images keep theirs (11 rows: 8 / 1 / 2).
  train = CelebAFolder(celeba, "train", skip_unreadable=True)
  assert train.files == tuple(n for n in rows[:8] if n != CELEBA_FILE)
  assert CelebAFolder(celeba, "test", skip_unreadable=True).files == tuple(rows[9:])


def test_celeba_pipeline_raises_the_one_line_error(celeba):  # noqa: F811
  _damage(celeba / "img_align_celeba" / CELEBA_FILE, "not_an_image")
  source = CelebAFolder(celeba, "all", cache=False)
  train = pipeline.train_pipeline(source, batch_size=11, seed=0)
  with pytest.raises(UnreadableDataError, match=CELEBA_LINE):
    next(train.iterator())


def test_celeba_all_images_absent_is_still_data_not_found(celeba):  # noqa: F811
  for f in (celeba / "img_align_celeba").iterdir():
    f.unlink()
  with pytest.raises(DataNotFoundError, match="no image of list_attr_celeba.txt") as err:
    CelebAFolder(celeba, "train", skip_unreadable=True)
  assert not isinstance(err.value, UnreadableDataError)


def test_celeba_several_absent_are_counted(celeba):  # noqa: F811
  for name in ("000002.jpg", "000003.jpg", "000009.jpg"):
    (celeba / "img_align_celeba" / name).unlink()
  with pytest.raises(UnreadableDataError,
                     match=r"000002.jpg: no such file; 2 more listed images are absent too "
                           r"\(listed at list_attr_celeba.txt line 4\)"):
    CelebAFolder(celeba, "all")
  source = CelebAFolder(celeba, "all", skip_unreadable=True)
  assert [f for f, _ in source.skipped] == ["000002.jpg", "000003.jpg", "000009.jpg"]
  assert len(source) == 8


@pytest.mark.parametrize("kind", KINDS)
def test_cub_unreadable_is_one_line(cub, kind):  # noqa: F811
  _damage(cub / "images" / CUB_FILE, kind)
  with pytest.raises(UnreadableDataError) as err:
    # Absent, or a header that does not read (the scale check): raised here; else when read.
    source = CubFolder(cub, "all", annotation_scale=0.5, cache=False)
    source.read_batch(np.arange(len(source)))
  _check_message(err, cub / "images" / CUB_FILE, CUB_LINE, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_cub_skip_unreadable(cub, kind, capsys):  # noqa: F811
  _damage(cub / "images" / CUB_FILE, kind)
  train = CubFolder(cub, "train", annotation_scale=0.5, skip_unreadable=True)
  assert train.image_ids == ("1", "5", "6")
  assert len(train.skipped) == 1 and train.skipped[0][0] == CUB_FILE
  assert REASONS[kind] in train.skipped[0][1]
  assert capsys.readouterr().out.startswith(
      f"skipped 1 unreadable images in {cub} (first: {CUB_FILE}: ")
  batch = train.read_batch(np.arange(3))
  assert batch["image"].shape == (3, 224, 224, 3)
  np.testing.assert_array_equal(batch["label"], [0, 1, 2])  # 003.C, 007.G, 009.I
  test = CubFolder(cub, "test", annotation_scale=0.5, skip_unreadable=True)
  assert test.image_ids == ("2", "4") and test.skipped == []
  assert capsys.readouterr().out == ""
