"""`train.tensorboard=True`: event files per run under W/tensorboard/, read back with TensorBoard's
own reader, equal to metrics.jsonl; a resumed run writes no epoch twice; progress lines inside
epochs; a missing tensorboardX stops with one line before training (exit 2)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorboardX")

import jkd.data
from jkd import config as config_lib
from jkd.engine import loop
from jkd.engine import tensorboard as tb

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 3


def _config(data):
  c = config_lib.base(jkd.data.default_config("windows"))
  c.data.path = data
  c.model.name = "wrn10_1"
  c.train.epochs = EPOCHS
  c.train.batch_size = 16
  c.train.checkpoint_every = 1
  c.train.tensorboard = True
  c.optim.schedule = "constant"
  c.optim.lr = 0.02
  c.sweep = {"optim": {"lr": (0.02, 0.05)}}
  return c


def _accumulate(run_dir):
  """{tag: [(step, value)]} with TensorBoard's EventAccumulator (no TensorFlow needed), or
  jkd's own reader where the tensorboard package is not installed."""
  try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  except ImportError:
    return tb.read_scalars(run_dir)
  acc = EventAccumulator(run_dir)
  acc.Reload()
  return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _wall_times(run_dir):
  return {e.step: e.wall_time for e in tb.read_events(run_dir)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("tb")
  data = str(root / "tiny.npz")
  write_sine_windows(data, [10, 12, 8])
  workdir = str(root / "w")
  config = _config(data)
  mp = pytest.MonkeyPatch()
  mp.setattr(loop, "PROGRESS_SECONDS", 0.0)    # a progress line after every (1-step) chunk
  import io
  import contextlib
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    first = loop.train(config, workdir)
  mp.undo()
  board = os.path.join(workdir, tb.DIRNAME)
  before = {n: (_accumulate(os.path.join(board, n)), _wall_times(os.path.join(board, n)))
            for n in os.listdir(board)}
  # Killed after writing epoch 3's events, before its checkpoint was final: resume from epoch 2.
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(EPOCHS)))
  os.remove(os.path.join(workdir, "results.json"))
  resumed_out = io.StringIO()
  with contextlib.redirect_stdout(resumed_out):
    resumed = loop.train(config, workdir)
  return dict(workdir=workdir, board=board, before=before, first=first, resumed=resumed,
              out=out.getvalue(), resumed_out=resumed_out.getvalue())


def test_one_event_directory_per_run_and_a_mean_per_sweep_point(trained):
  names = sorted(os.listdir(trained["board"]))
  runs = json.load(open(os.path.join(trained["workdir"], "runs.json")))
  expected = sorted([f"fold{r['fold']}_seed{r['seed']}_lr={r['sweep']['optim.lr']:g}" for r in runs]
                    + ["mean_lr=0.02", "mean_lr=0.05"])
  assert names == expected and len(runs) == 6
  for n in names:
    assert len([f for f in os.listdir(os.path.join(trained["board"], n))
                if "tfevents" in f]) == 1


def test_scalars_equal_metrics_jsonl(trained):
  records = [json.loads(line) for line in open(os.path.join(trained["workdir"], "metrics.jsonl"))]
  assert len(records) == 6 * EPOCHS
  for r in records:
    name = tb.run_name(r["fold"], r["seed"], r["sweep"])
    scalars = _accumulate(os.path.join(trained["board"], name))
    assert {"train/loss", "lr", "test/accuracy", "test/macro_f1", "test/loss"} <= set(scalars)
    assert "train/steps" not in scalars
    for tag, value in tb.scalars(r).items():
      points = dict(scalars[tag])
      assert [s for s, _ in scalars[tag]] == list(range(1, EPOCHS + 1))
      assert points[r["epoch"]] == np.float32(value), (name, tag)
  mean = dict(_accumulate(os.path.join(trained["board"], "mean_lr=0.05"))["test/accuracy"])
  for e in range(1, EPOCHS + 1):
    accs = [r["test"]["accuracy"] for r in records
            if r["epoch"] == e and r["sweep"]["optim.lr"] == 0.05]
    assert mean[e] == pytest.approx(np.mean(accs), rel=1e-6)


def test_resume_writes_the_epochs_after_the_checkpoint_once(trained):
  assert "resumed from the checkpoint after epoch 2" in trained["resumed_out"]
  for name, (scalars, walls) in trained["before"].items():
    run_dir = os.path.join(trained["board"], name)
    now = _accumulate(run_dir)
    assert now == scalars, name              # the same values: resume is bit-identical
    for tag, points in now.items():
      assert [s for s, _ in points] == [1, 2, 3], (name, tag)
    new_walls = _wall_times(run_dir)
    assert {e: new_walls[e] for e in (1, 2)} == {e: walls[e] for e in (1, 2)}   # carried over
    assert new_walls[3] > walls[3]           # rewritten by the resumed session


def test_progress_lines_and_chunked_epochs_give_identical_results(trained):
  # The first training ran every epoch in 1-step chunks; the resumed one in paced chunks.
  assert trained["resumed"]["runs"] == trained["first"]["runs"]
  lines = [l for l in trained["out"].splitlines() if l.strip().startswith("epoch 1/3  step")]
  assert lines and "ETA" in lines[-1] and "train loss" in lines[-1]
  assert "first step (with compilation) done in" in trained["out"]


def test_run_names():
  assert tb.run_name(0, 1234, {}) == "fold0_seed1234"
  assert tb.run_name(3, 7, {"loss.alpha": 0.3, "loss.beta": 200.0}) == \
      "fold3_seed7_alpha=0.3_beta=200"
  assert tb.point_name({"optim.gamma": 0.1, "loss.gamma": 2.0}) == \
      "optim.gamma=0.1_loss.gamma=2"
  assert tb.mean_name({}) == "mean"


def test_a_cut_record_is_dropped_on_resume(tmp_path):
  board = tb.Board(str(tmp_path), start=0)
  rec = {"epoch": 1, "run": 0, "fold": 0, "seed": 1, "sweep": {}, "lr": 0.1, "failed": False,
         "train": {"loss": 1.0, "steps": 3.0}, "test": {"loss": 2.0, "accuracy": 0.5}}
  board.write([rec, dict(rec, run=1, fold=1, failed=True)])
  board.write([dict(rec, epoch=2)])
  path = board.files["fold0_seed1"]
  with open(path, "r+b") as f:               # killed while writing epoch 2
    f.truncate(os.path.getsize(path) - 5)
  assert tb.read_scalars(str(tmp_path / "tensorboard" / "fold0_seed1"))["lr"] == [(1, pytest.approx(0.1))]
  again = tb.Board(str(tmp_path), start=1)
  again.write([dict(rec, epoch=2, lr=0.2)])
  scalars = _accumulate(str(tmp_path / "tensorboard" / "fold0_seed1"))
  assert scalars["lr"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2))]
  mean = tb.read_scalars(str(tmp_path / "tensorboard" / "mean"))
  assert mean["train/loss"] == [(1, 1.0), (2, 1.0)]        # the failed run is left out


def test_missing_tensorboardx_stops_before_training_with_exit_2(tmp_path):
  workdir = tmp_path / "w"
  code = ("import sys, runpy; sys.modules['tensorboardX'] = None; "
          "runpy.run_module('jkd.main', run_name='__main__')")
  p = subprocess.run([sys.executable, "-c", code, "--config=configs/watch.py",
                      f"--workdir={workdir}", "--config.train.tensorboard=True"],
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
  (line,) = p.stderr.strip().splitlines()
  assert "train.tensorboard=True needs tensorboardX" in line and "jkd[tensorboard]" in line
  assert not workdir.exists()
