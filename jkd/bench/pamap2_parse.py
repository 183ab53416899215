"""PAMAP2 `.dat` parsing: jkd's parsers vs `np.loadtxt` on the same files, and the cached load.

    python -m jkd.bench pamap2-parse [--path=PAMAP2_Dataset/Protocol] [--rows=300000] [--files=9]
        [--workers=0] [--parser=auto|c|numpy|polars] [--no-loadtxt] [--repeats=1]

Without --path it writes `files` synthetic Protocol files of `rows` rows each (54 columns, the
real files' number formats, heart rate valid ~1 row in 11, activity runs including transient and
dropped ids, a few NaNs and exponents in the IMU columns) to a temp folder; the real nine files are
~2.9M rows, ~1.3 GB. Every timing starts with its files in the page cache (read just before; the
kernel of this project's VMs evicts pages unused for ~30 s). Times np.loadtxt over the files one
after another; then each parser (`auto`:
numpy, then polars when installed and c when built; else the one named) one file after another
(`serial`: wall and CPU seconds; polars uses every core inside a file, numpy and c one) and on
`workers` threads
(`parse_many`), each checked bit-identical to np.loadtxt; then `pamap2.load` with `--parser` into
an empty cache (parse + preprocess + write) and again (hash the files + read the cache). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

from jkd.data import pamap2, pamap2_parse


def write_synthetic(folder: str, files: int, rows: int, seed: int = 0) -> list[str]:
  """Protocol-like files subject101.dat ...; lines drawn from a pool of formatted IMU rows."""
  rng = np.random.default_rng(seed)
  pool_rows = 20_000
  imu = rng.standard_normal((pool_rows, 51)) * rng.choice([0.05, 1.0, 10.0, 40.0], 51)
  imu[rng.random(imu.shape) < 0.002] *= 1e-4  # %g writes these as 1.2e-05
  imu[rng.random(imu.shape) < 0.001] = np.nan
  pool = [" ".join("NaN" if v != v else "%g" % v for v in r) for r in imu]
  paths = []
  for f in range(files):
    runs = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 24], rows // 3000 + 1)
    act = np.repeat(runs, 3000)[:rows]
    hr = np.where(np.arange(rows) % 11 == 0, rng.integers(70, 190, rows), -1)
    lines = rng.integers(0, pool_rows, rows)
    path = os.path.join(folder, f"subject{101 + f}.dat")
    with open(path, "w") as out:
      out.write("\n".join(f"{5 + i / 100:.2f} {a} {'NaN' if h < 0 else h} {pool[j]}"
                          for i, (a, h, j) in enumerate(zip(act.tolist(), hr.tolist(),
                                                            lines.tolist()))) + "\n")
    paths.append(path)
  return paths


def _seconds(fn) -> tuple[float, object]:
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def _cpu_seconds(fn) -> tuple[float, float, object]:
  """(wall, CPU of this process, result): CPU time is the fairer ratio on a busy machine."""
  cpu = time.process_time()
  wall, out = _seconds(fn)
  return wall, time.process_time() - cpu, out


def _warm(paths: list[str]) -> None:
  """Read the files into the page cache, so that parsers are timed on parsing and not on the disk
  (on this project's VMs the kernel evicts pages unused for ~30 s)."""
  for p in paths:
    with open(p, "rb") as f:
      while f.read(1 << 24):
        pass


def _loadtxt(paths: list[str]) -> tuple[float, float, list[np.ndarray]]:
  """np.loadtxt of each file, each warmed just before its own timing: (wall, CPU, arrays)."""
  timed = []
  for p in paths:
    _warm([p])
    timed.append(_cpu_seconds(lambda: np.loadtxt(p)))
  return sum(t[0] for t in timed), sum(t[1] for t in timed), [t[2] for t in timed]


def _warm_then(paths: list[str], fn) -> tuple[float, float, object]:
  """`fn()` timed on warm files: (wall, CPU, result)."""
  _warm(paths)
  return _cpu_seconds(fn)


def _median(repeats: int, measure) -> tuple[float, float, object]:
  """`measure()` -> (wall, CPU, result), `repeats` times: (median wall, median CPU, last result)."""
  runs = [measure() for _ in range(repeats)]
  return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
          runs[-1][2])


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
  """Equal values, NaN at the same places, same sign of zero."""
  return all(x.shape == y.shape and np.array_equal(x, y, equal_nan=True)
             and np.array_equal(np.signbit(x), np.signbit(y)) for x, y in zip(a, b))


