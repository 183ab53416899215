"""Benchmark an epoch run in chunks of steps (what jkd.main's progress lines need) against the same
epoch in one call, on synthetic data.

  python -m jkd.bench epoch-chunks --model=wrn16_1 --runs=4 --batch=64 --length=100 \
      --channels=6 --classes=7 --steps=60 --chunk=6 --repeats=7 [--devices=0]

`jkd.engine.train.EpochProgram` runs steps lo..hi-1 of an epoch in one compiled program for any chunk,
and `jkd.main` cuts each epoch into chunks of about 5 s (`jkd.engine.train.Pacer`), syncing the host
after each. Here the same program trains two copies of the same runs, one epoch in one call and
one epoch in `steps / chunk` calls, alternating for `repeats` rounds after a warm-up. Prints one
JSON line: `one_s` and `chunked_s` (median epochs), `ratio` = chunked / one (1.0 = no cost),
`ratio_pairs` (each round), `per_chunk_ms` (the median extra time per extra call),
`ratio_of_fastest` (the fastest chunked epoch / the fastest in one call: on a shared machine the
least disturbed of each) and `bit_identical` (the two copies' states after the last round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jkd.models
from jkd.bench import _epoch
from jkd import config as config_lib
from jkd import distill
from jkd.engine import parallel
from jkd.engine import train as train_lib


class _Every:
  """A pacer handing out chunks of `n` steps."""

  def __init__(self, n: int):
    self.n = n

  def size(self, remaining: int) -> int:
    return min(self.n, remaining)

  def record(self, steps: int, seconds: float) -> None:
    pass


def bench(a: argparse.Namespace) -> dict[str, Any]:
  config = config_lib.base()
  config.data.name = "synthetic"
  config.train.batch_size = a.batch
  config.optim.schedule = "constant"
  m = parallel.mesh(a.runs)
  data, inputs = _epoch.synthetic(config, a, m)
  model = jkd.models.create(a.model, num_classes=a.classes)
  step = train_lib.Step(model, config, distill.make_objective(config), a.classes)
  program = train_lib.make_train_epoch(step, a.steps, mesh=m)
  fresh = lambda: parallel.shard_runs(train_lib.init_state(
      model, config, inputs.key, jnp.zeros((1, a.length, a.channels)), inputs.hp), m)
  runs = parallel.shard_runs(inputs, m)
  states = {"one": fresh(), "chunked": fresh()}
  pacers = {"one": None, "chunked": _Every(a.chunk)}
  times: dict[str, list[float]] = {"one": [], "chunked": []}
  for e in range(a.repeats + 1):
    for kind in ("one", "chunked"):
      t0 = time.perf_counter()
      states[kind], terms = program.run(states[kind], data, runs, e, pacer=pacers[kind])
      jax.block_until_ready(terms)
      if e:                                   # the first round compiles and warms up
        times[kind].append(time.perf_counter() - t0)
  one, chunked = statistics.median(times["one"]), statistics.median(times["chunked"])
  calls = -(-a.steps // a.chunk)
  same = all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
             zip(jax.tree.leaves(states["one"]), jax.tree.leaves(states["chunked"])))
  return {"devices": m.size, "calls_per_epoch": calls, "one_s": round(one, 4),
          "chunked_s": round(chunked, 4), "ratio": round(chunked / one, 4),
          "ratio_pairs": [round(c / o, 3) for o, c in zip(times["one"], times["chunked"])],
          "per_chunk_ms": round(1e3 * (chunked - one) / max(calls - 1, 1), 2),
          "ratio_of_fastest": round(min(times["chunked"]) / min(times["one"]), 4),
          "bit_identical": same}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--model", default="wrn16_1")
  p.add_argument("--runs", type=int, default=4)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--length", type=int, default=100)
  p.add_argument("--channels", type=int, default=6)
  p.add_argument("--classes", type=int, default=7)
  p.add_argument("--steps", type=int, default=60, help="steps per epoch")
  p.add_argument("--chunk", type=int, default=6, help="steps per call of the chunked epoch")
  p.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
  _epoch.add_devices_flag(p)
  a = p.parse_args(argv[1:])
  _epoch.set_devices(a)
  print(json.dumps({"bench": "epoch-chunks", **vars(a), **bench(a),
                    "backend": jax.default_backend()}))
  return 0
