"""PAMAP2 source: the UCI Protocol `.dat` files or the lab's pickle, preprocessed as the lab does.

docs/protocol.md §6.1 (the lab's pipeline, which follows the public PAMAP2 preprocessing of Hammerla et
al. 2016), per subject file, in this order; every step has a config key, defaults = the lab:

1. drop rows whose activity is in `drop_activities` (0 = transient, 8, 9, 10, 11, 18, 19, 20);
   any id in neither that list nor `activities` is a DataError;
2. label = index of the activity in `activities` ([24, 1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17]);
3. keep heart rate + per IMU temperature, acc16, acc6, gyro, mag (40 channels);
   `orientation=True` also keeps the 4 orientation columns per IMU (52 channels);
4. heart rate filled forward from the last valid value (`fill_heart_rate`), AFTER step 1 (the
   lab's order, so a value is carried across the dropped rows); NaNs before a subject's first valid
   heart rate stay NaN and, like every other NaN, become 0 (the lab's code does exactly this);
5. min-max scaling with the lab's fixed bounds (`minmax`): (x - min) / (max - min), then > 1 -> 0.99
   and < 0 -> 0 (a NaN turned 0 in step 4 is scaled too, so it becomes -min / (max - min));
   orientation channels, which the lab never kept, use bounds [-1, 1];
6. keep rows 0, 3, 6, ... (`downsample`, 100 Hz -> 33.3 Hz) of the subject's rows left after step 1,
   i.e. per subject and after dropping: the kept rows run across the gaps of dropped activities, as
   in the lab's pickle (one array per subject; windows may span a gap).

Arithmetic is float64 as in the lab (np.loadtxt), cast to float32 at the end. The lab saved the
result as `pamap2_12cls9sbj.data`, a Python-2 pickle of 9 (X, y) pairs; `path` may point at it
(read with a restricted unpickler: numpy arrays and containers only) or at the `PAMAP2_Dataset` or
its `Protocol` folder. `parser` picks the `.dat` parser (`jkd.data.pamap2_parse`: "auto" = the
compiled one where the install built it, else polars when the `pamap2` extra is installed, else
numpy; all give the same arrays). Parsed + preprocessed
subjects are cached in `cache_dir`, keyed by a SHA-256 of the file bytes and the options (not the
parser).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import tempfile
import warnings
import zipfile

import ml_collections
import numpy as np

from jkd.data import lab_pickle, pamap2_parse
from jkd.data.base import DataError, Dataset, Recording

SUBJECTS = tuple(range(101, 110))
PICKLE_NAME = "pamap2_12cls9sbj.data"
CACHE_VERSION = 1  # bump when preprocessing changes: old cache entries stop matching

ACTIVITY_NAMES = {
    0: "transient", 1: "lying", 2: "sitting", 3: "standing", 4: "walking", 5: "running",
    6: "cycling", 7: "Nordic walking", 9: "watching TV", 10: "computer work", 11: "car driving",
    12: "ascending stairs", 13: "descending stairs", 16: "vacuum cleaning", 17: "ironing",
    18: "folding laundry", 19: "house cleaning", 20: "playing soccer", 24: "rope jumping",
}
IMUS = ("hand", "chest", "ankle")  # columns 3-19, 20-36, 37-53
IMU_FIELDS = ("temperature", "acc16_x", "acc16_y", "acc16_z", "acc6_x", "acc6_y", "acc6_z",
              "gyro_x", "gyro_y", "gyro_z", "mag_x", "mag_y", "mag_z",
              "orientation_0", "orientation_1", "orientation_2", "orientation_3")
COLUMNS = 54
HEART_RATE_COLUMN, ACTIVITY_COLUMN = 2, 1

# The lab's min-max bounds (docs/protocol.md §6.1), in the 40-channel order of step 3.
MAX_BOUNDS = (202.0, 35.5, 47.6314, 155.532, 157.76, 45.5484, 62.2598, 61.728, 21.8452, 13.1222,
              14.2184, 137.544, 109.181, 100.543, 38.5625, 26.386, 153.582, 37.2936, 23.9101,
              61.9328, 36.9676, 15.5171, 5.97964, 2.94183, 80.4739, 39.7391, 95.8415, 35.4375,
              157.232, 157.293, 150.99, 61.9509, 62.0461, 60.9357, 17.4204, 13.5882, 13.9617,
              91.4247, 92.867, 146.651)
MIN_BOUNDS = (0.0, 0.0, -114.755, -104.301, -73.0384, -61.1938, -61.8086, -61.4193, -27.8044,
              -17.8495, -14.2647, -103.941, -200.043, -163.608, 0.0, -29.0888, -38.1657, -57.2366,
              -32.9627, -39.7561, -56.0108, -10.1563, -5.06858, -3.99487, -70.0627, -122.48,
              -66.6847, 0.0, -155.068, -155.617, -156.179, -60.3067, -61.9064, -62.2629, -14.162,
              -13.0401, -14.0196, -172.865, -137.908, -102.232)
ORIENTATION_BOUNDS = (-1.0, 1.0)  # unit-quaternion components

_DOWNLOAD = ("download \"PAMAP2 Physical Activity Monitoring\" from the UCI Machine Learning "
             "Repository and point config.data.path at its PAMAP2_Dataset (or Protocol) folder, "
             f"or at the lab's pickle {PICKLE_NAME}")
# options that change the arrays (cache key; must be the defaults for the already-made pickle)
_PREPROCESSING = ("drop_activities", "activities", "orientation", "fill_heart_rate", "minmax",
                  "downsample")


def default_config() -> ml_collections.ConfigDict:
  """PAMAP2's keys and its values for the common windowing keys (the lab's setup)."""
  return ml_collections.ConfigDict({
      "path": "",
      "window": 100,
      "step": 22,
      "start": 22,
      "label_rule": "ends",
      "normalize": "lab",
      "subjects": SUBJECTS,
      "drop_activities": (0, 8, 9, 10, 11, 18, 19, 20),
      "activities": (24, 1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17),
      "orientation": False,
      "fill_heart_rate": True,
      "minmax": True,
      "downsample": 3,
      "cache_dir": "~/.cache/jkd",
      "workers": 0,  # threads parsing files; 0 = one per CPU core
      "parser": "auto",  # .dat parser: auto (c, else polars, else numpy), c, numpy, polars
  })


def _opt(cfg, key: str):
  """cfg[key], or the PAMAP2 default when cfg (a ConfigDict or dict) lacks it."""
  return cfg.get(key, default_config()[key])


def channel_names(orientation: bool = False) -> list[str]:
  fields = IMU_FIELDS if orientation else IMU_FIELDS[:13]
  return ["heart_rate"] + [f"{imu}_{f}" for imu in IMUS for f in fields]


def channel_columns(orientation: bool = False) -> np.ndarray:
  """Columns of a 54-column row that make the channels of `channel_names`."""
  per_imu = 17 if orientation else 13
  return np.array([HEART_RATE_COLUMN] + [3 + 17 * i + j for i in range(3) for j in range(per_imu)])


def bounds(orientation: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(min, max) per channel: the lab's 40, with [-1, 1] for the orientation channels."""
  if not orientation:
    return np.array(MIN_BOUNDS), np.array(MAX_BOUNDS)
  lo, hi = [MIN_BOUNDS[0]], [MAX_BOUNDS[0]]
  for i in range(3):
    lo += MIN_BOUNDS[1 + 13 * i:14 + 13 * i] + (ORIENTATION_BOUNDS[0],) * 4
    hi += MAX_BOUNDS[1 + 13 * i:14 + 13 * i] + (ORIENTATION_BOUNDS[1],) * 4
  return np.array(lo), np.array(hi)


