"""A table's columns (`jkd.pipeline.columns`): expansion of the lab's table configs, which stages run once,
the one-line errors (exit 2), and a tiny two-column table end to end through `python -m
jkd.main` (shared scratch student trained once, table files, provenance, `--mode=report`)."""

import json
import os
import subprocess
import sys

import pytest

import table_setup
from synthetic import write_sine_windows
from test_user_errors import run as run_main

from jkd.pipeline import columns
from jkd import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''
import jkd.data
from jkd.pipeline import columns
from jkd import pipeline


def get_config():
  c = pipeline.base(jkd.data.default_config("windows"))
  c.model.name = "wrn10_1"
  c.train.epochs = 1
  c.train.batch_size = 8
  c.train.eval_batch_size = 32
  c.optim.schedule = "constant"
  with c.unlocked():
    del c.teachers["image"], c.stages["teacher_image"]
  c.teachers.signal.model.name = "wrn10_1"
  c.stages.student_scratch.model.name = "wrn10_1"
  c.stages.student_kd.distill.teachers = ("signal",)
  pipeline.add_teacher(c, "other", {"name": "wrn10_1", "ndim": 1})   # the same in both columns
  pipeline.add_kd_stage(c, "kd_other", ("other",))
  columns.add(c, "narrow", "WRN10-1", {"teachers.signal.model.name": "wrn10_1"})
  columns.add(c, "wide", "WRN10-2", {"teachers.signal.model.name": "wrn10_2"})
  return c
'''


def _cfg(path):
  return config_lib.load_file(os.path.join(REPO, path))


def test_lab_tables_expand_into_their_columns_and_share_the_scratch_student():
  cols = columns.expand(_cfg("configs/pamap_table.py"))
  assert [label for _, label, _ in cols] == ["WRN16-1", "WRN16-3", "WRN28-1", "WRN28-3"]
  for key, _, c in cols:
    assert {c.teachers[t].model.name for t in ("signal", "gaf", "pi")} == {key}
  shared = columns.shared_stages(cols, "/w")
  assert shared == {"wrn16_1": {}, **{k: {"student_scratch": "wrn16_1"}
                                      for k in ("wrn16_3", "wrn28_1", "wrn28_3")}}
  g = columns.expand(_cfg("configs/geneactiv_table.py"))
  assert [(c.data.num_classes, c.data.window) for _, _, c in g] == [(7, 1000), (7, 500), (14, 500)]
  assert not any(columns.shared_stages(g, "/w").values())     # other data: nothing repeats
  d = columns.expand(_cfg("configs/demo_table.py"))
  assert len(d) == 2
  assert columns.shared_stages(d, "/w")["wrn10_1"] == {   # the rows the signal teacher is not in
      s: "wrn16_1" for s in ("teacher_gaf", "teacher_pi", "student_scratch", "kd_gaf", "kd_pi")}


@pytest.mark.parametrize("overrides,expected", [
    ({"teachers.signal.model.nmae": "wrn16_3"}, "names no key"),
    ({"train.epochs": "many"}, "train.epochs"),
])
def test_a_bad_column_override_is_one_config_error(overrides, expected):
  c = _cfg("configs/demo_table.py")
  columns.add(c, "bad", "bad", overrides)
  with pytest.raises(config_lib.ConfigError, match=expected):
    columns.expand(c)


def test_two_columns_with_the_same_overrides_are_refused():
  c = _cfg("configs/demo_table.py")
  columns.add(c, "again", "again", {"teachers.signal.model.name": "wrn10_1"})
  with pytest.raises(config_lib.ConfigError, match="same overrides"):
    columns.expand(c)


@pytest.mark.parametrize("extra,expected", [
    ('columns.add(c, "bad", "x", {"teachers.signal.model.nmae": "wrn10_2"})', "names no key"),
    ('columns.add(c, "same", "x", {"teachers.signal.model.name": "wrn10_2"})', "same overrides"),
])
def test_column_errors_exit_2_with_one_line(tmp_path, extra, expected):
  (tmp_path / "cfg.py").write_text(CONFIG.replace("  return c\n", f"  {extra}\n  return c\n"))
  write_sine_windows(tmp_path / "d.npz", [10, 12, 8])
  code, err = run_main([f"--config={tmp_path / 'cfg.py'}", f"--workdir={tmp_path / 'W'}",
                        f"--config.data.path={tmp_path / 'd.npz'}"])
  assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / "W").exists()


def test_report_over_workdirs_of_different_tables_exits_2(tmp_path):
  w = table_setup.make(tmp_path / "W", columns=("a", "b"), stages=table_setup.STAGES[:6])
  stages = json.loads(open(os.path.join(w, "b", "stages.json")).read())
  json.dump(stages[:-1], open(os.path.join(w, "b", "stages.json"), "w"))
  code, err = run_main([f"--workdir={w}", "--mode=report"])
  assert code == 2 and "different tables" in err and len(err.strip().splitlines()) == 1, err
  # workdirs trained separately and gathered under one directory form a table too
  u = tmp_path / "U"
  os.makedirs(u)
  for k in ("a", "b"):
    table_setup.make(tmp_path / f"sep_{k}", columns=(k,), stages=table_setup.STAGES[:6])
    os.symlink(tmp_path / f"sep_{k}" / k, u / k)
  code, err = run_main([f"--workdir={u}", "--mode=report"])
  assert code == 0, err
  assert (u / "table.md").exists() and "| a | b |" in (u / "table.md").read_text()


def test_two_column_table_end_to_end(tmp_path):
  (tmp_path / "cfg.py").write_text(CONFIG)
  write_sine_windows(tmp_path / "d.npz", [10, 12, 8])
  w = tmp_path / "W"
  argv = [sys.executable, "-m", "jkd.main", f"--config={tmp_path / 'cfg.py'}", f"--workdir={w}",
          f"--config.data.path={tmp_path / 'd.npz'}"]
  p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  for stage in ("student_scratch", "teacher_other", "kd_other"):     # shared: trained once
    assert p.stdout.count(f"[{stage}] training") == 1, stage
    assert f"[{stage}] retraining" not in p.stdout, stage
    assert os.path.islink(w / "wide" / stage)
  for stage in ("teacher_signal", "student_kd"):
    assert p.stdout.count(f"[{stage}] training") == 2, stage
  for name in ("table.md", "table.csv", "table.tex", "results.json", "table.json"):
    assert (w / name).exists(), name
  table = (w / "table.md").read_text()
  assert "| WRN10-1 | WRN10-2 |" in table and "## Provenance" in table
  for res in (w / "narrow" / "student_kd" / "results.json", w / "narrow" / "results.json"):
    prov = json.loads(res.read_text())["provenance"]
    assert set(prov["packages"]) == {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"}
    assert prov["devices"]["count"] >= 1 and prov["processor"] and "XLA_FLAGS" in prov["xla"]
    assert prov["git"]["commit"] and "dirty" in prov["git"]    # the tests run from a checkout
  assert "## Provenance" in (w / "narrow" / "report.md").read_text()
  os.remove(w / "table.md")
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--workdir={w}", "--mode=report"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert (w / "table.md").read_text().split("## Provenance")[0] == table.split("## Provenance")[0]
  p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0 and "training" not in p.stdout, p.stdout[-2000:]
