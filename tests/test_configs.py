"""Every config file in configs/ loads, and every stage it would train passes the checks that run
before training (values, loss terms, sweeps) — without any data or training."""

import glob
import json
import os

import pytest

import jkd.data
from jkd import config as config_lib
from jkd.pipeline import columns, tables
from jkd import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_and_its_stages_pass_the_checks(path, tmp_path):
  config = config_lib.load_file(path)
  if not pipeline.is_pipeline(config):
    config_lib.validate(config)
    return
  # a table config (jkd.pipeline.columns): every column's every stage
  views = [c for _, _, c in columns.expand(config)] if columns.is_table(config) else [config]
  for c in views:
    pipeline.check_structure(c)
    for name in pipeline.stages_to_run(c):
      config_lib.validate(pipeline.stage_config(c, name, str(tmp_path)))


def test_the_table_configs_have_every_row():
  rows = {"kd_signal", "kd_gaf", "kd_pi", "pi_signal", "pi_signal_ann", "pi_signal_ann_sp",
          "gaf_signal", "gaf_signal_ann", "gaf_signal_ann_sp", "three_ebkd", "three_camkd", "three",
          "three_ann", "three_ann_sp", "dcd", "projection", "three_mtkd_rl"}
  for name in ("pamap_table.py", "geneactiv_table.py"):
    config = config_lib.load_file(os.path.join(REPO, "configs", name))
    assert rows <= set(pipeline.kd_stages(config))
    assert {"teacher_signal", "teacher_gaf", "teacher_pi"} <= set(pipeline.stages_to_run(config))
  gene = config_lib.load_file(os.path.join(REPO, "configs", "geneactiv_table.py"))
  assert {"at", "sp", "dist", "dkd", "eskd", "full_kd", "aver", "fitnet", "pefd"} <= set(
      pipeline.kd_stages(gene))
  # ESKD and full KD: the lab's KD from one WRN16-3 teacher, best and last checkpoints
  eskd, full = (pipeline.stage_config(gene, n, "/w") for n in ("eskd", "full_kd"))
  assert eskd.teachers.signal_eskd_early.source == "/w/teacher_signal_eskd"
  assert (eskd.teachers.signal_eskd_early.which, full.teachers.signal_eskd.which) == ("best", "last")
  assert eskd.teachers.signal_eskd_early.model.name == "wrn16_3" == full.teachers.signal_eskd.model.name
  assert eskd.loss.to_dict() == full.loss.to_dict()
  assert "teacher_signal_eskd" in pipeline.stages_to_run(gene)
  # with eskd_epoch: the checkpoint after that epoch, kept by the teacher's stage
  c = pipeline.base(jkd.data.default_config("geneactiv"))
  tables.table(c, baselines=True, eskd_epoch=50)
  assert pipeline.stage_config(c, "eskd", "/w").teachers.signal_early.epoch == 50
  assert 50 in pipeline.stage_config(c, "teacher_signal", "/w").train.keep_epochs
  three = pipeline.stage_config(gene, "three_ann_sp", "/w")
  assert len(config_lib.sweep_points(three)) == 4 and "sp" in three.loss.terms


def test_switching_tensorboard_on_is_the_same_experiment():
  base = json.loads(config_lib.to_json(config_lib.load_file(os.path.join(REPO, "configs",
                                                                          "watch.py"))))
  on = json.loads(json.dumps(base))
  on["train"]["tensorboard"] = True
  assert config_lib.same_experiment(base, on)
  other = json.loads(json.dumps(base))
  other["train"]["epochs"] += 1
  assert not config_lib.same_experiment(base, other)