def _options(cfg) -> dict:
  opts = {k: _opt(cfg, k) for k in _PREPROCESSING}
  opts["drop_activities"] = [int(a) for a in opts["drop_activities"]]
  opts["activities"] = [int(a) for a in opts["activities"]]
  if len(set(opts["activities"])) != len(opts["activities"]):
    raise DataError(f"config.data.activities={tuple(opts['activities'])} repeats an id.")
  if set(opts["activities"]) & set(opts["drop_activities"]):
    raise DataError(f"activity ids {sorted(set(opts['activities']) & set(opts['drop_activities']))}"
                    " are in both config.data.activities and config.data.drop_activities.")
  if not isinstance(opts["downsample"], int) or opts["downsample"] < 1:
    raise DataError(f"config.data.downsample={opts['downsample']!r} must be an integer >= 1 "
                    "(3 = the lab's 33.3 Hz, 1 = keep 100 Hz).")
  for k in ("orientation", "fill_heart_rate", "minmax"):
    opts[k] = bool(opts[k])
  return opts


def fill_forward(v: np.ndarray) -> np.ndarray:
  """Each NaN replaced by the last non-NaN before it; NaNs before the first value stay NaN."""
  idx = np.where(np.isnan(v), 0, np.arange(len(v)))
  np.maximum.accumulate(idx, out=idx)
  return v[idx]


def label_index(activity: np.ndarray, activities: list[int]) -> np.ndarray:
  """Position of each activity id in `activities` (every id must be there)."""
  order = np.argsort(activities)
  return order[np.searchsorted(np.asarray(activities, np.float64)[order], activity)]


