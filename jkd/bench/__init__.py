"""Benchmarks: `python -m jkd.bench <name> [--flags]`, each printing one JSON line of numbers.

Each benchmark lives in `jkd/bench/<name with - as _>.py` and exposes `main(argv)`.
"""

import concurrent.futures
import multiprocessing


def isolated(fn, *args):
  """`fn(*args)` in a fresh spawned process (for reference implementations, e.g. PyTorch, whose
  timings must not share a process with XLA's thread pool)."""
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    return pool.submit(fn, *args).result()
