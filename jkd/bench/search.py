"""`python -m jkd.bench search`: a search with successive halving against the same points trained
to the end and against a grid of about as many points, on the embedded smartwatch data.

  python -m jkd.bench search [--workdir=DIR] [--points=9] [--epochs=4] [--eta=3] [--folds=3]

Space: optim.lr log-uniform in [0.005, 0.2] x optim.momentum uniform in [0.5, 0.95] (a WRN10-1
student from scratch, cosine schedule, one validation subject per fold). (a) `points` random
points with halving (rungs after epoch 1, then the best 1/eta to the end), (b) the same points
without halving, (c) a grid of round(sqrt(points))^2 points (lr geometric, momentum linear).
Every variant chooses on validation accuracy; the winner's test accuracy is reported. Prints one
line per variant, then one JSON line: best val accuracy, the winner's test accuracy, run-epochs
and wall seconds per variant. The three share one process (one device split).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np


def _config(points: int, epochs: int, folds: int):
  import jkd.data
  from jkd import config as config_lib
  from jkd import search
  c = config_lib.base(jkd.data.default_config("watch"))
  c.data.step = 100
  c.data.num_folds = folds
  c.data.num_val_subjects = 1
  c.model.name = "wrn10_1"
  c.train.epochs = epochs
  c.train.batch_size = 64
  c.train.checkpoint_every = epochs
  c.optim.schedule = "cosine"
  c.search = search.default_config(points=points, sampler="random", seed=0)
  c.search.space = {"optim": {"lr": ("log", 0.005, 0.2), "momentum": ("uniform", 0.5, 0.95)}}
  return c


def _grid(args, root: str, log) -> dict:
  from jkd import config as config_lib
  from jkd import preflight
  from jkd.engine import loop
  from jkd.search import halving
  n = max(2, round(math.sqrt(args.points)))
  c = _config(args.points, args.epochs, args.folds)
  del c.search
  c.sweep = {"optim": {"lr": tuple(float(v) for v in np.geomspace(0.005, 0.2, n)),
                       "momentum": tuple(float(v) for v in np.linspace(0.5, 0.95, n))}}
  w = os.path.join(root, "grid")
  preflight.run(c, w)
  t0 = time.time()
  res = loop.train(c, w, runs_per_fold=args.points)
  points = config_lib.sweep_points(c)
  per = len(res["runs"]) // len(points)
  val = halving.per_point(res, len(points), per, "val")
  test = halving.per_point(res, len(points), per, "test")
  i = halving.select(val, list(range(len(points))))
  return {"points": len(points), "best_val_accuracy": float(val[i]),
          "winner_test_accuracy": float(test[i]), "winner": points[i],
          "run_epochs": len(res["runs"]) * args.epochs, "seconds": time.time() - t0}


def _search(args, root: str, name: str, rungs: tuple) -> dict:
  from jkd import preflight, search
  c = _config(args.points, args.epochs, args.folds)
  c.search.halving.rungs = rungs
  c.search.halving.eta = args.eta
  w = os.path.join(root, name)
  preflight.run(c, w)
  t0 = time.time()
  s = search.run(c, w, runs_per_fold=args.points)
  win = [p for p in s["points"] if p["chosen"]][0]
  return {"points": len(s["points"]), "best_val_accuracy": win["val_accuracy"],
          "winner_test_accuracy": s["winner_test_accuracy"]["final"]["mean"],
          "winner": s["winner"], "run_epochs": s["run_epochs"], "seconds": time.time() - t0}


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="")
  p.add_argument("--points", type=int, default=9)
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--eta", type=int, default=3)
  p.add_argument("--folds", type=int, default=3)
  args = p.parse_args(argv[1:])
  root = args.workdir or tempfile.mkdtemp(prefix="jkd_bench_search_")
  quiet = lambda msg: None
  out = {"halving": _search(args, root, "halving", (1,)),
         "no_halving": _search(args, root, "no_halving", ()),
         "grid": _grid(args, root, quiet)}
  for k, v in out.items():
    print(f"{k:<11} {v['points']:>3} points  best val {100 * v['best_val_accuracy']:.2f}  winner's "
          f"test {100 * v['winner_test_accuracy']:.2f}  {v['run_epochs']:>4} run-epochs  "
          f"{v['seconds']:.0f}s", flush=True)
  print(json.dumps({"bench": "search", "workdir": root, **vars(args), **out}))
  return 0
