"""Benchmarks: `python -m jkd.bench <name> [--flags]`, each printing one JSON line of numbers.

Each benchmark lives in `jkd/bench/<name with - as _>.py` and exposes `main(argv)`.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import traceback
from typing import Any, Callable


def median_ms(fn: Callable[[], object], repeats: int) -> float:
  """Median milliseconds of `repeats` calls of `fn` (its result waited for), after one warm-up."""
  import jax
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


class Reference:
  """A reference implementation (e.g. PyTorch) in its own spawned process, timed on demand.

  `factory(*args)` runs in that process and returns `(loops, info)`: named callables that each
  run one epoch (and wait for it), and a JSON-able description. `seconds(name)` times one call
  of `loops[name]` there, so a benchmark can alternate the reference's epochs with jkd's and both
  see the same machine. Its own process, because PyTorch's eager loop was measured up to 50x
  slower when it shares one with XLA's thread pool, which would flatter jkd.
  """

  def __init__(self, factory: Callable[..., tuple[dict[str, Callable[[], None]], dict]],
               *args: Any):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_serve, args=(child, factory, args), daemon=True)
    self._proc.start()
    self.info = self._receive()

  def seconds(self, name: str) -> float:
    self._conn.send(name)
    return self._receive()

  def close(self) -> None:
    self._conn.send(None)
    self._proc.join(timeout=30)

  def _receive(self) -> Any:
    status, value = self._conn.recv()
    if status != "ok":
      self._proc.join(timeout=30)
      raise RuntimeError(f"benchmark reference process failed:\n{value}")
    return value


def _serve(conn, factory, args) -> None:
  try:
    loops, info = factory(*args)
    conn.send(("ok", info))
    while (name := conn.recv()) is not None:
      t0 = time.perf_counter()
      loops[name]()
      conn.send(("ok", time.perf_counter() - t0))
  except Exception:                                   # report it to the parent, then end
    conn.send(("error", traceback.format_exc()))
