"""Figures of a results table (matplotlib, the optional `plot` extra), each as PNG and PDF.

`write(workdir, table)` draws, from a table as `jkd.report.paper_table.build` returns it (one column for
a single pipeline) and the stage workdirs' metrics.jsonl and confusion.npz, into W/plots/:

* `gains`: per column a panel; per student row its best-epoch accuracy gain over the student from
  scratch (percentage points): the mean over folds with a 95 % t-interval and each fold's
  difference as a dot, rows grouped (one / two / three teachers) and sorted by their mean gain
  over the columns within a group, a line at zero;
* `curves`: learning curves (test accuracy per epoch, mean over runs) as small multiples: a row of
  panels per row group (at most 7 lines a panel, split further when a group has more), a panel
  per column, the scratch student dashed in every student panel, legends outside the axes;
* `confusion_<column>`: the final-epoch test confusion (summed over runs, rows normalised) of the
  scratch student and of the column's best student, with the data source's class names.

This module draws only: it reads the table it is given and the files of the stage workdirs, and
imports nothing else of jkd (`jkd.report` and `jkd.report.paper_table` call it). `write` returns the
files made, or [] without matplotlib.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import numpy as np

MAX_LINES = 7
# Okabe-Ito, colour-blind safe and distinct; groups and lines within a panel cycle through it.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442")
GROUP_COLOURS = {"Teachers": "#666666", "Student": "#000000", "One teacher": "#0072B2",
                 "Two teachers": "#D55E00", "Three teachers": "#009E73"}


@functools.lru_cache(maxsize=None)
def _t975(dof: int) -> float:
  """The 0.975 quantile of Student's t (bisection on the two-sided tail), 1.96 for large dof."""
  if dof <= 0:
    return float("nan")
  if dof > 1000:
    return 1.959964
  from math import lgamma   # noqa: PLC0415
  def tail(t: float) -> float:   # two-sided P(|T| > t) by Simpson on the density
    n, a, b = 2000, 0.0, t
    c = math.exp(lgamma((dof + 1) / 2) - lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    f = lambda x: c * (1 + x * x / dof) ** (-(dof + 1) / 2)
    h = (b - a) / n
    s = f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n))
    return 1.0 - 2.0 * s * h / 3.0
  lo, hi = 0.0, 100.0
  for _ in range(50):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if tail(mid) > 0.05 else (lo, mid)
  return (lo + hi) / 2


def pyplot():
  try:
    import matplotlib   # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # noqa: PLC0415
  except ImportError:
    return None
  return plt


def save(fig, path: str, plt) -> list[str]:
  fig.savefig(path + ".png", dpi=130, bbox_inches="tight")
  fig.savefig(path + ".pdf", bbox_inches="tight")
  plt.close(fig)
  return [path + ".png", path + ".pdf"]


# ----------------------------------------------------------------------------- gains

