"""The CPU fast paths of `xjax.ops` (convolutions, max pooling): lax's values and gradients,
computed the faster way, and the programs the LRP engine reads from them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xjax import ops
from xjax.explain import composites
from xjax.explain.lrp import lrp, trace
from xjax.nn import CNNCifar10, cnn

NHWC = ("NHWC", "HWIO", "NHWC")  # what flax's nn.Conv passes
RNG = np.random.default_rng(0)

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="the crop is used on the CPU backend only")


@pytest.fixture(autouse=True)
def _fast_paths():
  """These tests are about the fast paths: on, whatever `XJAX_PLAIN_LAX` says."""
  with ops.plain_lax(False):
    yield


def primitives(fn, *args) -> list:
  return [eqn for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns]


def _dims(padding):
  return dict(window_strides=(1, 1), padding=padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("padding", ["VALID", ((0, 0), (0, 0))])
@pytest.mark.parametrize("kernel", [(3, 3), (5, 5), (3, 5)])
def test_valid_conv_matches_lax_forward_and_gradients(kernel, padding):
  # 8 input channels: more values per pixel than the patch path takes.
  x = jnp.asarray(RNG.normal(size=(2, 9, 11, 8)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(*kernel, 8, 4)), jnp.float32)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **_dims(padding))
  fast = lambda x, w: ops.conv_general_dilated(x, w, **_dims(padding))
  want, want_vjp = jax.vjp(ref, x, w)
  got, got_vjp = jax.vjp(fast, x, w)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(RNG.normal(size=want.shape), jnp.float32)
  for g, r in zip(got_vjp(cot), want_vjp(cot)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
  names = [(e.primitive.name, e.params.get("padding")) for e in primitives(fast, x, w)]
  half = tuple((k - 1) // 2 for k in kernel)
  assert names == [("conv_general_dilated", tuple((h, h) for h in half)), ("slice", None)]


@pytest.mark.parametrize("kwargs, kernel", [
    (dict(window_strides=(1, 1), padding="SAME"), (3, 3)),
    (dict(window_strides=(1, 1), padding=((1, 1), (1, 1))), (3, 3)),
    (dict(window_strides=(2, 2), padding="VALID"), (3, 3)),
    (dict(window_strides=(1, 1), padding="VALID", rhs_dilation=(2, 2)), (3, 3)),
    (dict(window_strides=(1, 1), padding=((0, 0), (0, 0)), lhs_dilation=(2, 2)), (3, 3)),
    (dict(window_strides=(1, 1), padding="VALID"), (2, 2)),
    (dict(window_strides=(1, 1), padding="VALID"), (3, 2)),
    (dict(window_strides=(1, 1), padding="VALID", feature_group_count=2), (3, 3)),
    (dict(window_strides=(2, 2), padding=((1, 1), (1, 1))), (1, 1)),  # a padded 1x1
    (dict(window_strides=(2, 2), padding="VALID", rhs_dilation=(2, 2)), (1, 1)),
])
def test_other_convs_are_left_to_lax(kwargs, kernel):
  # 20 channels: too many values per pixel for the patch path
  in_features = 20 * (kwargs.get("feature_group_count") or 1)
  x = jnp.asarray(RNG.normal(size=(2, 8, 8, in_features)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(*kernel, 20, 4)), jnp.float32)
  ref = lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs)
  fast = lambda x, w: ops.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs)
  got = primitives(fast, x, w)
  assert [e.primitive.name for e in got] == ["conv_general_dilated"]
  assert got[0].params == primitives(ref, x, w)[0].params
  np.testing.assert_array_equal(fast(x, w), ref(x, w))


def test_default_dimension_numbers_nchw():
  x = jnp.asarray(RNG.normal(size=(2, 3, 9, 7)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(4, 3, 3, 5)), jnp.float32)
  got = ops.conv_general_dilated(x, w, (1, 1), "VALID")
  np.testing.assert_allclose(got, lax.conv_general_dilated(x, w, (1, 1), "VALID"), rtol=1e-5,
                             atol=1e-5)
  assert "slice" in [e.primitive.name for e in primitives(
      lambda x, w: ops.conv_general_dilated(x, w, (1, 1), "VALID"), x, w)]


def test_kernel_larger_than_input_is_left_to_lax():
  x, w = jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1))
  fast = lambda x, w: ops.conv_general_dilated(x, w, **_dims("VALID"))
  assert [e.primitive.name for e in primitives(fast, x, w)] == ["conv_general_dilated"]


@pytest.mark.parametrize("dims, x_shape, w_shape, strides", [
    (NHWC, (3, 9, 9, 6), (1, 1, 6, 5), (2, 2)),  # ResNet's projection; 9: the last row unread
    (NHWC, (3, 8, 8, 6), (1, 1, 6, 5), (1, 1)),
    (("NCHW", "OIHW", "NCHW"), (3, 6, 8, 7), (5, 6, 1, 1), (1, 2)),
    (("NWC", "WIO", "NWC"), (3, 10, 6), (1, 6, 5), (3,)),
    (("NHWC", "OIHW", "NCHW"), (3, 7, 7, 6), (5, 6, 1, 1), (2, 3)),
])
def test_pointwise_conv_gradients_are_lax_s(dims, x_shape, w_shape, strides):
  x = jnp.asarray(RNG.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(RNG.normal(size=w_shape), jnp.float32)
  kwargs = dict(window_strides=strides, padding="VALID", dimension_numbers=dims)
  ref = lambda x, w: lax.conv_general_dilated(x, w, **kwargs)
  fast = lambda x, w: ops.conv_general_dilated(x, w, **kwargs)
  want, want_vjp = jax.vjp(ref, x, w)
  got, got_vjp = jax.vjp(fast, x, w)
  np.testing.assert_array_equal(got, want)  # the forward pass is lax's own op
  cot = jnp.asarray(RNG.normal(size=want.shape), jnp.float32)
  for g, r in zip(got_vjp(cot), want_vjp(cot)):
    assert g.shape == r.shape
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  # The gradient is matrix products and a pad, not XLA's transposed convolutions.
  backward = [e.primitive.name for e in jax.make_jaxpr(
      lambda x, w, c: jax.vjp(fast, x, w)[1](c))(x, w, cot).jaxpr.eqns]
  assert "conv_general_dilated" not in str(backward), backward
  assert "dot_general" in backward


@pytest.mark.parametrize("x_shape, w_shape, padding", [
    ((3, 12, 12, 3), (3, 3, 3, 5), "VALID"),  # an RGB image's first layer
    ((3, 12, 11, 3), (3, 3, 3, 5), "SAME"),
    ((3, 12, 11, 1), (5, 5, 1, 4), ((2, 1), (0, 3))),  # a grey image, uneven explicit padding
    ((3, 12, 2), (4, 2, 5), "SAME"),  # 1-D, even kernel
])
def test_patch_conv_matches_lax(x_shape, w_shape, padding):
  x = jnp.asarray(RNG.normal(size=x_shape), jnp.float32)
  w = jnp.asarray(RNG.normal(size=w_shape), jnp.float32)
  kwargs = dict(window_strides=(1,) * (len(x_shape) - 2), padding=padding)
  dims = NHWC if len(x_shape) == 4 else ("NWC", "WIO", "NWC")
  ref = lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=dims, **kwargs)
  fast = lambda x, w: ops.conv_general_dilated(x, w, dimension_numbers=dims, **kwargs)
  linear = lambda x, w: ops.linear_conv_general_dilated(x, w, dimension_numbers=dims, **kwargs)
  want, want_vjp = jax.vjp(ref, x, w)
  got, got_vjp = jax.vjp(fast, x, w)  # differentiated: the patches' forward pass
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast(x, w), want, rtol=1e-5, atol=1e-5)  # not: lax's (cropped)
  np.testing.assert_allclose(linear(x, w), want, rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(RNG.normal(size=want.shape), jnp.float32)
  for g, r in zip(got_vjp(cot), want_vjp(cot)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(jax.linear_transpose(lambda v: linear(v, w), x)(cot)[0],
                             want_vjp(cot)[0], rtol=1e-5, atol=1e-4)
  # The gradient program has no convolution; the undifferentiated one is lax's.
  grad_names = str(jax.make_jaxpr(lambda x, w, c: jax.vjp(fast, x, w)[1](c))(x, w, cot))
  assert "conv_general_dilated" not in grad_names
  assert "conv_general_dilated" in str(jax.make_jaxpr(fast)(x, w))


def test_patch_path_threshold():
  few = lambda c, strides=(1, 1): ops.has_few_patch_values(
      (1, 8, 8, c), (3, 3, c, 4), strides, "SAME", dimension_numbers=NHWC)
  assert few(7) and not few(8)  # 63 and 72 values per pixel against MAX_PATCH_VALUES 64
  assert not few(7, strides=(2, 2))
  assert not ops.has_few_patch_values((1, 7, 8, 8), (4, 7, 3, 3), (1, 1), "SAME",
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"))


def test_linear_pointwise_conv_transposes_to_lax_s_gradient():
  x = jnp.asarray(RNG.normal(size=(3, 9, 9, 6)), jnp.float32)
  w = jnp.asarray(RNG.normal(size=(1, 1, 6, 5)), jnp.float32)
  kwargs = dict(window_strides=(2, 2), padding="VALID", dimension_numbers=NHWC)
  linear = lambda v: ops.linear_conv_general_dilated(v, w, **kwargs)
  ref = lambda v: lax.conv_general_dilated(v, w, **kwargs)
  np.testing.assert_allclose(linear(x), ref(x), rtol=1e-5, atol=1e-5)
  assert "conv_general_dilated" not in [e.primitive.name for e in primitives(linear, x)]
  cot = jnp.asarray(RNG.normal(size=ref(x).shape), jnp.float32)
  got = jax.linear_transpose(linear, x)(cot)[0]
  np.testing.assert_allclose(got, jax.vjp(ref, x)[1](cot)[0], rtol=1e-5, atol=1e-5)


def test_pointwise_conv_hand_case():
  # x (1, 3, 1) channels [1, 2]; stride 2 reads pixels 0 and 2; w maps 2 channels to 1.
  x = jnp.asarray([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
  w = jnp.asarray([[[10.0], [1.0]]])
  f = lambda x, w: ops.conv_general_dilated(x, w, (2,), "VALID",
                                            dimension_numbers=("NWC", "WIO", "NWC"))
  np.testing.assert_array_equal(f(x, w)[0, :, 0], [12.0, 56.0])
  dx, dw = jax.grad(lambda x, w: (f(x, w)[0, :, 0] * jnp.asarray([1.0, 2.0])).sum(), (0, 1))(x, w)
  np.testing.assert_array_equal(dx[0], [[10.0, 1.0], [0.0, 0.0], [20.0, 2.0]])
  np.testing.assert_array_equal(dw[0, :, 0], [1.0 + 10.0, 2.0 + 12.0])


@pytest.fixture(scope="module")
def cifar():
  model = CNNCifar10()
  x = jnp.asarray(RNG.uniform(size=(4, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  return model, variables, x


def _logits_and_grad(model, variables, x):
  labels = jnp.arange(x.shape[0]) % 10

  def loss(v):
    logits = model.apply(v, x)[0]
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits

  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables)
  return logits, grads


def test_cnn_cifar10_matches_plain_lax_convs(cifar, monkeypatch):
  model, variables, x = cifar
  logits, grads = _logits_and_grad(model, variables, x)
  monkeypatch.setattr(cnn, "_fast_conv", lax.conv_general_dilated)
  monkeypatch.setattr(ops, "max_pool", lambda x, window, strides=None, padding="VALID":
                      nn.max_pool(x, window, strides=strides, padding=padding))
  plain_variables = model.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, plain_variables) == jax.tree.map(jnp.shape, variables)
  want_logits, want_grads = _logits_and_grad(model, variables, x)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cnn_cifar10_jaxpr_has_no_valid_conv(cifar):
  model, variables, x = cifar
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x)[0])(variables, x)
  eqns = list(jaxpr.jaxpr.eqns)
  for e in jaxpr.jaxpr.eqns:  # conv1 (3 channels) is the patch path's custom_vjp: look inside
    if e.primitive.name == "custom_vjp_call":
      eqns += e.params["call_jaxpr"].jaxpr.eqns
  convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 4
  assert all(tuple(map(tuple, e.params["padding"])) == ((1, 1), (1, 1)) for e in convs)


def test_lrp_merges_the_bias_into_the_cropped_conv(cifar, monkeypatch):
  model, variables, x = cifar
  apply_fn = lambda v, x: model.apply(v, x)[0]
  program = trace(apply_fn, variables, x[:2])
  layers = {layer.info.name.split("/")[-1]: layer for layer in program.layers}
  for name, shape in (("conv2", (2, 30, 30, 32)), ("conv4", (2, 13, 13, 64))):
    layer = layers[name]
    assert [e.primitive.name for e in layer.layout] == ["slice"]
    assert [e.primitive.name for e in layer.chain] == ["add"]
    assert layer.info.output_shape == shape
  target = jnp.array([1, 7])

  def explain(v, x, t):  # compiled: one compile, not one per operation of the model
    return lrp(apply_fn, v, x, t, composites.epsilon_alpha2_beta1())

  got = jax.jit(explain)(variables, x[:2], target)
  monkeypatch.setattr(cnn, "_fast_conv", lax.conv_general_dilated)
  want = jax.jit(explain)(variables, x[:2], target)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


class _ConvBN(nn.Module):
  conv: object = ops.conv_general_dilated
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), padding="VALID", use_bias=self.use_bias,
                conv_general_dilated=self.conv, name="conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x))
    return nn.Dense(3, name="dense")(x.reshape((x.shape[0], -1)))


@pytest.mark.parametrize("use_bias", [True, False])
def test_batch_norm_folds_through_the_crop(use_bias):
  x = jnp.asarray(RNG.normal(size=(2, 7, 6, 2)), jnp.float32)
  fast, plain = _ConvBN(use_bias=use_bias), _ConvBN(lax.conv_general_dilated, use_bias)
  variables = fast.init(jax.random.key(1), x)
  stats = variables["batch_stats"]["bn"]
  variables["batch_stats"]["bn"] = {"mean": stats["mean"] + 0.3,
                                    "var": stats["var"] * jnp.linspace(0.5, 2.0, 4)}
  variables["params"]["bn"]["scale"] = jnp.array([1.5, -0.7, 0.2, 1.0])
  program = trace(lambda v, x: fast.apply(v, x), variables, x)
  conv = program.layers[0]
  assert [e.primitive.name for e in conv.layout] == ["slice"]
  assert conv.info.output_shape == (2, 5, 4, 4)
  assert conv.feature_axes == (3, 3)
  target = jnp.array([0, 2])
  for composite in (composites.epsilon_alpha2_beta1(), composites.epsilon_plus()):
    got = jax.jit(lambda v, x, t, c=composite: lrp(fast.apply, v, x, t, c))(variables, x, target)
    want = jax.jit(lambda v, x, t, c=composite: lrp(plain.apply, v, x, t, c))(variables, x,
                                                                               target)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_conv_without_bias_keeps_its_crop():
  """With nothing to merge the crop stays in the layer: its output is the VALID conv's maps."""
  def apply_fn(w, x):
    y = ops.conv_general_dilated(x, w["k"], **_dims("VALID"))
    return nn.relu(y).sum(axis=(1, 2))

  x = jnp.asarray(RNG.normal(size=(2, 6, 6, 2)), jnp.float32)
  params = {"k": jnp.asarray(RNG.normal(size=(3, 3, 2, 3)), jnp.float32)}
  layer = trace(apply_fn, params, x).layers[0]
  assert [e.primitive.name for e in layer.layout] == ["slice"]
  assert layer.info.output_shape == (2, 4, 4, 3)


