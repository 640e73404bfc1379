"""The benchmarks compare like with like: same loss and same update in both implementations.

Runs only the benchmarks' correctness checks (no timing): the train-step benchmark (xjax against
PyTorch) for the CIFAR10 CNN at batch 4, which needs torch, and the XNet benchmark (the library's
vmapped drop loss against k full forward passes) on a tiny XNet, which does not, and the metrics
benchmark (xjax's metrics against Quantus 0.6.0's on the same batch), which needs quantus.
"""

from __future__ import annotations

import numpy as np
import pytest


def test_train_step_check_cnn_cifar10():
  pytest.importorskip("torch", reason="torch is not installed (optional: pip install xjax[bench]); "
                      "the train-step benchmark cannot be checked")
  from benchmarks.train_step import check_correctness, make_batch
  check = check_correctness("cnn_cifar10", make_batch(4, 32))
  # One step from the same weights on the same batch, dropout off: the same loss ...
  assert check["loss_rel_diff"] < 1e-4, check["loss_rel_diff"]
  # ... and the same new weights: conv1's kernel after the step, xjax's converted back to OIHW.
  kernel_x, kernel_t, kernel_0 = check["kernel_xjax"], check["kernel_torch"], check["kernel_init"]
  assert kernel_x.shape == kernel_t.shape == (32, 3, 3, 3)
  scale = np.max(np.abs(kernel_t))
  assert np.max(np.abs(kernel_x - kernel_t)) < 1e-4 * scale
  # The step moved the kernel by far more than that tolerance (a step lost in one framework
  # would fail above) ...
  assert np.max(np.abs(kernel_t - kernel_0)) > 10 * 1e-4 * scale
  # ... and the updates themselves (-lr x momentum buffer = -lr x gradient) agree to 1e-4.
  assert check["kernel_update_rel_diff"] < 1e-4, check["kernel_update_rel_diff"]
  assert check["update_rel_diff"] < 1e-4, (check["update_rel_diff"], check["worst_update"])
  # The second step (after the SGD-with-momentum update) gives the same loss too.
  assert check["loss2_rel_diff"] < 1e-4, check["loss2_rel_diff"]


def test_xnet_step_check_vmap_equals_naive_passes():
  # The XNet benchmark's check on a tiny XNet (ResNet-18 of width 4, 8x8 images, batch 8, k = 2):
  # one train step with the library's vmapped drop loss (one backbone pass) and one naive step
  # (k more full forward passes, neuron j dropped in pass j), from the same state on the same
  # batch. ResNet-18 has no dropout, so the passes are the same function of the same weights.
  # (XLA's backend optimisation level 0 for both steps: 3x faster to compile, the same math.)
  from benchmarks.xnet_step import TOLERANCE, UPDATE_TOLERANCE, check_xnet_step
  check = check_xnet_step(2, batch_size=8, image_size=8, backbone_width=4,
                          compiler_options={"xla_backend_optimization_level": 0})
  # The drop loss is part of the step: some categories have images, and the term is not 0.
  assert check["present"] > 0
  assert abs(check["drop_xnet"]) > 1e-2, check["drop_xnet"]
  # Same drop-loss term, same total loss ...
  assert abs(check["drop_naive"] - check["drop_xnet"]) <= TOLERANCE * abs(check["drop_xnet"])
  assert check["loss_rel_diff"] < TOLERANCE, (check["loss_xnet"], check["loss_naive"])
  # ... and the same new parameters, and the same updates, which moved the weights by far more
  # than the tolerance.
  assert check["params_l2_rel_diff"] < TOLERANCE, check["params_l2_rel_diff"]
  assert check["update_l2_rel_diff"] < UPDATE_TOLERANCE, check["update_l2_rel_diff"]
  assert check["update_rel_size"] > 100 * UPDATE_TOLERANCE, check["update_rel_size"]


