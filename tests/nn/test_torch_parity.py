"""The PyTorch twins of benchmarks/torch_models.py compute the same logits on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install "
                            "xjax[bench]); the PyTorch twins cannot be checked")

from benchmarks.torch_models import flax_to_torch, make_torch_model  # noqa: E402
from xjax.nn import get_model  # noqa: E402


def torch_logits(torch_model, x_nhwc: np.ndarray) -> np.ndarray:
  torch_model.eval()
  with torch.no_grad():
    return torch_model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def assert_close_relative(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4) -> None:
  """max |actual - expected| <= rtol * max |expected| (element-wise rtol fails near 0)."""
  assert actual.shape == expected.shape
  err, scale = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
  assert scale > 0 and err <= rtol * scale, f"max abs error {err:.3g} vs scale {scale:.3g}"


def test_resnet18_cifar_parity(resnet_cifar):
  stats = resnet_cifar.variables["batch_stats"]["layer3_0"]["proj_bn"]
  # Random running statistics (conftest.random_variables), so eval-mode batch norm matters.
  assert np.abs(np.asarray(stats["mean"])).max() > 0
  assert np.abs(np.asarray(stats["var"]) - 1).max() > 0.1
  twin = make_torch_model("resnet18", num_classes=10, stem="cifar")
  flax_to_torch("resnet18", resnet_cifar.variables, twin)
  assert torch.equal(twin.layer3_0.proj_bn.running_var,
                     torch.from_numpy(np.array(stats["var"])))
  assert_close_relative(torch_logits(twin, resnet_cifar.x), resnet_cifar.logits)


@pytest.mark.parametrize("name, kwargs, image_shape", [
    ("cnn_cifar10", {}, (32, 32, 3)),
    ("cnn_fashion", {}, (28, 28, 1)),
    ("cnn_mnist", {}, (28, 28, 1)),
    ("sumpool_cnn", {}, (32, 32, 1)),
    ("sumpool_cnn", {"pool_scale": 0.5}, (32, 32, 1)),
    ("resnet18", {"stem": "imagenet", "width": 16, "num_classes": 7}, (64, 64, 3)),
])
def test_parity(name, kwargs, image_shape, make_variables, make_jit_apply):
  model = get_model(name, **kwargs)
  variables = make_variables(model, image_shape, seed=11)
  x = np.random.default_rng(12).normal(size=(2, *image_shape)).astype(np.float32)
  logits = np.asarray(make_jit_apply(model)(variables, x)[0])
  twin = flax_to_torch(name, variables, make_torch_model(name, **kwargs))
  assert_close_relative(torch_logits(twin, x), logits)


def test_flax_to_torch_rejects_mismatches(make_variables):
  variables = make_variables(get_model("sumpool_cnn"), (32, 32, 1))
  with pytest.raises(ValueError, match="SumPoolCNNTorch"):
    flax_to_torch("sumpool_cnn", variables, make_torch_model("cnn_mnist"))
  with pytest.raises(ValueError, match="Shape mismatch for 'classifier\\."):
    flax_to_torch("sumpool_cnn", variables, make_torch_model("sumpool_cnn", num_classes=3))
