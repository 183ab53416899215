"""The distillation pipeline end to end through `python -m jkd.main` on tiny synthetic data:
four stages, W/results.json and W/report.md, skipping trained stages, a changed student config
reusing the teachers, `--mode=report`; and the KD step with augmentation (teachers see the
augmented window, labels mixed)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''
import jkd.data
from jkd import pipeline


def get_config():
  c = pipeline.base(jkd.data.default_config("windows"))
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
  pipeline.lab_loss(c.stages.student_kd.loss, lam=0.9, alpha=0.5, beta=100.0)
  c.stages.student_kd.sweep = {"loss": {"sp": {"weight": (100.0, 0.0)}}}   # 6 runs, others 3
  return c
'''


def _data(path):
  write_sine_windows(path, [10, 12, 8])


def _main(tmp, *extra):
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={tmp / 'W'}", f"--config.data.path={tmp / 'd.npz'}", *extra],
                     cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("pipeline")
  (tmp / "cfg.py").write_text(CONFIG)
  _data(tmp / "d.npz")
  return tmp, _main(tmp)


def test_four_stages_results_and_report(trained):
  tmp, out = trained
  w = tmp / "W"
  full = json.loads((w / "results.json").read_text())
  assert list(full["stages"]) == ["teacher_image", "teacher_signal", "student_scratch",
                                  "student_kd"]
  assert full["stages"]["teacher_image"]["experiment"]["ndim"] == 2
  for name, res in full["stages"].items():
    assert len(res["runs"]) == (6 if name == "student_kd" else 3)
    assert all(r["status"] == "ok" for r in res["runs"])
  kd_cfg = json.loads((w / "student_kd" / "config.json").read_text())
  assert kd_cfg["train"]["init_from"] == str(w / "student_scratch")
  assert kd_cfg["teachers"]["image"]["source"] == str(w / "teacher_image")
  assert "teacher image: logits, stage (1, 2, 3) outputs cached" in out
  terms = json.loads((w / "student_kd" / "metrics.jsonl").read_text().splitlines()[0])["train"]
  assert {"ce", "kd", "sp"} <= set(terms)
  md = (w / "report.md").read_text()
  for text in ("| teacher_signal |", "| student_kd |", "KD gain", "fold 2 (3)", "Teachers' own",
               "lab ±"):
    assert text in md
  sc_acc = [r["final"]["accuracy"] for r in full["stages"]["student_scratch"]["runs"]]
  for beta in (100.0, 0.0):
    gain, = [g for g in full["kd_gain"] if (g["which"], g["metric"]) == ("final", "accuracy")
             and g["sweep"] == f"loss.sp.weight={beta:g}"]
    kd_acc = [r["final"]["accuracy"] for r in full["stages"]["student_kd"]["runs"]
              if r["sweep"] == {"loss.sp.weight": beta}]
    assert gain["n"] == 3 and np.isclose(gain["mean"], np.mean(kd_acc) - np.mean(sc_acc))


def test_pipeline_resumed_after_its_teachers_gives_the_same_numbers(trained):
  """The first run trained all four stages in one process; a process that starts at student_kd
  (its 6 runs outnumber the teachers' 3) must reproduce it bit for bit."""
  tmp, _ = trained
  w, again = tmp / "W", tmp / "again"
  shutil.copytree(w, again)
  shutil.rmtree(again / "student_kd")
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={again}", f"--config.data.path={tmp / 'd.npz'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert p.stdout.count("skipped") == 3
  records = lambda d: [{k: v for k, v in json.loads(line).items() if k != "time"}
                       for line in (d / "student_kd" / "metrics.jsonl").read_text().splitlines()]
  assert records(again) == records(w)


def test_plots_of_every_stage_when_matplotlib_is_installed(trained):
  pytest.importorskip("matplotlib")
  w = trained[0] / "W"
  names = sorted(os.listdir(w / "plots"))
  assert names == sorted(f"{n}.{e}" for n in ("gains", "curves", "confusion") for e in ("png", "pdf"))
  for name in names:
    if name.endswith(".png"):
      assert (w / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
      assert f"](plots/{name})" in (w / "report.md").read_text()
  assert json.loads((w / "classes.json").read_text())   # the class names the confusion shows


def test_second_run_skips_and_changed_student_reuses_teachers(trained):
  tmp, _ = trained
  w = tmp / "W"
  out = _main(tmp)
  assert out.count("skipped") == 4
  stamp = {s: os.path.getmtime(w / s / "results.json") for s in
           ("teacher_signal", "teacher_image", "student_scratch")}
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={w}", f"--config.data.path={tmp / 'd.npz'}",
                      "--config.stages.student_kd.loss.alpha=0.2"],
                     cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 2 and "--overwrite" in p.stderr
  out = _main(tmp, "--config.stages.student_kd.loss.alpha=0.2", "--config.teachers.signal.which=best",
              "--overwrite")
  assert "[student_kd] config changed: retraining" in out and out.count("skipped") == 3
  for s, t in stamp.items():
    assert os.path.getmtime(w / s / "results.json") == t
  assert json.loads((w / "student_kd" / "config.json").read_text())["loss"]["alpha"] == 0.2
  os.remove(w / "report.md")
  shutil.rmtree(w / "plots", ignore_errors=True)
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--workdir={w}", "--mode=report"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "student_kd" in p.stdout and (w / "report.md").exists()
  if importlib.util.find_spec("matplotlib"):                  # --mode=report redraws the plots
    assert (w / "plots" / "curves.png").exists()