def main(argv: list[str]) -> int:
  ap = argparse.ArgumentParser(prog=argv[0], description=__doc__.split("\n")[0])
  ap.add_argument("--path", default="", help="PAMAP2_Dataset or Protocol folder (default: "
                  "synthetic files)")
  ap.add_argument("--rows", type=int, default=300_000, help="rows per synthetic file")
  ap.add_argument("--files", type=int, default=9, help="synthetic files")
  ap.add_argument("--workers", type=int, default=0, help="parser threads (0 = one per core)")
  ap.add_argument("--parser", default="auto", choices=pamap2_parse.PARSERS,
                  help="auto: time every installed parser and load with the default")
  ap.add_argument("--no-loadtxt", action="store_true", help="skip the np.loadtxt baseline")
  ap.add_argument("--repeats", type=int, default=1,
                  help="time every parse (np.loadtxt included) this often; report the median")
  args = ap.parse_args(argv[1:])
  have_polars = pamap2_parse.polars_module() is not None  # imported here, outside the timings
  have_c = pamap2_parse.c_module() is not None
  if args.parser == "auto":
    parsers = ["numpy"] + (["polars"] if have_polars else []) + (["c"] if have_c else [])
  else:
    parsers = [args.parser]
  with tempfile.TemporaryDirectory() as tmp:
    if args.path:
      _, folder = pamap2.resolve(args.path)
      paths = [os.path.join(folder, f"subject{s}.dat") for s in pamap2.SUBJECTS]
      subjects = pamap2.SUBJECTS
    else:
      folder = tmp
      paths = write_synthetic(tmp, args.files, args.rows)
      subjects = tuple(range(101, 101 + args.files))
    size = sum(os.path.getsize(p) for p in paths)
    workers = args.workers or min(len(paths), os.cpu_count() or 1)
    result = {"bench": "pamap2-parse", "files": len(paths), "mb": round(size / 1e6, 1),
              "synthetic": not args.path, "cpus": os.cpu_count(), "workers": workers,
              "parser": args.parser}
    reference = None
    if not args.no_loadtxt:
      loadtxt_s, loadtxt_cpu, reference = _median(args.repeats, lambda: _loadtxt(paths))
      result.update({"rows": sum(len(a) for a in reference), "loadtxt_s": round(loadtxt_s, 3),
                     "loadtxt_cpu_s": round(loadtxt_cpu, 3)})
    for name in parsers:
      serial_s, serial_cpu, ours = _median(args.repeats, lambda: _warm_then(
          paths, lambda: [pamap2_parse.parse_dat(p, parser=name) for p in paths]))
      threads_s, _, _ = _median(args.repeats, lambda: _warm_then(
          paths, lambda: pamap2_parse.parse_many(paths, workers=workers, parser=name)))
      result.update({"rows": sum(len(a) for a in ours), f"{name}_serial_s": round(serial_s, 3),
                     f"{name}_serial_cpu_s": round(serial_cpu, 3),
                     f"{name}_threads_s": round(threads_s, 3),
                     f"{name}_serial_mb_s": round(size / 1e6 / serial_s, 1)})
      if reference is None:  # --no-loadtxt: the first parser is the reference
        reference, result["reference"] = ours, name
        continue
      result[f"{name}_identical"] = _same(ours, reference)
      if not args.no_loadtxt:
        result.update({f"{name}_speedup_serial": round(loadtxt_s / serial_s, 2),
                       f"{name}_speedup_threads": round(loadtxt_s / threads_s, 2),
                       f"{name}_speedup_cpu": round(loadtxt_cpu / serial_cpu, 2)})
      del ours
    del reference
    cfg = pamap2.default_config()
    cfg.update({"path": folder, "subjects": subjects, "cache_dir": os.path.join(tmp, "cache"),
                "workers": workers, "parser": args.parser})
    _warm(paths)
    cold_s, _ = _seconds(lambda: pamap2.load(cfg))
    cached_s, ds = _seconds(lambda: pamap2.load(cfg))
    hash_s, _ = _seconds(lambda: [pamap2._file_digest(p) for p in paths])
    result.update({"load_cold_s": round(cold_s, 3), "load_cached_s": round(cached_s, 3),
                   "hash_serial_s": round(hash_s, 3),
                   "preprocessed_rows": sum(len(r.y) for r in ds.recordings)})
  print(json.dumps(result))
  return 0
