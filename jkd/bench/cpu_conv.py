"""The AVX-512 convolution kernel (`jkd.models.cpu_conv`) against XLA:CPU's, layer by layer.

  python -m jkd.bench cpu-conv [--batch=128] [--loop=10] [--repeats=5] [--threads=1]

Times the forward convolution of each WRN16-1 layer shape the pipeline runs (the GAF image
teacher's 3 x 3 layers at 64 x 64, 32 x 32, 16 x 16, and the 1-D layers on 100-sample windows),
both jitted, on one device: `--loop` convolutions in a `lax.fori_loop`, as inside the epoch's
`lax.scan`, so that XLA's buffers are reused (one convolution per call would time mostly the
kernel's page faults on a fresh 33 MB output: 42 against 32 ms per 64 x 64 layer).
`--threads=1` (default) pins the process to one core, as when each of 9 runs has its own CPU
device on a 2-core machine (`jkd.main`), and runs the kernel on one thread; `--threads=0` leaves
both their defaults (XLA's thread pool; the kernel on `cpu_conv.threads()` threads).
Prints one JSON line: per layer `xla_ms`, `kernel_ms` (medians per convolution), `speedup`,
`max_rel_err`, and the 2-D teacher's layers in WRN16-1 proportions (`teacher_2d`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# (name, spatial size, in, out, stride, count in a WRN16-1)
LAYERS = [("2d_64x64_16-16", (64, 64), 16, 16, 1, 4), ("2d_64x64_16-32_s2", (64, 64), 16, 32, 2, 1),
          ("2d_32x32_32-32", (32, 32), 32, 32, 1, 3), ("2d_32x32_32-64_s2", (32, 32), 32, 64, 2, 1),
          ("2d_16x16_64-64", (16, 16), 64, 64, 1, 3), ("1d_100_16-16", (100,), 16, 16, 1, 4),
          ("1d_50_32-32", (50,), 32, 32, 1, 3), ("1d_25_64-64", (25,), 64, 64, 1, 3)]


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--loop", type=int, default=10, help="convolutions per timed call (fori_loop)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--threads", type=int, default=1, choices=(0, 1))
  a = p.parse_args(argv[1:])
  if a.threads == 1:                       # before XLA starts its threads
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  import jax
  import numpy as np
  from jkd.models import cpu_conv

  if not cpu_conv.available():
    print(json.dumps({"bench": "cpu-conv", "error": "the AVX-512 kernel is not available here"}))
    return 1
  rng = np.random.default_rng(0)
  result, totals = {}, {"xla": 0.0, "kernel": 0.0}
  for name, size, cin, cout, stride, count in LAYERS:
    nd = len(size)
    x = jax.numpy.asarray(rng.normal(size=(a.batch, *size, cin)).astype(np.float32))
    k = jax.numpy.asarray(rng.normal(size=(*(3,) * nd, cin, cout)).astype(np.float32))
    spec = ("NHC", "HIO", "NHC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
    strides, padding = (stride,) * nd, [(1, 1)] * nd
    fns = {"xla": lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding,
                                                             dimension_numbers=spec),
           "kernel": lambda x, k: cpu_conv.conv(x, k, strides, padding, a.threads or None)}
    row, outs = {}, {}
    for impl, f in fns.items():
      def loop(x, k, f=f):                   # each convolution depends on the last: not hoisted
        y = f(x, k)
        body = lambda i, y: f(x, k + 0 * y.ravel()[0])
        return jax.lax.fori_loop(1, a.loop, body, y)
      compiled = jax.jit(loop).lower(x, k).compile()
      outs[impl] = np.asarray(compiled(x, k))
      times = []
      for _ in range(a.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(x, k))
        times.append((time.perf_counter() - t0) / a.loop)
      row[f"{impl}_ms"] = round(1e3 * statistics.median(times), 2)
      if nd == 2:
        totals[impl] += count * statistics.median(times)
    row["speedup"] = round(row["xla_ms"] / row["kernel_ms"], 2)
    row["max_rel_err"] = float(np.max(np.abs(outs["kernel"] - outs["xla"]))
                               / np.max(np.abs(outs["xla"])))
    result[name] = row
  result["teacher_2d"] = {"xla_ms": round(1e3 * totals["xla"], 1),
                          "kernel_ms": round(1e3 * totals["kernel"], 1),
                          "speedup": round(totals["xla"] / totals["kernel"], 2)}
  print(json.dumps({"bench": "cpu-conv", **vars(a), **result, "backend": jax.default_backend()}))
  return 0
