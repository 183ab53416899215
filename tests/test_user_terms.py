"""A distillation term from the user's own module (`python -m jkd.main --import=MODULE`), the one
docs/extending.md shows: it trains, sweeps and is checked like a built-in; the workdir records the
import, so resuming and `--mode=report` find it again without the flag; a module that cannot be
imported is one line, exit status 2."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs_module() -> str:
  """The user's module: docs/extending.md's first python block (one term, registered at import)."""
  text = open(os.path.join(REPO, "docs", "extending.md")).read()
  return textwrap.dedent(re.search(r"```python\n(.*?)```", text, re.S).group(1))


CONFIG = '''
import jkd.data
from jkd import pipeline


def get_config():
  c = pipeline.base(jkd.data.default_config("windows"))
  c.model.name = "wrn10_1"
  c.train.update(epochs=1, batch_size=8, eval_batch_size=32)
  c.optim.schedule = "constant"
  c.teachers.signal.model.name = "wrn10_1"
  c.stages.student_scratch.model.name = "wrn10_1"
  del c.stages["teacher_image"]
  c.stages.student_kd = pipeline.kd_stage(c, ("signal",), ("ce", "xyz"))
  c.stages.student_kd.sweep = {"loss": {"xyz": {"weight": (0.5, 2.0)}}}
  return c
'''


def _main(cwd, *args):
  return subprocess.run([sys.executable, "-m", "jkd.main", *args], cwd=cwd, capture_output=True,
                        text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})


@pytest.fixture(scope="module")
def user(tmp_path_factory):
  """The user's directory (their module and config), a trained workdir and its first output."""
  home = tmp_path_factory.mktemp("user")
  (home / "my_terms.py").write_text(_docs_module())
  (home / "cfg.py").write_text(CONFIG)
  write_sine_windows(home / "d.npz", [8, 8, 8])
  args = ["--import=my_terms", f"--config={home / 'cfg.py'}", f"--workdir={home / 'W'}",
          f"--config.data.path={home / 'd.npz'}"]
  p = _main(home, *args)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return home, args


def test_an_imported_term_trains_and_sweeps_like_a_built_in(user):
  home, _ = user
  w = home / "W"
  lines = [json.loads(line) for line in (w / "student_kd" / "metrics.jsonl").read_text().splitlines()]
  assert all("xyz" in r["train"] and r["train"]["xyz"] > 0 for r in lines)
  points = {r["sweep"]["loss.xyz.weight"] for r in lines}
  assert points == {0.5, 2.0}
  # the weight really scales the term's part of the total: total = ce + weight * xyz
  for r in lines:
    t = r["train"]
    assert t["loss"] == pytest.approx(t["ce"] + r["sweep"]["loss.xyz.weight"] * t["xyz"],
                                      rel=1e-4)
  for path in (w / "config.json", w / "student_kd" / "config.json"):
    assert json.loads(path.read_text())["imports"] == ["my_terms"]


def test_the_workdir_finds_its_imports_again(user):
  home, args = user
  rest = [a for a in args if not a.startswith("--import")]
  p = _main(home, *rest)                                   # resume: nothing left to train
  assert p.returncode == 0, p.stderr[-3000:]
  assert "[student_kd] results for this config exist" in p.stdout
  p = _main(home, f"--workdir={home / 'W'}", "--mode=report")
  assert p.returncode == 0 and "student_kd" in p.stdout, p.stderr[-3000:]


@pytest.mark.parametrize("extra,expected", [
    (["--import=no_such_terms"], ["--import=no_such_terms", "No module named"]),
    (["--import=my_terms", "--config.stages.student_kd.loss.xyz.temperature=0"],
     ["loss.xyz.temperature", "> 0"]),
    (["--import=my_terms", "--config.stages.student_kd.loss.xyz.layers=(4,)"],
     ["loss.xyz.layers=(4,)", "name stages among 1, 2, 3"]),
    (["--import=my_terms",
      '--config.stages.student_kd.sweep={"loss": {"xyz": {"weight": [1.0, 2.0]}, "sp": {"weight": [1.0, 2.0]}}}'],
     ["sweep.loss.sp.weight", "not in stages.student_kd.loss.terms"]),
], ids=["missing_module", "range", "term_check", "sweep_unlisted_term"])
def test_wrong_imports_and_term_settings_stop_before_training(user, tmp_path, extra, expected):
  home, _ = user
  p = _main(home, f"--config={home / 'cfg.py'}", f"--workdir={tmp_path / 'W'}",
            f"--config.data.path={home / 'd.npz'}", *extra)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
  assert all(e in lines[0] for e in expected), lines[0]
  assert not (tmp_path / "W").exists()


def test_a_recorded_module_that_is_gone_is_one_line(user, tmp_path):
  home, _ = user
  w = tmp_path / "W"
  w.mkdir()
  (w / "config.json").write_text(json.dumps({"imports": ["gone_terms"]}))
  p = _main(home, f"--workdir={w}", "--mode=report")
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2 and len(lines) == 1 and "gone_terms" in lines[0], p.stderr[-3000:]
  assert "config.json records it" in lines[0]
