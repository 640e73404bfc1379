"""Tests of the synthetic shapes dataset (xjax.data.shapes)."""

from __future__ import annotations

import numpy as np
import pytest

from xjax.data import shapes
from xjax.data.shapes import ATTRIBUTE_NAMES, PART_NAMES, SHAPE_NAMES, ShapesSource
from xjax.data.source import Source
from xjax.errors import ConfigError


def _all(source: ShapesSource) -> dict[str, np.ndarray]:
  return source.read_batch(np.arange(len(source)))


@pytest.fixture(scope="module")
def one():
  return _all(ShapesSource("train", 2000, num_classes=4, seed=3))


@pytest.fixture(scope="module")
def two():
  return _all(ShapesSource("train", 2000, num_classes=8, seed=3, second_object=True))


@pytest.fixture(scope="module")
def clean():
  """No noise: an object's pixels have exactly its colour(s)."""
  return _all(ShapesSource("validation", 1000, num_classes=8, seed=5, noise=0.0))


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
  r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
  return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


def test_info_and_protocol():
  src = ShapesSource("test", 64, image_size=24, num_classes=6)
  assert isinstance(src, Source) and len(src) == 64
  info = src.info
  assert info.name == "shapes" and info.image_shape == (24, 24, 3) and info.num_classes == 6
  assert info.class_names == SHAPE_NAMES[:6] and len(SHAPE_NAMES) >= 6
  assert info.attribute_names == ATTRIBUTE_NAMES and len(ATTRIBUTE_NAMES) >= 4
  assert info.part_names == PART_NAMES == ("center", "top", "bottom", "left", "right")
  assert info.fields == ("image", "label", "index", "attributes", "keypoints",
                         "keypoints_visible", "bbox", "mask")
  two = ShapesSource("test", 8, second_object=True).info
  assert two.fields == info.fields + ("second_label", "second_mask")
  assert two.attribute_names == ATTRIBUTE_NAMES + ("two_objects",)
  assert len(info.mean) == len(info.std) == 3
  assert all(0.15 < m < 0.3 for m in info.mean) and all(0.15 < s < 0.25 for s in info.std)
  # Statistics come from a fixed sample: the same for every seed and split.
  other = ShapesSource("train", 8, image_size=24, num_classes=6, seed=7).info
  assert (other.mean, other.std) == (info.mean, info.std)
  assert repr(src) == ("ShapesSource(split='test', num_examples=64, image_size=24, num_classes=6,"
                       " seed=0, second_object=False, noise=0.1)")


def test_default_split_sizes():
  assert len(ShapesSource("validation")) == 1000
  assert len(ShapesSource("test")) == 2000
  assert len(ShapesSource()) == 10000


def test_determinism():
  kw = dict(num_classes=5, second_object=True)
  a = _all(ShapesSource("train", 300, seed=11, **kw))
  b = _all(ShapesSource("train", 300, seed=11, **kw))
  assert a.keys() == b.keys()
  for name in a:
    assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
  c = _all(ShapesSource("train", 300, seed=12, **kw))
  assert (a["image"] != c["image"]).any(axis=(1, 2, 3)).all()
  assert (a["label"] != c["label"]).mean() > 0.5


def test_splits_disjoint():
  images = {split: _all(ShapesSource(split, 1000, seed=0))["image"]
            for split in ("train", "validation", "test")}
  keys = {split: {im.tobytes() for im in x} for split, x in images.items()}
  assert all(len(k) == 1000 for k in keys.values())  # no duplicates within a split either
  assert not keys["train"] & keys["test"]
  assert not keys["train"] & keys["validation"] and not keys["validation"] & keys["test"]


