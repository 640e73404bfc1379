"""The `XJAX_PLAIN_LAX` switch of `xjax.ops`: read from the environment at trace time; with it on,
a model's gradient is the very program of the same model built on lax's ops, and the logits, the
input gradient and the LRP heatmap equal the fast paths' to float tolerance. And the ops layer
imports nothing of xjax above it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xjax import ops
from xjax.explain.lrp import lrp
from xjax.nn import CNNCifar10, ResNet18, cnn, resnet

OPS = Path(__file__).resolve().parents[2] / "xjax" / "ops"

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu",
                                reason="the fast paths are taken on the CPU backend only")

# Between them every path: cnn_cifar10 the patches (conv1 on RGB), the crop (its VALID convs) and
# the max-pool mask; ResNet-18 the patches (its CIFAR stem) and the 1x1 projections.
MODELS = {
    "cnn_cifar10": lambda: CNNCifar10(),
    "resnet18": lambda: ResNet18(num_classes=10, stem="cifar", width=4),
}


def test_the_switch_reads_the_environment(monkeypatch):
  monkeypatch.delenv(ops.PLAIN_LAX_ENV, raising=False)
  assert ops.fast_paths_enabled()
  for value in ("1", "true", "YES", " on "):
    monkeypatch.setenv(ops.PLAIN_LAX_ENV, value)
    assert not ops.fast_paths_enabled(), value
  for value in ("", "0", "false", "Off", "no"):
    monkeypatch.setenv(ops.PLAIN_LAX_ENV, value)
    assert ops.fast_paths_enabled(), value


def test_plain_lax_sets_and_restores_the_switch(monkeypatch):
  monkeypatch.delenv(ops.PLAIN_LAX_ENV, raising=False)
  with ops.plain_lax():
    assert not ops.fast_paths_enabled()
    with ops.plain_lax(False):
      assert ops.fast_paths_enabled()
    assert not ops.fast_paths_enabled()
  assert ops.PLAIN_LAX_ENV not in os.environ
  monkeypatch.setenv(ops.PLAIN_LAX_ENV, "yes")
  with pytest.raises(RuntimeError), ops.plain_lax(False):
    raise RuntimeError  # restored on the way out of an exception too
  assert os.environ[ops.PLAIN_LAX_ENV] == "yes"


def test_the_ops_layer_imports_nothing_of_xjax_above_it():
  """Below nn and explain: any import, lazy ones included, stays inside `xjax.ops`."""
  found = []
  for path in sorted(OPS.glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: inside xjax.ops only from the same package
          names = [] if node.level == 1 else [f"{'.' * node.level}{node.module or ''}"]
        else:
          names = [f"{node.module}.{alias.name}" for alias in node.names]
      else:
        continue
      found += [f"{path.name}:{node.lineno} {name}" for name in names
                if (name == "xjax" or name.startswith(("xjax.", ".")))
                and not name.startswith("xjax.ops")]
  assert not found, found


def _logits_grad_lrp(model):
  """A jitted (params, x, target) -> (logits, gradient of the target logits at x, LRP heatmap).

  A fresh function per call: jax caches traces by function, and the switch is read when one is
  traced."""
  apply_fn = lambda v, x: model.apply(v, x)[0]

  def run(variables, x, target):
    logits = apply_fn(variables, x)
    target_logits = lambda x: jnp.take_along_axis(apply_fn(variables, x), target[:, None], 1)
    grad = jax.grad(lambda x: target_logits(x).sum())(x)
    return logits, grad, lrp(apply_fn, variables, x, target)

  return jax.jit(run)


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_run(request, make_variables):
  model = MODELS[request.param]()
  variables = make_variables(model, (16, 16, 3), seed=3)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 3)), jnp.float32)
  return request.param, model, variables, x


def test_plain_lax_gives_the_fast_paths_values(model_run):
  _, model, variables, x = model_run
  target = jnp.array([1, 7])
  with ops.plain_lax(False):
    fast = _logits_grad_lrp(model)(variables, x, target)
  with ops.plain_lax():
    plain = _logits_grad_lrp(model)(variables, x, target)
  for what, got, want in zip(("logits", "input gradient", "LRP"), fast, plain):
    assert np.abs(want).max() > 0, what
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=what)


def test_plain_lax_gradient_is_the_lax_models_program(model_run, monkeypatch):
  name, model, variables, x = model_run
  # A fresh function per trace: jax.make_jaxpr caches traces by function, as jax.jit does.
  program = lambda: str(jax.make_jaxpr(
      lambda v, x: jax.grad(lambda x: model.apply(v, x)[0].sum())(x))(variables, x))
  with ops.plain_lax(False):
    fast = program()
  with ops.plain_lax():
    plain = program()
  assert "custom_vjp_call" in fast
  assert "custom_vjp_call" not in plain
  if name == "cnn_cifar10":  # lax's max-pool gradient, not the mask
    assert "select_and_scatter_add" in plain and "select_and_scatter_add" not in fast
  # The same model with lax's ops put in directly, fast paths on: the program the switch gives.
  monkeypatch.setattr(cnn, "_fast_conv", lax.conv_general_dilated)
  monkeypatch.setattr(resnet, "_fast_conv", lax.conv_general_dilated)
  monkeypatch.setattr(ops, "max_pool", nn.max_pool)
  with ops.plain_lax(False):
    assert program() == plain
