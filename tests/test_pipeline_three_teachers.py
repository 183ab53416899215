"""Three teachers end to end (`python -m jkd.main`): signal, GAF and persistence-image teachers
trained once, a three-teacher KD stage over weight triples (zipped) in one program, and an ESKD
stage (the signal teacher's early checkpoint) with FitNet hints, whose trainable regressor lives
in the train state and checkpoint but not in the student that `restore_run` returns, and an
MTKD-RL stage whose agent (its own optimiser, in the run state) trains from the three teachers."""

import json
import os
import subprocess
import sys

import jax
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
  c.train.update(epochs=1, batch_size=8, eval_batch_size=32, checkpoint_every=1)
  c.optim.schedule = "constant"
  with c.unlocked():
    del c.teachers["image"], c.stages["teacher_image"], c.stages["student_kd"]
  c.teachers.signal.model.name = "wrn10_1"
  pipeline.add_teacher(c, "gaf", {"name": "wrn10_1", "ndim": 2, "image": "gaf", "image_size": 8})
  pipeline.add_teacher(c, "pi", {"name": "wrn10_1", "ndim": 2, "image": "pi", "image_size": 8})
  c.stages.student_scratch.model.name = "wrn10_1"
  three = pipeline.add_kd_stage(c, "three", ("gaf", "pi", "signal"), ("ce", "kd", "sp"))
  three.loss.sp.update(weight=50.0, layers=(1, 2, 3))
  three.sweep = {"zip": {"teachers": {"gaf": {"weight": (.2, .3)}, "pi": {"weight": (.2, .3)},
                                      "signal": {"weight": (.6, .4)}}}}
  # ESKD: the signal teacher as it was after epoch 1 of 2, a checkpoint its stage must keep; with
  # FitNet hints from it (a term with a trainable regressor)
  c.stages.teacher_signal.train.update(epochs=2, keep_checkpoints=1)
  pipeline.add_early_teacher(c, "signal_early", "signal", 1)
  eskd = pipeline.add_kd_stage(c, "eskd", ("signal_early",), ("ce", "kd", "fitnet"))
  eskd.distill.init_from_scratch = False
  rl = pipeline.add_kd_stage(c, "three_rl", ("gaf", "pi", "signal"), ("ce", "mtkd_rl"))
  rl.loss.mtkd_rl.agent_step = 1
  return c
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("three")
  (tmp / "cfg.py").write_text(CONFIG)
  write_sine_windows(tmp / "d.npz", [10, 12, 8])
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={tmp / 'W'}", f"--config.data.path={tmp / 'd.npz'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return tmp / "W", p.stdout


def test_three_teachers_trained_once_and_distilled_in_one_program(trained):
  w, out = trained
  full = json.loads((w / "results.json").read_text())
  assert {"teacher_signal", "teacher_gaf", "teacher_pi", "student_scratch", "three",
          "eskd", "three_rl"} == set(full["stages"])
  assert full["stages"]["teacher_pi"]["experiment"]["ndim"] == 2
  three = full["stages"]["three"]
  assert len(three["runs"]) == 6 and all(r["status"] == "ok" for r in three["runs"])
  points = {tuple(sorted(r["sweep"].items())) for r in three["runs"]}
  assert len(points) == 2
  cfg = json.loads((w / "three" / "config.json").read_text())
  assert cfg["distill"]["teachers"] == ["gaf", "pi", "signal"]
  assert cfg["teachers"]["pi"]["model"]["image"] == "pi"
  assert cfg["teachers"]["pi"]["source"] == str(w / "teacher_pi")
  for t in ("gaf", "pi", "signal"):
    assert f"teacher {t}: logits, stage (1, 2, 3) outputs cached" in out
  gains = {(g["stage"], g["sweep"]) for g in full["kd_gain"]}
  assert {g[0] for g in gains} == {"three", "eskd", "three_rl"}


def test_eskd_teacher_is_the_early_checkpoint(trained):
  w, _ = trained
  from jkd.engine import checkpoint, teachers
  import ml_collections as mc
  assert checkpoint.steps(str(w / "teacher_signal")) == [1, 2]   # 1 kept beyond keep_checkpoints
  cfg = mc.ConfigDict(json.loads((w / "eskd" / "config.json").read_text()))
  spec = cfg.teachers.signal_early
  assert (spec.source, spec.epoch) == (str(w / "teacher_signal"), 1)
  (t,) = teachers.build(cfg, num_classes=3)
  from jkd.engine.runs import Run
  got = teachers.load(t, [Run(0, 1, 1234, {})], [(2,), (1,), (3,)], 3)
  early = checkpoint.restore_runs(str(w / "teacher_signal"), [1], step=1)
  last = checkpoint.restore_runs(str(w / "teacher_signal"), [1])
  for a, b, c in zip(jax.tree.leaves(got), jax.tree.leaves(early), jax.tree.leaves(last)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(b, c) for b, c in zip(jax.tree.leaves(early),
                                                       jax.tree.leaves(last)))


def test_trainable_parts_are_checkpointed_but_not_part_of_the_student(trained):
  w, _ = trained
  from jkd.engine import checkpoint
  raw = checkpoint._restore_raw(str(w / "eskd"), None)
  reg = raw["params"]["distill"]["fitnet"]["0"]
  assert jax.tree.leaves(reg) and all(np.asarray(a).shape[0] == 3 for a in jax.tree.leaves(reg))
  assert "distill" in raw["batch_stats"]
  student = checkpoint.restore_run(str(w / "eskd"), 0)
  assert "distill" not in student["params"] and "distill" not in student["batch_stats"]
  scratch = checkpoint.restore_run(str(w / "student_scratch"), 0)
  assert set(student["params"]) == set(scratch["params"])


def test_the_mtkd_rl_agent_trains_in_the_run_state(trained):
  w, _ = trained
  from jkd.engine import checkpoint
  full = json.loads((w / "results.json").read_text())
  assert all(r["status"] == "ok" for r in full["stages"]["three_rl"]["runs"])
  raw = checkpoint._restore_raw(str(w / "three_rl"), None)
  term_vars = raw["batch_stats"]["distill"]["mtkd_rl"]
  # three teachers: state sizes embedding + classes + 3 each; one stored batch or none per run
  assert np.asarray(term_vars["states"]).shape[-1] == sum(
      np.asarray(raw["params"]["distill"]["mtkd_rl"][k]["conv1"]["kernel"]).shape[-1] + 3 + 3
      for k in ("0", "1", "2"))
  stem = np.asarray(term_vars["agent"]["stem"])
  assert stem.shape[0] == 3 and np.all(np.isfinite(stem))
  states, rewards = np.asarray(term_vars["states"]), np.asarray(term_vars["rewards"])
  assert np.any(states != 0)                                  # batches were stored
  assert np.all((rewards >= 0) & (rewards <= 1))
  student = checkpoint.restore_run(str(w / "three_rl"), 0)
  assert "distill" not in student["params"] and "distill" not in student["batch_stats"]
