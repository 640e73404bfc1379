"""`python -m runs.train --multihost` with two real processes on one CPU machine.

Two processes (one CPU device each, gloo collectives, a coordinator on localhost) train the tiny
shapes run of `test_runs_train` on half its data (2 epochs of 8 steps) together, each reading its
half of every global batch; their final parameters must be those of one process reading the whole
batch (to the tolerance of the 4-device test there). A two-process run SIGKILLed after a
checkpoint, as a scheduler kills a job, and started again, then sent SIGTERM in one process only
(both must save the same step and stop) and started again, must end with the parameters of the
uninterrupted one. The processes share one compilation cache (`tests/train/compile_cache.py`):
the later runs load the programs the first compiled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.train.compile_cache import compile_cache_env
from xjax.train.checkpoint import load_params

# 8 steps an epoch, a checkpoint every 5: the first one (step 5, where the SIGKILL falls) is inside
# epoch 1, and a run resumed there saves next at the end of epoch 1 (step 8, where the SIGTERM
# falls). Each run starts two processes: fewer steps and examples cost less than each start.
TINY = ["--config=runs/configs/shapes.py:smoke", "--config.data.options.num_examples=256",
        "--config.data.options.image_size=16", "--config.model.name=cnn_fashion",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=64",
        "--config.train.epochs=2", "--config.train.checkpoint_every_steps=5",
        "--config.train.log_every_steps=4"]
TIMEOUT = 240  # seconds for any one run, both processes (about 30 s on 2 cores)

# runs.train, doing `{after}` in each process once the first checkpoint it saved is on disk.
_AFTER_FIRST_SAVE = """
import os, signal, sys, time
import jax
from xjax.train import checkpoint
save, saved = checkpoint.RunCheckpoints.save, []
def save_then(self, *args):
  save(self, *args)
  self.latest.wait_until_finished()
  if not saved:
    saved.append(True)
    {after}
