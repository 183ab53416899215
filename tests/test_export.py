"""`python -m jkd.export` and the report's complexity table (issue 22).

One tiny pipeline (1 fold of synthetic sines, 1 epoch: a 1-D WRN signal teacher, a 2-D WRN on
8 x 8 GADF images, the scratch student and a KD + SimKD student that predicts through its projector
and the signal teacher's classifier) is trained once; its stages are exported through ONNX and
run by onnxruntime on the fold's test windows: logits within 1e-4 of jkd's, the same accuracy as
results.json, a dynamic batch; int8 accuracy recorded; the user errors; ResNet and ResNeXt
round trips, the persistence-image refusal and the FLOP count against a hand count (no training).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections as mc
import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")

import jkd.models  # noqa: E402
from jkd.export import ExportError, complexity  # noqa: E402
from jkd.export import onnx as ox  # noqa: E402
from jkd.export import runtime  # noqa: E402
from jkd.export.__main__ import run as export_run  # noqa: E402
from jkd.images import image_input  # noqa: E402
from synthetic import write_sine_windows  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = '''
import jkd.data
from jkd import pipeline


def get_config():
  c = pipeline.base(jkd.data.default_config("windows"))
  c.data.test_subjects = (1,)
  c.model.name = "wrn10_1"
  c.train.epochs = 1
  c.train.batch_size = 8
  c.train.eval_batch_size = 32
  c.optim.schedule = "constant"
  c.teachers.signal.model.name = "wrn10_1"
  c.teachers.image.model.name = "wrn10_1"
  c.teachers.image.model.image_size = 8
  c.stages.student_scratch.model.name = "wrn10_1"
  c.stages.student_kd = pipeline.kd_stage(c, ("signal", "image"), ("ce", "kd", "simkd"))
  return c
'''


@pytest.fixture(scope="module")
def w(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  (tmp / "cfg.py").write_text(CONFIG)
  write_sine_windows(tmp / "d.npz", [10, 12, 8])
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={tmp / 'cfg.py'}",
                      f"--workdir={tmp / 'W'}", f"--config.data.path={tmp / 'd.npz'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=600,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return tmp


def _final_accuracy(stage_dir, run=0):
  res = json.loads((stage_dir / "results.json").read_text())
  return next(r for r in res["runs"] if r["run"] == run)["final"]["accuracy"]


@pytest.mark.parametrize("stage", ["teacher_signal", "teacher_image", "student_kd"])
def test_onnx_round_trip_matches_jkd_and_results(w, stage):
  out = w / f"{stage}.onnx"
  rec = export_run(str(w / "W"), stage, 0, "last", str(out),
                   quantize="int8" if stage == "student_kd" else None, log=lambda s: None)
  assert rec["max_abs_logit_diff"] < 1e-4
  assert rec["test_windows"] > 0
  assert rec["onnx_accuracy"] == pytest.approx(_final_accuracy(w / "W" / stage), abs=1e-9)
  assert json.loads((w / f"{stage}.onnx.json").read_text())["bytes"] == os.path.getsize(out)
  sess = runtime.session(str(out))
  assert sess.get_inputs()[0].shape[0] == "batch"
  x = np.random.default_rng(0).normal(size=(3, 16, 3)).astype(np.float32)
  assert np.allclose(runtime.predict(sess, x[:1])[0], runtime.predict(sess, x)[0], atol=1e-5)
  if stage == "student_kd":
    q = rec["int8"]
    assert os.path.exists(q["path"]) and q["bytes"] < rec["bytes"]
    assert 0.0 <= q["accuracy"] <= 1.0 and q["calibration_windows"] > 0


def test_best_epoch_export_matches_results(w):
  stage = w / "W" / "teacher_signal"
  rec = export_run(str(w / "W"), "teacher_signal", 0, "best", str(w / "best.onnx"),
                   log=lambda s: None)
  best = json.loads((stage / "results.json").read_text())["runs"][0]["best"]["accuracy"]
  assert rec["onnx_accuracy"] == pytest.approx(best, abs=1e-9) and rec["which"] == "best"


def test_stablehlo_format_round_trip(w):
  out = w / "signal.stablehlo"
  rec = export_run(str(w / "W"), "teacher_signal", 0, "last", str(out), fmt="stablehlo")
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  x = np.random.default_rng(1).normal(size=(5, 16, 3)).astype(np.float32)
  assert exported.call(x).shape == (5, 3)
  assert rec["format"] == "stablehlo"


def test_user_errors_are_one_line_and_write_nothing(w, tmp_path, monkeypatch):
  W = w / "W"
  out = tmp_path / "m.onnx"
  cases = {"no stage 'student_x'": dict(workdir=str(W), stage="student_x"),
           "no run 5": dict(workdir=str(W), stage="teacher_signal", run_index=5),
           "pick a stage with --stage": dict(workdir=str(W), stage=None)}
  empty = tmp_path / "empty"
  shutil.copytree(W / "teacher_signal", empty, ignore=shutil.ignore_patterns("checkpoints"))
  cases["has no checkpoints"] = dict(workdir=str(empty), stage=None)
  nobest = tmp_path / "nobest"
  shutil.copytree(W / "teacher_signal", nobest)
  res = json.loads((nobest / "results.json").read_text())
  res["runs"][0]["best"]["epoch"] = None
  (nobest / "results.json").write_text(json.dumps(res))
  cases["kept no best epoch"] = dict(workdir=str(nobest), stage=None, which="best")
  for want, kw in cases.items():
    kw = {"run_index": 0, "which": "last", **kw}
    with pytest.raises(ExportError, match=want):
      export_run(kw["workdir"], kw["stage"], kw["run_index"], kw["which"], str(out))
    assert not out.exists()
  monkeypatch.setattr(ox, "available", lambda: False)     # the export extra not installed
  with pytest.raises(ExportError, match=r"pip install 'jkd\[export\]'"):
    export_run(str(W), "teacher_signal", 0, "last", str(out))
  assert not out.exists()
  p = subprocess.run([sys.executable, "-m", "jkd.export", f"--workdir={W}", "--stage=nope",
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
  assert "no stage 'nope'" in p.stderr and not out.exists()


def test_report_has_every_stage_complexity(w):
  full = json.loads((w / "W" / "results.json").read_text())
  rows = full["complexity"]
  assert set(rows) == {"teacher_signal", "teacher_image", "student_scratch", "student_kd"}
  for name, r in rows.items():
    assert r["parameters"] > 0 and r["flops"] > 0, (name, r)
    assert r["float"]["bytes"] > r["int8"]["bytes"] > 0
    assert r["float"]["latency_ms"] > 0 and r["int8"]["latency_ms"] > 0
  # SimKD predicts through its projector and the signal teacher's classifier: more parameters
  assert rows["student_kd"]["parameters"] > rows["student_scratch"]["parameters"]
  md = (w / "W" / "report.md").read_text()
  assert "## Model complexity" in md and "| student_kd | wrn10_1 1-D |" in md
  assert "| teacher_image | wrn10_1 2-D on 8x8 GAF |" in md


def _random_model(name, ndim=1, image="gaf", length=16, channels=3, classes=5):
  m = jkd.models.create(name, num_classes=classes, ndim=ndim, conv_impl="lax")
  cfg = mc.ConfigDict({"ndim": ndim, "image": image, "image_size": 8,
                       "gaf_method": "difference", "pi": {}})
  inp = lambda x: image_input(cfg, x, x)
  x = np.random.default_rng(0).normal(size=(4, length, channels)).astype(np.float32)
  shapes = jax.eval_shape(lambda x: m.init(jax.random.PRNGKey(0), inp(x), train=False), x)
  rng = np.random.default_rng(1)   # no compiled init: kernels ~ 1/sqrt(fan-in), variances > 0

  def value(path, s):
    if "var" in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
    fan_in = np.prod(s.shape[:-1]) if len(s.shape) > 1 else 100
    return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(s.dtype)
  v = jax.tree_util.tree_map_with_path(value, shapes)
  return (lambda x: m.apply(v, inp(x), train=False)[0]), x


@pytest.mark.parametrize("name", ["resnet18", "resnext1d"])
def test_resnet_and_resnext_round_trip(name):
  fn, x = _random_model(name)
  sess = runtime.session(ox.to_onnx(fn, x))
  np.testing.assert_allclose(runtime.predict(sess, x), np.asarray(jax.jit(fn)(x)), atol=1e-4)


def test_persistence_images_are_refused():
  fn, x = _random_model("wrn10_1", ndim=2, image="pi")
  with pytest.raises(ox.Unsupported, match="scan"):
    ox.to_onnx(fn, x)


def test_wrn16_1_flops_against_a_hand_count():
  L, C, K = 100, 40, 12
  fn, x = _random_model("wrn16_1", length=L, channels=C, classes=K)
  conv = lambda length, k, cin, cout: length * k * cin * cout       # multiply-adds, 'same' pad
  L2 = (L + 2 - 3) // 2 + 1                                         # stride 2, pad 1: 50
  L3 = (L2 + 2 - 3) // 2 + 1                                        # 25
  macs = (conv(L, 3, C, 16)                                         # stem
          + 2 * (conv(L, 3, 16, 16) + conv(L, 3, 16, 16))           # stage 1: 2 blocks
          + conv(L2, 3, 16, 32) + conv(L2, 3, 32, 32) + conv(L2, 1, 16, 32)   # stage 2, block 0
          + conv(L2, 3, 32, 32) + conv(L2, 3, 32, 32)
          + conv(L3, 3, 32, 64) + conv(L3, 3, 64, 64) + conv(L3, 1, 32, 64)   # stage 3, block 0
          + conv(L3, 3, 64, 64) + conv(L3, 3, 64, 64)
          + 64 * K)                                                 # fc
  assert macs == 2_189_568
  assert complexity.count_flops(fn, x) == 2 * macs
  xla = complexity.xla_flops(fn, x)
  if xla is not None:      # XLA skips the padded taps but adds BN, ReLU and the residual adds
    assert 0.8 < xla / (2 * macs) < 1.3
