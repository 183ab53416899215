"""Source `watch`: the smartwatch shoulder-exercise demo data that the PyPI package `seglearn` ships.

The file ``seglearn/data/watch_dataset.npy`` (BSD-3-Clause, (c) 2018 David M. Burns; data of
Burns et al., "Shoulder Physiotherapy Exercise Recognition: Machine Learning the Inertial Signals
from a Smartwatch", arXiv:1802.01489) is read from the installed distribution without importing
seglearn (``pip install 'jkd[demo]'`` or ``pip install seglearn``), or from ``config.data.path``.

What the file holds (a pickled dict, so only load copies you trust): 140 series, one per set of
exercise repetitions, of 10 subjects (1..10, 14 series each: 7 exercises x 2 sides); each series
is (T, 6) float64 at 50 Hz, T 947..2618, channels ax ay az (accelerometer) wx wy wz (gyroscope);
one label per series, 7 exercise classes (PEN, ABD, FEL, IR, ER, TRAP, ROW), 20 series each.
Each series becomes one recording whose samples all carry the series' label (session = the
series' position in the file). Demo defaults: window 100 (2 s), step 50 (1 s), start 0,
leave-one-subject-out over the 10 subjects.
"""

from __future__ import annotations

import importlib.metadata
import os

import ml_collections
import numpy as np

from jkd.data.base import DataError, Dataset, Recording

_FILE = "seglearn/data/watch_dataset.npy"


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"window": 100, "step": 50, "start": 0, "label_rule": "all",
                                    "normalize": "zscore"})


def installed_path() -> str:
  """Where the installed seglearn keeps watch_dataset.npy; DataError when it is not installed."""
  try:
    path = str(importlib.metadata.distribution("seglearn").locate_file(_FILE))
  except importlib.metadata.PackageNotFoundError:
    path = ""
  if not os.path.isfile(path):
    raise DataError("the watch demo reads seglearn's data/watch_dataset.npy: run "
                    "`pip install 'jkd[demo]'` (or `pip install seglearn`), or set "
                    "config.data.path to a copy of watch_dataset.npy.")
  return path


def _field(data: dict, key: str, path: str):
  if key not in data:
    raise DataError(f"{path} lacks `{key}`; it is not seglearn's watch_dataset.npy.")
  return data[key]


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """The 140 series of the watch data as recordings (one label per series)."""
  path = str(cfg.path) or installed_path()
  if not os.path.isfile(path):
    raise DataError(f"config.data.path={path!r} is not a file; leave it empty to use the "
                    "installed seglearn's watch_dataset.npy.")
  data = np.load(path, allow_pickle=True)
  data = data.item() if data.dtype == object and data.shape == () else None
  if not isinstance(data, dict):
    raise DataError(f"{path} does not hold a pickled dict; it is not seglearn's watch_dataset.npy.")
  series = list(_field(data, "X", path))
  y = np.asarray(_field(data, "y", path), np.int64)
  subject = np.asarray(_field(data, "subject", path), np.int64)
  channels = [str(c) for c in _field(data, "X_labels", path)]
  classes = [str(c) for c in _field(data, "y_labels", path)]
  if not len(series) == len(y) == len(subject):
    raise DataError(f"{path}: {len(series)} series but {len(y)} labels and {len(subject)} subjects.")
  recordings = []
  for i, (x, label, s) in enumerate(zip(series, y, subject)):
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != len(channels):
      raise DataError(f"{path}: series {i} has shape {x.shape}, expected (T, {len(channels)}).")
    recordings.append(Recording(int(s), x, np.full(len(x), label, np.int64), session=i))
  return Dataset(classes, channels, recordings=recordings)
