"""The pipeline's report: `W/results.json` ({"stages": {...}, "kd_gain": [...]}) and `W/report.md`.

Everything is computed from the stage workdirs alone (`W/<stage>/results.json`, `metrics.jsonl`,
`confusion.npz`), so `--mode=report` regenerates it. Metrics in %:

* per-stage table: accuracy and macro-F1 at the final and the best epoch, mean ± population std
  over folds and trials (as `jkd.engine.results`), one row per stage (per sweep point for a sweep);
* per-fold table: each stage's accuracy per fold (mean over trials);
* the best-epoch accuracy with the lab's "±" (`lab_pm`) in its own labelled column;
* KD gain of every distillation stage over `student_scratch`, paired across folds: per fold the difference of
  the trial means, their mean, sample std (ddof 1) and the two-sided paired t-test p-value
  (`scipy.stats.ttest_rel` on the fold means); the Student-t CDF comes from the regularised
  incomplete beta function, `P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2)`.

Plots (`pip install 'jkd[plot]'`, matplotlib; skipped with a note when absent) go to `W/plots/`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from jkd.engine.metrics import write_atomic

from jkd.report.stats import (METRICS, betainc, kd_gain, lab_pm, paired_test, per_fold,  # noqa: F401
                              sweep_key, t_two_sided_p)
from jkd.report.workdirs import (SCRATCH, is_kd_stage, is_pipeline_workdir,  # noqa: F401
                                 read_stages, stage_names)


def build(workdir: str) -> dict[str, Any]:
  stages = read_stages(workdir)
  if not stages:
    raise FileNotFoundError(f"no stage results under {workdir}; train the pipeline first")
  from jkd.engine import provenance   # noqa: PLC0415
  return {"stages": stages, "kd_gain": kd_gain(stages), "provenance": provenance.collect()}


# ----------------------------------------------------------------------------- report.md

def _pct(d: dict | None) -> str:
  if not d or d.get("mean") is None:
    return "—"
  return f"{100 * d['mean']:.2f} ± {100 * d['std']:.2f}"


def _num(v: float, digits: int = 2, scale: float = 100.0) -> str:
  return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.{digits}f}"


def _p(p: float) -> str:
  if p is None or math.isnan(p):
    return "—"
  return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def markdown(full: dict[str, Any]) -> str:
  stages = full["stages"]
  any_res = next(iter(stages.values()))
  sel = any_res["best_selected_by"]
  lines = ["# jkd distillation report", "",
           f"Test metrics in %, mean ± std (population, ddof 0) over folds and trials. "
           f"`final`: last epoch; `best`: the epoch of highest {sel} accuracy "
           f"({'the lab’s optimistic protocol' if sel == 'test' else 'a held-out validation split'}).",
           "", "## Stages", "",
           "| stage | model | sweep | runs | epochs | final acc | final F1 | best acc | best F1 "
           "| best acc, lab ± |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name, res in stages.items():
    e = res["experiment"]
    model = f"{e['model']} ({e['ndim']}-D)"
    for s in res["summary"]:
      lines.append(f"| {name} | {model} | {sweep_key(s['sweep']) or '—'} | "
                   f"{s['runs'] - s['failed']}/{s['runs']} | {res['epochs_done']} | "
                   f"{_pct(s['final']['accuracy'])} | {_pct(s['final']['macro_f1'])} | "
                   f"{_pct(s['best']['accuracy'])} | {_pct(s['best']['macro_f1'])} | "
                   f"{_lab(res, s)} |")
  teachers = [n for n in stages if n.startswith("teacher_")]
  if teachers:
    lines += ["", "Teachers' own accuracy (final / best epoch): " + "; ".join(
        f"{n[len('teacher_'):]} {_pct(stages[n]['summary'][0]['final']['accuracy'])} / "
        f"{_pct(stages[n]['summary'][0]['best']['accuracy'])}" for n in teachers) + "."]
  for which in ("final", "best"):
    lines += ["", f"## Per fold ({which}-epoch accuracy %, mean over trials)", ""]
    folds = sorted({r["fold"] for res in stages.values() for r in res["runs"]})
    subj = {}
    for res in stages.values():
      for r in res["runs"]:
        subj[r["fold"]] = ",".join(str(s) for s in r["test_subjects"])
    lines.append("| stage | " + " | ".join(f"fold {f} ({subj[f]})" for f in folds) + " |")
    lines.append("|---|" + "---|" * len(folds))
    for name, res in stages.items():
      for point, values in per_fold(res, which, "accuracy").items():
        label = name + (f" {point}" if point else "")
        lines.append(f"| {label} | " + " | ".join(_num(values.get(f)) for f in folds) + " |")
  gain = full.get("kd_gain") or []
  if gain:
    lines += ["", "## KD gain over student_scratch (paired over folds)", "",
              "Per fold the difference of the trial means; mean and sample std (ddof 1) of those "
              "differences in percentage points, two-sided paired t-test.", "",
              "| stage | sweep | metric | folds | mean diff | std | t | p |",
              "|---|---|---|---|---|---|---|---|"]
    for g in gain:
      t = "—" if math.isnan(g["t"]) else f"{g['t']:.2f}"
      lines.append(f"| {g['stage']} | {g['sweep'] or '—'} | {g['which']} {g['metric']} | {g['n']} | "
                   f"{_num(g['mean'], scale=100):s} | {_num(g['std'])} | {t} | {_p(g['p'])} |")
  lines += _provenance_lines(stages, full.get("provenance"))
  return "\n".join(lines) + "\n"


def _provenance_lines(stages: dict[str, dict], now: dict | None) -> list[str]:
  """What trained the stages (each stage's `provenance`, grouped when several differ) and what
  wrote this report."""
  from jkd.engine import provenance   # noqa: PLC0415
  groups: dict[str, list[str]] = {}
  recorded = {}
  for name, res in stages.items():
    key = json.dumps(res.get("provenance"), sort_keys=True)
    groups.setdefault(key, []).append(name)
    recorded[key] = res.get("provenance")
  out = ["", "## Provenance", ""]
  for key, names in groups.items():
    head = "Trained by" if len(groups) == 1 else f"Stages {', '.join(names)} trained by"
    body = provenance.lines(recorded[key]) or ["- not recorded (results written before jkd "
                                               "recorded provenance)"]
    out += [f"{head}:", "", *body, ""]
  if now:
    out += ["Report written by:", "", *provenance.lines(now)]
  return out


def _lab(res: dict, s: dict) -> str:
  if not s["best"]["accuracy"] or s["best"]["accuracy"].get("mean") is None:
    return "—"
  pm = lab_pm(res, sweep_key(s["sweep"]))
  return f"{100 * s['best']['accuracy']['mean']:.2f} ± {_num(pm)}"


def summary_table(full: dict[str, Any]) -> str:
  """The console version: one row per stage (and sweep point)."""
  lines = [f"{'stage':<16} {'sweep':<22} {'runs':>5} {'final acc':>15} {'final F1':>15} "
           f"{'best acc':>15} {'best F1':>15}"]
  for name, res in full["stages"].items():
    for s in res["summary"]:
      lines.append(f"{name:<16} {sweep_key(s['sweep']) or '-':<22} "
                   f"{s['runs'] - s['failed']:>2}/{s['runs']:<2} "
                   f"{_pct(s['final']['accuracy']):>15} {_pct(s['final']['macro_f1']):>15} "
                   f"{_pct(s['best']['accuracy']):>15} {_pct(s['best']['macro_f1']):>15}")
  for g in full.get("kd_gain") or []:
    if g["metric"] == "accuracy":
      lines.append(f"{g['stage']} gain ({g['which']} acc{', ' + g['sweep'] if g['sweep'] else ''}): "
                   f"{_num(g['mean'])} ± {_num(g['std'])} pp over {g['n']} folds, paired t-test "
                   f"p = {_p(g['p'])}")
  return "\n".join(lines)


def write(workdir: str, plots: bool = True) -> dict[str, Any]:
  """Build and write W/results.json and W/report.md (and W/plots/ when matplotlib exists)."""
  full = build(workdir)
  from jkd.export import complexity   # every stage's size, FLOPs and latency (issue 22)
  full["complexity"] = complexity.measure(workdir)
  write_atomic(os.path.join(workdir, "results.json"), json.dumps(full, indent=1))
  from jkd.search import outputs as search_outputs
  text = (markdown(full) + search_outputs.markdown(workdir)
          + complexity.markdown(full["complexity"]))
  if plots:
    from jkd.report import plots as plots_lib
    made = plots_lib.write(workdir, full)
    text += "\n" + ("## Plots\n\n" + "\n".join(f"![{os.path.basename(p)}](plots/"
                                             f"{os.path.basename(p)})" for p in made)
                    if made else "Plots: install matplotlib (`pip install 'jkd[plot]'`).") + "\n"
  write_atomic(os.path.join(workdir, "report.md"), text)
  return full


__all__ = ["build", "write", "markdown", "summary_table", "paired_test", "t_two_sided_p",
           "betainc", "kd_gain", "per_fold", "read_stages", "is_pipeline_workdir"]
