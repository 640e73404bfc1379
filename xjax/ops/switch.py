"""The one switch between the CPU fast paths and plain `jax.lax` ops.

Every fast path in `xjax.ops` asks `fast_paths_enabled()` when it is traced. The answer is no on
GPU and TPU (lax's ops are the fast ones there) and, on CPU, when the environment variable
`XJAX_PLAIN_LAX` holds a true value (`1`, `true`, `yes`, `on`): then every op of `xjax.ops` is
the plain `lax` op it stands for (`lax.conv_general_dilated`, `flax.linen.max_pool`, i.e.
`lax.reduce_window`) with its ordinary gradient, for the models, the LRP engine and the
receptive fields alike. Use it to check that a result does not depend on the fast paths, to
measure them (docs/benchmarks_cpu_fast_paths.md), or to rule them out when debugging.

The switch is read at trace time, so it applies to functions traced after it is set. jax caches
traces by function (`jax.jit`, and `jax.make_jaxpr` too): one already traced for the same
argument shapes keeps the program it was traced with. Trace a fresh function (a new closure), or
call `jax.clear_caches()`, to see a change of the switch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax

PLAIN_LAX_ENV = "XJAX_PLAIN_LAX"
_OFF = ("", "0", "false", "no", "off")


def plain_lax_requested() -> bool:
  """Whether `XJAX_PLAIN_LAX` asks for plain `lax` ops (any value but empty, 0, false, no, off)."""
  return os.environ.get(PLAIN_LAX_ENV, "").strip().lower() not in _OFF


def fast_paths_enabled() -> bool:
  """Whether the ops of `xjax.ops` take their CPU fast paths in the function being traced: on the
  CPU backend, unless `XJAX_PLAIN_LAX` is set (see the module docstring)."""
  return jax.default_backend() == "cpu" and not plain_lax_requested()


@contextlib.contextmanager
def plain_lax(enabled: bool = True) -> Iterator[None]:
  """Sets `XJAX_PLAIN_LAX` for the duration of a `with` block, and restores it afterwards.

  `with plain_lax():` traces everything in the block on plain `lax` ops; `plain_lax(False)` turns
  the fast paths back on inside, whatever the environment says. It changes the process's
  environment (all threads see it), and, as the switch is read at trace time, it only affects
  functions traced inside the block: a function jax has already traced (`jax.jit`,
  `jax.make_jaxpr`) for the same argument shapes keeps its program, so trace a fresh one.
  """
  previous = os.environ.get(PLAIN_LAX_ENV)
  os.environ[PLAIN_LAX_ENV] = "1" if enabled else "0"
  try:
    yield
  finally:
    if previous is None:
      os.environ.pop(PLAIN_LAX_ENV, None)
    else:
      os.environ[PLAIN_LAX_ENV] = previous
