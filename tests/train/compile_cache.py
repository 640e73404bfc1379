"""A persistent XLA compilation cache for the `runs.*` processes the tests start.

Those processes train the same tiny model again and again, and on a CPU most of each one's time
after its imports is XLA compiling the same programs (the train and eval steps, the initializers).
With `JAX_COMPILATION_CACHE_DIR` set, the first process to compile a program writes the
executable and the later ones load it instead of compiling it again: the same executable, so the
same numbers. A program not in the cache (another device count, another model) is compiled as
without one. (In a multihost run only process 0 writes, and the other's programs differ by its
process index: it compiles every time.)

One folder per session (per worker under pytest-xdist), in its temporary folder: the modules that
train the same tiny model share it, and nothing is reused from an earlier session.
"""

from __future__ import annotations

import pytest


def compile_cache_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
  """The environment variables that make a subprocess's JAX read and write the cache of this
  session (of this worker, under pytest-xdist): `xla_cache` in its temporary folder."""
  directory = tmp_path_factory.getbasetemp() / "xla_cache"
  directory.mkdir(exist_ok=True)
  return {"JAX_COMPILATION_CACHE_DIR": str(directory),
          # Every program, however small: the initializers and eval steps of a tiny model each
          # compile in well under JAX's default 1 s, and there are dozens of them.
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          # A size limit turns on JAX's file lock around each read and write of the cache (without
          # one, a process could read an entry that another process is still writing, as the
          # processes of a multihost run may). 1 GiB: never reached here.
          "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**30)}
