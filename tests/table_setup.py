"""A hand-made table workdir: results.json, metrics.jsonl, confusion.npz of known numbers.

`make(root, columns, stages, folds, trials)` writes W/table.json and per column W/<col>/ with
stages.json, classes.json, config.json and per stage config.json (a KD stage's teachers),
results.json (best-epoch accuracy `acc(col, stage, point, fold, trial)`), metrics.jsonl and
confusion.npz, as a trained table would leave them; no training, no jax.
"""

from __future__ import annotations

import json
import os

import numpy as np

CLASSES = ["rope jumping", "lying", "sitting", "standing", "walking", "running", "cycling"]
WEIGHTS = ((.2, .2, .6), (.2, .3, .5), (.3, .2, .5), (.3, .3, .4))

# (stage, number of teachers or 0, sweep points): the 21 stages of jkd.pipeline.tables, 30 rows.
STAGES = [("teacher_signal", 0, 1), ("teacher_gaf", 0, 1), ("teacher_pi", 0, 1),
          ("student_scratch", 0, 1), ("kd_signal", 1, 1), ("kd_gaf", 1, 1), ("kd_pi", 1, 1),
          ("dcd", 1, 1), ("projection", 1, 1), ("pi_signal", 2, 1), ("pi_signal_ann", 2, 1),
          ("pi_signal_ann_sp", 2, 1), ("gaf_signal", 2, 1), ("gaf_signal_ann", 2, 1),
          ("gaf_signal_ann_sp", 2, 1), ("three_ebkd", 3, 1), ("three_camkd", 3, 1),
          ("three_mtkd_rl", 3, 1), ("three", 3, 4), ("three_ann", 3, 4), ("three_ann_sp", 3, 4)]


def _points(n: int) -> list[dict]:
  if n == 1:
    return [{}]
  return [{f"teachers.{t}.weight": w[i] for i, t in enumerate(("gaf", "pi", "signal"))}
          for w in WEIGHTS[:n]]


def default_acc(col: int, stage: str, point: int, fold: int, trial: int) -> float:
  rng = np.random.default_rng(abs(hash((col, stage, point, fold, trial))) % 2**32)
  base = {"teacher": 0.85, "student_scratch": 0.80}.get(stage.split("_")[0], 0.82)
  return float(np.clip(base + 0.01 * point + 0.005 * col + 0.02 * rng.standard_normal(), 0, 1))


def make(root, columns=("WRN16-1", "WRN16-3", "WRN28-1", "WRN28-3"), stages=STAGES, folds=3,
         trials=2, acc=default_acc, epochs=4, shared=("student_scratch",)) -> str:
  root = str(root)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "table.json"), "w") as f:
    json.dump({"columns": [{"key": c, "label": c, "dir": c, "overrides": {"k": c}}
                           for c in columns], "shared": {}}, f)
  for ci, col in enumerate(columns):
    d = os.path.join(root, col)
    os.makedirs(d, exist_ok=True)
    json.dump([s for s, _, _ in stages], open(os.path.join(d, "stages.json"), "w"))
    json.dump(CLASSES, open(os.path.join(d, "classes.json"), "w"))
    json.dump({"data": {"name": "pamap2"}}, open(os.path.join(d, "config.json"), "w"))
    for name, nt, npoints in stages:
      sd = os.path.join(d, name)
      os.makedirs(sd, exist_ok=True)
      cfg = {"data": {"name": "pamap2"}}
      if nt:
        cfg["distill"] = {"teachers": ["signal", "gaf", "pi"][:nt]}
      json.dump(cfg, open(os.path.join(sd, "config.json"), "w"))
      runs, lines, i = [], [], 0
      for p, point in enumerate(_points(npoints)):
        for t in range(trials):
          for fold in range(folds):
            a = acc(ci, name, p, fold, t)
            runs.append({"run": i, "fold": fold, "test_subjects": [fold + 1], "seed": 1234 + t,
                         "sweep": point, "status": "ok",
                         "final": {"accuracy": a - 0.01, "macro_f1": a - 0.05},
                         "best": {"accuracy": a, "macro_f1": a - 0.04, "epoch": epochs - 1}})
            for e in range(epochs):
              lines.append(json.dumps({"run": i, "epoch": e, "test": {
                  "accuracy": a * (0.6 + 0.4 * e / max(epochs - 1, 1)), "loss": 1.0}}))
            i += 1
      summary = []
      for point in _points(npoints):
        ok = [r for r in runs if r["sweep"] == point]
        entry = {"sweep": point, "runs": len(ok), "failed": 0}
        for which in ("final", "best"):
          entry[which] = {m: {"mean": float(np.mean([r[which][m] for r in ok])),
                              "std": float(np.std([r[which][m] for r in ok]))}
                          for m in ("accuracy", "macro_f1")}
        summary.append(entry)
      res = {"experiment": {"data": "pamap2", "model": "wrn16_1", "ndim": 1, "epochs": epochs,
                            "num_classes": len(CLASSES)},
             "epochs_done": epochs, "best_selected_by": "test", "runs": runs, "summary": summary,
             "provenance": {"jkd": "0.1.0", "packages": {"jax": "0.0"}, "python": "3",
                            "devices": None, "processor": "test cpu", "xla": {"XLA_FLAGS": ""}}}
      json.dump(res, open(os.path.join(sd, "results.json"), "w"))
      open(os.path.join(sd, "metrics.jsonl"), "w").write("\n".join(lines) + "\n")
      conf = np.random.default_rng(ci).integers(0, 5, (len(runs), 7, 7)) + 40 * np.eye(7, dtype=int)
      np.savez(os.path.join(sd, "confusion.npz"), final_test=conf)
  return root
