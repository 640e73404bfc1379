"""Errors a user can fix. The CLIs print them in one line, without a traceback."""


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
