"""jkd.data registry and default configs: every key typed, source overrides, absl-style overrides."""

import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import jkd.data as data
from jkd.data.base import DataError

_COMMON = {"name": str, "path": str, "window": int, "step": int, "start": int, "label_rule": str,
           "normalize": str, "test_subjects": tuple, "num_folds": int, "fold_seed": int,
           "val_subjects": tuple, "num_val_subjects": int}


@pytest.mark.parametrize("name", ["geneactiv", "windows", "streams", "watch"])
def test_default_config_has_every_common_key_with_a_concrete_type(name):
  cfg = data.default_config(name)
  assert cfg.name == name
  for key, kind in _COMMON.items():
    assert isinstance(cfg[key], kind), (key, cfg[key])
  cfg.lock()  # locked-friendly: overriding existing keys keeps working
  cfg.window = 50
  cfg.test_subjects = (1, 2)


def test_source_defaults_override_common_ones():
  assert data.common_config().step == 50
  assert data.default_config("geneactiv").normalize == "lab"
  assert data.default_config("geneactiv").num_folds == 5
  assert data.default_config("windows").ignore_label == -1


def test_command_line_overrides_reach_every_kind_of_key(monkeypatch):
  argv = ["prog", "--config.data.test_subjects=(3,4)", "--config.data.window=64",
          "--config.data.label_rule=majority", "--config.data.path=/d"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads its overrides from sys.argv
  holder = flags.FlagValues()
  config = ml_collections.ConfigDict({"data": data.default_config("watch")})
  config_flags.DEFINE_config_dict("config", config, flag_values=holder)
  holder(argv)
  cfg = holder.config.data
  assert cfg.test_subjects == (3, 4) and cfg.window == 64
  assert cfg.label_rule == "majority" and cfg.path == "/d"


def test_unknown_source_and_bad_rules_are_errors():
  with pytest.raises(DataError, match="not a data source"):
    data.default_config("mnist")
  cfg = data.default_config("watch")
  cfg.label_rule = "first"
  with pytest.raises(DataError, match="label_rule='first' is unknown"):
    data.load(cfg)
  cfg = data.default_config("watch")
  cfg.normalize = "minmax"
  with pytest.raises(DataError, match="normalize='minmax' is unknown"):
    data.load(cfg)


def test_check_config_ranges_and_where_a_key_belongs():
  cfg = data.default_config("windows")
  data.check_config(cfg)
  cfg.step = 0
  with pytest.raises(DataError, match=r"config.data.step=0 must be an integer >= 1"):
    data.check_config(cfg)
  assert data.sources_with_key("ignore_label") == ["streams", "windows"]
  assert data.sources_with_key("downsample") == ["pamap2"]


def test_keep_loaded_reuses_the_windows_of_an_equal_config(tmp_path):
  import numpy as np
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "w.npz", x=rng.normal(size=(6, 4, 2)).astype(np.float32),
           y=np.arange(6) % 2, subject=np.repeat([1, 2], 3))
  cfg = data.default_config("windows")
  cfg.path = str(tmp_path / "w.npz")
  assert data.load(cfg) is not data.load(cfg)          # outside the block: loaded each time
  with data.keep_loaded():
    first = data.load(cfg)
    assert data.load(ml_collections.ConfigDict(cfg.to_dict())) is first
    cfg.ignore_label = 1
    assert data.load(cfg) is not first                 # another config: loaded again
  assert data.load(cfg) is not data.load(cfg)
