"""A synthetic "shapes" dataset: generated from a seed, no download, small CNNs learn it in seconds.

Each image shows one filled geometric shape (optionally a second, smaller one) on a noisy
background, and the class is the shape of the (first, larger) object. Because every image is
rendered from known parameters, the dataset comes with exact ground truth for explanation
research: the pixels that decide the class (`mask`), part locations (`keypoints`), per-image
binary attributes usable as XNet categories, and a two-object variant for explaining a class that
is present but not dominant (`second_label`, `second_mask`).

Rendering. Image (n, S, S, 3) uint8, S = `image_size`. Pixel (row i, column j) covers
[j, j + 1) x [i, i + 1) and has its centre at (x, y) = (j + 0.5, i + 0.5); all coordinates below
are in these pixel units. A pixel belongs to an object iff its centre lies inside the shape
(no anti-aliasing), so `mask` is exactly the set of the object's pixels.

  background  linear colour gradient between two random colours along a random direction, plus
              Gaussian noise of std `noise` (in [0, 1] units, before clipping) on every pixel and
              channel, objects included. The background is dark (HSV value 0-0.35) and the
              object bright (0.65-1), with a background hue near the complement of the object's,
              so objects always contrast. With `dark_object_prob` > 0 that fraction of the images
              is inverted: bright background (0.75-1), dark object (0.3-0.55). (Mixed polarity
              is much harder to learn: a Keras-style CNN with Adam 1e-3 on [0, 1] inputs is at
              34-53% after 2 epochs with 0.5, 92-95% with the default 0.)
  object      shape SHAPE_NAMES[label] inside a circle of radius r (2r = 35-65% of S, or 35-50% of
              S when `second_object`), rotated by a random angle in [-15, 15] degrees, its centre
              uniform such that the circle lies inside the image. Size, position, rotation, colour
              and texture are drawn independently of the class, and labels are exactly balanced
              (a random permutation of 0, 1, ..., K-1, 0, 1, ...). The area in units of r^2 depends
              on the shape (triangle 1.25 ... circle 2.01, see `_shape_areas`).

Fields (see `xjax.data.source`):

  image, label, index   as in the contract; label in [0, num_classes).
  attributes            int8 (n, A) in {0, 1}, columns `info.attribute_names`:
    rounded     the shape has no corners: SHAPE_NAMES[label] in ROUNDED_SHAPES (circle, ring), a
                deterministic function of the label (25% of images with 4 or 8 classes).
    large       2r > lo + 2/3 (hi - lo) for the size range [lo, hi] above (~33%, independent).
    red         the object's colour is red: with p = 0.25 its hue is drawn within +-15 degrees of
                pure red, otherwise at least 30 degrees away from it (~25%, independent).
    upper_half  the object's centre is in the upper half: cy < S / 2 (~50%, independent).
    striped     with p = 0.3 the object has stripes (period 4 px, random direction and phase):
                every other 2-px band is 60% of the way to white (65% of the way to black for
                dark objects) (~30%, independent).
    two_objects only with `second_object`: the image has a second object (second_label >= 0);
                all 1 unless `second_object_prob` < 1.
  keypoints             float32 (n, 5, 2), (x, y) of PART_NAMES for the first object: "center" is
                        the centre of its circle (inside the mask, except in the hole of a ring
                        or frame); "top", "bottom", "left", "right" are its extreme pixels: the
                        centre of the object pixel nearest the middle of the object's pixels in
                        its topmost row (bottommost row, leftmost column, rightmost column).
  keypoints_visible     bool (n, 5), all True.
  bbox                  float32 (n, 4), (x_min, y_min, x_max, y_max) = (j_min, i_min, j_max + 1,
                        i_max + 1): the box enclosing the first object's pixels.
  mask                  uint8 (n, S, S) in {0, 1}: exactly the first object's pixels.
  second_label          int32 (n,), only with `second_object`: the class of the second object,
                        uniform over the classes other than `label`; -1 where there is none.
  second_mask           uint8 (n, S, S), only with `second_object`: the second object's pixels
                        (all 0 where none). The second object is plain (never striped), has its
                        own colour on the same background, a radius 0.6-0.85 times the first's
                        (less where needed to keep its nominal area <= 0.7 times the first's), and
                        its circle is >= 1 px from the first's: the masks never overlap.

The attributes describe the first object; all of them but "rounded" are independent of the class,
so explanations can be tested against known causes (the mask) and known non-causes (colour, size,
position, texture). Splits ("train", "validation", "test") use independent streams
`np.random.SeedSequence((tag, seed, split))`, so they share no image, and the same arguments always
give byte-identical arrays. A split is rendered once (vectorised numpy; ~0.35 s of CPU for 10,000
32x32 images) and `read_batch` only indexes the cached arrays.
"""

