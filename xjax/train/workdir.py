"""The run's directory: writable before any work, one writer at a time, the config it was run with.

Every command that writes a workdir (`train_and_evaluate`, `run_experiment`, and the output folder
of `runs.explain` / `runs.evaluate`) goes through here first:

  check_writable(path)        fails in one line, before any work, when `path` cannot be written
                              (an existing file, a path under a file, a read-only directory)
  locked(workdir)             one writer per workdir: `fcntl.flock` on `workdir/lock`, which holds
                              the holder's pid, host, start time and command; a second writer gets
                              `WorkdirInUse` naming the holder. The kernel drops the lock when its
                              process dies, so a lock file left by a killed run is taken over (said
                              in one line). With several processes only process 0 locks.
  changed_config(...)         the keys of the config that differ from the workdir's config.json
                              (`ConfigChanged` unless the caller allows resuming with changes)
  record_config(...)          config.json, and the change (where it took effect) appended to
                              `workdir/config_changes.jsonl`, kept across later resumes
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np

from xjax.errors import XjaxError

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"


class WorkdirError(XjaxError):
  """The workdir cannot be used: not writable, or it holds a run of another config."""


class WorkdirInUse(WorkdirError):
  """Another process holds the workdir's lock; the message names it."""


class ConfigChanged(WorkdirError):
  """The config differs from the one the workdir's run was started with; the message lists how."""


# ------------------------------------------------------------------------------ writable

def check_writable(path: str | Path, what: str = "workdir") -> None:
  """Fails unless `path` is a directory this process can write, or can be created as one.

  Writes (and deletes) a probe file in `path`, or in its nearest existing ancestor when `path`
  does not exist yet: permission bits do not stop root, a read-only filesystem does, and only a
  write tells them apart. Nothing is created.

  Raises:
    WorkdirError: `path` is a file, lies under a file, or its directory cannot be written.
  """
  path = existing = Path(path).absolute()
  try:
    if path.exists() and not path.is_dir():
      raise WorkdirError(f"The {what} {path} is a file, not a directory; give a directory.")
    while not existing.exists():
      if os.path.lexists(existing):
        raise WorkdirError(f"The {what} {path} cannot be created: {existing} is a broken "
                           f"symbolic link.")
      existing = existing.parent
    if not existing.is_dir():
      raise WorkdirError(f"The {what} {path} cannot be created: {existing} is a file, not a "
                         f"directory.")
    fd, probe = tempfile.mkstemp(dir=existing, prefix=".xjax-write-test-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    where = "" if existing == path else f" (in {existing}, to create it)"
    raise WorkdirError(f"The {what} {path} is not writable{where}: {e.strerror or e}.") from None


# ------------------------------------------------------------------------------ lock

def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.now().astimezone().isoformat(timespec="seconds"),
          "command": shlex.join(getattr(sys, "orig_argv", sys.argv))}


def _describe_holder(holder: dict) -> str:
  command = str(holder.get("command", ""))
  command = command if len(command) <= 160 else command[:157] + "..."
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
          f"{holder.get('since', '?')}" + (f" ({command})" if command else ""))


def _read_holder(fd: int) -> dict:
  """The holder recorded in the lock file (`{}` if empty or unreadable)."""
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode(errors="replace")
  try:
    holder = json.loads(text)
  except ValueError:
    return {}
  return holder if isinstance(holder, dict) else {}


def _is_other(holder: dict) -> bool:
  return (holder.get("pid"), holder.get("host")) != (os.getpid(), socket.gethostname())


def _alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """An exclusive `fcntl.flock` on `directory/lock`, which records its holder (`_holder`)."""

  def __init__(self, directory: str | Path, log: Callable[[str], None] = print):
    self.path = Path(directory).absolute() / LOCK_FILE
    self._log = log
    self._fd: int | None = None

  def acquire(self) -> WorkdirLock:
    """Takes the lock, or raises `WorkdirInUse` naming its holder (never waits)."""
    for _ in range(10):
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise WorkdirError(f"Cannot create the lock file {self.path}: {e.strerror or e}.") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        self._refuse(fd)
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise WorkdirError(f"Cannot lock {self.path}: {e.strerror or e}.") from None
        self._without_flock(fd)  # a filesystem without flock: the recorded pid decides
      # A holder that ended unlinked the file it locked: lock the file now at `path` instead.
      try:
        current = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        current = False
      if not current:
        os.close(fd)
        continue
      previous = _read_holder(fd)
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, (json.dumps(_holder()) + "\n").encode())
      os.fsync(fd)
      self._fd = fd
      if previous and _is_other(previous):
        self._log(f"warning: {self.path} was left by {_describe_holder(previous)}, which ended "
                  f"without releasing it; taking it over.")
      return self
    raise WorkdirInUse(f"Could not lock {self.path}: it was replaced 10 times while locking.")

  def _refuse(self, fd: int):
    holder = {}
    for _ in range(20):  # the holder writes its record just after locking
      holder = _read_holder(fd)
      if holder:
        break
      time.sleep(0.05)
    os.close(fd)
    raise WorkdirInUse(f"{self.path.parent} is in use by another run: "
                       f"{_describe_holder(holder)}. Wait for it to end, stop it, or use another "
                       f"workdir.")

  def _without_flock(self, fd: int) -> None:
    holder = _read_holder(fd)
    local = holder.get("host") == socket.gethostname()
    if holder and _is_other(holder) and (not local or _alive(holder.get("pid"))):
      os.close(fd)
      raise WorkdirInUse(f"{self.path.parent} is in use by another run: "
                         f"{_describe_holder(holder)} (this filesystem has no flock: delete "
                         f"{self.path} if that process has ended).")

  def release(self) -> None:
    """Deletes the lock file and drops the lock (also done by the kernel if the process dies)."""
    if self._fd is None:
      return
    with contextlib.suppress(OSError):
      if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
        os.unlink(self.path)
    os.close(self._fd)
    self._fd = None


