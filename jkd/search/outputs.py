"""What a search writes and prints: W/search.csv and W/search.json (a row per point), the chosen
point's runs as the workdir's results.json / runs.json / metrics.jsonl (what a plain run of that
point writes), the report's Searches section, and the console table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from jkd.engine import metrics as metrics_lib
from jkd.search import space as space_lib


def write_winner(workdir: str, history: list, chosen: int, summary: dict) -> None:
  """The chosen point's runs as a jkd workdir's outputs in `workdir` (results.json, runs.json,
  metrics.jsonl over every rung it trained in): what a plain run of that point writes, so a
  pipeline's report (`jkd.report`) reads a search stage as any other; results.json also holds
  the search's summary under `search`."""
  from jkd.engine import results as results_lib   # noqa: PLC0415
  records, res = [], None
  for rdir, alive, per in history:
    if chosen not in alive:
      break
    j = alive.index(chosen)
    mine = lambda i: j * per <= i < (j + 1) * per
    with open(os.path.join(rdir, "metrics.jsonl")) as f:
      records += [{**r, "run": r["run"] - j * per} for r in map(json.loads, f) if mine(r["run"])]
    with open(os.path.join(rdir, "results.json")) as f:
      res = json.load(f)
    with open(os.path.join(rdir, "runs.json")) as f:
      runs = [{**r, "run": r["run"] - j * per} for r in json.load(f) if mine(r["run"])]
  picked = [{**r, "run": r["run"] - j * per} for r in res["runs"] if mine(r["run"])]
  out = results_lib.build(picked, epochs_done=res["epochs_done"], experiment=res["experiment"],
                          selected_by=res["best_selected_by"])
  out["search"] = {k: summary[k] for k in ("chosen", "winner", "winner_test_accuracy",
                                           "run_epochs", "run_epochs_without_halving", "rungs")}
  metrics_lib.write_atomic(os.path.join(workdir, "metrics.jsonl"),
                           "".join(json.dumps(r) + "\n" for r in records))
  metrics_lib.write_atomic(os.path.join(workdir, "runs.json"), json.dumps(runs, indent=1))
  results_lib.write(workdir, out)


def markdown(workdir: str) -> str:
  """The report's section on every searched stage of a pipeline workdir ('' if none)."""
  out, figures = [], []
  for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
    path = os.path.join(workdir, name, "search.json")
    if not os.path.isfile(path):
      continue
    figures += [f"![{name} {f}]({name}/plots/{f}.png)" for f in ("search_keys", "search_rungs")
                if os.path.isfile(os.path.join(workdir, name, "plots", f + ".png"))]
    with open(path) as f:
      s = json.load(f)
    a = s["winner_test_accuracy"]
    w = ", ".join(f"{k}={v:.4g}" for k, v in s["winner"].items())
    out.append(f"| {name} | {len(s['points'])} | {w} | {_pm(a['final'])} | {_pm(a['best'])} | "
               f"{s['run_epochs']} / {s['run_epochs_without_halving']} |")
  if not out:
    return ""
  return "\n".join(["", "## Searches (chosen on validation accuracy; test never read)", "",
                    "Each searched stage's rows above are its chosen point's runs; every point is "
                    "in W/<stage>/search.csv. Test accuracy with the lab's ±.", "",
                    "| stage | points | chosen | final test acc | best-epoch test acc | "
                    "run-epochs (search / every point to the end) |", "|---|---|---|---|---|---|",
                    *out, *([""] + figures if figures else [])]) + "\n"


def _pm(acc: dict) -> str:
  """'80.88 ± 3.16': a mean accuracy with the lab's ±, in %."""
  return f"{100 * acc['mean']:.2f} ± {100 * acc['lab_pm']:.2f}"


def _key(point: dict) -> str:
  return " ".join(f"{k}={v:g}" for k, v in sorted(point.items()))   # as jkd.report keys a point


