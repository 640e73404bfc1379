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
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host; the "
    "coordinator is found from the cluster's environment, e.g. SLURM or Cloud TPU).")


def run(main: Callable[..., object]) -> None:
  """`app.run` with `main(config, workdir)`; an `XjaxError` prints `error: ...` and exits 2."""

  def absl_main(argv):
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None or _WORKDIR.value is None:
      raise app.UsageError("Both --config and --workdir are required.")
    try:
      config = _CONFIG.value
      "name" in config  # a config file that failed to load raises here, not at parse time
    except OSError as e:
      print(f"error: cannot load --config: {str(e).strip().splitlines()[-1].strip()}",
            file=sys.stderr, flush=True)
      sys.exit(2)
    if _MULTIHOST.value:
      import jax
      jax.distributed.initialize()
    try:
      main(config, _WORKDIR.value)
    except XjaxError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(143 if type(e).__name__ == "Interrupted" else 2)

  app.run(absl_main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config errors (unknown keys, bad values) as one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # ml_collections wraps the config file's own exception (with its traceback) in the message:
    # its last line is the part a user needs, e.g. `Did you mean "epochs" instead of "epochz"?`.
    lines = [line for line in str(e).replace("\\n", "\n").splitlines() if line.strip()]
    print(f"error: bad --config or flag: {lines[-1].strip(chr(39)) if lines else e!r}",
          file=sys.stderr, flush=True)
    sys.exit(2)
