"""Data sources by name, the `config.data` every source shares, and loading a source's windows.

`config.data.name` picks a source module (imported only when used, so a source's optional
dependency matters only for that source). Each module exposes ``default_config()`` (its own keys,
and its own values for any common key below) and ``load(cfg) -> base.Dataset``.

Common keys (defaults for sources that do not override them; PAMAP2 overrides several):

* ``path`` (str): where the data are ('' = the source's default, if it has one);
* ``window``, ``step``, ``start`` (int, samples): windowing of continuous recordings,
  starts ``range(start, T - window, step)`` (`windowing`);
* ``label_rule``: ``ends`` | ``all`` | ``majority`` (`windowing`);
* ``normalize``: ``lab`` | ``zscore`` | ``none`` (`normalize`), fitted per fold on training subjects;
* ``test_subjects`` (tuple), ``num_folds`` (int, 0 = leave-one-subject-out), ``fold_seed`` (int),
  ``val_subjects`` (tuple, fixed validation subjects), ``num_val_subjects`` (int, per-fold
  validation subjects drawn from the training subjects): see `folds`.
"""

from __future__ import annotations

import contextlib
import json
import numbers
from types import ModuleType
from typing import Iterator

import ml_collections
import numpy as np

from jkd.data import normalize, windowing
from jkd.registry import Registry
from jkd.data.base import (DataError, Dataset, Recording, Windows, aligned_empty, check_finite,
                           check_labels)

# Data sources by name, each a module imported on first use (`jkd.registry`); a user's module may
# register its own (`SOURCES.register("mine", "my_package.my_source")`).
SOURCES = Registry("data source", DataError)
for _name, _module in (("pamap2", "jkd.data.pamap2"), ("geneactiv", "jkd.data.geneactiv"),
                       ("windows", "jkd.data.npz"), ("streams", "jkd.data.npz"),
                       ("watch", "jkd.data.watch")):
  SOURCES.register(_name, _module)


def common_config() -> ml_collections.ConfigDict:
  """The keys every source shares, with the defaults of sources that do not override them."""
  return ml_collections.ConfigDict({
      "name": "",
      "path": "",
      "window": 100,
      "step": 50,
      "start": 0,
      "label_rule": "all",
      "normalize": "zscore",
      "test_subjects": (),
      "num_folds": 0,
      "fold_seed": 0,
      "val_subjects": (),
      "num_val_subjects": 0,
  })


def source(name: str) -> ModuleType:
  """The module of source `name` (imported on first use)."""
  if name not in SOURCES:
    raise DataError(f"config.data.name={name!r} is not a data source; choose one of "
                    f"{sorted(SOURCES)}.")
  return SOURCES[name]


def default_config(name: str) -> ml_collections.ConfigDict:
  """The full default `config.data` of source `name`: the common keys, updated by the source's."""
  merged = common_config().to_dict()
  merged.update(source(name).default_config().to_dict())
  merged["name"] = name
  return ml_collections.ConfigDict(merged)


# Common integer keys and the least value each takes.
_MINIMA = {"window": 1, "step": 1, "start": 0, "num_folds": 0, "num_val_subjects": 0}


def sources_with_key(key: str) -> list[str]:
  """The sources whose `config.data` has `key` (to say where a misplaced key belongs)."""
  return [name for name in sorted(SOURCES) if key in default_config(name)]


def check_config(cfg: ml_collections.ConfigDict) -> None:
  """The source name and the common keys' values; DataError with one line naming the key."""
  source(cfg.name)
  for key, low in _MINIMA.items():
    v = cfg.get(key, low)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
      raise DataError(f"config.data.{key}={v!r} must be an integer >= {low}.")
  for key in ("test_subjects", "val_subjects"):
    v = cfg.get(key, ())
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in v):
      raise DataError(f"config.data.{key}={tuple(v)!r} must list subject ids (integers), e.g. "
                      f"--config.data.{key}='(1,2)'.")
  _check_config(cfg)


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  if cfg.label_rule not in windowing.LABEL_RULES:
    raise DataError(f"config.data.label_rule={cfg.label_rule!r} is unknown; choose one of "
                    f"{windowing.LABEL_RULES}.")
  if cfg.normalize not in normalize.NORMALIZE_RULES:
    raise DataError(f"config.data.normalize={cfg.normalize!r} is unknown; choose one of "
                    f"{normalize.NORMALIZE_RULES}.")


