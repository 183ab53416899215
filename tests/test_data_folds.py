"""Folds: subject splits, validation subjects, per-fold normalisation, memory, errors."""

import tracemalloc
import warnings

import ml_collections
import numpy as np
import pytest

from jkd.data import common_config, folds, normalize
from jkd.data.base import DataError


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = common_config()
  cfg.update(overrides)
  return cfg


def _data(subjects=(3, 5, 8, 9), per=(4, 6, 5, 3), length=7, channels=2, seed=0):
  rng = np.random.default_rng(seed)
  subject = np.repeat(subjects, per).astype(np.int64)
  # channels on very different scales, so a wrong statistic shows
  x = (rng.standard_normal((len(subject), length, channels)) * [1.0, 30.0] + [5.0, -200.0])
  y = np.arange(len(subject)) % 3
  return x.astype(np.float32), y.astype(np.int64), subject


def _real(rows, counts):
  return [row[:c].tolist() for row, c in zip(rows, counts)]


def test_loso_one_fold_per_subject_in_order():
  x, y, subject = _data()
  f = folds.make_folds(x, y, subject, _cfg())
  assert f.test_subjects == [(3,), (5,), (8,), (9,)]
  assert _real(f.test, f.test_count) == [list(range(0, 4)), list(range(4, 10)),
                                         list(range(10, 15)), list(range(15, 18))]
  assert _real(f.train, f.train_count)[1] == list(range(0, 4)) + list(range(10, 18))
  assert f.train.shape == (4, 15) and f.train.dtype == np.int32
  assert (f.train[3, f.train_count[3]:] == 0).all()  # padding is index 0
  assert f.val.shape == (4, 0) and f.val_count.tolist() == [0, 0, 0, 0]
  assert f.num_classes == 3


def test_test_subjects_restrict_loso():
  x, y, subject = _data()
  f = folds.make_folds(x, y, subject, _cfg(test_subjects=(8, 3)))
  assert f.test_subjects == [(8,), (3,)]
  assert _real(f.test, f.test_count) == [list(range(10, 15)), list(range(0, 4))]


def test_num_folds_partition_subjects_deterministically():
  subjects = np.arange(20, 40)
  x, y, subject = _data(subjects, [2] * 20)
  a = folds.make_folds(x, y, subject, _cfg(num_folds=3, fold_seed=1, normalize="none"))
  b = folds.make_folds(x, y, subject, _cfg(num_folds=3, fold_seed=1, normalize="none"))
  c = folds.make_folds(x, y, subject, _cfg(num_folds=3, fold_seed=2, normalize="none"))
  assert a.test_subjects == b.test_subjects and a.test_subjects != c.test_subjects
  held = sorted(s for g in a.test_subjects for s in g)
  assert held == subjects.tolist()  # every subject tested exactly once
  assert sorted(len(g) for g in a.test_subjects) == [6, 7, 7]
  for f in range(3):
    test = set(a.test[f, :a.test_count[f]].tolist())
    train = set(a.train[f, :a.train_count[f]].tolist())
    assert not test & train and len(test | train) == len(x)
    assert set(subject[list(test)].tolist()) == set(a.test_subjects[f])


def test_validation_subjects_fixed_and_per_fold():
  x, y, subject = _data()
  fixed = folds.make_folds(x, y, subject, _cfg(val_subjects=(5,)))
  assert fixed.test_subjects == [(3,), (8,), (9,)]  # a validation subject is never tested
  assert fixed.val_subjects == [(5,)] * 3
  assert _real(fixed.val, fixed.val_count) == [list(range(4, 10))] * 3
  assert all(5 not in subject[row[:c]] for row, c in zip(fixed.train, fixed.train_count))
  per = folds.make_folds(x, y, subject, _cfg(num_val_subjects=1, fold_seed=4))
  again = folds.make_folds(x, y, subject, _cfg(num_val_subjects=1, fold_seed=4))
  assert per.val_subjects == again.val_subjects
  for f, (test, val) in enumerate(zip(per.test_subjects, per.val_subjects)):
    assert len(val) == 1 and val[0] not in test
    sets = [set(subject[r[f, :c[f]]].tolist()) for r, c in
            ((per.train, per.train_count), (per.test, per.test_count), (per.val, per.val_count))]
    assert sets[1] == set(test) and sets[2] == set(val)
    assert sets[0] == set([3, 5, 8, 9]) - set(test) - set(val)


