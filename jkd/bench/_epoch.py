"""What the train-step and kd-step benchmarks share: device placement, synthetic runs, timing.

Both time the real epoch program (`jkd.engine.train.make_train_epoch`) on random windows, with runs
spread over devices as `jkd.main` does.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkd.engine import parallel
from jkd.engine import runs as runs_lib
from jkd.engine import state as state_lib
from jkd.engine import train as train_lib


def add_devices_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--devices", type=int, default=0,
                 help="CPU devices: 0 = one per run (as jkd.main), N = N devices")


def set_devices(a: argparse.Namespace) -> None:
  """Before the backend starts: `--devices` CPU devices, or one per run."""
  if a.devices:
    jax.config.update("jax_num_cpu_devices", a.devices)
  else:
    parallel.use_cpu_devices(a.runs)


def synthetic(config, a: argparse.Namespace, m) -> tuple[train_lib.Data, train_lib.Runs]:
  """`batch * steps` random windows and labels (replicated over mesh `m`) and the runs' inputs
  (host arrays: every run trains on all windows, identity normalisation, seeds 1234 + i)."""
  n = a.batch * a.steps
  rng = np.random.default_rng(0)
  data = parallel.replicate(train_lib.Data(
      rng.normal(size=(n, a.length, a.channels)).astype(np.float32),
      rng.integers(0, a.classes, n).astype(np.int32)), m)
  runs = [runs_lib.Run(i, 0, 1234 + i, {}) for i in range(a.runs)]
  inputs = train_lib.Runs(key=np.asarray(state_lib.init_keys(np.array([r.seed for r in runs]))),
                          train=np.tile(np.arange(n, dtype=np.int32), (a.runs, 1)),
                          train_count=np.full((a.runs,), n, np.int32),
                          mean=np.zeros((a.runs, a.channels), np.float32),
                          std=np.ones((a.runs, a.channels), np.float32),
                          hp=runs_lib.hparams(config, runs))
  return data, inputs


def time_epochs(epoch_fn: Callable, state: Any, args: tuple, a: argparse.Namespace,
                references: dict[str, Any] | None = None) -> dict[str, Any]:
  """Compile `epoch_fn(state, *args)` and time `a.repeats` epochs after a warm-up; the None in
  `args` stands for the epoch number. Returns the timings and the last epoch's loss terms.

  `references` maps a loop name to the `jkd.bench.Reference` that runs it: one epoch of each
  follows each of jkd's (warm-up included), so they alternate on the machine; `ref_s` holds
  their epoch times."""
  references = references or {}
  at = lambda e: tuple(jnp.int32(e) if v is None else v for v in args)
  t0 = time.perf_counter()
  compiled = epoch_fn.lower(state, *at(0)).compile()
  compile_s = time.perf_counter() - t0
  times, ref_s = [], {m: [] for m in references}
  for e in range(a.repeats + 1):
    t0 = time.perf_counter()
    state, terms = compiled(state, *at(e))
    jax.block_until_ready(terms)
    if e:                                      # the first call also transfers and warms up
      times.append(time.perf_counter() - t0)
    for m, reference in references.items():
      seconds = reference.seconds(m)
      if e:
        ref_s[m].append(seconds)
  epoch_s = statistics.median(times)
  return {"compile_s": round(compile_s, 2), "ms_per_step": round(1e3 * epoch_s / a.steps, 2),
          "samples_per_s": round(a.runs * a.batch * a.steps / epoch_s, 1), "terms": terms,
          "epoch_s": times, "ref_s": ref_s}


def versus(a: argparse.Namespace, epoch_s: list[float], ref_s: list[float]
           ) -> tuple[dict[str, Any], float, list[float]]:
  """The reference's median speed, and jkd's speed-up over it: the ratio of the medians and
  of each alternating pair of epochs."""
  med = statistics.median(ref_s)
  speed = {"ms_per_step": round(1e3 * med / a.steps, 2),
           "samples_per_s": round(a.runs * a.batch * a.steps / med, 1)}
  return (speed, round(med / statistics.median(epoch_s), 2),
          [round(r / j, 2) for j, r in zip(epoch_s, ref_s)])
