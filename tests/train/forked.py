"""`python -m runs.train ...` (or `python -c CODE ...`) as forks of one process that imported xjax.

Each `python -m runs.train` spends about 4 s of its CPU importing JAX and xjax (`runs.cli` imports
every plug-in) before it reads a flag, more than a tiny training run takes after it, and
tests/train/test_runs_train.py starts over twenty of them. `Forks` starts one interpreter that
imports what `runs.train` imports, once (no JAX backend started: no device, no thread of JAX's),
and runs each command in a fork of it. The fork is a process of its own, run as the interpreter
runs `python -m MODULE` or `python -c CODE`: `runpy` or `exec` as `__main__`, with the command's
argv, working directory and environment, its own stdout, stderr and signals, and the exit status
of `sys.exit`, of an uncaught exception (its traceback on stderr), or of the signal that killed
it; at the end it waits for its threads and runs its atexit handlers, as the interpreter does.
What it skips is the interpreter's start and those imports; commands started as fresh
interpreters are tested too (tests/train/test_config_checks.py, tests/train/test_multihost.py,
the `--help` of tests/explain/test_explain_cli.py).

The imports read the JAX_* variables of the server's environment (`env`); the variables a command
reads later (XLA_FLAGS, read when JAX starts its backend) may differ per command.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

_SERVER = r'''
import json, os, sys
replies = os.fdopen(int(sys.argv[1]), "w", buffering=1)
# What `python -m runs.train` imports before it starts JAX: `runs.cli` (every plug-in) and what
# runs/train.py adds. Not runs.train itself: runpy runs it as __main__, and warns on stderr when
# the module is imported already, which a fresh interpreter never does.
import runs.cli, xjax.experiments.runner, xjax.train.config_checks


def _status(code):
  """The exit status of `sys.exit(code)`, as the interpreter gives it."""
  if code is None:
    return 0
  if isinstance(code, int):
    return code & 0xFF
  print(code, file=sys.stderr)
  return 1


def child(request):
  import atexit, runpy, threading, traceback, types
  status, interrupted = 1, False
  try:
    replies.close()
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
      opened = os.open(path, flags, 0o644)
      os.dup2(opened, fd)
      os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    if request["module"]:
      runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    else:
      main = sys.modules["__main__"] = types.ModuleType("__main__")
      exec(compile(request["code"], "<string>", "exec"), main.__dict__)
    status = 0
  except SystemExit as e:
    status = _status(e.code)
  except BaseException as e:  # the traceback from the command's code on (not this function)
    traceback.print_exception(type(e), e, e.__traceback__.tb_next)
    interrupted = isinstance(e, KeyboardInterrupt)
  finally:
    try:
      threading._shutdown()  # as the interpreter ends: threading's exit hooks, then the joins
      atexit._run_exitfuncs()
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      if interrupted:  # as the interpreter ends on an uncaught KeyboardInterrupt
        import signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
      os._exit(status)


for line in sys.stdin:
  request = json.loads(line)
  sys.stdout.flush()
  sys.stderr.flush()
  pid = os.fork()
  if pid == 0:
    child(request)
  replies.write(json.dumps({"pid": pid}) + "\n")
  _, status = os.waitpid(pid, 0)
  replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
'''


class Forks:
  """Runs commands, one at a time, as forks of a server started here (`close` ends it).

  `directory` holds the server's log and each command's stdout and stderr while it runs.
  """

  def __init__(self, directory: Path, cwd: Path, env: dict[str, str]):
    self._directory, self._cwd = Path(directory), Path(cwd)
    self._log = self._directory / "server.log"
    read, write = os.pipe()
    with open(self._log, "w") as out:
      self._server = subprocess.Popen([sys.executable, "-c", _SERVER, str(write)], cwd=cwd,
                                      env=env, stdin=subprocess.PIPE, stdout=out,
                                      stderr=subprocess.STDOUT, text=True, pass_fds=(write,))
    os.close(write)
    self._replies, self._pending = read, b""

  def _reply(self, timeout: float) -> dict | None:
    """The server's next reply line, or None after `timeout` seconds without one."""
    deadline = time.monotonic() + timeout
    while b"\n" not in self._pending:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([self._replies], [], [], left)[0]:
        return None
      chunk = os.read(self._replies, 4096)
      if not chunk:
        raise RuntimeError(f"the fork server ended:\n{self._log.read_text()[-3000:]}")
      self._pending += chunk
    line, self._pending = self._pending.split(b"\n", 1)
    return json.loads(line)

  def run(self, args: list[str], *, env: dict[str, str], timeout: float
          ) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, *args], cwd=..., env=env, capture_output=True,
    text=True, timeout=timeout)` for `args` = ["-m", MODULE, ...] or ["-c", CODE, ...]."""
    option, target, *rest = args
    if option not in ("-m", "-c"):
      raise ValueError(f"expected -m MODULE or -c CODE, got {option!r}")
    stdout, stderr = self._directory / "stdout", self._directory / "stderr"
    request = {"module": target if option == "-m" else None,
               "code": target if option == "-c" else None,
               "argv": [option, *rest], "cwd": str(self._cwd), "env": dict(env),
               "stdout": str(stdout), "stderr": str(stderr)}
    self._server.stdin.write(json.dumps(request) + "\n")
    self._server.stdin.flush()
    started = self._reply(timeout)  # (the first waits for the server's imports too)
    if started is None:
      raise RuntimeError(f"the fork server did not start the command:\n"
                         f"{self._log.read_text()[-3000:]}")
    ended = self._reply(timeout)
    if ended is None:
      os.kill(started["pid"], signal.SIGKILL)
      self._reply(60)
      raise subprocess.TimeoutExpired([sys.executable, *args], timeout, stdout.read_text(),
                                      stderr.read_text())
    return subprocess.CompletedProcess([sys.executable, *args], ended["returncode"],
                                       stdout.read_text(), stderr.read_text())

  def close(self) -> None:
    self._server.stdin.close()  # the server ends at the end of its input
    try:
      self._server.wait(timeout=60)
    finally:
      os.close(self._replies)
