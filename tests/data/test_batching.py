"""Fixed-shape batches over the devices: which rows each call gets, padding, and outputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from xjax.data import batching, sharding
from xjax.errors import ConfigError


def test_batches_are_padded_with_the_last_row_and_the_padding_dropped():
  calls = []

  def fn(x):
    calls.append(np.asarray(x))
    return {"double": 2 * x, "first": x[:, 0]}

  x = np.arange(14, dtype=np.float32).reshape(7, 2)
  out = batching.map_batches(fn, x, batch_size=3)
  np.testing.assert_array_equal(out["double"], 2 * x)
  np.testing.assert_array_equal(out["first"], x[:, 0])
  assert [len(c) for c in calls] == [3, 3, 3]  # one shape: one compilation
  np.testing.assert_array_equal(calls[-1], x[[6, 6, 6]])  # example 6 repeated as padding


def test_a_plan_of_a_later_range_reads_only_its_examples():
  plan = batching.plan_batches(5, 2, start=10)
  assert (plan.start, plan.stop, plan.size, plan.num_batches) == (10, 15, 2, 3)
  np.testing.assert_array_equal(plan.local_indices(), [10, 11, 12, 13, 14, 14])
  whole = np.arange(10, 15) * 10
  np.testing.assert_array_equal(plan.local(whole), [100, 110, 120, 130, 140, 140])
  call, seconds = plan.compile(lambda v, xb: xb * v, np.float32(3), whole[:1].astype(np.float32))
  assert seconds >= 0
  np.testing.assert_allclose(plan.map(call, plan.local(whole).astype(np.float32)), 3 * whole)


def test_the_batch_size_is_a_multiple_of_the_devices_and_a_process_feeds_its_rows():
  mesh = sharding.make_mesh()
  assert batching.device_batch_size(32, 1000, mesh) == -(-32 // mesh.size) * mesh.size
  assert batching.device_batch_size(32, 5, mesh) == -(-5 // mesh.size) * mesh.size
  assert sharding.process_rows(mesh, 8) == slice(0, 8)  # one process feeds every row
  if len(jax.devices()) == 1:
    fake = type("Mesh4", (), {"size": 4})()
    assert batching.device_batch_size(30, 1000, fake) == 32
    assert batching.device_batch_size(30, 3, fake) == 4


def test_bad_inputs_are_one_line_errors():
  with pytest.raises(ConfigError, match="at least one input"):
    batching.map_batches(lambda: 0, batch_size=2)
  with pytest.raises(ConfigError, match="same number"):
    batching.map_batches(lambda a, b: a, np.zeros(3), np.zeros(4), batch_size=2)
  with pytest.raises(ConfigError, match="batch size must be >= 1"):
    batching.map_batches(lambda a: a, np.zeros(3), batch_size=0)
