"""Model tests: parameter counts, shapes, reference forwards, dropout, batch norm, registry."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.nn import (
  MLP,
  MODELS,
  VGG,
  CNNCifar10,
  CNNFashion,
  CNNMnist,
  ResNet18,
  SumPoolCNN,
  count_params,
  get_model,
  init_variables,
  logits_fn,
  sum_pool,
)


def abstract_init(model: nn.Module, image_shape: tuple[int, ...], batch: int = 2):
  """Variables and outputs as shapes only (`jax.eval_shape`: traces, never compiles)."""
  x = jnp.zeros((batch, *image_shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  return variables, outputs


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Parameter counts (hand-computed in the comments).

@pytest.mark.parametrize("name, kwargs, image_shape, expected", [
    # 896 + 9,248 + 18,496 + 36,928 + (6*6*64*512 + 512) + (512*10 + 10): Keras cifar10_cnn.py.
    ("cnn_cifar10", {}, (32, 32, 3), 1_250_858),
    # 320 + (14*14*32*256 + 256) + 2,570.
    ("cnn_fashion", {}, (28, 28, 1), 1_608_778),
    # 320 + 8,256 + (7*7*64*512 + 512) + 5,130.
    ("cnn_mnist", {}, (28, 28, 1), 1_619_850),
    # 260 + 6,275 + 40,100 + 1,010.
    ("sumpool_cnn", {}, (32, 32, 1), 47_645),
    # torchvision resnet18 with a 3x3 stem and a 10-way fc.
    ("resnet18", {"stem": "cifar", "num_classes": 10}, (32, 32, 3), 11_173_962),
    # torchvision resnet18.
    ("resnet18", {"stem": "imagenet", "num_classes": 1000}, (32, 32, 3), 11_689_512),
])
def test_param_counts(name, kwargs, image_shape, expected):
  variables, _ = abstract_init(get_model(name, **kwargs), image_shape)
  assert count_params(variables["params"]) == expected


def test_init_variables_cnn_cifar10():
  variables = init_variables(CNNCifar10(), jax.random.key(0), (32, 32, 3))
  assert set(variables) == {"params"}
  assert count_params(variables["params"]) == 1_250_858
  assert set(variables["params"]) == {"conv1", "conv2", "conv3", "conv4", "dense1", "classifier"}


# ---------------------------------------------------------------------------------------------
# Output and intermediate shapes.

@pytest.mark.parametrize("model, image_shape, expected", [
    (CNNCifar10(), (32, 32, 3), {"conv_maps": (13, 13, 64), "features": (512,)}),
    (CNNFashion(), (28, 28, 1), {"conv_maps": (28, 28, 32), "features": (256,)}),
    (CNNMnist(), (28, 28, 1), {"conv_maps": (14, 14, 64), "features": (512,)}),
    (SumPoolCNN(), (32, 32, 1), {"conv_maps": (2, 2, 100), "features": (100,)}),
    (MLP(hidden=(16, 8)), (5, 5, 2), {"features": (8,)}),
    (VGG(config=(8, "M", 16, "M"), dense=(12,)), (8, 8, 3),
     {"conv_maps": (4, 4, 16), "features": (12,)}),
])
def test_small_model_shapes(model, image_shape, expected, make_variables, make_jit_apply):
  variables = make_variables(model, image_shape)
  logits, intermediates = make_jit_apply(model)(variables, images((2, *image_shape)))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert {k: v.shape[1:] for k, v in intermediates.items()} == expected
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("model, image_shape, expected", [
    (VGG("vgg11"), (32, 32, 3), {"conv_maps": (2, 2, 512), "features": (512,)}),
    (VGG("vgg16", batch_norm=True, dense=()), (32, 32, 3),
     {"conv_maps": (2, 2, 512), "features": (512,)}),
    (ResNet18(num_classes=10, stem="imagenet", width=16), (64, 64, 3),
     {"block1": (16, 16, 16), "block2": (8, 8, 32), "block3": (4, 4, 64), "block4": (2, 2, 128),
      "conv_maps": (2, 2, 128), "features": (128,)}),
])
def test_large_model_shapes(model, image_shape, expected):
  variables, (logits, intermediates) = abstract_init(model, image_shape)
  assert logits.shape == (2, 10)
  assert {k: v.shape[1:] for k, v in intermediates.items()} == expected
  assert ("batch_stats" in variables) == (isinstance(model, ResNet18) or model.batch_norm)


def test_resnet18_cifar_forward(resnet_cifar):
  logits, inter = resnet_cifar.logits, resnet_cifar.intermediates
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  assert {k: v.shape[1:] for k, v in inter.items()} == {
      "block1": (32, 32, 64), "block2": (16, 16, 128), "block3": (8, 8, 256),
      "block4": (4, 4, 512), "conv_maps": (4, 4, 512), "features": (512,)}
  assert np.all(inter["conv_maps"] >= 0)  # after the ReLU
  np.testing.assert_allclose(inter["features"], inter["conv_maps"].mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  p = resnet_cifar.variables["params"]["classifier"]
  np.testing.assert_allclose(logits, inter["features"] @ p["kernel"] + p["bias"], rtol=1e-4,
                             atol=1e-4)


# ---------------------------------------------------------------------------------------------
# CNNMnist against a forward written with lax/jnp only.

@pytest.fixture(scope="module")
def mnist_run(make_variables, make_jit_apply):
  model = CNNMnist()
  variables = make_variables(model, (28, 28, 1), seed=3)
  return model, variables, images((2, 28, 28, 1), seed=4), make_jit_apply(model)


def lax_cnn_mnist(p: dict, x: jax.Array) -> jax.Array:
  def conv(x, layer):
    y = jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.maximum(y + layer["bias"], 0.0)

  def avg_pool(x):
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0

  x = avg_pool(conv(x, p["conv1"]))
  x = avg_pool(conv(x, p["conv2"]))
  x = x.reshape(x.shape[0], -1)
  x = jnp.maximum(x @ p["dense1"]["kernel"] + p["dense1"]["bias"], 0.0)
  return x @ p["classifier"]["kernel"] + p["classifier"]["bias"]


def test_cnn_mnist_matches_lax_forward(mnist_run):
  _, variables, x, apply = mnist_run
  logits, _ = apply(variables, x)
  np.testing.assert_allclose(logits, lax_cnn_mnist(variables["params"], x), atol=1e-5)


def test_logits_fn_jits_and_matches_apply(mnist_run):
  model, variables, x, apply = mnist_run
  jitted = jax.jit(logits_fn(model))(variables, x)
  np.testing.assert_allclose(jitted, apply(variables, x)[0], atol=1e-5)


def test_dropout(mnist_run):
  _, variables, x, apply = mnist_run
  eval0 = apply(variables, x)[0]
  eval1 = apply(variables, x, train=False, rngs={"dropout": jax.random.key(1)})[0]
  np.testing.assert_array_equal(eval0, eval1)
  train1 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})[0]
  train1b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})[0]
  train2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})[0]
  np.testing.assert_array_equal(train1, train1b)
  assert not np.allclose(train1, train2)
  assert not np.allclose(train1, eval0)


# ---------------------------------------------------------------------------------------------
# Sum pooling.

def test_sum_pool_by_hand():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  expected = np.array([[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
  np.testing.assert_array_equal(sum_pool(x)[0, :, :, 0], expected)
  np.testing.assert_array_equal(sum_pool(x, scale=0.5)[0, :, :, 0], 0.5 * expected)
  y = images((2, 6, 6, 3))
  np.testing.assert_allclose(sum_pool(y), 4.0 * nn.avg_pool(y, (2, 2), strides=(2, 2)), rtol=1e-6,
                             atol=1e-6)


@pytest.fixture(scope="module")
def sumpool_variables(make_variables):
  return make_variables(SumPoolCNN(), (32, 32, 1), seed=5)  # the same for every pool_scale


@pytest.mark.parametrize("pool_scale", [1.0, 0.5])
def test_sumpool_cnn_pools_by_summing(pool_scale, sumpool_variables, make_jit_apply):
  model, variables = SumPoolCNN(pool_scale=pool_scale), sumpool_variables
  x = np.full((1, 32, 32, 1), 0.7, np.float32)
  logits, inter = make_jit_apply(model)(variables, x)
  # The last pool sums the 2x2x100 conv map into the 100 features.
  np.testing.assert_allclose(inter["features"], pool_scale * inter["conv_maps"].sum(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  head = variables["params"]["classifier"]
  np.testing.assert_allclose(logits, inter["features"] @ head["kernel"][0, 0] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  # A constant input keeps every map spatially constant, so the whole forward reduces to
  # matrix-vector products with the spatially summed kernels, and each 2x2 sum pool to a factor
  # 4 * pool_scale.
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  a = np.full((1,), 0.7)
  for layer in ("conv1", "conv2", "conv3"):
    k, b = params[layer]["kernel"], params[layer]["bias"]
    a = 4 * pool_scale * np.maximum(a @ k.sum(axis=(0, 1)) + b, 0.0)
  np.testing.assert_allclose(inter["features"][0], a, rtol=1e-4, atol=1e-5)


def test_sumpool_cnn_rejects_other_sizes():
  with pytest.raises(ConfigError, match="32x32"):
    abstract_init(SumPoolCNN(), (28, 28, 1))


# ---------------------------------------------------------------------------------------------
# Batch norm.

def test_batch_norm_updates_and_uses_running_stats(make_jit_apply):
  model = VGG(config=(4, "M"), dense=(), num_classes=3, batch_norm=True)
  x = images((4, 6, 6, 2), seed=6)
  variables = init_variables(model, jax.random.key(7), (6, 6, 2))
  assert set(variables) == {"params", "batch_stats"}
  apply = make_jit_apply(model)
  train_out, updates = apply(variables, x, train=True, mutable="batch_stats")
  # PyTorch-style momentum: running = 0.9 * running + 0.1 * batch (biased variance).
  p = variables["params"]["conv1"]
  y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
  stats = updates["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"], 0.1 * y.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * y.var(axis=(0, 1, 2)), rtol=1e-4)
  new_variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
  # Training uses batch statistics, not the running ones ...
  train_again, _ = apply(new_variables, x, train=True, mutable="batch_stats")
  np.testing.assert_allclose(train_out[0], train_again[0], rtol=1e-5, atol=1e-6)
  # ... eval uses the running ones, so it changes after the update.
  assert not np.allclose(apply(variables, x)[0], apply(new_variables, x)[0])


# ---------------------------------------------------------------------------------------------
# Backbones without a classifier.

@pytest.mark.parametrize("name, kwargs, image_shape", [
    ("cnn_cifar10", {}, (32, 32, 3)),
    ("cnn_fashion", {}, (28, 28, 1)),
    ("cnn_mnist", {}, (28, 28, 1)),
    ("sumpool_cnn", {}, (32, 32, 1)),
    ("mlp", {}, (4, 4, 1)),
    ("resnet18", {"stem": "cifar"}, (32, 32, 3)),
    ("vgg", {}, (32, 32, 3)),
])
def test_num_classes_none_returns_features(name, kwargs, image_shape):
  variables, (logits, inter) = abstract_init(get_model(name, num_classes=None, **kwargs),
                                             image_shape)
  assert "classifier" not in variables["params"]
  assert logits.shape == inter["features"].shape and logits.ndim == 2


def test_num_classes_none_values(make_variables):
  model = MLP(hidden=(6,), num_classes=None)
  variables = make_variables(model, (3, 3))
  logits, inter = model.apply(variables, images((2, 3, 3)))
  np.testing.assert_array_equal(logits, inter["features"])
  assert logits.shape == (2, 6)


# ---------------------------------------------------------------------------------------------
# Registry.

def test_get_model_builds_every_model():
  for name, cls in MODELS.items():
    assert type(get_model(name)) is cls
  assert get_model("mlp", hidden=[8, 4]).hidden == (8, 4)
  assert get_model("vgg", config=[8, "M"]).config == (8, "M")
  assert get_model("resnet18", stem="cifar", num_classes=10).num_classes == 10


def test_get_model_unknown_name():
  with pytest.raises(ConfigError, match="Unknown model 'resnet50'") as e:
    get_model("resnet50")
  for name in MODELS:
    assert name in str(e.value)


def test_get_model_unknown_field():
  with pytest.raises(ConfigError, match="'depth'") as e:
    get_model("resnet18", depth=50)
  assert "valid fields: num_classes, stem, width" in str(e.value)


@pytest.mark.parametrize("name, kwargs, match", [
    ("resnet18", {"stem": "tiny"}, "stem 'tiny'"),
    ("resnet18", {"width": 0}, "width"),
    ("vgg", {"config": "vgg99"}, "vgg99"),
    ("vgg", {"config": (8, "X")}, "Invalid VGG config"),
])
def test_get_model_bad_values(name, kwargs, match):
  with pytest.raises(ConfigError, match=match):
    get_model(name, **kwargs)
