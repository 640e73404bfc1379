"""Shared test helpers: where the real data is, and a tiny in-memory source."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from xjax.data.source import DatasetInfo

REPO = Path(__file__).resolve().parents[1]
# The offline real data lives in `shared/data` beside the checkout (see README: "Real data").
SHARED_DATA = Path(os.environ.get("XJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(subdir: str) -> Path:
  """`shared/data/<subdir>`, or skip the test saying where it was looked for."""
  path = SHARED_DATA / subdir
  if not path.exists():
    pytest.skip(f"real data not available: {path} does not exist (set XJAX_SHARED_DATA)")
  return path


class ArraySource:
  """A source over in-memory arrays; image pixel (0, 0, 0) encodes the example's index."""

  def __init__(self, n: int = 100, size: int = 4, channels: int = 1, num_classes: int = 3):
    rng = np.random.default_rng(0)
    self.images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    self.images[:, 0, 0, 0] = np.arange(n) % 256
    self.labels = (np.arange(n) % num_classes).astype(np.int32)
    self.info = DatasetInfo(name="array", image_shape=(size, size, channels),
                            num_classes=num_classes, mean=(0.5,) * channels,
                            std=(0.25,) * channels)

  def __len__(self):
    return len(self.labels)

  def read_batch(self, indices):
    indices = np.asarray(indices)
    return {"image": self.images[indices], "label": self.labels[indices], "index": indices}


# The longest tests (a minute each on two cores: two training processes, a real MNIST epoch,
# three trained networks) start first, so that with `-n 2` no worker is left running one of them
# alone at the end while the other idles.
RUN_FIRST = ("tests/train/test_multihost.py", "tests/train/test_mnist_real.py",
             "tests/experiments/test_maximize.py", "tests/train/test_runs_train.py")


def pytest_collection_modifyitems(config, items):
  del config

  def rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return RUN_FIRST.index(path) if path in RUN_FIRST else len(RUN_FIRST)

  items.sort(key=rank)  # stable: the rest keep their order