def gains(table: dict, path: str, plt) -> list[str]:
  cols, cells = table["columns"], table["cells"]
  rows = [r for r in table["rows"] if r["group"] not in ("Teachers", "Student")
          and any((cells[r["id"]].get(c["key"]) or {}).get("gain") for c in cols)]
  if not rows:
    return []
  def mean_gain(r):
    v = [cells[r["id"]][c["key"]]["gain"]["mean"] for c in cols
         if (cells[r["id"]].get(c["key"]) or {}).get("gain")]
    v = [x for x in v if not math.isnan(x)]
    return float(np.mean(v)) if v else -math.inf
  groups: list[str] = []
  for r in rows:
    if r["group"] not in groups:
      groups.append(r["group"])
  ordered = []   # top to bottom: groups in table order, best mean gain first within a group
  for g in groups:
    ordered += sorted((r for r in rows if r["group"] == g), key=mean_gain, reverse=True)
  y = {}
  pos = 0.0
  spans = []
  for g in groups:
    start = pos
    for r in (r for r in ordered if r["group"] == g):
      y[r["id"]] = pos
      pos += 1
    spans.append((g, start, pos - 1))
    pos += 0.8
  height = max(3.0, 0.27 * pos + 1.2)
  fig, axes = plt.subplots(1, len(cols), figsize=(2.2 + 2.6 * len(cols), height), sharey=True,
                           sharex=True, squeeze=False)
  rng = np.random.default_rng(0)
  for ax, col in zip(axes[0], cols):
    ax.axvline(0, color="0.3", lw=0.8, zorder=1)
    for r in ordered:
      c = cells[r["id"]].get(col["key"]) or {}
      g = c.get("gain")
      if not g:
        continue
      colour = GROUP_COLOURS.get(r["group"], "#0072B2")
      folds = np.array(list(g["folds"].values()), np.float64) * 100
      yy = y[r["id"]]
      ax.scatter(folds, yy + rng.uniform(-0.18, 0.18, len(folds)), s=7, color=colour,
                 alpha=0.35, lw=0, zorder=2)
      m = 100 * g["mean"]
      half = (100 * g["std"] / math.sqrt(g["n"]) * _t975(g["n"] - 1)) if g["n"] > 1 else 0.0
      if math.isnan(half):
        half = 0.0
      ax.errorbar(m, yy, xerr=half, fmt="o", ms=4, color=colour, ecolor=colour, lw=1.3,
                  capsize=2, zorder=3)
    ax.set_title(col["label"], fontsize=10)
    ax.set_xlabel("gain over scratch (pp)", fontsize=9)
    ax.grid(axis="x", color="0.9", lw=0.6, zorder=0)
    ax.tick_params(labelsize=8)
    for _, a, b in spans[1:]:
      ax.axhline(a - 0.9, color="0.75", lw=0.6)
  ax0 = axes[0][0]
  ax0.set_yticks([y[r["id"]] for r in ordered], [r["label"] for r in ordered], fontsize=8)
  for lab, tick in zip(ax0.get_yticklabels(), ordered):
    lab.set_color(GROUP_COLOURS.get(tick["group"], "black"))
  ax0.set_ylim(pos - 0.5, -0.8)
  for g, a, b in spans:   # the group's name at the right edge, outside the data
    axes[0][-1].annotate(g, xy=(1.02, (a + b) / 2), xycoords=("axes fraction", "data"),
                         rotation=-90, va="center", ha="left", fontsize=9,
                         color=GROUP_COLOURS.get(g, "black"))
  fig.suptitle("Best-epoch accuracy gain over the student from scratch: mean, 95 % t-interval, "
               "folds (dots)", fontsize=10)
  fig.tight_layout()
  return save(fig, path, plt)


# ----------------------------------------------------------------------------- curves

