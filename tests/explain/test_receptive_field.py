"""Receptive fields from the traced program: against a brute-force probe of which input rows and
columns each unit reads (positive weights, zero biases: a unit is > 0 exactly where its field
covers a lit row), on a tiny net (SAME, VALID via xjax.ops' crop, stride 2, a residual sum,
xjax.ops max pooling, a dilated kernel) and on the conv maps of `cnn_cifar10` and a small `vgg`;
hand-computed centres; and the ops that have no receptive field."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax import ops
from xjax.errors import ConfigError, UnsupportedOperationError
from xjax.explain.receptive_field import receptive_field_centres, receptive_fields
from xjax.nn.registry import get_model


def positive(init, *args):
  """Variables of the shapes `init(*args)` gives, kernels all ones and biases zero: every unit
  then reads all of its field, and is > 0 exactly where a lit input pixel lies in it."""
  shapes = jax.eval_shape(init, *args)
  return jax.tree.map(lambda s: jnp.ones(s.shape) if len(s.shape) > 1 else jnp.zeros(s.shape),
                      shapes)


def probe(fn, params, height, width, channels):
  """[first, last + 1) of the input rows and columns each row and column of units reads."""
  x = np.zeros((height + width, height, width, channels), np.float32)
  for i in range(height):
    x[i, i] = 1.0
  for j in range(width):
    x[height + j, :, j] = 1.0
  out = np.asarray(jax.jit(fn)(params, jnp.asarray(x))) > 0
  rows, cols = out[:height].any(axis=(2, 3)), out[height:].any(axis=(1, 3))  # (probe, unit)
  span = lambda hit: np.array([[np.flatnonzero(h).min(), np.flatnonzero(h).max() + 1]
                               for h in hit.T], float)
  return span(rows), span(cols)


def check_against_probe(fn, params, shape):
  field = receptive_fields(fn, params, (1, *shape))
  rows, cols = probe(fn, params, *shape)
  for bounds, support, size in ((field.bounds_y, rows, shape[0]),
                                (field.bounds_x, cols, shape[1])):
    # An end inside the image is where the unit's reading starts or stops; an end in the padding
    # is past what it reads (a dilated kernel can skip the first rows: a hole at the border).
    starts, ends = bounds[:, 0] >= 0, bounds[:, 1] <= size
    np.testing.assert_array_equal(bounds[starts, 0], support[starts, 0])
    np.testing.assert_array_equal(bounds[ends, 1], support[ends, 1])
    assert np.all(support[:, 0] >= bounds[:, 0]) and np.all(support[:, 1] <= bounds[:, 1])
    inside = starts & ends
    assert inside.any()
    np.testing.assert_allclose(bounds[inside].mean(-1), support[inside].mean(-1))
  return field


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    conv = lambda c, k, name, **kw: nn.Conv(c, k, name=name, **kw)
    x = nn.relu(conv(3, (3, 3), "same", padding="SAME")(x))
    x = nn.relu(conv(3, (3, 3), "valid", padding="VALID",
                     conv_general_dilated=ops.conv_general_dilated)(x))
    # "SAME" with stride 2 pads (0, 1) on an even map, the 1x1 shortcut not at all: the residual
    # sum reads the union of both fields.
    x = nn.relu(conv(3, (3, 3), "down", strides=2, padding="SAME")(x)
                + conv(3, (1, 1), "shortcut", strides=2)(x))
    x = ops.max_pool(x, (2, 2), strides=(2, 2))
    return nn.relu(conv(2, (2, 2), "dilated", kernel_dilation=2, padding="SAME")(x))


def test_tiny_net_matches_probe_and_hand_values():
  shape = (32, 24, 1)  # not square: rows and columns must not be swapped
  model = Tiny()
  params = positive(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
  field = check_against_probe(model.apply, params, shape)
  # same: [i-1, i+2); valid: [i-1, i+4) (crop of the padded conv); down: [2i-1, 2i+6), the
  # shortcut's [2i-1, 2i+4) inside; pool: [4i-1, 4i+8); dilated 2x2 "SAME" pads (1, 1) at the
  # pooled stride 4, window (2-1)*2+1 = 3: [4i-5, 4i+12).
  np.testing.assert_allclose(field.bounds_y[:, 0], 4 * np.arange(7) - 5)
  np.testing.assert_allclose(field.centres_y, 4 * np.arange(7) + 3.5)
  np.testing.assert_allclose(field.centres_x, 4 * np.arange(5) + 3.5)
  assert field.size == (17.0, 17.0) and field.stride == (4.0, 4.0)
  centres = receptive_field_centres(model.apply, params, (1, *shape))
  np.testing.assert_array_equal(centres[0], field.centres_y)


def test_cnn_cifar10_conv_maps():
  model = get_model("cnn_cifar10")
  params = positive(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  fn = lambda p, x: model.apply(p, x)[1]["conv_maps"]
  field = check_against_probe(fn, params, (32, 32, 3))
  # SAME 3x3, VALID 3x3, pool 2, SAME 3x3, VALID 3x3: 13 units of field 14 and stride 2.
  np.testing.assert_allclose(field.centres_y, 4.0 + 2.0 * np.arange(13))
  np.testing.assert_allclose(field.centres_x, field.centres_y)
  assert field.size == (14.0, 14.0) and field.stride == (2.0, 2.0)


def test_small_vgg_conv_maps():
  model = get_model("vgg", config=(2, "M", 2, "M", 2), dense=(), num_classes=None)
  params = positive(model.init, jax.random.PRNGKey(1), jnp.zeros((1, 24, 24, 1)))
  fn = lambda p, x: model.apply(p, x)[1]["conv_maps"]
  field = check_against_probe(fn, params, (24, 24, 1))
  # conv [i-1, i+2), pool [2i-1, 2i+3), conv [2i-3, 2i+5), pool [4i-3, 4i+7), conv [4i-7, 4i+11).
  np.testing.assert_allclose(field.bounds_y, np.stack([4 * np.arange(6) - 7,
                                                       4 * np.arange(6) + 11], -1))


def test_ops_without_receptive_field():
  x_shape = (1, 8, 8, 1)
  w = jnp.ones((3, 3, 1, 2))
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dense = lambda p, x: (conv(x).reshape(1, -1) @ p).reshape(1, 4, 4, 2)
  with pytest.raises(UnsupportedOperationError, match="`reshape`.*flatten"):
    receptive_fields(dense, jnp.ones((128, 32)), x_shape)
  over_rows = lambda p, x: jnp.einsum("bhwc,hk->bkwc", conv(x), p)
  with pytest.raises(UnsupportedOperationError, match="`dot_general`"):
    receptive_fields(over_rows, jnp.ones((8, 8)), x_shape)
  # A dense layer over the channels is a 1x1 convolution: the fields of `conv` pass through.
  channels = lambda p, x: nn.relu(conv(x) @ p + 1.0)
  np.testing.assert_allclose(receptive_field_centres(channels, jnp.ones((2, 5)), x_shape)[1],
                             np.arange(8) + 0.5)
  transposed = lambda p, x: jax.lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  with pytest.raises(UnsupportedOperationError, match="conv_general_dilated"):
    receptive_fields(transposed, None, x_shape)
  excite = lambda p, x: conv(x) * conv(x).mean(axis=(1, 2), keepdims=True)
  with pytest.raises(UnsupportedOperationError, match="reduce_sum"):
    receptive_fields(excite, None, x_shape)
  with pytest.raises(ConfigError, match="spatial axes"):
    receptive_fields(lambda p, x: conv(x)[:, 0], None, x_shape)
  with pytest.raises(ConfigError, match="x_shape"):
    receptive_fields(lambda p, x: conv(x), None, (8, 8), spatial_axes=(1, 2))
  # A pad then an unpadded window: the same fields as the padded window.
  padded = lambda p, x: jax.lax.reduce_window(jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), 0.0,
                                              jax.lax.add, (1, 5, 5, 1), (1, 1, 1, 1), "VALID")
  centres_y, centres_x = receptive_field_centres(padded, None, x_shape)
  np.testing.assert_allclose(centres_y, np.arange(8) + 0.5)
  np.testing.assert_allclose(centres_x, np.arange(8) + 0.5)
