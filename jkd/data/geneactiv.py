"""Source `geneactiv`: the lab's GENEActiv wrist-accelerometer windows (lab-internal data).

Two layouts, chosen by ``config.data.path``:

* a directory with one folder per window length, ``<path>/<window>/``, holding one MATLAB file per
  window named ``ID-<subject>_CLASS-<class>_Window-<n>.mat`` with a single (1, L, 3) array (its
  variable name does not matter; ``<path>`` may also hold the .mat files directly). Reading
  ~100k tiny files is slow, so the first load writes an npz cache (``<path>/<window>.jkd-cache.npz``,
  or in ``config.data.cache_dir``, or ``~/.cache/jkd`` when those are not writable); a cache is
  used only while the folder's file names are unchanged (delete it after editing file contents);
* an ``.npz`` with ``x`` (N, L, 3), ``y`` (N,) raw CLASS ids and ``subject`` (N,).

Labels: the raw CLASS ids map to class indices by ``config.data.class_map``, a string
``"raw:index,raw:index,..."`` (e.g. ``"1:0,2:0,3:1"``), and must cover every id in the data. When
it is empty: if the data hold exactly ``num_classes`` distinct ids, they map in ascending order to
0..K-1 (the lab keeps the 7-class and 14-class sets in separate folders); if they hold 14 ids and
``num_classes`` is 7, `DEFAULT_14_TO_7` groups them. THAT GROUPING IS AN ASSUMPTION (nothing in
the notes jkd grew from lists the lab's classes): check it against your label list and set
``class_map`` to the lab's grouping; jkd warns each time it is used.

Windows are ordered by subject, then window number. Folds: ``num_folds`` (default 5) groups of
subjects (152 subjects: not leave-one-subject-out). Normalisation defaults to the lab's PAMAP2 rule
(``lab``), assumed to be what the lab used here too.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings

import ml_collections
import numpy as np

from jkd.data.base import DataError, Dataset, as_int_labels

FILE_PATTERN = re.compile(r"ID-(\d+)_CLASS-(\d+)_Window-(\d+)\.mat")
CHANNELS = ["x", "y", "z"]
# ASSUMED 14 -> 7 grouping by rank of the raw CLASS id (ascending): ranks 0,1 -> 0; 2,3 -> 1; ...
DEFAULT_14_TO_7 = tuple(rank // 2 for rank in range(14))


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "window": 1000,         # selects the folder <path>/<window>/ (the lab has 500 and 1000)
      "num_classes": 7,       # 7 or 14
      "class_map": "",        # "raw:index,..."; '' = see the module docstring
      "cache_dir": "",        # '' = next to the data
      "num_folds": 5,
      "normalize": "lab",
  })


def parse_class_map(text: str) -> dict[int, int]:
  """``"1:0,2:0,3:1"`` -> {1: 0, 2: 0, 3: 1}; DataError naming the bad entry."""
  mapping = {}
  for entry in text.replace(" ", "").split(","):
    if not entry:
      continue
    raw, sep, index = entry.partition(":")
    if not sep or not raw.lstrip("-").isdigit() or not index.isdigit():
      raise DataError(f"config.data.class_map entry {entry!r} is not 'raw:index'; write e.g. "
                      "'1:0,2:0,3:1'.")
    mapping[int(raw)] = int(index)
  return mapping


def class_mapping(raw_ids: np.ndarray, num_classes: int, class_map: str
                  ) -> tuple[dict[int, int], list[str]]:
  """(raw CLASS id -> class index, class names) for the ids present in the data (see docstring)."""
  present = sorted(set(np.unique(raw_ids).tolist()))
  if num_classes not in (7, 14):
    raise DataError(f"config.data.num_classes={num_classes}: GENEActiv has 7 or 14 classes.")
  if class_map:
    mapping = parse_class_map(class_map)
    unknown = [c for c in present if c not in mapping]
    if unknown:
      raise DataError(f"GENEActiv CLASS ids {unknown} are not in config.data.class_map; add them.")
    bad = sorted(set(i for i in mapping.values() if i >= num_classes))
    if bad:
      raise DataError(f"config.data.class_map maps to indices {bad}, outside 0..{num_classes - 1} "
                      f"(num_classes={num_classes}).")
  elif len(present) == num_classes:
    mapping = {c: k for k, c in enumerate(present)}
  elif len(present) == 14 and num_classes == 7:
    mapping = {c: DEFAULT_14_TO_7[rank] for rank, c in enumerate(present)}
    warnings.warn("GENEActiv: grouping the 14 CLASS ids into 7 classes by the ASSUMED default "
                  f"{mapping}; set config.data.class_map to the lab's grouping.", stacklevel=3)
  else:
    raise DataError(f"GENEActiv data hold {len(present)} CLASS ids {present} but "
                    f"config.data.num_classes={num_classes}; set config.data.class_map "
                    "('raw:index,...') or num_classes to match the data.")
  names = ["+".join(f"class-{c}" for c in sorted(mapping) if mapping[c] == k)
           for k in range(num_classes)]
  return mapping, [n or f"class-index-{k}" for k, n in enumerate(names)]


def _read_mat(path: str) -> np.ndarray:
  try:
    import scipy.io  # only this layout needs scipy
  except ImportError as e:
    raise DataError("reading GENEActiv .mat files needs scipy: `pip install scipy`, or convert the "
                    "windows to an .npz (x, y, subject) and point config.data.path at it.") from e
  content = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
  if len(content) != 1:
    raise DataError(f"{path} holds variables {sorted(content)}; expected exactly one (1, L, 3) "
                    "array.")
  array = np.asarray(next(iter(content.values())))
  if array.ndim not in (2, 3) or array.shape[-1] != 3 or (array.ndim == 3 and array.shape[0] != 1):
    raise DataError(f"{path} holds an array of shape {array.shape}; expected (1, L, 3).")
  return array.reshape(array.shape[-2], 3)


def _list_folder(folder: str) -> list[tuple[int, int, int, str]]:
  """(subject, window number, class, file name) of every window file, sorted."""
  entries = []
  for name in os.listdir(folder):
    if not name.endswith(".mat"):
      continue
    match = FILE_PATTERN.fullmatch(name)
    if not match:
      raise DataError(f"{os.path.join(folder, name)} is not named ID-<subject>_CLASS-<class>_"
                      "Window-<n>.mat; rename or move it.")
    subject, cls, number = (int(g) for g in match.groups())
    entries.append((subject, number, cls, name))
  if not entries:
    raise DataError(f"{folder} holds no ID-*_CLASS-*_Window-*.mat files; point config.data.path "
                    "at the folder holding the <window>/ folders of the GENEActiv windows.")
  return sorted(entries)


def _cache_paths(folder: str, cfg: ml_collections.ConfigDict) -> list[str]:
  folder = os.path.abspath(folder)
  tag = hashlib.sha1(folder.encode()).hexdigest()[:12]
  name = f"{os.path.basename(folder)}.jkd-cache.npz"
  if cfg.cache_dir:
    return [os.path.join(str(cfg.cache_dir), f"geneactiv-{tag}-{name}")]
  return [os.path.join(os.path.dirname(folder), name),
          os.path.join(os.path.expanduser("~/.cache/jkd"), f"geneactiv-{tag}-{name}")]


def _read_folder(folder: str, cfg: ml_collections.ConfigDict
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x, raw class, subject) of a folder of .mat windows, through the npz cache."""
  entries = _list_folder(folder)
  digest = hashlib.sha1("\n".join(e[3] for e in entries).encode()).hexdigest()
  caches = _cache_paths(folder, cfg)
  for cache in caches:
    if os.path.isfile(cache):
      with np.load(cache) as c:
        if str(c["digest"]) == digest:
          return c["x"], c["y"], c["subject"]
  first = _read_mat(os.path.join(folder, entries[0][3]))
  x = np.empty((len(entries), *first.shape), np.float32)
  for i, (_, _, _, name) in enumerate(entries):
    window = _read_mat(os.path.join(folder, name)) if i else first
    if window.shape != first.shape:
      raise DataError(f"{os.path.join(folder, name)} has {window.shape[0]} samples, "
                      f"{entries[0][3]} has {first.shape[0]}; one folder holds one window length.")
    x[i] = window
  y = np.array([e[2] for e in entries], np.int64)
  subject = np.array([e[0] for e in entries], np.int64)
  for cache in caches:
    try:
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      np.savez(cache, x=x, y=y, subject=subject, digest=np.array(digest))
      break
    except OSError:
      continue
  return x, y, subject


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    missing = [k for k in ("x", "y", "subject") if k not in f.files]
    if missing:
      raise DataError(f"{path} lacks arrays {missing}; a GENEActiv npz holds x (N, L, 3), y (N,) "
                      "raw CLASS ids and subject (N,).")
    x, y, subject = f["x"], f["y"], f["subject"]
  if x.ndim != 3 or x.shape[2] != 3 or y.shape != (len(x),) or subject.shape != (len(x),):
    raise DataError(f"{path}: x {x.shape}, y {y.shape}, subject {subject.shape} must be "
                    "(N, L, 3), (N,), (N,).")
  return (x.astype(np.float32, copy=False), as_int_labels(y, f"{path}: y"),
          as_int_labels(subject, f"{path}: subject"))


