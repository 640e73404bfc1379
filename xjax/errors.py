"""Errors a user can fix. The CLIs print them in one line, without a traceback."""

import signal


class XjaxError(Exception):
  """Base class: the message says what is wrong and what to do about it."""


class ConfigError(XjaxError):
  """An unknown name (dataset, model, optimizer) or an invalid config value."""


class DataNotFoundError(XjaxError):
  """A dataset is not where it was looked for; the message names the files and the place."""


class UnreadableDataError(DataNotFoundError):
  """A listed data file is missing, truncated or corrupt; the message names it and its listing."""


class CheckpointMismatchError(XjaxError):
  """A checkpoint in the workdir does not fit the model the config builds."""


class UnsupportedOperationError(XjaxError):
  """An explanation method met an operation of the model it cannot handle; the message names it."""


class Interrupted(XjaxError):
  """SIGTERM or SIGINT arrived: a checkpoint was saved and the run stopped; run it again to
  resume. `exit_status` is the shell's for that signal, 128 + its number (143, 130), which the
  command lines exit with instead of the 2 of the other errors."""

  def __init__(self, message: str, exit_status: int = 128 + signal.SIGTERM):
    super().__init__(message)
    self.exit_status = exit_status
