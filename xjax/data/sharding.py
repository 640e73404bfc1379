"""Data parallelism with `jax.jit` and `NamedSharding` over a `Mesh` of every device.

One code path from one CPU to a pod (docs/design.md): the batch axis is split over the mesh axis
"data", parameters and optimizer state are replicated, and XLA inserts the gradient all-reduce.
Several hosts work the same way after `jax.distributed.initialize()`: each host feeds its local
rows and `jax.make_array_from_process_local_data` assembles the global batch. `jax.pmap`, in
maintenance mode, is not used.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """A one-axis mesh ("data",) over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The whole array on every device (parameters, optimizer state, scalars)."""
  return NamedSharding(mesh, PartitionSpec())


def shard_rows(rows: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows of a global batch -> one global `jax.Array` split over the mesh."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), np.asarray(rows))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global `jax.Array`s split over the mesh."""
  return {k: shard_rows(v, mesh) for k, v in batch.items()}


def process_rows(mesh: Mesh, global_rows: int) -> slice:
  """The rows of a global batch of `global_rows` that this process feeds: those of the shards on
  its own devices (`shard_rows` takes exactly these), all rows with one process."""
  shards = batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
  starts = [index[0].start or 0 for index in shards]
  stops = [global_rows if index[0].stop is None else index[0].stop for index in shards]
  return slice(min(starts), max(stops))


def gather(tree):
  """A pytree of global arrays (split over the mesh) as numpy arrays, whole, in every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  """A global batch must split evenly over the devices."""
  from xjax.errors import ConfigError
  if batch_size % mesh.size:
    raise ConfigError(f"The {what} {batch_size} is not divisible by the {mesh.size} devices; "
                      f"choose a multiple of {mesh.size}.")
