"""What every data source returns before windowing and folds, and the checks every source passes."""

from __future__ import annotations

import dataclasses

import numpy as np

UNLABELLED = -1
"""Label of a sample (or window) that belongs to no class; such samples never count toward a label."""


ALIGNMENT = 64
"""Bytes: XLA:CPU uses a host buffer that starts on such a boundary in place, without a copy."""


def aligned_empty(shape: tuple[int, ...], dtype, alignment: int = ALIGNMENT) -> np.ndarray:
  """An uninitialised C-contiguous array whose data starts on an `alignment`-byte boundary: the
  windows are allocated so, and the devices then use them without another copy."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + nbytes].view(dtype).reshape(shape)


class DataError(ValueError):
  """A problem with the user's data or data config; the message names the thing and the fix."""


@dataclasses.dataclass
class Recording:
  """One continuous recording of one subject (windows never cross recordings)."""
  subject: int
  x: np.ndarray            # (T, C) float32
  y: np.ndarray            # (T,) int64 class index in [0, K); -1 = unlabelled
  session: int = 0


@dataclasses.dataclass
class Dataset:
  """A source's output: either continuous `recordings` or ready-made windows `x, y, subject`."""
  classes: list[str]
  channels: list[str]
  recordings: list[Recording] | None = None
  x: np.ndarray | None = None        # (N, L, C) float32, already windowed
  y: np.ndarray | None = None        # (N,) int64
  subject: np.ndarray | None = None  # (N,) int64


@dataclasses.dataclass
class Windows:
  """All windows of a source, ordered by subject, then recording, then time (not normalised)."""
  x: np.ndarray        # (N, L, C) float32
  y: np.ndarray        # (N,) int64 in [0, len(classes))
  subject: np.ndarray  # (N,) int64
  classes: list[str]
  channels: list[str]


_CHECK_CHUNK = 1 << 22  # elements per finiteness check, so a check never copies the whole array


def check_finite(x: np.ndarray, what: str) -> None:
  """Raise DataError when `x` holds NaN or inf (checked in chunks, no full-size temporary)."""
  flat = x.reshape(-1)
  for a in range(0, flat.size, _CHECK_CHUNK):
    part = flat[a:a + _CHECK_CHUNK]
    if not np.isfinite(part).all():
      bad = a + int(np.flatnonzero(~np.isfinite(part))[0])
      at = tuple(int(i) for i in np.unravel_index(bad, x.shape))
      raise DataError(f"{what} holds NaN or inf after preprocessing (first at index {at}); fill "
                      "or drop missing values before handing the data to jkd.")


def check_labels(y: np.ndarray, num_classes: int, what: str) -> None:
  """Raise DataError for labels outside [0, num_classes) other than UNLABELLED."""
  bad = (y != UNLABELLED) & ((y < 0) | (y >= num_classes))
  if bad.any():
    values = np.unique(y[bad])[:10].tolist()
    raise DataError(f"{what} has label values {values} outside 0..{num_classes - 1} "
                    f"({num_classes} classes) and not {UNLABELLED} (unlabelled); map them to class "
                    "indices, list them in the source's classes, or mark them unlabelled.")


def as_int_labels(y: np.ndarray, what: str) -> np.ndarray:
  """Labels as int64; DataError when they are not whole numbers."""
  y = np.asarray(y)
  if y.dtype.kind in "iu":
    return y.astype(np.int64, copy=False)
  if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
    return y.astype(np.int64)
  raise DataError(f"{what} must hold integer class labels, got dtype {y.dtype}; "
                  "encode classes as integers 0..K-1.")