def preprocess(raw: np.ndarray, opts: dict, where: str = "PAMAP2") -> tuple[np.ndarray,
                                                                               np.ndarray]:
  """Steps 1-6 on one subject's (T, 54) rows -> (x (T', C) float32, y (T',) int64)."""
  activity = raw[:, ACTIVITY_COLUMN]
  known = np.array(opts["activities"] + opts["drop_activities"], np.float64)
  unknown = np.unique(activity[~np.isin(activity, known)])
  if unknown.size:
    raise DataError(f"{where}: activity ids {unknown.tolist()} are neither in "
                    f"config.data.activities {tuple(opts['activities'])} nor in "
                    f"config.data.drop_activities {tuple(opts['drop_activities'])}; add them to "
                    "one of the two.")
  # Steps 5 and the NaN -> 0 of step 4 act per value, so they run after step 6's row selection
  # (same numbers, a third of the work); only the heart-rate fill needs every kept row.
  kept = np.flatnonzero(~np.isin(activity, np.array(opts["drop_activities"], np.float64)))  # 1
  step = opts["downsample"]
  y = label_index(activity[kept[::step]], opts["activities"])                             # 2, 6
  x = raw[kept[::step, None], channel_columns(opts["orientation"])]                       # 3, 6
  if opts["fill_heart_rate"]:                                                              # 4
    x[:, 0] = fill_forward(raw[kept, HEART_RATE_COLUMN])[::step]
  np.copyto(x, 0.0, where=np.isnan(x))
  if opts["minmax"]:                                                                       # 5
    lo, hi = bounds(opts["orientation"])
    x -= lo
    x /= hi - lo
    np.copyto(x, 0.99, where=x > 1)
    np.copyto(x, 0.0, where=x < 0)
  if not np.isfinite(x).all():
    bad = np.argwhere(~np.isfinite(x))[0]
    raise DataError(f"{where}: non-finite value left after preprocessing at row {bad[0]}, channel "
                    f"{channel_names(opts['orientation'])[bad[1]]}; the raw file holds inf "
                    "(set config.data.minmax=True to clamp it, or fix the file).")
  if len(x) == 0:
    raise DataError(f"{where}: no rows of config.data.activities {tuple(opts['activities'])}; is "
                    "this a PAMAP2 Protocol file?")
  return x.astype(np.float32), y.astype(np.int64)


# ---- the lab's pickle -------------------------------------------------------------------------

def _load_pickle(path: str, subjects: list[int], opts: dict) -> list[Recording]:
  changed = [k for k in _PREPROCESSING if _normal(opts[k]) != _normal(default_config()[k])]
  if changed:
    raise DataError(f"config.data.path is the lab's already preprocessed pickle, so "
                    f"{', '.join(f'config.data.{k}' for k in changed)} cannot apply; keep the "
                    "defaults or point config.data.path at the PAMAP2_Dataset (or Protocol) "
                    "folder.")
  pairs = lab_pickle.read(path, len(channel_names()), PICKLE_NAME, _DOWNLOAD)
  if len(pairs) != len(SUBJECTS):
    raise DataError(f"{path}: {len(pairs)} (X, y) pairs, expected {len(SUBJECTS)} (subjects "
                    f"{SUBJECTS[0]}..{SUBJECTS[-1]} in order).")
  recordings = []
  for s in subjects:
    x, y = pairs[SUBJECTS.index(s)]
    if y.size and (y.min() < 0 or y.max() >= len(opts["activities"])):
      raise DataError(f"{path}, subject {s}: labels {np.unique(y).tolist()} are outside "
                      f"0..{len(opts['activities']) - 1}.")
    recordings.append(Recording(subject=s, x=x, y=y, session=0))
  return recordings


def _normal(v):
  return [int(a) for a in v] if isinstance(v, (list, tuple)) else v


# ---- the .dat files and their cache -------------------------------------------------------------

def _file_digest(path: str) -> str:
  """SHA-256 of the file's bytes (hardware-accelerated on most x86 CPUs; ~0.8 GB/s measured)."""
  h, buf = hashlib.sha256(), bytearray(1 << 22)
  view = memoryview(buf)
  with open(path, "rb", buffering=0) as f:
    while n := f.readinto(buf):
      h.update(view[:n])
  return h.hexdigest()


def cache_entry(cache_dir: str, path: str, subject: int, opts: dict) -> str:
  """Cache file of one subject: named by a hash of the file's bytes and the options."""
  key = json.dumps({"version": CACHE_VERSION, "file": _file_digest(path), "subject": subject,
                    "options": opts}, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:32]
  return os.path.join(os.path.expanduser(cache_dir), "pamap2", f"subject{subject}-{digest}.npz")


