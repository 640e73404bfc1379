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


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global `jax.Array`s split over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  """A global batch must split evenly over the devices."""
  from xjax.errors import ConfigError
  if batch_size % mesh.size:
    raise ConfigError(f"The {what} {batch_size} is not divisible by the {mesh.size} devices; "
                      f"choose a multiple of {mesh.size}.")
