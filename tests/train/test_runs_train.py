"""`python -m runs.train` end to end, in subprocesses: workdir, SIGKILL + resume, 4 devices, errors.

The same tiny shapes run (2 epochs of 16 steps) is trained three ways; their final parameters must
agree: interrupted by a real SIGKILL right after its second checkpoint (mid-epoch) and started
again, and on 4 (virtual CPU) devices with the same global batch. Each command runs in a process
of its own, forked from one that imported xjax once (`tests/train/forked.py`), and they share one
compilation cache (`tests/train/compile_cache.py`): the later ones load the programs the first
compiled.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.train.compile_cache import compile_cache_env
from tests.train.forked import Forks
from xjax.errors import XjaxError
from xjax.train.checkpoint import load_params

TINY = ["--config=runs/configs/shapes.py:smoke", "--config.data.options.num_examples=512",
        "--config.data.options.image_size=16", "--config.model.name=cnn_fashion",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=64",
        "--config.train.epochs=2", "--config.train.checkpoint_every_steps=5",
        "--config.train.log_every_steps=4"]
# Runs runs.train, but SIGKILLs the process as soon as its second checkpoint is on disk.
KILL_AFTER_SECOND_SAVE = """
import os, signal, sys
from xjax.train import checkpoint
save = checkpoint.RunCheckpoints.save
def save_then_die(self, *args):
  save(self, *args)
  self.latest.wait_until_finished()
  if len(self.latest.all_steps()) >= 2:
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint.RunCheckpoints.save = save_then_die
from runs import cli, train
sys.argv = ["runs.train"] + sys.argv[1:]
cli.run(train.main)
"""

# Runs runs.train and sends itself SIGTERM right after its first checkpoint.
SIGTERM_AFTER_FIRST_SAVE = KILL_AFTER_SECOND_SAVE.replace(
    "len(self.latest.all_steps()) >= 2", "len(self.latest.all_steps()) == 1").replace(
    "signal.SIGKILL", "signal.SIGTERM")


# What the `_train` commands of this module share (set by `_commands` before the first one): their
# environment, with the compilation cache, and the fork server that runs them.
_SHARED: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _commands(tmp_path_factory):
  env = {**os.environ, **compile_cache_env(tmp_path_factory), "JAX_PLATFORMS": "cpu"}
  forks = Forks(tmp_path_factory.mktemp("forks"), REPO, env)
  _SHARED.update(env=env, forks=forks)
  yield
  _SHARED.clear()
  forks.close()


def _train(workdir, *extra, devices: int = 1, code: str | None = None):
  env = {**_SHARED["env"], "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  head = ["-c", code] if code else ["-m", "runs.train"]
  return _SHARED["forks"].run([*head, *TINY, f"--workdir={workdir}", *extra], env=env,
                              timeout=300)


def _params(workdir):
  return load_params(workdir, "latest")["params"]


def _assert_trees_close(a, b, **tolerance):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("plain")
  result = _train(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_workdir_has_everything_a_run_promises(plain):
  results = json.loads((plain / "results.json").read_text())
  assert 0.0 <= results["test_accuracy"] <= 1.0 and results["steps"] == 32
  assert results["epochs_completed"] == 2 and len(results["history"]) == 2
  assert "test_accuracy" in (plain / "results.md").read_text()
  assert (plain / "figures" / "training_curves.png").stat().st_size > 1000
  assert json.loads((plain / "config.json").read_text())["model"]["name"] == "cnn_fashion"
  rows = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "validation/loss" in r] == [16, 32]
  assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == ["best", "latest"]


def _latest_on_disk(workdir):
  return max(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir()
             if p.name.isdigit())


@pytest.fixture(scope="module")
def killed_after_two_saves(tmp_path_factory):
  """A run SIGKILLed right after its second checkpoint (step 10), before it finished."""
  workdir = tmp_path_factory.mktemp("killed")
  killed = _train(workdir, code=KILL_AFTER_SECOND_SAVE)
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert _latest_on_disk(workdir) == 10
  assert not (workdir / "results.json").exists()
  return workdir


def test_sigkill_then_resume_gives_the_same_parameters(plain, killed_after_two_saves, tmp_path):
  # A copy of the run SIGKILLed after its second checkpoint (the fixture checks the kill), so
  # that the tests of corrupt checkpoints below start from the same run, in any order.
  shutil.copytree(killed_after_two_saves, tmp_path, dirs_exist_ok=True)
  resumed = _train(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step 10" in resumed.stdout
  _assert_trees_close(_params(tmp_path), _params(plain), rtol=1e-6, atol=1e-7)
  # metrics.jsonl reads as one uninterrupted run: the same rows, none twice.
  read = lambda w: [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in read(tmp_path)] == [r["step"] for r in read(plain)]
  a = json.loads((tmp_path / "results.json").read_text())
  b = json.loads((plain / "results.json").read_text())
  assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)
  for epoch in (0, 1):  # the kill falls in epoch 1: its train loss must not lose steps either
    assert a["history"][epoch]["train_loss"] == pytest.approx(b["history"][epoch]["train_loss"],
                                                              rel=1e-5)


def test_sigterm_saves_exits_cleanly_and_resumes(plain, tmp_path):
  stopped = _train(tmp_path, code=SIGTERM_AFTER_FIRST_SAVE)
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  assert "SIGTERM: saved step 5" in stopped.stderr and "Traceback" not in stopped.stderr
  resumed = _train(tmp_path)
  assert resumed.returncode == 0 and "Resuming from step 5" in resumed.stdout
  _assert_trees_close(_params(tmp_path), _params(plain), rtol=1e-6, atol=1e-7)


def test_four_devices_give_the_same_parameters_as_one(plain, tmp_path):
  result = _train(tmp_path, devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / "results.json").read_text())["num_devices"] == 4
  _assert_trees_close(_params(tmp_path), _params(plain), rtol=1e-4, atol=1e-5)


def test_checkpoint_that_does_not_fit_the_model_is_a_clear_error(plain, tmp_path):
  import shutil
  shutil.copytree(plain / "checkpoints", tmp_path / "checkpoints")
  result = _train(tmp_path, "--config.model.name=mlp")
  assert result.returncode == 2
  assert "does not fit the model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("override, message", [
    ("--config.data.name=imagenet", "error: Unknown dataset 'imagenet'"),
    ("--config.model.name=alexnet", "error: Unknown model"),
    ("--config.optimizer.name=lbfgs", "error: Unknown optimizer 'lbfgs'"),
])
def test_unknown_names_are_one_line_errors(tmp_path, override, message):
  result = _train(tmp_path, override)
  assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_unknown_config_key_is_rejected(tmp_path):
  result = _train(tmp_path, "--config.train.epochz=3")
  assert result.returncode != 0 and "epochz" in result.stderr
  assert "Traceback" not in result.stderr


# SIGTERM lands at step 4, after the loop decided not to save that step (checkpoints every 5
# steps): while the step's metrics are written, as a preemption notice does at any moment.
SIGTERM_BETWEEN_CHECKPOINTS = """
import os, signal, sys
from xjax.train import report
write = report.MetricWriter.write
def write_then_term(self, step, metrics):
  write(self, step, metrics)
  if step == 4:
    os.kill(os.getpid(), signal.SIGTERM)
