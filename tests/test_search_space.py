"""jkd.search's space: its ranges, the per-run rule, validation subjects, and the points drawn
through Optuna (no training: these are the checks `jkd.preflight` runs before anything trains)."""

import math
import subprocess
import sys

import ml_collections as mc
import numpy as np
import optuna
import pytest

import jkd.data
from jkd import config as config_lib
from jkd import preflight, search
from jkd.search import halving, space
from jkd.search import study as study_lib
from synthetic import write_sine_windows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("space") / "tiny.npz")
  write_sine_windows(path, [10, 12, 8, 14])
  return path


def _config(data, space_, **search_kw):
  c = config_lib.base(jkd.data.default_config("windows"))
  c.data.path = data
  c.data.num_folds = 2
  c.data.num_val_subjects = 1
  c.model.name = "wrn10_1"
  c.train.epochs = 3
  c.train.batch_size = 8
  c.search = search.default_config(**search_kw)
  c.search.space = space_
  return c


def _refused(c, tmp_path, *words):
  with pytest.raises(config_lib.ConfigError) as e:
    preflight.run(c, str(tmp_path / "w"))
  msg = str(e.value)
  assert "\n" not in msg
  for w in words:
    assert w in msg, msg
  assert not (tmp_path / "w").exists()   # nothing written
  return msg


def test_a_valid_space_passes(data, tmp_path):
  c = _config(data, {"optim": {"lr": ("log", 1e-3, 0.1), "momentum": ("uniform", 0.5, 0.99)}},
              halving=mc.ConfigDict({"rungs": (1, 2), "eta": 3}))
  preflight.run(c, str(tmp_path / "w"))
  assert space.rungs(c) == [1, 2, 3]
  assert space.waves(c.search) == [9, 9, 9]
  assert search.num_points(c) == 9          # the first wave's program is the largest
  c.search.points, c.search.waves = 8, 3
  assert space.waves(c.search) == [3, 3, 2]


@pytest.mark.parametrize("space_,words", [
    ({"train": {"batch_size": ("int", 8, 16)}}, ("search.space.train.batch_size", "not read per run")),
    ({"loss": {"kd": {"temperature": ("log", 1, 8)}}}, ("search.space.loss.kd.temperature",
                                                        "'kd' is not in loss.terms")),
    ({"optim": {"lr": ("uniform", 0.1, 0.1)}}, ("search.space.optim.lr", "empty range")),
    ({"optim": {"lr": ("int", 3, 2)}}, ("empty range",)),
    ({"optim": {"lr": ("log", 0, 1)}}, ("0 < lo",)),
    ({"optim": {"lr": ("choice",)}}, ("at least one number",)),
    ({"optim": {"lr": ("choice", 0.1, 0.1)}}, ("repeats",)),
    ({"optim": {"lr": ("normal", 0, 1)}}, ("kind one of",)),
    ({"optim": {"lr": ("simplex",)}}, ("at least two keys",)),
    ({"optim": {"momentum": ("uniform", 0.5, 1.5)}}, ("search.space.optim.momentum",)),
    ({"optim": {"lr": ("choice", 0.1, 0.2), "warmup_epochs": ("int", 0, 1)}}, ("holds 4 distinct",)),
])
def test_space_errors(data, tmp_path, space_, words):
  _refused(_config(data, space_), tmp_path, *words)


def test_eval_mode_points_at_the_rungs(data, tmp_path):
  c = _config(data, {"optim": {"lr": ("log", 1e-3, 0.1)}})
  with pytest.raises(config_lib.ConfigError, match="rung<k>"):
    preflight.run(c, str(tmp_path / "w"), mode="eval")


def test_search_needs_validation_subjects(data, tmp_path):
  c = _config(data, {"optim": {"lr": ("log", 1e-3, 0.1)}})
  c.data.num_val_subjects = 0
  _refused(c, tmp_path, "validation", "never select on test")


def test_search_and_sweep_together_refused(data, tmp_path):
  c = _config(data, {"optim": {"lr": ("log", 1e-3, 0.1)}})
  c.sweep = mc.ConfigDict({"optim": {"momentum": (0.8, 0.9)}})
  _refused(c, tmp_path, "both sweep and search")


@pytest.mark.parametrize("kw,words", [
    ({"points": 0}, ("search.points",)),
    ({"sampler": "grid"}, ("search.sampler",)),
    ({"halving": mc.ConfigDict({"rungs": (2, 1), "eta": 3})}, ("search.halving.rungs",)),
    ({"halving": mc.ConfigDict({"rungs": (1, 5), "eta": 3})}, ("search.halving.rungs",)),
    ({"halving": mc.ConfigDict({"rungs": (1,), "eta": 1})}, ("search.halving.eta",)),
    ({"waves": 0}, ("search.waves=0",)),
    ({"points": 2, "waves": 3}, ("search.waves=3", "search.points=2")),
    ({"sampler": "tpe", "waves": 1}, ("search.waves=1", "at random")),
])
def test_section_errors(data, tmp_path, kw, words):
  _refused(_config(data, {"optim": {"lr": ("log", 1e-3, 0.1)}}, **kw), tmp_path, *words)


