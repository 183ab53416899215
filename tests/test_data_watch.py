"""Source `watch`: seglearn's smartwatch exercise data, read without importing seglearn."""

import sys

import numpy as np
import pytest

import jkd.data as data
from jkd.data import watch
from jkd.data.base import DataError

_HAVE_SEGLEARN = True
try:
  watch.installed_path()
except DataError:
  _HAVE_SEGLEARN = False


@pytest.mark.skipif(not _HAVE_SEGLEARN, reason="seglearn (jkd[demo]) is not installed")
def test_watch_loads_with_expected_shapes_and_subjects():
  w = data.load(data.default_config("watch"))
  assert "seglearn" not in sys.modules
  assert w.classes == ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
  assert w.channels == ["ax", "ay", "az", "wx", "wy", "wz"]
  assert w.x.shape[1:] == (100, 6) and w.x.dtype == np.float32
  assert np.unique(w.subject).tolist() == list(range(1, 11))
  assert set(w.y.tolist()) == set(range(7))
  # independent count: series of T samples give len(range(0, T - 100, 50)) windows each
  raw = np.load(watch.installed_path(), allow_pickle=True).item()
  expected = sum(len(range(0, len(x) - 100, 50)) for x in raw["X"])
  assert len(w.x) == expected
  first = min(range(len(raw["X"])), key=lambda i: (raw["subject"][i], i))
  np.testing.assert_allclose(w.x[0], raw["X"][first][:100], rtol=1e-6)
  assert w.y[0] == raw["y"][first]


def test_watch_path_override_and_bad_file(tmp_path):
  np.save(tmp_path / "not_watch.npy", np.zeros(3))
  cfg = data.default_config("watch")
  cfg.path = str(tmp_path / "not_watch.npy")
  with pytest.raises(DataError, match="not seglearn's watch_dataset"):
    data.load(cfg)
  cfg.path = str(tmp_path / "absent.npy")
  with pytest.raises(DataError, match="is not a file"):
    data.load(cfg)