from __future__ import annotations

import functools
import statistics

import numpy as np

from xjax.data.registry import DATASETS
from xjax.data.source import DatasetInfo
from xjax.errors import ConfigError

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "diamond", "ring", "star", "frame")
ROUNDED_SHAPES = ("circle", "ring")
ATTRIBUTE_NAMES = ("rounded", "large", "red", "upper_half", "striped")
PART_NAMES = ("center", "top", "bottom", "left", "right")
SPLIT_SIZES = {"train": 10000, "validation": 1000, "test": 2000}
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_STREAM_TAG = 0x5E4A9E5  # keeps this dataset's streams apart from other uses of the same seed
_ONE_OBJECT_SIZES = (0.35, 0.65)  # object diameter as a fraction of the image side
_TWO_OBJECT_SIZES = (0.35, 0.5)
_SECOND_RATIO = (0.6, 0.85)
_CHUNK = 1024  # images rendered at once (bounds memory; fixed, so output does not depend on it)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether the points (u, v), in units of the circumradius (v points down), are inside."""
  name = SHAPE_NAMES[shape]
  au, av = np.abs(u), np.abs(v)
  if name == "circle":
    return u * u + v * v <= 0.8**2
  if name == "square":
    return np.maximum(au, av) <= 0.7
  if name == "triangle":  # equilateral: apex (0, -0.98), base from (-0.85, 0.49) to (0.85, 0.49)
    return (v <= 0.49) & (au <= 0.85 * (v + 0.98) / 1.47)
  if name == "cross":
    return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))
  if name == "diamond":
    return au + av <= 0.95
  if name == "ring":
    return (u * u + v * v <= 0.9**2) & (u * u + v * v >= 0.48**2)
  if name == "star":  # five points; the radius goes linearly from 0.95 (tips) to 0.4 in angle
    phase = (np.arctan2(u, -v) / (2 * np.pi / 5)) % 1.0
    limit = 0.95 - 0.55 * 2.0 * np.abs(phase - np.round(phase))
    return u * u + v * v <= limit * limit
  if name == "frame":
    return (np.maximum(au, av) <= 0.7) & (np.maximum(au, av) >= 0.36)
  raise AssertionError(name)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """(..., 3) RGB in [0, 1] from hue in [0, 1) (wraps), saturation and value in [0, 1]."""
  k = (np.array([5.0, 3.0, 1.0]) + 6.0 * (h[..., None] % 1.0)) % 6.0
  return v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


@functools.cache
def _normal_table() -> np.ndarray:
  """Quantiles of the standard normal at (k + 0.5) / 65536: table[uint16 uniform] ~ N(0, 1)."""
  normal = statistics.NormalDist()
  return np.array([normal.inv_cdf((k + 0.5) / 65536) for k in range(65536)], np.float32)


@functools.cache
def _shape_areas() -> np.ndarray:
  """Area of each shape in units of r^2 (measured on a 400 x 400 grid over [-1, 1]^2)."""
  grid = (np.arange(400) + 0.5) / 200 - 1
  u, v = np.meshgrid(grid, grid)
  return np.array([_shape_mask(k, u, v).mean() * 4 for k in range(len(SHAPE_NAMES))])