report.MetricWriter.write = write_then_term
from runs import cli, train
sys.argv = ["runs.train"] + sys.argv[1:]
cli.run(train.main)
"""

# SIGKILL while the second checkpoint is being written (orbax writes in the background, into a
# temporary folder renamed when complete).
KILL_INSIDE_SECOND_SAVE = """
import os, signal, sys
from xjax.train import checkpoint
save = checkpoint.RunCheckpoints.save
def save_and_die_while_writing(self, *args):
  if self.latest.latest_step() is not None:
    save(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)
  save(self, *args)
checkpoint.RunCheckpoints.save = save_and_die_while_writing
from runs import cli, train
sys.argv = ["runs.train"] + sys.argv[1:]
cli.run(train.main)
"""


def test_sigterm_between_checkpoints_saves_the_step_it_names(plain, tmp_path):
  stopped = _train(tmp_path, code=SIGTERM_BETWEEN_CHECKPOINTS)
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  assert "SIGTERM: saved step 4" in stopped.stderr and "Traceback" not in stopped.stderr
  assert _latest_on_disk(tmp_path) == 4
  resumed = _train(tmp_path)
  assert resumed.returncode == 0 and "Resuming from step 4" in resumed.stdout
  _assert_trees_close(_params(tmp_path), _params(plain), rtol=1e-6, atol=1e-7)


def test_sigkill_inside_a_save_leaves_the_previous_checkpoint_and_an_exact_resume(plain,
                                                                                  tmp_path):
  killed = _train(tmp_path, code=KILL_INSIDE_SECOND_SAVE)
  assert killed.returncode == -9, killed.stderr[-3000:]
  resumed = _train(tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step 5" in resumed.stdout  # the half-written step 10 is not used
  _assert_trees_close(_params(tmp_path), _params(plain), rtol=1e-6, atol=1e-7)


def _truncate_largest_data_file(step_dir):
  data = max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


CORRUPTIONS = {
    "truncated data file": _truncate_largest_data_file,
    "deleted manifest": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "corrupt JSON loop state": lambda step_dir: (step_dir / "loop" / "metadata").write_text(
        '{"history": [{"epoch": 1, '),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    plain, killed_after_two_saves, tmp_path, corruption):
  workdir = tmp_path / "run"
  shutil.copytree(killed_after_two_saves, workdir)
  CORRUPTIONS[corruption](workdir / "checkpoints" / "latest" / "10")
  resumed = _train(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  output = resumed.stdout + resumed.stderr
  warnings = [line for line in output.splitlines() if "is unreadable" in line]
  assert len(warnings) == 1 and "step 10" in warnings[0], output[-3000:]
  assert "Traceback" not in output and "Resuming from step 5" in resumed.stdout
  assert (workdir / "checkpoints" / "latest" / "10.corrupt").is_dir()  # kept, not deleted
  _assert_trees_close(_params(workdir), _params(plain), rtol=1e-6, atol=1e-7)


def test_a_checkpoint_with_the_old_loop_layout_resumes_exactly(plain, killed_after_two_saves,
                                                               tmp_path):
  # Checkpoints written before `LoopState` hold the loop's state as a flat dict, without
  # "hooks" (a hook's state sat beside the loop's keys): such a run still resumes exactly.
  workdir = tmp_path / "run"
  shutil.copytree(killed_after_two_saves, workdir)
  for metadata in (workdir / "checkpoints" / "latest").glob("*/loop/metadata"):
    loop = json.loads(metadata.read_text())
    assert loop.pop("hooks") == {}
    metadata.write_text(json.dumps(loop))
  resumed = _train(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from step 10" in resumed.stdout
  _assert_trees_close(_params(workdir), _params(plain), rtol=1e-6, atol=1e-7)
  a = json.loads((workdir / "results.json").read_text())
  b = json.loads((plain / "results.json").read_text())
  for epoch in (0, 1):
    assert a["history"][epoch]["train_loss"] == pytest.approx(b["history"][epoch]["train_loss"],
                                                              rel=1e-5)


def test_no_readable_checkpoint_is_one_line_naming_what_was_tried(plain, tmp_path):
  shutil.copytree(plain, tmp_path / "run")
  best = tmp_path / "run" / "checkpoints" / "best"
  (next(p for p in best.iterdir() if p.name.isdigit()) / "state" / "manifest.ocdbt").unlink()
  with pytest.raises(XjaxError, match=r"No readable checkpoint in .*best: tried step \d+"):
    load_params(tmp_path / "run", "best")
  assert any(p.name.endswith(".corrupt") for p in best.iterdir())


def test_a_corrupt_final_checkpoint_retrains_its_steps_and_saves_the_best_again(plain, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(plain, workdir)
  newest = _latest_on_disk(workdir)
  _truncate_largest_data_file(workdir / "checkpoints" / "latest" / str(newest))
  resumed = _train(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Traceback" not in resumed.stderr and "is unreadable" in resumed.stdout
  _assert_trees_close(_params(workdir), _params(plain), rtol=1e-6, atol=1e-7)
  _assert_trees_close(load_params(workdir, "best")["params"], load_params(plain, "best")["params"],
                      rtol=1e-6, atol=1e-7)


def test_a_changed_config_is_refused_before_any_work_and_recorded_when_asked(plain, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(plain, workdir)
  refused = _train(workdir, "--config.optimizer.learning_rate=0.01")
  assert refused.returncode == 2 and refused.stdout == "", refused.stderr[-3000:]
  assert refused.stderr.splitlines() == [
      f"error: {workdir} holds a run of another config: optimizer.learning_rate 0.001 -> 0.01. "
      f"Rerun with --resume_with_changes to continue it with these changes (recorded in "
      f"config_changes.jsonl), or use a new workdir."]
  resumed = _train(workdir, "--config.optimizer.learning_rate=0.01", "--resume_with_changes")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming with a changed config from step 32: optimizer.learning_rate" in resumed.stdout
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01
  expected = [{"step": 32, "changes": {"optimizer.learning_rate": {"old": 0.001, "new": 0.01}}}]
  strip = lambda records: [{k: r[k] for k in ("step", "changes")} for r in records]
  assert strip(json.loads((workdir / "results.json").read_text())["config_changes"]) == expected
  lines = (workdir / "config_changes.jsonl").read_text().splitlines()
  assert strip(map(json.loads, lines)) == expected
  assert not (workdir / "lock").exists()
