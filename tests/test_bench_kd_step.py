"""`python -m jkd.bench kd-step --method=...` runs from the installed package (no configs/ read)
and times each method beside plain KD in one invocation."""

import json
import os
import subprocess
import sys


def test_kd_step_times_methods_beside_kd(tmp_path):
  p = subprocess.run([sys.executable, "-m", "jkd.bench", "kd-step", "--method=fitnet",
                      "--runs=2", "--devices=2", "--batch=8", "--steps=1", "--channels=3",
                      "--classes=3", "--length=16"],
                     cwd=tmp_path, capture_output=True, text=True, timeout=600,
                     env={**os.environ, "PYTHONPATH": ""})
  assert p.returncode == 0, p.stderr[-3000:]
  lines = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
  assert [r["method"] for r in lines] == ["kd", "fitnet"]
  assert lines[0]["vs_kd"] == 1.0 and lines[1]["vs_kd"] > 0
  assert lines[1]["terms"] == ["ce", "fitnet"] and "fitnet" in lines[1]["final_terms"]