def _render_objects(params: dict[str, np.ndarray], image_size: int) -> np.ndarray:
  """Bool masks (m, S, S) of objects with `label`, `cx`, `cy`, `r`, `angle` (one per image)."""
  m = len(params["label"])
  grid = np.arange(image_size, dtype=np.float32) + 0.5
  dx = grid[None, None, :] - params["cx"][:, None, None].astype(np.float32)
  dy = grid[None, :, None] - params["cy"][:, None, None].astype(np.float32)
  cos = (np.cos(params["angle"]) / params["r"]).astype(np.float32)[:, None, None]
  sin = (np.sin(params["angle"]) / params["r"]).astype(np.float32)[:, None, None]
  u, v = cos * dx + sin * dy, cos * dy - sin * dx
  masks = np.zeros((m, image_size, image_size), dtype=bool)
  for shape in np.unique(params["label"]):
    rows = params["label"] == shape
    masks[rows] = _shape_mask(int(shape), u[rows], v[rows])
  # Safety net for degenerate tiny objects: never return an empty mask.
  empty = ~masks.any(axis=(1, 2))
  if empty.any():
    i = np.clip(params["cy"][empty].astype(int), 0, image_size - 1)
    j = np.clip(params["cx"][empty].astype(int), 0, image_size - 1)
    masks[np.flatnonzero(empty), i, j] = True
  return masks


