"""Fixed-shape batches over in-memory arrays: one compilation whatever the number of examples.

A jit-compiled function recompiles for every new input shape. Analyses that run a compiled
function over N examples (heatmaps of a test split, logits for a figure) therefore cut the
examples into batches of one size, pad the last batch by repeating its last row, and drop the
padding from the outputs: `map_batches(fn, x, targets, batch_size=64)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from xjax.errors import ConfigError


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
  """`(start, stop)` of each batch of `n` examples, the last one possibly short."""
  if batch_size < 1:
    raise ConfigError(f"The batch size must be >= 1; got {batch_size}.")
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
  """`a` with its last row repeated up to `size` rows (`a` itself when it has `size` rows)."""
  a = np.asarray(a)
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def map_batches(fn: Callable[..., Any], *arrays: np.ndarray, batch_size: int) -> Any:
  """`fn(*arrays)` computed in padded batches of `batch_size` rows, as numpy.

  Args:
    fn: a function of row-aligned arrays (typically jit-compiled) returning an array or a pytree
      of arrays whose first axis is the batch.
    *arrays: the inputs, all with the same number of rows N >= 1.
    batch_size: the rows of every call (at most N are used: a smaller input is not padded up).

  Returns:
    `fn`'s outputs over all N rows, concatenated along the first axis (padding dropped).

  Raises:
    ConfigError: no input, inputs of different lengths, no rows, or `batch_size < 1`.
  """
  if not arrays:
    raise ConfigError("map_batches needs at least one input array.")
  lengths = {len(a) for a in arrays}
  if len(lengths) != 1 or 0 in lengths:
    raise ConfigError(f"map_batches needs inputs with the same number (>= 1) of rows; got "
                      f"{sorted(lengths)}.")
  n = lengths.pop()
  size = min(batch_size, n)
  parts = []
  for start, stop in batch_bounds(n, size):
    out = fn(*(pad_rows(a[start:stop], size) for a in arrays))
    parts.append(jax.tree.map(lambda v, k=stop - start: np.asarray(v)[:k], out))
  return jax.tree.map(lambda *v: np.concatenate(v), *parts)
