"""The pipeline's report: `W/results.json` ({"stages": {...}, "kd_gain": [...]}) and `W/report.md`.

Everything is computed from the stage workdirs alone (`W/<stage>/results.json`, `metrics.jsonl`,
`confusion.npz`), so `--mode=report` regenerates it. Metrics in %:

* per-stage table: accuracy and macro-F1 at the final and the best epoch, mean ± population std
  over folds and trials (as `jkd.results`), one row per stage (per sweep point for a sweep);
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

import numpy as np
from jkd.metrics import write_atomic

SCRATCH = "student_scratch"
METRICS = (("final", "accuracy"), ("final", "macro_f1"), ("best", "accuracy"), ("best", "macro_f1"))


# ----------------------------------------------------------------------------- statistics

def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the incomplete beta function (modified Lentz), float64."""
  tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 500):
    m2 = 2 * m
    for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < 1e-15:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
               + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, dof: float) -> float:
  """P(|T| >= |t|) for Student's t with `dof` degrees of freedom."""
  if math.isnan(t):
    return float("nan")
  if math.isinf(t):
    return 0.0
  return betainc(dof / 2.0, 0.5, dof / (dof + t * t))


def paired_test(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
  """Paired comparison of b − a: mean, sample std (ddof 1), n, t and two-sided p-value."""
  d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
  n = len(d)
  mean = float(d.mean()) if n else float("nan")
  std = float(d.std(ddof=1)) if n > 1 else float("nan")
  if n < 2:
    t = p = float("nan")
  elif std == 0.0:
    t = math.copysign(math.inf, mean) if mean else float("nan")
    p = 0.0 if mean else float("nan")
  else:
    t = mean / (std / math.sqrt(n))
    p = t_two_sided_p(t, n - 1)
  return {"n": n, "mean": mean, "std": std, "t": t, "p": p}


# ----------------------------------------------------------------------------- collecting

def stage_names(workdir: str) -> list[str]:
  """The pipeline's stages in order (W/stages.json), else every subdirectory with results."""
  path = os.path.join(workdir, "stages.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  names = sorted(n for n in os.listdir(workdir) if os.path.isfile(
      os.path.join(workdir, n, "results.json"))) if os.path.isdir(workdir) else []
  rank = lambda n: (0 if n.startswith("teacher_") else 1 if n == SCRATCH else 2, n)
  return sorted(names, key=rank)


def is_kd_stage(name: str) -> bool:
  return not name.startswith("teacher_") and name != SCRATCH


def read_stages(workdir: str) -> dict[str, dict]:
  """Each trained stage's results.json, in pipeline order."""
  out = {}
  for name in stage_names(workdir):
    path = os.path.join(workdir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def _sweep_key(sweep: dict) -> str:
  return " ".join(f"{k}={v:g}" for k, v in sorted(sweep.items()))


def per_fold(res: dict, which: str, metric: str) -> dict[str, dict[int, float]]:
  """sweep point -> fold -> mean over the trials (runs that did not fail) of `which.metric`."""
  acc: dict[str, dict[int, list]] = {}
  for r in res["runs"]:
    if r["status"] != "ok":
      continue
    acc.setdefault(_sweep_key(r["sweep"]), {}).setdefault(r["fold"], []).append(r[which][metric])
  return {k: {f: float(np.mean(v)) for f, v in sorted(folds.items())} for k, folds in acc.items()}


def kd_gain(stages: dict[str, dict]) -> list[dict[str, Any]]:
  """Each KD stage − student_scratch per sweep point and metric, paired over the common folds."""
  if SCRATCH not in stages:
    return []
  out = []
  for name in (n for n in stages if is_kd_stage(n)):
    for which, metric in METRICS:
      base = next(iter(per_fold(stages[SCRATCH], which, metric).values()), {})
      for point, folds in per_fold(stages[name], which, metric).items():
        common = sorted(set(base) & set(folds))
        test = paired_test(np.array([base[f] for f in common]),
                           np.array([folds[f] for f in common]))
        out.append({"stage": name, "sweep": point, "which": which, "metric": metric,
                    "folds": common, **test})
  return out


def lab_pm(res: dict, point: str, which: str = "best", metric: str = "accuracy") -> float:
  """The lab's "±" (docs/protocol.md §9): the population std of the per-fold trial means
  divided by √(folds · trials − 1), √26 for PAMAP2's 9 folds × 3 trials. Not a standard
  deviation of anything; reported beside the honest ones so numbers compare with the papers."""
  folds = per_fold(res, which, metric).get(point, {})
  runs = [r for r in res["runs"] if r["status"] == "ok" and _sweep_key(r["sweep"]) == point]
  if len(folds) < 2 or len(runs) < 2:
    return float("nan")
  return float(np.std(list(folds.values())) / math.sqrt(len(runs) - 1))


def build(workdir: str) -> dict[str, Any]:
  stages = read_stages(workdir)
  if not stages:
    raise FileNotFoundError(f"no stage results under {workdir}; train the pipeline first")
  from jkd import provenance   # noqa: PLC0415
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
      lines.append(f"| {name} | {model} | {_sweep_key(s['sweep']) or '—'} | "
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
  from jkd import provenance   # noqa: PLC0415
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
  pm = lab_pm(res, _sweep_key(s["sweep"]))
  return f"{100 * s['best']['accuracy']['mean']:.2f} ± {_num(pm)}"


def summary_table(full: dict[str, Any]) -> str:
  """The console version: one row per stage (and sweep point)."""
  lines = [f"{'stage':<16} {'sweep':<22} {'runs':>5} {'final acc':>15} {'final F1':>15} "
           f"{'best acc':>15} {'best F1':>15}"]
  for name, res in full["stages"].items():
    for s in res["summary"]:
      lines.append(f"{name:<16} {_sweep_key(s['sweep']) or '-':<22} "
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
  text = markdown(full) + complexity.markdown(full["complexity"])
  if plots:
    from jkd import plots as plots_lib
    made = plots_lib.write(workdir, full)
    text += "\n" + ("## Plots\n\n" + "\n".join(f"![{os.path.basename(p)}](plots/"
                                             f"{os.path.basename(p)})" for p in made)
                    if made else "Plots: install matplotlib (`pip install 'jkd[plot]'`).") + "\n"
  write_atomic(os.path.join(workdir, "report.md"), text)
  return full


def is_pipeline_workdir(workdir: str) -> bool:
  return bool(stage_names(workdir)) and not os.path.exists(os.path.join(workdir, "runs.json"))


__all__ = ["build", "write", "markdown", "summary_table", "paired_test", "t_two_sided_p",
           "betainc", "kd_gain", "per_fold", "read_stages", "is_pipeline_workdir"]
