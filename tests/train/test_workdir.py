"""The run's directory (`xjax.train.workdir`): the lock, the writability check, the config diff and
its record; and the stop signals of the loop. All in this process, no training (the end-to-end
refusal and record: `test_runs_train.py`)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import ml_collections
import pytest

from xjax.train import workdir as rundir
from xjax.train.loop import Interrupted, StopSignals

# Another process that holds the lock of a workdir as a run does, then waits to be killed.
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": sys.argv[2], "since": "2026-01-02T03:04:05",
                         "command": "python -m runs.train --workdir=W"}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
  import socket
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / rundir.LOCK_FILE),
                             socket.gethostname()], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.WorkdirInUse) as refused:
      rundir.WorkdirLock(tmp_path).acquire()
    message = str(refused.value)
    assert "\n" not in message and f"pid {holder.pid} on {socket.gethostname()}" in message
    assert "since 2026-01-02T03:04:05" in message and "runs.train" in message
  finally:
    holder.kill()
    holder.wait()
  logged = []
  lock = rundir.WorkdirLock(tmp_path, log=logged.append).acquire()  # the kernel dropped its lock
  assert len(logged) == 1 and f"pid {holder.pid}" in logged[0] and "taking it over" in logged[0]
  mine = json.loads((tmp_path / rundir.LOCK_FILE).read_text())
  assert mine["pid"] == os.getpid() and mine["command"]
  with pytest.raises(rundir.WorkdirInUse, match=f"pid {os.getpid()} "):
    rundir.WorkdirLock(tmp_path).acquire()
  lock.release()
  assert not (tmp_path / rundir.LOCK_FILE).exists()
  logged.clear()
  rundir.WorkdirLock(tmp_path, log=logged.append).acquire().release()  # released: nothing said
  assert not logged


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
  import errno
  import socket

  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(rundir.fcntl, "flock", no_flock)
  lock_file = tmp_path / rundir.LOCK_FILE
  record = lambda pid: lock_file.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
  record(os.getppid())  # alive
  with pytest.raises(rundir.WorkdirInUse, match=f"pid {os.getppid()} .*delete .*lock"):
    rundir.WorkdirLock(tmp_path).acquire()
  ended = subprocess.Popen(["true"])
  ended.wait()
  record(ended.pid)
  logged = []
  rundir.WorkdirLock(tmp_path, log=logged.append).acquire().release()
  assert len(logged) == 1 and f"pid {ended.pid}" in logged[0]


def test_locked_releases_on_any_exit(tmp_path):
  with pytest.raises(KeyboardInterrupt), rundir.locked(tmp_path):
    assert (tmp_path / rundir.LOCK_FILE).exists()
    raise KeyboardInterrupt
  assert not any(tmp_path.iterdir())
  with rundir.locked(tmp_path):
    pass


def test_unwritable_workdirs_are_refused_and_nothing_is_created(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(rundir.WorkdirError, match=r"workdir .*file is a file, not a directory"):
    rundir.check_writable(a_file)
  with pytest.raises(rundir.WorkdirError, match=r"sub cannot be created: .*file is a file"):
    rundir.check_writable(a_file / "sub")
  rundir.check_writable(tmp_path / "new" / "run")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # a check, not a mkdir


def test_a_read_only_directory_is_refused(tmp_path, monkeypatch):
  # Root writes through permission bits, so the filesystem's refusal is what is simulated: the
  # probe file that the check writes fails as it does on a read-only mount.
  def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")

  monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
  with pytest.raises(rundir.WorkdirError, match=r"^The workdir .*/ro/run is not writable \(in "
                     r".*, to create it\): Read-only file system\.$"):
    rundir.check_writable(tmp_path / "ro" / "run")
  with pytest.raises(rundir.WorkdirError, match=r"output folder .* is not writable: Read-only"):
    rundir.check_writable(tmp_path, "output folder")


def _config(**train):
  return ml_collections.ConfigDict({
      "optimizer": {"name": "adam", "learning_rate": 0.001},
      "train": {"epochs": 3, "frozen": ("backbone",), "shuffle": True, **train},
      "model": {"dense": (16, 32)}})


def test_config_diff_lists_dotted_keys_old_and_new():
  saved = rundir.config_json(_config())
  assert saved["model"]["dense"] == [16, 32]  # as config.json stores it: tuples are lists
  assert rundir.diff_configs(saved, rundir.config_json(_config())) == {}
  new = _config(epochs=4, shuffle=1, extra="x")
  new.optimizer.learning_rate = 0.01
  del new.train["frozen"]
  changes = rundir.diff_configs(saved, rundir.config_json(new))
  assert changes == {"optimizer.learning_rate": {"old": 0.001, "new": 0.01},
                     "train.epochs": {"old": 3, "new": 4}, "train.extra": {"new": "x"},
                     "train.frozen": {"old": ["backbone"]},
                     "train.shuffle": {"old": True, "new": 1}}  # True == 1 in Python, not here
  assert rundir.describe_changes(changes) == (
      'optimizer.learning_rate 0.001 -> 0.01, train.epochs 3 -> 4, train.extra (absent) -> "x", '
      'train.frozen ["backbone"] -> (absent), train.shuffle true -> 1')
  assert rundir.describe_changes(changes, limit=2).endswith("train.epochs 3 -> 4 and 3 more")


def test_a_changed_config_is_refused_in_a_started_run_and_recorded_when_allowed(tmp_path):
  rundir.record_config(tmp_path, _config())
  new = _config(epochs=4)
  # Nothing done with the saved config yet: it is replaced, not compared.
  assert rundir.changed_config(tmp_path, new, started=False, resume_with_changes=False) == {}
  assert rundir.changed_config(tmp_path, _config(), started=True,
                               resume_with_changes=False) == {}  # tuples against JSON lists
  with pytest.raises(rundir.ConfigChanged) as refused:
    rundir.changed_config(tmp_path, new, started=True, resume_with_changes=False)
  assert "\n" not in str(refused.value) and "train.epochs 3 -> 4" in str(refused.value)
  assert "--resume_with_changes" in str(refused.value)
  changes = rundir.changed_config(tmp_path, new, started=True, resume_with_changes=True)
  rundir.record_config(tmp_path, new, changes, step=192)
  assert json.loads((tmp_path / "config.json").read_text())["train"]["epochs"] == 4
  assert rundir.changed_config(tmp_path, new, started=True, resume_with_changes=False) == {}
  newer = _config(epochs=5)
  rundir.record_config(tmp_path, newer, rundir.changed_config(
      tmp_path, newer, started=True, resume_with_changes=True), step=256)
  records = rundir.read_changes(tmp_path)  # kept across resumes, oldest first
  assert [(r["step"], r["changes"]) for r in records] == [
      (192, {"train.epochs": {"old": 3, "new": 4}}), (256, {"train.epochs": {"old": 4, "new": 5}})]


def test_sigint_and_sigterm_become_a_flag_and_a_second_sigint_stops_at_once():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with StopSignals() as signals:
    assert signals.agreed() == 0
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.agreed() == signal.SIGINT  # the first one
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_command_line_exits_with_the_errors_status(capsys):
  from runs import cli

  def stop(status):
    raise Interrupted(f"{signal.Signals(status - 128).name}: saved step 5 in W; run the same "
                      f"command again to resume.", exit_status=status)

  for status in (130, 143):
    with pytest.raises(SystemExit) as exited:
      cli._guarded(lambda status=status: stop(status))
    assert exited.value.code == status
  lines = capsys.readouterr().err.splitlines()
  assert lines == ["error: SIGINT: saved step 5 in W; run the same command again to resume.",
                   "error: SIGTERM: saved step 5 in W; run the same command again to resume."]
  with pytest.raises(SystemExit) as exited:
    cli._guarded(lambda: rundir.check_writable(cli.__file__))
  assert exited.value.code == 2


def test_interrupted_is_an_xjax_error_recognised_by_its_type(capsys):
  from runs import cli
  from xjax import errors
  from xjax.train import loop

  assert loop.Interrupted is errors.Interrupted and issubclass(errors.Interrupted,
                                                               errors.XjaxError)
  assert errors.Interrupted("stopped").exit_status == 128 + signal.SIGTERM

  class Other(errors.XjaxError):
    exit_status = 7  # only `Interrupted` chooses its status

  def fail():
    raise Other("not a signal")

  with pytest.raises(SystemExit) as exited:
    cli._guarded(fail)
  assert exited.value.code == 2
  assert capsys.readouterr().err == "error: not a signal\n"