def test_lab_and_zscore_statistics_match_numpy_over_training_windows():
  x, y, subject = _data()
  lab = folds.make_folds(x, y, subject, _cfg(normalize="lab"))
  zs = folds.make_folds(x, y, subject, _cfg(normalize="zscore"))
  for f in range(4):
    train = x[lab.train[f, :lab.train_count[f]]].astype(np.float64)
    np.testing.assert_allclose(lab.mean[f], train.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(lab.std[f], train.std(axis=1).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(zs.mean[f], train.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(zs.std[f], train.reshape(-1, 2).std(axis=0), rtol=1e-5)
  none = folds.make_folds(x, y, subject, _cfg(normalize="none"))
  assert (none.mean == 0).all() and (none.std == 1).all() and none.mean.shape == (4, 2)


def test_statistics_over_many_chunks_and_non_contiguous_subjects(monkeypatch):
  monkeypatch.setattr(normalize, "_CHUNK_ELEMENTS", 20)  # one window per chunk
  x, y, subject = _data()
  perm = np.random.default_rng(1).permutation(len(x))  # subjects interleaved
  x, y, subject = x[perm], y[perm], subject[perm]
  f = folds.make_folds(x, y, subject, _cfg(normalize="zscore", test_subjects=(5,)))
  train = x[subject != 5].astype(np.float64)
  np.testing.assert_allclose(f.mean[0], train.mean(axis=(0, 1)), rtol=1e-5)
  np.testing.assert_allclose(f.std[0], train.reshape(-1, 2).std(axis=0), rtol=1e-5)
  assert sorted(f.train[0, :f.train_count[0]].tolist()) == np.flatnonzero(subject != 5).tolist()


def test_apply_normalises_with_fold_statistics():
  x, y, subject = _data()
  f = folds.make_folds(x, y, subject, _cfg(normalize="zscore"))
  train = normalize.apply(x[f.train[0, :f.train_count[0]]], f.mean[0], f.std[0])
  np.testing.assert_allclose(train.mean(axis=(0, 1)), 0, atol=1e-4)
  np.testing.assert_allclose(train.std(axis=(0, 1)), 1, atol=1e-4)


def test_make_folds_does_not_copy_x():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((10000, 100, 10), dtype=np.float32)  # 40 MB
  subject = np.repeat(np.arange(8), 1250)
  y = np.arange(10000) % 4
  tracemalloc.start()
  folds.make_folds(x, y, subject, _cfg(normalize="lab"))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert peak < 0.25 * x.nbytes, peak  # all 8 folds: statistics chunks + index arrays


def test_missing_class_in_training_fold_warns():
  x, y, subject = _data()
  y = np.where(subject == 3, 2, y % 2)  # class 2 only in subject 3
  with pytest.warns(UserWarning, match=r"fold 0 \(test subjects \(3,\)\): class 2 has no training"):
    folds.make_folds(x, y, subject, _cfg())


def test_constant_channel_gets_unit_std_with_a_warning():
  x, y, subject = _data()
  x[:, :, 1] = 4.0
  with pytest.warns(UserWarning, match="constant"):
    f = folds.make_folds(x, y, subject, _cfg(normalize="zscore"))
  assert (f.std[:, 1] == 1).all()


@pytest.mark.parametrize("overrides, message", [
    (dict(test_subjects=(4,)), r"test_subjects names subjects \[4\]"),
    (dict(val_subjects=(99,)), r"val_subjects names subjects \[99\]"),
    (dict(test_subjects=(3,), num_folds=2), "both choose the test subjects"),
    (dict(val_subjects=(3,), num_val_subjects=1), "both choose validation"),
    (dict(test_subjects=(3,), val_subjects=(3,)), "both"),
    (dict(num_folds=9), "num_folds=9 needs 2..4"),
    (dict(num_val_subjects=3), "no training subject"),
    (dict(normalize="minmax"), "normalize='minmax' is unknown"),
])
def test_config_errors(overrides, message):
  x, y, subject = _data()
  with pytest.raises(DataError, match=message):
    folds.make_folds(x, y, subject, _cfg(**overrides))


def test_empty_training_fold_is_an_error():
  x, y, subject = _data(subjects=(1,), per=(5,))
  with pytest.raises(DataError, match="empty train set"):
    folds.make_folds(x, y, subject, _cfg())


def test_unlabelled_windows_are_rejected():
  x, y, subject = _data()
  y[0] = -1
  with pytest.raises(DataError, match="outside"):
    folds.make_folds(x, y, subject, _cfg())


def test_no_warning_on_clean_data():
  x, y, subject = _data()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    folds.make_folds(x, y, subject, _cfg())


@pytest.mark.parametrize("overrides", [{}, {"test_subjects": (5, 9)}, {"num_folds": 2},
                                       {"num_val_subjects": 1}, {"val_subjects": (8,)}])
def test_train_counts_from_subjects_equal_make_folds(overrides):
  x, y, subject = _data()
  cfg = _cfg(**overrides)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    made = folds.make_folds(x, y, subject, cfg)
  np.testing.assert_array_equal(folds.train_counts(subject, cfg), made.train_count)
  with pytest.raises(DataError, match="num_folds=9 needs 2..4"):
    folds.train_counts(subject, _cfg(num_folds=9))
