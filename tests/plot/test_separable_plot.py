"""Fig. 6 of Rieger 2018: the dense-weight figure and where it draws the class blocks."""

from __future__ import annotations

import numpy as np
import pytest

from xjax.errors import ConfigError
from xjax.plot.separable import _block_edges, plot_dense_weights


def test_block_edges_sit_between_the_class_blocks():
  # block_of(10, 3) = [0 0 0 0 1 1 1 2 2 2]: new blocks start at units 4 and 7.
  np.testing.assert_array_equal(_block_edges(10, 3), [3.5, 6.5])
  np.testing.assert_array_equal(_block_edges(4, 4), [0.5, 1.5, 2.5])  # the output layer
  # Channel blocks [0 0 1 1] * 3, drawn sorted: six of block 0, then six of block 1.
  np.testing.assert_array_equal(_block_edges(12, 2, np.array([0, 0, 1, 1] * 3)), [5.5])


def test_plot_dense_weights_writes_a_png_and_checks_its_input(tmp_path):
  rng = np.random.default_rng(0)
  kernels = {run: {"dense1/kernel": rng.normal(size=(12, 8)),
                   "classifier/kernel": rng.normal(size=(8, 4))} for run in ("a", "b")}
  path = plot_dense_weights(kernels, tmp_path / "f" / "fig6.png", num_classes=4, title="t",
                            input_blocks={"dense1/kernel": np.arange(12) % 4})
  assert path.stat().st_size > 5000
  with pytest.raises(ConfigError, match="has the dense layers"):
    plot_dense_weights({"a": kernels["a"], "b": {"dense1/kernel": kernels["b"]["dense1/kernel"]}},
                       tmp_path / "g.png", num_classes=4)
  with pytest.raises(ConfigError, match="3 entries"):
    plot_dense_weights(kernels, tmp_path / "i.png", num_classes=4,
                       input_blocks={"dense1/kernel": np.arange(3)})
  with pytest.raises(ConfigError, match="2-D"):
    plot_dense_weights({"a": {"conv/kernel": np.zeros((3, 3, 1, 2))}}, tmp_path / "h.png",
                       num_classes=2)