def _check_recordings(ds: Dataset, name: str) -> None:
  channels = len(ds.channels)
  for r in ds.recordings:
    what = f"{name} recording of subject {r.subject} (session {r.session})"
    if r.x.ndim != 2 or r.x.shape[1] != channels or r.y.shape != (r.x.shape[0],):
      raise DataError(f"{what}: x {r.x.shape} and y {r.y.shape} must be (T, {channels}) and (T,).")
    check_finite(r.x, what)
    check_labels(r.y, len(ds.classes), what)


def _ready_windows(ds: Dataset, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A source's ready windows, validated, unlabelled ones dropped, ordered by subject (stable)."""
  x, y, subject = ds.x, np.asarray(ds.y, np.int64), np.asarray(ds.subject, np.int64)
  if (x.ndim != 3 or x.shape[2] != len(ds.channels) or y.shape != (len(x),)
      or subject.shape != y.shape):
    raise DataError(f"{name}: x {x.shape}, y {y.shape}, subject {subject.shape} must be "
                    f"(N, L, {len(ds.channels)}), (N,), (N,).")
  check_finite(x, f"{name}: x")
  check_labels(y, len(ds.classes), f"{name}: y")
  everyone = np.unique(subject)
  labelled = np.flatnonzero(y != -1)
  missing = sorted(set(everyone.tolist()) - set(np.unique(subject[labelled]).tolist()))
  if missing:
    raise DataError(f"{name}: subjects {missing} have no labelled window; label them or drop them.")
  rows = labelled[np.argsort(subject[labelled], kind="stable")]   # labelled, ordered by subject
  y, subject = y[rows], subject[rows]
  if not np.array_equal(rows, np.arange(len(x))):
    x = _aligned_take(x, rows)          # one copy for both, into memory the devices use in place
  return np.asarray(x, np.float32), y, subject


def _aligned_take(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """x[rows] as float32, in a buffer the devices use in place (`aligned_empty`)."""
  out = aligned_empty((len(rows), *x.shape[1:]), np.float32)
  if x.dtype == np.float32:
    np.take(x, rows, axis=0, out=out)
  else:
    out[...] = x[rows]
  return out


_kept: dict[str, Windows] | None = None


@contextlib.contextmanager
def keep_loaded() -> Iterator[None]:
  """Within this block `load` of an equal config returns the windows it already loaded (one set):
  `jkd.main` loads the data to check it before anything is written, then every stage reuses it."""
  global _kept
  outer = _kept
  _kept = {} if outer is None else outer
  try:
    yield
  finally:
    _kept = outer


def load(data_cfg: ml_collections.ConfigDict) -> Windows:
  """Every window of source `data_cfg.name`, preprocessed, not normalised; ordered by subject,
  then recording, then time."""
  key = None
  if _kept is not None:
    key = json.dumps(data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg),
                     sort_keys=True, default=str)
    if key in _kept:
      return _kept[key]
  windows = _load(data_cfg)
  if key is not None:
    _kept.clear()
    _kept[key] = windows
  return windows


def _load(data_cfg: ml_collections.ConfigDict) -> Windows:
  _check_config(data_cfg)
  ds = source(data_cfg.name).load(data_cfg)
  if ds.recordings is not None:
    _check_recordings(ds, data_cfg.name)
    x, y, subject = windowing.make_windows(ds.recordings, int(data_cfg.window),
                                           int(data_cfg.step), int(data_cfg.start),
                                           str(data_cfg.label_rule))
  else:
    where = f"{data_cfg.name} data at {data_cfg.path}" if data_cfg.path else data_cfg.name
    x, y, subject = _ready_windows(ds, where)
  if len(x) == 0:
    raise DataError(f"{data_cfg.name}: no labelled window in the data at {data_cfg.path!r}.")
  return Windows(x, y, subject, list(ds.classes), list(ds.channels))


def load_windows(data_cfg: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x (N, window, C) float32, y (N,) int64, subject (N,) int64) of `load`, in its order."""
  w = load(data_cfg)
  return w.x, w.y, w.subject


__all__ = ["DataError", "Dataset", "Recording", "Windows", "SOURCES", "common_config", "source",
           "default_config", "sources_with_key", "check_config", "keep_loaded", "load",
           "load_windows"]
