"""Devices and hosts: a 1-D mesh named 'runs' over every device of every process.

Arrays with a leading runs axis are sharded over it (`shard_runs`); the dataset is replicated
(`replicate`). Both build global arrays from host numpy arrays that every process holds, so the
same code runs on one CPU, eight GPUs, or several hosts (`initialize` wraps
`jax.distributed.initialize`). `to_host` brings a sharded result back to every process.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "runs"


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Join a multi-process job when asked, or when run as one of several SLURM tasks (jax reads
  the coordinator, process count and index from the SLURM environment then)."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ
  if coordinator_address or num_processes > 1 or slurm:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes only
    jax.distributed.initialize(coordinator_address=coordinator_address or None,
                               num_processes=num_processes or None,
                               process_id=process_id if process_id >= 0 else None)


def mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (AXIS,))


def is_writer() -> bool:
  return jax.process_index() == 0


def shard_runs(tree: Any, m: Mesh) -> Any:
  """Host arrays with a leading runs axis (a multiple of the device count) -> sharded arrays."""
  sharding = NamedSharding(m, P(AXIS))
  return jax.tree.map(lambda a: _global(np.asarray(a), sharding), tree)


def replicate(tree: Any, m: Mesh) -> Any:
  sharding = NamedSharding(m, P())
  return jax.tree.map(lambda a: _global(np.asarray(a), sharding), tree)


def _global(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly multi-process sharded) arrays, identical on every process."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(get, tree)