def test_metrics_check_xjax_equals_quantus():
  # The metrics benchmark's check on 4 shapes images (no timing): every metric scored by xjax
  # and by Quantus 0.6.0 (on the PyTorch twin of the MNIST CNN, same weights) with the parity
  # tests' settings; the scores agree to those tests' tolerances, the pointing game exactly.
  import importlib.util

  if importlib.util.find_spec("quantus") is None:
    pytest.skip("quantus is not installed (optional: pip install quantus==0.6.0); the metrics "
                "benchmark cannot be checked")
  torch = pytest.importorskip("torch", reason="torch is not installed (optional: pip install "
                              "xjax[bench]); Quantus needs a torch model")
  try:
    from benchmarks.metrics import TOLERANCE, Setup, check_metrics, make_metrics
  except ImportError as e:  # e.g. another Quantus version: the parity is pinned to 0.6.0
    pytest.skip(f"the metrics benchmark does not import: {e}")
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # a tiny model on a shared machine: one thread is fastest
  try:
    setup = Setup(4)
    checks = check_metrics(setup, make_metrics(setup, num_samples=10))
  finally:
    torch.set_num_threads(threads)
  assert set(checks) == set(TOLERANCE)
  for name, check in checks.items():
    assert check["nonfinite"] == 0, (name, check)
    assert check["agree"], (name, check)
    # The scores are not all zero (a comparison of zeros would pass anything).
    assert check["scale"] > 1e-3, (name, check)
  assert checks["pointing_game"]["max_abs_diff"] == 0.0
  for name in ("pixel_flipping", "region_perturbation", "faithfulness_correlation"):
    assert checks[name]["max_abs_diff"] < 1e-4 * max(1.0, checks[name]["scale"]), checks[name]
  assert checks["pixel_flipping"]["shape"] == (4, 49)  # 784 pixels, 16 a step
  assert checks["region_perturbation"]["shape"] == (4, 49)  # 7 x 7 patches of 4 x 4


def test_train_step_profile_layers_cnn_cifar10():
  # The per-layer profile's layer list (no timing): the CIFAR10 CNN's layers, read from the traced
  # model, in program order, with the input shapes at the profile's batch size (NHWC; dense
  # layers (B, features)) and the weights of the layers that have them.
  pytest.importorskip("torch", reason="torch is not installed (optional: pip install xjax[bench]); "
                      "the train-step benchmark cannot be imported")
  from benchmarks.train_step import profile_layers
  layers = profile_layers("cnn_cifar10", 4)
  assert [(layer.name, layer.kind, layer.input_shape, layer.weight_shape) for layer in layers] == [
      ("conv1", "conv", (4, 32, 32, 3), (3, 3, 3, 32)),
      ("conv2", "conv", (4, 32, 32, 32), (3, 3, 32, 32)),
      ("max_pool1", "max_pool", (4, 30, 30, 32), None),
      ("conv3", "conv", (4, 15, 15, 32), (3, 3, 32, 64)),
      ("conv4", "conv", (4, 15, 15, 64), (3, 3, 64, 64)),
      ("max_pool2", "max_pool", (4, 13, 13, 64), None),
      ("dense1", "dense", (4, 2304), (2304, 512)),
      ("classifier", "dense", (4, 512), (512, 10)),
  ]
  assert layers[2].options == {"window": (2, 2), "strides": (2, 2), "padding": ((0, 0), (0, 0))}
  # Each layer carries its own variables (what the profile applies the module to).
  assert set(layers[0].variables["params"]) == {"kernel", "bias"}
  assert layers[0].module.features == 32 and layers[1].module.padding == "VALID"


def test_srae_step_check_vmap_equals_loop():
  # The SRAE benchmark's check (no timing): one vmapped step of C = 3 modules and three steps of
  # one module each, from the same parameters, give the same new parameters (else it raises).
  import argparse

  import jax.numpy as jnp

  from benchmarks.srae_step import TOLERANCE, measure
  rng = np.random.default_rng(0)
  z = jnp.asarray(np.maximum(rng.standard_normal((8, 12)), 0), jnp.float32)
  y = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
  result = measure(3, z, y, argparse.Namespace(k=2, hidden=4, steps=1, rounds=1))
  assert result["error"] < TOLERANCE


def test_explainer_step_check_vmap_equals_loop():
  # The explainer benchmark's check (no timing): the filter loss and its gradient vmapped over 3
  # filters equal a loop of single-filter calls (else it raises), on maps with real peaks.
  import argparse

  import jax.numpy as jnp

  from benchmarks.explainer_step import measure_filter_loss
  maps = jnp.asarray(np.maximum(np.random.default_rng(0).normal(size=(6, 4, 4, 3)), 0) * 50,
                     jnp.float32)
  result = measure_filter_loss(maps, argparse.Namespace(steps=1, rounds=1))
  assert result["error"] < 3e-3
