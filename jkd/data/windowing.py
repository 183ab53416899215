"""Cut continuous recordings into labelled fixed-length windows.

Window starts in a recording of length T are ``range(start, T - window, step)``: the lab's PAMAP2
loop ``range(22, len - 100, 22)``, reproduced exactly. The upper bound ``T - window`` is exclusive,
so a window ending on the recording's last sample is never taken (a recording of exactly
``start + window`` samples yields no window). Windows never cross a recording, hence never a
subject or session boundary.

A window's label follows ``label_rule``; unlabelled samples (-1) never count toward a label and
windows whose label would be unlabelled are dropped:

* ``ends``: first and last labels agree (and are labelled); the label is the first (the lab's rule);
* ``all``: every sample carries the same label;
* ``majority``: the most frequent label among the labelled samples, ties to the smallest class.

Windows are strided views of each recording (numpy stride tricks, no copy) gathered once into one
preallocated (N, window, C) array, a few hundred windows per step: no Python loop runs per
window.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from jkd.data.base import UNLABELLED, DataError, Recording, aligned_empty

LABEL_RULES = ("ends", "all", "majority")
_GATHER_CHUNK = 256  # windows gathered per step


def window_starts(length: int, window: int, step: int, start: int) -> np.ndarray:
  """Start indices of the windows of a recording of `length` samples (exclusive bound, see above)."""
  return np.arange(start, length - window, step, dtype=np.int64)


def _strided(a: np.ndarray, n: int, window: int, step: int, start: int) -> np.ndarray:
  """Read-only view (n, window, *a.shape[1:]) of the windows of `a` starting at start + k*step."""
  a = a[start:]
  return as_strided(a, shape=(n, window, *a.shape[1:]), strides=(step * a.strides[0], *a.strides),
                    writeable=False)


def window_labels(y: np.ndarray, window: int, step: int, start: int, rule: str) -> np.ndarray:
  """Label of every window of the per-sample labels `y` (T,); UNLABELLED where the rule rejects it."""
  if rule not in LABEL_RULES:
    raise DataError(f"config.data.label_rule={rule!r} is unknown; choose one of {LABEL_RULES}.")
  n = len(window_starts(len(y), window, step, start))
  if n == 0:
    return np.zeros(0, np.int64)
  yw = _strided(np.ascontiguousarray(y, dtype=np.int64), n, window, step, start)  # (n, window)
  first = yw[:, 0]
  if rule == "ends":
    keep = first == yw[:, -1]
  elif rule == "all":
    keep = (yw == first[:, None]).all(axis=1)
  else:
    num_classes = int(y.max()) + 1
    if num_classes <= 0:
      return np.full(n, UNLABELLED, np.int64)
    labelled = yw != UNLABELLED
    flat = (np.arange(n)[:, None] * num_classes + yw)[labelled]
    counts = np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes)
    first = counts.argmax(axis=1)  # argmax returns the first maximum: ties go to the smallest class
    keep = counts.sum(axis=1) > 0
  return np.where(keep, first, UNLABELLED)


def make_windows(recordings: list[Recording], window: int, step: int, start: int,
                 rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All labelled windows of `recordings` as (x (N, window, C) float32, y (N,), subject (N,)).

  Windows are ordered by subject, then recording (the order the source gave within a subject),
  then time. Raises DataError when the window fits in no recording or a subject has no window.
  """
  if window < 1 or step < 1 or start < 0:
    raise DataError(f"config.data window={window}, step={step}, start={start}: need window >= 1, "
                    "step >= 1, start >= 0.")
  if not recordings:
    raise DataError("the data source returned no recordings; check config.data.path.")
  longest = max(len(r.y) for r in recordings)
  if start + window >= longest:
    raise DataError(f"config.data.window={window} (after start={start}) is longer than every "
                    f"recording (the longest has {longest} samples; a window needs "
                    "start + window < length); lower config.data.window or config.data.start.")
  order = sorted(range(len(recordings)), key=lambda i: recordings[i].subject)  # stable
  recordings = [recordings[i] for i in order]
  labels = [window_labels(r.y, window, step, start, rule) for r in recordings]
  kept = [np.flatnonzero(lab != UNLABELLED) for lab in labels]
  channels = recordings[0].x.shape[1]
  total = sum(len(k) for k in kept)
  x = aligned_empty((total, window, channels), np.float32)  # used in place by the devices
  y = np.empty(total, np.int64)
  subject = np.empty(total, np.int64)
  a = 0
  for rec, lab, keep in zip(recordings, labels, kept):
    b = a + len(keep)
    if len(keep):
      view = _strided(np.asarray(rec.x, np.float32), len(lab), window, step, start)
      for i in range(0, len(keep), _GATHER_CHUNK):  # chunks bound the gather's temporary
        part = keep[i:i + _GATHER_CHUNK]
        x[a + i:a + i + len(part)] = view[part]
    y[a:b] = lab[keep]
    subject[a:b] = rec.subject
    a = b
  missing = sorted(set(int(r.subject) for r in recordings) - set(np.unique(subject).tolist()))
  if missing:
    raise DataError(f"subjects {missing} have no labelled window of {window} samples "
                    f"(step {step}, start {start}, label_rule {rule!r}); lower config.data.window, "
                    "use another label_rule, or drop those subjects from the data.")
  return x, y, subject
