"""The lab's pickles of preprocessed data (e.g. PAMAP2's `pamap2_12cls9sbj.data`): read without
running any code from the file — numpy arrays and plain containers only, every other global refused.
"""

from __future__ import annotations

import pickle

import numpy as np

from jkd.data.base import DataError


_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArraysOnly(pickle.Unpickler):
  """Unpickler that builds numpy arrays and plain containers, and refuses every other global."""

  def __init__(self, file, path: str):
    super().__init__(file, encoding="latin1")
    self.path = path

  def find_class(self, module: str, name: str):
    if (module, name) in _PICKLE_GLOBALS:
      return _PICKLE_GLOBALS[(module, name)]
    if (module, name) == ("_codecs", "encode"):   # Python 3, protocol <= 2: bytes as latin-1 text
      return self._latin1
    raise DataError(f"{self.path}: refusing to load the global {module}.{name} from this pickle; "
                    "only numpy arrays and plain containers are allowed (the lab's pickles need "
                    "nothing else). Is this the right file?")

  def _latin1(self, text, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as a protocol-2 pickle of `bytes` uses it (a re-save under Python 3 of
    the lab's pickle holds it for every array's data): latin-1 text to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
      raise DataError(f"{self.path}: refusing _codecs.encode of {type(text).__name__} with "
                      f"encoding {encoding!r} in this pickle (a pickle of numpy arrays only "
                      "encodes text as latin1). Is this the right file?")
    return text.encode("latin1")


def read(path: str, channels: int, expected: str, hint: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """The lab's pickle (`expected`: its file name, `hint`: where else the data come from, for the
  messages): a list of per-subject (X (T, channels) float, y (T,) int) pairs, returned as
  float32 / int64 without any further processing."""
  try:
    with open(path, "rb") as f:
      obj = _ArraysOnly(f, path).load()
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 -- any unpickling failure means "not that file"
    raise DataError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); expected the "
                    f"lab's {expected}, or {hint}.") from e
  if not isinstance(obj, (list, tuple)) or not all(
      isinstance(p, (list, tuple)) and len(p) == 2 for p in obj):
    raise DataError(f"{path}: expected a list of (X, y) pairs, one per subject, like the lab's "
                    f"{expected}; got {type(obj).__name__}.")
  pairs = []
  for i, (x, y) in enumerate(obj):
    what = f"{path}, pair {i}"
    x, y = np.asarray(x), np.asarray(y)
    if (x.ndim != 2 or x.shape[1] != channels or y.shape != (x.shape[0],)
        or not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.number)):
      raise DataError(f"{what}: X {x.shape} {x.dtype} and y {y.shape} {y.dtype} must be "
                      f"(T, {channels}) numbers and (T,) labels.")
    if not np.isfinite(x).all():
      raise DataError(f"{what}: X holds NaN or inf; the lab's pickle is already preprocessed.")
    if not np.array_equal(y, np.round(y)):
      raise DataError(f"{what}: y holds non-integer labels.")
    pairs.append((x.astype(np.float32), y.astype(np.int64)))
  return pairs
