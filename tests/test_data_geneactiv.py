"""Source `geneactiv`: per-window .mat folders (with cache), the npz form, class mappings, errors."""

import os

import numpy as np
import pytest
import scipy.io

import jkd.data as data
from jkd.data import geneactiv
from jkd.data.base import DataError

# (subject, class, window number): written in shuffled order, read back sorted by subject, window.
_WINDOWS = [(102, 13, 2), (101, 1, 1), (102, 2, 1), (101, 13, 2), (101, 2, 3), (103, 1, 1)]


def _write_folder(root, length=8, variable="data"):
  folder = root / str(length)
  folder.mkdir(parents=True)
  values = {}
  for subject, cls, number in _WINDOWS:
    x = np.full((1, length, 3), subject * 100 + number, np.float64) + np.arange(3)
    scipy.io.savemat(folder / f"ID-{subject}_CLASS-{cls}_Window-{number:04d}.mat", {variable: x})
    values[(subject, number)] = (x[0], cls)
  return values


def _cfg(path, **overrides):
  cfg = data.default_config("geneactiv")
  cfg.path = str(path)
  cfg.update(overrides)
  return cfg


def test_mat_folder_loads_in_order_and_caches(tmp_path):
  values = _write_folder(tmp_path / "gene")
  cfg = _cfg(tmp_path / "gene", window=8, num_classes=7, class_map="1:0,2:3,13:6")
  w = data.load(cfg)
  order = sorted((s, n) for s, _, n in _WINDOWS)
  np.testing.assert_array_equal(w.x, np.stack([values[k][0] for k in order]).astype(np.float32))
  assert w.subject.tolist() == [s for s, _ in order]
  assert w.y.tolist() == [{1: 0, 2: 3, 13: 6}[values[k][1]] for k in order]
  assert w.channels == ["x", "y", "z"] and len(w.classes) == 7
  assert w.classes[6] == "class-13"
  cache = tmp_path / "gene" / "8.jkd-cache.npz"
  assert cache.is_file()
  # the cache serves the next load: files changed in content but not in names are not re-read
  for name in os.listdir(tmp_path / "gene" / "8"):
    scipy.io.savemat(tmp_path / "gene" / "8" / name, {"data": np.zeros((1, 8, 3))})
  np.testing.assert_array_equal(data.load(cfg).x, w.x)
  # a new file changes the names: the folder is read again
  scipy.io.savemat(tmp_path / "gene" / "8" / "ID-104_CLASS-1_Window-0001.mat",
                   {"other_name": np.ones((1, 8, 3))})
  again = data.load(cfg)
  assert len(again.x) == len(_WINDOWS) + 1 and (again.x[:-1] == 0).all()


def test_cache_dir_and_npz_form_agree(tmp_path):
  _write_folder(tmp_path / "gene")
  cfg = _cfg(tmp_path / "gene", window=8, num_classes=14, class_map="1:0,2:1,13:2",
             cache_dir=str(tmp_path / "cache"))
  w = data.load(cfg)
  assert len(os.listdir(tmp_path / "cache")) == 1
  raw = np.array([{0: 1, 1: 2, 2: 13}[k] for k in w.y.tolist()])
  np.savez(tmp_path / "gene.npz", x=w.x[::-1], y=raw[::-1], subject=w.subject[::-1])
  from_npz = data.load(_cfg(tmp_path / "gene.npz", window=8, num_classes=14,
                            class_map="1:0,2:1,13:2"))
  # stable order by subject; within a subject the npz's own order (here reversed)
  for s in np.unique(w.subject):
    np.testing.assert_array_equal(from_npz.x[from_npz.subject == s], w.x[w.subject == s][::-1])
    np.testing.assert_array_equal(from_npz.y[from_npz.subject == s], w.y[w.subject == s][::-1])
  assert from_npz.subject.tolist() == sorted(from_npz.subject.tolist())


def test_class_mapping_rules():
  fourteen = np.arange(1, 15).repeat(2)
  mapping, names = geneactiv.class_mapping(fourteen, 14, "")
  assert mapping == {c: c - 1 for c in range(1, 15)} and names[0] == "class-1"
  with pytest.warns(UserWarning, match="ASSUMED"):
    mapping, names = geneactiv.class_mapping(fourteen, 7, "")
  assert [mapping[c] for c in range(1, 15)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
  assert names[0] == "class-1+class-2"
  seven = np.array([10, 20, 30, 40, 50, 60, 70])
  mapping, _ = geneactiv.class_mapping(seven, 7, "")
  assert mapping == {10: 0, 20: 1, 30: 2, 40: 3, 50: 4, 60: 5, 70: 6}
  with pytest.raises(DataError, match=r"CLASS ids \[3\] are not in config.data.class_map"):
    geneactiv.class_mapping(np.array([1, 2, 3]), 7, "1:0,2:1")
  with pytest.raises(DataError, match="outside 0..6"):
    geneactiv.class_mapping(np.array([1]), 7, "1:7")
  with pytest.raises(DataError, match="not 'raw:index'"):
    geneactiv.class_mapping(np.array([1]), 7, "1-0")
  with pytest.raises(DataError, match="hold 3 CLASS ids"):
    geneactiv.class_mapping(np.array([1, 2, 3]), 7, "")
  with pytest.raises(DataError, match="7 or 14"):
    geneactiv.class_mapping(np.array([1]), 5, "")


def test_errors(tmp_path):
  with pytest.raises(DataError, match="lab's own data"):
    data.load(_cfg(tmp_path / "missing"))
  _write_folder(tmp_path / "gene")
  with pytest.raises(DataError, match="window=1000"):  # default window, folder holds 8-sample files
    data.load(_cfg(tmp_path / "gene" / "8", class_map="1:0,2:1,13:2"))
  scipy.io.savemat(tmp_path / "gene" / "8" / "ID-1_CLASS-1_Window-9.mat",
                   {"a": np.zeros((1, 8, 3)), "b": np.zeros(2)})
  with pytest.raises(DataError, match="expected exactly one"):
    data.load(_cfg(tmp_path / "gene", window=8, class_map="1:0,2:1,13:2"))
  (tmp_path / "gene" / "8" / "ID-1_CLASS-1_Window-9.mat").unlink()
  scipy.io.savemat(tmp_path / "gene" / "8" / "notes.mat", {"a": np.zeros((1, 8, 3))})
  with pytest.raises(DataError, match="is not named"):
    data.load(_cfg(tmp_path / "gene", window=8, class_map="1:0,2:1,13:2"))
  (tmp_path / "gene" / "8" / "notes.mat").unlink()
  scipy.io.savemat(tmp_path / "gene" / "8" / "ID-1_CLASS-1_Window-9.mat",
                   {"a": np.zeros((1, 9, 3))})
  with pytest.raises(DataError, match="one folder holds one window length"):
    data.load(_cfg(tmp_path / "gene", window=8, class_map="1:0,2:1,13:2"))
  (tmp_path / "empty" / "8").mkdir(parents=True)
  with pytest.raises(DataError, match="holds no ID"):
    data.load(_cfg(tmp_path / "empty", window=8))


def test_default_folds_are_groups_of_subjects():
  cfg = data.default_config("geneactiv")
  assert cfg.num_folds == 5 and cfg.window == 1000 and cfg.num_classes == 7
  assert cfg.normalize == "lab"