def _object_colors(rng: np.random.Generator, n: int, bright: np.ndarray,
                   red: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Object hues and RGB colours (n, 3): bright (value 0.65-1) or dark (0.3-0.55), saturated."""
  if red is None:
    hue = rng.uniform(0.0, 1.0, n)
  else:
    hue = np.where(red, rng.uniform(-1 / 24, 1 / 24, n), rng.uniform(1 / 12, 11 / 12, n))
  value = np.where(bright, rng.uniform(0.65, 1.0, n), rng.uniform(0.3, 0.55, n))
  return hue, _hsv_to_rgb(hue, rng.uniform(0.55, 1.0, n), value)


def _extremes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Keypoints top/bottom/left/right (n, 4, 2) and bboxes (n, 4) of non-empty masks (n, S, S)."""
  n, size, _ = masks.shape
  centres = np.arange(size, dtype=np.float64) + 0.5
  rows, cols, idx = masks.any(axis=2), masks.any(axis=1), np.arange(n)
  i_min, i_max = rows.argmax(1), size - 1 - rows[:, ::-1].argmax(1)
  j_min, j_max = cols.argmax(1), size - 1 - cols[:, ::-1].argmax(1)

  def mean_pos(line: np.ndarray) -> np.ndarray:  # the object pixel of `line` nearest its mean
    mean = (line * centres).sum(1, keepdims=True) / line.sum(1, keepdims=True)
    return centres[np.where(line, np.abs(centres - mean), np.inf).argmin(1)]

  points = np.stack([
      np.stack([mean_pos(masks[idx, i_min, :]), i_min + 0.5], -1),
      np.stack([mean_pos(masks[idx, i_max, :]), i_max + 0.5], -1),
      np.stack([j_min + 0.5, mean_pos(masks[idx, :, j_min])], -1),
      np.stack([j_max + 0.5, mean_pos(masks[idx, :, j_max])], -1),
  ], axis=1)
  bbox = np.stack([j_min, i_min, j_max + 1, i_max + 1], -1)
  return points.astype(np.float32), bbox.astype(np.float32)


def render_batch(rng: np.random.Generator, n: int, *, image_size: int = 32, num_classes: int = 4,
                 second_object: bool = False, noise: float = 0.1,
                 second_object_prob: float = 1.0, dark_object_prob: float = 0.0
                 ) -> dict[str, np.ndarray]:
  """Renders `n` random images and their ground truth (all fields of the module docstring but
  `index`); the result depends only on the state of `rng` and the arguments."""
  s = float(image_size)
  lo, hi = _TWO_OBJECT_SIZES if second_object else _ONE_OBJECT_SIZES
  label = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
  r = rng.uniform(lo, hi, n) * s / 2
  has_second = second_object & (rng.uniform(0.0, 1.0, n) < second_object_prob)
  label2 = np.where(has_second, (label + rng.integers(1, max(num_classes, 2), n)) % num_classes, -1)
  # Size ratio in [0.6, 0.85], scaled down where needed so that the second object's nominal area
  # is at most 0.7 times the first's (shapes of the same r have different areas).
  areas = _shape_areas()
  cap = np.sqrt(0.7 * areas[label] / areas[np.maximum(label2, 0)]) / _SECOND_RATIO[1]
  r2 = rng.uniform(*_SECOND_RATIO, n) * np.minimum(cap, 1.0) * r
  cx, cy = rng.uniform(r, s - r), rng.uniform(r, s - r)
  cx2, cy2 = rng.uniform(r2, s - r2), rng.uniform(r2, s - r2)
  # Rejection sampling of both positions until the bounding circles are >= 1 px apart.
  todo = has_second & (np.hypot(cx - cx2, cy - cy2) < r + r2 + 1.0)
  for _ in range(1000):
    if not todo.any():
      break
    k, rt, r2t = todo.sum(), r[todo], r2[todo]
    cx[todo], cy[todo] = rng.uniform(rt, s - rt, k), rng.uniform(rt, s - rt, k)
    cx2[todo], cy2[todo] = rng.uniform(r2t, s - r2t, k), rng.uniform(r2t, s - r2t, k)
    todo = has_second & (np.hypot(cx - cx2, cy - cy2) < r + r2 + 1.0)
  else:
    raise AssertionError("could not place two objects")  # impossible with the size ranges above
  angle, angle2 = rng.uniform(-np.pi / 12, np.pi / 12, (2, n))
  bright = rng.uniform(0.0, 1.0, n) >= dark_object_prob
  red = rng.uniform(0.0, 1.0, n) < 0.25
  hue, color = _object_colors(rng, n, bright, red)
  _, color2 = _object_colors(rng, n, bright)
  # Background: two corner colours with hues near the complement of the object's hue.
  bg_hue = hue[:, None] + 0.5 + rng.uniform(-0.15, 0.15, (n, 2))
  bg_value = np.where(bright[:, None], rng.uniform(0.0, 0.35, (n, 2)),
                      rng.uniform(0.75, 1.0, (n, 2)))
  bg = _hsv_to_rgb(bg_hue, rng.uniform(0.0, 0.45, (n, 2)), bg_value)  # (n, 2, 3)
  direction = rng.uniform(0.0, 2 * np.pi, n)
  striped = rng.uniform(0.0, 1.0, n) < 0.3
  stripe_dir, stripe_phase = rng.uniform(0.0, np.pi, n), rng.uniform(0.0, 4.0, n)
  # Stripes: 60% of the way to white on bright objects, 65% of the way to black on dark ones.
  stripe_color = np.where(bright[:, None], 0.4 * color + 0.6, 0.35 * color)

  image = np.empty((n, image_size, image_size, 3), np.uint8)
  mask = np.empty((n, image_size, image_size), np.uint8)
  mask2 = np.zeros((n, image_size, image_size), np.uint8)
  grid = np.arange(image_size, dtype=np.float32) + 0.5
  table = _normal_table() * np.float32(255.0 * noise)

  def planar(x: np.ndarray) -> np.ndarray:  # (m, 3) or (m,) -> (3, m, 1, 1) or (m, 1, 1)
    return np.asarray(x, np.float32).T[..., None, None]

  def paint(img: np.ndarray, where: np.ndarray, rgb: np.ndarray) -> None:
    img += where.astype(np.float32) * (planar(255 * rgb) - img)  # faster than np.copyto(where=)

  # Images are built channel-first (3, m, S, S) in 0-255 units: broadcasting is much faster.
  for start in range(0, n, _CHUNK):
    c = slice(start, min(start + _CHUNK, n))
    obj = _render_objects(dict(label=label[c], cx=cx[c], cy=cy[c], r=r[c], angle=angle[c]),
                          image_size)
    # Background gradient along `direction`, t in [0, 1] over the image.
    t = (planar(np.cos(direction[c])) * (grid - s / 2)[None, None, :]
         + planar(np.sin(direction[c])) * (grid - s / 2)[None, :, None])
    t = t * np.float32(1 / (s * np.sqrt(2.0))) + np.float32(0.5)
    img = t * planar(255 * (bg[c, 1] - bg[c, 0])) + planar(255 * bg[c, 0])
    paint(img, obj, color[c])
    proj = (planar(np.cos(stripe_dir[c])) * grid[None, None, :] + 2 * s
            + planar(np.sin(stripe_dir[c])) * grid[None, :, None] + planar(stripe_phase[c]))
    stripe = obj & striped[c][:, None, None] & ((proj * 0.5).astype(np.int32) % 2 == 1)
    paint(img, stripe, stripe_color[c])
    if has_second[c].any():
      rows = np.flatnonzero(has_second[c])
      mask2[c][rows] = _render_objects(dict(label=label2[c][rows], cx=cx2[c][rows],
                                            cy=cy2[c][rows], r=r2[c][rows],
                                            angle=angle2[c][rows]), image_size)
      paint(img, mask2[c].astype(bool), color2[c])
    if noise > 0:  # Gaussian noise via a quantile table: 4x faster than standard_normal
      img += table[rng.integers(0, len(table), img.shape, dtype=np.uint16)]
    np.clip(img, 0.0, 255.0, out=img)
    img += 0.5
    image[c] = img.astype(np.uint8).transpose(1, 2, 3, 0)
    mask[c] = obj

  rounded = np.isin(label, [SHAPE_NAMES.index(name) for name in ROUNDED_SHAPES])
  attributes = [rounded, 2 * r > (lo + 2 / 3 * (hi - lo)) * s, red, cy < s / 2, striped]
  if second_object:
    attributes.append(has_second)
  extremes, bbox = _extremes(mask.astype(bool))
  centre = np.stack([cx, cy], -1)[:, None].astype(np.float32)
  out = dict(image=image, label=label, attributes=np.stack(attributes, -1).astype(np.int8),
             keypoints=np.concatenate([centre, extremes], 1),
             keypoints_visible=np.ones((n, len(PART_NAMES)), bool), bbox=bbox, mask=mask)
  if second_object:
    out.update(second_label=label2.astype(np.int32), second_mask=mask2)
  return out


@functools.lru_cache(maxsize=32)
def _pixel_stats(image_size: int, num_classes: int, second_object: bool, noise: float,
                 second_object_prob: float, dark_object_prob: float
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std in [0, 1] units of 1024 images from a fixed stream."""
  rng = np.random.default_rng(np.random.SeedSequence((_STREAM_TAG, 999)))
  images = render_batch(rng, 1024, image_size=image_size, num_classes=num_classes,
                        second_object=second_object, noise=noise,
                        second_object_prob=second_object_prob,
                        dark_object_prob=dark_object_prob)["image"]
  pixels = images.reshape(-1, 3).astype(np.float64) / 255.0
  return tuple(round(float(x), 6) for x in pixels.mean(0)), tuple(
      round(float(x), 6) for x in pixels.std(0))


@DATASETS.register("shapes")
class ShapesSource:
  """One split of the shapes dataset (see the module docstring), rendered once and cached.

  Args:
    split: "train", "validation" or "test".
    num_examples: number of images; None gives SPLIT_SIZES[split] (10000, 1000, 2000).
    image_size: side S of the square RGB images, >= 16 (>= 32 with `second_object`).
    num_classes: K, the classes are SHAPE_NAMES[:K]; 2 <= K <= len(SHAPE_NAMES).
    seed: non-negative int; with `split` it determines every array.
    second_object: add a smaller object of another class (fields `second_label`, `second_mask`,
      attribute "two_objects").
    noise: std of the Gaussian pixel noise in [0, 1] units.
    second_object_prob: with `second_object`, the fraction of images that get a second object
      (1.0: all of them).
    dark_object_prob: the fraction of images with a dark object on a bright background.
  """

  def __init__(self, split: str = "train", num_examples: int | None = None, *,
               image_size: int = 32, num_classes: int = 4, seed: int = 0,
               second_object: bool = False, noise: float = 0.1,
               second_object_prob: float = 1.0, dark_object_prob: float = 0.0):
    if split not in SPLIT_SIZES:
      raise ConfigError(f"unknown shapes split {split!r}; valid splits: {', '.join(SPLIT_SIZES)}")
    if not 2 <= num_classes <= len(SHAPE_NAMES):
      raise ConfigError(f"shapes num_classes must be in 2..{len(SHAPE_NAMES)}, got {num_classes} "
                        f"(classes in order: {', '.join(SHAPE_NAMES)})")
    if num_examples is None:
      num_examples = SPLIT_SIZES[split]
    if num_examples < 1:
      raise ConfigError(f"shapes num_examples must be a positive int or None, got {num_examples}")
    if image_size < (32 if second_object else 16):
      raise ConfigError(f"shapes image_size must be >= 16 (>= 32 with second_object), got "
                        f"{image_size}")
    if seed < 0:
      raise ConfigError(f"shapes seed must be a non-negative int, got {seed}")
    if noise < 0 or not 0 <= second_object_prob <= 1 or not 0 <= dark_object_prob <= 1:
      raise ConfigError(f"shapes needs noise >= 0 and second_object_prob, dark_object_prob in "
                        f"[0, 1], got {noise}, {second_object_prob}, {dark_object_prob}")
    self.split, self.num_examples, self.image_size = split, int(num_examples), int(image_size)
    self.num_classes, self.seed, self.second_object = int(num_classes), int(seed), second_object
    self.noise, self.second_object_prob = float(noise), float(second_object_prob)
    self.dark_object_prob = float(dark_object_prob)
    extra = ("second_label", "second_mask") if second_object else ()
    attrs = ATTRIBUTE_NAMES + (("two_objects",) if second_object else ())
    mean, std = _pixel_stats(self.image_size, self.num_classes, bool(second_object), self.noise,
                             self.second_object_prob, self.dark_object_prob)
    self.info = DatasetInfo(
        name="shapes", image_shape=(self.image_size, self.image_size, 3),
        num_classes=self.num_classes, class_names=SHAPE_NAMES[:self.num_classes],
        attribute_names=attrs, part_names=PART_NAMES,
        fields=("image", "label", "index", "attributes", "keypoints", "keypoints_visible", "bbox",
                "mask") + extra, mean=mean, std=std)
    rng = np.random.default_rng(np.random.SeedSequence((_STREAM_TAG, self.seed,
                                                        _SPLIT_IDS[split])))
    self._arrays = render_batch(rng, self.num_examples, image_size=self.image_size,
                                num_classes=self.num_classes, second_object=bool(second_object),
                                noise=self.noise, second_object_prob=self.second_object_prob,
                                dark_object_prob=self.dark_object_prob)

  def __len__(self) -> int:
    return self.num_examples

  def read_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the records at `indices` (1-D int array), copies of the cached arrays."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise IndexError(f"shapes indices must be in [0, {self.num_examples}), got "
                       f"[{indices.min()}, {indices.max()}]")
    batch = {name: array[indices] for name, array in self._arrays.items()}
    batch["index"] = indices
    return batch

  def __repr__(self) -> str:
    extra = f", second_object_prob={self.second_object_prob}" if self.second_object else ""
    extra += f", dark_object_prob={self.dark_object_prob}" if self.dark_object_prob else ""
    return (f"ShapesSource(split={self.split!r}, num_examples={self.num_examples}, "
            f"image_size={self.image_size}, num_classes={self.num_classes}, seed={self.seed}, "
            f"second_object={self.second_object}, noise={self.noise}{extra})")
