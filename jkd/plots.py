"""Figures of a pipeline workdir (matplotlib, the optional `plot` extra): W/plots/*.png.

* `curves.png`: test accuracy per epoch of every stage, mean ± std band over runs (metrics.jsonl);
* `confusion_<stage>.png`: final-epoch test confusion summed over runs, rows normalised;
* `folds.png`: final and best-epoch accuracy per fold (mean over trials), one bar per stage.

`write` returns the files made, or [] when matplotlib is not installed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _curves(workdir: str, stages: dict) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  out = {}
  for name in stages:
    path = os.path.join(workdir, name, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    by_epoch: dict[int, list[float]] = {}
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          break
        if not r.get("failed"):
          by_epoch.setdefault(r["epoch"], []).append(r["test"]["accuracy"])
    if by_epoch:
      e = np.array(sorted(by_epoch))
      v = [np.array(by_epoch[i]) for i in e]
      out[name] = (e, np.array([a.mean() for a in v]), np.array([a.std() for a in v]))
  return out


def write(workdir: str, full: dict[str, Any]) -> list[str]:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return []
  from jkd import report
  stages = full["stages"]
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  made = []

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, (e, m, s) in _curves(workdir, stages).items():
    ax.plot(e, 100 * m, label=name)
    ax.fill_between(e, 100 * (m - s), 100 * (m + s), alpha=0.2)
  ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="learning curves (mean ± std over runs)")
  ax.legend()
  made.append(_save(fig, os.path.join(out_dir, "curves.png"), plt))

  for name in stages:
    path = os.path.join(workdir, name, "confusion.npz")
    if not os.path.exists(path):
      continue
    with np.load(path) as z:
      conf = z["final_test"].sum(0).astype(np.float64)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="true", title=f"{name}: final-epoch test confusion")
    fig.colorbar(im, ax=ax)
    made.append(_save(fig, os.path.join(out_dir, f"confusion_{name}.png"), plt))

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, which in zip(axes, ("final", "best")):
    folds = sorted({r["fold"] for res in stages.values() for r in res["runs"]})
    width = 0.8 / max(len(stages), 1)
    for i, (name, res) in enumerate(stages.items()):
      values = next(iter(report.per_fold(res, which, "accuracy").values()), {})
      ax.bar(np.arange(len(folds)) + i * width, [100 * values.get(f, np.nan) for f in folds],
             width, label=name)
    ax.set_xticks(np.arange(len(folds)) + 0.4 - width / 2, [str(f) for f in folds])
    ax.set(xlabel="fold", title=f"{which}-epoch accuracy (%)")
  axes[0].legend(fontsize=8)
  made.append(_save(fig, os.path.join(out_dir, "folds.png"), plt))
  return made


def _save(fig, path: str, plt) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