def load(cfg: ml_collections.ConfigDict) -> Dataset:
  """The GENEActiv windows of length `cfg.window` with labels mapped per `cfg.num_classes`."""
  path = str(cfg.path)
  if not path or not os.path.exists(path):
    raise DataError(f"config.data.path={path!r} does not exist. GENEActiv is the lab's own data "
                    "(jkd cannot ship it): point config.data.path at the folder holding the "
                    "<window>/ folders of ID-<subject>_CLASS-<class>_Window-<n>.mat files, or at "
                    "an .npz with x, y (raw CLASS ids), subject.")
  if os.path.isfile(path):
    x, raw, subject = _read_npz(path)
  else:
    folder = os.path.join(path, str(cfg.window))
    x, raw, subject = _read_folder(folder if os.path.isdir(folder) else path, cfg)
  if x.shape[1] != int(cfg.window):
    raise DataError(f"the GENEActiv windows at {path} have {x.shape[1]} samples but "
                    f"config.data.window={cfg.window}; set it to {x.shape[1]} or point "
                    "config.data.path at the other window size.")
  mapping, classes = class_mapping(raw, int(cfg.num_classes), str(cfg.class_map))
  keys = np.array(sorted(mapping), np.int64)
  y = np.array([mapping[k] for k in keys.tolist()], np.int64)[np.searchsorted(keys, raw)]
  return Dataset(classes, CHANNELS, x=x, y=y, subject=subject)