def test_read_batch_indexes():
  src = ShapesSource("train", 50, second_object=True)
  everything = _all(src)
  idx = np.array([7, 3, 3, 49, 0])
  batch = src.read_batch(idx)
  assert set(batch) == set(src.info.fields)
  np.testing.assert_array_equal(batch["index"], idx)
  assert batch["index"].dtype == np.int64
  for name in src.info.fields:
    if name != "index":
      np.testing.assert_array_equal(batch[name], everything[name][idx])
  batch["image"][:] = 0  # a copy: the cache is untouched
  assert src.read_batch(idx)["image"].any()
  with pytest.raises(IndexError):
    src.read_batch(np.array([50]))


@pytest.mark.parametrize("second", [False, True])
def test_dtypes_and_shapes(one, two, second):
  b, n, s = (two if second else one), 2000, 32
  expected = {"image": (np.uint8, (n, s, s, 3)), "label": (np.int32, (n,)),
              "index": (np.int64, (n,)), "attributes": (np.int8, (n, 5 + second)),
              "keypoints": (np.float32, (n, 5, 2)), "keypoints_visible": (np.bool_, (n, 5)),
              "bbox": (np.float32, (n, 4)), "mask": (np.uint8, (n, s, s))}
  if second:
    expected.update(second_label=(np.int32, (n,)), second_mask=(np.uint8, (n, s, s)))
  assert set(b) == set(expected)
  for name, (dtype, shape) in expected.items():
    assert b[name].dtype == dtype and b[name].shape == shape, name
  assert b["keypoints_visible"].all()
  assert set(np.unique(b["attributes"])) <= {0, 1} and set(np.unique(b["mask"])) <= {0, 1}


def test_labels_balanced(one, two):
  for b, k in ((one, 4), (two, 8)):
    assert b["label"].min() >= 0 and b["label"].max() < k
    counts = np.bincount(b["label"], minlength=k)
    assert counts.min() >= 2000 // k and counts.max() <= 2000 // k + 1


