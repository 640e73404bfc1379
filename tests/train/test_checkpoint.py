"""Checkpoints: round trip (the loop's state too, in its layout and the one before `LoopState`),
and a clear error when a checkpoint does not fit the model."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from tests.train.test_step import TinyNet
from xjax.errors import CheckpointMismatchError
from xjax.train.checkpoint import RunCheckpoints, check_fits
from xjax.train.loop import LoopState
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


def _saved_and_restored(tmp_path, loop_json: dict) -> dict:
  """`loop_json` after a checkpoint's save and restore (orbax's JSON item)."""
  state = create_train_state(TinyNet(), optax.adam(1e-3), jax.random.PRNGKey(1), (2, 2, 1))
  ckpt = RunCheckpoints(tmp_path)
  ckpt.save(state, {"next_index": 0}, loop_json)
  ckpt.wait()
  return RunCheckpoints(tmp_path).restore(state)[2]


def test_loop_state_round_trips_through_a_checkpoint(tmp_path):
  loop = LoopState(history=[{"epoch": 1, "train_loss": 0.5, "drop_losses": [0.1, 0.2]}],
                   best_validation_loss=0.4, best_epoch=1, bad_epochs=0, train_seconds=3.5,
                   epoch_logs=[{"loss": 0.5, "accuracy": 0.75, "steps": 4}],
                   hooks={"xnet": {"neuron_of_category": [1, 0]}})
  saved = loop.to_json()
  assert json.loads(json.dumps(saved)) == saved  # plain JSON, as orbax writes it
  assert LoopState.from_json(_saved_and_restored(tmp_path, saved)) == loop
  loop.history.append({"epoch": 2})  # a later step does not reach what was saved
  assert len(saved["history"]) == 1


def test_a_checkpoint_of_the_old_flat_loop_layout_still_reads(tmp_path):
  # Before `LoopState`, the hooks' state sat beside the loop's keys (XNet's "xnet"), and the
  # oldest checkpoints have no "epoch_logs".
  xnet = {"neuron_of_category": [1, 0], "drop_loss_history": [[0.1, 0.2]], "matchings": []}
  old = {"history": [{"epoch": 1}], "best_validation_loss": 0.4, "best_epoch": 1,
         "bad_epochs": 2, "stopped_early": True, "train_seconds": 3.5, "xnet": xnet}
  loop = LoopState.from_json(_saved_and_restored(tmp_path, old))
  assert loop == LoopState(history=[{"epoch": 1}], best_validation_loss=0.4, best_epoch=1,
                           bad_epochs=2, stopped_early=True, train_seconds=3.5, epoch_logs=[],
                           hooks={"xnet": xnet})
  assert LoopState.from_json({}) == LoopState()


def test_a_hook_state_dataclass_is_saved_as_a_json_object():
  @dataclasses.dataclass
  class Counter:
    seen: list[int] = dataclasses.field(default_factory=list)

  loop = LoopState(hooks={"counter": Counter([3, 4])})
  assert loop.to_json()["hooks"] == {"counter": {"seen": [3, 4]}}
  assert LoopState.from_json(loop.to_json()).hooks == {"counter": {"seen": [3, 4]}}


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
