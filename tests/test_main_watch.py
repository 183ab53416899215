"""`python -m jkd.main --config=configs/watch.py` end to end on the embedded real dataset (one fold,
one epoch: the CLI, data, model, results and table all connect)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_watch_config_trains_one_fold(tmp_path):
  workdir = tmp_path / "watch"
  p = subprocess.run([sys.executable, "-m", "jkd.main", "--config=configs/watch.py",
                      f"--workdir={workdir}", "--config.train.epochs=1",
                      "--config.data.test_subjects=(3,)"],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  (run,) = res["runs"]
  assert run["test_subjects"] == [3] and run["status"] == "ok"
  assert res["experiment"]["num_classes"] == 7 and res["experiment"]["model"] == "wrn16_1"
  assert 1 / 7 < run["final"]["accuracy"] <= 1.0     # one epoch already beats chance
  assert "summary after 1 epochs" in p.stdout and "epoch 1/1" in p.stdout
