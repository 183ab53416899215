"""Runs-axis expansion, seeds, sweeps and per-run hyper-parameters; config errors name the key."""

import subprocess
import sys

import numpy as np
import pytest

import jax

from jkd import config as config_lib
from jkd.engine import runs as runs_lib
from jkd.engine import setup
from synthetic import write_sine_windows


def _config(**train):
  c = config_lib.base()
  c.data.name = "synthetic"
  c.train.update(train)
  return c


def test_seeds_number_of_trials_or_list():
  assert config_lib.seeds(_config(seeds=3)) == [1234, 1235, 1236]
  assert config_lib.seeds(_config(seeds=(7, 42))) == [7, 42]
  c = _config(seeds=2, seed=10)
  assert config_lib.seeds(c) == [10, 11]
  for bad in (0, (), (1.5,), "3"):
    with pytest.raises(config_lib.ConfigError, match="train.seeds"):
      config_lib.seeds(_config(seeds=bad))


def test_sweep_expansion_order_and_hparams():
  c = _config(seeds=2)
  c.sweep = {"optim": {"lr": (0.1, 0.01)}, "loss": {"ce": {"label_smoothing": (0.0, 0.1, 0.2)}}}
  c.lock()
  runs = runs_lib.expand(c, num_folds=3)
  assert len(runs) == 2 * 3 * 2 * 3
  assert [r.index for r in runs] == list(range(36))
  # folds vary fastest, then seeds, then sweep points
  assert [r.fold for r in runs[:4]] == [0, 1, 2, 0]
  assert [r.seed for r in runs[:6]] == [1234] * 3 + [1235] * 3
  points = {tuple(sorted(r.sweep.items())) for r in runs}
  assert len(points) == 6
  hp = runs_lib.hparams(c, runs)
  np.testing.assert_allclose(hp["optim.lr"], [r.sweep["optim.lr"] for r in runs], rtol=1e-6)
  np.testing.assert_allclose(hp["optim.momentum"], 0.9)
  assert hp["optim.lr"].shape == (36,) and hp["optim.lr"].dtype == np.float32
  padded = runs_lib.pad(runs[:5], 4)
  assert len(padded) == 8 and [r.pad for r in padded] == [False] * 5 + [True] * 3
  assert all(r.fold == runs[0].fold and r.seed == runs[0].seed for r in padded[5:])


def test_sweep_errors():
  c = _config()
  c.sweep = {"optim": {"lrr": (0.1,)}}
  with pytest.raises(config_lib.ConfigError, match="optim.lrr.*closest valid keys: optim.lr"):
    config_lib.sweep(c)
  c.sweep = {"model": {"ndim": (1, 2)}}
  with pytest.raises(config_lib.ConfigError, match="sweep.model.ndim"):
    config_lib.sweep(c)
  c.sweep = {"optim": {"name": ("sgd",)}}
  with pytest.raises(config_lib.ConfigError, match="not a number"):
    config_lib.sweep(c)


def test_validate_values():
  c = _config()
  c.optim.schedule = "cosin"
  with pytest.raises(config_lib.ConfigError, match="optim.schedule='cosin'"):
    config_lib.validate(c)


def _main(*args):
  return subprocess.run([sys.executable, "-m", "jkd.main", "--config=configs/watch.py",
                         "--workdir=/nonexistent/never", *args], capture_output=True, text=True,
                        timeout=120)


def test_cli_unknown_key_and_bad_type_are_one_line():
  p = _main("--config.train.epoch=3")
  assert p.returncode == 2
  err = p.stderr.strip().splitlines()
  assert len(err) == 1 and "train.epoch" in err[0] and "train.epochs" in err[0], p.stderr
  p = _main("--config.optim.lr=fast")
  assert p.returncode == 2
  err = p.stderr.strip().splitlines()
  assert len(err) == 1 and "config.optim.lr" in err[0], p.stderr


@pytest.fixture
def restore_precision():
  before = jax.config.jax_default_matmul_precision
  yield
  jax.config.update("jax_default_matmul_precision", before)


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_matmul_precision_reaches_every_product_the_run_compiles(tmp_path, restore_precision,
                                                                   precision):
  write_sine_windows(tmp_path / "w.npz", [6, 6])
  c = config_lib.load_file("configs/windows.py")
  c.data.path = str(tmp_path / "w.npz")
  c.model.name, c.train.batch_size = "wrn10_1", 8
  c.train.matmul_precision = precision
  s = setup.build(c)
  assert jax.config.jax_default_matmul_precision == precision
  x = jax.numpy.zeros((2, 16, 3))
  variables = s.model.init(jax.random.PRNGKey(0), x, train=False)
  hlo = jax.jit(lambda v: s.model.apply(v, x, train=False)).lower(variables).as_text()
  products = hlo.count("stablehlo.dot_general") + hlo.count("stablehlo.convolution")
  assert products > 0 and hlo.count("precision = [HIGHEST, HIGHEST]") == (products if precision == "highest" else 0)
  c.train.matmul_precision = "float64"
  with pytest.raises(config_lib.ConfigError, match="train.matmul_precision='float64'"):
    config_lib.validate(c)
