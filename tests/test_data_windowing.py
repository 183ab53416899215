"""Windowing: the lab's start indices, label rules, recording boundaries, ordering, errors."""

import numpy as np
import pytest

from jkd.data import windowing
from jkd.data.base import DataError, Recording


def test_starts_reproduce_lab_range_with_exclusive_bound():
  for length in (99, 100, 122, 123, 144, 1000):
    assert windowing.window_starts(length, 100, 22, 22).tolist() == list(range(22, length - 100, 22))
  # A recording of exactly start + window samples yields no window (the bound is exclusive).
  assert windowing.window_starts(122, 100, 22, 22).tolist() == []
  assert windowing.window_starts(123, 100, 22, 22).tolist() == [22]


def test_label_rules_on_hand_built_labels():
  # Windows of 4, step 2, start 0 over 11 samples: starts 0, 2, 4, 6 (range(0, 7, 2)).
  y = np.array([0, 0, 1, 0, 1, 1, -1, 2, 2, 2, 2])
  # windows: [0 0 1 0] [1 0 1 1] [1 1 -1 2] [-1 2 2 2]
  assert windowing.window_labels(y, 4, 2, 0, "ends").tolist() == [0, 1, -1, -1]
  assert windowing.window_labels(y, 4, 2, 0, "all").tolist() == [-1, -1, -1, -1]
  assert windowing.window_labels(y, 4, 2, 0, "majority").tolist() == [0, 1, 1, 2]


def test_majority_tie_goes_to_smallest_label_and_unlabelled_never_counts():
  y = np.array([3, 1, 1, 3, -1, -1, -1, -1])
  # windows of 4, step 4, start 0 -> starts range(0, 4, 4) = [0]: [3 1 1 3], tie 1 vs 3 -> 1
  assert windowing.window_labels(y, 4, 4, 0, "majority").tolist() == [1]
  # window [-1 -1 -1 2] (start 1 of 6): only labelled sample decides; all-unlabelled is dropped
  y2 = np.array([5, -1, -1, -1, 2, -1, -1])
  assert windowing.window_labels(y2, 4, 1, 1, "majority").tolist() == [2, 2]
  assert windowing.window_labels(np.full(9, -1), 4, 1, 0, "majority").tolist() == [-1] * 5
  # `all` rejects a window of identical unlabelled samples
  assert windowing.window_labels(np.full(9, -1), 4, 1, 0, "all").tolist() == [-1] * 5


def _naive(recordings, window, step, start, rule):
  """Independent reference: a Python loop per window."""
  xs, ys, ss = [], [], []
  for r in sorted(recordings, key=lambda r: r.subject):
    for a in range(start, len(r.y) - window, step):
      lab = r.y[a:a + window]
      if rule == "ends":
        label = lab[0] if lab[0] == lab[-1] else -1
      elif rule == "all":
        label = lab[0] if (lab == lab[0]).all() else -1
      else:
        valid = lab[lab >= 0]
        label = np.bincount(valid).argmax() if len(valid) else -1
      if label >= 0:
        xs.append(r.x[a:a + window])
        ys.append(label)
        ss.append(r.subject)
  return np.stack(xs), np.array(ys), np.array(ss)


@pytest.mark.parametrize("rule", ["ends", "all", "majority"])
def test_make_windows_matches_a_per_window_loop(rule, monkeypatch):
  monkeypatch.setattr(windowing, "_GATHER_CHUNK", 2)  # several gather steps per recording
  rng = np.random.default_rng(0)
  recordings = []
  for subject, session, length in [(2, 0, 90), (1, 0, 70), (2, 1, 55), (1, 1, 61)]:
    y = np.repeat(rng.integers(-1, 3, length // 5 + 1), 5)[:length]
    recordings.append(Recording(subject, rng.standard_normal((length, 3)).astype(np.float32), y,
                                session))
  x, y, subject = windowing.make_windows(recordings, 10, 3, 2, rule)
  rx, ry, rs = _naive(recordings, 10, 3, 2, rule)
  np.testing.assert_array_equal(x, rx)
  np.testing.assert_array_equal(y, ry)
  np.testing.assert_array_equal(subject, rs)
  assert x.dtype == np.float32 and x.flags.c_contiguous
  assert x.ctypes.data % 64 == 0  # the devices use the windows in place (jkd.engine.parallel.aligned)
  # ordered by subject, then recording (source order within a subject)
  assert np.all(np.diff(subject) >= 0)


def test_windows_never_cross_recordings():
  # Two recordings of one subject whose samples encode (recording, time).
  a = Recording(0, np.arange(10, dtype=np.float32)[:, None], np.zeros(10, np.int64))
  b = Recording(0, 100 + np.arange(10, dtype=np.float32)[:, None], np.zeros(10, np.int64))
  x, _, _ = windowing.make_windows([a, b], 4, 1, 0, "all")
  starts = x[:, 0, 0]
  assert starts.tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105]
  np.testing.assert_array_equal(x[:, :, 0] - starts[:, None], np.tile(np.arange(4), (12, 1)))


def test_window_longer_than_every_recording_is_an_error():
  rec = Recording(0, np.zeros((50, 2), np.float32), np.zeros(50, np.int64))
  with pytest.raises(DataError, match="longer than every recording"):
    windowing.make_windows([rec], 50, 10, 0, "ends")


def test_subject_without_windows_is_an_error():
  good = Recording(0, np.zeros((50, 2), np.float32), np.zeros(50, np.int64))
  short = Recording(7, np.zeros((12, 2), np.float32), np.zeros(12, np.int64))
  with pytest.raises(DataError, match=r"subjects \[7\] have no labelled window"):
    windowing.make_windows([good, short], 20, 10, 0, "ends")


def test_unknown_label_rule_is_an_error():
  with pytest.raises(DataError, match="label_rule"):
    windowing.window_labels(np.zeros(10, np.int64), 4, 1, 0, "first")
