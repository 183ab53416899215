"""`workdir/results.json`: per-run final and best-epoch metrics, their summary, a readable table.

Metrics are fractions in [0, 1]. `final` is the last epoch. `best` is the epoch with the highest
selection accuracy: validation accuracy when a validation split exists (`best.selected_by: 'val'`),
otherwise test accuracy (`'test'`, the lab's optimistic protocol); its test metrics are reported.
The summary gives, per sweep point, the mean and the population std (ddof 0) over folds and seeds
of every metric, over the runs that did not fail.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jkd.engine.metrics import write_atomic

METRICS = ("accuracy", "macro_f1")


class Tracker:
  """Host-side record per run: confusions at the final and best epochs, failures."""

  def __init__(self, runs: int, k: int, val: bool):
    z = lambda: np.zeros((runs, k, k), np.int64)
    self.a = {"best_epoch": np.zeros(runs, np.int64), "failed_epoch": np.zeros(runs, np.int64),
              "final_test": z(), "best_test": z()}
    if val:
      self.a |= {"final_val": z(), "best_val": z()}

  def update(self, epoch: int, test: np.ndarray, val: np.ndarray | None, improved: np.ndarray,
             failed: np.ndarray) -> np.ndarray:
    """Record epoch `epoch` (1-based); returns the runs that failed during it."""
    newly = failed & (self.a["failed_epoch"] == 0)
    self.a["failed_epoch"][newly] = epoch
    self.a["final_test"] = test.astype(np.int64)
    self.a["best_test"][improved] = test[improved]
    self.a["best_epoch"][improved] = epoch
    if val is not None:
      self.a["final_val"] = val.astype(np.int64)
      self.a["best_val"][improved] = val[improved]
    return newly

  def to_json(self) -> dict:
    return {k: v.tolist() for k, v in self.a.items()}

  def load(self, meta: dict) -> None:
    self.a = {k: np.asarray(meta[k], np.int64) for k in self.a}


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  points: dict[str, list[dict]] = {}
  for r in runs:
    points.setdefault(json.dumps(r["sweep"], sort_keys=True), []).append(r)
  out = []
  for key, group in points.items():
    ok = [r for r in group if r["status"] == "ok"]
    entry = {"sweep": json.loads(key), "runs": len(group), "failed": len(group) - len(ok)}
    for which in ("final", "best"):
      entry[which] = {}
      for m in METRICS:
        v = np.array([r[which][m] for r in ok], np.float64)
        entry[which][m] = ({"mean": float(v.mean()), "std": float(v.std())} if len(v)
                           else {"mean": None, "std": None})
    out.append(entry)
  return out


def build(runs: list[dict[str, Any]], *, epochs_done: int, selected_by: str,
          experiment: dict[str, Any]) -> dict[str, Any]:
  return {"experiment": experiment, "epochs_done": epochs_done, "best_selected_by": selected_by,
          "std": "population (ddof=0) over folds and seeds", "runs": runs,
          "summary": summary(runs)}


def write(workdir: str, results: dict[str, Any]) -> None:
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=1))


def read(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist; train first (--mode=train)")
  with open(path) as f:
    return json.load(f)


def _pct(d: dict | None) -> str:
  if not d or d.get("mean") is None:
    return "—"
  return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f}"


def table(results: dict[str, Any]) -> str:
  """Per-run rows, then the summary per sweep point; accuracies in %."""
  sel = results["best_selected_by"]
  lines = [f"{'run':>4} {'fold':>4} {'test subjects':<16} {'seed':>6} {'sweep':<24} "
           f"{'final acc':>9} {'final F1':>8} {'best acc':>8} {'best F1':>8} {'@ep':>4}  status"]
  for r in results["runs"]:
    sweep = " ".join(f"{k}={v:g}" for k, v in r["sweep"].items())
    subj = ",".join(str(s) for s in r["test_subjects"])[:16]
    f, b = r["final"], r["best"]
    lines.append(f"{r['run']:>4} {r['fold']:>4} {subj:<16} {r['seed']:>6} {sweep:<24} "
                 f"{100 * f['accuracy']:>9.2f} {100 * f['macro_f1']:>8.2f} "
                 f"{100 * b['accuracy']:>8.2f} {100 * b['macro_f1']:>8.2f} {b['epoch']:>4}  "
                 f"{r['status']}{': ' + r['error'] if r.get('error') else ''}")
  lines.append("")
  lines.append(f"summary after {results['epochs_done']} epochs, mean ± std (%) over folds and "
               "seeds; "
               f"best epoch chosen by {sel} accuracy, test metrics shown")
  lines.append(f"{'sweep':<28} {'runs':>5} {'final acc':>15} {'final F1':>15} {'best acc':>15} "
               f"{'best F1':>15}")
  for s in results["summary"]:
    sweep = " ".join(f"{k}={v:g}" for k, v in s["sweep"].items()) or "-"
    runs = f"{s['runs'] - s['failed']}/{s['runs']}"
    lines.append(f"{sweep:<28} {runs:>5} {_pct(s['final']['accuracy']):>15} "
                 f"{_pct(s['final']['macro_f1']):>15} {_pct(s['best']['accuracy']):>15} "
                 f"{_pct(s['best']['macro_f1']):>15}")
  return "\n".join(lines)
