"""Sources `windows` and `streams`: a user's own data as one `.npz` file (numpy.savez).

``windows`` — ready windows:
  ``x`` (N, L, C) float, ``y`` (N,) int class index, ``subject`` (N,) int.
``streams`` — continuous recordings, one row per sample:
  ``x`` (T, C) float, ``y`` (T,) int, ``subject`` (T,) int, optional ``session`` (T,) int.
  Every contiguous run of rows with the same (subject, session) is one recording; windows never
  cross from one run into the next.

Both: optional ``classes`` (K,) and ``channels`` (C,) names. Labels are class indices 0..K-1
(K = len(classes), else max label + 1); ``config.data.ignore_label`` (default -1) marks
unlabelled rows or windows, which never form or label a window.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jkd.data.base import UNLABELLED, DataError, Dataset, Recording, as_int_labels


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"ignore_label": -1})


def _read(cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  path = str(cfg.path)
  if not path:
    raise DataError(f"config.data.path is empty; point it at your .npz file for source "
                    f"{cfg.name!r} (see jkd/data/npz.py for the arrays it must hold).")
  if not os.path.isfile(path):
    raise DataError(f"config.data.path={path!r} is not a file; point it at your .npz for source "
                    f"{cfg.name!r}.")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (ValueError, OSError) as e:
    raise DataError(f"config.data.path={path!r} is not a readable .npz of plain arrays ({e}); "
                    "write it with numpy.savez.") from e
  missing = [k for k in ("x", "y", "subject") if k not in arrays]
  if missing:
    raise DataError(f"{path} lacks arrays {missing}; source {cfg.name!r} needs x, y and subject "
                    f"(it holds {sorted(arrays)}).")
  return arrays


def _names(arrays: dict[str, np.ndarray], key: str, count: int, prefix: str, path: str) -> list[str]:
  if key not in arrays:
    return [f"{prefix}{i}" for i in range(count)]
  names = [str(n) for n in np.asarray(arrays[key]).reshape(-1)]
  if len(names) != count:
    raise DataError(f"{path}: `{key}` has {len(names)} names but the data have {count}.")
  return names


def _labels(arrays: dict[str, np.ndarray], cfg: ml_collections.ConfigDict, rows: int,
            path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """(y with ignore_label -> -1, subject, class names), checked against `rows` and each other."""
  y = as_int_labels(arrays["y"], f"{path}: y")
  subject = as_int_labels(arrays["subject"], f"{path}: subject")
  if y.shape != (rows,) or subject.shape != (rows,):
    raise DataError(f"{path}: y {y.shape} and subject {subject.shape} must both be ({rows},), "
                    "one entry per row of x.")
  y = np.where(y == int(cfg.ignore_label), UNLABELLED, y)
  labelled = y[y != UNLABELLED]
  num_classes = len(arrays["classes"]) if "classes" in arrays else (
      int(labelled.max()) + 1 if len(labelled) else 0)
  return y, subject, _names(arrays, "classes", num_classes, "class", path)


def _float(x: np.ndarray, ndim: int, shape: str, path: str) -> np.ndarray:
  if x.ndim != ndim or x.dtype.kind not in "fiu":
    raise DataError(f"{path}: x must be a real-valued {shape} array, got {x.dtype} {x.shape}.")
  return x.astype(np.float32, copy=False)


def _windows(cfg: ml_collections.ConfigDict) -> Dataset:
  arrays, path = _read(cfg), str(cfg.path)
  x = _float(arrays["x"], 3, "(N, L, C)", path)
  y, subject, classes = _labels(arrays, cfg, len(x), path)
  return Dataset(classes, _names(arrays, "channels", x.shape[2], "ch", path), x=x, y=y,
                 subject=subject)


def _streams(cfg: ml_collections.ConfigDict) -> Dataset:
  arrays, path = _read(cfg), str(cfg.path)
  x = _float(arrays["x"], 2, "(T, C)", path)
  y, subject, classes = _labels(arrays, cfg, len(x), path)
  session = (as_int_labels(arrays["session"], f"{path}: session") if "session" in arrays
             else np.zeros(len(x), np.int64))
  if session.shape != (len(x),):
    raise DataError(f"{path}: session {session.shape} must be ({len(x)},), one entry per row.")
  change = np.flatnonzero((np.diff(subject) != 0) | (np.diff(session) != 0)) + 1
  bounds = np.concatenate([[0], change, [len(x)]])
  recordings = [Recording(int(subject[a]), x[a:b], y[a:b], int(session[a]))
                for a, b in zip(bounds[:-1], bounds[1:])]
  return Dataset(classes, _names(arrays, "channels", x.shape[1], "ch", path),
                 recordings=recordings)


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """Source `windows` or `streams` (by `cfg.name`) from the .npz at `cfg.path`."""
  return _streams(cfg) if cfg.name == "streams" else _windows(cfg)
