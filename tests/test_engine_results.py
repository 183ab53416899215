"""Accuracy and macro-F1 from confusions vs label-level formulas; results.json summary vs numpy."""

import numpy as np

from jkd.engine import metrics, results


def _confusion(y, p, k):
  c = np.zeros((k, k), np.int64)
  for t, q in zip(y, p):
    c[t, q] += 1
  return c


def _macro_f1_from_labels(y, p):
  scores = []
  for c in sorted(set(y) | set(p)):
    tp = sum(1 for t, q in zip(y, p) if t == c and q == c)
    fp = sum(1 for t, q in zip(y, p) if t != c and q == c)
    fn = sum(1 for t, q in zip(y, p) if t == c and q != c)
    scores.append(2 * tp / (2 * tp + fp + fn))
  return np.mean(scores)


def test_accuracy_and_macro_f1():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 4, 50)
  p = np.where(rng.random(50) < 0.6, y, rng.integers(0, 5, 50))   # class 4 predicted, never true
  c = _confusion(y, p, 6)                                          # class 5: absent, skipped
  assert metrics.accuracy(c) == np.mean(y == p)
  np.testing.assert_allclose(metrics.macro_f1(c), _macro_f1_from_labels(list(y), list(p)))
  # hand example: y = [0, 0, 1], p = [0, 1, 1] -> F1_0 = 2/3, F1_1 = 2/3
  np.testing.assert_allclose(metrics.macro_f1(_confusion([0, 0, 1], [0, 1, 1], 3)), 2 / 3)
  assert metrics.accuracy(np.zeros((3, 3))) == 0.0


def _run(i, fold, seed, sweep, fa, ba, status="ok"):
  return {"run": i, "fold": fold, "test_subjects": [fold + 1], "seed": seed, "sweep": sweep,
          "final": {"accuracy": fa, "macro_f1": fa / 2},
          "best": {"accuracy": ba, "macro_f1": ba / 2, "epoch": 3}, "status": status}


def test_summary_per_sweep_point_matches_numpy():
  rng = np.random.default_rng(1)
  runs, i = [], 0
  for lr in (0.1, 0.01):
    for seed in (1, 2):
      for fold in range(3):
        runs.append(_run(i, fold, seed, {"optim.lr": lr}, rng.random(), rng.random()))
        i += 1
  runs[4]["status"] = "failed"
  runs[4]["error"] = "non-finite loss"
  res = results.build(runs, epochs_done=5, selected_by="test", experiment={})
  assert len(res["summary"]) == 2
  for s, lr in zip(res["summary"], (0.1, 0.01)):
    group = [r for r in runs if r["sweep"]["optim.lr"] == lr and r["status"] == "ok"]
    assert s["sweep"] == {"optim.lr": lr} and s["runs"] == 6 and s["failed"] == 6 - len(group)
    for which in ("final", "best"):
      for m in ("accuracy", "macro_f1"):
        v = np.array([r[which][m] for r in group])
        np.testing.assert_allclose(s[which][m]["mean"], v.mean())
        np.testing.assert_allclose(s[which][m]["std"], v.std(ddof=0))
  text = results.table(res)
  assert "failed: non-finite loss" in text and "optim.lr=0.1" in text
  mean = res["summary"][1]["best"]["accuracy"]
  assert f"{100 * mean['mean']:.2f} ± {100 * mean['std']:.2f}" in text
