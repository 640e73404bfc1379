"""Checkpoints: round trip, and a clear error when a checkpoint does not fit the model."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from tests.train.test_step import TinyNet
from xjax.errors import CheckpointMismatchError
from xjax.train.checkpoint import RunCheckpoints, check_fits
from xjax.train.state import create_train_state


def test_save_restore_round_trip_with_data_and_loop_state(tmp_path):
  state = create_train_state(TinyNet(), optax.adam(1e-3), jax.random.PRNGKey(1), (2, 2, 1))
  state = state.replace(step=state.step + 7)
  ckpt = RunCheckpoints(tmp_path)
  ckpt.save(state, {"next_index": 7}, {"history": [{"epoch": 1}], "bad_epochs": 0})
  ckpt.wait()
  like = create_train_state(TinyNet(), optax.adam(1e-3), jax.random.PRNGKey(2), (2, 2, 1))
  restored, data, loop = RunCheckpoints(tmp_path).restore(like)
  assert int(restored.step) == 7 and data == {"next_index": 7} and loop["history"][0]["epoch"] == 1
  jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
  np.testing.assert_array_equal(restored.rng, state.rng)


def test_mismatch_names_the_arrays_and_their_shapes(tmp_path):
  want = {"params": {"head": {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)}}}
  have = {"params": {"head": {"kernel": np.zeros((4, 10)), "bias": np.zeros(10)},
                     "extra": {"w": np.zeros(2)}}}
  with pytest.raises(CheckpointMismatchError) as e:
    check_fits(want, have, tmp_path)
  message = str(e.value)
  assert "params/head/kernel: checkpoint (4, 10), model (4, 3)" in message
  assert "only in the checkpoint: params/extra/w" in message
  check_fits(want, want, tmp_path)  # a fitting tree passes silently