def test_main_refuses_with_one_line_and_status_2(data, tmp_path):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(
      "import jkd.data\nfrom jkd import config as config_lib, search\n"
      "def get_config():\n"
      "  c = config_lib.base(jkd.data.default_config('windows'))\n"
      f"  c.data.path = {data!r}\n"
      "  c.search = search.default_config()\n"
      "  c.search.space = {'loss': {'kd': {'temperature': ('log', 1, 8)}}}\n"
      "  return c\n")
  p = subprocess.run([sys.executable, "-m", "jkd.main", f"--config={cfg}",
                      f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True,
                     env={"JAX_PLATFORMS": "cpu", **__import__("os").environ})
  assert p.returncode == 2, p.stderr[-2000:]
  lines = [l for l in p.stderr.splitlines() if l.startswith("jkd.main:")]
  assert len(lines) == 1 and "validation" in lines[0], p.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_points_drawn_in_range_and_on_the_simplex(data, tmp_path):
  c = _config(data, {
      "optim": {"lr": ("log", 1e-3, 0.1), "momentum": ("choice", 0.5, 0.9),
                "weight_decay": ("uniform", 0.0, 1e-3), "gamma": ("simplex",),
                "b1": ("simplex",), "b2": ("simplex",), "warmup_epochs": ("int", 0, 2)}},
      points=40, sampler="random")
  ds = space.dims(c)
  study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  for _ in range(40):
    p = space.suggest(study.ask(), ds)
    assert 1e-3 <= p["optim.lr"] <= 0.1 and p["optim.momentum"] in (0.5, 0.9)
    assert 0 <= p["optim.weight_decay"] <= 1e-3 and p["optim.warmup_epochs"] in (0, 1, 2)
    w = [p["optim.gamma"], p["optim.b1"], p["optim.b2"]]
    assert min(w) >= 0 and math.isclose(sum(w), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("sampler", ["tpe", "random", "qmc"])
def test_draw_is_stored_and_resumed(data, tmp_path, sampler):
  """The trials live in the workdir's SQLite study: a second draw finds them (same points)."""
  c = _config(data, {"optim": {"lr": ("log", 1e-3, 0.1), "momentum": ("int", 0, 1)}},
              points=2, sampler=sampler, waves=2)
  w = str(tmp_path / "w")
  import os
  os.makedirs(w)
  first = [t.user_attrs[study_lib.POINT] for t in study_lib.draw(study_lib.open_study(c, w), c, w)]
  again = [t.user_attrs[study_lib.POINT] for t in study_lib.draw(study_lib.open_study(c, w), c, w)]
  assert first == again and len({tuple(p.items()) for p in first}) == 2
  c.search.points = 3   # the int x log space has room: one more point drawn, the two kept
  more = [t.user_attrs[study_lib.POINT] for t in study_lib.draw(study_lib.open_study(c, w), c, w)]
  assert more[:2] == first and len(more) == 3


def test_tpe_waves_model_the_told_points(data):
  """Waves are what make TPE adaptive: a wave is asked, trained, told; then the next is asked. On
  a value peaked at lr = 0.01 (log-uniform over 1e-4 .. 1), the third wave's points lie nearer the
  peak than the first wave's (TPE's random start-up), on average over 10 seeds."""
  c = _config(data, {"optim": {"lr": ("log", 1e-4, 1.0)}}, points=24, sampler="tpe", waves=3)
  dims, dist = space.dims(c), np.zeros((10, 3))
  value = lambda p: -abs(math.log10(p["optim.lr"]) + 2)
  for seed in range(10):
    c.search.seed = seed
    study = optuna.create_study(sampler=study_lib.sampler(optuna, c.search), direction="maximize")
    for w, size in enumerate(space.waves(c.search)):
      wave = [study.ask() for _ in range(size)]
      points = [space.suggest(t, dims) for t in wave]
      dist[seed, w] = -np.mean([value(p) for p in points])
      for t, p in zip(wave, points):
        study.tell(t, value(p))
  first, _, third = dist.mean(0)
  assert third < 0.75 * first, dist.mean(0)   # measured 0.56; points drawn at random: about 1


def test_survivors_and_select_read_validation_only():
  val = np.array([0.5, 0.9, np.nan, 0.7, 0.9, 0.1])
  assert halving.survivors(val, 3) == [1, 4]          # the best 6 // 3, ties to the earlier
  assert halving.survivors(val, 2) == [1, 3, 4]
  assert halving.survivors(val[:2], 3) == [1]         # at least one
  assert halving.select(val, [0, 3, 4]) == 4
  assert halving.select(val, [2, 5]) == 5             # a failed point ranks last


def test_pipeline_search_only_in_a_kd_stage(data, tmp_path):
  from jkd import pipeline
  c = pipeline.base(jkd.data.default_config("windows"))
  c.data.path = data
  c.search = search.default_config()
  _refused(c, tmp_path, "stages.<stage>.search")
  del c.search
  c.stages.student_scratch.search = search.default_config()
  _refused(c, tmp_path, "stages.student_scratch.search", "only a distillation stage")


DRAW = """
import sys
import ml_collections as mc
from jkd.search import space
from jkd.search import study as study_lib
c = mc.ConfigDict({"search": space.default_config(points=5, sampler="tpe", waves=1, storage=sys.argv[1]),
                   "sweep": {}})
c.search.space = {"optim": {"lr": ("log", 1e-3, 0.1)}}
study_lib.draw(study_lib.open_study(c, sys.argv[2]), c, sys.argv[2])
"""


def test_two_processes_share_one_study(tmp_path):
  """Two jobs on one storage URL: one study, each job its own points (its workdir on its trials)."""
  url = f"sqlite:///{tmp_path / 'shared.db'}"
  c = mc.ConfigDict({"search": space.default_config(storage=url)})
  study_lib.open_study(c, str(tmp_path))   # created once, before the jobs race
  jobs = [subprocess.Popen([sys.executable, "-c", DRAW, url, str(tmp_path / f"job{i}")])
          for i in range(2)]
  assert [p.wait(timeout=120) for p in jobs] == [0, 0]
  trials = optuna.load_study(study_name="jkd", storage=url).get_trials()
  owners = [t.user_attrs[study_lib.OWNER] for t in trials]
  assert sorted(owners) == sorted([str(tmp_path / "job0")] * 5 + [str(tmp_path / "job1")] * 5)