# --- max pooling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [30, 13])  # 13: the last row and column are in no window
def test_tiling_max_pool_matches_flax_forward_and_gradient(size):
  x = jnp.asarray(RNG.normal(size=(2, size, size, 3)), jnp.float32)  # no ties
  g = jnp.asarray(RNG.normal(size=(2, size // 2, size // 2, 3)), jnp.float32)
  y, pullback = jax.vjp(lambda v: ops.max_pool(v, (2, 2), strides=(2, 2)), x)
  want_y, want_pullback = jax.vjp(lambda v: nn.max_pool(v, (2, 2), strides=(2, 2)), x)
  np.testing.assert_array_equal(y, want_y)
  np.testing.assert_allclose(pullback(g)[0], want_pullback(g)[0], rtol=1e-6, atol=1e-7)
  # On CPU the gradient is the mask, not XLA's select-and-scatter.
  grad_program = jax.make_jaxpr(jax.grad(lambda v: ops.max_pool(v, (2, 2)).sum()))(x)
  assert "select_and_scatter_add" not in str(grad_program)


def test_tied_maxima_share_the_gradient():
  x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)  # two maxima: each gets half
  grad = jax.grad(lambda v: ops.max_pool(v, (2, 2)).sum())(x)
  np.testing.assert_allclose(grad[0, ..., 0], [[0.0, 0.5], [0.5, 0.0]])


def test_overlapping_or_padded_pooling_is_flaxs():
  x = jnp.asarray(RNG.normal(size=(2, 9, 9, 2)), jnp.float32)
  pool = lambda f: (lambda v: f(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
  np.testing.assert_array_equal(pool(ops.max_pool)(x), pool(nn.max_pool)(x))
  grad = jax.grad(lambda v: pool(ops.max_pool)(v).sum())(x)
  np.testing.assert_array_equal(grad, jax.grad(lambda v: pool(nn.max_pool)(v).sum())(x))
