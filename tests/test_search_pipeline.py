"""A pipeline whose KD stage searches (`stages.student_kd.search`) through `python -m jkd.main`:
the teachers and the scratch student train once, the KD stage trains its points with halving, its
results.json holds the chosen point's runs, search.csv every point, report.md the winner; a rerun
skips every stage. TPE draws the points in two waves: the second is asked after the first is told.
Tiny: 4 subjects, 2 folds (one validation subject each), 4 points."""

import csv
import json
import os
import subprocess
import sys

import pytest

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''
import jkd.data
from jkd import pipeline, search


def get_config():
  c = pipeline.base(jkd.data.default_config("windows"))
  c.data.num_folds = 2
  c.data.num_val_subjects = 1
  c.model.name = "wrn10_1"
  c.train.epochs = 2
  c.train.batch_size = 8
  c.train.eval_batch_size = 32
  c.train.checkpoint_every = 2
  c.optim.schedule = "constant"
  c.teachers.signal.model.name = "wrn10_1"
  c.teachers.image.model.name = "wrn10_1"
  c.teachers.image.model.image_size = 8
  c.stages.student_scratch.model.name = "wrn10_1"
  kd = c.stages.student_kd
  pipeline.lab_loss(kd.loss, lam=0.9, alpha=0.5, beta=100.0)
  kd.search = search.default_config(points=4, sampler="tpe", seed=1, waves=2)
  kd.search.space = search.lab_kd(beta=(10, 200), temperature=(1, 8))
  kd.search.halving.rungs = (1,)
  kd.search.halving.eta = 2
  return c
'''


def _main(tmp):
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={tmp / 'W'}", f"--config.data.path={tmp / 'd.npz'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=900,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout


def test_pipeline_searches_its_kd_stage(tmp_path):
  (tmp_path / "cfg.py").write_text(CONFIG)
  write_sine_windows(tmp_path / "d.npz", [10, 12, 8, 14])
  _main(tmp_path)
  w = tmp_path / "W"
  with open(w / "student_kd" / "search.csv") as f:
    rows = list(csv.DictReader(f))
  keys = ["loss.ce.weight", "loss.kd.weight", "loss.kd.temperature", "loss.alpha",
          "loss.sp.weight"]
  assert len(rows) == 4 and all(k in rows[0] for k in keys)
  for r in rows:
    assert abs(float(r["loss.ce.weight"]) + float(r["loss.kd.weight"]) - 1) < 1e-9
  assert sorted(int(r["epochs"]) for r in rows) == [1, 1, 2, 2]
  chosen = [r for r in rows if r["chosen"] == "True"]
  assert len(chosen) == 1 and chosen[0]["epochs"] == "2"
  finished = [r for r in rows if r["epochs"] == "2"]
  assert chosen[0]["val_accuracy"] == max((r["val_accuracy"] for r in finished), key=float)
  full = json.loads((w / "results.json").read_text())
  kd = full["stages"]["student_kd"]
  assert len(kd["runs"]) == 2                       # the chosen point's 2 folds
  assert kd["runs"][0]["sweep"] == {k: float(chosen[0][k]) for k in keys}
  for wave in (0, 1):   # each wave: 2 points x 2 folds, then the better point
    assert [len(json.load(open(w / "student_kd" / f"wave{wave}" / f"rung{k}" / "runs.json")))
            for k in (0, 1)] == [4, 2]
  assert [r["wave"] for r in rows] == ["0", "0", "1", "1"]
  import optuna
  trials = optuna.load_study(study_name="jkd",
                             storage=f"sqlite:///{w / 'student_kd' / 'search.db'}").get_trials()
  assert [t.state.name for t in trials].count("COMPLETE") == 2
  assert min(t.datetime_start for t in trials[2:]) > max(t.datetime_complete for t in trials[:2])
  md = (w / "report.md").read_text()
  assert "## Searches" in md and "| student_kd | 4 |" in md
  # its figures, linked from the report
  for f in ("search_keys", "search_rungs"):
    assert (w / "student_kd" / "plots" / f"{f}.png").stat().st_size > 10_000
    assert (w / "student_kd" / "plots" / f"{f}.pdf").exists()
    assert f"(student_kd/plots/{f}.png)" in md
  s = json.loads((w / "student_kd" / "search.json").read_text())
  assert [len(r["val_by_rung"]) for r in s["points"]] == [int(r["epochs"]) for r in rows]
  assert [r["val_by_rung"][-1][1] for r in s["points"]] == [float(r["val_accuracy"]) for r in rows]
  # the complexity row (and `python -m jkd.export`) finds the chosen point's checkpoints in its
  # last rung: its fold-0 run, whose ONNX model predicts as jkd did
  cx = full["complexity"]["student_kd"]
  assert "error" not in cx and cx["parameters"] > 0, cx
  assert cx["float"]["accuracy"] == pytest.approx(kd["runs"][0]["final"]["accuracy"], abs=1e-9)
  again = _main(tmp_path)
  assert again.count("skipped") == 4 and "compiling" not in again
