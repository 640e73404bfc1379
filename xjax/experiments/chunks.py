"""Per-example results on disk, one `.npz` file per chunk of consecutive examples: what makes a
long evaluation stream (memory flat in the number of examples) and resumable.

A `ChunkStore` in a directory holds:

  settings.json        what the chunks were computed with (methods, metrics, split, n, ...)
  chunk_000012.npz     examples `12 * chunk_size` to `13 * chunk_size - 1`: arrays whose first
                       axis is those examples (numpy's own format: `np.load` reads any of them)

A chunk is written to a temporary name, flushed to the disk, then renamed: a process killed at
any moment (SIGKILL, a scheduler's SIGTERM, a lost node) leaves either the whole chunk or none of
it under its name. Opening the store again validates every chunk (each array must load, the zip
checksums hold and each has the chunk's number of rows), deletes what was half-written or does
not validate, and resumes at the first chunk missing. Chunks computed with other settings are
never mixed with new ones: the store starts over, saying why.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from xjax.errors import ConfigError

PARTIAL = ".partial"  # the suffix of a chunk while it is written


class ChunkStore:
  """`n` examples in chunks of `chunk_size` under `directory` (module docstring).

  Args:
    directory: where the chunks live (created).
    settings: what the results depend on, JSON-serialisable; a store written with other
      settings is cleared.
    n: the number of examples.
    chunk_size: examples per chunk (the last one may be short).
    log: where what was found on disk is reported.
  """

  def __init__(self, directory: str | Path, settings: Mapping[str, Any], n: int,
               chunk_size: int, log: Callable[[str], None] = print):
    if n < 1 or chunk_size < 1:
      raise ConfigError(f"a chunk store needs n >= 1 and chunk_size >= 1; got {n}, {chunk_size}.")
    self.directory, self.n, self.chunk_size, self.log = Path(directory), n, chunk_size, log
    self.settings = json.loads(json.dumps(dict(settings), default=str))

  @property
  def num_chunks(self) -> int:
    return -(-self.n // self.chunk_size)

  def bounds(self, index: int) -> tuple[int, int]:
    """The examples `(start, stop)` of chunk `index`."""
    return index * self.chunk_size, min((index + 1) * self.chunk_size, self.n)

  def path(self, index: int) -> Path:
    return self.directory / f"chunk_{index:06d}.npz"

  # ---------------------------------------------------------------- opening, resuming

  def open(self) -> int:
    """Checks what is on disk and returns the first chunk to compute (0: start from scratch;
    `num_chunks`: everything is done). Deletes half-written and invalid chunks and, when the
    settings changed, every chunk."""
    self.directory.mkdir(parents=True, exist_ok=True)
    for partial in sorted(self.directory.glob(f"*{PARTIAL}")):
      self.log(f"{partial.name}: a chunk half-written when the last run stopped; deleted, it is "
               f"computed again.")
      partial.unlink()
    settings_path = self.directory / "settings.json"
    saved = json.loads(settings_path.read_text()) if settings_path.exists() else None
    existing = sorted(self.directory.glob("chunk_*.npz"))
    if saved != self.settings:
      if existing:
        changed = sorted(k for k in {*self.settings, *(saved or {})}
                         if (saved or {}).get(k) != self.settings.get(k))
        self.log(f"{self.directory}: the {len(existing)} chunks on disk were computed with "
                 f"other settings ({', '.join(changed)} changed); starting over.")
      for path in existing:
        path.unlink()
      _write_atomically(settings_path,
                        lambda f: f.write(json.dumps(self.settings, indent=2).encode()))
      return 0
    first = 0
    while first < self.num_chunks and self.path(first).exists():
      problem = self.problem(first)
      if problem:
        self.log(f"{self.path(first).name}: {problem}; deleted, it is computed again.")
        self.path(first).unlink()
        break
      first += 1
    for index in range(first, self.num_chunks):  # after a gap nothing is trusted
      self.path(index).unlink(missing_ok=True)
    return first

  def problem(self, index: int) -> str | None:
    """Why chunk `index` cannot be used (None: it is whole)."""
    start, stop = self.bounds(index)
    try:
      with np.load(self.path(index)) as arrays:
        for key in arrays.files:  # reading an array checks its zip CRC
          if len(arrays[key]) != stop - start:
            return f"{key} has {len(arrays[key])} rows, not {stop - start}"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None

  # ---------------------------------------------------------------- writing, reading

  def write(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
    """Chunk `index`, atomically (module docstring). Every array has the chunk's rows."""
    start, stop = self.bounds(index)
    wrong = {k: len(v) for k, v in arrays.items() if len(v) != stop - start}
    if wrong:
      raise ValueError(f"chunk {index} holds examples {start}..{stop - 1}: {stop - start} rows, "
                       f"but {wrong}.")
    _write_atomically(self.path(index), lambda f: np.savez(f, **arrays))

  def read(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of chunk `index` (only `keys`, when given)."""
    with np.load(self.path(index)) as arrays:
      return {k: arrays[k] for k in (arrays.files if keys is None else keys)}

  def keys(self) -> list[str]:
    """The arrays every chunk holds (those of the first)."""
    with np.load(self.path(0)) as arrays:
      return list(arrays.files)

  def chunks(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Each chunk's arrays in order, one chunk in memory at a time."""
    for index in range(self.num_chunks):
      yield self.read(index, keys)

  def concatenate(self, keys: list[str]) -> dict[str, np.ndarray]:
    """`keys` over all examples (for per-example scores: small arrays)."""
    parts = list(self.chunks(keys))
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _write_atomically(path: Path, write: Callable) -> None:
  """`write(file)` to `path + PARTIAL`, flushed to the disk, then renamed to `path`."""
  partial = path.with_name(path.name + PARTIAL)
  with open(partial, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)
  directory = os.open(path.parent, os.O_RDONLY)
  try:  # the rename itself reaches the disk
    os.fsync(directory)
  finally:
    os.close(directory)
