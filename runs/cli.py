"""What every `python -m runs.<name>` shares: config flags and errors without tracebacks."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from xjax.errors import XjaxError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file, `runs/configs/NAME.py[:VARIANT]`; override keys with "
    "--config.KEY=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory: checkpoints, metrics, results.")


def run(main: Callable[..., object]) -> None:
  """`app.run` with `main(config, workdir)`; an `XjaxError` prints `error: ...` and exits 2."""

  def absl_main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
      raise app.UsageError("Both --config and --workdir are required.")
    try:
      main(_CONFIG.value, _WORKDIR.value)
    except XjaxError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(143 if type(e).__name__ == "Interrupted" else 2)

  app.run(absl_main)