def _read_cache(entry: str, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
  if not os.path.exists(entry):
    return None
  try:
    with np.load(entry) as z:
      x, y = z["x"], z["y"]
    if (x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or x.shape[1] != channels
        or y.shape != (len(x),)):
      raise ValueError(f"unexpected arrays x {x.shape} {x.dtype}, y {y.shape} {y.dtype}")
    return x, y
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    warnings.warn(f"ignoring corrupt PAMAP2 cache entry {entry} ({type(e).__name__}: {e}); "
                  "rebuilding it", stacklevel=2)
    return None


def _write_cache(entry: str, x: np.ndarray, y: np.ndarray) -> None:
  """Atomic: a temp file in the same folder, then os.replace (readers never see half a file)."""
  try:
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(entry), suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(f, x=x, y=y)
      os.replace(tmp, entry)
    finally:
      if os.path.exists(tmp):
        os.unlink(tmp)
  except OSError as e:
    warnings.warn(f"could not write the PAMAP2 cache entry {entry} ({e}); set config.data."
                  "cache_dir to a writable folder, or '' to turn caching off", stacklevel=2)


def _subject_file(folder: str, subject: int) -> str:
  return os.path.join(folder, f"subject{subject}.dat")


def _load_dat(folder: str, subjects: list[int], opts: dict, cache_dir: str,
              workers: int, parser: str = "auto") -> list[Recording]:
  if parser not in pamap2_parse.PARSERS:
    raise DataError(f"config.data.parser={parser!r}: choose one of "
                    f"{', '.join(pamap2_parse.PARSERS)}.")
  missing = [_subject_file(folder, s) for s in subjects
             if not os.path.isfile(_subject_file(folder, s))]
  if missing:
    raise DataError(f"missing PAMAP2 subject files: {', '.join(missing)}; the Protocol folder "
                    f"holds subject101.dat ... subject109.dat ({_DOWNLOAD}), or set "
                    "config.data.subjects to those you have.")
  channels = len(channel_names(opts["orientation"]))

  def one(subject: int) -> Recording:
    path = _subject_file(folder, subject)
    entry = cache_entry(cache_dir, path, subject, opts) if cache_dir else ""
    got = _read_cache(entry, channels) if entry else None
    if got is None:
      got = preprocess(pamap2_parse.parse_dat(path, COLUMNS, parser), opts, where=path)
      if entry:
        _write_cache(entry, *got)
    return Recording(subject=subject, x=got[0], y=got[1], session=0)

  workers = workers or min(len(subjects), os.cpu_count() or 1)
  if workers <= 1:
    return [one(s) for s in subjects]
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(one, subjects))


def resolve(path: str) -> tuple[str, str]:
  """('pickle', file) or ('dat', Protocol folder) for config.data.path."""
  if not path:
    raise DataError(f"config.data.path is empty; {_DOWNLOAD}.")
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise DataError(f"config.data.path={path!r} does not exist; {_DOWNLOAD}.")
  if os.path.isfile(path):
    if path.endswith(".dat"):
      raise DataError(f"config.data.path={path!r} is one subject's file; point it at the folder "
                      "holding subject101.dat ... subject109.dat (PAMAP2_Dataset/Protocol).")
    return "pickle", path
  for folder in (path, os.path.join(path, "Protocol")):
    if any(os.path.isfile(_subject_file(folder, s)) for s in SUBJECTS):
      return "dat", folder
  if os.path.isfile(os.path.join(path, PICKLE_NAME)):
    return "pickle", os.path.join(path, PICKLE_NAME)
  raise DataError(f"config.data.path={path!r} holds no subject1NN.dat files (nor a Protocol folder "
                  f"with them) and no {PICKLE_NAME}; {_DOWNLOAD}.")


def load(cfg) -> Dataset:
  """PAMAP2 per-subject recordings after the lab's preprocessing (see the module docstring)."""
  opts = _options(cfg)
  subjects = [int(s) for s in _opt(cfg, "subjects")]
  unknown = sorted(set(subjects) - set(SUBJECTS))
  if unknown or not subjects:
    raise DataError(f"config.data.subjects={tuple(subjects)}: PAMAP2 subjects are "
                    f"{SUBJECTS[0]}..{SUBJECTS[-1]}"
                    + (f"; {unknown} are not." if unknown else "."))
  kind, where = resolve(str(_opt(cfg, "path")))
  if kind == "pickle":
    recordings = _load_pickle(where, subjects, opts)
  else:
    recordings = _load_dat(where, subjects, opts, str(_opt(cfg, "cache_dir")),
                           int(_opt(cfg, "workers")), str(_opt(cfg, "parser")))
  return Dataset(classes=[ACTIVITY_NAMES.get(a, f"activity {a}") for a in opts["activities"]],
                 channels=channel_names(opts["orientation"]), recordings=recordings)
