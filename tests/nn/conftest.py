"""Fixtures shared by the model tests: one ResNet-18 forward, compiled once per session."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xjax.nn import ResNet18


def random_variables(model: nn.Module, image_shape: tuple[int, ...], seed: int = 0) -> dict:
  """Variables of `model` filled with numpy random values: no init compile (ResNet-18's is slow).

  Kernels are He-scaled normals, biases small; batch norm gets non-trivial scale/bias and random
  running mean (N(0, 0.1)) and variance (U(0.5, 2)), so eval-mode batch norm matters.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, *image_shape)), train=False))

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
    elif name == "scale":
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == "var":
      value = rng.uniform(0.5, 2.0, leaf.shape)
    else:  # bias, mean
      value = rng.normal(0.0, 0.1, leaf.shape)
    return jnp.asarray(value, jnp.float32)

  return {k: jax.tree_util.tree_map_with_path(fill, v) for k, v in shapes.items()}


@pytest.fixture(scope="session")
def make_variables():
  """`random_variables` as a fixture (test modules do not import conftest)."""
  return random_variables


def jit_apply(model: nn.Module):
  """`model.apply` under `jax.jit`: one compile instead of an op-by-op eager dispatch."""
  return jax.jit(model.apply, static_argnames=("train", "mutable"))


@pytest.fixture(scope="session")
def make_jit_apply():
  return jit_apply


@dataclasses.dataclass
class ResNetRun:
  model: ResNet18
  variables: dict
  x: np.ndarray  # (2, 32, 32, 3) NHWC
  logits: np.ndarray
  intermediates: dict


@pytest.fixture(scope="session")
def resnet_cifar() -> ResNetRun:
  """ResNet-18 (cifar stem, 10 classes) with random weights and stats, eval mode, batch of 2."""
  model = ResNet18(num_classes=10, stem="cifar")
  variables = random_variables(model, (32, 32, 3), seed=1)
  x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
  logits, intermediates = jit_apply(model)(variables, x, train=False)
  return ResNetRun(model, variables, x, np.asarray(logits),
                   jax.tree_util.tree_map(np.asarray, intermediates))
