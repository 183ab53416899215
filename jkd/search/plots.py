"""A search's figures (matplotlib, the optional `plot` extra), PNG and PDF in W/plots/:

* `search_keys`: a panel per searched key: each point's validation accuracy at its last rung
  against its value (log axis for a log range), coloured by the epochs it reached, the chosen point
  starred;
* `search_rungs`: each point's validation accuracy after every rung it trained (a line per point;
  stopped points grey, points trained to the end in colour, the chosen one black and labelled).

`write(workdir, summary)` reads only the summary `jkd.search.halving` writes (W/search.json) and
returns the files made, or [] without matplotlib.
"""

from __future__ import annotations

import math
import os

from jkd.report.figures import COLOURS, pyplot, save


def write(workdir: str, summary: dict) -> list[str]:
  plt = pyplot()
  if plt is None:
    return []
  out = os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  return (keys(summary, os.path.join(out, "search_keys"), plt)
          + rungs(summary, os.path.join(out, "search_rungs"), plt))


def _pct(x):
  return float("nan") if x is None else 100 * x


def _short(key: str) -> str:
  return key[len("loss."):] if key.startswith("loss.") else key


def keys(summary: dict, path: str, plt) -> list[str]:
  names, rows, stops = summary["keys"], summary["points"], summary["rungs"]
  kinds = summary.get("space", {})
  ncol = min(3, len(names))
  nrow = math.ceil(len(names) / ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.8 * nrow), sharey=True,
                           squeeze=False)
  colour = {e: COLOURS[i % len(COLOURS)] for i, e in enumerate(stops)}
  for ax, key in zip(axes.flat, names):
    for e in stops:
      pts = [r for r in rows if r["epochs"] == e and not r["chosen"]]
      ax.scatter([r[key] for r in pts], [_pct(r["val_accuracy"]) for r in pts], s=18,
                 color=colour[e], alpha=0.85, linewidths=0,
                 label=f"stopped after epoch {e}" if e != stops[-1] else f"trained to epoch {e}")
    win = rows[summary["chosen"]]
    ax.scatter([win[key]], [_pct(win["val_accuracy"])], marker="*", s=140, color="black",
               zorder=3, label="chosen")
    if kinds.get(key) == "log":   # plain numbers at 1, 2, 5 x 10^k
      from matplotlib import ticker   # noqa: PLC0415
      ax.set_xscale("log")
      ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(_short(key))
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(names):]:
    ax.set_visible(False)
  for ax in axes[:, 0]:
    ax.set_ylabel("val accuracy (%)")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False,
             bbox_to_anchor=(0.5, -0.02 - 0.03 * nrow))
  fig.suptitle(f"{len(rows)} points: validation accuracy at each point's last rung")
  fig.tight_layout()
  return save(fig, path, plt)


def rungs(summary: dict, path: str, plt) -> list[str]:
  rows, stops = summary["points"], summary["rungs"]
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  finished = [r for r in rows if r["epochs"] == stops[-1] and not r["chosen"]]
  for r in rows:
    if r["epochs"] < stops[-1]:
      e, v = zip(*r["val_by_rung"])
      ax.plot(e, [_pct(x) for x in v], color="0.75", lw=0.8, marker="o", ms=2.5, zorder=1)
  for i, r in enumerate(finished):
    e, v = zip(*r["val_by_rung"])
    ax.plot(e, [_pct(x) for x in v], color=COLOURS[i % len(COLOURS)], lw=1.2, marker="o", ms=3,
            zorder=2)
  win = rows[summary["chosen"]]
  e, v = zip(*win["val_by_rung"])
  ax.plot(e, [_pct(x) for x in v], color="black", lw=2.2, marker="o", ms=4, zorder=3)
  ax.annotate(f"chosen (point {win['point']})", (e[-1], _pct(v[-1])), xytext=(6, 0),
              textcoords="offset points", va="center", fontsize=8)
  ax.set_xticks(stops)
  ax.set_xlim(0.5 * stops[0], stops[-1] + 0.35 * (stops[-1] - stops[0] + 1))
  ax.set_xlabel("epoch (end of rung)")
  ax.set_ylabel("val accuracy (%)")
  ax.grid(alpha=0.3)
  stopped = sum(r["epochs"] < stops[-1] for r in rows)
  ax.set_title(f"rungs: {stopped} of {len(rows)} points stopped (grey)", fontsize=10)
  fig.tight_layout()
  return save(fig, path, plt)
