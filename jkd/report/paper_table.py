"""The paper's table of a table workdir (`jkd.pipeline.columns`): W/table.md, table.csv, table.tex, results.json.

Rows are the methods in the lab's order and grouping (docs/protocol.md §8–9): teachers, the
student from scratch, then the distillation stages by their number of teachers (one, two,
three), each group in the lab's order (`LABELS`; other stages after, in the pipeline's order),
a row per sweep point (the three-teacher weight
triples). Columns are the table's columns (teacher architectures, window sizes, label sets).

A cell is the best-epoch test accuracy (%), mean over folds of the trial means, ± the lab's
spread (`jkd.report.stats.lab_pm`: population std of the fold values / √(folds·trials − 1), as the lab
prints it). table.md and table.csv add the final-epoch accuracy and the honest std (population,
over folds and trials). In each column the best student (teachers aside) is bold, and † marks a
row whose best-epoch gain over the student from scratch is significant (two-sided paired t-test
over the folds, `jkd.report.stats.paired_test`, p < 0.05), as the footnote says. table.tex is a booktabs
`tabular` to `\\input` inside a `table` environment. Provenance (`jkd.engine.provenance`) of the stages
follows table.md. `write` also draws W/plots/ (`jkd.report.figures`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import numpy as np

from jkd.report import stats, workdirs
from jkd.engine.metrics import write_atomic

ALPHA = 0.05
MARK = "†"
GROUPS = ("Teachers", "Student", "One teacher", "Two teachers", "Three teachers")

LABELS = {
    "teacher_signal": "signal (1-D WRN)", "teacher_image": "image (2-D WRN)",
    "teacher_gaf": "GAF (2-D WRN)", "teacher_pi": "PI (2-D WRN)",
    "teacher_signal_eskd": "signal, ESKD teacher",
    "student_scratch": "from scratch (CE)",
    "student_kd": "KD (signal + image)",
    "kd_signal": "KD: signal", "kd_gaf": "KD: GAF", "kd_pi": "KD: PI",
    "dcd": "DCD: signal", "projection": "RP (projection): signal",
    "pi_signal": "PI + signal, base", "pi_signal_ann": "PI + signal, annealing",
    "pi_signal_ann_sp": "PI + signal, annealing + SP",
    "gaf_signal": "GAF + signal, base", "gaf_signal_ann": "GAF + signal, annealing",
    "gaf_signal_ann_sp": "GAF + signal, annealing + SP",
    "three_ebkd": "EBKD", "three_camkd": "CA-MKD", "three_mtkd_rl": "MTKD-RL",
    "three": "base", "three_ann": "annealing", "three_ann_sp": "annealing + SP",
    "at": "AT: signal", "sp": "SP: signal", "dkd": "DKD: signal", "dist": "DIST: signal",
    "rkd": "RKD: signal", "pkt": "PKT: signal", "fitnet": "FitNet: signal", "crd": "CRD: signal",
    "simkd": "SimKD: signal", "srrl": "SRRL: signal", "pefd": "PEFD: signal",
    "eskd": "ESKD", "full_kd": "full KD", "aver": "AVER: GAF + signal",
}


# ----------------------------------------------------------------------------- rows

def _num_teachers(stage_dir: str) -> int:
  path = os.path.join(stage_dir, "config.json")
  if not os.path.exists(path):
    return 1
  with open(path) as f:
    cfg = json.load(f)
  return len(cfg.get("distill", {}).get("teachers", ())) or 1


def group_of(stage: str, stage_dir: str) -> str:
  if stage.startswith("teacher_"):
    return "Teachers"
  if stage == workdirs.SCRATCH:
    return "Student"
  n = _num_teachers(stage_dir)
  return GROUPS[1 + n] if n <= 3 else f"{n} teachers"


def _point_label(sweep: dict) -> str:
  """A sweep point as a row suffix: teacher weights as a tuple, other keys as key=value."""
  if not sweep:
    return ""
  weights = {k.split(".")[1]: v for k, v in sweep.items()
             if k.startswith("teachers.") and k.endswith(".weight")}
  rest = {k: v for k, v in sweep.items() if k not in {f"teachers.{t}.weight" for t in weights}}
  parts = []
  if weights:
    parts.append("w " + "/".join(weights) + " = (" + ", ".join(f"{v:g}" for v in
                                                               weights.values()) + ")")
  parts += [f"{k.split('.')[-1]}={v:g}" for k, v in rest.items()]
  return ", ".join(parts)


def label_of(stage: str, sweep: dict) -> str:
  base = LABELS.get(stage, stage)
  point = _point_label(sweep)
  return f"{base}, {point}" if point else base


# ----------------------------------------------------------------------------- cells

def _cell(res: dict, summary: dict, base_folds: dict[int, float] | None, is_student: bool
          ) -> dict[str, Any]:
  key = stats.sweep_key(summary["sweep"])
  folds = stats.per_fold(res, "best", "accuracy").get(key, {})
  b, f = summary["best"]["accuracy"], summary["final"]["accuracy"]
  cell = {"best": b["mean"], "best_std": b["std"], "final": f["mean"], "final_std": f["std"],
          "lab_pm": stats.lab_pm(res, key), "folds": {str(k): v for k, v in folds.items()},
          "runs": summary["runs"] - summary["failed"], "gain": None}
  if base_folds is not None and is_student:
    common = sorted(set(base_folds) & set(folds))
    t = stats.paired_test(np.array([base_folds[k] for k in common]),
                           np.array([folds[k] for k in common]))
    cell["gain"] = {**t, "folds": {str(k): folds[k] - base_folds[k] for k in common}}
  return cell


def build_dir(workdir: str) -> dict[str, Any]:
  """A single pipeline workdir as a table of one unnamed column."""
  return build(workdir, [{"key": "", "label": "", "dir": ".", "overrides": None}])


def build(workdir: str, cols: list[dict] | None = None) -> dict[str, Any]:
  """Rows, columns and cells of a table workdir (raises FileNotFoundError, workdirs.TableError)."""
  from jkd.engine import provenance   # noqa: PLC0415
  cols = workdirs.read_columns(workdir) if cols is None else cols
  rows: list[dict[str, Any]] = []
  cells: dict[str, dict[str, Any]] = {}
  prov: dict[str, Any] = {}
  for ci, col in enumerate(cols):
    d = os.path.join(workdir, col["dir"])
    stages = workdirs.read_stages(d)
    base = None
    if workdirs.SCRATCH in stages:
      base = next(iter(stats.per_fold(stages[workdirs.SCRATCH], "best", "accuracy").values()), None)
    for name, res in stages.items():
      prov.setdefault(json.dumps(res.get("provenance"), sort_keys=True), []).append(
          f"{col['label']}/{name}")
      for s in res["summary"]:
        rid = name + (f" {stats.sweep_key(s['sweep'])}" if s["sweep"] else "")
        if ci == 0:
          rows.append({"id": rid, "stage": name, "sweep": s["sweep"],
                       "label": label_of(name, s["sweep"]),
                       "group": group_of(name, os.path.join(d, name))})
        cells.setdefault(rid, {})[col["key"]] = _cell(
            res, s, base, workdirs.is_kd_stage(name))
  order = {g: i for i, g in enumerate(GROUPS)}
  lab = {s: i for i, s in enumerate(LABELS)}   # the lab's row order; other stages after, in
  rank = {r["id"]: i for i, r in enumerate(rows)}   # pipeline order (stages.json)
  rows.sort(key=lambda r: (order.get(r["group"], len(GROUPS)), r["group"],
                           lab.get(r["stage"], len(lab)), rank[r["id"]]))
  _mark(rows, cols, cells)
  sel = _selected_by(workdir, cols)
  return {"columns": cols, "rows": rows, "cells": cells, "alpha": ALPHA,
          "best_selected_by": sel,
          "provenance": {"stages": [{"cells": v, "provenance": json.loads(k)}
                                    for k, v in prov.items()],
                         "report": provenance.collect()}}


def _selected_by(workdir: str, cols: list[dict]) -> str:
  d = os.path.join(workdir, cols[0]["dir"])
  stages = workdirs.read_stages(d)
  return next(iter(stages.values()))["best_selected_by"] if stages else "test"


def _mark(rows, cols, cells) -> None:
  """Bold: the best student of each column; significant: † for a gain with p < ALPHA."""
  for col in cols:
    k = col["key"]
    students = [r for r in rows if r["group"] != "Teachers"
                and cells[r["id"]].get(k, {}).get("best") is not None]
    top = max((cells[r["id"]][k]["best"] for r in students), default=None)
    for r in rows:
      c = cells[r["id"]].get(k)
      if c is None:
        continue
      c["bold"] = bool(top is not None and r in students and c["best"] == top)
      g = c.get("gain")
      c["significant"] = bool(g and not math.isnan(g["p"]) and g["p"] < ALPHA and g["mean"] > 0)


# ----------------------------------------------------------------------------- formats

def _f(v: float | None, scale: float = 100.0) -> str:
  return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.2f}"


def _n_folds(full: dict) -> str:
  ns = {len(c["folds"]) for row in full["cells"].values() for c in row.values()}
  return "/".join(str(n) for n in sorted(ns))


def footnote(full: dict, tex: bool = False) -> str:
  mark = r"$^\dagger$" if tex else MARK
  pm = r"$\pm$" if tex else "±"
  lt = r"$<$" if tex else "<"
  sel = full["best_selected_by"]
  best = "highest test accuracy (the lab's protocol)" if sel == "test" else (
      "highest validation accuracy")
  return (f"Test accuracy (%) at the epoch of {best}, mean over {_n_folds(full)} folds of the "
          f"trial means {pm} the lab's spread (population std of the fold values / "
          f"sqrt(folds x trials - 1)). Bold: the best student of each column. {mark}: gain over "
          f"the student from scratch significant at p {lt} {ALPHA:g} (two-sided paired t-test over "
          f"the folds).")


def _value(c: dict, pm: str, bold: str, mark: str) -> str:
  """A cell's best-epoch accuracy ± the lab's spread, `bold` (a format) when it is its column's
  best, `mark` when its gain is significant."""
  v = f"{_f(c['best'])} {pm} {_f(c['lab_pm'])}"
  return (bold.format(v) if c["bold"] else v) + (mark if c["significant"] else "")


def markdown(full: dict) -> str:
  from jkd.engine import provenance   # noqa: PLC0415
  cols = full["columns"]
  lines = ["# Results table", "", "| group | method | " + " | ".join(c["label"] for c in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  last = None
  for r in full["rows"]:
    group = r["group"] if r["group"] != last else ""
    last = r["group"]
    cells = []
    for col in cols:
      c = full["cells"][r["id"]].get(col["key"])
      if c is None:
        cells.append("—")
        continue
      cells.append(f"{_value(c, '±', '**{}**', MARK)} "
                   f"<sub>final {_f(c['final'])}, std {_f(c['best_std'])}</sub>")
    lines.append(f"| {group} | {r['label']} | " + " | ".join(cells) + " |")
  lines += ["", footnote(full) + " Small print: the final-epoch accuracy and the population "
            "std of the best-epoch accuracy over folds and trials.", "",
            "Columns: " + "; ".join(
                f"**{c['label']}**" + (f" ({', '.join(f'{k}={v}' for k, v in c['overrides'].items())})"
                                       if c.get("overrides") else "") for c in cols) + "."]
  groups: dict[str, list[str]] = {}
  for g in full["provenance"]["stages"]:
    groups[json.dumps(g["provenance"], sort_keys=True)] = g["cells"]
  lines += ["", "## Provenance", ""]
  for g in full["provenance"]["stages"]:
    head = "Trained by" if len(groups) == 1 else f"{', '.join(g['cells'])} trained by"
    lines += [f"{head}:", "", *(provenance.lines(g["provenance"]) or ["- not recorded"]), ""]
  lines += ["Table written by:", "", *provenance.lines(full["provenance"]["report"])]
  return "\n".join(lines) + "\n"


def csv_text(full: dict) -> str:
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["group", "method", "stage", "sweep", "column", "best_acc", "lab_pm", "best_std",
              "final_acc", "final_std", "runs", "gain_pp", "gain_std_pp", "gain_p",
              "significant", "best_in_column"])
  for r in full["rows"]:
    for col in full["columns"]:
      c = full["cells"][r["id"]].get(col["key"])
      if c is None:
        continue
      g = c.get("gain") or {}
      num = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else (
          f"{100 * v:.4f}")
      w.writerow([r["group"], r["label"], r["stage"], stats.sweep_key(r["sweep"]), col["label"],
                  num(c["best"]), num(c["lab_pm"]), num(c["best_std"]), num(c["final"]),
                  num(c["final_std"]), c["runs"], num(g.get("mean")), num(g.get("std")),
                  "" if not g or math.isnan(g["p"]) else f"{g['p']:.4g}",
                  int(c["significant"]), int(c["bold"])])
  return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
        "{": r"\{", "}": r"\}", "<": r"\textless{}", ">": r"\textgreater{}",
        "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
  """Text as LaTeX typesets it, in one pass (a later rule never rewrites an earlier one's output)."""
  return "".join(_TEX.get(ch, ch) for ch in s)


def tex(full: dict) -> str:
  cols = full["columns"]
  n = len(cols) + 1
  lines = ["% jkd results table: \\usepackage{booktabs}; \\input{table.tex} inside a table env.",
           "\\begin{tabular}{l" + "c" * len(cols) + "}", "\\toprule",
           "Method & " + " & ".join(_tex(c["label"]) for c in cols) + " \\\\", "\\midrule"]
  last = None
  for r in full["rows"]:
    if r["group"] != last:
      if last is not None:
        lines.append("\\midrule")
      lines.append(f"\\multicolumn{{{n}}}{{l}}{{\\emph{{{_tex(r['group'])}}}}} \\\\")
      last = r["group"]
    cells = []
    for col in cols:
      c = full["cells"][r["id"]].get(col["key"])
      if c is None:
        cells.append("--")
        continue
      cells.append(_value(c, r"$\pm$", r"\textbf{{{}}}", r"$^\dagger$"))
    lines.append(f"\\quad {_tex(r['label'])} & " + " & ".join(cells) + " \\\\")
  lines += ["\\bottomrule",
            f"\\multicolumn{{{n}}}{{p{{0.95\\linewidth}}}}{{\\footnotesize "
            f"{footnote(full, tex=True).replace('%', chr(92) + '%')}}} \\\\",
            "\\end{tabular}"]
  return "\n".join(lines) + "\n"


def console(full: dict) -> str:
  cols = full["columns"]
  width = max(len(r["label"]) for r in full["rows"]) + 2
  out = [f"{'method':<{width}}" + "".join(f"{c['label'][:17]:>18}" for c in cols)]
  last = None
  for r in full["rows"]:
    if r["group"] != last:
      out.append(f"[{r['group']}]")
      last = r["group"]
    cells = []
    for col in cols:
      c = full["cells"][r["id"]].get(col["key"])
      v = "—" if c is None else (f"{_f(c['best'])} ± {_f(c['lab_pm'])}"
                                  + ("*" if c["bold"] else " ") + (MARK if c["significant"] else " "))
      cells.append(f"{v:>18}")
    out.append(f"{r['label']:<{width}}" + "".join(cells))
  out.append("best-epoch acc % ± lab spread; * best student of the column; "
             f"{MARK} gain over scratch p < {ALPHA:g} (paired t-test over folds)")
  from jkd.engine import provenance   # noqa: PLC0415
  for g in full["provenance"]["stages"][:3]:
    lines = provenance.lines(g["provenance"])
    if lines:
      out.append("trained by: " + "; ".join(line[2:] for line in lines[:3]))
  return "\n".join(out)


def write(workdir: str, plots: bool = True) -> dict:
  """Build the table of a table workdir and write table.md/.csv/.tex, results.json, plots/."""
  full = build(workdir)
  text = markdown(full)
  if plots:
    from jkd.report import figures   # noqa: PLC0415
    made = figures.write(workdir, full)
    text += "\n" + ("## Figures\n\n" + "\n".join(
        f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in made if p.endswith(".png"))
        if made else "Figures: install matplotlib (`pip install 'jkd[plot]'`).") + "\n"
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(full, indent=1))
  write_atomic(os.path.join(workdir, "table.md"), text)
  write_atomic(os.path.join(workdir, "table.csv"), csv_text(full))
  write_atomic(os.path.join(workdir, "table.tex"), tex(full))
  return full


__all__ = ["build", "build_dir", "write", "markdown", "csv_text", "tex", "console", "footnote", "label_of",
           "group_of", "LABELS", "GROUPS"]