def test_mask_bbox_keypoints(one, two):
  for b in (one, two):
    mask = b["mask"].astype(bool)
    area = mask.sum((1, 2))
    assert area.min() >= 20  # diameter >= 35% of 32 px: no tiny or empty objects
    for i in range(0, 2000, 7):
      rows, cols = np.nonzero(mask[i])
      np.testing.assert_array_equal(
          b["bbox"][i], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    x0, y0, x1, y1 = b["bbox"].T
    kx, ky = b["keypoints"][..., 0], b["keypoints"][..., 1]
    assert ((kx > x0[:, None]) & (kx < x1[:, None]) & (ky > y0[:, None]) & (ky < y1[:, None])).all()
    np.testing.assert_array_equal(ky[:, 1], y0 + 0.5)  # top: in the topmost row
    np.testing.assert_array_equal(ky[:, 2], y1 - 0.5)  # bottom
    np.testing.assert_array_equal(kx[:, 3], x0 + 0.5)  # left
    np.testing.assert_array_equal(kx[:, 4], x1 - 0.5)  # right
    # The centre is on the object, except in the hole of a ring or a frame.
    filled = ~np.isin(b["label"], [SHAPE_NAMES.index("ring"), SHAPE_NAMES.index("frame")])
    on = mask[np.arange(2000), ky[:, 0].astype(int), kx[:, 0].astype(int)]
    assert on[filled].all() and not on[~filled].any()
    # Extreme points are object pixels near the middle of the extreme row / column.
    for p, (x_or_y, line) in enumerate([(0, mask[np.arange(2000), y0.astype(int)]),
                                        (0, mask[np.arange(2000), y1.astype(int) - 1]),
                                        (1, mask[np.arange(2000), :, x0.astype(int)]),
                                        (1, mask[np.arange(2000), :, x1.astype(int) - 1])], 1):
      assert mask[np.arange(2000), ky[:, p].astype(int), kx[:, p].astype(int)].all()
      middle = (line * (np.arange(32) + 0.5)).sum(1) / line.sum(1)
      assert np.abs(b["keypoints"][:, p, x_or_y] - middle).max() <= 4.0
      assert np.abs(b["keypoints"][:, p, x_or_y] - middle).mean() < 0.5


def test_mask_is_exactly_the_object(clean):
  """Without noise, mask pixels have the object's colour(s) and no other pixel has them."""
  striped = clean["attributes"][:, ATTRIBUTE_NAMES.index("striped")].astype(bool)
  for i in range(200):
    image, mask = clean["image"][i].reshape(-1, 3), clean["mask"][i].reshape(-1).astype(bool)
    inside = np.unique(image[mask], axis=0)
    assert len(inside) == (2 if striped[i] else 1), i
    outside = image[~mask]
    assert not (outside[:, None] == inside[None]).all(-1).any(), i


def _inside_and_around(b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Mean colours (n, 3) of the object and of the 1-px ring of pixels around it."""
  mask = b["mask"].astype(bool)
  grown = mask.copy()
  grown[:, 1:] |= mask[:, :-1]
  grown[:, :-1] |= mask[:, 1:]
  grown[:, :, 1:] |= mask[:, :, :-1]
  grown[:, :, :-1] |= mask[:, :, 1:]
  ring = grown & ~mask
  image = b["image"].astype(np.float64)
  return ((image * mask[..., None]).sum((1, 2)) / mask.sum((1, 2))[:, None],
          (image * ring[..., None]).sum((1, 2)) / ring.sum((1, 2))[:, None])


def test_objects_contrast_with_background(one, two):
  """The object's mean colour differs clearly from the pixels around it; it is brighter."""
  for b in (one, two):
    inside, around = _inside_and_around(b)
    contrast = np.linalg.norm(inside - around, axis=1)
    assert contrast.min() > 40 and np.median(contrast) > 100
    assert (inside.sum(1) > around.sum(1)).all()


def test_dark_objects():
  src = ShapesSource("test", 1000, dark_object_prob=0.4, seed=4)
  assert repr(src).endswith("second_object=False, noise=0.1, dark_object_prob=0.4)")
  inside, around = _inside_and_around(_all(src))
  dark = inside.sum(1) < around.sum(1)
  assert 0.33 < dark.mean() < 0.47
  assert np.linalg.norm(inside - around, axis=1).min() > 40
  assert src.info.mean != ShapesSource("test", 8).info.mean  # statistics of this variant


def test_attributes(one, two, clean):
  col = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
  rounded = [SHAPE_NAMES.index(name) for name in shapes.ROUNDED_SHAPES]
  for b in (one, two, clean):
    attrs = b["attributes"]
    np.testing.assert_array_equal(attrs[:, col["rounded"]], np.isin(b["label"], rounded))
    for name in ("large", "red", "upper_half", "striped"):
      a = attrs[:, col[name]]
      assert 0.1 <= a.mean() <= 0.6, (name, a.mean())
      # Independent of the class: every class has about the overall frequency.
      per_class = [a[b["label"] == k].mean() for k in np.unique(b["label"])]
      assert np.ptp(per_class) < 0.25, (name, per_class)
    np.testing.assert_array_equal(attrs[:, col["upper_half"]], b["keypoints"][:, 0, 1] < 16)
    area = b["mask"].sum((1, 2))
    large = attrs[:, col["large"]].astype(bool)
    assert area[large].mean() > 1.3 * area[~large].mean()
  assert (two["attributes"][:, 5] == 1).all()  # "two_objects"
  # "red" from the pixels: hue of the object's (non-striped) colour in the noise-free images.
  plain = clean["attributes"][:, col["striped"]] == 0
  mask = clean["mask"].astype(bool)
  colour = (clean["image"] * mask[..., None]).sum((1, 2)) / mask.sum((1, 2))[:, None]
  hue = _hue_degrees(colour[plain])
  distance = np.minimum(hue, 360 - hue)
  red = clean["attributes"][plain, col["red"]].astype(bool)
  assert distance[red].max() < 18 and distance[~red].min() > 27


def test_second_object(two):
  first, second = two["mask"].astype(bool), two["second_mask"].astype(bool)
  assert (two["second_label"] >= 0).all() and (two["second_label"] < 8).all()
  assert (two["second_label"] != two["label"]).all()
  assert not (first & second).any()
  a1, a2 = first.sum((1, 2)), second.sum((1, 2))
  assert a2.min() >= 8 and (a1 > a2).all()
  assert 0.3 < np.median(a2 / a1) < 0.7
  # The second class is uniform over the other classes.
  counts = np.bincount(two["second_label"], minlength=8)
  assert counts.min() > 2000 / 8 * 0.7


def test_second_object_probability():
  b = _all(ShapesSource("test", 1000, second_object=True, second_object_prob=0.4, seed=2))
  has = b["second_label"] >= 0
  assert 0.33 < has.mean() < 0.47
  np.testing.assert_array_equal(b["attributes"][:, 5], has)
  assert not b["second_mask"][~has].any() and b["second_mask"][has].any(axis=(1, 2)).all()


def test_shapes_fit_their_circle():
  """Every shape lies in the unit circle, so any rotation stays inside the image."""
  grid = (np.arange(300) + 0.5) / 150 - 1.0
  u, v = np.meshgrid(grid, grid)
  outside = u * u + v * v > 1.0
  for k, name in enumerate(SHAPE_NAMES):
    inside = shapes._shape_mask(k, u, v)
    assert not (inside & outside).any(), name
    assert 1.2 < inside.mean() * 4 < 2.1, name  # areas in units of r^2, not degenerate


def test_colour_does_not_reveal_the_class_but_shape_does():
  tr, te = _all(ShapesSource("train", 3000, seed=1)), _all(ShapesSource("test", 1500, seed=1))

  def nearest_class_mean(features) -> float:
    ftr, fte = features(tr["image"]), features(te["image"])
    mu = np.stack([ftr[tr["label"] == k].mean(0) for k in range(4)])
    pred = ((fte[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
    return float((pred == te["label"]).mean())

  def mean_colour(images):
    return images.reshape(len(images), -1, 3).mean(1) / 255.0

  def edge_orientations(images):  # histogram of gradient orientations, weighted by energy
    x = images.astype(np.float32).mean(-1) / 255.0
    gx, gy = x[:, 1:-1, 2:] - x[:, 1:-1, :-2], x[:, 2:, 1:-1] - x[:, :-2, 1:-1]
    energy, bins = gx**2 + gy**2, (np.arctan2(gy, gx) % np.pi / np.pi * 12).astype(int) % 12
    h = np.stack([(energy * (bins == k)).sum((1, 2)) for k in range(12)], -1)
    return h / h.sum(1, keepdims=True)

  colour = mean_colour(tr["image"])
  per_class = np.stack([colour[tr["label"] == k].mean(0) for k in range(4)])
  assert np.abs(per_class - colour.mean(0)).max() < 0.03
  assert nearest_class_mean(mean_colour) < 0.25 + 0.06
  assert nearest_class_mean(edge_orientations) > 0.45  # chance is 0.25


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="training"), "valid splits: train, validation, test"),
    (dict(num_classes=1), r"num_classes must be in 2\.\.8"),
    (dict(num_classes=9), r"num_classes must be in 2\.\.8.*circle, square"),
    (dict(image_size=8), "image_size must be >= 16"),
    (dict(image_size=16, second_object=True), ">= 32 with second_object"),
    (dict(num_examples=0), "num_examples"),
    (dict(seed=-1), "seed"),
    (dict(noise=-0.1), "noise"),
    (dict(dark_object_prob=1.5), "dark_object_prob"),
])
def test_config_errors(kwargs, match):
  with pytest.raises(ConfigError, match=match):
    ShapesSource(**kwargs)