def summary(config, workdir: str, points: list, book: dict, chosen: int, seconds: float) -> dict:
  """search.json's content, from what `jkd.search.halving.run` booked while training."""
  from jkd import config as config_lib   # noqa: PLC0415
  from jkd.report import stats   # noqa: PLC0415
  winner = points[chosen]
  stops, sizes = space_lib.rungs(config), space_lib.waves(config.search)
  rdir, alive, per = book["history"][chosen][-1]   # the winner's last rung
  with open(os.path.join(rdir, "results.json")) as f:
    res = json.load(f)
  entry = next(e for e in res["summary"] if e["sweep"] == winner)
  acc = {w: {**entry[w]["accuracy"], "lab_pm": stats.lab_pm(res, _key(winner), w)}
         for w in ("final", "best")}
  wave = [w for w, n in enumerate(sizes) for _ in range(n)]
  epochs = book["epochs"]
  rows = [{"point": i, **points[i], "wave": wave[i], "epochs": int(epochs[i]),
           "pruned": bool(epochs[i] < stops[-1]), "val_accuracy": number(book["val"][i]),
           "test_accuracy": number(book["test"][i]), "chosen": i == chosen,
           "val_by_rung": book["rungs"][i]} for i in range(len(points))]
  return {"selected_by": "val", "keys": list(winner),
          "space": {d.key: d.kind for d in space_lib.dims(config)}, "rungs": stops,
          "eta": int(config.search.halving.eta) if len(stops) > 1 else None,
          "sampler": config.search.sampler, "waves": sizes, "points": rows, "chosen": chosen,
          "winner": winner, "winner_test_accuracy": acc, "run_epochs": int(book["spent"]),
          "run_epochs_without_halving": len(points) * len(config_lib.seeds(config))
                                        * book["folds"] * stops[-1],
          # where its runs' checkpoints are (`jkd.export.checkpointed`)
          "winner_runs": {"workdir": os.path.relpath(rdir, workdir),
                          "first": alive.index(chosen) * per, "count": per},
          "seconds": seconds}


def number(x: float) -> float | None:
  """A float for JSON: None for nan."""
  return None if math.isnan(x) else float(x)


def write(workdir: str, summary: dict) -> None:
  """search.csv (one row per point) and search.json, atomically."""
  keys = summary["keys"]
  cols = ["point", *keys, "wave", "epochs", "pruned", "val_accuracy", "test_accuracy", "chosen"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
  w.writeheader()
  for row in summary["points"]:
    w.writerow({c: row[c] for c in cols})
  metrics_lib.write_atomic(os.path.join(workdir, "search.csv"), buf.getvalue())
  metrics_lib.write_atomic(os.path.join(workdir, "search.json"), json.dumps(summary, indent=1))


def table(summary: dict) -> str:
  """The points by validation accuracy, then the winner's test accuracy and the compute spent."""
  keys = summary["keys"]
  lines = [" ".join([f"{'point':>5}", *(f"{k:>22}" for k in keys), f"{'epochs':>6}",
                     f"{'val acc':>8}", f"{'test acc':>8}"])]
  rows = sorted(summary["points"], key=lambda r: (-(r["val_accuracy"] or -1), r["point"]))
  pct = lambda x: "—" if x is None else f"{100 * x:.2f}"
  for r in rows:
    lines.append(" ".join([f"{r['point']:>5}", *(f"{r[k]:>22.6g}" for k in keys),
                           f"{r['epochs']:>6}", f"{pct(r['val_accuracy']):>8}",
                           f"{pct(r['test_accuracy']):>8}"])
                 + ("  <- chosen" if r["chosen"] else ""))
  a = summary["winner_test_accuracy"]
  w = " ".join(f"{k}={v:.6g}" for k, v in summary["winner"].items())
  lines.append(f"chosen on validation accuracy: point {summary['chosen']} ({w}); its test "
               f"accuracy final {_pm(a['final'])}, best-epoch {_pm(a['best'])} (lab ±)")
  lines.append(f"run-epochs spent: {summary['run_epochs']} (every point to the end: "
               f"{summary['run_epochs_without_halving']})")
  return "\n".join(lines)