@contextlib.contextmanager
def locked(workdir: str | Path, log: Callable[[str], None] = print) -> Iterator[None]:
  """Holds the lock of `workdir` (which must exist) for the `with` block; see `WorkdirLock`.

  With several processes only process 0 locks (the others share its run); all of them learn
  whether it could, so that all of them fail together rather than wait for each other.

  Raises:
    WorkdirInUse: another process holds it.
    WorkdirError: the lock file cannot be created.
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, log).acquire()
    except WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if not np.all(multihost_utils.process_allgather(np.asarray(error is None))):
      error = error or WorkdirInUse(f"Process 0 could not lock {Path(workdir).absolute()} "
                                    f"(its output says why).")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


# ------------------------------------------------------------------------------ config

def config_json(config: Any) -> dict:
  """The config as JSON would store it (tuples are lists), so that saved and live ones compare."""
  text = (config.to_json_best_effort() if hasattr(config, "to_json_best_effort")
          else json.dumps(config, default=str))
  return json.loads(text)


def _flat(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _same(a: Any, b: Any) -> bool:
  """JSON equality that keeps booleans apart from numbers (`True == 1` in Python)."""
  if isinstance(a, bool) or isinstance(b, bool):
    return type(a) is type(b) and a == b
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  return a == b


def diff_configs(old: Mapping, new: Mapping) -> dict[str, dict]:
  """`{"optimizer.learning_rate": {"old": 0.001, "new": 0.01}, ...}` of two JSON configs; a key
  on one side only has only "old" or "new"."""
  a, b = _flat(old), _flat(new)
  changes = {}
  for key in sorted(set(a) | set(b)):
    if key in a and key in b and _same(a[key], b[key]):
      continue
    changes[key] = {side: tree[key] for side, tree in (("old", a), ("new", b)) if key in tree}
  return changes


def describe_changes(changes: Mapping[str, Mapping], limit: int = 8) -> str:
  """`optimizer.learning_rate 0.001 -> 0.01, train.epochs 3 -> 4` (the first `limit` keys)."""
  def show(change, side):
    if side not in change:
      return "(absent)"
    text = json.dumps(change[side])
    return text if len(text) <= 60 else text[:57] + "..."

  parts = [f"{key} {show(c, 'old')} -> {show(c, 'new')}" for key, c in changes.items()]
  more = len(parts) - limit
  return ", ".join(parts[:limit]) + (f" and {more} more" if more > 0 else "")


def latest_step(workdir: str | Path) -> int | None:
  """The step of the newest checkpoint a run in `workdir` can resume from (None: none).

  Read from the folder names: orbax renames a checkpoint to its step only once it is complete.
  """
  latest = Path(workdir) / "checkpoints" / "latest"
  steps = [int(p.name) for p in latest.iterdir() if p.name.isdigit()] if latest.is_dir() else []
  return max(steps, default=None)


def has_checkpoint(workdir: str | Path) -> bool:
  """Whether a run in `workdir` has saved a checkpoint to resume from."""
  return latest_step(workdir) is not None


def changed_config(workdir: str | Path, config: Any, *, started: bool,
                   resume_with_changes: bool) -> dict[str, dict]:
  """How `config` differs from the config.json of the run in `workdir` (`diff_configs`).

  Args:
    workdir: the run's directory.
    config: the config it is asked to run with now.
    started: whether the workdir holds work done with its saved config (a checkpoint, results);
      if not, its config.json is simply replaced and nothing is compared.
    resume_with_changes: whether differences are allowed (then they are returned, to record).

  Raises:
    ConfigChanged: the configs differ and `resume_with_changes` is False; the one-line message
      lists the keys, `old -> new`.
  """
  saved = Path(workdir) / CONFIG_FILE
  if not started or not saved.is_file():
    return {}
  try:
    old = json.loads(saved.read_text())
  except ValueError as e:
    if not resume_with_changes:
      raise ConfigChanged(f"{saved} is not valid JSON ({e}), so this config cannot be compared "
                          f"with the run's; rerun with --resume_with_changes to continue it with "
                          f"this config, or use a new workdir.") from None
    old = {}
  changes = diff_configs(old, config_json(config))
  if changes and not resume_with_changes:
    raise ConfigChanged(f"{Path(workdir)} holds a run of another config: "
                        f"{describe_changes(changes)}. Rerun with --resume_with_changes to "
                        f"continue it with these changes (recorded in {CHANGES_FILE}), or use "
                        f"a new workdir.")
  return changes


def record_config(workdir: str | Path, config: Any, changes: Mapping[str, Mapping] | None = None,
                  **where: Any) -> None:
  """Writes config.json; with `changes`, appends `{**where, "time", "changes"}` (e.g. the step
  the change took effect at) to config_changes.jsonl."""
  workdir = Path(workdir)
  text = (config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
          else json.dumps(config, indent=2, default=str))
  (workdir / CONFIG_FILE).write_text(text + "\n")
  if changes:
    record = {**where, "time": datetime.now().astimezone().isoformat(timespec="seconds"),
              "changes": dict(changes)}
    with (workdir / CHANGES_FILE).open("a") as f:
      f.write(json.dumps(record, default=str) + "\n")


def read_changes(workdir: str | Path) -> list[dict]:
  """The recorded config changes of `workdir`, oldest first (`[]` if none)."""
  path = Path(workdir) / CHANGES_FILE
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
