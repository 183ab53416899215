"""Devices and hosts: a 1-D mesh named 'runs' over every device of every process.

Arrays with a leading runs axis are sharded over it (`shard_runs`); the dataset is replicated
(`replicate`). Both build global arrays from host numpy arrays that every process holds, so the
same code runs on one CPU, eight GPUs, or several hosts (`initialize` wraps
`jax.distributed.initialize`). `to_host` brings a sharded result back to every process.

On a CPU host jkd splits the machine into one XLA CPU device per run (`use_cpu_devices`, up to
`MAX_CPU_DEVICES`): the per-device programs run concurrently and keep both cores busy between the
small operations of a step, and each device runs its own (unvmapped) convolutions. Measured on 2
cores (WRN16-1, batch 128, 9 runs): 23 ms per run and step against 36 ms with all runs vmapped on
one device (`python -m jkd.bench train-step`). The replicated dataset is not copied per device: CPU
devices alias one 64-byte-aligned host buffer.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jkd.data.base import ALIGNMENT, aligned_empty

AXIS = "runs"


# (this process's index, the number of processes), set by `initialize`; known without starting
# the backend, which a single process must not start before `use_cpu_devices` splits the CPU.
_process = (0, 1)


def initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
  """Join a multi-process job when asked, or when run as one of several SLURM tasks (jax reads
  the coordinator, process count and index from the SLURM environment then)."""
  global _process
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ
  if coordinator_address or num_processes > 1 or slurm:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")   # CPU processes only
    jax.distributed.initialize(coordinator_address=coordinator_address or None,
                               num_processes=num_processes or None,
                               process_id=process_id if process_id >= 0 else None)
    _process = (jax.process_index(), jax.process_count())


MAX_CPU_DEVICES = 32


def cpu_devices_for(num_runs: int) -> int:
  """Devices for `num_runs` runs: one each up to MAX_CPU_DEVICES, else as few runs per device as
  possible with the least padding."""
  per_device = -(-num_runs // MAX_CPU_DEVICES)
  return max(1, -(-num_runs // per_device))


def use_cpu_devices(num_runs: int) -> int | None:
  """Split this process's CPU into `cpu_devices_for(num_runs)` devices, unless the backend is
  already running, the count was set explicitly (`jax_num_cpu_devices`, XLA_FLAGS), or this is one
  process of several. Returns the count set, or None."""
  explicit = (jax.config.jax_num_cpu_devices > 0
              or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))
  if explicit or jax.distributed.is_initialized():
    return None
  n = cpu_devices_for(num_runs)
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:   # the backend is running already: its devices stay as they are
    return None
  return n


def mesh(num_runs: int = 0) -> Mesh:
  """The mesh for a program of `num_runs` runs: every device; but on a single-process CPU only the
  first `cpu_devices_for(num_runs)`, so that a process split for a larger program (a pipeline's
  KD sweep) runs a smaller one (its teachers) without inert padding runs."""
  devices = jax.devices()
  if num_runs and jax.process_count() == 1 and devices[0].platform == "cpu":
    devices = devices[:cpu_devices_for(num_runs)]
  return Mesh(np.array(devices), (AXIS,))


def has_runs_axis(arg: Any) -> bool:
  """Whether a program argument carries the leading runs axis: everything but the types that
  declare themselves replicated (`replicated = True`: the dataset, the clock) and bare scalars."""
  if getattr(type(arg), "replicated", False):
    return False
  return not (hasattr(arg, "shape") and arg.shape == ())


def per_device(fn: Callable, m: Mesh) -> Callable:
  """`fn` run by every device on its own runs (`jax.shard_map`): each argument with a runs axis
  (`has_runs_axis`) is split over the devices, the others replicated; every output has one."""
  def call(*args):
    specs = tuple(P(AXIS) if has_runs_axis(a) else P() for a in args)
    return jax.shard_map(fn, mesh=m, in_specs=specs, out_specs=P(AXIS), check_vma=False)(*args)
  return call


def is_writer() -> bool:
  """Process 0 writes results (known without starting the backend: see `initialize`)."""
  return _process[0] == 0


def process_count() -> int:
  """`jax.process_count()` without starting the backend."""
  return _process[1]


def shard_runs(tree: Any, m: Mesh) -> Any:
  """Host arrays with a leading runs axis (a multiple of the device count) -> sharded arrays."""
  sharding = NamedSharding(m, P(AXIS))
  return jax.tree.map(lambda a: _global(np.asarray(a), sharding), tree)


def replicate(tree: Any, m: Mesh) -> Any:
  """Every device gets the whole array; CPU devices share one aligned host copy (zero-copy)."""
  sharding = NamedSharding(m, P())
  return jax.tree.map(lambda a: _global(aligned(np.asarray(a)), sharding), tree)


def aligned(a: np.ndarray, alignment: int = ALIGNMENT) -> np.ndarray:
  """`a`, or a C-contiguous copy whose data starts on an `alignment`-byte boundary (what XLA:CPU
  needs to use a host buffer in place)."""
  if a.flags.c_contiguous and a.ctypes.data % alignment == 0:
    return a
  out = aligned_empty(a.shape, a.dtype, alignment)
  out[...] = a
  return out


def _global(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly multi-process sharded) arrays, identical on every process."""
  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)
  return jax.tree.map(get, tree)