checkpoint.RunCheckpoints.save = save_then
from runs import cli, train
sys.argv = ["runs.train"] + sys.argv[1:]
cli.run(train.main)
"""
# Each process leaves a marker `paused.<process index>` in the workdir and pauses for good, so
# that the test can SIGKILL both with a checkpoint on disk and the run unfinished.
PAUSE_AFTER_FIRST_SAVE = _AFTER_FIRST_SAVE.format(
    after='(self.latest_dir.parent.parent / f"paused.{jax.process_index()}").touch(); '
          'time.sleep(600)')
# Process 0 (only) sends itself SIGTERM, as when a scheduler's signals reach the hosts at
# different moments.
SIGTERM_TO_PROCESS_0_AFTER_FIRST_SAVE = _AFTER_FIRST_SAVE.format(
    after="if jax.process_index() == 0: os.kill(os.getpid(), signal.SIGTERM)")


_LOG_NUMBERS = count()
# The environment of every `_Run` process of this module: its compilation cache (set by
# `_compile_cache`, before the first run).
_CACHE_ENV: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
  _CACHE_ENV.update(compile_cache_env(tmp_path_factory))
  yield
  _CACHE_ENV.clear()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class _Run:
  """`runs.train` in `processes` processes (`--multihost` when more than one), logs in files."""

  def __init__(self, workdir: Path, processes: int = 2, code: str | None = None):
    self.workdir = workdir
    env = {**os.environ, **_CACHE_ENV, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "runs.train"]
    port = _free_port()
    self.procs, self.logs = [], []
    for i in range(processes):
      multihost = ([] if processes == 1 else
                   ["--multihost", f"--coordinator_address=localhost:{port}",
                    f"--num_processes={processes}", f"--process_id={i}"])
      log = workdir.parent / f"{workdir.name}.{next(_LOG_NUMBERS)}.log"
      self.logs.append(log)
      with open(log, "w") as out:
        self.procs.append(subprocess.Popen([*head, *TINY, f"--workdir={workdir}", *multihost],
                                           cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                           text=True))

  def wait(self, timeout: float = TIMEOUT) -> list[int]:
    """The return codes, once all processes ended; kills them all after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    try:
      return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in self.procs]
    finally:
      self.kill()

  def wait_for(self, paths: list[Path], timeout: float = TIMEOUT) -> None:
    """Until every path exists (fails if a process ended first or after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
      ended = [p.returncode for p in self.procs if p.poll() is not None]
      assert not ended and time.monotonic() < deadline, (ended, self.output())
      time.sleep(0.05)

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)

  def output(self, i: int | None = None) -> str:
    logs = self.logs if i is None else [self.logs[i]]
    return "\n".join(log.read_text()[-3000:] for log in logs)


@pytest.fixture
def runs():
  """Starts `_Run`s; kills whatever is still running at the end of the test."""
  started = []

  def start(*args, **kwargs) -> _Run:
    started.append(_Run(*args, **kwargs))
    return started[-1]

  yield start
  for run in started:
    run.kill()


def _params(workdir):
  return load_params(workdir, "latest")["params"]


def _assert_trees_close(a, b, **tolerance):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


def _rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _train_uninterrupted(root: Path) -> dict:
  """The uninterrupted runs: one process, and two processes (trained at the same time)."""
  one, two = _Run(root / "one", processes=1), _Run(root / "two", processes=2)
  try:
    assert one.wait() == [0], one.output()
    assert two.wait() == [0, 0], two.output()
  finally:
    one.kill()
    two.kill()
  return {"one": one, "two": two}


def _check_two_processes_train_the_parameters_of_one(trained: dict) -> None:
  one, two = trained["one"], trained["two"]
  results = json.loads((two.workdir / "results.json").read_text())
  assert results["num_devices"] == 2 and results["steps"] == 16
  for i in range(2):  # each process connected to the other, and both finished the run
    assert "connected to 1 peer" in two.output(i) and '"test_accuracy"' in two.output(i)
  _assert_trees_close(_params(two.workdir), _params(one.workdir), rtol=1e-4, atol=1e-5)
  # Only process 0 writes the metrics and results: one row per logged step, as one process does.
  assert [r["step"] for r in _rows(two.workdir)] == [r["step"] for r in _rows(one.workdir)]
  expected = json.loads((one.workdir / "results.json").read_text())
  assert results["test_accuracy"] == pytest.approx(expected["test_accuracy"], abs=1e-6)
  assert json.loads((two.workdir / "config.json").read_text())["model"]["name"] == "cnn_fashion"


# One test, not two sharing a module fixture: under pytest-xdist two tests may land on two
# workers, and each would train the uninterrupted runs again.
def test_two_processes_train_like_one_and_resume_after_sigkill_and_sigterm(runs, tmp_path):
  trained = _train_uninterrupted(tmp_path)
  _check_two_processes_train_the_parameters_of_one(trained)
  workdir = tmp_path / "interrupted"
  # SIGKILL, as a scheduler kills a job: both processes at once, after the checkpoint of step 5.
  killed = runs(workdir, code=PAUSE_AFTER_FIRST_SAVE)
  killed.wait_for([workdir / f"paused.{i}" for i in range(2)])
  for p in killed.procs:
    p.send_signal(signal.SIGKILL)
  assert killed.wait() == [-9, -9]
  assert not (workdir / "results.json").exists()
  # Restarted, and SIGTERM reaches process 0 only, after its checkpoint of step 8 (the end of
  # epoch 1): both processes must save step 8 and stop (alone, process 0 would save while
  # process 1 trains step 9, and each would wait for the other).
  stopped = runs(workdir, code=SIGTERM_TO_PROCESS_0_AFTER_FIRST_SAVE)
  assert stopped.wait() == [143, 143], stopped.output()
  for i in range(2):
    assert "Resuming from step 5 " in stopped.output(i), stopped.output(i)
    assert "error: SIGTERM: saved step 8 " in stopped.output(i), stopped.output(i)
  resumed = runs(workdir)
  assert resumed.wait() == [0, 0], resumed.output()
  for i in range(2):
    assert "Resuming from step 8 " in resumed.output(i), resumed.output(i)
  two = trained["two"].workdir
  _assert_trees_close(_params(workdir), _params(two), rtol=1e-6, atol=1e-7)
  # metrics.jsonl reads as one uninterrupted run: the same rows, none twice.
  assert [r["step"] for r in _rows(workdir)] == [r["step"] for r in _rows(two)]


def test_multihost_flags_without_multihost_are_a_one_line_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "runs.train", *TINY, f"--workdir={tmp_path}",
                           "--num_processes=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2, result.stderr[-2000:]
  assert "error: --num_processes needs --multihost." in result.stderr
  assert "Traceback" not in result.stderr
