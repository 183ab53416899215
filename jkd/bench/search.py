"""`python -m jkd.bench search`: configs/demo_search.py's KD stage tuned three ways on the embedded
smartwatch data, the teachers (and the scratch student) trained once:

  python -m jkd.bench search [--workdir=DIR] [--points=27] [--waves=3] [--rungs=1,2] [--eta=3]

(a) the search: `points` points of the lab's λ, α, β and T drawn by TPE in `waves` waves, with
    successive halving (rungs after epochs `rungs`, the best 1/eta continuing);
(b) the same points, every one trained to the end (one program: the points as a zipped sweep);
(c) a grid of about as many points over the same keys, T fixed at the lab's 4: λ in
    {0.5, 0.7, 0.9} x α in {0.2, 0.5, 0.8} x β in {20, 100, 500}, to the end.

Each variant chooses on validation accuracy (mean over folds of the last epoch) among the points
trained to the end; the winner's test accuracy is reported, never read. Prints one line per
variant, whether (a) came within 0.5 points of (b)'s best validation accuracy at <= 40 % of its
run-epochs, then one JSON line. The variants share one process (one device split); (a)'s wall
time is the search's own (teachers excluded), (b)'s and (c)'s their one program each.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ml_collections as mc

GRID = {"lam": (0.5, 0.7, 0.9), "alpha": (0.2, 0.5, 0.8), "beta": (20.0, 100.0, 500.0),
        "temperature": 4.0}


def _demo_search() -> mc.ConfigDict:
  from jkd import config as config_lib
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "demo_search.py")
  if not os.path.isfile(path):
    raise SystemExit(f"jkd.bench search reads {path}: run it from a checkout of jkd")
  return config_lib.load_file(path)


def _chosen(res: dict, points: list) -> dict:
  """Validation choice among `points` trained to the end (`res`: their program's results)."""
  from jkd.search import halving
  per = len(res["runs"]) // len(points)
  val = halving.per_point(res, len(points), per, "val")
  test = halving.per_point(res, len(points), per, "test")
  i = halving.select(val, list(range(len(points))))
  return {"points": len(points), "best_val_accuracy": float(val[i]),
          "winner_test_accuracy": float(test[i]), "winner": points[i],
          "run_epochs": len(res["runs"]) * res["epochs_done"]}


def _to_the_end(kd: mc.ConfigDict, points: list, workdir: str, runs_per_fold: int) -> dict:
  from jkd.engine import loop
  from jkd.search import halving
  t0 = time.time()
  res = loop.train(halving.rung_config(kd, points), workdir, runs_per_fold=runs_per_fold)
  return {**_chosen(res, points), "seconds": time.time() - t0}


def grid_points() -> list[dict[str, float]]:
  out = []
  for lam in GRID["lam"]:
    for alpha in GRID["alpha"]:
      for beta in GRID["beta"]:
        out.append({"loss.ce.weight": 1 - lam, "loss.kd.weight": lam,
                    "loss.kd.temperature": GRID["temperature"], "loss.alpha": alpha,
                    "loss.sp.weight": beta})
  return out


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(prog=argv[0], description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="")
  p.add_argument("--points", type=int, default=27)
  p.add_argument("--waves", type=int, default=3)
  p.add_argument("--rungs", default="1,2", help="epochs after which the worst points stop")
  p.add_argument("--eta", type=int, default=3)
  args = p.parse_args(argv[1:])
  from jkd import pipeline, preflight
  root = args.workdir or tempfile.mkdtemp(prefix="jkd_bench_search_")
  c = _demo_search()
  s = c.stages.student_kd.search
  s.points, s.waves, s.halving.eta = args.points, args.waves, args.eta
  s.halving.rungs = tuple(int(r) for r in args.rungs.split(",") if r)
  w = os.path.join(root, "pipeline")
  preflight.run(c, w)
  pipeline.run(c, w, log=lambda msg: None)
  with open(os.path.join(w, "student_kd", "search.json")) as f:
    a = json.load(f)
  win = a["points"][a["chosen"]]
  out = {"halving": {"points": len(a["points"]), "best_val_accuracy": win["val_accuracy"],
                     "winner_test_accuracy": a["winner_test_accuracy"]["final"]["mean"],
                     "winner": a["winner"], "run_epochs": a["run_epochs"],
                     "seconds": a["seconds"]}}
  kd = pipeline.stage_config(c, "student_kd", w)
  points = [{k: r[k] for k in a["keys"]} for r in a["points"]]
  rpf = max(len(points), len(grid_points()))
  out["no_halving"] = _to_the_end(kd, points, os.path.join(root, "no_halving"), rpf)
  out["grid"] = _to_the_end(kd, grid_points(), os.path.join(root, "grid"), rpf)
  for k, v in out.items():
    print(f"{k:<11} {v['points']:>3} points  best val {100 * v['best_val_accuracy']:.2f}  winner's "
          f"test {100 * v['winner_test_accuracy']:.2f}  {v['run_epochs']:>4} run-epochs  "
          f"{v['seconds']:.0f}s", flush=True)
  gap = 100 * (out["no_halving"]["best_val_accuracy"] - out["halving"]["best_val_accuracy"])
  share = out["halving"]["run_epochs"] / out["no_halving"]["run_epochs"]
  print(f"halving: {gap:+.2f} points below the same points' best val accuracy (goal <= 0.5) at "
        f"{100 * share:.0f} % of their run-epochs (goal <= 40 %): "
        f"{'met' if gap <= 0.5 and share <= 0.4 else 'NOT met'}")
  print(json.dumps({"bench": "search", "workdir": root, **vars(args), **out,
                    "gap_points": gap, "run_epoch_share": share}, default=float))
  return 0


