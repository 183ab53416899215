"""The statistics of a report: the paired t-test of a gain over folds (from the regularised
incomplete beta function, `P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2)`, as `scipy.stats.ttest_rel`), the
per-fold means of a stage's runs, every distillation stage's gain over the scratch student, and
the lab's "±" (`lab_pm`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jkd.report.workdirs import SCRATCH, is_kd_stage

METRICS = (("final", "accuracy"), ("final", "macro_f1"), ("best", "accuracy"), ("best", "macro_f1"))


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


def sweep_key(sweep: dict) -> str:
  return " ".join(f"{k}={v:g}" for k, v in sorted(sweep.items()))


def per_fold(res: dict, which: str, metric: str) -> dict[str, dict[int, float]]:
  """sweep point -> fold -> mean over the trials (runs that did not fail) of `which.metric`."""
  acc: dict[str, dict[int, list]] = {}
  for r in res["runs"]:
    if r["status"] != "ok":
      continue
    acc.setdefault(sweep_key(r["sweep"]), {}).setdefault(r["fold"], []).append(r[which][metric])
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
  runs = [r for r in res["runs"] if r["status"] == "ok" and sweep_key(r["sweep"]) == point]
  if len(folds) < 2 or len(runs) < 2:
    return float("nan")
  return float(np.std(list(folds.values())) / math.sqrt(len(runs) - 1))
