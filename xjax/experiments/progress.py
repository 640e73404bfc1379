"""Progress bars for long evaluations: one per task (a method; a method's metric), each with the
examples done, examples per second and the time left, shown by process 0 only.

On a terminal the bars are redrawn in place after every update; in a log file (a batch job) the
block is printed at most every `every` seconds, and once at the end, so that logs stay short.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def _clock(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
  """Bars for `tasks`, each over `total` examples of which `done` were finished before (a
  resumed run: they count as done, not in the speed).

  `add(task, examples, seconds)` records that `task` did `examples` more in `seconds`.
  """

  def __init__(self, tasks: Sequence[str], total: int, *, done: int = 0,
               stream: TextIO | None = None, every: float = 30.0, enabled: bool = True,
               width: int = 24):
    self.total, self.enabled, self.every, self.width = total, enabled, every, width
    self.stream = sys.stderr if stream is None else stream
    self.done = {task: done for task in tasks}
    self.examples = {task: 0 for task in tasks}
    self.seconds = {task: 0.0 for task in tasks}
    self._terminal = bool(getattr(self.stream, "isatty", lambda: False)())
    self._drawn = 0  # lines drawn last time (a terminal redraws over them)
    self._last = -float("inf")

  def add(self, task: str, examples: int, seconds: float) -> None:
    self.done[task] += examples
    self.examples[task] += examples
    self.seconds[task] += seconds

  def time_left(self, task: str) -> float | None:
    """Seconds `task` still needs at its speed so far (None before it has a speed)."""
    if self.examples[task] == 0 or self.seconds[task] <= 0:
      return None
    return (self.total - self.done[task]) * self.seconds[task] / self.examples[task]

  def lines(self) -> list[str]:
    name_width = max(len(task) for task in self.done)
    lines = []
    for task, done in self.done.items():
      filled = int(self.width * done / self.total)
      speed = (f"{self.examples[task] / self.seconds[task]:9.1f} ex/s"
               if self.seconds[task] > 0 else f"{'-':>9} ex/s")
      left = self.time_left(task)
      lines.append(f"{task:<{name_width}} [{'#' * filled}{'.' * (self.width - filled)}] "
                   f"{done:>{len(str(self.total))}}/{self.total} {speed}  "
                   f"{'-' if left is None else _clock(left)} left")
    lefts = [self.time_left(task) for task in self.done]  # the tasks take turns: their sum
    known = all(left is not None for left in lefts)
    lines.append(f"{'all':<{name_width}} {_clock(sum(lefts)) if known else '-'} left")
    return lines

  def show(self, final: bool = False) -> None:
    """Draws the bars (a terminal: always; a log: every `every` seconds, and at the end)."""
    if not self.enabled:
      return
    now = time.monotonic()
    if not (self._terminal or final or now - self._last >= self.every):
      return
    self._last = now
    lines = self.lines()
    if self._terminal and self._drawn:
      self.stream.write(f"\x1b[{self._drawn}F")  # back to the first line of the last block
    self.stream.write("".join(f"{line}\x1b[K\n" if self._terminal else f"{line}\n"
                              for line in lines))
    self.stream.flush()
    self._drawn = len(lines)
