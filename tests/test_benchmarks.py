"""The train-step benchmark compares like with like: same loss and same update in both frameworks.

Runs only the benchmark's correctness check (no timing), for the CIFAR10 CNN at batch 4.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch is not installed (optional: pip install xjax[bench]); "
                    "the train-step benchmark cannot be checked")

from benchmarks.train_step import check_correctness, make_batch  # noqa: E402


def test_train_step_check_cnn_cifar10():
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
