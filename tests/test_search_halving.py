"""A search end to end through `python -m jkd.main`: successive halving trains each rung as a
smaller program, the winner's numbers are those of a plain run of its point, the choice reads
validation only (test metrics corrupted: the same choice), and a killed search resumes without
retraining its finished rungs.

Tiny: 6 points x 2 folds (4 subjects, one validation subject per fold) on a synthetic npz,
rungs after epochs 1 and 2 of 3, eta 2: programs of 12, 6 and 2 runs.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from synthetic import write_sine_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The same device count in every process: XLA:CPU's rounding depends on it.
ENV = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=12"}

CONFIG = '''
import jkd.data
from jkd import config as config_lib, search

def get_config(arg=None):
  c = config_lib.base(jkd.data.default_config("windows"))
  c.data.path = {data!r}
  c.data.num_folds = 2
  c.data.num_val_subjects = 1
  c.model.name = "wrn10_1"
  c.train.epochs = 3
  c.train.batch_size = 8
  c.train.checkpoint_every = 1
  c.optim.schedule = "cosine"
  c.search = search.default_config(points=6, sampler="random", seed=0, waves=1)
  if arg != "plain":
    c.search.space = {{"optim": {{"lr": ("log", 0.001, 0.2), "weight_decay": ("uniform", 0.0, 0.001)}}}}
    c.search.halving.rungs = (1, 2)
    c.search.halving.eta = 2
  return c
'''


def _start(*args):
  return subprocess.Popen([sys.executable, "-m", "jkd.main", *args], cwd=REPO,
                          env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(p, timeout=400):
  out, _ = p.communicate(timeout=timeout)
  assert p.returncode == 0, out[-4000:]
  return out


def _csv(w):
  with open(os.path.join(w, "search.csv")) as f:
    return list(csv.DictReader(f))


def _json(*path):
  with open(os.path.join(*path)) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("search")
  data = str(root / "tiny.npz")
  write_sine_windows(data, [10, 12, 8, 14])
  cfg = root / "cfg.py"
  cfg.write_text(CONFIG.format(data=data))
  w = str(root / "w")
  out = _finish(_start(f"--config={cfg}", f"--workdir={w}"))
  return {"root": root, "cfg": str(cfg), "w": w, "out": out}


def test_halving_trains_smaller_programs(env):
  w = env["w"]
  sizes = [len(_json(w, f"rung{k}", "runs.json")) for k in range(3)]
  assert sizes == [12, 6, 2]                       # 6 -> 3 -> 1 points, x 2 folds
  assert [_json(w, f"rung{k}", "results.json")["epochs_done"] for k in range(3)] == [1, 2, 3]
  rows = _csv(w)
  assert len(rows) == 6 and list(rows[0]) == ["point", "optim.lr", "optim.weight_decay", "wave",
                                             "epochs", "pruned", "val_accuracy", "test_accuracy",
                                             "chosen"]
  assert sorted(int(r["epochs"]) for r in rows) == [1, 1, 1, 2, 2, 3]
  assert [r["chosen"] for r in rows].count("True") == 1
  s = _json(w, "search.json")
  assert s["run_epochs"] == 12 * 1 + 6 * 1 + 2 * 1 and s["run_epochs_without_halving"] == 36
  # each rung kept the best half on validation accuracy (mean over the folds)
  by_epochs = lambda e: [r for r in rows if int(r["epochs"]) >= e]
  for e in (1, 2):
    reached = by_epochs(e)
    went_on = {r["point"] for r in by_epochs(e + 1)}
    res = _json(w, f"rung{e - 1}", "results.json")
    per = {}
    for run in res["runs"]:
      per.setdefault(json.dumps(run["sweep"], sort_keys=True), []).append(
          run["final"]["val"]["accuracy"])
    ranked = sorted(per, key=lambda k: -sum(per[k]) / len(per[k]))
    assert len(went_on) == len(reached) // 2
    kept = {json.dumps({"optim.lr": float(r["optim.lr"]),
                        "optim.weight_decay": float(r["optim.weight_decay"])}, sort_keys=True)
            for r in by_epochs(e + 1)}
    assert kept == set(ranked[:len(went_on)])
  assert "chosen on validation accuracy" in env["out"] and "run-epochs spent: 20" in env["out"]
  # the study in W/search.db: 5 points told PRUNED, the winner COMPLETE with its val accuracy,
  # each with its rungs' validation accuracies as intermediate values
  import optuna
  trials = optuna.load_study(study_name="jkd", storage=f"sqlite:///{w}/search.db").get_trials()
  states = [t.state.name for t in trials]
  assert states.count("PRUNED") == 5 and states.count("COMPLETE") == 1
  for t, r in zip(trials, rows):
    assert sorted(t.intermediate_values) == [1, 2, 3][:int(r["epochs"])]
    assert t.intermediate_values[int(r["epochs"])] == float(r["val_accuracy"])
  assert [t for t in trials if t.state.name == "COMPLETE"][0].value == float(
      [r for r in rows if r["chosen"] == "True"][0]["val_accuracy"])


def test_winner_equals_a_plain_run(env):
  s = _json(env["w"], "search.json")
  win = s["winner"]
  plain = str(env["root"] / "plain")
  sweep = json.dumps({"zip": {"optim": {"lr": [win["optim.lr"]],
                                        "weight_decay": [win["optim.weight_decay"]]}}})
  _finish(_start(f"--config={env['cfg']}:plain", f"--workdir={plain}", f"--config.sweep={sweep}"))
  a = _json(env["w"], "rung2", "results.json")["runs"]
  b = _json(plain, "results.json")["runs"]
  strip = lambda runs: [{k: r[k] for k in ("fold", "seed", "sweep", "final", "best", "status")}
                        for r in runs]
  assert strip(a) == strip(b)
  last = lambda path: [json.loads(l) for l in open(path)][-2:]
  ra, rb = last(os.path.join(env["w"], "rung2", "metrics.jsonl")), last(
      os.path.join(plain, "metrics.jsonl"))
  assert [r["epoch"] for r in ra] == [3, 3] and ra == rb   # train loss, test and val, bit for bit
  # W/results.json and W/metrics.jsonl: the winner's runs over every rung, as the plain run's
  assert strip(_json(env["w"], "results.json")["runs"]) == strip(b)
  every = lambda path: [json.loads(l) for l in open(path)]
  assert every(os.path.join(env["w"], "metrics.jsonl")) == every(os.path.join(plain, "metrics.jsonl"))
  assert s["winner_test_accuracy"]["final"]["mean"] == pytest.approx(
      sum(r["final"]["accuracy"] for r in b) / len(b))


def test_two_processes_search_as_one(env):
  """A search across 2 processes x 6 CPU devices (process 0 asks and tells the study, the other
  trains the same programs) gives the one-process search's points, choice and numbers bit for
  bit: one run per device in both."""
  w = str(env["root"] / "procs")
  p = subprocess.Popen([sys.executable, "launch/local_multiprocess.py", "--num_processes=2", "--",
                        f"--config={env['cfg']}", f"--workdir={w}"], cwd=REPO,
                       env={**os.environ, "JAX_PLATFORMS": "cpu",
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=6"},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = _finish(p)
  assert "in 2 process(es)" in out
  one, two = _csv(env["w"]), _csv(w)
  same = lambda rows: [{k: r[k] for k in r if k != "test_accuracy"} for r in rows]
  assert same(two) == same(one)
  import optuna
  trials = optuna.load_study(study_name="jkd", storage=f"sqlite:///{w}/search.db").get_trials()
  assert len(trials) == 6   # drawn once, by process 0
  for k in range(3):
    a, b = (_json(d, f"rung{k}", "results.json")["runs"] for d in (env["w"], w))
    assert [(r["sweep"], r["final"]["val"]) for r in a] == [(r["sweep"], r["final"]["val"]) for r in b]


def test_resume_retrains_nothing_and_the_choice_ignores_test(env):
  """Every rung's test accuracies replaced by 1 - acc (the test ranking reversed): a second
  invocation finds the study and the finished rungs, trains nothing, chooses the same point and
  reports the corrupted test accuracies it was given."""
  w = env["w"]
  before = _csv(w)
  for k in range(3):
    path = os.path.join(w, f"rung{k}", "results.json")
    res = _json(path)
    for r in res["runs"]:
      for which in ("final", "best"):
        r[which]["accuracy"] = 1 - r[which]["accuracy"]
    with open(path, "w") as f:
      json.dump(res, f)
  out = _finish(_start(f"--config={env['cfg']}", f"--workdir={w}"))
  assert out.count("not retraining") == 3 and "compiling" not in out
  after = _csv(w)
  assert [r["chosen"] for r in after] == [r["chosen"] for r in before]
  assert [r["val_accuracy"] for r in after] == [r["val_accuracy"] for r in before]
  for x, y in zip(before, after):
    assert float(y["test_accuracy"]) == pytest.approx(1 - float(x["test_accuracy"]))


def test_killed_search_resumes_from_its_finished_rungs(env):
  w = str(env["root"] / "killed")
  p = _start(f"--config={env['cfg']}", f"--workdir={w}")
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(w, "rung1", "results.json")) and p.poll() is None:
    assert time.time() < deadline
    time.sleep(0.2)
  p.send_signal(signal.SIGKILL)
  p.communicate()
  assert os.path.exists(os.path.join(w, "rung1", "results.json"))
  out = _finish(_start(f"--config={env['cfg']}", f"--workdir={w}"))
  assert out.count("not retraining") >= 2
  assert "rung 1/3: 6 point" not in out and "rung 2/3: 3 point" not in out
  assert "rung 3/3: 1 point(s)" in out      # killed in the last rung: only it is trained
  # the same points, the same numbers as the uninterrupted search (its val accuracies; its test
  # column was corrupted by the test above, so compare the rung workdirs' results instead)
  assert [r["val_accuracy"] for r in _csv(w)] == [r["val_accuracy"] for r in _csv(env["w"])]
  a = _json(w, "rung2", "results.json")["runs"]
  b = _json(env["w"], "rung2", "results.json")["runs"]
  assert [r["final"]["val"] for r in a] == [r["final"]["val"] for r in b]
