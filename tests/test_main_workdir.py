"""End to end through `python -m jkd.main`: results, resume after SIGKILL, several devices and two
processes giving the same results as one, eval/report modes, damaged checkpoints, config refusal.

All trainings use a tiny synthetic `.npz` (4 subjects -> 4 LOSO runs, wrn10_1 on length 16) and are
started together in one module fixture so their start-up overlaps.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jkd.engine import checkpoint, results
from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4


def _data(path):
  # unequal folds: some runs idle
  write_sine_windows(path, [10, 12, 8, 14])


def _args(data, workdir):
  return ["--config=configs/windows.py", f"--workdir={workdir}", f"--config.data.path={data}",
          "--config.model.name=wrn10_1", f"--config.train.epochs={EPOCHS}",
          "--config.train.batch_size=16", "--config.train.checkpoint_every=1",
          "--config.optim.schedule=constant", "--config.optim.lr=0.02"]


# A persistent compilation cache shared by the subprocesses, all on the CPU: bitwise resume and
# equality across device and process layouts are CPU claims (a GPU picks convolution algorithms
# per shape), and two local processes cannot share one GPU.
CACHE = {"JAX_PLATFORMS": "cpu"}


def _start(args, env=None, launcher=None):
  cmd = [sys.executable, *(launcher or ["-m", "jkd.main"]), *args]
  return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **CACHE, **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=300):
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-3000:]
  return out


@pytest.fixture(scope="module")
def w(tmp_path_factory):
  root = tmp_path_factory.mktemp("engine")
  data = str(root / "tiny.npz")
  _data(data)
  CACHE.update(JAX_COMPILATION_CACHE_DIR=str(root / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  d = {k: str(root / k) for k in ("base", "killed", "procs")}
  procs = {
      "base": _start(_args(data, d["base"])),
      # 2 processes x 3 CPU devices: the 4 runs are padded to 6 and sharded over both processes
      "procs": _start(["--num_processes=2", "--", *_args(data, d["procs"])],
                      launcher=["launch/local_multiprocess.py"],
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}),
  }
  while not os.path.isdir(os.path.join(d["base"], "checkpoints", "1")):   # compiled and cached
    assert procs["base"].poll() is None, procs["base"].communicate()[0][-3000:]
    time.sleep(0.05)
  killed = _start(_args(data, d["killed"]))
  saved = os.path.join(d["killed"], "checkpoints", "2")
  while killed.poll() is None:                    # SIGKILL once the epoch-2 checkpoint is final
    if os.path.isdir(saved):
      killed.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  killed.wait()
  d["killed_rc"] = killed.returncode
  d["resumed_out"] = _finish(_start(_args(data, d["killed"])))
  d["outs"] = {k: _finish(p) for k, p in procs.items()}
  d["data"] = data
  return d


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def test_results_json_structure(w):
  res = _results(w["base"])
  assert res["epochs_done"] == EPOCHS and res["best_selected_by"] == "test"
  assert [r["fold"] for r in res["runs"]] == [0, 1, 2, 3]
  assert [r["test_subjects"] for r in res["runs"]] == [[1], [2], [3], [4]]
  for r in res["runs"]:
    assert r["status"] == "ok" and r["seed"] == 1234 and r["sweep"] == {}
    assert 1 <= r["best"]["epoch"] <= EPOCHS
    assert r["final"]["accuracy"] <= r["best"]["accuracy"]
    for m in ("accuracy", "macro_f1"):
      assert 0.0 <= r["final"][m] <= 1.0 and 0.0 <= r["best"][m] <= 1.0
  acc = np.array([r["best"]["accuracy"] for r in res["runs"]])
  np.testing.assert_allclose(res["summary"][0]["best"]["accuracy"]["mean"], acc.mean())
  # confusion matrices agree with the reported accuracies
  conf = np.load(os.path.join(w["base"], "confusion.npz"))
  assert conf["final_test"].shape == (4, 3, 3)
  np.testing.assert_allclose(np.trace(conf["final_test"], axis1=1, axis2=2) /
                             conf["final_test"].sum((1, 2)),
                             [r["final"]["accuracy"] for r in res["runs"]])
  lines = [json.loads(l) for l in open(os.path.join(w["base"], "metrics.jsonl"))]
  assert len(lines) == 4 * EPOCHS and {"loss", "ce", "steps"} <= set(lines[0]["train"])
  final = [l for l in lines if l["epoch"] == EPOCHS]
  assert [l["test"]["accuracy"] for l in final] == [r["final"]["accuracy"] for r in res["runs"]]
  out = w["outs"]["base"]
  assert "ETA" in out and "samples/s" in out and "best acc" in out


def test_resume_after_sigkill_gives_identical_results(w):
  assert w["killed_rc"] == -signal.SIGKILL
  assert "resumed from the checkpoint after epoch" in w["resumed_out"]
  base, resumed = _results(w["base"]), _results(w["killed"])
  assert resumed["runs"] == base["runs"] and resumed["summary"] == base["summary"]
  assert (open(os.path.join(w["killed"], "metrics.jsonl")).read()
          == open(os.path.join(w["base"], "metrics.jsonl")).read())


def test_six_devices_in_two_processes_equal_one(w):
  base = _results(w["base"])
  assert "on 6 device(s) in 2 process(es)" in w["outs"]["procs"] and "6-run" in w["outs"]["procs"]
  for k in ("procs",):
    other = _results(w[k])
    assert len(other["runs"]) == 4                       # padded runs dropped
    for a, b in zip(base["runs"], other["runs"]):
      for which in ("final", "best"):
        for m in ("accuracy", "macro_f1"):
          np.testing.assert_allclose(a[which][m], b[which][m], atol=1e-6)


def test_restore_run_eval_mode_and_damaged_checkpoint(w, tmp_path):
  from jkd.engine import loop
  from jkd.config import load_file
  res = _results(w["base"])
  v = checkpoint.restore_run(w["base"], (2, 1234))
  v2 = checkpoint.restore_run(w["base"], 2)
  assert v["params"]["fc"]["kernel"].shape == (64, 3)
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"], v2["params"]["fc"]["kernel"])
  # --mode=eval on the last step reproduces the final metrics
  config = load_file("configs/windows.py")
  config.data.path, config.model.name = w["data"], "wrn10_1"
  config.train.epochs, config.train.batch_size = EPOCHS, 16
  config.optim.schedule, config.optim.lr = "constant", 0.02
  out = loop.evaluate_checkpoint(config, w["base"])
  assert out["step"] == EPOCHS
  np.testing.assert_allclose([r["test"]["accuracy"] for r in out["runs"]],
                             [r["final"]["accuracy"] for r in res["runs"]])
  # a damaged newest checkpoint falls back to the previous one
  broken = str(tmp_path / "broken")
  shutil.copytree(w["base"], broken)
  state_dir = os.path.join(broken, "checkpoints", str(EPOCHS), "state")
  for dirpath, _, files in os.walk(state_dir):
    for f in files:
      with open(os.path.join(dirpath, f), "wb") as fh:
        fh.write(b"garbage")
  prev = checkpoint.restore_run(w["base"], 2, step=EPOCHS - 1)
  got = checkpoint.restore_run(broken, 2)
  np.testing.assert_array_equal(got["params"]["fc"]["kernel"], prev["params"]["fc"]["kernel"])


def test_report_mode_and_config_refusal(w):
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--workdir={w['base']}", "--mode=report"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == 0 and p.stdout.strip() == results.table(_results(w["base"])).strip()
  args = _args(w["data"], w["base"])
  p = subprocess.run([sys.executable, "-m", "jkd.main", *args, "--config.optim.lr=0.5"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2
  assert "different config" in p.stderr and "optim.lr: 0.02 -> 0.5" in p.stderr
  assert "--overwrite" in p.stderr
