"""Fixed-shape batches, split over every device: one compilation whatever the number of examples.

A jit-compiled function recompiles for every new input shape. Analyses that run a compiled
function over N examples (heatmaps of a test split, logits for a figure) therefore cut the
examples into batches of one size, pad the last batch by repeating its last row, and drop the
padding from the outputs: `map_batches(fn, x, targets, batch_size=64)`.

Each batch is split over the devices of a mesh (`xjax.data.sharding`, the mesh training uses),
so one call runs on every device; its size is rounded up to a multiple of the number of devices.
With several processes (`jax.distributed`), each process supplies only the rows of each batch
that its own devices hold, and every process receives the whole outputs. `BatchPlan` says which
rows those are, so that a process can read just its share of a dataset (`runs.evaluate`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from xjax.data import sharding
from xjax.errors import ConfigError


def batch_bounds(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
  """`(start, stop)` of each batch of `n` examples, the last one possibly short."""
  if batch_size < 1:
    raise ConfigError(f"The batch size must be >= 1; got {batch_size}.")
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def device_batch_size(batch_size: int, n: int, mesh: Mesh) -> int:
  """The rows of every call over `n` examples: at most `batch_size` (fewer when n is smaller),
  rounded up to a multiple of the mesh's devices so that each device gets as many."""
  if batch_size < 1:
    raise ConfigError(f"The batch size must be >= 1; got {batch_size}.")
  size = min(batch_size, n)
  return -(-size // mesh.size) * mesh.size


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Examples `start` to `stop - 1` in global batches of `size` rows split over `mesh`.

  Batch i holds the examples `start + i * size ...`, the last one padded by repeating example
  `stop - 1`. `local_indices()` are the examples this process reads (its rows of every batch, in
  order); `map` runs a function over the batches from arrays of just those rows.
  """

  start: int
  stop: int
  size: int
  mesh: Mesh

  @property
  def num_batches(self) -> int:
    return -(-(self.stop - self.start) // self.size)

  def _local(self, batch: int) -> np.ndarray:
    rows = self.start + batch * self.size + np.arange(self.size)[
        sharding.process_rows(self.mesh, self.size)]
    return np.minimum(rows, self.stop - 1)  # the padding repeats the last example

  def local_indices(self) -> np.ndarray:
    """The examples (of the whole dataset) this process supplies, batch after batch."""
    return np.concatenate([self._local(i) for i in range(self.num_batches)])

  def local(self, whole: np.ndarray) -> np.ndarray:
    """This process's rows (`local_indices`) of an array over examples `start ... stop - 1`."""
    return np.asarray(whole)[self.local_indices() - self.start]

  def compile(self, fn: Callable[..., Any], variables: Any, *arrays: np.ndarray
              ) -> tuple[Callable[..., Any], float]:
    """`fn(variables, *batches)` compiled for this plan's batches, the variables copied to every
    device: `(call, seconds it took to compile)`, where `call(*batches)` runs it (for `map`).

    `arrays` give each batch argument's row shape and dtype (any rows of them).
    """
    variables = jax.device_put(variables, sharding.replicated(self.mesh))
    rows = sharding.batch_sharding(self.mesh)
    specs = [jax.ShapeDtypeStruct((self.size, *np.shape(a)[1:]),
                                  jax.dtypes.canonicalize_dtype(np.asarray(a).dtype),
                                  sharding=rows) for a in arrays]
    started = time.perf_counter()
    compiled = jax.jit(fn).lower(variables, *specs).compile()
    return (lambda *batches: compiled(variables, *batches)), time.perf_counter() - started

  def map(self, fn: Callable[..., Any], *local_arrays: np.ndarray) -> Any:
    """`fn`'s outputs over examples `start ... stop - 1`, whole, as numpy, in every process.

    Args:
      fn: a function of row-aligned global arrays (typically jit-compiled) returning an array
        or a pytree of arrays whose first axis is the batch.
      *local_arrays: this process's rows, as `local_indices()` orders them.
    """
    per_batch = len(local_arrays[0]) // self.num_batches
    parts = []
    for i in range(self.num_batches):
      rows = slice(i * per_batch, (i + 1) * per_batch)
      out = fn(*(sharding.shard_rows(a[rows], self.mesh) for a in local_arrays))
      keep = min(self.size, self.stop - self.start - i * self.size)
      parts.append(jax.tree.map(lambda v, k=keep: v[:k], sharding.gather(out)))
    return jax.tree.map(lambda *v: np.concatenate(v), *parts)


def plan_batches(n: int, batch_size: int, mesh: Mesh | None = None, start: int = 0) -> BatchPlan:
  """The `BatchPlan` of examples `start ... start + n - 1` (mesh: default every device)."""
  mesh = sharding.make_mesh() if mesh is None else mesh
  return BatchPlan(start, start + n, device_batch_size(batch_size, n, mesh), mesh)


def map_batches(fn: Callable[..., Any], *arrays: np.ndarray, batch_size: int,
                mesh: Mesh | None = None) -> Any:
  """`fn(*arrays)` computed in padded batches of `batch_size` rows over the devices, as numpy.

  Args:
    fn: a function of row-aligned arrays (typically jit-compiled) returning an array or a pytree
      of arrays whose first axis is the batch.
    *arrays: the inputs, all with the same number of rows N >= 1, the same in every process.
    batch_size: the rows of every call (at most N are used: a smaller input is not padded up),
      rounded up to a multiple of the devices.
    mesh: the devices (default: every device of every process).

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
  plan = plan_batches(lengths.pop(), batch_size, mesh)
  return plan.map(fn, *(plan.local(a) for a in arrays))
