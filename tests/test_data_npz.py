"""Sources `windows` and `streams` (user .npz files) through jkd.data.load / load_windows."""

import numpy as np
import pytest

import jkd.data as data
from jkd.data.base import DataError


def _cfg(name, path, **overrides):
  cfg = data.default_config(name)
  cfg.path = str(path)
  cfg.update(overrides)
  return cfg


def test_windows_source_drops_unlabelled_and_orders_by_subject(tmp_path):
  x = np.arange(5 * 4 * 2, dtype=np.float64).reshape(5, 4, 2)
  y = np.array([1, 0, 9, 2, 1])
  subject = np.array([7, 3, 7, 3, 7])
  np.savez(tmp_path / "w.npz", x=x, y=y, subject=subject, classes=np.array(["a", "b", "c"]),
           channels=np.array(["u", "v"]))
  w = data.load(_cfg("windows", tmp_path / "w.npz", ignore_label=9))
  assert w.classes == ["a", "b", "c"] and w.channels == ["u", "v"]
  # window 2 is unlabelled (9); stable order by subject: 3 (rows 1, 3) then 7 (rows 0, 4)
  np.testing.assert_array_equal(w.x, x[[1, 3, 0, 4]].astype(np.float32))
  assert w.y.tolist() == [0, 2, 1, 1] and w.subject.tolist() == [3, 3, 7, 7]
  assert w.x.dtype == np.float32
  assert w.x.ctypes.data % 64 == 0  # the devices use the windows in place (jkd.engine.parallel.aligned)


def test_windows_source_default_names(tmp_path):
  np.savez(tmp_path / "w.npz", x=np.zeros((4, 3, 2), np.float32), y=np.array([0, 2, 1, 0]),
           subject=np.array([1, 1, 2, 2]))
  w = data.load(_cfg("windows", tmp_path / "w.npz"))
  assert w.classes == ["class0", "class1", "class2"] and w.channels == ["ch0", "ch1"]


def test_streams_split_at_subject_and_session_changes(tmp_path):
  # rows: subject 1 session 0 (12 rows), subject 1 session 1 (12), subject 0 (12)
  x = np.arange(36, dtype=np.float32)[:, None] * [1.0, -1.0]
  subject = np.repeat([1, 1, 0], 12)
  session = np.repeat([0, 1, 0], 12)
  y = np.zeros(36, np.int64)
  y[30:] = -1  # last 6 rows of subject 0 unlabelled
  np.savez(tmp_path / "s.npz", x=x, y=y, subject=subject, session=session)
  x_w, y_w, s_w = data.load_windows(_cfg("streams", tmp_path / "s.npz", window=4, step=4,
                                         start=0, label_rule="all"))
  # each 12-row recording has starts range(0, 8, 4) = 0, 4 (rows 24 and 28 for subject 0, whose
  # window at 28 holds unlabelled rows 30, 31 and is dropped); subject 0 comes first
  assert x_w[:, 0, 0].tolist() == [24, 0, 4, 12, 16]
  assert s_w.tolist() == [0, 1, 1, 1, 1] and y_w.tolist() == [0] * 5
  np.testing.assert_array_equal(x_w[:, :, 1], -x_w[:, :, 0])


def test_streams_same_subject_twice_is_two_recordings(tmp_path):
  x = np.arange(30, dtype=np.float32)[:, None]
  subject = np.repeat([1, 2, 1], 10)
  np.savez(tmp_path / "s.npz", x=x, y=np.zeros(30, np.int64), subject=subject)
  x_w, _, s_w = data.load_windows(_cfg("streams", tmp_path / "s.npz", window=5, step=5))
  # recordings of 10 rows: starts range(0, 5, 5) = [0]; subject 1's two runs stay apart
  assert x_w[:, 0, 0].tolist() == [0, 20, 10] and s_w.tolist() == [1, 1, 2]


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((3, 4, 2)), y=np.zeros(3)), r"lacks arrays \['subject'\]"),
    (dict(x=np.zeros((3, 4)), y=np.zeros(3), subject=np.zeros(3)), r"\(N, L, C\)"),
    (dict(x=np.zeros((3, 4, 2)), y=np.zeros(2), subject=np.zeros(3)), "must both be"),
    (dict(x=np.zeros((3, 4, 2)), y=np.array([0.5, 0, 0]), subject=np.zeros(3)), "integer"),
    (dict(x=np.full((3, 4, 2), np.nan), y=np.zeros(3), subject=np.zeros(3)), "NaN or inf"),
    (dict(x=np.zeros((3, 4, 2)), y=np.array([0, 3, 0]), subject=np.zeros(3),
          classes=np.array(["a", "b"])), r"label values \[3\]"),
    (dict(x=np.zeros((3, 4, 2)), y=np.array([0, -1, 0]), subject=np.array([0, 1, 0])),
     r"subjects \[1\] have no labelled window"),
    (dict(x=np.zeros((3, 4, 2)), y=np.zeros(3), subject=np.zeros(3), channels=np.array(["a"])),
     "`channels` has 1 names"),
])
def test_windows_source_errors(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(DataError, match=message):
    data.load(_cfg("windows", tmp_path / "bad.npz"))


def test_streams_errors(tmp_path):
  np.savez(tmp_path / "s.npz", x=np.zeros((10, 2)), y=np.zeros(10), subject=np.zeros(10),
           session=np.zeros(9))
  with pytest.raises(DataError, match="session"):
    data.load(_cfg("streams", tmp_path / "s.npz", window=2))
  np.savez(tmp_path / "inf.npz", x=np.full((10, 2), np.inf), y=np.zeros(10), subject=np.zeros(10))
  with pytest.raises(DataError, match="NaN or inf"):
    data.load(_cfg("streams", tmp_path / "inf.npz", window=2))
  np.savez(tmp_path / "ok.npz", x=np.zeros((10, 2)), y=np.zeros(10), subject=np.zeros(10))
  with pytest.raises(DataError, match="longer than every recording"):
    data.load(_cfg("streams", tmp_path / "ok.npz", window=10))


def test_missing_path_names_the_fix(tmp_path):
  with pytest.raises(DataError, match="config.data.path is empty"):
    data.load(_cfg("windows", ""))
  with pytest.raises(DataError, match="is not a file"):
    data.load(_cfg("streams", tmp_path / "nope.npz"))