def read_curve(stage_dir: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(epochs, mean test accuracy over the runs that did not fail) from metrics.jsonl."""
  path = os.path.join(stage_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  by_epoch: dict[int, list[float]] = {}
  with open(path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        break
      if not r.get("failed"):
        by_epoch.setdefault(r["epoch"], []).append(r["test"]["accuracy"])
  if not by_epoch:
    return None
  e = np.array(sorted(by_epoch))
  return e, np.array([np.mean(by_epoch[i]) for i in e])


def _panels(table: dict) -> list[tuple[str, list[str]]]:
  """(title, stages) per row of panels: row groups, split into chunks of at most MAX_LINES."""
  out: list[tuple[str, list[str]]] = []
  seen: dict[str, list[str]] = {}
  for r in table["rows"]:
    g = "Teachers and scratch" if r["group"] in ("Teachers", "Student") else r["group"]
    if r["stage"] not in seen.setdefault(g, []):
      seen[g].append(r["stage"])
  for g, stages in seen.items():
    if g != "Teachers and scratch":
      stages = [s for s in stages if s != "student_scratch"]
    chunks = [stages[i:i + MAX_LINES] for i in range(0, len(stages), MAX_LINES)] or [[]]
    for i, ch in enumerate(chunks):
      out.append((g + (f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""), ch))
  return out


def curves(workdir: str, table: dict, path: str, plt) -> list[str]:
  cols = table["columns"]
  panels = _panels(table)
  points: dict[str, int] = {}
  for r in table["rows"]:
    points[r["stage"]] = points.get(r["stage"], 0) + 1
  label = {r["stage"]: r["label"].split(", w ")[0] + (
      f" (mean of {points[r['stage']]} points)" if points[r["stage"]] > 1 else "")
      for r in table["rows"]}
  from matplotlib.ticker import MaxNLocator   # noqa: PLC0415
  fig, axes = plt.subplots(len(panels), len(cols), figsize=(1.0 + 3.3 * len(cols) + 2.6,
                                                             0.4 + 2.3 * len(panels)),
                           sharex="row", squeeze=False)   # teachers train longer than students
  for i, (title, stages) in enumerate(panels):
    for j, col in enumerate(cols):
      ax = axes[i][j]
      d = os.path.join(workdir, col["dir"])
      if "scratch" not in title:
        c = read_curve(os.path.join(d, "student_scratch"))
        if c is not None:
          ax.plot(c[0], 100 * c[1], color="0.2", ls="--", lw=1.2, label="from scratch")
      k = 0
      for s in stages:
        c = read_curve(os.path.join(d, s))
        if c is None:
          continue
        if s == "student_scratch":
          ax.plot(c[0], 100 * c[1], color="0.2", ls="--", lw=1.2, label="from scratch")
        else:
          ax.plot(c[0], 100 * c[1], color=COLOURS[k % len(COLOURS)], lw=1.3, label=label[s])
          k += 1
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      ax.grid(color="0.92", lw=0.6)
      ax.tick_params(labelsize=8)
      if i == 0:
        ax.set_title(col["label"], fontsize=10)
      if j == 0:
        ax.set_ylabel(f"{title}\ntest acc (%)", fontsize=9)
      ax.set_xlabel("epoch" if i == len(panels) - 1 else "", fontsize=9)
    axes[i][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
  fig.suptitle("Learning curves: test accuracy, mean over folds and trials", fontsize=10)
  fig.tight_layout()
  return save(fig, path, plt)


# ----------------------------------------------------------------------------- confusion

def read_classes(col_dir: str) -> list[str] | None:
  path = os.path.join(col_dir, "classes.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _confusion(stage_dir: str) -> np.ndarray | None:
  path = os.path.join(stage_dir, "confusion.npz")
  if not os.path.exists(path):
    return None
  with np.load(path) as z:
    conf = z["final_test"].sum(0).astype(np.float64)
  return conf / np.maximum(conf.sum(1, keepdims=True), 1)


def confusion(workdir: str, table: dict, col: dict, path: str, plt) -> list[str]:
  d = os.path.join(workdir, col["dir"])
  cells = table["cells"]
  students = [r for r in table["rows"] if r["group"] not in ("Teachers", "Student")
              and (cells[r["id"]].get(col["key"]) or {}).get("bold")]
  picks = [("student_scratch", "from scratch")]
  if students:
    picks.append((students[0]["stage"], f"best ({students[0]['group'].lower()}): {students[0]['label']}"))
  mats = [(t, m) for s, t in picks if (m := _confusion(os.path.join(d, s))) is not None]
  if not mats:
    return []
  k = mats[0][1].shape[0]
  names = read_classes(d)
  names = names if names and len(names) == k else [str(i) for i in range(k)]
  size = 1.6 + 0.42 * k
  fig, axes = plt.subplots(1, len(mats), figsize=(size * len(mats) + 1.6, size + 0.8),
                           squeeze=False, sharey=True, layout="constrained")
  for i, (ax, (title, m)) in enumerate(zip(axes[0], mats)):
    im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.tick_params(labelleft=i == 0)
    for a in range(k):
      for b in range(k):
        if m[a, b] >= 0.005:
          ax.text(b, a, f"{100 * m[a, b]:.0f}", ha="center", va="center", fontsize=6,
                  color="white" if m[a, b] > 0.6 else "black")
    ax.set_xlabel("predicted", fontsize=9)
    if i == 0:
      ax.set_ylabel("true", fontsize=9)
    ax.set_title(title, fontsize=8)
  fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="fraction of the true class")
  fig.suptitle(f"{col['label'] + ': ' if col['label'] else ''}final-epoch test confusion "
               "(summed over runs, % of each true class)", fontsize=10)
  return save(fig, path, plt)


def write(workdir: str, table: dict[str, Any]) -> list[str]:
  plt = pyplot()
  if plt is None:
    return []
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  made = gains(table, os.path.join(out_dir, "gains"), plt)
  made += curves(workdir, table, os.path.join(out_dir, "curves"), plt)
  for col in table["columns"]:
    name = "confusion" + (f"_{col['dir']}" if col["dir"] not in ("", ".") else "")
    made += confusion(workdir, table, col, os.path.join(out_dir, name), plt)
  return made


__all__ = ["write", "gains", "curves", "confusion", "read_curve", "read_classes"]
